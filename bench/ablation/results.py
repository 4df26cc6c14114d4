"""The ablation's results file, ``accuracy.json`` with its table ``accuracy.md``: one database that
each command updates in its own sections, keeping the others.

The ablation run writes ``complete``, ``run``, ``step_cost``, ``summary``, ``goals``,
``decisions``, ``per_seed`` and ``configs``; ``--shipped`` writes ``shipped``; ``--record-runs``
the recorded runs and their comparisons; ``--record-device-run`` appends to ``device_runs``.
Every write rewrites the Markdown table from the whole file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.ablation.compare import (
    best_runs,
    method_comparisons,
    network_seed_means,
    recipe_key,
    run_comparisons,
    seed_means,
)
from bench.ablation.goals import method_goal
from bench.ablation.markdown import table
from bench.ablation.record import record_run
from bench.common import write_results

EMPTY = {"complete": False, "run": None, "step_cost": None, "summary": {}, "goals": {},
         "per_seed": {}, "configs": {}}
"""A results file with no ablation in it yet."""

KEPT_BY_ABLATION = ("shipped", "full_runs", "run_comparisons", "full_runs_best", "seed_means",
                    "network_seed_means", "method_comparisons", "method_goal", "device_runs")
"""Sections an ablation run keeps from the file it rewrites (written by the other commands)."""


def load(path: Path) -> dict:
    """The results file at ``path``, or :data:`EMPTY` where there is none yet."""
    return json.loads(path.read_text()) if path.exists() else copy.deepcopy(EMPTY)


def write(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` and its Markdown table beside it (:func:`bench.common.write_results`:
    a ``machine`` already in ``data`` stays, else this machine is described)."""
    run = data.get("run")
    seeds = run["seeds"] if run else []
    per_seed = {int(k): v for k, v in data["per_seed"].items()}
    write_results("accuracy", data, table(data["summary"], per_seed, seeds, data["step_cost"], run,
                                          data.get("shipped"), data), results_dir=path.parent)


def kept_by_ablation(path: Path) -> dict:
    """The sections of ``path`` (if any) that an ablation run keeps: :data:`KEPT_BY_ABLATION`."""
    prev = json.loads(path.read_text()) if path.exists() else {}
    return {k: prev[k] for k in KEPT_BY_ABLATION if k in prev}


def render(path: Path, cost: dict | None = None) -> None:
    """Rewrite the Markdown table (and JSON) from an existing results file, e.g. after an
    interrupted run; no number is recomputed except ``cost``, the step cost, when given."""
    data = json.loads(path.read_text())
    if cost is not None:
        data["step_cost"] = cost
        data.pop("machine", None)  # measured now, on this machine
    write(path, data)


def update_cost(path: Path, cost: dict) -> None:
    """Store a new step cost; the ablation numbers already in ``path`` stay."""
    if not path.exists():
        write(path, {**EMPTY, "step_cost": cost})
        return
    render(path, cost)


def update_shipped(path: Path, sh: dict) -> None:
    """Store the shipped-checkpoint evaluation; the ablation numbers already in ``path`` stay."""
    data = load(path)
    data["shipped"] = sh
    data.pop("machine", None)
    write(path, data)


def update_runs(path: Path, run_dirs: list[Path]) -> dict:
    """Record ``run_dirs`` (by experiment name, replacing earlier records of the same name) and
    recompute the comparisons; the ablation and shipped numbers already in ``path`` stay."""
    data = load(path)
    runs = dict(data.get("full_runs") or {})
    for d in run_dirs:
        runs[d.name] = record_run(d)
    data["full_runs"] = runs
    keys = {name: recipe_key(r) for name, r in runs.items()}
    data["run_comparisons"] = run_comparisons(runs, keys)
    data["full_runs_best"] = best_runs(runs, data["run_comparisons"], keys)
    data["seed_means"] = seed_means(runs)
    data["network_seed_means"] = network_seed_means(runs)
    data["method_comparisons"] = method_comparisons(runs)
    data["method_goal"] = method_goal(data["method_comparisons"])
    data.pop("machine", None)
    write(path, data)
    return data


def add_device_run(path: Path, rec: dict) -> None:
    """Append a device run's record (:func:`bench.ablation.record.device_run`) to
    ``device_runs``; the ablation numbers already in ``path`` stay."""
    data = load(path)
    data.setdefault("device_runs", []).append(rec)
    write(path, data)
