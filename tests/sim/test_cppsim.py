"""cppsim with plain g++ (``flow.sim.cppsim``): every HLS layer type of a small graph, compiled
from FINN's generated C++, equals FINN's python model of that layer bit for bit, on real and
extreme inputs; the compile cache, a corrupted threshold and missing tools are checked too."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_node, execute_onnx
from qonnx.custom_op.registry import getCustomOp

from flow.proof.verify import python_model_view, stage_input, verification_pixels
from flow.sim.cppsim import (
    SHIMS,
    compile_hls_nodes,
    find_cppsim_tools,
    hls_nodes,
    run_hls_node,
)
from sibnn_base.errors import SimulationBuildError, ToolMissingError

N_IMAGES = 2


@pytest.fixture(scope="module")
def tools():
    try:
        return find_cppsim_tools()
    except ToolMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def small(small_hw_build, tools):
    """The small default graph after minimize_bit_width (the shared build), its python-model view
    and the full python execution context of a few verification images."""
    out = small_hw_build
    model = ModelWrapper(str(next((out / "intermediate_models").glob("*_minimize_bit_width.onnx"))))
    view = python_model_view(model)
    x = stage_input(view, verification_pixels((28, 28, 1), N_IMAGES, 0))
    iname = view.graph.input[0].name
    shape = view.get_tensor_shape(iname)
    contexts = [execute_onnx(view, {iname: x[i:i + 1].reshape(shape)},
                             return_full_exec_context=True) for i in range(N_IMAGES)]
    return model, view, contexts


def _mvau(model, xnor: bool, thresholds: bool, last: bool = False) -> str:
    hits = [n.name for n in hls_nodes(model) if n.op_type == "MVAU_hls"
            and bool(getCustomOp(n).get_nodeattr("binaryXnorMode")) == xnor
            and (len(n.input) == 3) == thresholds]
    return hits[-1 if last else 0]


def _bipolar_weight_mvau(model) -> str:
    """An MVAU with multi-bit input and BIPOLAR weights (the SI squeeze on ``h``)."""
    return next(n.name for n in hls_nodes(model) if n.op_type == "MVAU_hls"
                and not getCustomOp(n).get_nodeattr("binaryXnorMode")
                and getCustomOp(n).get_nodeattr("weightDataType") == "BIPOLAR")


def _first(model, op_type: str) -> str:
    return next(n.name for n in hls_nodes(model) if n.op_type == op_type)


@pytest.fixture(scope="module")
def picks(small):
    """One node of each HLS layer kind of the graph."""
    model = small[0]
    return {
        "xnor_mvau_thresholds": _mvau(model, xnor=True, thresholds=True),
        "first_conv_mvau": _mvau(model, xnor=False, thresholds=True),
        "bipolar_weight_mvau": _bipolar_weight_mvau(model),
        "final_fc_mvau": _mvau(model, xnor=False, thresholds=False, last=True),
        "elementwise_add": _first(model, "ElementwiseAdd_hls"),
        "replicate_stream": _first(model, "ReplicateStream_hls"),
        "global_acc_pool": _first(model, "GlobalAccPool_hls"),
    }


@pytest.fixture(scope="module")
def cache(sim_cache):
    """The session's compile cache, which the shared build filled (cold) when g++ and
    finn-hlslib are here."""
    return sim_cache


@pytest.fixture(scope="module")
def builds(small, picks, tools, cache, tmp_path_factory):
    model = small[0]
    before = model.model.SerializeToString()
    work = tmp_path_factory.mktemp("work")
    b = compile_hls_nodes(model, work, tools, cache_dir=cache, jobs=1, names=list(picks.values()))
    assert model.model.SerializeToString() == before  # the caller's model is untouched
    return b, work


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def run_python_node(view, node, ctx: dict) -> None:
    """One node of ``view`` as qonnx's ``execute_onnx`` runs it."""
    from qonnx.util.basic import get_preferred_qonnx_opset

    opset = view.get_opset_imports().get(node.domain, get_preferred_qonnx_opset())
    execute_node(node, ctx, view.graph, opset)


def python_outputs(view, name: str, ctx: dict) -> list[np.ndarray]:
    """FINN's python model of one layer (the generic HW op) on ``ctx``."""
    node = _node(view, name)
    c = dict(ctx)
    for o in node.output:  # FINN's python models read the output shape from the context
        c[o] = np.zeros_like(ctx[o])
    run_python_node(view, node, c)
    return [c[o] for o in node.output]


def cppsim_outputs(model, name: str, ctx: dict, build, scratch: Path) -> list[np.ndarray]:
    node = _node(model, name)
    c = {k: v for k, v in ctx.items() if k not in node.output}
    run_hls_node(model, node, c, build, scratch)
    return [c[o] for o in node.output]


def extreme_contexts(model, name: str, base: dict, seed: int = 0) -> list[dict]:
    """``base`` with the node's streamed inputs set to the corners of their datatypes: all
    minimum, all maximum, alternating min/max, and uniform random values."""
    rng = np.random.default_rng(seed)
    node = _node(model, name)
    data = [i for i in node.input if model.get_initializer(i) is None]
    out = []
    for kind in ("min", "max", "alternate", "random"):
        ctx = dict(base)
        for i in data:
            dt, shape = model.get_tensor_datatype(i), base[i].shape
            lo, hi = dt.min(), dt.max()
            if kind == "min":
                v = np.full(shape, lo)
            elif kind == "max":
                v = np.full(shape, hi)
            elif kind == "alternate":
                v = np.where(np.indices(shape).sum(axis=0) % 2 == 0, lo, hi)
            elif dt.name == "BIPOLAR":
                v = rng.choice([-1, 1], size=shape)
            else:
                v = rng.integers(int(lo), int(hi), size=shape, endpoint=True)
            ctx[i] = v.astype(np.float32)
        out.append(ctx)
    return out


def assert_same(expected: list[np.ndarray], got: list[np.ndarray], what: str) -> None:
    for o, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g.dtype == np.float32 and g.shape == e.shape, (what, o, g.dtype, g.shape, e.shape)
        if not np.array_equal(e, g):
            idx = tuple(int(i) for i in np.argwhere(e != g)[0])
            raise AssertionError(f"{what} output {o} differs at index {idx}: python {e[idx]}, "
                                 f"cppsim {g[idx]}")


@pytest.mark.parametrize("role", ["xnor_mvau_thresholds", "first_conv_mvau", "bipolar_weight_mvau",
                                  "final_fc_mvau", "elementwise_add", "replicate_stream",
                                  "global_acc_pool"])
def test_each_hls_layer_kind_matches_its_python_model(small, picks, builds, role, tmp_path):
    model, view, contexts = small
    name = picks[role]
    build = builds[0][name]
    assert build.kind == "cppsim" and build.executable.is_file() and build.node == name
    cases = [*contexts, *extreme_contexts(model, name, contexts[0])]
    for k, ctx in enumerate(cases):
        assert_same(python_outputs(view, name, ctx),
                    cppsim_outputs(model, name, ctx, build, tmp_path / "scratch"),
                    f"{name} case {k}")


@pytest.mark.parametrize("role", ["xnor_mvau_thresholds", "final_fc_mvau"])
def test_mvau_weight_file_is_written_once_and_runs_like_finns_own_path(small, picks, builds,
                                                                       role, tmp_path):
    """With ``weight_files`` the MVAU's streamed weight file is made once per weight tensor and
    reused: outputs equal FINN's own execute_node path and the python model, on every case; new
    weights get a new file."""
    model, view, contexts = small
    name = picks[role]
    build = builds[0][name]
    node = _node(model, name)
    shared = tmp_path / "weights"
    cases = [*contexts, *extreme_contexts(model, name, contexts[0], seed=3)]
    for k, ctx in enumerate(cases):
        c = {key: v for key, v in ctx.items() if key not in node.output}
        run_hls_node(model, node, c, build, tmp_path / f"s{k}", weight_files=shared)
        got = [c[o] for o in node.output]
        assert_same(cppsim_outputs(model, name, ctx, build, tmp_path / "finn"), got, name)
        assert_same(python_outputs(view, name, ctx), got, name)
    files = list(shared.glob("*.npy"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    c = {key: v for key, v in contexts[0].items() if key not in node.output}
    run_hls_node(model, node, c, build, tmp_path / "again", weight_files=shared)
    assert files[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    flipped = dict(contexts[0])
    w = np.asarray(flipped[node.input[1]]).copy()
    wdt = model.get_tensor_datatype(node.input[1])
    w.flat[0] = wdt.min() if w.flat[0] != wdt.min() else wdt.max()
    flipped[node.input[1]] = w
    c = {key: v for key, v in flipped.items() if key not in node.output}
    run_hls_node(model, node, c, build, tmp_path / "new", weight_files=shared)
    assert len(list(shared.glob("*.npy"))) == 2
    assert_same(cppsim_outputs(model, name, flipped, build, tmp_path / "finn2"),
                [c[o] for o in node.output], name)


def test_sources_are_relocatable_and_shims_are_recorded(builds, picks):
    b, work = builds
    for name in picks.values():
        for src in (work / name).glob("*.cpp"):
            text = src.read_text()
            assert str(work) not in text and '"input_0.npy"' in text
        assert set(b[name].shims) <= {p.name for p in SHIMS.iterdir()}
    # streamtools.h includes ap_axi_sdata.h, npy2apintstream.hpp needs flatten/unflatten
    assert {"ap_axi_sdata.h", "flatten.hpp"} <= set(b[picks["final_fc_mvau"]].shims)


def test_second_compile_is_all_cached_and_runs_no_gxx(small, picks, builds, tools, cache,
                                                      tmp_path):
    model = small[0]
    sentinel = tmp_path / "gxx_ran"
    fake = tmp_path / "g++"
    fake.write_text(f"#!/bin/sh\ntouch '{sentinel}'\nexit 1\n")
    fake.chmod(0o755)
    no_gxx = dataclasses.replace(tools, gxx=str(fake))
    again = compile_hls_nodes(model, tmp_path / "work", no_gxx, cache_dir=cache, jobs=1,
                              names=list(picks.values()))
    first = builds[0]
    assert all(b.cached and b.compile_s == 0 for b in again.values())
    assert {n: b.executable for n, b in again.items()} == \
           {n: b.executable for n, b in first.items()}
    assert {n: b.shims for n, b in again.items()} == {n: b.shims for n, b in first.items()}
    assert not sentinel.exists()


def _visible_threshold_change(model, view, ctx) -> tuple[str, np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """The first (XNOR MVAU, threshold entry) whose +1 changes the python model's output on
    ``ctx``: (node name, changed table, original output, output with the change). The python
    model reads the table from the context; the C++ has it compiled in."""
    for node in hls_nodes(model):
        if node.op_type != "MVAU_hls" or len(node.input) != 3 \
                or not getCustomOp(node).get_nodeattr("binaryXnorMode"):
            continue
        thr = model.get_initializer(node.input[2])
        expected = python_outputs(view, node.name, ctx)[0]
        for flat in range(thr.size):
            bad = thr.copy()
            bad.flat[flat] += 1
            changed = python_outputs(view, node.name, {**ctx, node.input[2]: bad})[0]
            if not np.array_equal(changed, expected):
                return node.name, bad, expected, changed
    pytest.fail("no single +1 threshold change is visible on this input")


def test_a_wrong_threshold_in_the_cpp_is_caught_at_an_index(small, builds, tools, cache,
                                                           tmp_path):
    model, view, contexts = small
    name, bad, expected, broken_expected = _visible_threshold_change(model, view, contexts[0])
    broken = copy.deepcopy(model)
    broken.set_initializer(_node(model, name).input[2], bad)
    b = compile_hls_nodes(broken, tmp_path / "work", tools, cache_dir=cache, jobs=1,
                          names=[name])[name]
    assert not b.cached and b.compile_s > 0  # a new digest: the table is in the C++ source
    got = cppsim_outputs(broken, name, contexts[0], b, tmp_path / "scratch")[0]
    first_diff = tuple(int(i) for i in np.argwhere(broken_expected != expected)[0])
    with pytest.raises(AssertionError, match=re.escape(f"differs at index {first_diff}")):
        assert_same([expected], [got], name)
    assert_same([broken_expected], [got], name)  # the C++ holds exactly the changed table


def test_a_node_gxx_rejects_names_node_op_and_log(small, picks, tools, cache, tmp_path):
    empty = tmp_path / "no-hlslib"
    empty.mkdir()
    name = picks["replicate_stream"]
    bad = dataclasses.replace(tools, hlslib=empty)
    with pytest.raises(SimulationBuildError) as err:
        compile_hls_nodes(small[0], tmp_path / "work", bad, cache_dir=cache, jobs=1, names=[name])
    msg = str(err.value)
    assert name in msg and "ReplicateStream_hls" in msg and "bnn-library.h" in msg
    log = Path(re.search(r"\(log: ([^)]+)\)", msg).group(1))
    assert log.is_file() and "bnn-library.h" in log.read_text()


def test_missing_gxx_is_one_line_naming_the_package(tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises(ToolMissingError) as err:
        find_cppsim_tools({"PATH": str(tmp_path / "bin")})
    assert str(err.value) == "cppsim needs g++ (apt-get install -y g++)"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to reach the header checks")
def test_missing_hlslib_or_ap_types_is_one_line_naming_the_fix(tmp_path):
    env = {"PATH": os.environ["PATH"], "FINN_DEPS": str(tmp_path)}
    with pytest.raises(ToolMissingError) as err:
        find_cppsim_tools(env)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"finn-hlslib not found in {tmp_path}")
    assert "FINN_DEPS" in msg and "make deps" in msg
    (tmp_path / "finn-hlslib").mkdir()
    (tmp_path / "finn-hlslib" / "bnn-library.h").write_text("")
    with pytest.raises(ToolMissingError) as err:
        find_cppsim_tools(env)
    msg = str(err.value)
    assert "\n" not in msg and msg == (f"ap_types headers not found in {tmp_path / 'ap_types'} "
                                       "(run `make install`)")


@pytest.mark.slow
def test_whole_graph_every_hls_node_as_cppsim(small, tools, cache, tmp_path):
    """Every HLS node of the small graph compiled and run in graph order (the RTL nodes as their
    python models): every tensor equals the python model's run."""
    model, view, contexts = small
    builds = compile_hls_nodes(model, tmp_path / "work", tools, cache_dir=cache, jobs=1)
    assert set(builds) == {n.name for n in hls_nodes(model)}
    iname = view.graph.input[0].name
    for k, ref in enumerate(contexts):
        given = {iname, *(i.name for i in model.graph.initializer)}
        ctx = {k: v if k in given else np.zeros_like(v) for k, v in ref.items()}
        for node, vnode in zip(model.graph.node, view.graph.node, strict=True):
            if node.name in builds:
                for o in node.output:
                    del ctx[o]
                run_hls_node(model, node, ctx, builds[node.name], tmp_path / node.name)
            else:
                run_python_node(view, vnode, ctx)
            for o in node.output:
                assert np.array_equal(ctx[o], ref[o]), (k, node.name, o)
