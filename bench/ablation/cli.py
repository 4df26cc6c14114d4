"""``python -m bench.accuracy``: the ablation's command line (the options are those of
:mod:`bench.ablation`'s description): train the ablation, or only measure the step cost, evaluate
the shipped checkpoints, record finished runs or a device run, or re-render the table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import bench.ablation
import bench.common
from bench.ablation import results
from bench.ablation.cost import step_cost
from bench.ablation.goals import GAIN, GOALS, SI_BEATS_TWIN_ON_VAL, ablation_goals, goal_verdict
from bench.ablation.plan import RECIPE, REPO, TEACHER_RECIPE, ablation_config, variants
from bench.ablation.record import collect, device_run
from bench.ablation.schedule import schedule
from bench.ablation.shipped import shipped
from bench.ablation.stats import decisions, summarise
from flow.studies import VARIANTS
from quant_models.train import train
from quant_models.train.distributed import DistEnv
from quant_models.train.resume import exp_dir, prepare_run_dir
from sibnn_base.errors import ArgumentParser, cli_errors
from sibnn_base.typed import to_dict


def build_parser() -> ArgumentParser:
    """The ablation's options; the description is :mod:`bench.ablation`'s docstring."""
    p = ArgumentParser(description=bench.ablation.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4, help="epochs of every variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on the first N training images (default: all 55,000)")
    p.add_argument("--quick", action="store_true",
                   help="--epochs 1 --train-subset 6400 (minutes per variant on one core)")
    p.add_argument("--student-init", choices=["teacher", "scratch"], default="teacher")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training processes at once (default: all on cuda, 1 on cpu)")
    p.add_argument("--parallel", action="store_true",
                   help="on cpu: one job per seed at once (same as --jobs <number of seeds>)")
    p.add_argument("--dataset", default="fmnist", help="fmnist (default), or digits for a smoke run")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   metavar="VARIANT", help="train only these variants (and their teacher); "
                   f"default all: {', '.join(VARIANTS)}")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every training step, checked against the eager step first; "
                        "with the step cost, time the compiled step too")
    p.add_argument("--widths", type=int, nargs="*", default=[],
                   help="also train teacher, plain and si_h_mbh at these widths (the points of "
                        "the accuracy-per-LUT plot), e.g. --widths 16 24 48")
    p.add_argument("--val-size", type=int, default=None,
                   help="validation images carved from the training set (default: the recipe's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    p.add_argument("--results-dir", default=None, help="where accuracy.json/.md go "
                                                        "(default bench/results)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--cost-steps", type=int, default=10)
    p.add_argument("--cost-only", action="store_true", help="only measure the step-cost ratio")
    p.add_argument("--shipped", action="store_true",
                   help="only evaluate the shipped checkpoints on the whole test set (goals: "
                        f"student >= {GOALS.student_top1:g} %%, teacher >= "
                        f"{GOALS.teacher_top1:g} %%, gap <= {GOALS.max_teacher_gap:g} points)")
    p.add_argument("--no-cost", action="store_true", help="skip the step-cost measurement")
    p.add_argument("--record-runs", nargs="+", default=None, metavar="RUN_DIR",
                   help="only record these finished sibnn-train runs (runs/<experiment>) beside "
                        "the ablation, each SI run compared with its twin without SI trained "
                        "with the same recipe")
    p.add_argument("--record-device-run", default=None, metavar="OUT_DIR",
                   help="only record the output of scripts/device_ablation.sh (accuracy.json "
                        "and runs.tgz in OUT_DIR), complete or not, beside the ablation")
    p.add_argument("--note", default="", help="with --record-device-run: what to know about it")
    p.add_argument("--discard", nargs="*", default=[], metavar="VARIANT",
                   help="with --record-device-run: variants whose finished runs are not kept")
    p.add_argument("--train-seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true",
                   help="only rewrite accuracy.md from the existing accuracy.json")
    return p


def print_recorded(data: dict) -> None:
    """What ``--record-runs`` prints: every comparison of the recorded runs and the method goal."""
    for name, c in data["run_comparisons"].items():
        print(f"{name}: val {c['val_delta']:+.2f}, test {c['test_delta']:+.2f} points")
    for name, b in data["full_runs_best"].items():
        print(f"best on val of {', '.join(b['runs'])}: {name} (val {b['val_acc']:.2f}, "
              f"test {b['test_acc']:.2f}); SI >= twin + {GAIN} on val: "
              f"{'yes' if b[SI_BEATS_TWIN_ON_VAL] else 'no'}")
    for name, m in data["seed_means"].items():
        print(f"{name}, seeds {m['seeds']}: val {m['si_val_mean']:.2f} vs "
              f"{m['plain_val_mean']:.2f} ({m['val_delta_mean']:+.2f}), test "
              f"{m['si_test_mean']:.2f} vs {m['plain_test_mean']:.2f}")
    for name, m in data["network_seed_means"].items():
        print(f"{name}: val {m['val_mean']:.2f} ± {m['val_std']:.2f}, test "
              f"{m['test_mean']:.2f} ± {m['test_std']:.2f}")
    for name, m in data["method_comparisons"].items():
        print(f"the method: {name}, seeds {m['seeds']}: val {m['method_val_mean']:.2f} vs "
              f"{m['plain_val_mean']:.2f} ({m['val_delta_mean']:+.2f}), test "
              f"{m['method_test_mean']:.2f} vs {m['plain_test_mean']:.2f}")
    g = data["method_goal"]
    if g:
        print(f"goal {g['goal']}: measured {g['measured_val']:+.2f} ({g['epochs']} epochs, "
              f"seeds {g['seeds']}) -> {goal_verdict(g)}")


def print_goals(goals: dict) -> None:
    """One line per goal: its text, the measured value and the verdict."""
    for g in goals.values():
        print(f"goal {g['goal']}: measured {g['measured']} -> {'met' if g['met'] else 'MISSED'}")


def record_device_run(path: Path, out_dir: Path, note: str, discard: list[str]) -> None:
    """``--record-device-run``: store a device run's output in ``path`` and print its variants."""
    rec = device_run(out_dir, note, discard)
    results.add_device_run(path, rec)
    for v, m in rec["summary"].items():
        print(f"{v}: test {m['test_acc_mean']:.2f} (std {m['test_acc_std']}), "
              f"val {m['val_acc_mean']:.2f}, {m['seeds_done']} seed(s)")


def evaluate_shipped(path: Path, data_dir: str | None) -> None:
    """``--shipped``: evaluate the shipped checkpoints, store and print them with their goals."""
    sh = shipped(data_dir)
    results.update_shipped(path, sh)
    for n, m in sh["models"].items():
        print(f"{n}: {m['test_acc']:.2f} % on {m['test_images']} test images "
              f"(registry: {m['registry_top1']})")
    print_goals(sh["goals"])


def _device_name(device: str) -> str | None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def _config(args, seed: int):
    """The experiment of ``seed`` as the command line asks for it."""
    return ablation_config(seed, args.epochs, args.train_subset, args.student_init,
                           args.runs_dir, args.data_dir, args.threads, device=args.device,
                           dataset=args.dataset, val_size=args.val_size,
                           widths=tuple(args.widths), compile=args.compile,
                           names=None if args.variants is None else tuple(args.variants))


def _jobs(args) -> int:
    """Training processes at once: ``--jobs``, one per seed with ``--parallel`` on cpu, else all
    on cuda and one on cpu."""
    jobs = args.jobs or (len(args.seeds) if args.parallel and args.device == "cpu" else None)
    if jobs is None:
        jobs = 10**6 if args.device.startswith("cuda") else 1
    return jobs


def _run_record(args, jobs: int) -> dict:
    """The ``run`` section of the results: exactly what this run trains, how and where."""
    names = None if args.variants is None else tuple(args.variants)
    return {"epochs": args.epochs, "seeds": args.seeds, "train_subset": args.train_subset,
            "student_init": args.student_init, "threads": args.threads, "jobs_at_once": jobs,
            "device": args.device, "device_name": _device_name(args.device),
            "dataset": args.dataset, "widths": args.widths, "recipe": RECIPE.name,
            "variants": variants(args.epochs, tuple(args.widths), names),
            "compile": args.compile,
            "teacher_recipe": TEACHER_RECIPE.name,
            "evaluated_on": f"{args.dataset} test set, the epoch each stage ships (its select)",
            "wall_s": None}


def run_ablation(args, path: Path) -> int:
    """Train every (seed, stage) job of the ablation (resuming what is on disk) and keep ``path``
    up to date while they run; the cost of a step first, unless ``--no-cost``."""
    configs = {s: _config(args, s) for s in args.seeds}  # validates everything (device too) first
    cost = None
    if not args.no_cost:
        cost = step_cost(args.cost_steps, 256, args.data_dir, compile=args.compile)
        print(f"step cost: distill {cost['distill_step_s']}s / plain {cost['plain_step_s']}s "
              f"= {cost['ratio']}x")
    if args.cost_only:
        results.update_cost(path, cost)
        return 0
    jobs = _jobs(args)
    run = _run_record(args, jobs)
    t0 = time.perf_counter()
    kept = results.kept_by_ablation(path)

    def save(final: bool = False) -> dict:
        """Rewrite the results from every finished stage on disk (complete once all are); the
        shipped-checkpoint evaluation (``--shipped``) and the recorded runs (``--record-runs``)
        already in the file stay."""
        per_seed = {s: collect(c) for s, c in configs.items()}
        summary = summarise(per_seed, args.seeds)
        complete = all(len(r) == len(run["variants"]) for r in per_seed.values())
        if final:
            run["wall_s"] = round(time.perf_counter() - t0, 1)
        data = {"complete": complete, "run": run, "step_cost": cost, "summary": summary,
                "goals": ablation_goals(summary), "decisions": decisions(per_seed, args.seeds),
                "per_seed": {str(s): r for s, r in per_seed.items()},
                "configs": {str(s): to_dict(c) for s, c in configs.items()}}
        data.update(kept)
        results.write(path, data)
        return data

    for cfg in configs.values():  # write (or check, on a rerun) each seed's run directory once
        prepare_run_dir(cfg, (exp_dir(cfg) / "config.yaml").exists(), DistEnv())
    save()
    schedule(args, configs, jobs, save)
    print_goals(save(final=True)["goals"])
    return 0


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results_dir = Path(args.results_dir) if args.results_dir else bench.common.RESULTS
    path = results_dir / "accuracy.json"
    if args.render:
        results.render(path)
        return 0
    if args.record_runs:
        print_recorded(results.update_runs(path, [Path(d) for d in args.record_runs]))
        return 0
    if args.record_device_run:
        record_device_run(path, Path(args.record_device_run), args.note, args.discard)
        return 0
    if args.shipped:
        evaluate_shipped(path, args.data_dir)
        return 0
    if args.quick:
        args.epochs, args.train_subset = 1, 6400
    torch.set_num_threads(args.threads)
    if args.train_seed is not None:  # a child job: train one stage of one seed, write nothing else
        train(_config(args, args.train_seed), resume=True, only=[args.train_stage],
              log=lambda m: print(f"[seed {args.train_seed}] {m}", flush=True))
        return 0
    return run_ablation(args, path)
