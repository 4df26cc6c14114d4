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
Every file is written with :func:`sibnn_base.atomic.atomic_write` (``metrics.jsonl`` is rewritten
whole each epoch), so an interrupted run never leaves a half-written file.

A stage is :func:`setup_stage` (models, optimizer, schedule), :class:`ResumeState` (what ``last.pt``
carries between epochs), then per epoch :func:`train_one_epoch` and :func:`validate`, and
:func:`finish_stage` (test accuracy and ``final.pt``); :func:`run_stage` is the loop over them.

Resuming is exact: the data order and augmentation of every epoch come from generators seeded by
``(seed, stage, epoch)``, and the global RNG states, optimizer and scheduler are restored, so a
resumed run produces the same weights and metrics as an uninterrupted one (same process count
and thread count).

The same code runs as one process or under ``torchrun --nproc_per_node N`` (DDP, gloo on CPU).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from sibnn_base import runlog, signals
from sibnn_base.atomic import atomic_write, check_writable_dir
from sibnn_base.errors import CheckpointError, ConfigError, OutputDirError, TrainingDivergedError
from sibnn_base.typed import to_dict

from ..checkpoint import (
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from ..data import Split, Splits, load_splits
from ..fastpath import fast_forward
from ..networks import NetSpec, TapOutputs
from ..registry import TEACHER_OF, build_model, model_from_ckpt
from .config import (
    RUNTIME_KEYS,
    SELECTION_KEYS,
    OptimizerName,
    Select,
    Stage,
    TrainConfig,
    build_config,
    config_diff,
    is_path_ref,
)
from .ema import WeightEMA
from .losses import distillation_loss, resolve_tap_weights

GEOMETRY_KEYS = ("in_channels", "input_size", "num_classes", "width", "depth")
"""model_args a teacher must share with its student so that every tap has the same shape."""


# -- distributed -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistEnv:
    """This process' place in a ``torchrun`` job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Read ``torchrun``'s environment (the one place that does) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size())


def _all_sum(values: list[float], env: DistEnv) -> list[float]:
    if env.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(env: DistEnv) -> None:
    if env.world > 1:
        dist.barrier()


# -- seeds -----------------------------------------------------------------------------------------

def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python ``hash``, which is salted per process)."""
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return s


# -- models ----------------------------------------------------------------------------------------

def _ref_path(cfg: TrainConfig, ref: str) -> Path:
    return Path(ref) if is_path_ref(ref) else stage_dir(cfg, ref) / "final.pt"


def _geometry_mismatch(a: dict, b: dict) -> list[str]:
    return [f"{k} {a.get(k)} vs {b.get(k)}" for k in GEOMETRY_KEYS
            if (list(a[k]) if k == "depth" else a.get(k)) != (list(b[k]) if k == "depth" else b.get(k))]


def load_teacher(cfg: TrainConfig, stage: Stage, student: nn.Module) -> nn.Module:
    """The frozen teacher of ``stage``: architecture and tap geometry are checked."""
    path = _ref_path(cfg, stage.teacher)
    want = TEACHER_OF.get(stage.student)
    ckpt = load_checkpoint(path, expected_arch=want)
    bad = _geometry_mismatch(ckpt["model_args"], student.spec.to_dict())
    if bad:
        raise CheckpointError(f"teacher checkpoint {path} does not match the student "
                              f"({'; '.join(bad)})")
    teacher = model_from_ckpt(ckpt)  # the checkpoint is read once
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


SCALE_KEYS = ("head.logit_scale",)
"""Tensors not transferred between a network with a float-like classifier (the FP teacher, the
staged recipe's first stage, a multi-bit head) and one with a binary classifier (a W1A1 student
with ``head_bits = 1``): the logit scale calibrates the magnitude of the head's weights, which are
about 0.1 when float and exactly +-1 when binary, so a copied scale makes the student's logits
~10x too large (measured: the first student epoch spent on shrinking it, 58 % val). The student
keeps its own initial scale."""


def init_weights(cfg: TrainConfig, stage: Stage, model: nn.Module) -> int:
    """Copy every tensor of ``stage.init_from`` whose name and shape match (except
    :data:`SCALE_KEYS` across FP/binary); returns the count."""
    path = _ref_path(cfg, stage.init_from)
    ckpt = load_checkpoint(path)
    src = ckpt["state_dict"]
    own = model.state_dict()
    skip = SCALE_KEYS if NetSpec(**ckpt["model_args"]).binary_head != model.spec.binary_head else ()
    hits = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and k not in skip}
    if not hits:
        raise CheckpointError(f"init_from checkpoint {path} ({len(src)} tensors) shares no tensor "
                              f"of the same name and shape with {stage.student}")
    model.load_state_dict(hits, strict=False)
    return len(hits)


def _optimizer(stage: Stage, model: nn.Module) -> torch.optim.Optimizer:
    # decay only the conv/FC weights (Brevitas' quant layers subclass these), never BatchNorm,
    # the sign biases (4-d, but biases) or logit_scale
    weights = {id(m.weight) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight is not None}
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if id(p) in weights]
    rest = [p for p in trained if id(p) not in weights]
    groups = [{"params": decay, "weight_decay": stage.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if stage.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum,
                               nesterov=stage.momentum > 0)  # torch: Nesterov needs momentum
    if stage.optimizer is OptimizerName.ADAMW:
        return torch.optim.AdamW(groups, lr=stage.lr)
    # Adam's weight_decay is L2 added to the gradient
    return torch.optim.Adam(groups, lr=stage.lr)


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up, then cosine decay to 0."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup = warmup_steps
        self.total = max(1, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


BN_RECALIBRATION_SAMPLES = 10240
"""Training images over which every network's BatchNorm statistics are re-estimated after every
epoch, before validation, so that each epoch's ``val_acc`` is the accuracy of the network as it
would be shipped (``val_acc_running_bn`` keeps the one with the running statistics). Training
itself is unaffected: train-mode BatchNorm uses batch statistics. A sign flip of a latent weight changes a binary conv's output distribution at once,
so the running averages (momentum 0.1) lag the weights: measured on the Fashion-MNIST student
after epoch 2, eval-mode val accuracy was 34 % with the running statistics and 81 % with
statistics re-estimated on 2,000 training images. The FP teacher needs it too on short schedules:
after one epoch on 6,400 images its val accuracy was 21 % with the running statistics (train-mode
accuracy 55 %), and a teacher with stale statistics is a poor distillation target."""


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, samples: int, batch_size: int) -> None:
    """Replace every BatchNorm's running mean/var by the exact average over the first ``samples``
    images of ``split`` (fixed order, train-mode forward, no weight changes)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    n = min(samples, len(split))
    for i in range(0, n, batch_size):
        model(split.x[i:min(i + batch_size, n)])
    for m, (momentum, training) in zip(bns, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample crops: ``x`` (N, C, H, W) zero-padded by ``pad``, then the H x W window at
    ``offsets[i] = (dy, dx)`` in ``0..2*pad`` (``(pad, pad)`` gives ``x`` back unchanged)."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = (offsets[:, 0, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w, device=dev))[:, None, None, :]
    return padded[torch.arange(n, device=dev)[:, None, None, None],
                  torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def cutout(x: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square of each image of ``x`` (N, C, H, W), clipped at the
    border, whose centre pixel is ``centres[i] = (row, col)`` (for an even ``size``, the centre
    is the lower right of the middle four)."""
    h, w = x.shape[-2:]
    lo = size // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = centres[:, 0, None, None] - lo, centres[:, 1, None, None] - lo
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(inside[:, None], 0.0)


# -- evaluation ------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000,
             env: DistEnv | None = None) -> dict[str, float]:
    """Mean cross entropy and top-1 accuracy (%) of ``model`` on ``split`` (sharded over DDP
    processes, summed with all-reduce)."""
    env = env or DistEnv()
    n = len(split)
    lo, hi = n * env.rank // env.world, n * (env.rank + 1) // env.world
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    for i in range(lo, hi, batch_size):
        x, y = split.x[i:min(i + batch_size, hi)], split.y[i:min(i + batch_size, hi)]
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    model.train(was_training)
    loss_sum, correct = _all_sum([loss_sum, correct], env)
    return {"loss": loss_sum / n, "acc": 100.0 * correct / n}


# -- run directories -------------------------------------------------------------------------------

def exp_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) / cfg.experiment


def stage_dir(cfg: TrainConfig, stage: str) -> Path:
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
    _barrier(env)
    if env.main:  # a unique temp file: concurrent resumes of one run (bench.accuracy) may race
        text = yaml.safe_dump(resolved, sort_keys=False).encode()
        atomic_write(path, lambda fh: fh.write(text))
        runlog.attach(exp_dir(cfg) / "train.log")  # the run's log: warnings so far and after
    _barrier(env)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically (the whole file is rewritten)."""
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write(path, lambda fh: fh.write(text))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = (json.dumps(obj, indent=2) + "\n").encode()
    atomic_write(path, lambda fh: fh.write(text))


# -- resume state ----------------------------------------------------------------------------------

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


# -- one stage -------------------------------------------------------------------------------------

def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, leave=tty, dynamic_ncols=True,
                mininterval=0.5 if tty else 60.0)


@dataclass
class StageRun:
    """Everything one stage trains with (built by :func:`setup_stage`)."""

    cfg: TrainConfig
    index: int
    env: DistEnv
    splits: Splits
    """All splits, on the training device."""
    train: Split
    """The training split (``data.train_subset`` of it)."""
    steps: int
    """Optimizer steps per epoch."""
    student: nn.Module
    wrapped: nn.Module
    """The student as trained: taps in the forward pass, DDP-wrapped under ``torchrun``."""
    teacher: nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    tap_weights: dict[str, float]
    """Per-tap weights of the block loss (:func:`~.losses.resolve_tap_weights`)."""
    ema: WeightEMA | None = None
    """The weight average, when the stage has ``ema_decay``."""
    forward_loss: Any = None
    """``(x, y) -> (loss, parts, logits)`` of one training step (:func:`forward_loss`), compiled
    when the config says ``compile``."""

    @property
    def shipped(self) -> nn.Module:
        """The network the stage validates, tests and writes to ``final.pt``: the weight average
        when there is one, else the student."""
        return self.student if self.ema is None else self.ema.model

    @property
    def stage(self) -> Stage:
        return self.cfg.stages[self.index]

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def saved_config(self) -> dict:
        """The config stored in this stage's checkpoints."""
        return {**to_dict(self.cfg), "stage": self.stage.name}


def setup_stage(cfg: TrainConfig, index: int, splits: Splits, env: DistEnv,
                log=print) -> StageRun:
    """Seed, build the student (initialised from ``init_from``), the frozen teacher, the
    optimizer and the warm-up + cosine schedule of stage ``index``."""
    stage = cfg.stages[index]
    torch.manual_seed(derive_seed(cfg.seed, index, 0))
    dev = torch.device(cfg.device)
    student = build_model(stage.student, dataset=cfg.data.name.value,
                          **{**cfg.model, **stage.model})
    if stage.init_from is not None:
        n = init_weights(cfg, stage, student)
        if env.main:
            log(f"[{stage.name}] initialised {n} tensors from {stage.init_from}")
    teacher = load_teacher(cfg, stage, student) if stage.teacher is not None else None
    student.to(dev)
    fused = fast_forward(student)  # same values and gradients as Brevitas', faster (fastpath.py)
    if env.main and fused:
        log(f"[{stage.name}] fused quantizer forward on {sum(fused.values())} layers "
            f"({', '.join(f'{n} {k}' for k, n in sorted(fused.items()))})")
    if teacher is not None:
        teacher.to(dev)
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    splits = splits.to(dev)
    tap_weights = resolve_tap_weights(stage.loss_weights, student.tap_names)

    train = splits.train.subset(cfg.data.train_subset)
    if stage.batch_size % env.world:
        raise ConfigError(f"stage {stage.name!r}: batch_size {stage.batch_size} is not divisible "
                          f"by the {env.world} processes")
    steps = len(train) // stage.batch_size
    if steps == 0:
        raise ConfigError(f"stage {stage.name!r}: batch_size {stage.batch_size} exceeds the "
                          f"{len(train)} training samples")

    wrapped: nn.Module = TapOutputs(student, flat=False)
    if env.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped)
    opt = _optimizer(stage, student)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(round(stage.warmup_epochs * steps), stage.epochs * steps))
    ema = WeightEMA(student, stage.ema_decay) if stage.ema_decay is not None else None
    step = forward_loss(stage, wrapped, teacher, tap_weights)
    return StageRun(cfg, index, env, splits, train, steps, student, wrapped, teacher, opt, sched,
                    tap_weights, ema, step)


def compile_step(run: StageRun, log=print) -> None:
    """With ``compile``: the run's step compiled (:func:`checked_compile`), checked on the first
    training batch with the weights the run continues from, so a resumed run is checked on its
    restored weights, not on those it started at. A step rejected at the start (e.g. the loss of
    a student fresh from its teacher, far from eager's) gets another check on each resume."""
    if not run.cfg.compile:
        return
    stage = run.cfg.stages[run.index]
    with torch.random.fork_rng():  # the restored RNG states stay as saved: resuming stays exact
        run.forward_loss = checked_compile(
            run.forward_loss, run.student, run.train.x[:stage.batch_size],
            run.train.y[:stage.batch_size],
            log=(lambda m: log(f"[{stage.name}] {m}")) if run.env.main else _quiet)


LOSS_RTOL = 1e-2
"""How far the compiled step's loss may sit from the eager one's, relative (:func:`checked_compile`).
Measured: a student started from the SGD teacher (loss 54 on its first batch, most of it the
distillation terms on logits the binary net has not yet learnt) gave 54.03 vs 54.25 (0.4%) with
all 39 gradients matching; a 1e-3 bound rejected that step and the run trained eager, about 30%
slower. The gradients are the real check (the failure it guards against gave zero gradients)."""


def checked_compile(step, model: nn.Module, x: torch.Tensor, y: torch.Tensor, log=print,
                    compiler=torch.compile):
    """``compiler(step)`` if its loss and every gradient on one batch ``(x, y)`` match the eager
    step's (:func:`_same_direction`), else ``step`` itself, with a line to ``log`` saying why.
    ``model``'s buffers (BatchNorm statistics) are restored after the check, so a run continues as
    if it had not happened.

    "Match" cannot mean equal: fused arithmetic moves a few pre-activations across zero, and each
    flipped sign changes the gradients downstream (measured on CPU, ``si_h_resnet_w1a1_mbh``,
    batch 256: loss within 5e-5, every gradient tensor at cosine >= 0.997 to eager's, but single
    entries up to 16% of the tensor's largest apart). The loss may differ by :data:`LOSS_RTOL`.

    Why the check: on the GPU machine (torch 2.11, CUDA inductor) the compiled step of every
    binary student gave wrong gradients (22 of 23 tensors, most of them zero: the custom
    autograd functions of :mod:`quant_models.fastpath`), so the students did not learn, while the
    FP teacher trained as in eager mode; on CPU (torch 2.13) the same compiled step matched."""
    try:
        compiled = compiler(step)
    except Exception as e:  # noqa: BLE001 - any failure to compile: train eager, say so
        log(f"compile failed ({type(e).__name__}: {e}); training eager")
        return step
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [(b, b.detach().clone()) for b in model.buffers()]

    def grads(fn):
        loss = fn(x, y)[0]
        return float(loss.detach()), torch.autograd.grad(loss, params, allow_unused=True)
    try:
        (le, ge), (lc, gc) = grads(step), grads(compiled)
    except Exception as e:  # noqa: BLE001
        log(f"compiled step failed ({type(e).__name__}: {e}); training eager")
        return step
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    bad = [i for i, (a, c) in enumerate(zip(ge, gc, strict=True)) if not _same_direction(a, c)]
    if bad or abs(le - lc) > LOSS_RTOL * abs(le) + 1e-6:
        log(f"compiled step rejected: loss {lc:.6g} vs eager {le:.6g}, {len(bad)} of "
            f"{len(params)} gradients differ from the eager step's on one batch; training eager")
        return step
    log(f"compiled step checked against the eager step on one batch: loss and {len(params)} "
        f"gradients match")
    return compiled


def _same_direction(a: torch.Tensor | None, c: torch.Tensor | None) -> bool:
    """Whether gradient ``c`` is ``a`` up to rounding and a few flipped signs: cosine >= 0.99 and
    norms within 5% (a zero ``a`` needs a zero ``c``)."""
    if a is None or c is None:
        return a is None and c is None
    a, c = a.double().flatten(), c.double().flatten()
    na, nc = float(a.norm()), float(c.norm())
    if na == 0.0:
        return nc == 0.0
    return abs(nc / na - 1.0) <= 0.05 and float(a @ c) / (na * nc + 1e-300) >= 0.99


def forward_loss(stage: Stage, wrapped: nn.Module, teacher: nn.Module | None,
                 tap_weights: dict[str, float]):
    """The forward half of a training step: ``(x, y) -> (loss, parts, logits)``, with the frozen
    teacher's logits and taps where the stage distils."""
    lw = stage.loss_weights
    need_taps = lw.block > 0

    def step(x: torch.Tensor, y: torch.Tensor):
        t_logits = t_taps = None
        if teacher is not None:
            with torch.no_grad():
                t_logits, t_taps = teacher.forward_taps(x)
        logits, taps = wrapped(x)
        loss, parts = distillation_loss(logits, taps, y, lw, tap_weights, t_logits,
                                        t_taps if need_taps else None)
        return loss, parts, logits.detach()
    return step


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
    hflip = cfg.data.hflip if stage.hflip is None else stage.hflip
    flips = (torch.rand(len(train), generator=g) < 0.5).to(dev) if hflip else None
    pad = cfg.data.crop_pad if stage.crop_pad is None else stage.crop_pad
    shifts = (torch.randint(0, 2 * pad + 1, (len(train), 2), generator=g).to(dev)
              if pad else None)
    cut = cfg.data.cutout if stage.cutout is None else stage.cutout
    centres = (torch.randint(0, min(train.x.shape[-2:]), (len(train), 2), generator=g).to(dev)
               if cut else None)  # drawn last: runs without cutout draw what they always drew
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
        x, y = train.x[idx], train.y[idx]
        if flips is not None:
            f = flips[idx]
            x = torch.where(f[:, None, None, None], x.flip(3), x)
        if shifts is not None:
            x = random_crop(x, shifts[idx], pad)
        if centres is not None:
            x = cutout(x, centres[idx], cut)
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
    tot = dict(zip(keys, _all_sum([float(sums[k]) for k in keys], env), strict=True))
    return ({"train_loss": tot["loss"] / tot["n"],
             **{f"train_{k}": tot[k] / tot["n"] for k in ("ce", "kd", "block") if tot[k]},
             "train_acc": 100.0 * tot["correct"] / tot["n"]}, seconds)


def validate(model: nn.Module, recal: Split, val: Split, batch_size: int,
             env: DistEnv) -> dict[str, float]:
    """Validate ``model`` as it would be shipped: its BatchNorm statistics are re-estimated on
    ``recal`` (:data:`BN_RECALIBRATION_SAMPLES`) first; ``val_acc_running_bn`` is the accuracy
    with the running statistics it had before."""
    stale = evaluate(model, val, batch_size, env)
    recalibrate_bn(model, recal, BN_RECALIBRATION_SAMPLES, batch_size)
    fresh = evaluate(model, val, batch_size, env)
    return {"val_loss": fresh["loss"], "val_acc": fresh["acc"], "val_acc_running_bn": stale["acc"]}


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
        write_jsonl(final_path.parent / "metrics.jsonl", history + [{"final": True, **metrics}])
        log(f"[{stage.name}] done: val {metrics['val_acc']:.2f}% test {metrics['test_acc']:.2f}%")
    _barrier(env)
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
        write_jsonl(sdir / "metrics.jsonl", state.history)

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
            write_jsonl(sdir / "metrics.jsonl", state.history)
            log(f"[{stage.name}] epoch {epoch + 1}/{stage.epochs} loss {row['train_loss']:.4f} "
                f"train {row['train_acc']:.2f}% val {row['val_acc']:.2f}% "
                f"(running BN statistics: {row['val_acc_running_bn']:.2f}%"
                + (f", last step's weights: {row['val_acc_raw']:.2f}%" if run.ema else "")
                + f") ({seconds:.0f}s)")
        _barrier(env)

    return finish_stage(run, state.history, final_path, log)


def precheck_refs(cfg: TrainConfig) -> None:
    """Fail before any training if a teacher/init checkpoint given as a path is missing, corrupt
    or of the wrong architecture (stage references are checked when their stage has run)."""
    for stage in cfg.stages:
        if stage.teacher is not None and is_path_ref(stage.teacher):
            load_checkpoint(stage.teacher, expected_arch=TEACHER_OF.get(stage.student))
        if stage.init_from is not None and is_path_ref(stage.init_from):
            load_checkpoint(stage.init_from)


# -- the library entry point -----------------------------------------------------------------------

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
        results[stage.name] = run_stage(cfg, i, splits, env, log=log if env.main else _quiet)
    if env.main and only is None:
        write_json(exp_dir(cfg) / "results.json", results)
    return results


def _quiet(*_args, **_kwargs) -> None:
    return None
