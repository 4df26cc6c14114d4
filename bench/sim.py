"""The generated-code simulations (``--sim``): compile and run time per node type, and the whole
default build plain, with ``--sim all`` on an empty compile cache (cold), and again on the warm
cache (cached), in one run on this machine.

Goal (issue 12): a cached rebuild with ``--sim all`` takes <= 1.5x the plain build.

    python -m bench.sim [--board pynq-z2] [--onnx FILE]
"""

from __future__ import annotations

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
    ratio = t_warm / plain
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
            ["cached / plain", f"{r['cached_over_plain']:.3f} (goal <= 1.5)", "-"]]
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
