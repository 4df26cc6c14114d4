"""Training configuration: frozen dataclasses, file defaults -> YAML -> ``--set`` overrides.

Unknown keys are errors (finn-plus' ``forbid_extra_keys``), as are values of the wrong type. The
resolved configuration is plain data (:func:`to_dict`) and is written into the run directory.

A schedule is a list of :class:`Stage`. A stage trains one registered model (``student``) and may
distil from a frozen ``teacher`` (an earlier stage's name or a checkpoint path) and start from
``init_from`` (likewise). Example: stage ``teacher`` trains ``si_resnet_fp`` with CE; stage
``student`` trains ``si_resnet_w1a1`` with CE + logit KD + block-wise MSE from ``teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from sibnn_base.errors import ConfigError
from sibnn_base.typed import from_dict, load_mapping

from ..data import DatasetName
from ..registry import OVERRIDE_KEYS, TEACHER_OF, list_models, resolve_spec


class OptimizerName(str, Enum):
    """Optimizers a stage may use."""

    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class Select(str, Enum):
    """Which epoch's weights a stage ships in ``final.pt``.

    ``last``: the last epoch's. ``best_val``: the epoch with the highest validation accuracy
    (the first of equals; the test split is never looked at to choose), kept in ``best.pt`` as
    training goes. Validation accuracy moves by up to a point from one epoch to the next even late
    in the cosine decay (configs/fmnist_student.yaml), so the last epoch is partly a draw."""

    LAST = "last"
    BEST_VAL = "best_val"


class TapNorm(str, Enum):
    """How block outputs are normalised before the block-wise MSE.

    ``l2``: each sample's flattened tap divided by its L2 norm. ``attention``: the spatial map
    ``mean_c(x**2)`` per sample, L2-normalised (Zagoruyko & Komodakis; Real-to-Binary).
    """

    L2 = "l2"
    ATTENTION = "attention"


@dataclass(frozen=True)
class DataConfig:
    """Which data to train on and how to split it."""

    name: DatasetName = DatasetName.FMNIST
    """Dataset: fmnist, mnist, digits or cifar10."""
    data_dir: str | None = None
    """Directory with the dataset files (default: the Debian package's directory)."""
    val_size: int = 5000
    """Samples of the official training set held out for validation (never tune on test)."""
    split_seed: int = 0
    """Seed of the fixed train/validation split."""
    train_subset: int | None = None
    """Train on only the first N training samples (quick runs); None = all."""
    hflip: bool = False
    """Random horizontal flips during training (seeded per epoch)."""
    crop_pad: int = 0
    """Random crops during training: pad each image by this many pixels with 0 (black, the
    background of Fashion-MNIST and the binary stem's own zero padding), then cut a window of
    the original size at a random offset (seeded per epoch); 0 = off."""
    cutout: int = 0
    """Cutout (DeVries & Taylor 2017) during training: zero a square of this side, clipped at the
    border, centred at a random pixel of each image (seeded per epoch, after flips and crops);
    0 = off."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms: ``ce * CE + kd * T**2 * KL(T) + block * sum_tap w_tap * MSE``."""

    ce: float = 1.0
    """Cross entropy on the labels."""
    kd: float = 0.0
    """Logit distillation (KL between temperature-softened teacher and student outputs)."""
    temperature: float = 4.0
    """Softmax temperature of the logit distillation."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross entropy (0 = none; e.g. 0.1 for a teacher)."""
    block: float = 0.0
    """Block-wise distillation: MSE between normalised student and teacher taps."""
    taps: dict[str, float] | None = None
    """Per-tap weights, e.g. ``{stem: 0.5, block_3: 2}``; None = every tap with weight 1."""
    tap_norm: TapNorm = TapNorm.L2
    """Normalisation of the taps before the MSE."""


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule."""

    name: str
    """Stage name; the stage writes ``runs/<experiment>/<name>/``."""
    student: str
    """Registered model trained in this stage (e.g. si_resnet_fp, si_resnet_w1a1)."""
    epochs: int
    """Epochs of this stage."""
    teacher: str | None = None
    """Frozen teacher: an earlier stage's name or a checkpoint path; None = no distillation."""
    init_from: str | None = None
    """Initial weights: an earlier stage's name or a checkpoint path (tensors matched by name
    and shape); None = fresh initialisation."""
    loss_weights: LossWeights = field(default_factory=LossWeights)
    """Loss terms and their weights."""
    optimizer: OptimizerName = OptimizerName.ADAM
    """Optimizer."""
    lr: float = 1e-3
    """Peak learning rate (cosine decay to 0 over the stage, after a linear warm-up)."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw)."""
    momentum: float = 0.9
    """SGD momentum (Nesterov where > 0; 0 = plain SGD)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this before every step; None = off. SGD at lr 0.1 needs
    it (e.g. 1.0): without it the FP teacher's scalar ``logit_scale`` (a sum-pooled head) blows
    up within the warm-up (loss NaN by step ~40, measured); Adam/AdamW are scale-invariant."""
    batch_size: int = 256
    """Global batch size (split across DDP processes)."""
    ema_decay: float | None = None
    """Ship an exponential moving average of the weights, updated after every step with this
    decay (e.g. 0.998: about 500 steps), instead of the last step's weights; None = off. Every
    epoch is validated both ways (``val_acc`` is the average's, ``val_acc_raw`` the last
    step's). See :mod:`quant_models.train.ema`."""
    hflip: bool | None = None
    """Random horizontal flips in this stage; None = the experiment's ``data.hflip``."""
    crop_pad: int | None = None
    """Random-crop padding in this stage; None = the experiment's ``data.crop_pad``."""
    cutout: int | None = None
    """Cutout side in this stage; None = the experiment's ``data.cutout``."""
    select: Select = Select.LAST
    """Which epoch ``final.pt`` holds: ``last`` or ``best_val`` (:class:`Select`). Every run
    keeps its best validation epoch in ``best.pt`` either way; this key only picks what is
    shipped, so a ``--resume`` may change it (:data:`SELECTION_KEYS`)."""
    model: dict[str, Any] = field(default_factory=dict)
    """Model overrides for this stage only, over the experiment's ``model``: e.g.
    ``{float_weights: true}`` for the first stage of the staged recipe (binary activations with
    float weights; the next stage starts from it with binary weights)."""


@dataclass(frozen=True)
class TrainConfig:
    """A whole experiment."""

    experiment: str
    """Name of the run; output goes to ``<out_dir>/<experiment>/<stage>/``."""
    stages: tuple[Stage, ...]
    """The schedule, run in order."""
    out_dir: str = "runs"
    """Root of all runs."""
    seed: int = 0
    """Seed of initialisation, shuffling and augmentation."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data."""
    model: dict[str, Any] = field(default_factory=dict)
    """Model overrides for every stage (width, depth, r, res_bits, ...); dataset is implied."""
    eval_batch_size: int = 1000
    """Batch size of validation and test passes."""
    num_threads: int | None = None
    """torch intra-op threads per process; None = torch's default."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    device: str = "cpu"
    """Where to train: ``cpu``, ``cuda`` or ``cuda:N``. On a GPU the whole dataset is moved to
    the device once and stays there (no loader, no host copies per step)."""
    compile: bool = False
    """Compile each training step (teacher forward, student forward with taps, loss) with
    ``torch.compile``, which fuses the quantizers' and BatchNorm's elementwise chains: on a GPU,
    far fewer kernel launches and bytes moved per step (the GPU ablation,
    ``scripts/device_ablation.sh``). Fused arithmetic rounds differently, so, like ``device``,
    it changes the last bits of a run but not its recipe: a ``--resume`` may switch it. Needs a
    C compiler (CPU) or Triton (CUDA); compiling takes about a minute per stage."""
    channels_last: bool = False
    """Train student and teacher in the channels-last memory layout, oneDNN's own on CPU, which
    spares the layout reorders around every convolution (``python -m bench.accuracy --cost-only``:
    a distillation step, batch 256, 1 thread, 1.98 s -> 1.71 s). The numbers are not bit-identical
    to the default layout's (BatchNorm reduces its statistics in another order), so this is part
    of a run's identity: a ``--resume`` must keep it. The weights it writes are ordinary."""

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")


RUNTIME_KEYS = ("progress", "num_threads", "eval_batch_size", "device", "compile")
"""Keys that may differ between a run and its ``--resume`` without changing its results."""

SELECTION_KEYS = ("select",)
"""Stage keys that a ``--resume`` may change: they pick which of the trained epochs is shipped,
not how any epoch is trained."""


# -- overrides -----------------------------------------------------------------------------------

def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]``; values are YAML scalars/lists (no eval)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE")
        try:
            out.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
    return out


def apply_override(data: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` in plain config ``data``. ``stages.<name>.<field>`` addresses a stage by
    name; ``stages.*.<field>`` sets it in every stage."""
    parts = key.split(".")
    if parts[0] == "stages" and len(parts) >= 3:
        stages = data.get("stages") or []
        hits = [s for s in stages if isinstance(s, dict) and (parts[1] == "*" or s.get("name") == parts[1])]
        if not hits:
            names = ", ".join(str(s.get("name")) for s in stages if isinstance(s, dict))
            raise ConfigError(f"--set {key}: no stage named {parts[1]!r}; stages: {names}")
        for s in hits:
            _set_path(s, parts[2:], value, key)
        return
    _set_path(data, parts, value, key)


def _set_path(d: dict, parts: list[str], value: Any, key: str) -> None:
    for p in parts[:-1]:
        nxt = d.get(p)
        if nxt is None:
            nxt = d[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p} is not a mapping")
        d = nxt
    d[parts[-1]] = value


def build_config(data: dict, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    """Plain data + overrides -> validated :class:`TrainConfig`."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy, plain types only
    for key, value in overrides:
        apply_override(data, key, value)
    cfg = from_dict(TrainConfig, data)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    """File defaults -> YAML file -> overrides."""
    return build_config(load_mapping(path) if path else {}, overrides)


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks (names, references, ranges)."""
    if not cfg.experiment or "/" in cfg.experiment or cfg.experiment in (".", ".."):
        raise ConfigError(f"experiment {cfg.experiment!r} must be a plain directory name")
    if not cfg.stages:
        raise ConfigError("stages must list at least one stage")
    _check_model_keys(cfg.model, "model")
    if cfg.eval_batch_size < 1:
        raise ConfigError("eval_batch_size must be >= 1")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError("num_threads must be >= 1")
    check_device(cfg.device)
    if cfg.data.train_subset is not None and cfg.data.train_subset < 1:
        raise ConfigError("data.train_subset must be >= 1")
    if not 0 <= cfg.data.crop_pad <= 8:
        raise ConfigError(f"data.crop_pad must be in 0..8 pixels, got {cfg.data.crop_pad}")
    if not 0 <= cfg.data.cutout <= 16:
        raise ConfigError(f"data.cutout must be in 0..16 pixels, got {cfg.data.cutout}")
    seen: list[str] = []
    for s in cfg.stages:
        w = f"stage {s.name!r}"
        if not s.name or "/" in s.name or s.name in (".", ".."):
            raise ConfigError(f"stage name {s.name!r} must be a plain directory name")
        if s.name in seen:
            raise ConfigError(f"stage name {s.name!r} is used twice")
        if s.student not in list_models():
            raise ConfigError(f"{w}: unknown model {s.student!r}; valid: {', '.join(list_models())}")
        if s.epochs < 1 or s.batch_size < 1 or s.lr <= 0 or s.weight_decay < 0:
            raise ConfigError(f"{w}: epochs and batch_size must be >= 1, lr > 0, weight_decay >= 0")
        if not 0 <= s.momentum < 1:
            raise ConfigError(f"{w}: momentum must lie in [0, 1) (e.g. 0.9), got {s.momentum}")
        if s.grad_clip is not None and not s.grad_clip > 0:
            raise ConfigError(f"{w}: grad_clip must be > 0 (or null for no clipping)")
        if s.ema_decay is not None and not 0 < s.ema_decay < 1:
            raise ConfigError(f"{w}: ema_decay must lie in (0, 1) (e.g. 0.998), got {s.ema_decay}")
        if s.crop_pad is not None and not 0 <= s.crop_pad <= 8:
            raise ConfigError(f"{w}: crop_pad must be in 0..8 pixels, got {s.crop_pad}")
        if s.cutout is not None and not 0 <= s.cutout <= 16:
            raise ConfigError(f"{w}: cutout must be in 0..16 pixels, got {s.cutout}")
        if s.warmup_epochs < 0 or s.warmup_epochs > s.epochs:
            raise ConfigError(f"{w}: warmup_epochs must be in 0..epochs")
        _check_model_keys(s.model, f"stages.{s.name}.model")
        try:
            resolve_spec(s.student, dataset=cfg.data.name.value, **{**cfg.model, **s.model})
        except ConfigError as err:
            raise ConfigError(f"{w}: {err}") from None
        lw = s.loss_weights
        if min(lw.ce, lw.kd, lw.block) < 0 or lw.ce + lw.kd + lw.block == 0:
            raise ConfigError(f"{w}: loss weights must be >= 0 and not all 0")
        if lw.temperature <= 0:
            raise ConfigError(f"{w}: loss_weights.temperature must be > 0")
        if not 0 <= lw.label_smoothing < 1:
            raise ConfigError(f"{w}: loss_weights.label_smoothing must be in [0, 1), got "
                              f"{lw.label_smoothing}")
        if (lw.kd > 0 or lw.block > 0) and s.teacher is None:
            raise ConfigError(f"{w}: kd/block loss weights need a teacher")
        for ref_name, ref in (("teacher", s.teacher), ("init_from", s.init_from)):
            if ref is not None and not is_path_ref(ref) and ref not in seen:
                raise ConfigError(f"{w}: {ref_name} {ref!r} is neither an earlier stage "
                                  f"({', '.join(seen) or 'none'}) nor a .pt checkpoint path")
        if s.teacher is not None and not is_path_ref(s.teacher):
            t = cfg.stage(s.teacher).student
            want = TEACHER_OF.get(s.student)
            if want is not None and t != want:
                raise ConfigError(f"{w}: teacher stage {s.teacher!r} trains {t!r}, but the teacher "
                                  f"of {s.student} is {want!r}")
        seen.append(s.name)


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` with that GPU present; anything else is a one-line error."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) present")


def _check_model_keys(model: dict, where: str) -> None:
    unknown = sorted(set(model) - set(OVERRIDE_KEYS) | ({"dataset"} & set(model)))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; valid: "
                          f"{', '.join(k for k in OVERRIDE_KEYS if k != 'dataset')} "
                          "(the dataset comes from data.name)")


def is_path_ref(ref: str) -> bool:
    """A stage reference that is a checkpoint path rather than a stage name."""
    return ref.endswith(".pt") or "/" in ref


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        key = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, key + ".")
        elif va != vb:
            out.append(key)
    return out
