"""Benchmark plumbing: the ``make bench`` entry point and the accuracy results file."""

from __future__ import annotations

import json

import bench.common
from bench import accuracy

from .conftest import assert_one_line_error, run_cli


def test_bench_entry_point_rejects_unknown_benchmark():
    assert_one_line_error(run_cli(["-m", "bench", "nope"]), "nope", "golden_speed")


def _results(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path)
    return tmp_path / "accuracy.json"


def test_new_step_cost_keeps_the_ablation_numbers(tmp_path, monkeypatch):
    path = _results(tmp_path, monkeypatch)
    per_seed = {0: {"teacher": {"test_acc": 90.0}, "full": {"test_acc": 88.0}}}
    summary = accuracy.summarise(per_seed, [0])
    run = {"epochs": 2, "seeds": [0], "train_subset": 100, "student_init": "teacher",
           "threads": 1}
    bench.common.write_results("accuracy", {
        "complete": True, "run": run, "step_cost": {"batch": 256, "ratio": 1.2},
        "summary": summary, "goals": accuracy.goals(summary),
        "per_seed": {"0": per_seed[0]}, "configs": {}}, [["h"]])
    accuracy.update_cost(path, {"batch": 256, "ratio": 1.4})
    data = json.loads(path.read_text())
    assert data["step_cost"]["ratio"] == 1.4
    assert data["summary"] == summary and data["complete"] is True
    assert data["goals"]["teacher_gap"] == {"goal": "teacher - full <= 2.0 points",
                                            "measured": 2.0, "met": True}
    md = (tmp_path / "accuracy.md").read_text()
    assert "88.00" in md and "1.400x" in md


def test_step_cost_without_results_file(tmp_path, monkeypatch):
    path = _results(tmp_path, monkeypatch)
    accuracy.update_cost(path, {"batch": 256, "ratio": 1.3})
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["step_cost"]["ratio"] == 1.3


def test_ablation_staged_variant_splits_the_same_epochs(tmp_path):
    cfg = accuracy.ablation_config(0, 3, 100, "teacher", str(tmp_path), None, 1)
    act, staged = cfg.stage("staged_act"), cfg.stage("staged")
    assert act.model == {"float_weights": True} and act.init_from == "teacher"
    assert staged.model == {} and staged.init_from == "staged_act"
    assert act.epochs + staged.epochs == cfg.stage("full").epochs == 3
    assert act.loss_weights == staged.loss_weights == cfg.stage("full").loss_weights
    one = accuracy.ablation_config(0, 1, 100, "teacher", str(tmp_path), None, 1)
    assert "staged" not in accuracy.variants(1)
    assert [s.name for s in one.stages] == ["teacher", "plain", "kd", "si_kd", "full"]


def test_staged_recipe_is_compared_on_validation_accuracy_only():
    per_seed = {s: {"full": {"test_acc": 80.0, "val_acc": 81.0},
                    "staged": {"test_acc": 70.0, "val_acc": 81.0 + d}}
                for s, d in ((0, 1.0), (1, -0.5))}
    dec = accuracy.decisions(per_seed, [0, 1])["staged"]
    assert dec["val_delta"] == 0.25 and dec["better_on_val"] is True  # the test accuracy plays no part
    per_seed[1]["staged"]["val_acc"] = 79.0
    assert accuracy.decisions(per_seed, [0, 1])["staged"]["better_on_val"] is False
    assert accuracy.decisions({0: {"full": {"val_acc": 1.0}}}, [0]) == {}
