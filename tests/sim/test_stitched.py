"""``--sim stitched``: the whole accelerator (FINN's FIFOs and width converters inserted, RTL in
Verilator, HLS nodes as cycle models) on several frames back to back: every beat of every
stream exact, FIFOs sized without Vivado, deadlock an error naming the fork/join."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper

from flow.config import BuildConfig, SimMode
from flow.report import format_summary, load_summary
from sibnn_base.errors import ConfigError, ToolMissingError
from tests.conftest import SMALL_HW, run_cli


def _tools():
    from flow.sim.verilator import find_rtlsim_tools

    try:
        return find_rtlsim_tools()
    except ToolMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def built(small_hw_build, tmp_path_factory):
    """The shared small build (conftest) where it ran ``--sim all``, which includes the stitched
    run; else (no finn-hlslib for cppsim, as in CI) the same small network built here with
    ``--sim stitched``, which needs Verilator only."""
    if load_summary(small_hw_build).get("stitched"):
        return small_hw_build
    _tools()
    from flow.build import build

    out = tmp_path_factory.mktemp("small_stitched") / "b"
    build(BuildConfig(board="pynq-z2", output_dir=str(out), stop_step="hw_codegen",
                      model_overrides=SMALL_HW, verify_inputs=4, sim="stitched", sim_frames=4),
          echo=lambda *a, **k: None)
    return out


def _stitched_model(out: Path) -> ModelWrapper:
    return ModelWrapper(str(next((out / "intermediate_models").glob("*_stitched.onnx"))))


def test_every_frame_is_exact_and_fifos_are_sized(built):
    s = load_summary(built)
    st = s["stitched"]
    assert st["exact"] is True and st["against"] == "golden" and st["frames"] == 4
    assert st["deadlock_free"] is True and st["fifo_sizing"] == "sim"
    model = _stitched_model(built)
    fifos = [n.name for n in model.graph.node if n.op_type == "StreamingFIFO_rtl"]
    assert fifos and sorted(st["fifo_depths"]) == sorted(fifos)
    assert all(d >= 2 for d in st["fifo_depths"].values())
    # the sized design keeps the deep-FIFO throughput within 1 %
    assert st["throughput_held"] >= 0.99
    # and reaches the slowest node alone, within 5 %
    assert st["fps"] >= 0.95 * st["fps_bound"]
    assert st["skip_fifos"], "an SI-ResNet has fork/join pairs"
    for pair in st["skip_fifos"]:
        assert pair["fork"].startswith("ReplicateStream") and pair["join"].startswith("Elementwise")
    assert st["fifo_bits"] > 0 and st["fifo_cost_finn"]["n"] == len(fifos)
    assert "stitched accelerator" in format_summary(s) and "frames exact" in format_summary(s)


def test_fifo_depths_file_is_what_finn_applies(built, tmp_path):
    """report/fifo_depths.json applied with FINN's own transform sets every FIFO's depth."""
    from finn.transformation.fpgadataflow.set_fifo_depths import ApplyFIFODepthsFromFile

    cfg = json.loads((built / "report" / "fifo_depths.json").read_text())
    assert set(cfg) >= {"fifo_depths", "fifo_sizes", "impl_style", "ram_style",
                        "total_fifo_size_kiB"}
    model = _stitched_model(built)
    from qonnx.custom_op.registry import getCustomOp

    for n in model.graph.node:  # start from FINN's defaults, as InsertFIFO leaves them
        if n.op_type == "StreamingFIFO_rtl":
            getCustomOp(n).set_nodeattr("depth", 2)
    model = model.transform(ApplyFIFODepthsFromFile(built / "report" / "fifo_depths.json"))
    got = {n.name: getCustomOp(n).get_nodeattr("depth") for n in model.graph.node
           if n.op_type == "StreamingFIFO_rtl"}
    assert got == cfg["fifo_depths"] == load_summary(built)["stitched"]["fifo_depths"]
    assert max(got.values()) > 2  # the skip FIFOs needed more than InsertFIFO's default


def test_every_hls_node_has_its_cycles_next_to_finns_estimate(built):
    st = load_summary(built)["stitched"]
    rows = {r["node"]: r for r in st["nodes"]}
    model = ModelWrapper(str(built / "intermediate_models" / "08_hw_codegen.onnx"))
    hls = [n.name for n in model.graph.node if n.op_type.endswith("_hls")]
    assert hls and all(h in rows for h in hls)
    for h in hls:
        r = rows[h]
        assert r["model"] == "hls cycle model" and r["source"]
        if abs(r["gap"]) > 0.05:
            assert r.get("why"), r


def test_skip_fifos_at_depth_2_deadlock_naming_the_fork_and_join(built, tmp_path):
    """Every skip FIFO at InsertFIFO's depth 2 (the rest as sized): the run stops as a
    deadlock, naming the fork, the join, the full FIFO, its depth and the depth it needs."""
    from flow.env.finn import detect_tools, finn_session
    from flow.proof.verify import verification_pixels
    from flow.sim.sim_common import default_cache_dir
    from flow.sim.stitched_run import DeadlockError, run_stitched

    st = load_summary(built)["stitched"]
    depths = dict(st["fifo_depths"])
    skip = {f for p in st["skip_fifos"] for f in p["fifos"]}
    for f in skip:
        depths[f] = 2
    model = ModelWrapper(str(built / "intermediate_models" / "08_hw_codegen.onnx"))
    px = verification_pixels((28, 28, 1), 3, 0)
    tools = detect_tools()

    def session():
        return finn_session(tmp_path / "finn_build", tools)

    with pytest.raises(DeadlockError) as e:
        run_stitched(model, px, fpga_part="xc7z020clg400-1", clk_ns=10.0, session=session,
                     tools=_tools(), cache=default_cache_dir() / "stitched", work=tmp_path / "w",
                     jobs=2, imposed=depths)
    msg = str(e.value)
    assert "deadlocked" in msg and "fork ReplicateStream" in msg and "join Elementwise" in msg
    assert "full at depth 2" in msg and "(needs " in msg
    assert "\n" not in msg


def test_pack_words_is_finns_packing():
    from qonnx.core.datatype import DataType

    from flow.sim.rtlsim import pack_beats
    from flow.sim.stitched import pack_words

    rng = np.random.default_rng(0)
    for name, n in (("BIPOLAR", 37), ("INT4", 9), ("UINT8", 3), ("INT24", 2), ("BINARY", 288)):
        dt = DataType[name]
        x = rng.integers(int(dt.min()), int(dt.max()) + 1, size=(5, n)).astype(np.float32)
        if name == "BIPOLAR":
            x = np.where(x > 0, 1, -1).astype(np.float32)
        words = -(-(-(-n * dt.bitwidth() // 8) * 8) // 32)
        got = pack_words(x, dt, words)
        ref = pack_beats(x, dt)
        assert [int.from_bytes(r.tobytes(), "little") for r in got] == ref


def test_cycle_model_schedules_count_finns_cycles(built):
    """The MVAU and eltwise schedules have exactly ``get_exp_cycles()`` iterations."""
    from qonnx.custom_op.registry import getCustomOp

    from flow.sim.cycle_models import READ, WRITE, cycle_model

    model = ModelWrapper(str(built / "intermediate_models" / "08_hw_codegen.onnx"))
    seen = set()
    for n in model.graph.node:
        if not n.op_type.endswith("_hls"):
            continue
        inst = getCustomOp(n)
        m = cycle_model(inst)
        seen.add(n.op_type)
        if n.op_type in ("MVAU_hls", "ElementwiseAdd_hls", "ReplicateStream_hls"):
            assert m.iterations == inst.get_exp_cycles()
        reads = int(np.count_nonzero(m.schedule & READ))
        writes = int(np.count_nonzero(m.schedule & WRITE))
        assert reads == int(np.prod(inst.get_folded_input_shape(0)[:-1]))
        assert writes == int(np.prod(inst.get_folded_output_shape(0)[:-1]))
    assert {"MVAU_hls", "ElementwiseAdd_hls", "ReplicateStream_hls"} <= seen


def test_fifo_depths_needs_stitched_and_a_valid_file(tmp_path):
    from flow.config import resolve_build_config
    from flow.sim.stitched_run import load_fifo_depths

    with pytest.raises(ConfigError, match="--sim stitched"):
        resolve_build_config(fifo_depths="x.json")
    (tmp_path / "bad.json").write_text('{"fifo_depths": {"StreamingFIFO_rtl_0": 1}}')
    with pytest.raises(ConfigError, match="needs >= 2"):
        load_fifo_depths(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a FINN FIFO config"):
        load_fifo_depths(tmp_path / "junk.json")
    assert SimMode("all").kinds == ("cppsim", "rtlsim", "stitched")
    assert BuildConfig().fifo_sizing.value == "sim"


def test_cli_fifo_depths_file_errors_are_one_line(tmp_path):
    (tmp_path / "d.json").write_text("{")
    proc = run_cli(["flow/build.py", "--board", "pynq-z2", "--sim", "stitched",
                    "--fifo-depths", str(tmp_path / "d.json"), "--output-dir",
                    str(tmp_path / "out")])
    assert proc.returncode == 2, proc.stderr
    assert "not a FINN FIFO config" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {},                                           # the default model
    {"si_blocks": "all"},                         # SI in every block
], ids=["default", "si_all"])
def test_stitched_default_model_variants(overrides, tmp_path, sim_cache):
    from flow.build import build

    _tools()
    out = tmp_path / "b"
    build(BuildConfig(board="pynq-z2", output_dir=str(out), stop_step="hw_codegen",
                      model_overrides=overrides or None, sim="stitched", verify_inputs=8),
          echo=lambda *a, **k: None)
    st = load_summary(out)["stitched"]
    assert st["exact"] and st["deadlock_free"] and st["frames"] == 8
    assert st["throughput_held"] >= 0.99 and st["fps"] >= 0.95 * st["fps_bound"]


@pytest.mark.slow
def test_stitched_twin_without_si(tmp_path, sim_cache):
    from flow.build import build

    _tools()
    out = tmp_path / "b"
    build(BuildConfig(board="pynq-z2", output_dir=str(out), stop_step="hw_codegen",
                      model="resnet_w1a1_mbh", sim="stitched", verify_inputs=8,
                      model_overrides=dict(SMALL_HW)), echo=lambda *a, **k: None)
    st = load_summary(out)["stitched"]
    assert st["exact"] and st["deadlock_free"]


@pytest.mark.slow
@pytest.mark.parametrize("net", ["TFC_1W1A", "CNV_1W1A", "residual"])
def test_stitched_onnx_networks(net, tmp_path, sim_cache):
    """Brevitas' CNV and TFC, and a residual network of our own written with bnn_pynq's
    quantizers (``tests/flow_models.py``), through ``--onnx``: all frames exact, no deadlock."""
    from flow.build import build
    from flow.front.export import export_bnn_pynq
    from tests.flow_models import bnn_pynq_residual

    _tools()
    onnx = (bnn_pynq_residual(tmp_path / "r.onnx") if net == "residual"
            else export_bnn_pynq(net, tmp_path / "n.onnx"))
    out = tmp_path / "b"
    build(BuildConfig(board="pynq-z2", output_dir=str(out), onnx=str(onnx), sim="stitched",
                      stop_step="hw_codegen", verify_inputs=8), echo=lambda *a, **k: None)
    s = load_summary(out)
    st = s["stitched"]
    assert s["all_nodes_hw"] and st["exact"] and st["deadlock_free"] and st["frames"] == 8
    assert st["throughput_held"] >= 0.99
    if net == "residual":
        assert st["skip_fifos"]


@pytest.mark.slow
def test_cli_default_model_skip_fifos_at_depth_2_exit_3(tmp_path, sim_cache):
    """The default model with every skip FIFO at depth 2 (the rest as sized): exit 3, one line
    naming the fork/join and the depth needed; nothing replaces the output directory."""
    _tools()
    ok = tmp_path / "ok"
    proc = run_cli(["flow/build.py", "--board", "pynq-z2", "--sim", "stitched",
                    "--stop-step", "hw_codegen", "--output-dir", str(ok)], timeout=1800)
    assert proc.returncode == 0, proc.stderr
    st = load_summary(ok)["stitched"]
    depths = dict(st["fifo_depths"])
    for pair in st["skip_fifos"]:
        for f in pair["fifos"]:
            depths[f] = 2
    (tmp_path / "d.json").write_text(json.dumps({"fifo_depths": depths}))
    proc = run_cli(["flow/build.py", "--board", "pynq-z2", "--sim", "stitched",
                    "--stop-step", "hw_codegen", "--fifo-depths", str(tmp_path / "d.json"),
                    "--output-dir", str(tmp_path / "dl")], timeout=1800)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "deadlocked" in err[0] and "fork ReplicateStream" in err[0]
    assert "(needs " in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "dl").exists()


def test_a_wrong_beat_is_caught_naming_its_channel(built, tmp_path):
    """Negative control: one word of what a Verilated node must send (a threshold's output) is
    changed in the expected stream: the run stops at that channel, frame and beat."""
    from flow.env.finn import detect_tools, finn_session
    from flow.proof.verify import verification_pixels
    from flow.sim import stitched as S
    from flow.sim.sim_common import default_cache_dir

    model = ModelWrapper(str(built / "intermediate_models" / "08_hw_codegen.onnx"))
    with finn_session(tmp_path / "fb", detect_tools()):
        stitched = S.stitch(model, "xc7z020clg400-1", 10.0)
    frames = S.execute_frames(stitched, verification_pixels((28, 28, 1), 2, 0))
    sim = S.prepare(stitched, frames, _tools(), default_cache_dir() / "stitched", tmp_path / "w",
                    gauge=True, jobs=2)
    ok = S.run_sim(sim.exe, sim.data, tmp_path / "ok.json", 2)
    assert ok.ok and len(ok.frame_done) == 2
    chan = next(c for c in sim.chans if c.producer and c.producer.startswith("Thresholding_rtl"))
    f = sim.data / f"{chan.name}.bin"
    words = np.fromfile(f, dtype="<u4")
    beat = chan.beats + 5  # frame 1, beat 5
    words[beat * chan.words] ^= 1
    words.tofile(f)
    bad = S.run_sim(sim.exe, sim.data, tmp_path / "bad.json", 2)
    assert bad.error_kind == "mismatch"
    assert f"channel {chan.name}: frame 1, beat 5 differs" in bad.error


def test_vivado_fifo_step_needs_the_sized_depths(tmp_path):
    """With fifo_sizing: sim, set_fifo_depths (a Vivado step) applies report/fifo_depths.json;
    without it, it stops with the reason before calling FINN. Which steps a build reaches
    decides whether a Vivado build runs the stitched sizing first."""
    from types import SimpleNamespace

    from flow.config import resolve_build_config
    from flow.hw.steps import step_set_fifo_depths
    from flow.plan import reaches

    ctx = SimpleNamespace(cfg=BuildConfig(), finn_cfg=None, out_dir=tmp_path, finn_steps=None)
    with pytest.raises(ConfigError, match="fifo_sizing: sim needs report/fifo_depths.json"):
        step_set_fifo_depths(None, ctx)
    assert reaches(BuildConfig(), "set_fifo_depths")
    assert not reaches(resolve_build_config(stop_step="hw_codegen"), "set_fifo_depths")
    assert not reaches(resolve_build_config(start_step="create_stitched_ip"), "set_fifo_depths")
