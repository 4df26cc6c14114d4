"""Run directories, the checkpoints a stage writes every epoch, and exact resume.

A run lives in ``<out_dir>/<experiment>/`` (:func:`exp_dir`): ``config.yaml``, the resolved config
that a ``--resume`` must match (:func:`prepare_run_dir`, :func:`resume_diff`), and one directory
per stage (:func:`stage_dir`) with ``last.pt`` (:class:`ResumeState`: everything the next epoch
needs) and ``best.pt`` (:class:`BestEpoch`: the best validation epoch's weights).

Resuming is exact: the data order and augmentation of every epoch come from generators seeded by
``(seed, stage, epoch)`` (:func:`derive_seed`), and the global RNG states, optimizer and scheduler
are restored, so a resumed run produces the same weights and metrics as an uninterrupted one (same
process count and thread count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from sibnn_base import runlog
from sibnn_base.atomic import atomic_write, check_writable_dir
from sibnn_base.errors import CheckpointError, ConfigError, OutputDirError
from sibnn_base.typed import to_dict

from ..checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from .config import RUNTIME_KEYS, SELECTION_KEYS, TrainConfig, build_config, config_diff
from .distributed import DistEnv, barrier
from .ema import WeightEMA


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python ``hash``, which is salted per process)."""
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return s


def exp_dir(cfg: TrainConfig) -> Path:
    """The run's directory, ``<out_dir>/<experiment>``."""
    return Path(cfg.out_dir) / cfg.experiment


def stage_dir(cfg: TrainConfig, stage: str) -> Path:
    """Stage ``stage``'s directory, ``<out_dir>/<experiment>/<stage>``."""
    return exp_dir(cfg) / stage


def _comparable(resolved: dict) -> dict:
    out = {k: v for k, v in resolved.items() if k not in RUNTIME_KEYS}
    if isinstance(out.get("stages"), list):
        out["stages"] = [{k: v for k, v in st.items() if k not in SELECTION_KEYS}
                         if isinstance(st, dict) else st for st in out["stages"]]
    return out


def resume_diff(old: dict, new: dict) -> list[str]:
    """Keys in which config ``new`` may not resume run ``old``: everything but the runtime keys
    and the stages' selection keys (:data:`SELECTION_KEYS`) must match, except that ``new`` may
    *append* stages (a finished run extended with another
    stage keeps its completed stages)."""
    try:  # fill in fields added since the run was written (their defaults change nothing)
        old = to_dict(build_config(old))
    except ConfigError:
        pass
    a, b = _comparable(old), _comparable(new)
    old_stages, new_stages = a.pop("stages", None) or [], b.pop("stages", None) or []
    diff = config_diff(a, b)
    if new_stages[:len(old_stages)] != old_stages:
        diff.append("stages")
    return diff


def prepare_run_dir(cfg: TrainConfig, resume: bool, env: DistEnv) -> None:
    """Check (and on rank 0 write) ``<exp>/config.yaml``; a resume must match it (new stages may
    be appended, see :func:`resume_diff`)."""
    check_writable_dir(cfg.out_dir, f"out_dir {cfg.out_dir}")
    path = exp_dir(cfg) / "config.yaml"
    resolved = to_dict(cfg)
    if path.exists():
        if not resume:
            raise OutputDirError(f"run directory {exp_dir(cfg)} already holds a run; pass --resume "
                                 "to continue it or choose another experiment name")
        try:
            old = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            raise OutputDirError(f"{path} is not valid YAML; the run directory is damaged") from None
        diff = resume_diff(old or {}, resolved)
        if diff:
            shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
            raise ConfigError(f"--resume: {exp_dir(cfg)} was run with another config "
                              f"(differs in {shown}); use the same config or a new experiment")
    elif resume:
        raise OutputDirError(f"--resume: no run to resume at {exp_dir(cfg)} (no config.yaml)")
    barrier(env)
    if env.main:  # a unique temp file: concurrent resumes of one run (bench.accuracy) may race
        text = yaml.safe_dump(resolved, sort_keys=False).encode()
        atomic_write(path, lambda fh: fh.write(text))
        runlog.attach(exp_dir(cfg) / "train.log")  # the run's log: warnings so far and after
    barrier(env)


@dataclass
class ResumeState:
    """What a stage carries from one epoch to the next, stored in its ``last.pt``.

    The file is a plain checkpoint (:func:`~quant_models.checkpoint.make_checkpoint`: model,
    ``optimizer``, ``epoch``, the last epoch's ``metrics``) plus a ``resume`` entry with the
    scheduler state, the global CPU RNG state, the metrics history, the process count and, with
    ``ema_decay``, the weight average. The best validation epoch's weights are in ``best.pt``
    (:class:`BestEpoch`), not here."""

    world: int = 1
    """Processes of the run that wrote it; a resume must use as many."""
    epoch: int = 0
    """Epochs completed."""
    history: list[dict] = field(default_factory=list)
    """One metrics row per completed epoch (``metrics.jsonl`` without its ``final`` line)."""
    state_dict: dict | None = None
    """Model weights, when loaded from ``last.pt``."""
    optimizer: dict | None = None
    """Optimizer state, when loaded."""
    scheduler: dict | None = None
    """Learning-rate scheduler state, when loaded."""
    rng_cpu: torch.Tensor | None = None
    """Global CPU RNG state at the end of the last epoch, when loaded."""
    ema: dict | None = None
    """The weight average's state (stages with ``ema_decay``), when loaded."""

    @classmethod
    def load(cls, path: Path, arch: str, world: int) -> ResumeState:
        """The state in ``path`` (a ``last.pt``), checked against ``arch`` and ``world``."""
        ck = load_checkpoint(path, expected_arch=arch)
        extra = ck.get("resume")
        if not isinstance(extra, dict) or extra.get("world") != world:
            raise CheckpointError(f"--resume: {path} was written by a run with "
                                  f"{(extra or {}).get('world')} process(es), this run has "
                                  f"{world}; resume with the same process count")
        return cls(world=world, epoch=int(ck["epoch"]), history=list(extra["history"]),
                   state_dict=ck["state_dict"], optimizer=ck["optimizer"],
                   scheduler=extra["scheduler"], rng_cpu=extra["rng_cpu"], ema=extra.get("ema"))

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                ema: WeightEMA | None = None) -> None:
        """Put the loaded weights, optimizer, scheduler, weight average and RNG state back."""
        model.load_state_dict(self.state_dict)
        opt.load_state_dict(self.optimizer)
        sched.load_state_dict(self.scheduler)
        if ema is not None:
            if self.ema is None:  # resume_diff refuses a changed ema_decay; this is a damaged file
                raise CheckpointError("--resume: last.pt holds no weight average, but the stage "
                                      "has ema_decay; start the run afresh")
            ema.load_state_dict(self.ema)
        torch.set_rng_state(self.rng_cpu)

    def add_epoch(self, row: dict) -> None:
        """Record a completed epoch's metrics row."""
        self.history.append(row)
        self.epoch = int(row["epoch"])

    def save(self, path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, *,
             arch: str, config: dict, ema: WeightEMA | None = None) -> None:
        """Write ``last.pt`` from the live model, optimizer, scheduler, weight average and RNG
        (atomically)."""
        ck = make_checkpoint(model, arch=arch, optimizer=opt, epoch=self.epoch,
                             metrics=self.history[-1], config=config)
        ck["resume"] = {"scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                        "history": self.history, "world": self.world}
        if ema is not None:
            ck["resume"]["ema"] = ema.state_dict()
        save_checkpoint(path, ckpt=ck)


@dataclass
class BestEpoch:
    """The epoch whose weights ``best.pt`` holds: the best validation accuracy so far (the first
    of equals); epoch 0 = none yet."""

    epoch: int = 0
    val_acc: float = -math.inf
    state_dict: dict | None = None
    """The weights, when loaded from ``best.pt``."""

    @classmethod
    def load(cls, path: Path, arch: str, done: int) -> BestEpoch:
        """What ``path`` holds, for a stage that has completed ``done`` epochs. ``best.pt`` is
        written before ``last.pt``, so after an interruption between the two it may hold the
        epoch after ``done``: that epoch is then retrained identically (exact resume) and beats
        every earlier one again, so it counts as none yet."""
        if not path.exists():
            return cls()
        ck = load_checkpoint(path, expected_arch=arch)
        epoch = int(ck["epoch"])
        if epoch > done:
            return cls()
        return cls(epoch, float(ck["metrics"]["val_acc"]), ck["state_dict"])

    def offer(self, row: dict, path: Path, model: nn.Module, *, arch: str, config: dict) -> None:
        """Keep ``model`` (validated as ``row``) in ``path`` if it beats the best so far."""
        if row["val_acc"] > self.val_acc:
            save_checkpoint(path, model, optimizer=None, arch=arch, epoch=int(row["epoch"]),
                            metrics=row, config=config)
            self.epoch, self.val_acc = int(row["epoch"]), float(row["val_acc"])
