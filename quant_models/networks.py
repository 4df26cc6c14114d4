"""The SI-ResNet family: one description (:class:`NetSpec`), three registered builds.

* ``si_resnet_w1a1``: the W1A1 student with an SI shortcut in every block;
* ``resnet_w1a1``: the same network without SI (ablation, hardware-overhead reference);
* ``si_resnet_fp``: the floating-point teacher twin, same blocks, same tap names.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .blocks import BinaryBlock, Flavour, Head, Stem, changes_shape

DATASET_SHAPES = {"fmnist": (1, 28, 28), "mnist": (1, 28, 28), "digits": (1, 8, 8),
                  "cifar10": (3, 32, 32)}
"""Input shapes (C, H, W) for the ``dataset`` override."""

SI_BLOCKS = ("all", "downsample")
"""Values of :attr:`NetSpec.si_blocks`."""

SI_ONLY_KEYS = ("r", "si_act_bits", "si_weight_bits", "si_input", "si_blocks")
"""The :class:`NetSpec` fields that shape the SI branch only: a network without SI is the same
network whatever they say."""


@dataclass(frozen=True)
class NetSpec:
    """Everything needed to build a network of the family (stored as ``model_args``)."""

    in_channels: int = 1
    """Input channels (1 for Fashion-MNIST, 3 for CIFAR-10)."""
    input_size: int = 28
    """Input height = width in pixels."""
    num_classes: int = 10
    """Output classes."""
    width: int = 32
    """Channels of the stem and the first stage; stage i has ``width * 2**i``."""
    depth: tuple[int, ...] = (1, 1, 2)
    """Blocks per stage. Every stage after the first starts with a stride-2 block."""
    r: int = 4
    """SI squeeze ratio: the SI branch is ``C -> C/r -> C``."""
    si: bool = True
    """Whether blocks carry the SI shortcut."""
    binary: bool = True
    """W1A1 student (True) or FP teacher (False)."""
    res_bits: int = 4
    """Bit width of the residual-stream grid shared by all adds."""
    res_scale_log2: int = -1
    """The residual grid's step is ``2**res_scale_log2``."""
    si_act_bits: int = 1
    """SI squeeze activation bits (1 = bipolar)."""
    si_weight_bits: int = 1
    """SI conv weight bits (1 = binary)."""
    si_blocks: str = "all"
    """Which blocks carry the SI shortcut: ``all`` (the paper's reading: every binary block) or
    ``downsample`` (only the blocks that change shape, where the identity shortcut, which passes
    the multi-bit ``h`` on, is replaced by a binary 1x1 conv of ``a``: the blocks where an SI
    branch reading ``h`` is the only path for ``h``'s real-valued information). In hardware each
    SI branch is two MVAUs, a fork port and an add, so ``downsample`` halves the SI's cost on a
    ``(1, 1, 2)`` network."""
    si_input: str = "a"
    """What the SI branch reads: ``a`` (the block's binary input, as the 3x3 conv) or ``h`` (the
    block's multi-bit residual input, the information ``sign`` discards)."""
    head_bits: int = 1
    """Classifier: 1 = ``sign(h)`` pooled into a binary FC; 2..8 = ``h`` pooled into an FC with
    ``head_bits``-bit weights (a multi-bit head)."""
    sign_bias: bool = False
    """A learnable per-channel bias before every sign (absorbed into the thresholds)."""
    stem_bits: int = 1
    """Weight bits of the stem's 3x3 conv, the layer that reads the 8-bit pixels: 1 = binary;
    2..8 = a multi-bit first layer, as most of the BNN literature keeps it (XNOR-Net, Bi-Real,
    ReActNet, FINN's own CNV keeps 8-bit *inputs*). It has ``9 * in_channels * width`` weights
    (288 on Fashion-MNIST), so its cost is in the multipliers, not the weights."""
    float_weights: bool = False
    """Binary activations with float weights: the first stage of the staged recipe (binary
    activations first, then binary weights, as in Real-to-Binary). Such a network is *not* W1A1:
    it trains and evaluates, but export and the hardware flow refuse it."""

    @property
    def binary_weights(self) -> bool:
        """Whether the weight layers are quantised (a W1A1 student, not a teacher or stage 1)."""
        return self.binary and not self.float_weights

    @property
    def binary_head(self) -> bool:
        """Whether the classifier's FC has +-1 weights (a binary head of a W1A1 network)."""
        return self.binary_weights and self.head_bits == 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", tuple(int(d) for d in self.depth))
        checks = [
            (self.in_channels >= 1, "in_channels must be >= 1"),
            (self.input_size >= 4, "input_size must be >= 4"),
            (self.num_classes >= 2, "num_classes must be >= 2"),
            (self.width >= 1, "width must be >= 1"),
            (len(self.depth) >= 1 and all(d >= 1 for d in self.depth),
             "depth must be a non-empty list of positive block counts"),
            (self.r >= 1, "r must be >= 1"),
            (2 <= self.res_bits <= 8, "res_bits must be in 2..8"),
            (1 <= self.si_act_bits <= 8, "si_act_bits must be in 1..8"),
            (1 <= self.si_weight_bits <= 8, "si_weight_bits must be in 1..8"),
            (self.si_input in ("a", "h"), f"si_input must be 'a' or 'h', got {self.si_input!r}"),
            (self.si_blocks in SI_BLOCKS,
             f"si_blocks must be one of {', '.join(SI_BLOCKS)}, got {self.si_blocks!r}"),
            (1 <= self.head_bits <= 8, "head_bits must be in 1..8"),
            (1 <= self.stem_bits <= 8, "stem_bits must be in 1..8"),
            (self.binary or not self.float_weights,
             "float_weights only applies to a binary network (the FP teacher is all float)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def carries_si(self, c_in: int, c_out: int, stride: int) -> bool:
        """Whether a block of this shape gets the SI shortcut (:attr:`si`, :attr:`si_blocks`)."""
        if not self.si:
            return False
        return self.si_blocks == "all" or changes_shape(c_in, c_out, stride)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)

    def final_size(self) -> int:
        s = self.input_size
        for _ in self.depth[1:]:
            s = (s - 1) // 2 + 1
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depth"] = list(self.depth)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class SIResNet(nn.Module):
    """A binary (or FP) residual network. ``forward`` returns logits; ``forward_taps`` also
    returns every block output under its tap name (``stem``, ``block_0``, ...)."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        f = Flavour(binary=spec.binary, res_bits=spec.res_bits,
                    res_scale_log2=spec.res_scale_log2, si_act_bits=spec.si_act_bits,
                    si_weight_bits=spec.si_weight_bits, float_weights=spec.float_weights,
                    sign_bias=spec.sign_bias)
        self.stem = Stem(f, spec.in_channels, spec.width, spec.stem_bits)
        blocks = []
        c = spec.width
        for stage, n in enumerate(spec.depth):
            c_out = spec.width * 2**stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BinaryBlock(f, c, c_out, stride,
                                          spec.r if spec.carries_si(c, c_out, stride) else None,
                                          spec.si_input))
                c = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(f, c, spec.num_classes, spec.final_size() ** 2, spec.head_bits)

    @property
    def tap_names(self) -> list[str]:
        return ["stem"] + [f"block_{i}" for i in range(len(self.blocks))]

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, OrderedDict]:
        taps: OrderedDict[str, torch.Tensor] = OrderedDict()
        h = self.stem(x)
        taps["stem"] = h
        for i, block in enumerate(self.blocks):
            h = block(h)
            taps[f"block_{i}"] = h
        return self.head(h), taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[0]


class TapOutputs(nn.Module):
    """Wrap a network so that ``forward`` computes its taps: ``(logits, *taps)`` (``flat``, for
    export with taps) or ``(logits, {tap: tensor})`` (for block-wise distillation, so DDP's hooks
    see the pass that computes the taps)."""

    def __init__(self, net: SIResNet, flat: bool = True) -> None:
        super().__init__()
        self.net = net
        self.flat = flat

    def forward(self, x: torch.Tensor):
        logits, taps = self.net.forward_taps(x)
        return (logits, *taps.values()) if self.flat else (logits, taps)
