"""``--sim stitched``: size the FIFOs, run the accelerator on several frames, report (the
``stitched`` record of ``summary.json`` and ``report/fifo_depths.json``).

The sequence (:func:`run_stitched`), each part explained in :mod:`flow.sim.stitched`:

1. build the stitched graph (FINN's FIFO/DWC insertion), execute it in python on every frame;
2. compile the simulator with FINN's simulation FIFOs (never full); run every non-FIFO node
   alone (its cycles per frame without backpressure, next to FINN's ``get_exp_cycles()``); run
   the whole design with the source paced to the slowest node, so each FIFO's maximum fill is
   the steady state's and not a backlog of frames waiting at the input;
3. set each depth to that fill (at least 2), or to ``--fifo-depths FILE``; compile with FINN's
   real FIFOs at those depths and run with the source as fast as the design takes frames;
4. a stall (no beat moves) is a :class:`DeadlockError` naming the fork/join and its FIFOs; a
   wrong beat is a :class:`VerificationError` naming the channel.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from flow.sim import stitched as S
from flow.sim.rtl_stage import node_inst
from sibnn_base.errors import ConfigError, VerificationError

GAP_EXPLAINED = 0.05
"""A node whose simulated cycles per frame differ from FINN's estimate by more than this
fraction gets its gap explained in the report."""


class DeadlockError(VerificationError):
    """The stitched design stopped moving with frames pending (exit 3, as a verification
    failure)."""


def fifo_capacity(depth: int) -> int:
    """Beats FINN's ``fifo.sv`` really holds at ``depth``: its shift-register form keeps at
    least 4 stages plus the output register (5 beats) for depths up to 4."""
    return max(depth, 5) if depth <= 33 else depth


def load_fifo_depths(path: str | Path) -> dict[str, int]:
    """``{"fifo_depths": {name: depth}}`` (FINN's FIFO config format); ConfigError otherwise."""
    try:
        data = json.loads(Path(path).read_text())
        depths = data["fifo_depths"]
        if not isinstance(depths, dict):
            raise TypeError("fifo_depths is not an object")
        out = {str(k): int(v) for k, v in depths.items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--fifo-depths {path}: not a FINN FIFO config file "
                          f"({{\"fifo_depths\": {{\"StreamingFIFO_rtl_0\": 2, ...}}}}): "
                          f"{err}") from None
    bad = {k: v for k, v in out.items() if v < S.MIN_FIFO_DEPTH}
    if bad:
        name, v = next(iter(bad.items()))
        raise ConfigError(f"--fifo-depths {path}: {name} has depth {v}; FINN's FIFO needs >= "
                          f"{S.MIN_FIFO_DEPTH}")
    return out


def fifo_config(model) -> dict:
    """FINN's FIFO config (``ApplyFIFODepthsFromFile`` reads it) for ``model``'s FIFOs."""
    info = {"fifo_depths": {}, "fifo_sizes": {}, "impl_style": {}, "ram_style": {}}
    total = 0
    for n in S.fifo_nodes(model):
        inst = node_inst(n)
        depth = int(inst.get_nodeattr("depth"))
        size = int(inst.get_instream_width()) * depth
        info["fifo_depths"][n.name] = depth
        info["fifo_sizes"][n.name] = size
        info["impl_style"][n.name] = inst.get_nodeattr("impl_style")
        info["ram_style"][n.name] = inst.get_nodeattr("ram_style")
        total += size
    info["total_fifo_size_kiB"] = total / 8.0 / 1024.0
    return info


def fifo_cost(model, fpga_part: str) -> dict:
    """FINN's own estimates of the FIFOs at their depths (``StreamingFIFO_rtl``)."""
    lut = bram = 0.0
    bits = 0
    for n in S.fifo_nodes(model):
        inst = node_inst(n)
        lut += float(inst.lut_estimation(fpga_part))
        bram += float(inst.bram_estimation(fpga_part))
        bits += int(inst.get_instream_width()) * int(inst.get_nodeattr("depth"))
    return {"LUT": round(lut), "BRAM_18K": round(bram), "bits": bits,
            "n": len(S.fifo_nodes(model))}


def _explain(inst, sim_cycles: float, exp: int, model) -> str:
    op = inst.onnx_node.op_type
    if model is not None:
        return (f"the HLS model adds {model.depth} pipeline stages drained per frame plus the "
                f"restart cycle, which FINN's estimate ({exp}) leaves out"
                if sim_cycles > exp else "the schedule has fewer iterations than the estimate")
    if op.startswith("ConvolutionInputGenerator"):
        return ("FINN's estimate for the RTL sliding window is an analytical bound; the RTL "
                "itself streams at the rate measured here")
    if op.startswith("FMPadding"):
        return "FINN's estimate counts output pixels; the RTL's handshake rate is measured here"
    return "measured on the RTL; FINN's get_exp_cycles() is an analytical estimate"


def node_table(stitched_model, iso: dict[str, float]) -> list[dict]:
    """Per non-FIFO node: simulated cycles per frame alone vs FINN's ``get_exp_cycles()``."""
    from flow.sim import stitched_build as sb

    models = sb.hls_models(stitched_model)
    rows = []
    for n in stitched_model.graph.node:
        if n.name not in iso:
            continue
        inst = node_inst(n)
        exp = int(inst.get_exp_cycles())
        sim = float(iso[n.name])
        gap = (sim - exp) / exp if exp else float("nan")
        row = {"node": n.name, "op_type": n.op_type, "simulated": sim, "finn_exp_cycles": exp,
               "gap": round(gap, 4) if math.isfinite(gap) else None,
               "model": "hls cycle model" if n.name in models else "verilator"}
        if n.name in models:
            row["source"] = models[n.name].source
            row["pipeline_depth"] = models[n.name].depth
        if exp and abs(gap) > GAP_EXPLAINED:
            row["why"] = _explain(inst, sim, exp, models.get(n.name))
        rows.append(row)
    return rows


def deadlock_report(run: S.Run, model, pairs: list[dict], needed: dict[str, int]) -> str:
    """One line naming the stalled fork/joins, their full and empty FIFOs and depths, and the
    depth the gauge run needed."""
    depths = S.fifo_depths(model)
    fill = {k: v.get("fill", -1) for k, v in run.nodes.items()}
    parts = []
    for p in pairs:
        full = [f for f in p["fifos"] if fill.get(f, -1) >= fifo_capacity(depths[f])]
        if not full:
            continue
        empty = [x for x in p["long_side"] if x in depths and fill.get(x, -1) == 0]
        f = max(full, key=lambda x: needed.get(x, 0))
        parts.append(f"fork {p['fork']} -> join {p['join']}: skip FIFO {f} full at depth "
                     f"{depths[f]} (needs {needed.get(f, '?')}); "
                     + (f"{len(empty)} FIFO(s) on the other path empty (e.g. {empty[0]})"
                        if empty else "the other path holds no empty FIFO"))
    full_any = [k for k, d in depths.items() if fill.get(k, -1) >= fifo_capacity(d)]
    where = "; ".join(parts[:3]) if parts else (
        f"full FIFOs: {', '.join(full_any[:5]) or 'none'}")
    return (f"stitched simulation deadlocked at cycle {run.cycles} with "
            f"{run.frames - len(run.frame_done)} of {run.frames} frames pending: {where}; "
            f"set the depths with --fifo-depths or use the sized ones (fifo_sizing: sim)")


REFINE_ROUNDS = 6
"""At most this many re-runs that deepen FIFOs which still held their producer back."""


def _sized_runs(stitched, frames, depths: dict[str, int], *, ceiling: dict[str, int], deep,
                slowest: str, refine: bool, fpga_part, clk_ns, session, tools, cache, work,
                jobs):
    """Run the design with real FIFOs at ``depths``. With ``refine``, while its steady state is
    more than 1% slower than with deep FIFOs, deepen the FIFOs that held their producer back
    (input blocked): first those not upstream of the slowest node (whose producers wait on it
    anyway), else those upstream too (two nodes of nearly equal rate lose throughput through a
    shallow FIFO between them); each doubles (one upstream of the slowest node at most to its
    fill with deep FIFOs and a free-running source, ``ceiling``: beyond it, it only queues
    frames). FINN's real FIFO passes a beat on a cycle later than the simulation FIFO of the
    sizing run, so a long path of many FIFOs arrives later than sized, and its skip FIFO may need
    more. Returns ``(sized model, last run, rounds, simulator)``."""
    pred, _ = S.stream_dag(stitched)
    upstream = S.ancestors(slowest, pred)
    rounds = []
    for k in range(REFINE_ROUNDS + 1):
        with session():
            sized = S.apply_depths(stitched, depths, fpga_part, clk_ns)
        sim = S.prepare(sized, frames, tools, cache, work / "sized", gauge=False, jobs=jobs,
                        write=k == 0)
        run = S.run_sim(sim.exe, sim.data, work / f"sized_{k}.json", len(frames))
        held = deep.cycles_per_frame() / run.cycles_per_frame() if run.ok else 0.0
        rounds.append({"round": k, "cycles_per_frame": run.cycles_per_frame() if run.ok else None,
                       "throughput_held": round(held, 5), "error": run.error_kind or None,
                       "fifo_bits": fifo_bits(sized)})
        if not refine or not run.ok or held >= THROUGHPUT_HELD:
            break
        grown: dict[str, int] = {}
        for skip_upstream in (True, False):
            for n in S.fifo_nodes(sized):
                if (skip_upstream and n.name in upstream) or \
                        run.channels[n.input[0]]["blocked"] == 0:
                    continue
                d = depths[n.name]
                new = max(2 * d, d + 2)
                if n.name in upstream:  # beyond its deep-FIFO fill it only holds a backlog
                    new = min(max(ceiling[n.name], d), new)
                if new > d:
                    grown[n.name] = new
            if grown:
                break
        if not grown:
            break
        depths.update(grown)
    return sized, run, rounds, sim


THROUGHPUT_HELD = 0.99
"""The sized design must keep this fraction of the deep-FIFO steady-state throughput."""


def fifo_bits(model) -> int:
    return sum(int(node_inst(n).get_instream_width()) * int(node_inst(n).get_nodeattr("depth"))
               for n in S.fifo_nodes(model))


def run_stitched(hw_model, pixels_nhwc: np.ndarray, *, fpga_part: str, clk_ns: float,
                 session, tools, cache: Path, work: Path, jobs: int, golden=None,
                 imposed: dict[str, int] | None = None, fps_finn: float | None = None
                 ) -> tuple[dict, object, dict]:
    """The whole ``--sim stitched`` (see the module docstring). ``session``: a context manager
    factory for FINN's settings (:func:`flow.env.finn.finn_session` bound to the build).
    Returns ``(record, sized stitched model, FINN FIFO config)``."""
    from flow.proof.verify import GoldenVerifier

    t0 = time.perf_counter()
    with session():
        stitched = S.stitch(hw_model, fpga_part, clk_ns)
    frames = S.execute_frames(stitched, pixels_nhwc)
    oname = stitched.graph.output[0].name
    y = np.concatenate([f[oname] for f in frames], axis=0)
    if golden is not None:
        GoldenVerifier(golden, pixels_nhwc).check("stitched (python execution)", stitched, y)
    n = len(frames)
    gauge = S.prepare(stitched, frames, tools, cache, work / "gauge", gauge=True, jobs=jobs)
    iso = S.isolated_cycles(gauge, min(n, 4), jobs)
    period = int(math.ceil(max(iso.values())))
    paced = S.run_sim(gauge.exe, gauge.data, work / "gauge_paced.json", n, period=period)
    free = S.run_sim(gauge.exe, gauge.data, work / "gauge_free.json", n)
    for r in (paced, free):
        if not r.ok:
            raise VerificationError(f"stitched simulation (deep FIFOs): {r.error}")
    needed = S.sized_depths(paced, stitched)
    arrival = {c: v["first"] for c, v in paced.channels.items()}
    pairs = S.skip_fifos(stitched, arrival)
    slowest = max(iso, key=iso.get)
    sized, run, rounds, sim = _sized_runs(
        stitched, frames, dict(needed) if imposed is None else dict(imposed),
        ceiling=S.sized_depths(free, stitched), deep=free, slowest=slowest,
        refine=imposed is None, fpga_part=fpga_part, clk_ns=clk_ns, session=session,
        tools=tools, cache=cache, work=work, jobs=jobs)
    if run.error_kind == "deadlock":
        raise DeadlockError(deadlock_report(run, sized, pairs, needed))
    if not run.ok:
        raise VerificationError(f"stitched simulation: {run.error}")
    depths = S.fifo_depths(sized)
    cpf = run.cycles_per_frame()
    clock_hz = 1e9 / clk_ns
    first_in = run.channels[stitched.graph.input[0].name]["first"]
    rows = node_table(stitched, iso)
    cost = fifo_cost(sized, fpga_part)
    default_bits = sum(2 * int(node_inst(f).get_instream_width()) for f in S.fifo_nodes(sized))
    rec = {
        "frames": n, "exact": True, "against": "golden" if golden is not None else "python",
        "cycles_per_frame": cpf, "latency_cycles": int(run.frame_done[0] - first_in),
        "fps": round(clock_hz / cpf, 1), "fps_finn_estimate": fps_finn,
        "fps_deep_fifos": round(clock_hz / free.cycles_per_frame(), 1),
        "throughput_held": round(free.cycles_per_frame() / cpf, 5),
        "fps_bound": round(clock_hz / iso[slowest], 1),
        "slowest_node": slowest,
        "deadlock_free": True,
        "fifo_sizing": "sim" if imposed is None else "imposed (--fifo-depths)",
        "fifo_depths": S.fifo_depths(sized),
        "fifo_depths_needed": needed,
        "sizing_rounds": rounds,
        "skip_fifos": [{"fork": p["fork"], "join": p["join"],
                        "fifos": {f: depths[f] for f in p["fifos"]}} for p in pairs],
        "fifo_bits": cost["bits"], "fifo_bits_insertfifo_default": default_bits,
        "fifo_cost_finn": cost,
        "nodes": rows, "source_period_sizing_run": period,
        "compiled_models": gauge.compiled + sim.compiled,
        "wall_s": round(time.perf_counter() - t0, 2),
        "run_wall_s": {"sized": run.wall_s, "deep": free.wall_s, "paced": paced.wall_s},
    }
    if fps_finn and rec["fps"] / fps_finn < 0.9:
        rec["below_estimate_because"] = [r["node"] for r in rows if r["finn_exp_cycles"]
                                         and r["simulated"] > 1.05 * r["finn_exp_cycles"]]
    return rec, sized, fifo_config(sized)
