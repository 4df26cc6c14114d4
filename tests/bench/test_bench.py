"""Benchmark plumbing: the ``make bench`` entry point and the accuracy results file."""

from __future__ import annotations

import copy
import json

import pytest

import bench.common
from bench.ablation import cli, compare, goals, markdown, plan, results, schedule, stats
from bench.ablation.cost import step_cost
from flow import studies
from quant_models.train.resume import resume_diff
from sibnn_base.typed import to_dict
from tests.conftest import assert_one_line_error, run_cli


def test_bench_entry_point_rejects_unknown_benchmark():
    assert_one_line_error(run_cli(["-m", "bench", "nope"]), "nope", "golden_speed")


def _results(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    return tmp_path / "accuracy.json"


def test_new_step_cost_keeps_the_ablation_numbers(tmp_path, monkeypatch):
    path = _results(tmp_path, monkeypatch)
    per_seed = {0: {"teacher": {"test_acc": 90.0}, "full": {"test_acc": 88.0}}}
    summary = stats.summarise(per_seed, [0])
    run = {"epochs": 2, "seeds": [0], "train_subset": 100, "student_init": "teacher",
           "threads": 1}
    bench.common.write_results("accuracy", {
        "complete": True, "run": run, "step_cost": {"batch": 256, "ratio": 1.2},
        "summary": summary, "goals": goals.ablation_goals(summary),
        "per_seed": {"0": per_seed[0]}, "configs": {}}, [["h"]])
    results.update_cost(path, {"batch": 256, "ratio": 1.4})
    data = json.loads(path.read_text())
    assert data["step_cost"]["ratio"] == 1.4
    assert data["summary"] == summary and data["complete"] is True
    assert data["goals"]["teacher_gap"] == {"goal": "teacher - full <= 2.0 points",
                                            "measured": 2.0, "met": True}
    assert data["goals"]["teacher_top1"]["met"] is False
    md = (tmp_path / "accuracy.md").read_text()
    assert "88.00" in md and "1.400x" in md


def test_shipped_evaluation_is_stored_beside_the_ablation(tmp_path, monkeypatch):
    path = _results(tmp_path, monkeypatch)
    per_seed = {0: {"plain": {"test_acc": 80.0}}}
    summary = stats.summarise(per_seed, [0])
    bench.common.write_results("accuracy", {
        "complete": True, "run": None, "step_cost": None, "summary": summary, "goals": {},
        "per_seed": {"0": per_seed[0]}, "configs": {}}, [["h"]])
    sh = {"default_model": "m", "models": {"m": {"file": "m.pt", "test_acc": 89.5,
                                                 "registry_top1": 89.4,
                                                 "matches_registry": False}},
          "goals": {"student_top1": {"goal": "shipped m >= 91.0 %", "measured": 89.5,
                                     "met": False}}}
    results.update_shipped(path, sh)
    data = json.loads(path.read_text())
    assert data["shipped"] == sh and data["summary"] == summary
    md = (tmp_path / "accuracy.md").read_text()
    assert "89.50" in md and "registry says 89.4" in md and "shipped m >= 91.0 %: 89.5 -> MISSED" in md
    rows = markdown.shipped_rows(sh, 6)
    assert all(len(r) == 6 for r in rows)


def test_step_cost_without_results_file(tmp_path, monkeypatch):
    path = _results(tmp_path, monkeypatch)
    results.update_cost(path, {"batch": 256, "ratio": 1.3})
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["step_cost"]["ratio"] == 1.3


def test_ablation_staged_variant_splits_the_same_epochs(tmp_path):
    cfg = plan.ablation_config(0, 3, 100, "teacher", str(tmp_path), None, 1)
    act, staged = cfg.stage("staged_act"), cfg.stage("staged")
    assert act.model == {"float_weights": True} and act.init_from == "teacher"
    assert staged.model == {} and staged.init_from == "staged_act"
    assert act.epochs + staged.epochs == cfg.stage("full").epochs == 3
    assert act.loss_weights == staged.loss_weights == cfg.stage("full").loss_weights
    one = plan.ablation_config(0, 1, 100, "teacher", str(tmp_path), None, 1)
    assert "staged" not in plan.variants(1)
    assert [s.name for s in one.stages] == ["teacher", "plain", "mbh", "si_h_mbh", "si_h_mbh_ds",
                                            "full", "kd", "si_kd", "si_h", "mbh_ce"]
    assert one.stage("mbh_ce").model == {"head_bits": 8, "sign_bias": True}
    assert one.stage("mbh_ce").teacher is None and one.stage("mbh_ce").init_from == "teacher"
    # a run recorded before mbh_ce existed (staged included) is extended, not reordered
    old = plan.ablation_config(0, 2, 100, "teacher", str(tmp_path), None, 1,
                                   names=tuple(v for v in studies.VARIANTS if v != "mbh_ce"))
    new = plan.ablation_config(0, 2, 100, "teacher", str(tmp_path), None, 1)
    assert [s.name for s in new.stages] == [s.name for s in old.stages] + ["mbh_ce"]
    assert resume_diff(to_dict(old), to_dict(new)) == []
    assert one.stage("si_h_mbh_ds").model == {"si_blocks": "downsample"}
    some = plan.ablation_config(0, 2, 100, "teacher", str(tmp_path), None, 1,
                                    names=("plain", "si_h_mbh"), compile=True)
    assert [s.name for s in some.stages] == ["teacher", "plain", "si_h_mbh"] and some.compile
    # a run of the first variants is resumed (extended) by a run of all of them
    first = plan.ablation_config(0, 2, 100, "teacher", str(tmp_path), None, 1,
                                     names=("teacher", "plain", "mbh", "si_h_mbh"))
    every = plan.ablation_config(0, 2, 100, "teacher", str(tmp_path), None, 1)
    assert resume_diff(to_dict(first), to_dict(every)) == []
    # every stage trains with the shipped student recipe's augmentation, 8-bit stem and layout
    assert one.stage("teacher").crop_pad == 2 and one.stage("teacher").hflip is True
    assert one.data.crop_pad == 2 and one.data.hflip and one.channels_last
    assert one.model["stem_bits"] == 8 and one.stage("full").select.value == "best_val"
    # the ablation places SI per variant, whatever the shipped recipe ships (si_blocks)
    assert "si_blocks" not in one.model and one.stage("si_h_mbh").model == {"si_blocks": "all"}
    assert one.stage("mbh").model == {"head_bits": 8, "sign_bias": True}
    assert one.stage("mbh").student == "resnet_w1a1"
    assert plan.needs(one, "si_h_mbh") == ["teacher", "teacher"]
    assert plan.needs(cfg, "staged") == ["teacher", "staged_act"]
    assert plan.needs(one, "plain") == ["teacher"]  # initialised from it
    wide = plan.ablation_config(0, 1, 100, "teacher", str(tmp_path), None, 1, widths=(16,))
    assert [s.name for s in wide.stages][-3:] == ["w16_teacher", "w16_plain", "w16_si_h_mbh"]
    assert wide.stage("w16_si_h_mbh").model == {"si_blocks": "all", "width": 16}
    assert wide.stage("w16_si_h_mbh").student == "si_h_resnet_w1a1_mbh"
    assert plan.needs(wide, "w16_plain") == ["w16_teacher"]
    assert studies.split_name("w16_si_h_mbh") == ("si_h_mbh", 16)
    assert studies.split_name("si_h_mbh") == ("si_h_mbh", None)


def test_staged_recipe_is_compared_on_validation_accuracy_only():
    per_seed = {s: {"full": {"test_acc": 80.0, "val_acc": 81.0},
                    "staged": {"test_acc": 70.0, "val_acc": 81.0 + d}}
                for s, d in ((0, 1.0), (1, -0.5))}
    dec = stats.decisions(per_seed, [0, 1])["staged"]
    assert dec["val_delta"] == 0.25 and dec["better_on_val"] is True  # the test accuracy plays no part
    per_seed[1]["staged"]["val_acc"] = 79.0
    assert stats.decisions(per_seed, [0, 1])["staged"]["better_on_val"] is False
    assert stats.decisions({0: {"full": {"val_acc": 1.0}}}, [0]) == {}


def test_the_cheaper_si_is_judged_on_validation_accuracy_over_the_seeds_with_both():
    per_seed = {0: {"si_h_mbh": {"test_acc": 90.0, "val_acc": 90.0},
                    "si_h_mbh_ds": {"test_acc": 89.0, "val_acc": 90.5}},
                1: {"si_h_mbh": {"test_acc": 91.0, "val_acc": 90.0},
                    "si_h_mbh_ds": {"test_acc": 90.0, "val_acc": 89.7}},
                2: {"si_h_mbh": {"test_acc": 50.0, "val_acc": 50.0}}}  # no ds run: left out
    dec = stats.decisions(per_seed, [0, 1, 2])["si_downsample_only"]
    assert dec["seeds"] == [0, 1] and dec["val_delta"] == 0.1 and dec["test_delta"] == -1.0
    assert dec["as_good_on_val"] is True
    rows = markdown.table(stats.summarise(per_seed, [0, 1, 2]), per_seed, [0, 1, 2], None)
    assert any("2 seed(s): val +0.10, test -1.00" in r[0] for r in rows)


def test_goals_name_the_best_si_variant_by_validation_accuracy():
    per_seed = {0: {"teacher": {"test_acc": 93.5, "val_acc": 94.0},
                    "plain": {"test_acc": 90.0, "val_acc": 90.0},
                    "full": {"test_acc": 91.0, "val_acc": 90.5},
                    "si_h": {"test_acc": 90.2, "val_acc": 91.5}}}
    g = goals.ablation_goals(stats.summarise(per_seed, [0]))
    assert g["full_top1"]["goal"].startswith("si_h")  # best on val, although worse on test
    assert g["method_gain"] == {"goal": "si_h - plain >= 0.5 points (same width and budget)",
                                "measured": 0.2, "met": False, "best_student_on_val": "si_h"}
    # missed: the file names the best student on val, whichever it is
    per_seed[0]["plain"]["val_acc"] = 92.0
    g = goals.ablation_goals(stats.summarise(per_seed, [0]))
    assert g["method_gain"]["best_student_on_val"] == "plain"
    rows = markdown.table(stats.summarise(per_seed, [0]), per_seed, [0], None)
    assert any("MISSED; the best student on val at this budget: W1A1 plain" in r[0] for r in rows)
    # the shipped network's own baseline: its SI variants (best on val) against it trained with CE
    per_seed[0].update({"si_h_mbh": {"test_acc": 91.0, "val_acc": 91.0},
                        "si_h_mbh_ds": {"test_acc": 90.9, "val_acc": 91.2},
                        "mbh_ce": {"test_acc": 90.0, "val_acc": 90.0}})
    m = goals.ablation_goals(stats.summarise(per_seed, [0]))["method_gain_mbh"]
    assert m["goal"].startswith("si_h_mbh_ds - mbh_ce") and m["measured"] == 0.9 and m["met"]
    assert g["teacher_top1"]["met"] is True


def test_ablation_runs_every_variant_as_concurrent_jobs_on_cpu(tmp_path):
    """The GPU ablation's command at a tiny CPU scale: 8x8 digits, one epoch, two jobs at once;
    every variant is trained, collected with its device, and the table states the budget. The
    shipped-checkpoint section already in the results file stays."""
    (tmp_path / "res").mkdir()
    sh = {"default_model": "m", "models": {}, "goals": {}}
    (tmp_path / "res" / "accuracy.json").write_text(json.dumps({"shipped": sh}))
    proc = run_cli(["-m", "bench.accuracy", "--dataset", "digits", "--val-size", "200",
                    "--epochs", "1", "--seeds", "0", "--jobs", "2", "--no-cost",
                    "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
                    "--results-dir", str(tmp_path / "res")], timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "res" / "accuracy.json").read_text())
    assert data["complete"] is True and data["shipped"] == sh
    assert set(data["per_seed"]["0"]) == set(plan.variants(1))
    assert all(r["device"] == "cpu" and r["epochs"] == 1 for r in data["per_seed"]["0"].values())
    assert data["run"]["jobs_at_once"] == 2 and data["run"]["wall_s"] > 0
    assert "method_gain" in data["goals"] and "teacher_top1" in data["goals"]
    md = (tmp_path / "res" / "accuracy.md").read_text()
    assert "device cpu" in md and "SI(h)" in md


def test_ablation_refuses_a_missing_gpu_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a CUDA GPU")
    proc = run_cli(["-m", "bench.accuracy", "--device", "cuda", "--epochs", "1",
                    "--runs-dir", str(tmp_path)])
    assert_one_line_error(proc, "cuda", "--device cpu")


def test_step_cost_times_fused_and_brevitas_forward():
    cost = step_cost(steps=1, batch=8, data_dir=None)
    assert cost["batch"] == 8 and cost["steps_each"] == 1
    for key in ("plain_step_s", "distill_step_s", "distill_step_brevitas_forward_s"):
        assert cost[key] > 0
    # the bench divides unrounded medians; the stored step times are rounded to 0.1 ms
    assert cost["fused_forward_speedup"] == pytest.approx(
        cost["distill_step_brevitas_forward_s"] / cost["distill_step_s"], rel=5e-3)
    assert cost["distill_step_channels_last_s"] > 0 and cost["channels_last_speedup"] > 0


def test_bench_dispatch_does_not_hand_its_own_argv_to_a_benchmark(monkeypatch):
    """`python -m bench golden_speed` once died in golden_speed's argparse on "golden_speed"."""
    import sys

    from bench import __main__ as entry
    from bench import golden_speed

    calls = []

    def reached(*a, **k):
        calls.append((a, k))
        return {"per_batch": {}}

    monkeypatch.setattr(golden_speed, "run", reached)
    monkeypatch.setattr(sys, "argv", ["bench", "golden_speed"])
    assert entry.main(["golden_speed"]) == 0
    assert calls, "golden_speed's benchmark was never reached"


def _digits_run(out, experiment: str, student: str, epochs: int = 1, seed: int = 0,
                stage: dict | None = None, **model) -> None:
    from quant_models.train import build_config, train

    train(build_config({
        "experiment": experiment, "out_dir": str(out), "num_threads": 1, "progress": False,
        "seed": seed,
        "data": {"name": "digits", "val_size": 200, "train_subset": 256},
        "model": {"width": 8, "depth": [1, 1], **model}, "eval_batch_size": 400,
        "stages": [{"name": "student", "student": student, "epochs": epochs, "lr": 0.005,
                    "batch_size": 64, "ema_decay": 0.9, **(stage or {})}]}), log=lambda *_: None)


def test_the_method_is_compared_with_plain_w1a1_trained_with_ce_only(tmp_path, capsys):
    """The issue's method goal: an SI student distilled block-wise against its twin without SI
    trained with CE only from the same start (same recipe but for the teacher and the loss),
    paired by seed; the twin distilled the same way measures SI alone and is not that baseline,
    nor is a CE-only run started elsewhere."""
    runs, res = tmp_path / "runs", tmp_path / "res"
    res.mkdir()
    (res / "accuracy.json").write_text(json.dumps(results.EMPTY))
    _digits_run(runs, "teacher", "si_resnet_fp")
    t = str(runs / "teacher" / "student" / "final.pt")
    distil = {"teacher": t, "init_from": t, "loss_weights": {"ce": 1.0, "kd": 1.0, "block": 1.0}}
    names = []
    for seed in (0, 1):
        _digits_run(runs, f"method_s{seed}", "si_resnet_w1a1", seed=seed, stage=distil)
        _digits_run(runs, f"ce_s{seed}", "resnet_w1a1", seed=seed, stage={"init_from": t})
        names += [f"method_s{seed}", f"ce_s{seed}"]
    _digits_run(runs, "kd_twin", "resnet_w1a1", stage=distil)
    _digits_run(runs, "ce_scratch", "resnet_w1a1")
    names += ["kd_twin", "ce_scratch"]
    rc = cli.main(["--record-runs", *(str(runs / n) for n in names),
                        "--results-dir", str(res)])
    assert rc == 0 and "the method: si_resnet_w1a1 [" in capsys.readouterr().out
    data = json.loads((res / "accuracy.json").read_text())
    r = data["full_runs"]
    assert [compare.loss_kind(r[n]) for n in ("method_s0", "ce_s0", "kd_twin")] == [
        "block", "ce", "block"]
    (key, m), = data["method_comparisons"].items()
    assert key.startswith("si_resnet_w1a1 [") and key.endswith(
        "+ block KD vs resnet_w1a1 CE only, 1 epochs")
    assert m["seeds"] == [0, 1] and m["method_runs"] == ["method_s0", "method_s1"]
    assert m["plain_runs"] == ["ce_s0", "ce_s1"]
    deltas = [round(r[f"method_s{s}"]["val_acc"] - r[f"ce_s{s}"]["val_acc"], 2) for s in (0, 1)]
    assert m["val_delta_per_seed"] == deltas
    mv = round((r["method_s0"]["val_acc"] + r["method_s1"]["val_acc"]) / 2, 2)
    pv = round((r["ce_s0"]["val_acc"] + r["ce_s1"]["val_acc"]) / 2, 2)
    assert (m["method_val_mean"], m["plain_val_mean"]) == (mv, pv)
    assert m["val_delta_mean"] == round(mv - pv, 2)
    assert m["method_better_by_0.5_on_mean_val"] == (mv - pv >= 0.5)
    # the SI-alone comparison stays the distilled twin's
    assert "method_s0 vs kd_twin" in data["run_comparisons"]
    assert not any("ce_" in k for k in data["run_comparisons"])
    g = data["method_goal"]
    assert g["comparison"] == key and g["seeds"] == [0, 1] and g["measured_val"] == m[
        "val_delta_mean"] and g["met"] == m["method_better_by_0.5_on_mean_val"]
    assert g["best_on_val"] == (m["method_runs"] if mv >= pv else m["plain_runs"])
    md = (res / "accuracy.md").read_text()
    assert f"the method: {key}, seed(s) 0, 1: val" in md
    assert "method goal at the largest recorded budget (1 epochs, 2 seed(s))" in md
    # one seed is reported, without a spread; no CE-only twin: no comparison, no goal
    one = compare.method_comparisons({n: r[n] for n in ("method_s0", "ce_s0")})
    assert [c["method_val_std"] for c in one.values()] == [None]
    assert compare.method_comparisons({n: r[n] for n in ("method_s0", "kd_twin")}) == {}
    g1 = goals.method_goal(one)  # one seed: reported, never met
    assert g1["decided"] is False and g1["met"] is False and g1["seeds"] == [0]
    assert g["decided"] is True
    assert goals.method_goal({}) is None


def test_recorded_runs_compare_each_si_run_with_its_twin_of_the_same_recipe(tmp_path, capsys):
    """``--record-runs`` stores finished sibnn-train runs beside the ablation (the shipped section
    stays) and compares an SI run with its twin without SI only when the recipes match; an
    unfinished or foreign directory is a one-line error that writes nothing."""
    runs, res = tmp_path / "runs", tmp_path / "res"
    res.mkdir()
    sh = {"default_model": "m", "models": {}, "goals": {}}
    (res / "accuracy.json").write_text(json.dumps({**results.EMPTY, "shipped": sh}))
    _digits_run(runs, "si", "si_resnet_w1a1")
    _digits_run(runs, "plain", "resnet_w1a1")
    _digits_run(runs, "plain_longer", "resnet_w1a1", epochs=2)
    # keys that shape the SI branch only leave the twin without SI the same network
    _digits_run(runs, "si_down", "si_resnet_w1a1", si_blocks="downsample", r=2)
    _digits_run(runs, "si_wide", "si_resnet_w1a1", width=12)
    names = ("si", "plain", "plain_longer", "si_down", "si_wide")
    rc = cli.main(["--record-runs", *(str(runs / n) for n in names),
                        "--results-dir", str(res)])
    assert rc == 0 and "si vs plain: val" in capsys.readouterr().out
    data = json.loads((res / "accuracy.json").read_text())
    assert data["shipped"] == sh and set(data["full_runs"]) == set(names)
    assert data["full_runs"]["si_down"]["model_args"]["si_blocks"] == "downsample"
    # plain_longer: another recipe; si_wide: another network
    assert sorted(data["run_comparisons"]) == ["si vs plain", "si_down vs plain"]
    si, plain = data["full_runs"]["si"], data["full_runs"]["plain"]
    assert si["student"] == "si_resnet_w1a1" and si["epochs"] == 1 and si["device"] == "cpu"
    assert si["train_images"] == 256 and si["ema_decay"] == 0.9 and len(si["val_acc_by_epoch"]) == 1
    # the network as its checkpoint describes it, and which epoch was shipped
    assert si["model_args"]["si"] is True and plain["model_args"]["si"] is False
    assert si["model_args"]["width"] == plain["model_args"]["width"]
    assert (si["select"], si["selected_epoch"], si["best_val_epoch"]) == ("last", 1, 1)
    c = data["run_comparisons"]["si vs plain"]
    assert c["val_delta"] == round(si["val_acc"] - plain["val_acc"], 2)
    # the val-best run of each recipe group that has an SI run and its twin, keyed by that run
    best = data["full_runs_best"]
    assert len(best) == 1
    (top, b), = best.items()
    group = {"si", "plain", "si_down"}
    assert set(b["runs"]) == group and top in group
    assert b["val_acc"] == max(data["full_runs"][n]["val_acc"] for n in group)
    assert b["si_beats_twin_by_0.5_on_val"] == any(
        c["si_better_by_0.5_on_val"] for c in data["run_comparisons"].values())
    # a run recorded before a config key existed trained at its default: still the same recipe;
    # the same key at another value is another recipe
    old = copy.deepcopy(data["full_runs"])
    del old["plain"]["recipe"]["data"]["cutout"]
    del old["plain"]["recipe"]["stages"][0]["loss_weights"]["label_smoothing"]
    assert "si vs plain" in compare.run_comparisons(old)
    old["plain"]["recipe"]["data"]["cutout"] = 8
    assert "si vs plain" not in compare.run_comparisons(old)
    assert c["test_delta_last_step_weights"] == round(si["test_acc_raw"] - plain["test_acc_raw"], 2)
    results.render(res / "accuracy.json")  # a re-render keeps the rows
    md = (res / "accuracy.md").read_text()
    assert "run si: si_resnet_w1a1, 1 epochs on 256 training images" in md and "si vs plain" in md
    assert f"best on val of {', '.join(b['runs'])} (1 epochs): {top}" in md
    assert data["seed_means"] == {}  # one seed: nothing to average

    # a second seed of si_down and of its twin: paired means over both seeds; a second seed of si
    # alone has no twin at that seed
    _digits_run(runs, "si_down_s1", "si_resnet_w1a1", seed=1, si_blocks="downsample", r=2)
    _digits_run(runs, "plain_s1", "resnet_w1a1", seed=1)
    _digits_run(runs, "si_s1", "si_resnet_w1a1", seed=1, si_blocks="all", r=4)
    rc = cli.main(["--record-runs", *(str(runs / n) for n in ("si_down_s1", "plain_s1")),
                        "--results-dir", str(res)])
    assert rc == 0 and "seeds [0, 1]" in capsys.readouterr().out
    data = json.loads((res / "accuracy.json").read_text())
    assert "si_down_s1 vs plain_s1" in data["run_comparisons"]
    (key, m), = data["seed_means"].items()
    assert key.startswith("si_resnet_w1a1 [") and "si_blocks=downsample" in key
    assert key.endswith("vs resnet_w1a1, 1 epochs")
    runs_ = data["full_runs"]
    assert m["seeds"] == [0, 1] and m["si_runs"] == ["si_down", "si_down_s1"]
    assert m["plain_runs"] == ["plain", "plain_s1"]
    sv = [runs_[n]["val_acc"] for n in m["si_runs"]]
    pv = [runs_[n]["val_acc"] for n in m["plain_runs"]]
    assert m["si_val_mean"] == round((sv[0] + sv[1]) / 2, 2)
    assert m["plain_val_mean"] == round((pv[0] + pv[1]) / 2, 2)
    assert m["val_delta_per_seed"] == [round(a - b, 2) for a, b in zip(sv, pv, strict=True)]
    assert m["si_better_by_0.5_on_mean_val"] == (m["si_val_mean"] - m["plain_val_mean"] >= 0.5)
    assert f"{key}, seeds 0, 1: SI val" in (res / "accuracy.md").read_text()
    # every network at >= 2 seeds of one recipe, SI or not: mean +- std of its own
    nm = data["network_seed_means"]
    assert sorted(m["runs"] for m in nm.values()) == [["plain", "plain_s1"],
                                                      ["si_down", "si_down_s1"]]
    (pk, pm), = ((k, m) for k, m in nm.items() if m["runs"] == ["plain", "plain_s1"])
    assert pk == "resnet_w1a1, 1 epochs: plain, plain_s1" and pm["seeds"] == [0, 1]
    assert pm["val_mean"] == round((pv[0] + pv[1]) / 2, 2) == m["plain_val_mean"]
    assert pm["test_std"] == m["plain_test_std"]
    assert f"{pk} (seeds 0, 1): val {pm['val_mean']:.2f}" in (res / "accuracy.md").read_text()
    cli.main(["--record-runs", str(runs / "si_s1"), "--results-dir", str(res)])
    capsys.readouterr()
    data = json.loads((res / "accuracy.json").read_text())
    # si (seed 0, r=4 by default) and si_s1 are the same network; both seeds now have it
    assert len(data["seed_means"]) == 2
    # the networks of the longest recipe with an SI/twin pair (plain_longer's has no pair), seeds
    # pooled: what the accuracy-per-LUT plot draws at the full budget
    arms = {a["label"]: a for a in compare.longest_recipe_arms(data["full_runs"])}
    assert set(arms) == {"no SI", "SI(a), all blocks, r=4", "SI(a), downsample blocks, r=2"}
    a = arms["no SI"]
    assert a["runs"] == ["plain", "plain_s1"] and a["seeds"] == [0, 1] and a["epochs"] == 1
    assert a["test_acc_mean"] == round(
        (data["full_runs"]["plain"]["test_acc"] + data["full_runs"]["plain_s1"]["test_acc"]) / 2, 2)
    assert a["overrides"]["width"] == 8 and not {"si", "binary"} & set(a["overrides"])
    assert arms["SI(a), all blocks, r=4"]["test_acc_std"] is not None  # si and si_s1
    one = compare.longest_recipe_arms({"si": data["full_runs"]["si"],
                                        "plain": data["full_runs"]["plain"]})
    assert [x["test_acc_std"] for x in one] == [None, None]  # one seed: no spread
    # two recipes of as many epochs with a pair each: the one with the best run on val (how the
    # shipped student is chosen), even with fewer runs
    other = {f"{n}_b": copy.deepcopy(data["full_runs"][n]) for n in ("si", "plain")}
    for r in other.values():
        r["recipe"]["data"]["cutout"] = 8
    other["plain_b"]["val_acc"] = 101.0
    both = {**data["full_runs"], **other}
    assert sorted(x["runs"][0] for x in compare.longest_recipe_arms(both)) == ["plain_b", "si_b"]
    other["plain_b"]["val_acc"] = -1.0
    assert len(compare.longest_recipe_arms({**data["full_runs"], **other})) == 3
    from quant_models import build_model
    assert build_model(a["student"], **a["overrides"]).spec.width == 8
    before = (res / "accuracy.json").read_text()
    (runs / "half").mkdir()
    for bad, msg in ((runs / "half", "not a training run"), (runs / "si" / "student", "not a")):
        rc = cli.main(["--record-runs", str(bad), "--results-dir", str(res)])
        assert rc != 0 and msg in capsys.readouterr().err
    (runs / "si" / "student" / "metrics.jsonl").write_text(
        (runs / "si" / "student" / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    rc = cli.main(["--record-runs", str(runs / "si"), "--results-dir", str(res)])
    assert rc != 0 and "has not finished" in capsys.readouterr().err
    assert (res / "accuracy.json").read_text() == before


def test_si_overhead_headline_is_the_pair_of_the_default_model_as_shipped():
    """The headline SI-overhead pair follows the shipped checkpoint's ``stem_bits`` and
    ``si_blocks``, so the number reported for the default model is that of the network the build
    compiles; every pair gives both sides the same non-SI keys."""
    from bench.flow import SI_PAIRS, headline_pair

    assert headline_pair("si_h_resnet_w1a1_mbh", None) == "si_h_resnet_w1a1_mbh"
    assert headline_pair("si_h_resnet_w1a1_mbh", {"si_blocks": "all", "stem_bits": 1}) == \
        "si_h_resnet_w1a1_mbh"
    eight = headline_pair("si_h_resnet_w1a1_mbh", {"si_blocks": "all", "stem_bits": 8})
    down = headline_pair("si_h_resnet_w1a1_mbh", {"si_blocks": "downsample", "stem_bits": 8})
    assert len({eight, down, "si_h_resnet_w1a1_mbh"}) == 3
    assert SI_PAIRS[eight] == ("si_h_resnet_w1a1_mbh", "resnet_w1a1_mbh", {"stem_bits": 8},
                               {"si_blocks": "all"})
    assert SI_PAIRS[down] == ("si_h_resnet_w1a1_mbh", "resnet_w1a1_mbh", {"stem_bits": 8},
                              {"si_blocks": "downsample"})
    assert headline_pair("resnet_w1a1_mbh", None) == "si_resnet_w1a1"
    from quant_models.networks import SI_ONLY_KEYS
    for _, _, shared, si_only in SI_PAIRS.values():
        assert shared and set(si_only) <= set(SI_ONLY_KEYS)


def test_accuracy_per_lut_joins_measured_points_and_marks_the_pareto_front():
    """Each LUT row gets the ablation's numbers for its (variant, width), the recipe width from
    the unprefixed rows; a width the ablation did not train stays unmeasured and off the front."""
    from bench.accuracy_per_lut import join

    def row(variant, width, lut):
        arch = {"plain": "resnet_w1a1", "si_h_mbh": "si_h_resnet_w1a1_mbh"}[variant]
        return {"variant": variant, "arch": arch, "width": width, "LUT": lut - 100,
                "LUT_modelled": lut, "BRAM_18K": 10, "fps": 2000.04}

    rows = [row("plain", 16, 10_000), row("si_h_mbh", 16, 12_000), row("plain", 32, 20_000),
            row("si_h_mbh", 32, 23_000), row("plain", 48, 40_000)]
    summary = {"plain": {"test_acc_mean": 80.0, "test_acc_std": 0.5, "val_acc_mean": 79.0,
                         "seeds_done": 3},
               "si_h_mbh": {"test_acc_mean": 83.0, "test_acc_std": 0.4, "val_acc_mean": 82.0,
                            "seeds_done": 3},
               "w16_plain": {"test_acc_mean": 75.0, "test_acc_std": 1.0, "seeds_done": 3},
               "w16_si_h_mbh": {"test_acc_mean": 74.0, "test_acc_std": 1.0, "seeds_done": 3},
               "kd": {"test_acc_mean": 99.0}}  # not a family of the plot
    pts = {(p["variant"], p["width"]): p for p in join(rows, summary)}
    assert pts[("plain", 32)]["test_acc_mean"] == 80.0 and pts[("plain", 32)]["seeds"] == 3
    assert pts[("si_h_mbh", 16)]["test_acc_std"] == 1.0
    assert pts[("plain", 48)]["test_acc_mean"] is None and not pts[("plain", 48)]["pareto"]
    front = {k for k, p in pts.items() if p["pareto"]}
    # w16 SI is beaten by w16 plain (cheaper and better); w32 plain by nothing cheaper-and-better
    assert front == {("plain", 16), ("plain", 32), ("si_h_mbh", 32)}


def test_full_budget_points_build_each_recorded_network_and_mark_their_own_front(tmp_path):
    """The full-budget panel of the accuracy-per-LUT plot: every recorded network built to
    estimates from its checkpoint's model_args (no weights needed), its own Pareto front, and a
    two-panel PNG."""
    from bench.accuracy_per_lut import full_budget_points, full_budget_text
    from flow.plots import plot_accuracy_per_lut

    net = {"in_channels": 1, "input_size": 8, "num_classes": 10, "width": 8, "depth": [1, 1]}
    arms = [{"student": "resnet_w1a1", "label": "no SI", "overrides": net, "runs": ["p"],
             "seeds": [0], "epochs": 3, "test_acc_mean": 90.0, "test_acc_std": 0.0,
             "val_acc_mean": 90.0, "val_acc_std": 0.0},
            {"student": "si_resnet_w1a1", "label": "SI(a), all blocks, r=4", "overrides": net,
             "runs": ["s", "s1"], "seeds": [0, 1], "epochs": 3, "test_acc_mean": 89.0,
             "test_acc_std": 0.3, "val_acc_mean": 89.5, "val_acc_std": 0.1}]
    pts = full_budget_points(arms, tmp_path, "pynq-z2")
    plain, si = pts
    assert all(p["all_nodes_hw"] and p["LUT_modelled"] >= p["LUT"] > 0 for p in pts)
    assert si["LUT_modelled"] > plain["LUT_modelled"]  # the SI branch costs LUTs
    assert plain["pareto"] and not si["pareto"]  # cheaper and better
    assert full_budget_text(pts) == "shipped recipe, 3 epochs, seeds [0, 1], width 8, best-val epoch"
    fig = plot_accuracy_per_lut([], None, tmp_path / "p.png", full=pts, full_budget="x")
    assert len(fig.axes) == 2 and (tmp_path / "p.png").stat().st_size > 0


def test_ablation_starts_every_seeds_variants_before_the_extra_widths(tmp_path):
    configs = {s: plan.ablation_config(s, 2, 64, "teacher", str(tmp_path), None, 1,
                                           widths=(16,)) for s in (0, 1)}
    order = schedule.pending_jobs(configs)
    widths = [i for i, (_, st) in enumerate(order) if st.startswith("w16_")]
    assert len(widths) == 2 * len(studies.WIDTH_VARIANTS)
    assert min(widths) == len(order) - len(widths)  # every width job comes last
    assert order[0] == (0, "teacher") and order[min(widths)] == (0, "w16_teacher")
    assert [k for k in order if k[0] == 0][:len(plan.variants(2)) + 1] == [
        (0, st.name) for st in configs[0].stages][:len(plan.variants(2)) + 1]


def test_an_incomplete_device_run_is_recorded_with_its_progress_and_without_discarded_runs(
        tmp_path):
    import tarfile

    out, res = tmp_path / "out", tmp_path / "res"
    out.mkdir(), res.mkdir()
    (res / "accuracy.json").write_text(json.dumps(results.EMPTY))
    run = {"device_name": "NVIDIA H200", "epochs": 3, "seeds": [0, 1]}
    per_seed = {str(s): {"teacher": {"test_acc": 92.0 + s, "val_acc": 93.0},
                         "plain": {"test_acc": 10.0, "val_acc": 10.0}} for s in (0, 1)}
    (out / "accuracy.json").write_text(json.dumps({"run": run, "complete": False,
                                                   "per_seed": per_seed}))
    runs = tmp_path / "runs"
    for s in (0, 1):
        d = runs / f"ablation_e3_teacher_s{s}" / "mbh"
        d.mkdir(parents=True)
        d.joinpath("metrics.jsonl").write_text("\n".join(json.dumps(
            {"epoch": e, "epoch_time_s": 60.0 if e == 1 else 10.0 + s, "step_time_s": 0.05,
             "val_acc": 50.0 + e}) for e in (1, 2)))
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        tar.add(runs, arcname=".")
    (out / "ablation.log").write_text("[device_ablation 9s] MPS on\n[seed 0] [teacher] done\n"
                                      "[device_ablation 560s] wall 560 s, exit 124\n")
    rc = cli.main(["--record-device-run", str(out), "--discard", "plain",
                        "--note", "students wrong", "--results-dir", str(res)])
    assert rc == 0
    rec = json.loads((res / "accuracy.json").read_text())["device_runs"][0]
    assert rec["summary"] == {"teacher": {"test_acc_mean": 92.5, "val_acc_mean": 93.0,
                                          "test_acc_std": 0.5, "seeds_done": 2}}
    assert rec["progress"]["0"]["mbh"] == {"epochs_done": 2, "first_epoch_s": 60.0,
                                           "epoch_s_median": 10.0, "step_s_median": 0.05,
                                           "last_val_acc": 52.0}
    assert rec["progress"]["1"]["mbh"]["epoch_s_median"] == 11.0
    assert (rec["mps"], rec["script_wall_s"], rec["script_exit"]) == (True, 560, 124)
    md = (res / "accuracy.md").read_text()
    assert "incomplete, MPS on, wall 560 s): students wrong" in md and "92.50 ± 0.50" in md


@pytest.mark.slow
def test_the_device_script_runs_the_ablation_and_returns_results_log_and_weights(tmp_path):
    """``scripts/device_ablation.sh`` as the GPU machine runs it, here on CPU at a tiny scale."""
    import os
    import subprocess
    import sys
    import tarfile

    repo = plan.REPO
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(out),
           "RUNS_DIR": str(tmp_path / "runs"), "RESULTS_DIR": str(tmp_path / "res"),
           "DATASET": "digits", "VAL_SIZE": "200", "SUBSET": "256",
           "VARIANTS": "teacher plain si_h_mbh", "DEADLINE": "600"}
    proc = subprocess.run(["bash", "scripts/device_ablation.sh", "1", "0"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "accuracy.json").read_text())
    assert data["complete"] and set(data["per_seed"]["0"]) == {"teacher", "plain", "si_h_mbh"}
    assert "done:" in (out / "ablation.log").read_text()
    with tarfile.open(out / "runs.tgz") as tar:
        names = tar.getnames()
    assert any(n.endswith("si_h_mbh/final.pt") for n in names)
    assert any(n.endswith("teacher/final.pt") for n in names)
    with tarfile.open(out / "finals.tgz") as tar:
        assert any(n.endswith("plain/final.pt") for n in tar.getnames())


@pytest.mark.slow
def test_step_cost_times_the_checked_compiled_step():
    cost = step_cost(steps=1, batch=8, data_dir=None, compile=True)
    assert cost["compile_check"].startswith("compiled step checked")
    assert cost["distill_step_compiled_s"] > 0 and cost["compile_speedup"] > 0


def test_recording_a_device_run_from_a_folder_without_its_output_is_a_one_line_error(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "accuracy.json").write_text(json.dumps(results.EMPTY))
    before = (res / "accuracy.json").read_text()
    assert_one_line_error(run_cli(["-m", "bench.accuracy", "--record-device-run", str(tmp_path),
                                   "--results-dir", str(res)]),
                          "accuracy.json or runs.tgz", "$OUT")
    assert (res / "accuracy.json").read_text() == before


def test_an_ablation_rewrite_keeps_every_section_the_other_commands_wrote(tmp_path):
    """``--record-runs``, ``--shipped`` and ``--record-device-run`` write sections an ablation run
    does not compute; rewriting the file from the ablation keeps every one of them (it dropped
    ``method_comparisons`` and ``method_goal``, the method's verdict, until a new --record-runs).
    Checked on the committed results file and after a --record-runs on it."""
    import shutil

    from bench.ablation import results
    from bench.common import RESULTS

    path = tmp_path / "accuracy.json"
    shutil.copy(RESULTS / "accuracy.json", path)
    by_ablation = set(results.EMPTY) | {"decisions", "benchmark", "machine"}
    for data in (json.loads(path.read_text()), results.update_runs(path, [])):
        others = set(data) - by_ablation
        assert {"method_comparisons", "method_goal", "shipped", "full_runs"} <= others
        assert set(results.kept_by_ablation(path)) == others
