"""Accuracy ablation on the Fashion-MNIST test set, and the cost of a distillation step.

Variants (all trained for the same epochs, each with every seed):

=============  ================  ==========================  =======================
variant        model             loss                        teacher
=============  ================  ==========================  =======================
teacher        si_resnet_fp      CE                          -
plain          resnet_w1a1       CE                          -
kd             resnet_w1a1       CE + logit KD               teacher (same seed)
si_kd          si_resnet_w1a1    CE + logit KD               teacher (same seed)
full           si_resnet_w1a1    CE + logit KD + block MSE   teacher (same seed)
staged         si_resnet_w1a1    as full, in two steps       teacher (same seed)
=============  ================  ==========================  =======================

``staged`` is the staged recipe (Real-to-Binary): the same epochs as every other variant, split
into ``epochs // 2`` with binary activations and float weights (stage ``staged_act``, started from
the teacher) and the rest with binary weights too (started from ``staged_act``). It needs at least
2 epochs. It is compared with ``full`` on the *validation* split (``decisions.staged`` in the
results), never on the test set; the recipe keeps it only if it is better at the budget it ships
at too (see the README).

Hyper-parameters (optimizer, lr, batch, loss weights, temperature) come from the shipped recipe
``configs/fmnist_si_resnet.yaml``; only epochs, seeds and the training subset change here. By
default every student starts from its teacher's weights, as the recipe does (``--student-init
scratch`` starts them fresh). Model selection is never done on the test set; the numbers are the
last epoch's.

The step-cost ratio is measured in one process: a distillation step (frozen teacher forward +
student forward with taps + CE/KD/block loss + backward + Adam) against a plain CE step of the same
student, interleaved, same batch, median of ``--cost-steps`` each.

    python -m bench.accuracy --epochs 2 --train-subset 27500 --parallel   # both seeds at once
    python -m bench.accuracy --quick                                       # the same, shorter
    python -m bench.accuracy --cost-only

Results: ``bench/results/accuracy.json`` and ``accuracy.md``, rewritten after every finished
variant, with exactly what was run (epochs, seeds, subset, threads) and ``complete: false`` until
all variants of all seeds are done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import RESULTS, write_results
from quant_models import build_model, load_checkpoint
from quant_models.train.config import build_config, load_yaml, to_dict
from quant_models.train.engine import exp_dir, train
from quant_models.train.losses import distillation_loss, resolve_tap_weights

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "fmnist_si_resnet.yaml"

VARIANTS = {
    "teacher": ("si_resnet_fp", "FP teacher (si_resnet_fp), CE"),
    "plain": ("resnet_w1a1", "W1A1 plain (resnet_w1a1), CE"),
    "kd": ("resnet_w1a1", "W1A1 + logit KD"),
    "si_kd": ("si_resnet_w1a1", "W1A1 + SI + logit KD"),
    "full": ("si_resnet_w1a1", "W1A1 + SI + logit KD + block-wise KD (full)"),
    "staged": ("si_resnet_w1a1", "full, staged: binary activations first, then binary weights"),
}


def variants(epochs: int) -> list[str]:
    """The variants a run of ``epochs`` epochs trains (the staged one needs two stages)."""
    return [v for v in VARIANTS if v != "staged" or epochs >= 2]


def ablation_config(seed: int, epochs: int, train_subset: int | None, student_init: str,
                    runs_dir: str, data_dir: str | None, threads: int):
    """One experiment per seed: the teacher stage, then the four students."""
    recipe = load_yaml(RECIPE)
    t_stage = next(s for s in recipe["stages"] if s["name"] == "teacher")
    s_stage = next(s for s in recipe["stages"] if s["name"] == "student")
    lw = dict(s_stage["loss_weights"])
    losses = {"plain": {"ce": lw["ce"]},
              "kd": {"ce": lw["ce"], "kd": lw["kd"], "temperature": lw["temperature"]},
              "si_kd": {"ce": lw["ce"], "kd": lw["kd"], "temperature": lw["temperature"]},
              "full": lw}
    stages = [{**t_stage, "epochs": epochs}]
    for name, loss in losses.items():
        st = {**s_stage, "name": name, "student": VARIANTS[name][0], "epochs": epochs,
              "loss_weights": loss,
              "teacher": "teacher" if ("kd" in loss or "block" in loss) else None,
              "init_from": "teacher" if student_init == "teacher" else None}
        stages.append(st)
    if "staged" in variants(epochs):
        first = epochs // 2
        stages.append({**s_stage, "name": "staged_act", "student": "si_resnet_w1a1",
                       "model": {"float_weights": True}, "epochs": first, "loss_weights": lw,
                       "teacher": "teacher",
                       "init_from": "teacher" if student_init == "teacher" else None})
        stages.append({**s_stage, "name": "staged", "student": "si_resnet_w1a1",
                       "epochs": epochs - first, "loss_weights": lw, "teacher": "teacher",
                       "init_from": "staged_act"})
    sub = f"_n{train_subset}" if train_subset else ""
    data = {**recipe["data"], "train_subset": train_subset}
    if data_dir:
        data["data_dir"] = data_dir
    d = {**recipe, "experiment": f"ablation_e{epochs}{sub}_{student_init}_s{seed}",
         "out_dir": runs_dir, "seed": seed, "stages": stages, "data": data,
         "num_threads": threads, "progress": False}
    return build_config(d)


def step_cost(steps: int, batch: int, data_dir: str | None) -> dict:
    """Median seconds of a distillation step and of a plain CE step of the same student."""
    from quant_models.data import load_splits

    torch.manual_seed(0)
    try:
        x = load_splits("fmnist", data_dir).train.x[:batch]
        source = "fmnist"
    except Exception:  # noqa: BLE001 - any missing data: time on uniform random pixels instead
        x = torch.randint(0, 256, (batch, 1, 28, 28)).float() / 255
        source = "random pixels"
    y = torch.randint(0, 10, (batch,))
    recipe = build_config(load_yaml(RECIPE))
    lw_full = recipe.stage("student").loss_weights
    lw_ce = type(lw_full)(ce=1.0)
    student = build_model("si_resnet_w1a1", dataset="fmnist", **recipe.model)
    teacher = build_model("si_resnet_fp", dataset="fmnist", **recipe.model).eval()
    tap_w = resolve_tap_weights(lw_full, student.tap_names)
    opt = torch.optim.Adam(student.parameters(), 1e-4)

    def plain():
        logits, taps = student.forward_taps(x)
        loss, _ = distillation_loss(logits, taps, y, lw_ce, tap_w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def distil():
        with torch.no_grad():
            t_logits, t_taps = teacher.forward_taps(x)
        logits, taps = student.forward_taps(x)
        loss, _ = distillation_loss(logits, taps, y, lw_full, tap_w, t_logits, t_taps)
        opt.zero_grad()
        loss.backward()
        opt.step()

    student.train()
    plain(), distil()  # warm-up
    tp, td = [], []
    for _ in range(steps):
        for fn, acc in ((plain, tp), (distil, td)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    p, d = statistics.median(tp), statistics.median(td)
    return {"batch": batch, "steps_each": steps, "inputs": source,
            "threads": torch.get_num_threads(), "plain_step_s": round(p, 4),
            "distill_step_s": round(d, 4), "ratio": round(d / p, 3), "goal_ratio_max": 1.6}


def collect(cfg) -> dict:
    """Final metrics of every finished stage of one seed's experiment (read from its final.pt)."""
    out = {}
    for v in VARIANTS:
        final = exp_dir(cfg) / v / "final.pt"
        if final.exists():
            m = load_checkpoint(final)["metrics"]
            out[v] = {k: m.get(k) for k in ("test_acc", "val_acc", "val_acc_before_bn_recalibration",
                                            "epochs", "train_time_s")}
    return out


def goals(summary: dict) -> dict:
    """The issue's accuracy goals, each with its measured value and whether it is met."""
    mean = {v: s["test_acc_mean"] for v, s in summary.items()}
    out = {}
    if "full" in mean:
        out["full_top1"] = {"goal": "full >= 91.0 %", "measured": mean["full"],
                            "met": mean["full"] >= 91.0}
    if "full" in mean and "teacher" in mean:
        gap = round(mean["teacher"] - mean["full"], 2)
        out["teacher_gap"] = {"goal": "teacher - full <= 2.0 points", "measured": gap,
                              "met": gap <= 2.0}
    if "si_kd" in mean and "kd" in mean:
        d = round(mean["si_kd"] - mean["kd"], 2)
        out["si_gain"] = {"goal": "si_kd - kd >= 0.5 points", "measured": d, "met": d >= 0.5}
    if "full" in mean and "si_kd" in mean:
        d = round(mean["full"] - mean["si_kd"], 2)
        out["block_kd_gain"] = {"goal": "full - si_kd >= 0.5 points", "measured": d,
                                "met": d >= 0.5}
    return out


def decisions(per_seed: dict, seeds: list[int]) -> dict:
    """Recipe comparisons on the validation split: is the staged recipe's mean validation accuracy
    above the one-step full recipe's over the same seeds (at this run's budget)?"""
    both = [s for s in seeds if {"full", "staged"} <= set(per_seed.get(s, {}))]
    if not both:
        return {}
    full = statistics.fmean(per_seed[s]["full"]["val_acc"] for s in both)
    staged = statistics.fmean(per_seed[s]["staged"]["val_acc"] for s in both)
    return {"staged": {"question": "mean val accuracy of staged above full's, same seeds?",
                       "seeds": both, "full_val_acc_mean": round(full, 2),
                       "staged_val_acc_mean": round(staged, 2),
                       "val_delta": round(staged - full, 2), "better_on_val": staged > full}}


def summarise(per_seed: dict, seeds: list[int]) -> dict:
    out = {}
    for v in VARIANTS:
        accs = [per_seed[s][v]["test_acc"] for s in seeds if v in per_seed.get(s, {})]
        if accs:
            vals = [per_seed[s][v].get("val_acc") for s in seeds if v in per_seed.get(s, {})]
            out[v] = {"test_acc_mean": round(statistics.fmean(accs), 2),
                      "val_acc_mean": (round(statistics.fmean(vals), 2)
                                       if all(a is not None for a in vals) else None),
                      "test_acc_std": round(statistics.pstdev(accs), 2) if len(accs) > 1 else None,
                      "seeds_done": len(accs)}
    return out


def table(summary: dict, per_seed: dict, seeds: list[int], cost: dict | None,
          run: dict | None = None) -> list[list[str]]:
    rows = [["variant", *[f"seed {s} test %" for s in seeds], "mean %", "vs previous row",
             "mean val %"]]
    prev = None
    for v, (_, label) in VARIANTS.items():
        if v not in summary:
            continue
        cells = [f"{per_seed[s][v]['test_acc']:.2f}" if v in per_seed.get(s, {}) else "-"
                 for s in seeds]
        mean = summary[v]["test_acc_mean"]
        delta = "" if prev is None or v == "plain" else f"{mean - prev:+.2f}"
        val = summary[v].get("val_acc_mean")
        rows.append([label, *cells, f"{mean:.2f}", delta, "-" if val is None else f"{val:.2f}"])
        prev = mean
    dec = decisions(per_seed, seeds).get("staged")
    if dec:
        rows.append([f"staged vs full on the val split (the model-selection set): "
                     f"{dec['val_delta']:+.2f} points at this budget", *[""] * len(seeds), "", "",
                     ""])
    if cost:
        rows.append([f"distillation step / plain step (batch {cost['batch']})",
                     *[""] * len(seeds), f"{cost['ratio']:.3f}x", "goal <= 1.6x", ""])
    if run:
        n = run["train_subset"] or 55000
        rows.append([f"run: {run['epochs']} epoch(s) per variant, {n} training images, students "
                     f"init from {run['student_init']}, {run['threads']} thread(s)",
                     *[""] * len(seeds), "", "", ""])
    return rows


def render(path: Path, cost: dict | None = None) -> None:
    """Rewrite the Markdown table (and JSON) from an existing results file, e.g. after an
    interrupted run; no number is recomputed except ``cost``, the step cost, when given."""
    data = json.loads(path.read_text())
    if cost is not None:
        data["step_cost"] = cost
        data.pop("machine", None)  # measured now, on this machine
    run = data.get("run")
    seeds = run["seeds"] if run else []
    per_seed = {int(k): v for k, v in data["per_seed"].items()}
    write_results("accuracy", data, table(data["summary"], per_seed, seeds, data["step_cost"], run))


def update_cost(path: Path, cost: dict) -> None:
    """Store a new step cost; the ablation numbers already in ``path`` stay."""
    if not path.exists():
        write_results("accuracy", {"complete": False, "run": None, "step_cost": cost,
                                   "summary": {}, "goals": {}, "per_seed": {}, "configs": {}},
                      table({}, {}, [], cost))
        return
    render(path, cost)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4, help="epochs of every variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on the first N training images (default: all 55,000)")
    p.add_argument("--quick", action="store_true",
                   help="--epochs 1 --train-subset 6400 (minutes per variant on one core)")
    p.add_argument("--student-init", choices=["teacher", "scratch"], default="teacher")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost-steps", type=int, default=10)
    p.add_argument("--cost-only", action="store_true", help="only measure the step-cost ratio")
    p.add_argument("--parallel", action="store_true",
                   help="train every seed in its own process at once (each --threads threads)")
    p.add_argument("--train-seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true",
                   help="only rewrite accuracy.md from the existing accuracy.json")
    args = p.parse_args(argv)
    if args.render:
        render(RESULTS / "accuracy.json")
        return 0
    if args.quick:
        args.epochs, args.train_subset = 1, 6400
    torch.set_num_threads(args.threads)
    if args.train_seed is not None:  # a --parallel child: train one seed, write nothing else
        cfg = ablation_config(args.train_seed, args.epochs, args.train_subset, args.student_init,
                              args.runs_dir, args.data_dir, args.threads)
        train(cfg, resume=(exp_dir(cfg) / "config.yaml").exists(),
              log=lambda m: print(f"[seed {args.train_seed}] {m}", flush=True))
        return 0

    cost = step_cost(args.cost_steps, 256, args.data_dir)
    print(f"step cost: distill {cost['distill_step_s']}s / plain {cost['plain_step_s']}s "
          f"= {cost['ratio']}x")
    run = {"epochs": args.epochs, "seeds": args.seeds, "train_subset": args.train_subset,
           "student_init": args.student_init, "threads": args.threads,
           "parallel_seeds": bool(args.parallel), "recipe": str(RECIPE.name),
           "dataset": "fmnist", "evaluated_on": "fmnist test set (10,000), last epoch"}
    configs = {s: ablation_config(s, args.epochs, args.train_subset, args.student_init,
                                  args.runs_dir, args.data_dir, args.threads) for s in args.seeds}

    def save() -> dict:
        """Rewrite the results from every finished stage on disk (complete once all are)."""
        per_seed = {s: collect(c) for s, c in configs.items()}
        summary = summarise(per_seed, args.seeds)
        complete = all(len(r) == len(variants(args.epochs)) for r in per_seed.values())
        data = {"complete": complete, "run": run, "step_cost": cost, "summary": summary,
                "goals": goals(summary), "decisions": decisions(per_seed, args.seeds),
                "per_seed": {str(s): r for s, r in per_seed.items()},
                "configs": {str(s): to_dict(c) for s, c in configs.items()}}
        write_results("accuracy", data, table(summary, per_seed, args.seeds, cost, run))
        return data

    if args.cost_only:
        update_cost(RESULTS / "accuracy.json", cost)
        return 0
    save()
    if args.parallel and len(configs) > 1:
        run_parallel(args, configs, save)
    else:
        for seed, cfg in configs.items():
            def log(msg: str, seed=seed) -> None:
                print(f"[seed {seed}] {msg}", flush=True)
                if " done: " in msg:
                    save()

            train(cfg, resume=(exp_dir(cfg) / "config.yaml").exists(), log=log)
    data = save()
    for g in data["goals"].values():
        print(f"goal {g['goal']}: measured {g['measured']} -> {'met' if g['met'] else 'MISSED'}")
    return 0


def run_parallel(args, configs: dict, save) -> None:
    """One training process per seed (``--threads`` threads each), results refreshed while they
    run. The child processes are this module with ``--train-seed``."""
    procs = {}
    for seed in configs:
        cmd = [sys.executable, "-m", "bench.accuracy", "--train-seed", str(seed),
               "--epochs", str(args.epochs), "--student-init", args.student_init,
               "--runs-dir", args.runs_dir, "--threads", str(args.threads)]
        if args.train_subset:
            cmd += ["--train-subset", str(args.train_subset)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        procs[seed] = subprocess.Popen(cmd, cwd=REPO)
    while any(p.poll() is None for p in procs.values()):
        time.sleep(30)
        save()
    failed = {s: p.returncode for s, p in procs.items() if p.returncode}
    if failed:
        raise SystemExit(f"bench.accuracy: training failed for seed(s) {failed}; rerun the same "
                         "command to resume")


if __name__ == "__main__":
    raise SystemExit(main())
