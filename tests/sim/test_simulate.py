"""``flow/build.py --sim``: the built accelerator runs as its generated HLS C++ (g++) and RTL
(Verilator), node by node, exact against the golden model; every failure names the node."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper

from flow.build import build
from flow.config import BuildConfig, SimMode
from flow.report import format_summary, load_summary
from sibnn_base.errors import ToolMissingError, VerificationError
from tests.conftest import assert_one_line_error, run_cli


def _simulators(mode: str):
    from flow.sim.simulate import find_simulators

    try:
        return find_simulators(mode)
    except ToolMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def sim_build(small_hw_build):
    """The shared small build (conftest): through hw_codegen, with every simulation whose tools
    are here."""
    if load_summary(small_hw_build)["simulation"]["mode"] == "none":
        _simulators("all")  # skips with the missing tool's message
    return small_hw_build


def test_every_node_runs_as_generated_code_and_is_exact(sim_build):
    s = load_summary(sim_build)
    sim = s["simulation"]
    model = ModelWrapper(str(sim_build / "intermediate_models" / "08_hw_codegen.onnx"))
    counts = {"cppsim": sum(n.op_type.endswith("_hls") for n in model.graph.node),
              "rtlsim": sum(n.op_type.endswith("_rtl") for n in model.graph.node)}
    assert counts["cppsim"] > 0 and counts["rtlsim"] > 0
    ran = [k for k in SimMode(sim["mode"]).kinds if k != "stitched"]  # tests/sim/test_stitched.py
    for kind in ran:
        rec = sim[kind]
        assert rec["nodes"] == counts[kind] and rec["exact"] is True
        assert rec["compiled"] > 0 and rec["compile_cpu_s"] > 0  # the session cache was cold
        assert sum(v["nodes"] for v in rec["by_op"].values()) == counts[kind]
    if sim["mode"] == "all":
        assert sim["python_only"] == []
    assert sim["n_inputs"] == 4 and sim["against"] == "golden"
    words = {"cppsim": "HLS", "rtlsim": "RTL"}
    text = format_summary(s)
    assert ", ".join(f"{k} exact ({counts[k]} {words[k]} nodes)" for k in ran) in text


def test_a_corrupted_threshold_is_caught_naming_node_and_index(sim_build, tmp_path):
    """Negative control through the whole chain: two channels' thresholds of one HLS MVAU are
    moved to the ends of the node's threshold range in the graph the generated code is compiled
    from; the python model of the same node (read from the original) disagrees, and the error
    names the node, the input and the index."""
    from flow.env.finn import detect_tools, finn_session
    from flow.proof.verify import verification_pixels
    from flow.sim.sim_common import default_cache_dir
    from flow.sim.simulate import simulate

    model = ModelWrapper(str(sim_build / "intermediate_models" / "08_hw_codegen.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "MVAU_hls" and len(n.input) > 2)
    bad = ModelWrapper(str(sim_build / "intermediate_models" / "08_hw_codegen.onnx"))
    thr = bad.get_initializer(node.input[2]).copy()
    thr[0], thr[1] = thr.min(), thr.max()
    bad.set_initializer(node.input[2], thr)
    px = verification_pixels((28, 28, 1), 2, 0)
    sims = _simulators("cppsim")

    with finn_session(tmp_path / "finn", detect_tools()), pytest.raises(VerificationError) as err:
        simulate(bad, px, sims, work=tmp_path / "sim", cache=default_cache_dir(), jobs=1,
                 reference=model)
    msg = str(err.value)
    assert f"cppsim of {node.name} (MVAU_hls)" in msg and "index (" in msg, msg


def test_sim_needs_hw_codegen(tmp_path):
    _simulators("rtlsim")
    proc = run_cli(["flow/build.py", "--sim", "rtlsim", "--stop-step", "fold",
                    "--output-dir", str(tmp_path / "b")])
    assert_one_line_error(proc, "--sim rtlsim", "hw_codegen", "--stop-step fold")
    assert not (tmp_path / "b").exists()


def test_missing_finn_hlslib_is_one_line_before_anything_is_written(tmp_path):
    env_deps = tmp_path / "empty_deps"
    env_deps.mkdir()
    os.environ["FINN_DEPS"], old = str(env_deps), os.environ.get("FINN_DEPS")
    try:
        proc = run_cli(["flow/build.py", "--sim", "cppsim", "--output-dir", str(tmp_path / "b")])
    finally:
        if old is None:
            os.environ.pop("FINN_DEPS")
        else:
            os.environ["FINN_DEPS"] = old
    assert_one_line_error(proc, "finn-hlslib")
    assert not (tmp_path / "b").exists()


def test_bad_sim_value_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"sim": "verilog"}))
    proc = run_cli(["flow/build.py", "--config", str(cfg), "--output-dir", str(tmp_path / "b")])
    assert_one_line_error(proc, "sim", "none, cppsim, rtlsim, stitched, all")


def test_sim_none_is_recorded(tmp_path):
    s_text = format_summary({**_minimal_summary(), "simulation": {"mode": "none"}})
    assert "generated code: not run" in s_text


def _minimal_summary() -> dict:
    return {"model": "m", "board": "b", "fpga_part": "p", "clock_ns": 10.0, "estimates": None,
            "capacity": {}, "budget": {k: 0 for k in ("LUT", "FF", "BRAM_18K", "DSP", "URAM")},
            "all_nodes_hw": True, "non_hw_nodes": [], "verification": [], "outputs": {}}


@pytest.mark.slow
def test_default_build_runs_entirely_as_generated_code(tmp_path):
    """The goal of the issue: every node of the default pynq-z2 build executes as generated HLS
    C++ or RTL, exact against the golden model on 8 inputs (ties included), python_only empty."""
    _simulators("all")
    out = build(BuildConfig(board="pynq-z2", output_dir=str(tmp_path / "b"), sim=SimMode.ALL),
                echo=lambda *a, **k: None)
    sim = load_summary(out)["simulation"]
    assert sim["python_only"] == [] and sim["n_inputs"] == 8
    assert sim["cppsim"]["exact"] and sim["rtlsim"]["exact"]


@pytest.mark.slow
def test_brevitas_cnv_runs_entirely_as_generated_code(tmp_path):
    from flow.front.export import export_bnn_pynq
    from flow.sim.cppsim import pinned_hlslib_commit

    have, pin = _simulators("all").cppsim.hlslib_commit, pinned_hlslib_commit()
    if not (have and pin and have.startswith(pin[:10])):
        pytest.skip(f"finn-hlslib here is at {have}, not finn-plus' pinned {pin}: the Pool_hls "
                    "code finn-plus generates needs the pinned API (`make deps` with GitHub)")
    onnx = export_bnn_pynq("CNV_1W1A", tmp_path / "cnv.onnx")
    out = build(BuildConfig(board="pynq-z2", onnx=str(onnx), output_dir=str(tmp_path / "b"),
                            sim=SimMode.ALL, sim_inputs=8), echo=lambda *a, **k: None)
    sim = load_summary(out)["simulation"]
    assert sim["python_only"] == [], sim["python_only_reasons"]
    assert np.all([sim[k]["exact"] for k in ("cppsim", "rtlsim")])
