"""A fused pure-PyTorch forward for sibnn's own Brevitas quantizers, for training speed.

Brevitas evaluates every quantizer as a chain of small elementwise ops (divide by the scale, add
the zero point, round, two ``where`` clamps, subtract, multiply, plus its STE wrappers). On a
CPU with one thread those chains took about half of a student training step (measured on
``si_h_resnet_w1a1_mbh``, batch 256: 1.2 s of 2.6 s; the convolutions took the rest).

:func:`fast_forward` gives each layer whose quantizer is one of ours (:mod:`.quantizers`) a
forward of one or two fused ops with the *same values and the same gradients* as Brevitas':

* :class:`~.quantizers.BinaryWeightQuant` weights: ``+1 if w >= 0 else -1`` (scale 1.0), gradient
  passed straight through (Brevitas' ``binary_sign_ste``);
* :class:`~.quantizers.BipolarActQuant`: ``+1 if x >= 0 else -1``, gradient passed where
  ``-1 <= x <= 1`` (Brevitas clamps to ``[-1, 1]`` with a non-STE clamp, then ``binary_sign_ste``);
* :class:`~.quantizers.SignedIntActQuant` / :class:`~.quantizers.PixelQuant` (constant scale ``s``,
  zero zero-point): ``clamp(round(x / s), lo, hi) * s``, rounding half to even, gradient passed
  where ``lo <= round(x / s) <= hi`` (``round_ste``, then a non-STE clamp).

Every scale in sibnn is a power of two, so ``x / s`` and ``q * s`` are exact and the values are
bit-identical to Brevitas'; ``tests/models/test_fastpath.py`` checks values *and* every gradient with
``torch.equal`` on each registered binary network, in train and eval mode. Layers with any other
quantizer (the multi-bit weights of a multi-bit head or SI, whose scale comes from weight
statistics) keep Brevitas' forward. Export and the hardware flow never see the fast path: it is
an instance-level ``forward`` override that :func:`plain_forward` (or the :func:`fast` context
manager) removes, and ``state_dict`` is unchanged.
"""

from __future__ import annotations

import collections
import math
import types

import brevitas.nn as qnn
import torch
from brevitas.core.bit_width import BitWidthImplType
from brevitas.core.scaling import ScalingImplType
from torch import nn
from torch.autograd import Function

from .quantizers import BinaryWeightQuant, BipolarActQuant, PixelQuant, SignedIntActQuant

_MARK = "_sibnn_fast"
"""Attribute set on every patched module (its value names the fast forward)."""


class _SignIdentityGrad(Function):
    """``+1 if w >= 0 else -1``; the gradient passes unchanged (binary weights)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


class _SignClippedGrad(Function):
    """``+1 if x >= 0 else -1``; the gradient passes where ``-1 <= x <= 1`` (bipolar activations)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x.abs() <= 1.0)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (inside,) = ctx.saved_tensors
        return torch.where(inside, g, 0.0)


class _IntQuant(Function):
    """``clamp(round(x / s), lo, hi) * s``; the gradient passes where ``lo <= round(x / s) <= hi``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, lo: float, hi: float) -> torch.Tensor:
        r = torch.round(x / scale)
        ctx.save_for_backward((r >= lo) & (r <= hi))
        return r.clamp_(lo, hi).mul_(scale)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, g, 0.0), None, None, None


def _injector(proxy) -> type | None:
    if proxy is None or not getattr(proxy, "is_quant_enabled", False):
        return None
    return getattr(proxy, "quant_injector", None)


def _is(inj: type | None, cls: type) -> bool:
    return isinstance(inj, type) and issubclass(inj, cls)


def _no_io_quant(m: nn.Module) -> bool:
    """A weight layer whose input, output and bias are not quantised (all of sibnn's)."""
    return all(_injector(getattr(m, name, None)) is None
               for name in ("input_quant", "output_quant", "bias_quant"))


def _pow2(v: float) -> bool:
    return v > 0 and math.frexp(v)[0] == 0.5


def _act_forward(m: qnn.QuantIdentity):
    """The fused forward for ``m``'s activation quantizer, read from its own proxy (scale, bit
    width, zero point, signedness), or None where it is not one of ours on a power-of-two grid."""
    proxy = m.act_quant
    inj = _injector(proxy)
    if inj is None or _injector(getattr(m, "input_quant", None)) is not None:
        return None
    if (getattr(inj, "scaling_impl_type", None) is not ScalingImplType.CONST
            or getattr(inj, "bit_width_impl_type", None) is not BitWidthImplType.CONST):
        return None  # a learned scale or bit width (a subclass of ours): Brevitas' forward
    with torch.no_grad():
        scale = float(proxy.scale().reshape(-1)[0])
        bits = int(proxy.bit_width())
        zero = float(proxy.zero_point().reshape(-1)[0])
    if zero != 0.0 or not _pow2(scale):
        return None
    if _is(inj, BipolarActQuant):
        return ("bipolar", _SignClippedGrad.apply) if (bits, scale) == (1, 1.0) else None
    if _is(inj, SignedIntActQuant) or _is(inj, PixelQuant):
        signed = bool(proxy.is_signed)
        lo = -(2 ** (bits - 1)) if signed else 0
        hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1

        def int_quant(x: torch.Tensor, s=scale, a=float(lo), b=float(hi)) -> torch.Tensor:
            return _IntQuant.apply(x, s, a, b)
        return f"int{bits}", int_quant
    return None


def _weight_forward(m: nn.Module):
    """The fused forward for a binary-weight conv or linear layer without bias or input/output
    quantisation, or None."""
    if m.bias is not None or not _is(_injector(m.weight_quant), BinaryWeightQuant) \
            or not _no_io_quant(m):
        return None
    if isinstance(m, qnn.QuantConv2d) and m.padding_mode == "zeros":
        return "binary_conv", types.MethodType(_binary_conv, m)
    if isinstance(m, qnn.QuantLinear):
        return "binary_linear", types.MethodType(_binary_linear, m)
    return None


# bound with types.MethodType, so that a deep copy of a patched model computes with its own weights
def _binary_conv(self: qnn.QuantConv2d, x: torch.Tensor) -> torch.Tensor:
    w = _SignIdentityGrad.apply(self.weight)
    return nn.functional.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


def _binary_linear(self: qnn.QuantLinear, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, _SignIdentityGrad.apply(self.weight))


def fast_forward(model: nn.Module) -> dict[str, int]:
    """Give every layer of ``model`` that uses one of sibnn's quantizers the fused forward
    (idempotent). Returns how many layers got each kind of fast forward."""
    counts: collections.Counter[str] = collections.Counter()
    for m in model.modules():
        if not getattr(m, _MARK, None):
            found = None
            if isinstance(m, qnn.QuantIdentity):
                found = _act_forward(m)
            elif isinstance(m, (qnn.QuantConv2d, qnn.QuantLinear)):
                found = _weight_forward(m)
            if not found:
                continue
            m.forward = found[1]
            setattr(m, _MARK, found[0])
        counts[getattr(m, _MARK)] += 1
    return dict(counts)


def plain_forward(model: nn.Module) -> None:
    """Give every patched layer of ``model`` back its Brevitas forward."""
    for m in model.modules():
        if getattr(m, _MARK, None):
            del m.forward
            delattr(m, _MARK)
