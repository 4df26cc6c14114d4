"""Model registry in timm's style: ``@register_model``, :func:`build_model`, :func:`list_models`.

A name fixes what it says (``si_h_resnet_w1a1_mbh``: SI reading ``h``, binary weights, an 8-bit
head, sign biases; :attr:`ModelEntry.fixed`, which an override may not change) and builds, unless
overridden, the architecture of the weights it ships (:attr:`ModelEntry.defaults`: the shipped
``si_h_resnet_w1a1_mbh`` has an 8-bit stem and SI in the downsample blocks only), so
``build_model(name)`` and ``build_model(name, pretrained=True)`` are the same network, and training
the default model from scratch trains the shipped one. ``build_model(name, stem_bits=1,
si_blocks="all")`` builds the other variants. (Before, the defaults were :class:`NetSpec`'s, a
binary stem and SI in every block, a different network from the one shipped under the name.)

Nothing is downloaded, ever. ``pretrained=True`` loads a checkpoint shipped inside the package
and verified by sha256; ``pretrained="path.pt"`` loads a user checkpoint of the same architecture.
The registry depends on :mod:`quant_models.checkpoint` (it reads a checkpoint once, then builds
the network its ``model_args`` describe); the checkpoint module never imports the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sibnn_base.errors import CheckpointError, ConfigError, UnknownModelError

from .checkpoint import file_sha256, load_checkpoint
from .networks import DATASET_SHAPES, NetSpec, SIResNet

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass(frozen=True)
class PretrainedEntry:
    """A shipped checkpoint (file inside ``quant_models/pretrained``) and what it was measured at."""

    file: str
    """File name under ``quant_models/pretrained/``."""
    sha256: str
    """Expected sha256 of the file; checked before loading."""
    dataset: str
    """Dataset it was trained on."""
    input_shape: tuple[int, int, int]
    """(C, H, W) of the input."""
    top1: float
    """Test top-1 accuracy (%) measured after training."""
    teacher_top1: float | None = None
    """Test top-1 (%) of the FP teacher it was distilled from."""
    command: str = ""
    """The one command that reproduces it."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: its builder, the spec fields it fixes, those it defaults, its weights."""

    name: str
    builder: Callable[..., nn.Module]
    fixed: dict
    """:class:`NetSpec` fields the name stands for; an override may not change them."""
    defaults: dict
    """:class:`NetSpec` fields the name builds unless overridden: with ``pretrained``, those of
    the shipped file wherever they differ from :class:`NetSpec`'s own defaults."""
    pretrained: PretrainedEntry | None
    doc: str


_REGISTRY: dict[str, ModelEntry] = {}

OVERRIDE_KEYS = ("dataset",) + tuple(n for n in NetSpec.field_names() if n not in ("si", "binary"))


def register_model(name: str, *, fixed: dict, defaults: dict | None = None,
                   pretrained: PretrainedEntry | None = None):
    """Register ``fn(spec) -> nn.Module`` under ``name`` with the spec fields it ``fixed`` and
    those it ``defaults`` to (see :class:`ModelEntry`)."""

    def deco(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, dict(fixed), dict(defaults or {}), pretrained,
                                     (fn.__doc__ or "").strip())
        return fn

    return deco


SI_TWINS = {"si_h_resnet_w1a1_mbh": "resnet_w1a1_mbh", "si_h_resnet_w1a1": "resnet_w1a1",
            "si_resnet_w1a1": "resnet_w1a1"}
"""Each registered SI network and its twin without SI (same head, sign bias and blocks): the
reference that SI's cost in hardware (``bench.flow``) and its gain in accuracy (the ablation's
recorded runs) are measured against."""


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


def resolve_spec(name: str, **overrides) -> NetSpec:
    """The :class:`NetSpec` that ``build_model(name, **overrides)`` builds."""
    entry = get_entry(name)
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ConfigError(f"unknown override key(s) {', '.join(unknown)} for {name}; "
                          f"valid keys: {', '.join(OVERRIDE_KEYS)}")
    kw = dict(overrides)
    dataset = kw.pop("dataset", None)
    if dataset is not None:
        if dataset not in DATASET_SHAPES:
            raise ConfigError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASET_SHAPES)}")
        c, h, _ = DATASET_SHAPES[dataset]
        kw.setdefault("in_channels", c)
        kw.setdefault("input_size", h)
        if dataset == "cifar10":
            kw.setdefault("width", 64)
    fixed = sorted(k for k in kw if k in entry.fixed and kw[k] != entry.fixed[k])
    if fixed:
        raise ConfigError(f"{name} fixes {', '.join(f'{k}={entry.fixed[k]!r}' for k in fixed)}; "
                          "use another registered model (or the base model with these keys)")
    try:
        return NetSpec(**{**entry.defaults, **kw, **entry.fixed})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid model arguments for {name}: {err}") from None


def build_model(name: str, pretrained: bool | str | Path = False, **overrides) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: ``True`` for the shipped checkpoint (sha256-verified), a path for a user
            checkpoint, ``False`` for fresh weights.
        **overrides: :data:`OVERRIDE_KEYS` (``dataset``, ``width``, ``depth``, ``r``, ...).
    """
    entry = get_entry(name)
    if pretrained is True:
        if entry.pretrained is None:
            raise CheckpointError(f"no pretrained checkpoint is shipped for {name}; "
                                  "train one with sibnn-train or pass a checkpoint path")
        path = PRETRAINED_DIR / entry.pretrained.file
        verify_sha256(path, entry.pretrained.sha256)
        pretrained = path
    if pretrained:
        ckpt = load_checkpoint(pretrained, expected_arch=name)
        if overrides:
            raise ConfigError("overrides cannot be combined with a checkpoint: "
                              "the checkpoint's model_args define the network")
        return model_from_ckpt(ckpt)
    model = entry.builder(resolve_spec(name, **overrides))
    model.arch = name
    return model


def model_from_ckpt(ckpt: dict) -> nn.Module:
    """The network an already loaded (:func:`~quant_models.checkpoint.load_checkpoint`)
    checkpoint describes, with its weights, in eval mode; nothing is read from disk."""
    name = ckpt["arch"]
    try:
        model = get_entry(name).builder(NetSpec(**ckpt["model_args"]))
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint of {name!r}: its model_args and state_dict do not "
                              f"describe one network ({' '.join(str(err).split())[:200]})") from None
    model.arch = name
    return model.eval()


def model_from_checkpoint(path: str | Path, expected_arch: str | None = None, *,
                          strict: bool = False) -> nn.Module:
    """Rebuild the network the checkpoint at ``path`` describes and load its weights (eval
    mode); the file is read once. ``strict``: refuse a checkpoint without a payload hash."""
    return model_from_ckpt(load_checkpoint(path, expected_arch, strict=strict))


def verify_sha256(path: Path, expected: str) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f"shipped checkpoint {path} is missing; reinstall sibnn")
    digest = file_sha256(path)
    if digest != expected:
        raise CheckpointError(f"checkpoint {path} has sha256 {digest[:12]}..., expected "
                              f"{expected[:12]}...: the file is corrupt or was replaced")


@register_model("si_resnet_w1a1", fixed={"si": True, "binary": True}, pretrained=PretrainedEntry(
    file="si_resnet_w1a1_fmnist.pt",
    sha256="8015232d2173b0efa9c7025c87be5b30d05201fe209b6e389a6d310e8177eaff",
    dataset="fmnist", input_shape=(1, 28, 28), top1=86.77, teacher_top1=90.58,
    command="sibnn-train --config configs/fmnist_si_resnet.yaml "
            "--export quant_models/pretrained/si_resnet_w1a1_fmnist.pt"))
def si_resnet_w1a1(spec: NetSpec) -> nn.Module:
    """W1A1 residual network with an SI shortcut in every block (the student)."""
    return SIResNet(spec)


@register_model("resnet_w1a1", fixed={"si": False, "binary": True})
def resnet_w1a1(spec: NetSpec) -> nn.Module:
    """The same W1A1 network without SI (ablation and hardware-overhead reference)."""
    return SIResNet(spec)


@register_model("si_resnet_fp", fixed={"si": True, "binary": False}, pretrained=PretrainedEntry(
    file="si_resnet_fp_fmnist.pt",
    sha256="0d5c51501942a6ea8e4fa1bf70789a54d913a852b0d8b14c6e5b1811677639e1",
    dataset="fmnist", input_shape=(1, 28, 28), top1=93.08,
    command="sibnn-train --config configs/fmnist_teacher.yaml "
            "--export quant_models/pretrained/si_resnet_fp_fmnist.pt"))
def si_resnet_fp(spec: NetSpec) -> nn.Module:
    """The floating-point teacher twin of si_resnet_w1a1: same blocks, same taps."""
    return SIResNet(spec)


@register_model("si_h_resnet_w1a1", fixed={"si": True, "binary": True, "si_input": "h"})
def si_h_resnet_w1a1(spec: NetSpec) -> nn.Module:
    """W1A1 network whose SI branch reads the block's multi-bit residual ``h`` instead of its
    binary input ``a``: it complements what the binary 3x3 conv cannot see."""
    return SIResNet(spec)


@register_model("si_h_resnet_w1a1_mbh", fixed={"si": True, "binary": True, "si_input": "h",
                                               "head_bits": 8, "sign_bias": True},
                defaults={"stem_bits": 8, "si_blocks": "downsample"},
                pretrained=PretrainedEntry(
                    file="si_h_resnet_w1a1_mbh_fmnist.pt",
                    sha256="2b53ff237c6f9bc7882f094611cb4064dcd64a551c822114d89a9ee3159701cf",
                    dataset="fmnist", input_shape=(1, 28, 28), top1=91.26, teacher_top1=93.08,
                    command="sibnn-train --config configs/fmnist_student.yaml "
                            "--export quant_models/pretrained/si_h_resnet_w1a1_mbh_fmnist.pt"))
def si_h_resnet_w1a1_mbh(spec: NetSpec) -> nn.Module:
    """SI on ``h``, plus a multi-bit head (``h`` pooled into an FC with 8-bit weights) and a
    learnable per-channel bias before every sign (absorbed into the thresholds); as shipped, an
    8-bit stem and SI in the downsample blocks only."""
    return SIResNet(spec)


@register_model("resnet_w1a1_mbh", fixed={"si": False, "binary": True, "head_bits": 8,
                                          "sign_bias": True})
def resnet_w1a1_mbh(spec: NetSpec) -> nn.Module:
    """si_h_resnet_w1a1_mbh without SI (8-bit head, sign bias; binary stem unless
    ``stem_bits``): the ablation's ``mbh`` row and the hardware-overhead reference of SI on
    ``h``."""
    return SIResNet(spec)


TEACHER_OF = {"si_resnet_w1a1": "si_resnet_fp", "resnet_w1a1": "si_resnet_fp",
              "si_h_resnet_w1a1": "si_resnet_fp", "si_h_resnet_w1a1_mbh": "si_resnet_fp",
              "resnet_w1a1_mbh": "si_resnet_fp"}
"""The FP teacher twin used to distil each student."""
