"""Accuracy per LUT: test top-1 of plain W1A1 and SI (``si_h_resnet_w1a1_mbh``) at several widths
against their Pynq-Z2 LUT estimate, with the Pareto front.

The LUT side is built here: every (variant, width) through ``flow/build.py`` up to FINN's estimate
reports, all at one folding target, plus sibnn's model of the forks and adds FINN prices at 0
(:func:`flow.studies.lut_sweep`, the same sweep as notebook 02). The accuracy side is read, never
trained here: the ablation's ``plain`` and ``si_h_mbh`` rows (recipe width) and its
``w<W>_plain`` / ``w<W>_si_h_mbh`` rows (``python -m bench.accuracy ... --widths 16 24 48``), at
the budget that file states, which is copied into the results. A point without a measured
accuracy is listed as missing, never drawn or interpolated::

    python -m bench.accuracy --epochs 2 --train-subset 6400 --seeds 0 1 2 --jobs 1 --widths 16 24 48
    python -m bench.accuracy_per_lut            # -> bench/results/accuracy_per_lut.{json,md,png}

The ablation's budget is small; the networks trained at the shipped budget are the full-length
runs recorded with ``python -m bench.accuracy --record-runs`` (``full_runs``). The longest recipe
among them that has an SI network and its twin without SI (of those, the recipe of the best run on
val, as the shipped student is chosen) gets a panel of its own
(:func:`bench.ablation.compare.longest_recipe_arms`, seeds pooled): each network built to
estimates at the board's default folding, the folding the shipped build uses, with its own Pareto
front. The two panels are not comparable with each other (other budgets, other foldings).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("bench.accuracy_per_lut:main"))

import json
import tempfile
from pathlib import Path

from bench.common import RESULTS, write_results
from sibnn_base.errors import ArgumentParser, cli_errors

WIDTHS = (16, 24, 32, 48)
DEPTH = (1, 1, 2)
TARGET_FPS = 2000
"""One folding target for every point (the notebook's): the LUT axis compares networks, not
foldings."""


def join(rows: list[dict], summary: dict, recipe_width: int = 32) -> list[dict]:
    """One point per LUT row: its variant, width, LUT (modelled) and the ablation's mean test
    accuracy, std, val accuracy and seed count (None where the ablation has no such row), with
    ``pareto`` marking the points no other measured point beats."""
    from flow.studies import accuracy_by_width, pareto_front

    stats = {}  # (variant, width) -> the ablation's summary row
    for name, row in summary.items():
        for key in accuracy_by_width({name: row.get("test_acc_mean")}, recipe_width):
            stats[key] = row
    points = []
    for r in rows:
        s = stats.get((r["variant"], r["width"]), {})
        points.append({"variant": r["variant"], "arch": r["arch"], "width": r["width"],
                       "LUT": r["LUT"], "LUT_modelled": r["LUT_modelled"],
                       "BRAM_18K": r["BRAM_18K"], "fps": round(r["fps"], 1),
                       "test_acc_mean": s.get("test_acc_mean"),
                       "test_acc_std": s.get("test_acc_std"),
                       "val_acc_mean": s.get("val_acc_mean"), "seeds": s.get("seeds_done"),
                       "pareto": False})
    measured = [i for i, p in enumerate(points) if p["test_acc_mean"] is not None]
    for k in pareto_front([(points[i]["LUT_modelled"], points[i]["test_acc_mean"])
                           for i in measured]):
        points[measured[k]]["pareto"] = True
    return points


def full_budget_points(arms: list[dict], out_root: str | Path, board: str) -> list[dict]:
    """Each recorded network of the longest recipe
    (:func:`bench.ablation.compare.longest_recipe_arms`) built to estimates at the board's default
    folding (its ``model_args`` as registry overrides; resources do not depend on the trained
    weights), with its Pareto flag among these points."""
    from flow.config import BuildConfig
    from flow.studies import estimate, pareto_front

    points = []
    for i, a in enumerate(arms):
        cfg = BuildConfig(board=board, model=a["student"], model_overrides=dict(a["overrides"]),
                          output_dir=str(Path(out_root) / f"full_{i}"), verify_inputs=1)
        e = estimate(cfg)
        points.append({**a, "LUT": e["LUT"], "LUT_modelled": e["LUT_modelled"],
                       "BRAM_18K": e["BRAM_18K"], "fps": round(e["fps"], 1),
                       "all_nodes_hw": e["all_nodes_hw"], "pareto": False})
    for k in pareto_front([(p["LUT_modelled"], p["test_acc_mean"]) for p in points]):
        points[k]["pareto"] = True
    return points


def full_budget_text(points: list[dict]) -> str:
    """The full-length runs' budget, for the plot and the table."""
    if not points:
        return ""
    seeds = sorted({s for p in points for s in p["seeds"]})
    return (f"shipped recipe, {points[0]['epochs']} epochs, seeds {seeds}, "
            f"width {points[0]['overrides'].get('width')}, best-val epoch")


def budget_text(run: dict) -> str:
    """The ablation's training budget (its results file's ``run``), for the plot and the table."""
    return (f"{run.get('epochs')} epochs, {run.get('train_subset') or 'all'} training images, "
            f"seeds {run.get('seeds')}, {run.get('device')}")


def run(data: dict, source: str, widths=WIDTHS, depth=DEPTH, target_fps: int = TARGET_FPS,
        board: str = "pynq-z2", results_dir: Path | None = None) -> dict:
    from bench.ablation.compare import longest_recipe_arms
    from flow import plots, studies

    arms = longest_recipe_arms(data.get("full_runs") or {})
    with tempfile.TemporaryDirectory(prefix="sibnn-acc-lut-") as d:
        rows = studies.lut_sweep(d, widths=list(widths), depth=list(depth), board=board,
                                 target_fps=target_fps)
        full = full_budget_points(arms, d, board)
    summary = data.get("summary") or {}
    points = join(rows, summary)
    out = Path(results_dir) if results_dir is not None else RESULTS
    png = out / "accuracy_per_lut.png"
    budget = budget_text(data.get("run") or {})
    plots.plot_accuracy_per_lut(rows, {k: v["test_acc_mean"] for k, v in summary.items()
                                       if v.get("test_acc_mean") is not None}, png,
                                budget=budget, full=full, full_budget=full_budget_text(full))
    missing = [f"{p['variant']} w{p['width']}" for p in points if p["test_acc_mean"] is None]
    res = {"board": board, "target_fps": target_fps, "depth": list(depth),
           "accuracy_from": source, "accuracy_budget": data.get("run"),
           "accuracy_complete": data.get("complete"), "points": points, "missing": missing,
           "pareto": [f"{p['variant']} w{p['width']}" for p in
                      sorted((p for p in points if p["pareto"]), key=lambda p: p["LUT_modelled"])],
           "full_budget": {"budget": full_budget_text(full), "folding": "board default",
                           "points": full,
                           "pareto": [p["label"] for p in sorted(
                               (p for p in full if p["pareto"]), key=lambda p: p["LUT_modelled"])]},
           "plot": png.name}
    table = [["variant", "width", "LUT (modelled)", "BRAM18", "fps", "test % (mean ± std)",
              "val %", "seeds", "Pareto"]]
    for p in sorted(points, key=lambda p: (p["variant"], p["width"])):
        acc = ("-" if p["test_acc_mean"] is None else
               f"{p['test_acc_mean']:.2f}" + ("" if p["test_acc_std"] is None
                                              else f" ± {p['test_acc_std']:.2f}"))
        table.append([p["variant"], str(p["width"]), f"{p['LUT_modelled']:,.0f}",
                      f"{p['BRAM_18K']:.0f}", f"{p['fps']:.0f}", acc,
                      "-" if p["val_acc_mean"] is None else f"{p['val_acc_mean']:.2f}",
                      str(p["seeds"] or "-"), "yes" if p["pareto"] else ""])
    table.append([f"accuracy budget: {budget}", "", "", "", "", "", "", "", ""])
    for p in sorted(full, key=lambda p: p["LUT_modelled"]):
        table.append([f"{p['label']} ({p['student']})", str(p["overrides"].get("width")),
                      f"{p['LUT_modelled']:,.0f}", f"{p['BRAM_18K']:.0f}", f"{p['fps']:.0f}",
                      f"{p['test_acc_mean']:.2f}" + ("" if p["test_acc_std"] is None
                                                     else f" ± {p['test_acc_std']:.2f}"),
                      f"{p['val_acc_mean']:.2f}", str(len(p["seeds"])),
                      "yes" if p["pareto"] else ""])
    if full:
        table.append([f"rows above: {full_budget_text(full)}, the board's default folding "
                      "(recorded runs, `python -m bench.accuracy --record-runs`)",
                      "", "", "", "", "", "", "", ""])
    write_results("accuracy_per_lut", res, table, results_dir)
    return res


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy", default=str(RESULTS / "accuracy.json"),
                   help="the ablation's results file (default bench/results/accuracy.json)")
    p.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    p.add_argument("--board", default="pynq-z2")
    p.add_argument("--target-fps", type=int, default=TARGET_FPS)
    p.add_argument("--results-dir", default=None)
    a = p.parse_args(argv)
    acc = Path(a.accuracy)
    if not acc.is_file():
        p.exit(2, f"error: {acc} not found; run python -m bench.accuracy first\n")
    try:
        data = json.loads(acc.read_text())
    except json.JSONDecodeError as err:
        p.exit(2, f"error: {acc} is not valid JSON ({err}); rerun python -m bench.accuracy\n")
    if not isinstance(data, dict) or not isinstance(data.get("summary") or {}, dict):
        p.exit(2, f"error: {acc} is not an accuracy results file (no summary table)\n")
    res = run(data, str(acc), widths=a.widths, target_fps=a.target_fps, board=a.board,
              results_dir=Path(a.results_dir) if a.results_dir else None)
    print(f"Pareto front: {', '.join(res['pareto']) or 'none (no measured point)'}; "
          f"missing accuracy: {', '.join(res['missing']) or 'none'}")
    if res["full_budget"]["points"]:
        print(f"{res['full_budget']['budget']}: Pareto front "
              f"{', '.join(res['full_budget']['pareto'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
