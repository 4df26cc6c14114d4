"""Building blocks shared by every network in the zoo, in a binary (W1A1) and an FP flavour.

One :class:`Flavour` hands out the layers; the blocks are written once and built twice, so a
student and its teacher have the same block boundaries and tap names by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import brevitas.nn as qnn
import torch
from torch import nn

from .quantizers import (
    BinaryWeightQuant,
    BipolarActQuant,
    IntWeightQuant,
    PixelQuant,
    SignedIntActQuant,
    residual_quant_kwargs,
)

PAD_VALUE = -1.0
"""Bipolar tensors are padded with -1, a value of their own alphabet. In FINN's XNOR domain
``(x + 1) / 2`` that is 0, so hardware zero-padding is exactly this padding (no ``pad_val`` trap)."""


@dataclass(frozen=True)
class Flavour:
    """Layer factory. ``binary=True`` gives the W1A1 student's layers, ``False`` the FP teacher's.

    Attributes:
        binary: quantised student (True) or floating-point teacher (False).
        res_bits: bit width of the residual-stream grid (student only).
        res_scale_log2: the residual grid's step is ``2**res_scale_log2``.
        si_act_bits: bit width of the SI squeeze activation (1 = bipolar).
        si_weight_bits: bit width of the SI convolutions' weights (1 = binary).
        float_weights: binary activations but float weight layers (stage 1 of the staged recipe).
        sign_bias: a learnable per-channel bias before every sign (absorbed into thresholds).
    """

    binary: bool
    res_bits: int = 4
    res_scale_log2: int = -1
    si_act_bits: int = 1
    si_weight_bits: int = 1
    float_weights: bool = False
    sign_bias: bool = False

    @property
    def binary_weights(self) -> bool:
        """Same rule as :attr:`NetSpec.binary_weights`: quantised weight layers."""
        return self.binary and not self.float_weights

    # -- activations ---------------------------------------------------------------------------
    def sign(self, channels: int | None = None) -> nn.Module:
        """The 1-bit activation feeding every binary conv (FP twin: hardtanh, its relaxation).
        With :attr:`sign_bias` and ``channels``, a learnable per-channel bias comes first."""
        act = (qnn.QuantIdentity(act_quant=BipolarActQuant, return_quant_tensor=False)
               if self.binary else nn.Hardtanh())
        if self.sign_bias and channels:
            return BiasedSign(channels, act)
        return act

    def residual_quant(self) -> nn.Module:
        """Quantiser onto the shared residual grid (FP twin: identity)."""
        if self.binary:
            return qnn.QuantIdentity(
                act_quant=SignedIntActQuant,
                return_quant_tensor=False,
                **residual_quant_kwargs(self.res_bits, self.res_scale_log2),
            )
        return nn.Identity()

    def si_act(self) -> nn.Module:
        """The SI squeeze activation: bipolar for 1 bit, a signed grid for more."""
        if not self.binary:
            return nn.Hardtanh()
        if self.si_act_bits == 1:
            return self.sign()
        return qnn.QuantIdentity(
            act_quant=SignedIntActQuant,
            return_quant_tensor=False,
            **residual_quant_kwargs(self.si_act_bits, -(self.si_act_bits - 2)),
        )

    def pixel_in(self) -> nn.Module:
        """Input stage: ``x = pixel / 255`` back to the uint8 pixel grid (FP twin: identity)."""
        return PixelInput() if self.binary else nn.Identity()

    # -- weight layers -------------------------------------------------------------------------
    def conv(self, c_in: int, c_out: int, k: int, stride: int = 1, weight_bits: int = 1,
             padding: int = 0) -> nn.Module:
        if not self.binary_weights:
            return nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False)
        return qnn.QuantConv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False,
                               **_weight_quant(weight_bits))

    def linear(self, c_in: int, c_out: int, weight_bits: int = 1) -> nn.Module:
        if not self.binary_weights:
            return nn.Linear(c_in, c_out, bias=False)
        return qnn.QuantLinear(c_in, c_out, bias=False, **_weight_quant(weight_bits))


def _weight_quant(bits: int) -> dict:
    if bits == 1:
        return {"weight_quant": BinaryWeightQuant}
    return {"weight_quant": IntWeightQuant, "weight_bit_width": bits}


class PixelInput(nn.Module):
    """``x`` in [0, 1] (pixel / 255) -> the uint8 pixel grid, scale 1 (8-bit unsigned)."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = qnn.QuantIdentity(act_quant=PixelQuant, return_quant_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(x * 255.0)


class BiasedSign(nn.Module):
    """``act(x + b)`` with a learnable per-channel ``b`` (initialised to 0, so a network without
    it is the same function). In the integer flow the add lands in the float function that the
    sign's thresholds are read from, so it costs no hardware: each threshold moves by ``-b``."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias if x.dim() == 4 else self.bias.reshape(1, -1)
        return self.act(x + b)


class BipolarPad(nn.Module):
    """Pad a bipolar tensor by ``amount`` pixels with :data:`PAD_VALUE` (-1)."""

    def __init__(self, amount: int) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.amount
        return nn.functional.pad(x, (a, a, a, a), mode="constant", value=PAD_VALUE)


class Stem(nn.Module):
    """pixels -> 3x3 conv with ``weight_bits``-bit weights (binary by default; zero padding is
    pixel value 0) -> BN -> residual grid."""

    def __init__(self, f: Flavour, c_in: int, c_out: int, weight_bits: int = 1) -> None:
        super().__init__()
        self.input = f.pixel_in()
        self.conv = f.conv(c_in, c_out, 3, padding=1, weight_bits=weight_bits)
        self.bn = nn.BatchNorm2d(c_out)
        self.quant = f.residual_quant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.bn(self.conv(self.input(x))))


class SIShortcut(nn.Module):
    """Squeeze-and-Interaction shortcut (our reading of Ye, Zhang & Wang, arXiv 2007.05223).

    The paper adds a light branch to every binary block that learns the residual between the binary
    block and its floating-point twin. Its full text is not available to us; what we build is:

    * **squeeze**: a 1x1 conv ``C_in -> C_out / r`` (stride of the block) on the block's *binary*
      input ``a`` (``si_input="a"``) or on its multi-bit residual input ``h`` (``si_input="h"``:
      the real-valued information that ``sign`` throws away and the 3x3 conv never sees), BN,
      then a ``si_act_bits`` activation (bipolar by default);
    * **interaction**: a 1x1 conv ``C_out / r -> C_out`` on that, BN, quantised onto the residual
      grid, so its output is *added* to the block output as an integer add.

    Both convs have ``si_weight_bits`` weights (binary by default). Extra parameters per block:
    ``C_in*C_out/r + C_out**2/r``, about ``2/(9r)`` of a 3x3 block (5.6% at r = 4). In FINN it is
    a DuplicateStreams fork, two MVAUs with thresholds and an ElementwiseAdd.
    """

    def __init__(self, f: Flavour, c_in: int, c_out: int, stride: int, r: int,
                 reads: str = "a") -> None:
        super().__init__()
        self.reads = reads
        mid = max(1, c_out // r)
        self.squeeze = f.conv(c_in, mid, 1, stride=stride, weight_bits=f.si_weight_bits)
        self.squeeze_bn = nn.BatchNorm2d(mid)
        self.squeeze_act = f.si_act()
        self.interact = f.conv(mid, c_out, 1, weight_bits=f.si_weight_bits)
        self.interact_bn = nn.BatchNorm2d(c_out)
        self.quant = f.residual_quant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is the block's ``a`` or ``h``, as :attr:`reads` says."""
        z = self.squeeze_act(self.squeeze_bn(self.squeeze(x)))
        return self.quant(self.interact_bn(self.interact(z)))


def changes_shape(c_in: int, c_out: int, stride: int) -> bool:
    """Whether a block's shortcut must be a conv (stride or width changes) instead of the
    identity that carries ``h`` on."""
    return stride != 1 or c_in != c_out


class BinaryBlock(nn.Module):
    """One binary residual block: ``h -> Q(h' )`` with

    ``a = sign(h [+ b])``; ``y = Q(BN(conv3x3(pad_-1(a))))``; ``s = h`` (or ``Q(BN(conv1x1_s2(a)))``
    when the block changes shape); ``h' = Q(y + s [+ SI(a or h)])``.

    Every ``Q`` is the same residual grid, so the adds are integer adds and the final ``Q`` is a
    saturating clamp. Convs are binary (1-bit weights), their inputs bipolar (1-bit activations).
    """

    def __init__(self, f: Flavour, c_in: int, c_out: int, stride: int, si_ratio: int | None,
                 si_input: str = "a") -> None:
        super().__init__()
        self.act = f.sign(c_in)
        self.pad = BipolarPad(1)
        self.conv = f.conv(c_in, c_out, 3, stride=stride)
        self.bn = nn.BatchNorm2d(c_out)
        self.quant = f.residual_quant()
        self.downsample = changes_shape(c_in, c_out, stride)
        if self.downsample:
            self.short_conv = f.conv(c_in, c_out, 1, stride=stride)
            self.short_bn = nn.BatchNorm2d(c_out)
            self.short_quant = f.residual_quant()
        self.si = SIShortcut(f, c_in, c_out, stride, si_ratio, si_input) if si_ratio else None
        self.out_quant = f.residual_quant()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.act(h)
        out = self.quant(self.bn(self.conv(self.pad(a))))
        if self.downsample:
            out = out + self.short_quant(self.short_bn(self.short_conv(a)))
        else:
            out = out + h
        if self.si is not None:
            out = out + self.si(h if self.si.reads == "h" else a)
        return self.out_quant(out)


class Head(nn.Module):
    """``sign(h)`` -> global *sum* pool -> binary FC -> ``* logit_scale`` (``head_bits = 1``), or
    with a multi-bit head (``head_bits > 1``) the residual ``h`` itself -> sum pool -> FC with
    ``head_bits``-bit weights -> ``* logit_scale``: the classifier sees the multi-bit features.

    A sum pool (not a mean) keeps the pooled values integers for any spatial size (7x7 = 49 is not
    a power of two), so the logits are exactly ``integer scores * logit_scale``. The FP twin of a
    multi-bit head pools ``h`` as it is (no hardtanh).
    """

    def __init__(self, f: Flavour, c_in: int, num_classes: int, pooled_pixels: int,
                 head_bits: int = 1) -> None:
        super().__init__()
        self.act = f.sign(c_in) if head_bits == 1 else nn.Identity()
        self.fc = f.linear(c_in, num_classes, weight_bits=head_bits)
        binary_fc = f.binary_weights and head_bits == 1
        init = 1.0 / (pooled_pixels * c_in**0.5) if binary_fc else 1.0 / pooled_pixels
        self.logit_scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pooled = self.act(h).sum(dim=(2, 3))
        return self.fc(pooled) * self.logit_scale
