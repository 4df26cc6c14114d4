"""End-to-end builds (estimates + codegen, no Vivado) and the CLI's bad-input contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flow.build import build
from flow.config import resolve_build_config
from flow.env.finn import detect_tools
from flow.front.export import export_bnn_pynq
from flow.report import format_summary, load_summary
from tests.conftest import assert_one_line_error, run_cli
from tests.flow_models import si_resnet

HAS_VIVADO = detect_tools().has_vivado


def _quiet(_msg: str) -> None:
    pass


def _check_all_hw_and_exact(out: Path) -> dict:
    s = load_summary(out)
    assert s["schema_version"] == 1
    assert s["all_nodes_hw"] is True and s["non_hw_nodes"] == []
    executed = [v for v in s["verification"] if v["exact"] is not None]
    names = [v["step"] for v in s["verification"]]
    # every stage up to the dataflow partition executes here, and all are exact
    assert names.index("specialize_layers") == len(executed)
    assert {"export", "tidy_up", "convert_to_hw", "create_dataflow_partition"} <= \
        {v["step"] for v in executed}
    assert all(v["exact"] is True and v["n_inputs"] >= 1 for v in executed)
    for v in s["verification"]:
        if v["exact"] is None:
            assert "cppsim/rtlsim" in v["reason"]
    for k in ("LUT", "BRAM_18K", "URAM", "DSP"):
        assert s["estimates"][k] <= s["budget"][k]
    assert s["estimates"]["throughput_fps"] > 0 and s["estimates"]["latency_ns"] > 0
    if not HAS_VIVADO:
        for k in ("stitched_ip", "bitfile", "pynq_driver", "deployment_package"):
            assert s["outputs"][k] == "skipped: Vivado not found"
    assert s["outputs"]["estimates"] == "generated"
    assert s["outputs"]["hls_rtl_sources"] == "generated"
    assert (out / "time_per_step.json").is_file()
    assert (out / "report" / "verification.json").is_file()
    assert (out / "report" / "estimate_layer_resources.json").is_file()
    assert (out / "status.json").is_file()
    assert json.loads((out / "status.json").read_text())["status"] == "ok"
    assert list((out / "intermediate_models").glob("*_convert_to_hw.onnx"))
    format_summary(s)  # the human table renders
    return s


def _final_ops(out: Path) -> list[str]:

    return [n.op_type for n in _final_model(out).graph.node]


def _final_model(out: Path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(next((out / "intermediate_models").glob("*_hw_codegen.onnx"))))


@pytest.mark.parametrize("front_end", ["auto", "finn"])
def test_brevitas_tfc_w1a1_all_hw_exact(tmp_path, front_end):
    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc_w1a1.onnx")
    cfg = resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out"),
                               front_end=front_end)
    out = build(cfg, echo=_quiet)
    s = _check_all_hw_and_exact(out)
    if front_end == "finn":
        assert s["front_end"] == "finn"
    ops = _final_ops(out)
    assert ops.count("MVAU_hls") == 4
    # generated HLS sources exist for every MVAU
    assert len(list(out.rglob("top_MVAU_hls_*.cpp"))) == 4


@pytest.mark.parametrize("front_end", ["exact", "finn"])
def test_si_resnet_all_hw_exact_with_streams_and_integer_adds(tmp_path, front_end):
    from qonnx.core.datatype import DataType

    onnx = si_resnet(tmp_path / "si.onnx", width=8, input_size=12)
    cfg = resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out"), verify_inputs=6,
                               front_end=front_end)
    out = build(cfg, echo=_quiet)
    s = _check_all_hw_and_exact(out)
    assert s["front_end"] == front_end and s["verified_against"] == "golden"
    assert s["input_layout"] == "NHWC"
    m = _final_model(out)
    ops = [n.op_type for n in m.graph.node]
    assert "ReplicateStream_hls" in ops
    adds = [n for n in m.graph.node if n.op_type == "ElementwiseAdd_hls"]
    assert len(adds) >= 4
    for n in adds:
        for t in list(n.input) + list(n.output):
            assert m.get_tensor_datatype(t).is_integer(), (n.name, t)
    assert all(m.get_tensor_datatype(n.output[0]) != DataType["FLOAT32"] for n in m.graph.node)


def test_failed_build_leaves_previous_output_intact(tmp_path):
    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc.onnx")
    out = tmp_path / "out"
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="convert_to_hw"),
          echo=_quiet)
    before = (out / "report" / "summary.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Defaults": {}, "MVAU_hls_99": {"PE": 2}}))
    from sibnn_base.errors import ConfigError

    with pytest.raises(ConfigError, match="MVAU_hls_99"):
        build(resolve_build_config(onnx=str(onnx), output_dir=str(out), folding=str(bad)),
              echo=_quiet)
    assert (out / "report" / "summary.json").read_text() == before
    failed = json.loads((tmp_path / "out.failed" / "status.json").read_text())
    assert failed["status"] == "failed" and "MVAU_hls_99" in failed["error"]


def test_start_step_resumes(tmp_path):
    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc.onnx")
    out = tmp_path / "out"
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="tidy_up",
                               front_end="finn"), echo=_quiet)
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out), start_step="streamline",
                               stop_step="convert_to_hw", front_end="finn"), echo=_quiet)
    s = load_summary(out)
    assert [v["step"] for v in s["verification"]] == ["export", "streamline", "convert_to_hw"]
    assert s["front_end"] == "finn"
    assert all(v["exact"] for v in s["verification"])


@pytest.mark.slow
def test_brevitas_cnv_w1a1_all_hw_exact(tmp_path):
    onnx = export_bnn_pynq("CNV_1W1A", tmp_path / "cnv_w1a1.onnx")
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out"),
                                     verify_inputs=2), echo=_quiet)
    s = _check_all_hw_and_exact(out)
    assert s["input_layout"] == "NHWC"


@pytest.mark.vivado
@pytest.mark.skipif(not HAS_VIVADO, reason="needs Xilinx Vivado (XILINX_VIVADO not set)")
def test_bitfile_with_vivado(tmp_path):
    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc.onnx")
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out")),
                echo=_quiet)
    s = load_summary(out)
    for k in ("stitched_ip", "bitfile", "pynq_driver", "deployment_package"):
        assert s["outputs"][k] == "generated"


# -- bad input: one line, exit 2, nothing written ---------------------------------------------

def _no_output(tmp_path: Path) -> None:
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def test_cli_unknown_board(tmp_path):
    p = run_cli(["flow/build.py", "--board", "pynq-z9", "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(p, "unknown board", "pynq-z2", "kv260")
    _no_output(tmp_path)
    p = run_cli(["flow/build.py", "--board", str(tmp_path / "my-board.yaml"), "--output-dir",
                 str(tmp_path / "out")])
    assert_one_line_error(p, "my-board.yaml not found", "pynq-z2")
    _no_output(tmp_path)


def test_cli_bad_yaml_and_unknown_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("board: [x\n")
    assert_one_line_error(run_cli(["flow/build.py", "--config", str(f)]), "malformed")
    f.write_text("boards: pynq-z2\n")
    assert_one_line_error(run_cli(["flow/build.py", "--config", str(f)]), "unknown key", "boards")


def test_cli_unknown_start_step(tmp_path):
    p = run_cli(["flow/build.py", "--board", "pynq-z2", "--start-step", "synthesise",
                 "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(p, "synthesise", "not a step")
    _no_output(tmp_path)


def test_cli_missing_checkpoint(tmp_path):
    p = run_cli(["flow/build.py", "--board", "pynq-z2", "--model", "si_resnet_w1a1",
                 "--checkpoint", str(tmp_path / "nope.pt"), "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(p, "nope.pt")
    _no_output(tmp_path)


def test_cli_unsupported_op_is_named(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper
    from qonnx.util.basic import qonnx_make_model

    g = helper.make_graph(
        [helper.make_node("Softsign", ["x"], ["y"], name="my_softsign")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "bad.onnx"
    import onnx

    onnx.save(qonnx_make_model(g), str(path))
    del np
    p = run_cli(["flow/build.py", "--onnx", str(path), "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(p, "Softsign", "my_softsign")
    _no_output(tmp_path)


@pytest.mark.skipif(HAS_VIVADO, reason="checks the no-Vivado error")
def test_cli_vivado_output_without_vivado(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("require_bitfile: true\n")
    p = run_cli(["flow/build.py", "--config", str(f), "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(p, "Vivado")
    _no_output(tmp_path)


def test_cli_output_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    p = run_cli(["flow/build.py", "--output-dir", str(blocker / "out")])
    assert_one_line_error(p, "cannot create output directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_cli_unwritable_output_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        p = run_cli(["flow/build.py", "--output-dir", str(ro / "out")])
        assert_one_line_error(p, "not writable")
    finally:
        ro.chmod(0o700)


def test_cli_folding_unknown_node_is_rejected_by_validation(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.hw.folding import validate_folding
    from sibnn_base.errors import ConfigError

    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc.onnx")
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out"),
                                     stop_step="fold"), echo=_quiet)
    model = ModelWrapper(str(next((out / "intermediate_models").glob("*_fold.onnx"))))
    folding = json.loads((out / "report" / "folding_config.json").read_text())
    validate_folding(folding, model)  # our own output validates
    with pytest.raises(ConfigError, match="Thresholding_nope"):
        validate_folding({**folding, "Thresholding_nope": {"PE": 1}}, model)
    mvau = next(k for k in folding if k.startswith("MVAU"))
    with pytest.raises(ConfigError, match="unused"):
        validate_folding({"Defaults": {}, mvau: {"NumChannels": 3}}, model)
    # the user file round-trips through --folding
    user = tmp_path / "fold.json"
    folding[mvau]["PE"] = 1
    folding[mvau]["SIMD"] = 1
    user.write_text(json.dumps(folding))
    out2 = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out2"),
                                      folding=str(user), stop_step="generate_estimate_reports"),
                 echo=_quiet)
    s = load_summary(out2)
    assert s["folding"]["mode"] == "user"
