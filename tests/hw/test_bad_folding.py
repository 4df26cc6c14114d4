"""Folding files and folding targets are validated against every node's own constraints before
any FINN step runs on them: a bad value is one line naming the node and the rule (exit 2), never
an ``exit 0`` with the bad value in the report, and never a FINN assertion later."""

from __future__ import annotations

import json

import pytest

from flow.build import build
from flow.config import resolve_build_config
from flow.front.export import export_bnn_pynq
from sibnn_base.errors import ConfigError
from tests.conftest import assert_one_line_error, run_cli


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def tfc(tmp_path_factory):
    """TFC-W1A1 built to ``fold``: its ONNX and its automatic folding."""
    tmp = tmp_path_factory.mktemp("tfc")
    onnx = export_bnn_pynq("TFC_1W1A", tmp / "tfc.onnx")
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp / "out"),
                                     stop_step="fold"), echo=_quiet)
    return onnx, json.loads((out / "report" / "folding_config.json").read_text())


def _with(folding: dict, node_prefix: str, **attrs) -> tuple[str, dict]:
    name = next(k for k in folding if k.startswith(node_prefix))
    data = json.loads(json.dumps(folding))
    data[name].update(attrs)
    return name, data


CASES = [
    ("MVAU_hls_0", {"PE": 3}, r"PE=3 must divide MH=64 \(valid: 1, 2, 4, 8, 16, 32, 64\)"),
    ("MVAU_hls_0", {"SIMD": 5}, "SIMD=5 must divide MW=784"),
    ("MVAU_hls_1", {"PE": -4}, "PE=-4 must be >= 1"),
    ("MVAU_hls_1", {"PE": 0}, "PE=0 must be >= 1"),
    ("MVAU_hls_1", {"PE": "four"}, "PE must be an integer, got 'four'"),
    ("MVAU_hls_1", {"SIMD": 2.5}, "SIMD must be an integer"),
    ("MVAU_hls_1", {"PE": True}, "PE must be an integer, got True"),
    ("MVAU_hls_1", {"ram_style": "sram"}, "ram_style='sram' is not one of"),
    ("Thresholding_rtl_0", {"PE": 5}, "PE=5 must divide NumChannels=784"),
    ("MVAU_hls_0", {"PE": 64, "SIMD": 784}, "AP_INT_MAX_W = 8191"),
]


@pytest.mark.parametrize("prefix,attrs,match", CASES, ids=[f"{p}-{a}" for p, a, _ in CASES])
def test_bad_folding_value_is_refused_before_any_step(tfc, tmp_path, prefix, attrs, match):
    onnx, folding = tfc
    name, data = _with(folding, prefix, **attrs)
    user = tmp_path / "fold.json"
    user.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=match) as err:
        build(resolve_build_config(onnx=str(onnx), output_dir=str(out), folding=str(user),
                                   stop_step="fold"), echo=_quiet)
    assert name in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_folding_over_budget_is_an_error_unless_allowed(tfc, tmp_path):
    onnx, folding = tfc
    user = tmp_path / "fold.json"  # the fastest folding for 80% of the board, now given 5%
    user.write_text(json.dumps(folding))
    cfg = dict(onnx=str(onnx), folding=str(user), stop_step="fold", board="pynq-z2",
               budget_fraction=0.05)
    with pytest.raises(ConfigError, match=r"does not fit pynq-z2 within 5% .*LUT [\d,]+ vs "
                                          r"budget 2,660.*--allow-over-budget"):
        build(resolve_build_config(output_dir=str(tmp_path / "a"), **cfg), echo=_quiet)
    out = build(resolve_build_config(output_dir=str(tmp_path / "b"), allow_over_budget=True,
                                     **cfg), echo=_quiet)
    s = json.loads((out / "report" / "summary.json").read_text())
    assert s["folding"]["within_budget"] is False


def test_auto_folding_on_a_board_too_small_says_it_does_not_fit(tfc, tmp_path):
    onnx, _ = tfc
    with pytest.raises(ConfigError, match=r"does not fit pynq-z2 within 1% .*its smallest "
                                          r"folding needs LUT"):
        build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "o"),
                                   stop_step="fold", budget_fraction=0.01), echo=_quiet)


def test_auto_folding_keeps_hls_mvau_simd_above_mw_over_1024():
    """SetFolding folds a wide layer to SIMD 1, which FINN's HLS MVAU refuses at ipgen; the
    search repairs SIMD to the smallest divisor of MW that meets SIMD >= MW / 1024."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from flow.hw.folding import constraint_errors, repair_min_simd

    node = helper.make_node("MVAU_hls", ["x", "w"], ["y"], domain="finn.custom_op.fpgadataflow.hls",
                            backend="fpgadataflow", MW=3000, MH=4, SIMD=1, PE=1,
                            inputDataType="BINARY", weightDataType="BINARY",
                            outputDataType="UINT12", binaryXnorMode=1, noActivation=1,
                            numInputVectors=[1], name="MVAU_hls_0")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 3000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = ModelWrapper(helper.make_model(g))
    assert any("below MW/1024" in e for e in constraint_errors(m))
    m = repair_min_simd(m)
    assert getCustomOp(m.graph.node[0]).get_nodeattr("SIMD") == 3  # 3000/1024 = 2.9 -> 3
    assert not any("below MW/1024" in e for e in constraint_errors(m))


def test_cli_bad_folding_and_zero_target_fps_are_one_line_errors(tfc, tmp_path):
    onnx, folding = tfc
    _, data = _with(folding, "MVAU_hls_0", PE=3)
    user = tmp_path / "fold.json"
    user.write_text(json.dumps(data))
    proc = run_cli(["flow/build.py", "--onnx", str(onnx), "--folding", str(user),
                    "--stop-step", "fold", "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, "MVAU_hls_0", "PE=3 must divide MH=64")
    proc = run_cli(["flow/build.py", "--onnx", str(onnx), "--target-fps", "0",
                    "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, "target_fps must be >= 1")
    assert not (tmp_path / "o").exists()
