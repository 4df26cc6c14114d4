"""The ablation's jobs: every (seed, stage) trained in its own process (``python -m bench.accuracy
--train-seed S --train-stage NAME``), started as soon as the stages it needs are complete."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.ablation.plan import REPO, needs
from flow.studies import split_name
from quant_models.train.resume import exp_dir
from sibnn_base import signals


def pending_jobs(configs: dict) -> list[tuple[int, str]]:
    """The (seed, stage) jobs without a ``final.pt``, in start order: every seed's ablation
    variants before any extra width (``--widths``), config order otherwise. An interrupted run
    then has the ablation on all seeds (mean +- std), not the widths of the first seed only."""
    todo = [(seed, st.name) for seed, cfg in configs.items() for st in cfg.stages
            if not (exp_dir(cfg) / st.name / "final.pt").exists()]
    return sorted(todo, key=lambda k: split_name(k[1])[1] is not None)  # a stable sort


def job_command(args, seed: int, stage: str) -> list[str]:
    """The command line of the child process that trains ``stage`` of ``seed`` with the run's
    own options (``args``: the parsed command line of the ablation)."""
    cmd = [sys.executable, "-m", "bench.accuracy", "--train-seed", str(seed),
           "--train-stage", stage, "--epochs", str(args.epochs),
           "--student-init", args.student_init, "--runs-dir", args.runs_dir,
           "--threads", str(args.threads), "--device", args.device,
           "--dataset", args.dataset, "--widths", *map(str, args.widths)]
    if args.variants is not None:
        cmd += ["--variants", *args.variants]
    if args.compile:
        cmd.append("--compile")
    for flag, val in (("--train-subset", args.train_subset), ("--data-dir", args.data_dir),
                      ("--val-size", args.val_size)):
        if val is not None:
            cmd += [flag, str(val)]
    return cmd


def schedule(args, configs: dict, jobs: int, save) -> None:
    """Run every (seed, stage) job in its own process, each as soon as the stages it needs are
    complete, at most ``jobs`` at a time; results are refreshed (``save()``) whenever a job
    ends."""
    todo = pending_jobs(configs)
    running: dict[tuple[int, str], subprocess.Popen] = {}
    failed: dict[tuple[int, str], int] = {}

    def done(seed: int, stage: str) -> bool:
        return (exp_dir(configs[seed]) / stage / "final.pt").exists()

    def ready(key: tuple[int, str]) -> bool:
        return all(done(key[0], n) for n in needs(configs[key[0]], key[1]))

    while todo or running:
        for key in [k for k in todo if ready(k)]:
            if len(running) >= jobs:
                break
            running[key] = signals.popen(job_command(args, *key), cwd=REPO)  # a signal ends them
            todo.remove(key)
        time.sleep(0.5 if running else 0)
        signals.check()
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                signals.release(proc)
                del running[key]
                if proc.returncode:
                    failed[key] = proc.returncode
                save()
        blocked = [k for k in todo if any(n in {f[1] for f in failed if f[0] == k[0]}
                                          for n in needs(configs[k[0]], k[1]))]
        for k in blocked:
            todo.remove(k)
        if not running and todo and not any(ready(k) for k in todo):
            break
    if failed or todo:
        what = ", ".join(f"seed {s} {n}" for s, n in sorted(failed)) or "dependencies"
        raise SystemExit(f"bench.accuracy: training failed ({what}); rerun the same command to "
                         "resume")
