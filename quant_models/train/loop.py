"""The training loop: stages in order, DDP-aware, exactly resumable.

Each stage writes ``<out_dir>/<experiment>/<stage>/``:

* ``metrics.jsonl``: one JSON line per epoch (losses, accuracies, lr, time), then a ``final`` line
  with the test accuracy (reported only; model selection uses the validation split);
* ``last.pt``: model, optimizer, scheduler, RNG states and metric history, written atomically
  after every epoch (``--resume`` continues from it);
* ``best.pt``: the model alone at its best validation epoch so far (the stage's ``select:
  best_val`` ships it), written atomically whenever validation improves;
* ``final.pt``: the trained model alone (no optimizer), written when the stage completes: the last
  epoch's, or the best validation epoch's with ``select: best_val``.

and ``<out_dir>/<experiment>/`` holds ``config.yaml`` (the resolved config), ``results.json`` and
``train.log`` (third-party warnings, an internal error's traceback).
Every file is written with :mod:`sibnn_base.atomic` (``metrics.jsonl`` is rewritten whole each
epoch), so an interrupted run never leaves a half-written file.

A stage is :func:`~.stage_setup.setup_stage` (models, optimizer, schedule),
:class:`~.resume.ResumeState` (what ``last.pt`` carries between epochs), then per epoch
:func:`train_one_epoch` and :func:`~.evaluation.validate`, and :func:`finish_stage` (test
accuracy and ``final.pt``); :func:`run_stage` is the loop over them. Resuming is exact
(:mod:`.resume`).

The same code runs as one process or under ``torchrun --nproc_per_node N`` (DDP, gloo on CPU,
:mod:`.distributed`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sibnn_base import signals
from sibnn_base.atomic import atomic_write_json, atomic_write_jsonl
from sibnn_base.errors import ConfigError, TrainingDivergedError

from ..augment import EpochAugmentation
from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import Splits, load_splits
from .config import Select, TrainConfig
from .distributed import DistEnv, all_sum, barrier, dist_env, quiet
from .evaluation import BN_RECALIBRATION_SAMPLES, evaluate, recalibrate_bn, validate
from .resume import BestEpoch, ResumeState, derive_seed, exp_dir, prepare_run_dir, stage_dir
from .stage_setup import StageRun, compile_step, precheck_refs, setup_stage


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, leave=tty, dynamic_ncols=True,
                mininterval=0.5 if tty else 60.0)


def train_one_epoch(run: StageRun, epoch: int) -> tuple[dict[str, float], float]:
    """Train one epoch (0-based ``epoch``); returns the train metrics summed over all processes
    (``train_loss``, ``train_ce``/``train_kd``/``train_block`` where used, ``train_acc``) and the
    seconds it took. Data order and augmentation come from a generator seeded by
    ``(seed, stage, epoch)``."""
    cfg, stage, env, train = run.cfg, run.stage, run.env, run.train
    dev = run.device
    steps, local_b = run.steps, stage.batch_size // env.world

    g = torch.Generator().manual_seed(derive_seed(cfg.seed, run.index, epoch + 1))
    perm = torch.randperm(len(train), generator=g).to(dev)
    augment = EpochAugmentation.draw(
        len(train), min(train.x.shape[-2:]), g, dev,
        hflip=cfg.data.hflip if stage.hflip is None else stage.hflip,
        crop_pad=cfg.data.crop_pad if stage.crop_pad is None else stage.crop_pad,
        cutout_size=cfg.data.cutout if stage.cutout is None else stage.cutout)
    run.student.train()
    # running sums stay on the device: no host sync per step
    sums = {k: torch.zeros((), dtype=torch.float64, device=dev)
            for k in ("loss", "ce", "kd", "block", "correct", "n")}
    bar = _progress(steps, f"{stage.name} {epoch + 1}/{stage.epochs}", cfg.progress and env.main)
    t0 = time.perf_counter()
    for step in range(steps):
        signals.check()  # a signal that library code swallowed stops the run at the next step
        idx = perm[step * stage.batch_size:(step + 1) * stage.batch_size]
        idx = idx[env.rank * local_b:(env.rank + 1) * local_b]
        x, y = augment.apply(train.x[idx], idx), train.y[idx]
        loss, parts, logits = run.forward_loss(x, y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if stage.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.student.parameters(), stage.grad_clip)
        run.opt.step()
        run.sched.step()
        if run.ema is not None:
            run.ema.update()
        b = len(y)
        sums["loss"] += loss.detach() * b
        for k, v in parts.items():
            sums[k] += v.detach() * b if torch.is_tensor(v) else float(v) * b
        sums["correct"] += (logits.detach().argmax(1) == y).sum()
        sums["n"] += b
        if bar is not None:
            bar.update(1)
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{float(sums['loss'] / sums['n']):.3f}",
                                acc=f"{float(100 * sums['correct'] / sums['n']):.1f}",
                                refresh=False)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    keys = list(sums)
    tot = dict(zip(keys, all_sum([float(sums[k]) for k in keys], env), strict=True))
    return ({"train_loss": tot["loss"] / tot["n"],
             **{f"train_{k}": tot[k] / tot["n"] for k in ("ce", "kd", "block") if tot[k]},
             "train_acc": 100.0 * tot["correct"] / tot["n"]}, seconds)


def finish_stage(run: StageRun, history: list[dict], final_path: Path, log=print) -> dict[str, Any]:
    """Test the trained student, write ``final.pt`` and the ``final`` line of ``metrics.jsonl``;
    returns the stage's final metrics."""
    cfg, stage, env = run.cfg, run.stage, run.env
    last = history[-1]
    val = {"acc": last["val_acc"], "loss": last["val_loss"]}
    stale = last.get("val_acc_running_bn")
    if stale is None:  # last epoch from a run of before per-epoch re-estimation: do it now
        stale = last["val_acc"]
        recalibrate_bn(run.shipped, run.train, BN_RECALIBRATION_SAMPLES, cfg.eval_batch_size)
        val = evaluate(run.shipped, run.splits.val, cfg.eval_batch_size, env)
    recal = {"bn_recalibrated_on": min(BN_RECALIBRATION_SAMPLES, len(run.train)),
             "val_acc_before_bn_recalibration": stale}
    if env.main:
        log(f"[{stage.name}] BN statistics re-estimated: val {stale:.2f}% (running statistics) "
            f"-> {val['acc']:.2f}%")
    top = max(history, key=lambda r: r["val_acc"])  # the first of equals
    chosen = {"select": stage.select.value, "selected_epoch": int(last["epoch"]),
              "best_val_epoch": int(top["epoch"]), "best_val_acc": top["val_acc"]}
    if stage.select is Select.BEST_VAL:
        best = BestEpoch.load(final_path.parent / "best.pt", stage.student, int(last["epoch"]))
        if best.epoch == 0:  # only a run resumed from before best.pt existed, at its very end
            chosen["select_note"] = "no best.pt: the last epoch is shipped"
        elif best.epoch != last["epoch"]:
            row = next(r for r in history if r["epoch"] == best.epoch)
            chosen.update(selected_epoch=best.epoch, val_acc_last=val["acc"],
                          test_acc_last=evaluate(run.shipped, run.splits.test,
                                                 cfg.eval_batch_size, env)["acc"])
            run.shipped.load_state_dict(best.state_dict)
            val = {"acc": row["val_acc"], "loss": row["val_loss"]}
            recal["val_acc_before_bn_recalibration"] = row.get("val_acc_running_bn", stale)
        if env.main:
            log(f"[{stage.name}] select best_val: epoch {chosen['selected_epoch']} "
                f"(val {val['acc']:.2f}%) of {last['epoch']}")
    test = evaluate(run.shipped, run.splits.test, cfg.eval_batch_size, env)
    metrics = {"epochs": stage.epochs, "val_acc": val["acc"], "val_loss": val["loss"],
               "test_acc": test["acc"], "test_loss": test["loss"], **recal, **chosen,
               "train_time_s": round(sum(r["epoch_time_s"] for r in history), 1)}
    if run.ema is not None:  # the last step's weights, for the record (their BN re-estimated)
        metrics.update(ema_decay=stage.ema_decay, val_acc_raw=last["val_acc_raw"],
                       test_acc_raw=evaluate(run.student, run.splits.test, cfg.eval_batch_size,
                                             env)["acc"])
    if env.main:
        save_checkpoint(final_path, run.shipped, optimizer=None, epoch=chosen["selected_epoch"],
                        metrics=metrics, config=run.saved_config)
        atomic_write_jsonl(final_path.parent / "metrics.jsonl", history + [{"final": True, **metrics}])
        log(f"[{stage.name}] done: val {metrics['val_acc']:.2f}% test {metrics['test_acc']:.2f}%")
    barrier(env)
    return metrics


def run_stage(cfg: TrainConfig, index: int, splits: Splits, env: DistEnv,
              log=print) -> dict[str, Any]:
    """Train one stage (resuming from its ``last.pt`` if present); returns its final metrics."""
    stage = cfg.stages[index]
    sdir = stage_dir(cfg, stage.name)
    final_path, last_path = sdir / "final.pt", sdir / "last.pt"
    if final_path.exists():
        done = load_checkpoint(final_path, expected_arch=stage.student)
        if env.main:
            log(f"[{stage.name}] already complete: {done['metrics']}")
        return dict(done["metrics"])

    run = setup_stage(cfg, index, splits, env, log)
    state = ResumeState(world=env.world)
    if last_path.exists():
        state = ResumeState.load(last_path, stage.student, env.world)
        state.restore(run.student, run.opt, run.sched, run.ema)
        if env.main:
            log(f"[{stage.name}] resuming after epoch {state.epoch}/{stage.epochs}")
    compile_step(run, log)
    best = BestEpoch.load(sdir / "best.pt", stage.student, state.epoch)
    if env.main:
        sdir.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(sdir / "metrics.jsonl", state.history)

    for epoch in range(state.epoch, stage.epochs):
        train_metrics, seconds = train_one_epoch(run, epoch)
        if not math.isfinite(train_metrics["train_loss"]):  # the same on every rank (all-summed)
            kept = (f"{last_path} still holds epoch {epoch}" if epoch else "no epoch was saved")
            raise TrainingDivergedError(
                f"stage {stage.name!r} diverged: training loss {train_metrics['train_loss']} in "
                f"epoch {epoch + 1}/{stage.epochs} ({kept}); lower stages.{stage.name}.lr or set "
                f"stages.{stage.name}.grad_clip (e.g. 1.0), and train it as a new experiment")
        val_metrics = validate(run.student, run.train, run.splits.val, cfg.eval_batch_size, env)
        if run.ema is not None:
            raw = val_metrics
            val_metrics = {**validate(run.ema.model, run.train, run.splits.val,
                                      cfg.eval_batch_size, env),
                           "val_acc_raw": raw["val_acc"], "val_loss_raw": raw["val_loss"],
                           # the average never runs in train mode: only the student has running
                           # statistics of its own
                           "val_acc_running_bn": raw["val_acc_running_bn"]}
        row = {"epoch": epoch + 1, **train_metrics, **val_metrics,
               "lr": run.opt.param_groups[0]["lr"],
               "epoch_time_s": round(seconds, 3), "step_time_s": round(seconds / run.steps, 5)}
        state.add_epoch(row)
        if env.main:  # best.pt before last.pt (BestEpoch.load)
            best.offer(row, sdir / "best.pt", run.shipped, arch=stage.student,
                       config=run.saved_config)
            state.save(last_path, run.student, run.opt, run.sched, arch=stage.student,
                       config=run.saved_config, ema=run.ema)
            atomic_write_jsonl(sdir / "metrics.jsonl", state.history)
            log(f"[{stage.name}] epoch {epoch + 1}/{stage.epochs} loss {row['train_loss']:.4f} "
                f"train {row['train_acc']:.2f}% val {row['val_acc']:.2f}% "
                f"(running BN statistics: {row['val_acc_running_bn']:.2f}%"
                + (f", last step's weights: {row['val_acc_raw']:.2f}%" if run.ema else "")
                + f") ({seconds:.0f}s)")
        barrier(env)

    return finish_stage(run, state.history, final_path, log)


def train(cfg: TrainConfig, *, resume: bool = False, log=print,
          only: list[str] | None = None) -> dict[str, dict]:
    """Run every stage of ``cfg`` in order; returns ``{stage name: final metrics}``.

    Args:
        cfg: a validated :class:`TrainConfig` (see :func:`~quant_models.train.config.load_config`).
        resume: continue the run in ``<out_dir>/<experiment>`` (its config must match ``cfg``).
        log: where one-line progress messages go (rank 0 only).
        only: train just these stages (the stages they reference must be complete); several
            processes may train different stages of one run at once. ``results.json`` is
            written only by a run of every stage.
    """
    if only is not None:
        unknown = sorted(set(only) - {s.name for s in cfg.stages})
        if unknown:
            raise ConfigError(f"no stage named {', '.join(unknown)}; stages: "
                              f"{', '.join(s.name for s in cfg.stages)}")
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    env = dist_env()
    splits = load_splits(cfg.data.name, cfg.data.data_dir, val_size=cfg.data.val_size,
                         split_seed=cfg.data.split_seed).to(cfg.device)
    precheck_refs(cfg)
    prepare_run_dir(cfg, resume, env)
    results = {}
    for i, stage in enumerate(cfg.stages):
        if only is not None and stage.name not in only:
            continue
        results[stage.name] = run_stage(cfg, i, splits, env, log=log if env.main else quiet)
    if env.main and only is None:
        atomic_write_json(exp_dir(cfg) / "results.json", results)
    return results
