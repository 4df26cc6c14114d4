"""Run a built accelerator as its generated code, node by node, without Vivado.

After ``hw_codegen`` every ``*_hls`` node has HLS C++ and every ``*_rtl`` node has RTL. With
``--sim`` the build runs them: HLS C++ compiled with g++ (:mod:`flow.sim.cppsim`) and RTL compiled
with Verilator (:mod:`flow.sim.rtlsim`). For every verification input the graph executes in
topological order with each simulated node fed by the *simulated* outputs of its producers, so
the chain that runs is the generated code end to end. At every node the simulated outputs are
compared (``np.array_equal``) with FINN's python model of the same node on the same inputs, so
a mismatch names the node and the first differing index; the graph's output is then compared
with the golden model.

Nodes that run only as python models (none in an all-HW build with ``--sim all``) are listed in
the record's ``python_only``, with the reason.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import numpy_helper

from flow.config import SIM_OF_SUFFIX, SimMode
from sibnn_base.errors import SimulationBuildError, VerificationError


@dataclass(frozen=True)
class Simulators:
    """The code simulators a build uses, found once before anything is written."""

    mode: SimMode
    cppsim: Any = None
    """:class:`flow.sim.cppsim.CppsimTools` when ``mode`` includes cppsim."""
    rtlsim: Any = None
    """:class:`flow.sim.verilator.RtlsimTools` when ``mode`` includes rtlsim."""

    def describe(self) -> str:
        parts = []
        if self.cppsim is not None:
            t = self.cppsim
            parts.append(f"cppsim: {t.gxx} {t.gxx_version}, finn-hlslib {t.hlslib}"
                         + (f" @ {t.hlslib_commit[:10]}" if t.hlslib_commit else ""))
        if self.rtlsim is not None:
            parts.append(f"rtlsim: Verilator {self.rtlsim.verilator_version}")
        return "; ".join(parts)


def find_simulators(mode: SimMode | str) -> Simulators:
    """Check for the tools ``mode`` needs; raises :class:`ToolMissingError` naming what to
    install (g++, finn-hlslib, the ap_types headers, Verilator)."""
    mode = SimMode(mode)
    cpp = rtl = None
    if "cppsim" in mode.kinds:
        from flow.sim.cppsim import find_cppsim_tools

        cpp = find_cppsim_tools()
    if {"rtlsim", "stitched"} & set(mode.kinds):  # the stitched design runs RTL in Verilator
        from flow.sim.verilator import find_rtlsim_tools

        rtl = find_rtlsim_tools()
    return Simulators(mode=mode, cppsim=cpp, rtlsim=rtl)


def sim_kind(node) -> str | None:
    """``cppsim`` for a ``*_hls`` node, ``rtlsim`` for a ``*_rtl`` node, else None."""
    for suffix, kind in SIM_OF_SUFFIX.items():
        if node.op_type.endswith(suffix):
            return kind
    return None


def compile_nodes(model, sims: Simulators, work: Path, cache: Path, jobs: int
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """Compile every node ``sims`` covers. Returns ``(builds by node name, {node: why}`` for
    nodes that run as python models)."""
    builds: dict[str, Any] = {}
    python_only: dict[str, str] = {}
    wanted = sims.mode.kinds
    hls = [n.name for n in model.graph.node if sim_kind(n) == "cppsim"]
    rtl = [n.name for n in model.graph.node if sim_kind(n) == "rtlsim"]
    if hls and "cppsim" in wanted:
        from flow.sim.cppsim import compile_hls_nodes

        builds.update(compile_hls_nodes(model, work / "cppsim", sims.cppsim,
                                        cache_dir=cache / "cppsim", jobs=jobs))
    if rtl and "rtlsim" in wanted:
        from flow.sim import rtlsim
        from flow.sim.rtl_stage import unsupported_rtl_nodes

        unsupported = unsupported_rtl_nodes(model)
        python_only.update(unsupported)
        todo = [n for n in rtl if n not in unsupported]
        if todo:
            builds.update(rtlsim.compile_rtl_nodes(model, work / "rtlsim", sims.rtlsim,
                                                   cache_dir=cache / "rtlsim", jobs=jobs,
                                                   names=todo))
    for n in model.graph.node:
        if n.name in builds or n.name in python_only:
            continue
        kind = sim_kind(n)
        python_only[n.name] = (f"--sim {sims.mode.value} does not run {kind}" if kind else
                               "not a specialised HLS/RTL layer")
    return builds, python_only


def _run_python(view, vnode, ctx: dict, opset: int, params: dict) -> dict[str, np.ndarray]:
    """FINN's python model of one node on the activations in ``ctx``, with its parameters
    (weights, thresholds) from the reference graph (``params``); returns its outputs."""
    from qonnx.core.onnx_exec import execute_node

    local = {**ctx, **params}
    execute_node(vnode, local, view.graph, opset)
    return {o: local[o] for o in vnode.output}


def _first_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape}, FINN's python model gives shape {b.shape}"
    idx = tuple(int(i) for i in np.argwhere(a != b)[0])
    n = int(np.count_nonzero(a != b))
    return (f"index {idx}: generated code gives {a[idx]!r}, FINN's python model gives "
            f"{b[idx]!r} ({n} of {a.size} values differ)")


def simulate_one(model, view, builds: dict, x: np.ndarray, scratch: Path, image: int,
                 weight_files: Path | None = None
                 ) -> tuple[np.ndarray, dict[str, int], dict[str, float]]:
    """Execute ``model`` on one input (batch 1) with every node in ``builds`` as its generated
    code; raises :class:`VerificationError` at the first node whose outputs differ from its
    python model. Returns the graph output, the RTL cycle count per simulated RTL node and the
    seconds each simulated node ran. ``weight_files``: where MVAU weight files are shared between
    inputs (:func:`~flow.sim.cppsim.run_hls_node`)."""
    from flow.sim.cppsim import run_hls_node
    from flow.sim.rtlsim import run_rtl_node

    opset = model.model.opset_import[0].version if model.model.opset_import else 11
    ctx = model.make_empty_exec_context()
    params = {t.name: numpy_helper.to_array(t) for t in view.graph.initializer}
    iname = model.graph.input[0].name
    ctx[iname] = x.reshape(model.get_tensor_shape(iname)).astype(np.float32)
    cycles: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for node, vnode in zip(model.graph.node, view.graph.node, strict=True):
        ref = _run_python(view, vnode, ctx, opset, params)
        b = builds.get(node.name)
        if b is None:
            ctx.update(ref)
            continue
        node_dir = scratch / node.name
        node_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if b.kind == "cppsim":
            run_hls_node(model, node, ctx, b, node_dir, weight_files)
        else:
            cycles[node.name] = int(run_rtl_node(model, node, ctx, b, node_dir))
        seconds[node.name] = time.perf_counter() - t0
        for o in node.output:
            got = np.asarray(ctx[o])
            if got.shape != ref[o].shape or not np.array_equal(got, ref[o]):
                raise VerificationError(
                    f"{b.kind} of {node.name} ({node.op_type}) on verification input {image}: "
                    f"output {o} {_first_diff(got, ref[o])}")
    return np.asarray(ctx[model.graph.output[0].name]), cycles, seconds


def _python_view(model):
    from flow.proof.verify import python_model_view

    view = python_model_view(model)
    return view if view is not None else copy.deepcopy(model)


def simulate(model, pixels_nhwc: np.ndarray, sims: Simulators, *, work: Path, cache: Path,
             jobs: int = 2, golden=None, step: str = "hw_codegen", reference=None) -> dict:
    """Compile and run ``model`` (a specialised graph after ``hw_codegen``) as generated code on
    every image of ``pixels_nhwc``; returns the ``simulation`` record of ``summary.json``.

    Each node is compared with FINN's python model of the same node in ``reference`` (default:
    ``model`` itself; a test passes the uncorrupted graph as a negative control).
    Raises :class:`VerificationError` at the first mismatch (node, input, index) and
    :class:`SimulationBuildError` when generated code does not compile.
    """
    from flow.proof.verify import GoldenVerifier, execute_stage, stage_input
    from flow.sim.sim_common import run_parallel

    t0 = time.perf_counter()
    builds, python_only = compile_nodes(model, sims, work, cache, jobs)
    t_compile = time.perf_counter() - t0
    view = _python_view(reference if reference is not None else model)
    xs = stage_input(model, pixels_nhwc)
    scratch = work / "run"

    def one(i: int):
        return simulate_one(model, view, builds, xs[i:i + 1], scratch / f"input_{i}", i,
                            scratch / "weights")

    t1 = time.perf_counter()
    results = run_parallel(one, list(range(len(xs))), jobs)
    t_run = time.perf_counter() - t1
    shutil.rmtree(scratch, ignore_errors=True)
    y = np.concatenate([r[0] for r in results], axis=0)
    if golden is not None:
        GoldenVerifier(golden, pixels_nhwc).check(f"{step} ({sims.mode.value} simulation)",
                                                   model, y)
    else:  # no golden model for this graph: the python models of the whole graph
        ref = execute_stage(view, pixels_nhwc).reshape(y.shape)
        if not np.array_equal(y, ref):
            raise VerificationError(f"{step} ({sims.mode.value} simulation): graph output "
                                    f"{_first_diff(y, ref)}")
    rec: dict[str, Any] = {"mode": sims.mode.value, "n_inputs": int(len(xs)),
                           "against": "golden" if golden is not None else "python models",
                           "tools": sims.describe()}
    for kind in (k for k in sims.mode.kinds if k in SIM_OF_SUFFIX.values()):
        bs = [b for b in builds.values() if b.kind == kind]
        rec[kind] = {"nodes": len(bs), "exact": True,
                     "compiled": sum(not b.cached for b in bs),
                     "cached": sum(b.cached for b in bs),
                     "compile_cpu_s": round(sum(b.compile_s for b in bs), 2),
                     "by_op": _by_op(bs, results)}
        shims = sorted({s for b in bs for s in getattr(b, "shims", ())})
        if shims:
            rec[kind]["shims"] = shims
    if any(r[1] for r in results):
        rec["rtlsim"]["cycles"] = results[0][1]
    rec["python_only"] = sorted(python_only)
    rec["python_only_reasons"] = python_only
    rec["seconds"] = {"compile": round(t_compile, 2), "run": round(t_run, 2),
                      "total": round(time.perf_counter() - t0, 2)}
    return rec


def _by_op(builds, results) -> dict[str, dict]:
    """Per op type: node count, compile seconds (0 when cached) and mean run seconds per input
    (summed over the op's nodes)."""
    out: dict[str, dict] = {}
    n_inputs = max(len(results), 1)
    for b in builds:
        o = out.setdefault(b.op_type, {"nodes": 0, "compile_s": 0.0, "run_s_per_input": 0.0})
        o["nodes"] += 1
        o["compile_s"] += b.compile_s
        o["run_s_per_input"] += sum(r[2].get(b.node, 0.0) for r in results) / n_inputs
    return {k: {"nodes": v["nodes"], "compile_s": round(v["compile_s"], 2),
                "run_s_per_input": round(v["run_s_per_input"], 4)} for k, v in sorted(out.items())}


__all__ = ["Simulators", "SimulationBuildError", "find_simulators", "simulate"]
