"""One stage's setup: the student (initialised from ``init_from``), its frozen teacher, the
optimizer, the warm-up + cosine schedule and the training step, gathered in a :class:`StageRun`.

References between stages (``teacher``, ``init_from``) name an earlier stage (its ``final.pt``) or
a checkpoint path; a teacher must share its student's tap geometry (:data:`GEOMETRY_KEYS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sibnn_base.errors import CheckpointError, ConfigError
from sibnn_base.typed import to_dict

from ..checkpoint import load_checkpoint
from ..data import Split, Splits
from ..fastpath import fast_forward
from ..networks import NetSpec, TapOutputs
from ..registry import TEACHER_OF, build_model, model_from_ckpt
from .compile_check import checked_compile
from .config import OptimizerName, Stage, TrainConfig, is_path_ref
from .distributed import DistEnv, quiet
from .ema import WeightEMA
from .losses import distillation_loss, resolve_tap_weights
from .resume import derive_seed, stage_dir

GEOMETRY_KEYS = ("in_channels", "input_size", "num_classes", "width", "depth")
"""model_args a teacher must share with its student so that every tap has the same shape."""


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


def make_optimizer(stage: Stage, model: nn.Module) -> torch.optim.Optimizer:
    """The stage's optimizer over ``model``'s trained parameters, weight decay on the conv/FC
    weights only (Brevitas' quant layers subclass these), never on BatchNorm, the sign biases
    (4-d, but biases) or ``logit_scale``."""
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
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: WeightEMA | None = None
    """The weight average, when the stage has ``ema_decay``."""
    forward_loss: Any = None
    """``(x, y) -> (loss, parts, logits)`` of one training step (:func:`forward_loss`: the
    student with taps in its forward pass, DDP-wrapped under ``torchrun``, and the frozen
    teacher), compiled when the config says ``compile``."""

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
    opt = make_optimizer(stage, student)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(round(stage.warmup_epochs * steps), stage.epochs * steps))
    ema = WeightEMA(student, stage.ema_decay) if stage.ema_decay is not None else None
    step = forward_loss(stage, wrapped, teacher, tap_weights)
    return StageRun(cfg, index, env, splits, train, steps, student, opt, sched, ema, step)


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
            log=(lambda m: log(f"[{stage.name}] {m}")) if run.env.main else quiet)


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


def precheck_refs(cfg: TrainConfig) -> None:
    """Fail before any training if a teacher/init checkpoint given as a path is missing, corrupt
    or of the wrong architecture (stage references are checked when their stage has run)."""
    for stage in cfg.stages:
        if stage.teacher is not None and is_path_ref(stage.teacher):
            load_checkpoint(stage.teacher, expected_arch=TEACHER_OF.get(stage.student))
        if stage.init_from is not None and is_path_ref(stage.init_from):
            load_checkpoint(stage.init_from)
