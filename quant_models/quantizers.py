"""Named Brevitas quantizers. Every scale in sibnn is a constant or a power of two.

Why powers of two: a float32 conv over values ``q * 2**k`` is *exact* (products and partial sums
are dyadic rationals well inside float32's 24-bit mantissa), so Brevitas' float computation equals
``2**k * (integer accumulator)`` bit for bit, whatever the summation order. That is what lets the
golden model (``flow/front/golden/``) and FINN reproduce Brevitas exactly.

Rounding semantics (the contract the thresholds reproduce):

* every multi-bit activation quantizer computes ``q = clamp(round_half_even(y / s), qmin, qmax)``
  with ``y`` the float32 output of the preceding BatchNorm, exactly as Brevitas ``ROUND`` does;
* the bipolar quantizer computes ``+1 if y >= 0 else -1`` (Brevitas ``binary_sign``);
* ``y`` is a monotone function of an integer accumulator ``acc``, so ``q = qmin + sum_k [acc >= t_k]``
  (or ``<=`` for a decreasing channel) with ``t_k`` the first integer whose float32 output reaches
  level ``k``. The golden model finds each ``t_k`` by evaluating the float32 function on every
  integer in the accumulator's range, so ties (``y / s = n + 0.5``) round exactly as Brevitas does
  them, to even. No threshold is ever computed as ``(k - 0.5) * s`` (FINN's way, which rounds ties up).
"""

from __future__ import annotations

from brevitas.core.bit_width import BitWidthImplType
from brevitas.core.quant import QuantType
from brevitas.core.restrict_val import FloatToIntImplType, RestrictValueType
from brevitas.core.scaling import ScalingImplType
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.inject import ExtendedInjector
from brevitas.quant.fixed_point import Int8WeightPerTensorFixedPoint
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from dependencies import value


class _ConstQuant(ExtendedInjector):
    """Constant scale, zero zero-point, Brevitas ``ROUND`` (half to even)."""

    bit_width_impl_type = BitWidthImplType.CONST
    scaling_impl_type = ScalingImplType.CONST
    restrict_scaling_type = RestrictValueType.FP
    zero_point_impl = ZeroZeroPoint
    float_to_int_impl_type = FloatToIntImplType.ROUND
    scaling_per_output_channel = False
    narrow_range = False
    signed = True

    @value
    def quant_type(bit_width):
        return QuantType.BINARY if bit_width == 1 else QuantType.INT


class BinaryWeightQuant(_ConstQuant, WeightQuantSolver):
    """1-bit weights in {-1, +1} with scale 1.0 (Brevitas' own default, 0.1, is not dyadic)."""

    bit_width = 1
    scaling_const = 1.0


class BipolarActQuant(_ConstQuant, ActQuantSolver):
    """1-bit activations: ``+1 if y >= 0 else -1``, scale 1.0."""

    bit_width = 1
    min_val = -1.0
    max_val = 1.0


class PixelQuant(_ConstQuant, ActQuantSolver):
    """8-bit unsigned input on the pixel grid: the model multiplies ``x = pixel / 255`` by 255 and
    this quantizer (scale 1.0) recovers the uint8 pixel exactly, so the accelerator eats raw bytes."""

    bit_width = 8
    signed = False
    min_val = 0.0
    max_val = 255.0


class SignedIntActQuant(_ConstQuant, ActQuantSolver):
    """Signed ``bit_width``-bit activation on a power-of-two grid ``[min_val, max_val]``.

    Set ``bit_width`` and ``min_val = -2**(bit_width-1) * scale`` (``max_val`` one step below
    ``-min_val``). Used for the residual stream and the SI output, which share one grid so the adds
    are integer adds.
    """


class IntWeightQuant(Int8WeightPerTensorFixedPoint):
    """Multi-bit signed weights with a per-tensor power-of-two scale (fixed point), for SI layers
    whose weight bit width is set above 1. Override ``bit_width``."""


def residual_quant_kwargs(bits: int, scale_log2: int) -> dict:
    """Keyword overrides of :class:`SignedIntActQuant` for a ``bits``-bit grid with step
    ``2**scale_log2``: integers ``[-2**(bits-1), 2**(bits-1) - 1]``."""
    if bits < 2:
        raise ValueError(f"a residual grid needs at least 2 bits, got {bits}")
    step = 2.0**scale_log2
    lo = -(2 ** (bits - 1))
    return {"bit_width": bits, "min_val": lo * step, "max_val": (-lo - 1) * step}
