"""rtlsim without Vivado: every ``*_rtl`` node's generated RTL compiled with Verilator and driven
through its AXI streams by a small C++ harness of ours (``rtlsim_harness.cpp``).

FINN's own rtlsim goes through Vivado's XSI. Here, for one node:

* its RTL is staged (:mod:`flow.sim.rtl_stage`: sources copied with the node's name replaced
  by ``sibnn_node``, so equal layers share a binary; memory files; the generated harness);
* the staged files, flags, tool versions and the generated harness decide the cache key; a hit
  reuses ``<cache_dir>/<digest>/``. A miss verilates it in a temporary directory
  (:func:`flow.sim.verilator.verilate_into_cache`), compiles the generated model and the
  harness as one unit with g++ (``-O1``), links Verilator's runtime library (compiled once per
  cache) and renames the directory into place when the binary exists;
* to run it, inputs are packed into beats exactly like FINN's rtlsim (folded shape,
  ``npy_to_rtlsim_input``, BIPOLAR sent as BINARY) and written one hex beat per line; the
  harness resets the design, keeps TVALID high while beats are pending and TREADY always high,
  collects the expected number of output beats (or fails naming the node after a watchdog
  limit) and prints the cycle count; outputs are unpacked with ``rtlsim_output_to_npy``.

A layer Verilator cannot take (a Xilinx primitive such as ``xpm_*`` or a unisim cell) raises
:class:`SimulationBuildError` naming the node and the reason;
:func:`flow.sim.rtl_stage.unsupported_rtl_nodes` finds such layers from their sources without
compiling.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from onnx import NodeProto
from qonnx.core.modelwrapper import ModelWrapper

from flow.sim.rtl_stage import (
    StagedRtl,
    node_inst,
    refuse_primitives,
    rtl_nodes,
    stage_rtl,
    stream_ports,
)
from flow.sim.sim_common import NodeBuild, run_parallel, select_nodes, source_digest
from flow.sim.verilator import (
    CXX_OPT,
    VERILATOR_FLAGS,
    BuildLog,
    RtlsimTools,
    compile_flags,
    cxx_version,
    verilate_into_cache,
    verilator_runtime,
)
from sibnn_base import signals
from sibnn_base.errors import VerificationError

__all__ = ["compile_rtl_nodes", "depthwise_to_im2col", "im2col_to_depthwise", "pack_beats",
           "run_rtl_node", "unpack_beats"]

EXE = "sim"
"""The binary's name inside a cache entry."""


# ---------------------------------------------------------------------------------- compile

def _digest(st: StagedRtl, tools: RtlsimTools) -> str:
    return source_digest(
        [*st.sources, *st.data, st.harness],
        extra=[" ".join(compile_flags(tools)), f"top={st.top}",
               f"verilator {tools.verilator_version}", f"cxx {tools.cxx} {cxx_version(tools.cxx)}",
               "sources " + " ".join(s.name for s in st.sources)])


def _compile(st: StagedRtl, tools: RtlsimTools, cache_dir: Path, log_path: Path) -> float:
    """Verilate and build ``st`` with its harness into ``<cache_dir>/<digest>``; returns the
    seconds spent."""
    digest = _digest(st, tools)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def link(tmp: Path, src: Path, obj: Path, mk: dict, log: BuildLog):
        runtime = verilator_runtime(tools, cache_dir, mk, log)
        unity = obj / "sibnn_unity.cpp"
        unity.write_text("".join(f'#include "{c}.cpp"\n' for c in mk["CLASSES"])
                         + f'#include "{src / "harness.cpp"}"\n')
        return log.run([tools.cxx, *mk["CXXFLAGS"], CXX_OPT, "-o", str(tmp / EXE),
                        str(unity), *map(str, runtime), *mk["LDLIBS"]], obj)

    def meta(tmp: Path, obj: Path, mk: dict, seconds: float) -> None:
        (tmp / "meta.json").write_text(json.dumps(
            {"top": st.top, "compiled_for": st.node.name, "op_type": st.node.op_type,
             "seconds": round(seconds, 2), "verilator": tools.verilator_version}, indent=1))

    return verilate_into_cache(
        st, tools, entry=cache_dir / digest, product=EXE, tmp_prefix=f".tmp-{digest[:12]}-",
        verilator_flags=list(VERILATOR_FLAGS), prefix="Vtop", cxx_step=link, finish=meta,
        log_path=log_path, what="rtlsim")


def compile_rtl_nodes(model: ModelWrapper, work_dir: Path, tools: RtlsimTools, *,
                      cache_dir: Path, jobs: int = 2, names: list[str] | None = None
                      ) -> dict[str, NodeBuild]:
    """Build (or take from ``cache_dir``) one Verilator simulation per RTL node (those in
    ``names``, default all). Staged sources and compile logs go under ``work_dir/<node>/``.
    Raises :class:`SimulationBuildError` naming the first node that does not build."""
    nodes = select_nodes(rtl_nodes(model), names, "RTL nodes")
    work_dir = Path(work_dir).absolute()
    cache_dir = Path(cache_dir).absolute()

    def one(node: NodeProto) -> NodeBuild:
        st = stage_rtl(node, node_inst(node), tools.rtllib, work_dir / node.name / "stage")
        refuse_primitives(st, "rtlsim")
        digest = _digest(st, tools)
        entry = cache_dir / digest
        seconds, cached = 0.0, (entry / EXE).is_file()
        if not cached:
            seconds = _compile(st, tools, cache_dir, work_dir / node.name / "build.log")
        return NodeBuild(node=node.name, op_type=node.op_type, kind="rtlsim",
                         executable=entry / EXE, cached=cached,
                         compile_s=round(seconds, 3), shims=st.patches)

    return {b.node: b for b in run_parallel(one, nodes, jobs)}


# ---------------------------------------------------------------------------------- run

def _is_packable(dt) -> bool:
    return dt.is_integer() and dt.bitwidth() <= 32


def pack_beats(x: np.ndarray, dt) -> list[int]:
    """The stream beats of ``x`` (already in its folded shape; innermost dim = one beat) for
    FINN DataType ``dt``: element ``k`` of a beat in bits ``[k*bw, (k+1)*bw)``, two's complement,
    BIPOLAR -1/+1 as 0/1. Bit-identical to FINN's ``npy_to_rtlsim_input`` (``reverse_inner``),
    vectorised; other datatypes go through FINN's function. Raises ValueError on a value
    ``dt`` does not allow (FINN asserts)."""
    from finn.util.data_packing import npy_to_rtlsim_input

    x = np.asarray(x, dtype=np.float64)
    if not _is_packable(dt):
        return npy_to_rtlsim_input(x.astype(np.float32), dt, dt.bitwidth() * x.shape[-1])
    if dt.name == "BIPOLAR":
        ok = (x == -1) | (x == 1)
        x = (x + 1) / 2
    else:
        ok = (x == np.round(x)) & (x >= dt.min()) & (x <= dt.max())
    if not ok.all():
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"value at folded index {bad} is not a {dt.name}")
    bw, n = dt.bitwidth(), x.shape[-1]
    u = x.reshape(-1, n).astype(np.int64) & ((1 << bw) - 1)
    bits = ((u[:, :, None] >> np.arange(bw)) & 1).astype(np.uint8).reshape(u.shape[0], n * bw)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def unpack_beats(beats: list[int], dt, folded_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_beats` (bits above the elements, the stream's byte padding, are
    ignored); float32 in ``folded_shape``, BIPOLAR as -1/+1. Bit-identical to FINN's
    ``rtlsim_output_to_npy`` (``reverse_inner``)."""
    from finn.util.data_packing import rtlsim_output_to_npy

    folded_shape = tuple(int(d) for d in folded_shape)
    n = folded_shape[-1]
    if not _is_packable(dt):
        return rtlsim_output_to_npy(beats, None, dt, folded_shape, dt.bitwidth() * n,
                                    dt.bitwidth()).astype(np.float32)
    bw = dt.bitwidth()
    nbytes, mask = -(-n * bw // 8), (1 << (n * bw)) - 1
    raw = np.frombuffer(b"".join((int(b) & mask).to_bytes(nbytes, "little") for b in beats),
                        dtype=np.uint8).reshape(len(beats), nbytes)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :n * bw].reshape(-1, n, bw)
    v = (bits.astype(np.int64) << np.arange(bw)).sum(axis=-1)
    if dt.name == "BIPOLAR":
        v = 2 * v - 1
    elif dt.signed():
        v = np.where(v >= 1 << (bw - 1), v - (1 << bw), v)
    return v.astype(np.float32).reshape(folded_shape)


def _pack_input(inst, i: int, value: np.ndarray) -> list[int]:
    """One input stream's beats, as FINN packs them for rtlsim (folded shape, BIPOLAR as
    BINARY)."""
    node = inst.onnx_node
    exp = tuple(inst.get_normal_input_shape(i))
    x = np.asarray(value, dtype=np.float32)
    if x.shape != exp:
        raise ValueError(f"rtlsim: node {node.name} input {i} has shape {x.shape}, "
                         f"expected {exp}")
    try:
        return pack_beats(x.reshape(inst.get_folded_input_shape(i)), inst.get_input_datatype(i))
    except ValueError as err:
        raise ValueError(f"rtlsim: node {node.name} input {i}: {err}") from None


def _unpack_output(inst, o: int, beats: list[int]) -> np.ndarray:
    out = unpack_beats(beats, inst.get_output_datatype(o), inst.get_folded_output_shape(o))
    out = out.reshape(tuple(inst.get_normal_output_shape(o)))
    return depthwise_to_im2col(inst, out)


def depthwise_to_im2col(inst, out: np.ndarray) -> np.ndarray:
    """A depthwise sliding window generator (``depthwise=1``, feeding Pool/VVAU) streams each
    window as ``(channels/SIMD, kernel, SIMD)``, the order FINN's HLS Pool/VVAU kernels read;
    FINN's python model (im2col) gives ``(kernel, channels)``. Returns the python model's order
    (identity for other nodes). FINN's cppsim of ``ConvolutionInputGenerator_rtl`` applies the
    inverse of this, so a cppsim consumer of this tensor expects the streamed order."""
    return _depthwise_reorder(inst, out, streamed=True)


def im2col_to_depthwise(inst, x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`depthwise_to_im2col`: the streamed order of a depthwise sliding
    window's output from FINN's python model's (identity for other nodes)."""
    return _depthwise_reorder(inst, x, streamed=False)


def _depthwise_reorder(inst, x: np.ndarray, *, streamed: bool) -> np.ndarray:
    """Swap a depthwise window's ``(channels/SIMD, kernel, SIMD)`` and ``(kernel, channels)``
    orders; ``streamed``: ``x`` is in the first."""
    if not (inst.onnx_node.op_type.startswith("ConvolutionInputGenerator")
            and inst.get_nodeattr("depthwise")):
        return x
    simd, ch = inst.get_nodeattr("SIMD"), inst.get_nodeattr("IFMChannels")
    k2 = int(np.prod(inst.get_nodeattr("ConvKernelDim")))
    lead = x.shape[:-1]
    inner = (ch // simd, k2, simd) if streamed else (k2, ch // simd, simd)
    return x.reshape(*lead, *inner).swapaxes(-3, -2).reshape(*lead, k2 * ch)


def _expected_beats(inst, o: int) -> int:
    return int(np.prod(inst.get_folded_output_shape(o)[:-1]))


def watchdog_cycles(inst) -> int:
    """The harness gives up after this many cycles: 10x FINN's estimate plus 10000."""
    return 10 * int(inst.get_exp_cycles()) + 10000


def run_rtl_node(model: ModelWrapper, node: NodeProto, context: dict[str, np.ndarray],
                 build: NodeBuild, scratch: Path) -> int:
    """Run ``build`` on the node's inputs from ``context`` (files and working directory in
    ``scratch``) and write its outputs into ``context`` like FINN's execution does (float32,
    normal shape, BIPOLAR as +-1). Returns the clock cycles from reset release to the last
    output beat. A stalled design raises :class:`VerificationError` naming the node."""
    inst = node_inst(node)
    scratch = Path(scratch).absolute()
    scratch.mkdir(parents=True, exist_ok=True)
    for f in (build.executable.parent / "data").glob("*"):
        link = scratch / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(f)
        except OSError:
            shutil.copyfile(f, link)
    ins, outs = stream_ports(inst)
    args = [str(build.executable), f"name={node.name}", f"max_cycles={watchdog_cycles(inst)}"]
    for k, i in enumerate(ins):
        beats = _pack_input(inst, i, context[node.input[i]])
        (scratch / f"in{i}.hex").write_text("".join(f"{b:x}\n" for b in beats))
        args.append(f"in{k}={scratch / f'in{i}.hex'}")
    for k, o in enumerate(outs):
        args += [f"out{k}={scratch / f'out{o}.hex'}", f"count{k}={_expected_beats(inst, o)}"]
    proc = signals.run(args, cwd=scratch)
    (scratch / "sim.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")
        raise VerificationError(f"rtlsim of {node.name} ({node.op_type}) failed: {msg} "
                                f"(log: {scratch / 'sim.log'})")
    for o in outs:
        lines = (scratch / f"out{o}.hex").read_text().split()
        context[node.output[o]] = _unpack_output(inst, o, [int(s, 16) for s in lines])
    m = re.search(r"^cycles (\d+)$", proc.stdout, re.M)
    return int(m.group(1)) if m else -1
