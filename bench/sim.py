"""The generated-code simulations (``--sim``): compile and run time per node type, and the whole
default build plain, with ``--sim all`` on an empty compile cache (cold), and again on the warm
cache (cached), in one run on this machine. ``--sim all`` includes the stitched accelerator:
its simulated fps against FINN's estimate and against the slowest node alone, the first frame's
latency, the FIFO bits at the sized depths against ``InsertFIFO``'s depth-2 defaults, and the
stitched simulation's wall time (cached compiles).

Goals: a cached rebuild with ``--sim all`` takes <= 1.5x the plain build plus the stitched
simulation; the stitched simulation of the default model takes <= 300 s with compiles cached;
the sized design runs at >= 0.95x the slowest node's rate.

    python -m bench.sim [--board pynq-z2] [--onnx FILE]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("bench.sim:main"))

import os
import tempfile
import time
from pathlib import Path

from bench.common import write_results
from flow.config import DEFAULT_BOARD
from sibnn_base.errors import ArgumentParser, cli_errors


def _build(tmp: Path, name: str, cache: Path, **kw) -> tuple[dict, float]:
    from flow.build import build
    from flow.config import resolve_build_config
    from flow.report import load_summary

    old = os.environ.get("SIBNN_SIM_CACHE")
    os.environ["SIBNN_SIM_CACHE"] = str(cache)
    try:
        t0 = time.perf_counter()
        out = build(resolve_build_config(output_dir=str(tmp / name), **kw), echo=lambda *a: None)
        wall = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("SIBNN_SIM_CACHE", None)
        else:
            os.environ["SIBNN_SIM_CACHE"] = old
    return load_summary(out), wall


def run(board: str = DEFAULT_BOARD, onnx: str | None = None, jobs: int = 2) -> dict:
    src = {"onnx": onnx} if onnx else {}
    with tempfile.TemporaryDirectory(prefix="sibnn-bench-sim-") as d:
        tmp = Path(d)
        cache = tmp / "cache"
        _, plain = _build(tmp, "plain", cache, board=board, **src)
        cold, t_cold = _build(tmp, "cold", cache, board=board, sim="all", sim_jobs=jobs, **src)
        warm, t_warm = _build(tmp, "cached", cache, board=board, sim="all", sim_jobs=jobs, **src)
    sc, sw = cold["simulation"], warm["simulation"]
    per_op = {}
    for kind in ("cppsim", "rtlsim"):
        for op, v in sc.get(kind, {}).get("by_op", {}).items():
            per_op[op] = {"kind": kind, "nodes": v["nodes"],
                          "compile_s_per_node": round(v["compile_s"] / v["nodes"], 2),
                          "run_s_per_node_per_input": round(v["run_s_per_input"] / v["nodes"], 4)}
    st = warm.get("stitched") or {}
    st_wall = float(st.get("wall_s", 0.0))
    ratio = (t_warm - st_wall) / plain
    stitched = {
        "frames": st.get("frames"), "exact": st.get("exact"),
        "fps_simulated": st.get("fps"), "fps_finn_estimate": st.get("fps_finn_estimate"),
        "simulated_over_finn": round(st["fps"] / st["fps_finn_estimate"], 4)
        if st.get("fps_finn_estimate") else None,
        "fps_slowest_node_alone": st.get("fps_bound"),
        "simulated_over_slowest_node": round(st["fps"] / st["fps_bound"], 4) if st else None,
        "goal_fps_over_bound": 0.95,
        "latency_cycles_first_frame": st.get("latency_cycles"),
        "deadlock_free": st.get("deadlock_free"),
        "throughput_held_sized_vs_deep": st.get("throughput_held"),
        "fifo_bits_sized": st.get("fifo_bits"),
        "fifo_bits_insertfifo_default": st.get("fifo_bits_insertfifo_default"),
        "fifo_cost_finn": st.get("fifo_cost_finn"),
        "wall_s_cached": st_wall, "wall_s_cold": (cold.get("stitched") or {}).get("wall_s"),
        "goal_wall_s": 300, "goal_wall_met": bool(st) and st_wall <= 300,
        "slowest_node": st.get("slowest_node"),
    }
    return {
        "board": board, "source": onnx or "default model", "jobs": jobs,
        "n_inputs": sc["n_inputs"],
        "plain_build_s": round(plain, 1), "sim_all_cold_build_s": round(t_cold, 1),
        "sim_all_cached_build_s": round(t_warm, 1),
        "cached_over_plain": round(ratio, 3), "goal_cached_over_plain": 1.5,
        "goal_met": ratio <= 1.5,
        "cold": {"seconds": sc["seconds"], "compiled": {k: sc[k]["compiled"]
                                                        for k in ("cppsim", "rtlsim") if k in sc}},
        "cached": {"seconds": sw["seconds"], "compiled": {k: sw[k]["compiled"]
                                                          for k in ("cppsim", "rtlsim") if k in sw}},
        "nodes": {k: sc[k]["nodes"] for k in ("cppsim", "rtlsim") if k in sc},
        "python_only": sc["python_only"],
        "per_op": per_op,
        "tools": sc["tools"],
        "stitched": stitched,
    }


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", default=DEFAULT_BOARD)
    p.add_argument("--onnx", default=None, help="a QONNX file instead of the default model")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    r = run(a.board, a.onnx, a.jobs)
    rows = [["build", "wall s", "compiled nodes"],
            ["plain", f"{r['plain_build_s']}", "-"],
            ["--sim all, cold cache", f"{r['sim_all_cold_build_s']}",
             str(sum(r["cold"]["compiled"].values()))],
            ["--sim all, cached", f"{r['sim_all_cached_build_s']}",
             str(sum(r["cached"]["compiled"].values()))],
            ["cached (less stitched) / plain", f"{r['cached_over_plain']:.3f} (goal <= 1.5)",
             "-"]]
    st = r["stitched"]
    if st.get("frames"):
        rows += [["stitched: frames, exact", f"{st['frames']}, {st['exact']}", "-"],
                 ["stitched: fps simulated / FINN estimate",
                  f"{st['fps_simulated']} / {st['fps_finn_estimate']:.1f} = "
                  f"{st['simulated_over_finn']}", "-"],
                 ["stitched: fps / slowest node alone",
                  f"{st['simulated_over_slowest_node']} (goal >= 0.95)", st["slowest_node"]],
                 ["stitched: first-frame latency", f"{st['latency_cycles_first_frame']} cycles",
                  "-"],
                 ["stitched: FIFO bits sized / InsertFIFO default",
                  f"{st['fifo_bits_sized']} / {st['fifo_bits_insertfifo_default']}",
                  f"FINN est. {st['fifo_cost_finn']['LUT']} LUT, "
                  f"{st['fifo_cost_finn']['BRAM_18K']} BRAM18"],
                 ["stitched: wall s (cached / cold)",
                  f"{st['wall_s_cached']} / {st['wall_s_cold']} (goal <= 300 cached)", "-"]]
    rows += [[f"{op} ({v['kind']}, {v['nodes']} nodes)",
              f"compile {v['compile_s_per_node']} s/node",
              f"run {1000 * v['run_s_per_node_per_input']:.1f} ms/node/input"]
             for op, v in r["per_op"].items()]
    write_results("sim" if not a.onnx else f"sim_{Path(a.onnx).stem}", r, rows)
    print(f"plain {r['plain_build_s']} s, --sim all cold {r['sim_all_cold_build_s']} s, cached "
          f"{r['sim_all_cached_build_s']} s: {r['cached_over_plain']:.2f}x (goal <= 1.5: "
          f"{'met' if r['goal_met'] else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
