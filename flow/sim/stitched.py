"""The stitched simulation: the whole accelerator as FINN would stitch it, run cycle by cycle on
several frames back to back, without Vivado.

1. **The stitched graph** (:func:`stitch`): the ``hw_codegen`` graph through the transforms of
   FINN's own ``step_set_fifo_depths`` (``InsertDWC``, ``InsertFIFO(create_shallow_fifos=True)``,
   ``SpecializeLayers``, ``GiveUniqueNodeNamesRecursive``, ``GiveReadableTensorNames``), and
   FINN's code generation for the nodes they add (``StreamingFIFO_rtl``,
   ``StreamingDataWidthConverter_rtl``). Node and FIFO names are the ones a Vivado build gets.
2. **Models.** Every RTL node is its generated RTL compiled by Verilator (staged like
   :mod:`flow.sim.rtlsim`; one C++ class per distinct source, ``--prefix``), every HLS node a
   cycle model of its loop (:mod:`flow.sim.cycle_models`). ``stitched_sim.cpp`` joins them by
   valid/ready channels, one per tensor of the graph (:class:`Channel`).
3. **Data.** The graph's python execution (FINN's models of every node) on every frame gives
   the beats each channel must carry; the simulation compares every transferred beat with them,
   so a wrong value names its channel, frame and beat. The graph output is also checked against
   the golden model.
4. **FIFO sizing** (:func:`size_fifos`): a first run with every FIFO replaced by FINN's own
   simulation FIFO (``fifo_gauge.sv``, ``FINN_SIMULATION``: never full, records its maximum
   fill), then each depth set to that maximum (at least 2, FINN's minimum), then a second run
   with FINN's real FIFO (``fifo.sv``) at those depths: throughput must hold.
5. **Deadlock.** No beat moving for :data:`QUIET_CYCLES` cycles while frames are pending stops
   the run; :func:`deadlock_report` names the fork/join, the full and empty FIFOs and the depth
   the gauge run needed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from flow.sim import rtlsim
from flow.sim import stitched_build as sb
from flow.sim.rtl_stage import node_inst
from flow.sim.sim_common import run_parallel
from sibnn_base.errors import SimulationBuildError, UnsupportedGraphError, VerificationError

QUIET_CYCLES = 4096
"""A run stops as deadlocked when no beat has moved on any channel, and no HLS pipeline has
advanced, for this many cycles while frames are still pending."""

FIFO = "StreamingFIFO_rtl"
DWC = "StreamingDataWidthConverter_rtl"
MIN_FIFO_DEPTH = 2
"""FINN's ``fifo.sv`` refuses a depth below 2 (``$error``); ``InsertFIFO`` never makes one."""


# ------------------------------------------------------------------------------- the graph

def stitch(model: ModelWrapper, fpga_part: str, clk_ns: float) -> ModelWrapper:
    """The graph FINN's ``step_set_fifo_depths`` builds from a ``hw_codegen`` graph, with code
    generated for the nodes it adds. Call inside :func:`flow.env.finn.finn_session`."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.transformation.qonnx.give_unique_node_names_recursive import (
        GiveUniqueNodeNamesRecursive,
    )
    from qonnx.transformation.general import GiveReadableTensorNames

    model = model.transform(InsertDWC())
    model = model.transform(InsertFIFO(create_shallow_fifos=True))
    model = model.transform(SpecializeLayers(fpga_part))
    model = model.transform(GiveUniqueNodeNamesRecursive())
    model = model.transform(GiveReadableTensorNames())
    return model.transform(PrepareIP(fpga_part, clk_ns))


def fifo_nodes(model: ModelWrapper) -> list:
    return [n for n in model.graph.node if n.op_type == FIFO]


def fifo_depths(model: ModelWrapper) -> dict[str, int]:
    return {n.name: int(node_inst(n).get_nodeattr("depth")) for n in fifo_nodes(model)}


def apply_depths(model: ModelWrapper, depths: dict[str, int], fpga_part: str,
                 clk_ns: float) -> ModelWrapper:
    """Set FIFO depths (names of ``model``'s FIFOs; every FIFO must be covered) and regenerate
    the RTL of the FIFOs that changed, as FINN's ``ApplyFIFODepthsFromFile`` + ``hw_codegen``
    would. Call inside a FINN session."""
    import copy

    names = {n.name for n in fifo_nodes(model)}
    unknown, missing = sorted(set(depths) - names), sorted(names - set(depths))
    if unknown or missing:
        raise UnsupportedGraphError(
            "FIFO depths do not match the stitched graph's FIFOs"
            + (f"; unknown: {', '.join(unknown[:5])}" if unknown else "")
            + (f"; missing: {', '.join(missing[:5])}" if missing else ""))
    model = copy.deepcopy(model)
    for n in fifo_nodes(model):
        inst = node_inst(n)
        d = int(depths[n.name])
        if d < MIN_FIFO_DEPTH:
            raise UnsupportedGraphError(f"FIFO {n.name}: depth {d} is below FINN's minimum of "
                                        f"{MIN_FIFO_DEPTH}")
        if d != int(inst.get_nodeattr("depth")):
            inst.set_nodeattr("depth", d)
            inst.code_generation_ipgen(model, fpga_part, clk_ns)
    return model


@dataclass(frozen=True)
class Channel:
    """One AXI stream of the stitched design: a tensor between two nodes (or the graph's
    input/output)."""

    name: str
    producer: str | None
    """Node writing it (None: the graph input, fed by the simulation's source)."""
    out_index: int
    consumer: str | None
    """Node reading it (None: the graph output, read by the sink)."""
    in_index: int
    bits: int
    """TDATA width (padded to whole bytes, as FINN's stream interfaces are)."""
    beats: int
    """Beats per frame."""

    @property
    def words(self) -> int:
        return -(-self.bits // 32)


def channels(model: ModelWrapper) -> list[Channel]:
    """Every stream of the stitched graph, in graph order of the producer."""
    out = []
    producer = {t: (n, j) for n in model.graph.node for j, t in enumerate(n.output)}
    consumer = {}
    for n in model.graph.node:
        for i in sb.stream_inputs(model, n):
            if n.input[i] in consumer:
                raise UnsupportedGraphError(f"tensor {n.input[i]} feeds two nodes without a "
                                            f"fork: not a stream graph")
            consumer[n.input[i]] = (n, i)
    names = [model.graph.input[0].name] + [t for n in model.graph.node for t in n.output]
    for t in names:
        p, c = producer.get(t), consumer.get(t)
        if p is None and c is None:
            continue
        if p is not None:
            inst, j = node_inst(p[0]), p[1]
            bits, folded = inst.get_outstream_width_padded(j), inst.get_folded_output_shape(j)
        else:
            inst, i = node_inst(c[0]), c[1]
            bits, folded = inst.get_instream_width_padded(i), inst.get_folded_input_shape(i)
        out.append(Channel(name=t, producer=p[0].name if p else None, out_index=p[1] if p else 0,
                           consumer=c[0].name if c else None, in_index=c[1] if c else 0,
                           bits=int(bits), beats=int(np.prod(folded[:-1]))))
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise UnsupportedGraphError("the stitched simulation needs one graph input and output")
    return out


# ------------------------------------------------------------------------------- fork / join

def stream_dag(model: ModelWrapper) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Predecessors of every node (over stream tensors) and its topological index."""
    pred: dict[str, list[str]] = {}
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    for n in model.graph.node:
        pred[n.name] = [p.name for i in sb.stream_inputs(model, n)
                        if (p := model.find_producer(n.input[i])) is not None]
    return pred, order


def ancestors(name: str, pred: dict[str, list[str]]) -> set[str]:
    """``name`` and every node upstream of it in ``pred`` (:func:`stream_dag`)."""
    seen, todo = set(), [name]
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo.extend(pred.get(x, []))
    return seen


def skip_fifos(model: ModelWrapper, arrival: dict[str, int] | None = None) -> list[dict]:
    """Every fork/join pair: for each join (a node with two stream inputs) the fork it closes
    (the nearest node both inputs descend from), and the FIFOs on the *shorter* side, the ones
    that must hold what the other side is still working on. With ``arrival`` (channel ->
    cycle of its first beat, from a simulation) the shorter side is the one whose first beat
    reaches the join first; without it, the side with fewer compute nodes (FIFOs and width
    converters do not count)."""
    pred, order = stream_dag(model)
    by_name = {n.name: n for n in model.graph.node}
    out = []
    for n in model.graph.node:
        ins = sb.stream_inputs(model, n)
        if len(ins) < 2:
            continue
        heads = [model.find_producer(n.input[i]) for i in ins[:2]]
        if any(h is None for h in heads):
            continue
        anc = [ancestors(h.name, pred) for h in heads]
        common = anc[0] & anc[1]
        if not common:
            continue
        fork = max(common, key=order.__getitem__)
        below = {x for x in set().union(*anc) if fork in ancestors(x, pred)} - {fork}
        sides = [sorted(a & below, key=order.__getitem__) for a in anc]

        ranks = []
        for k in (0, 1):
            t = n.input[ins[k]]
            if arrival is not None and t in arrival:
                ranks.append((0, arrival[t]))
            else:
                compute = [x for x in sides[k] if by_name[x].op_type not in (FIFO, DWC)]
                ranks.append((1, len(compute), len(sides[k])))
        short = 0 if ranks[0] <= ranks[1] else 1
        out.append({"fork": fork, "join": n.name,
                    "fifos": [x for x in sides[short] if by_name[x].op_type == FIFO],
                    "short_side": sides[short], "long_side": sides[1 - short],
                    "decided_by": "simulation" if arrival is not None else "structure"})
    return out


# ------------------------------------------------------------------------------- data

def pack_words(x: np.ndarray, dt, words: int) -> np.ndarray:
    """Beats of ``x`` (folded shape, innermost dim = one beat) as little-endian uint32 words,
    ``(beats, words)``: the same bits as :func:`flow.sim.rtlsim.pack_beats` (element ``k`` of
    a beat in bits ``[k*bw, (k+1)*bw)``, two's complement, BIPOLAR -1/+1 as 0/1)."""
    x = np.asarray(x, dtype=np.float64)
    if not dt.is_integer():
        raise UnsupportedGraphError(f"the stitched simulation streams integer data; a {dt.name} "
                                    "stream is not supported")
    if dt.name == "BIPOLAR":
        ok, x = (x == -1) | (x == 1), (x + 1) / 2
    else:
        ok = (x == np.round(x)) & (x >= dt.min()) & (x <= dt.max())
    if not ok.all():
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise VerificationError(f"value at folded index {bad} is not a {dt.name}")
    bw, n = int(dt.bitwidth()), x.shape[-1]
    u = x.reshape(-1, n).astype(np.int64) & ((1 << bw) - 1)
    bits = ((u[:, :, None] >> np.arange(bw)) & 1).astype(np.uint8).reshape(u.shape[0], n * bw)
    pad = words * 32 - n * bw
    if pad < 0:
        raise VerificationError(f"{n} x {bw} bits do not fit {words} words")
    bits = np.concatenate([bits, np.zeros((bits.shape[0], pad), np.uint8)], axis=1)
    return np.packbits(bits, axis=1, bitorder="little").view("<u4")


def _stream_origins(model: ModelWrapper, chans: list[Channel]) -> dict[str, str]:
    """Channels carrying a depthwise sliding window's output (directly or through FIFOs and
    width converters, which pass beats on unchanged): channel -> that window node."""
    by_name = {n.name: n for n in model.graph.node}
    producer_of = {c.name: c.producer for c in chans}
    out = {}
    for c in chans:
        p = c.producer
        while p is not None and by_name[p].op_type in (FIFO, DWC):
            p = producer_of.get(by_name[p].input[0])
        if p is not None and by_name[p].op_type.startswith("ConvolutionInputGenerator") \
                and node_inst(by_name[p]).get_nodeattr("depthwise"):
            out[c.name] = p
    return out


def execute_frames(model: ModelWrapper, pixels_nhwc: np.ndarray) -> list[dict]:
    """The python execution (FINN's model of every node, :class:`StageExecutor`) of the stitched
    graph on each frame: every tensor, per frame."""
    from flow.proof.verify import StageExecutor, python_model_view, stage_input

    view = python_model_view(model) or model
    x = stage_input(model, pixels_nhwc)
    iname = model.graph.input[0].name
    shape = model.get_tensor_shape(iname)
    run = StageExecutor(view)
    return [run({iname: x[i:i + 1].reshape(shape)}) for i in range(x.shape[0])]


def write_data(model: ModelWrapper, chans: list[Channel], frames: list[dict], data: Path) -> None:
    """One file per channel: the beats every frame carries on it (``frames x beats x words``)."""
    data.mkdir(parents=True, exist_ok=True)
    by_name = {n.name: n for n in model.graph.node}
    origin = _stream_origins(model, chans)
    for c in chans:
        if c.producer is not None:
            inst = node_inst(by_name[c.producer])
            folded, dt = inst.get_folded_output_shape(c.out_index), \
                inst.get_output_datatype(c.out_index)
        else:
            inst = node_inst(by_name[c.consumer])
            folded, dt = inst.get_folded_input_shape(c.in_index), \
                inst.get_input_datatype(c.in_index)
        beats = []
        for ctx in frames:
            t = np.asarray(ctx[c.name], dtype=np.float32)
            if c.name in origin:  # a depthwise window's order, through FIFOs and converters
                swg = node_inst(by_name[origin[c.name]])
                t = rtlsim.im2col_to_depthwise(swg, t.reshape(tuple(swg.get_normal_output_shape(0))))
            try:
                beats.append(pack_words(t.reshape(tuple(folded)), dt, c.words))
            except VerificationError as err:
                raise VerificationError(f"stitched simulation: channel {c.name}: {err}") from None
        arr = np.concatenate(beats, axis=0)
        if arr.shape[0] != c.beats * len(frames):
            raise VerificationError(f"stitched simulation: channel {c.name} has {arr.shape[0]} "
                                    f"beats for {len(frames)} frames, expected {c.beats} each")
        arr.astype("<u4").tofile(data / f"{c.name}.bin")


# ------------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class Run:
    """One run of the simulator (``result.json``, parsed)."""

    cycles: int
    frames: int
    error_kind: str
    error: str
    frame_done: list
    """Cycle at which each frame's last output beat left (first sink)."""
    channels: dict
    nodes: dict
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.error_kind

    def cycles_per_frame(self) -> float:
        """Steady state: the median interval between consecutive frame completions over the
        second half of the run (the first frames fill the pipeline and its FIFOs)."""
        d = np.diff(np.asarray(self.frame_done, dtype=np.float64))
        if d.size == 0:
            return float("nan")
        return float(np.median(d[d.size // 2:]))


def run_sim(exe: Path, data: Path, out: Path, frames: int, *, isolate: int | None = None,
            quiet: int = QUIET_CYCLES, max_cycles: int = 0, period: int = 0) -> Run:
    """Run the simulator on ``frames`` frames. ``isolate``: only that node (by graph index);
    ``period``: the source paced to one frame per ``period`` cycles (else as fast as the
    design takes them)."""
    args = [str(exe), str(data), str(out), f"frames={frames}", f"quiet={quiet}",
            f"period={int(period)}"]
    if isolate is not None:
        args.append(f"isolate={isolate}")
    if max_cycles:
        args.append(f"max_cycles={max_cycles}")
    from sibnn_base import signals

    t0 = time.perf_counter()
    proc = signals.run(args)  # a signal ends the simulator too
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3) or not out.is_file():
        raise SimulationBuildError(f"stitched simulation failed (exit {proc.returncode}): "
                                   f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    r = json.loads(out.read_text())
    done = r["sink_frame_done"]
    per_sink = [max(col) for col in zip(*done, strict=False)] if done else []
    return Run(cycles=r["cycles"], frames=r["frames"], error_kind=r["error_kind"],
               error=r["error"], frame_done=per_sink, channels=r["channels"], nodes=r["nodes"],
               wall_s=round(wall, 3))


# ------------------------------------------------------------------------------- the whole run

@dataclass
class Stitched:
    """A compiled stitched simulator with its data, ready to run."""

    model: ModelWrapper
    chans: list
    exe: Path
    data: Path
    compiled: int
    """RTL models compiled (not from the cache)."""
    compile_s: float


def prepare(model: ModelWrapper, frames: list[dict], tools, cache: Path, work: Path, *,
            gauge: bool, jobs: int, write: bool = True) -> Stitched:
    """Compile (or take from the cache) the simulator of ``model`` and write its data
    (``write=False``: reuse the data already in ``work``; FIFO depths do not change it)."""
    t0 = time.perf_counter()
    chans = channels(model)
    models = sb.hls_models(model)
    libs = sb.compile_libs(model, tools, cache, work / "libs", gauge=gauge, jobs=jobs)
    exe, _, _ = sb.link(model, chans, libs, models, tools, cache, work / "link")
    data = work / "data"
    if write or not data.is_dir():
        write_data(model, chans, frames, data)
        sb.write_schedules(models, data)
    return Stitched(model=model, chans=chans, exe=exe, data=data,
                    compiled=sum(not lib.cached for lib in libs.values()),
                    compile_s=round(time.perf_counter() - t0, 2))


def sized_depths(gauge: Run, model: ModelWrapper) -> dict[str, int]:
    """Each FIFO's depth from the gauge run: its maximum fill, at least FINN's minimum."""
    out = {}
    for n in fifo_nodes(model):
        fill = gauge.nodes.get(n.name, {}).get("max_fill", -1)
        if fill < 0:
            raise VerificationError(f"stitched simulation: the gauge run did not report FIFO "
                                    f"{n.name}")
        out[n.name] = max(MIN_FIFO_DEPTH, int(fill))
    return out


def isolated_cycles(sim: Stitched, n_frames: int, jobs: int) -> dict[str, float]:
    """Cycles per frame of every node that is not a FIFO, run alone in the same simulator (its
    inputs from sources that are always valid, its outputs into sinks that are always ready)."""
    work = sim.data.parent / "isolated"
    work.mkdir(parents=True, exist_ok=True)
    todo = [(k, n.name) for k, n in enumerate(sim.model.graph.node) if n.op_type != FIFO]

    def one(item):
        k, name = item
        r = run_sim(sim.exe, sim.data, work / f"{k}.json", n_frames, isolate=k)
        if not r.ok:
            raise VerificationError(f"stitched simulation: node {name} alone: {r.error}")
        return name, r.cycles_per_frame()

    return dict(run_parallel(one, todo, jobs))
