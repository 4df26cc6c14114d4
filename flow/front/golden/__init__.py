"""The golden model: the integer IR emitted as standard ONNX for stock ONNX Runtime.

Contract of ``reference.onnx`` (documented in the model's ``metadata_props`` too):

* input ``pixels``: **uint8, NHWC** ``(N, H, W, C)``, raw pixels, the same layout and type the
  FINN accelerator consumes. The trained model sees ``x = pixels / 255`` in NCHW.
* outputs:
  - ``scores``: int32 ``(N, classes)``, the exact integer class scores;
  - ``logits``: float32, ``scores`` through the model's final float ops. For sibnn networks that is
    one multiply, so ``logits == scores * scale`` with ``scale`` in ``metadata_props["sibnn.scale"]``,
    bit-equal to Brevitas' logits;
  - ``top1``: int64 ``(N,)``, ``argmax(logits)`` (first index on ties, as torch);
  - every other QONNX output (the block taps ``stem``, ``block_0``, ...) as int32 tensors on their
    quantizer grids (scales in ``metadata_props["sibnn.tap_scales"]``).
* only default-domain ONNX ops; every integer is carried in float32, exact because every
  intermediate is bounded by 2**24 (checked when the IR is built), except inside the uint8
  ``QLinearConv`` nodes that compute a conv and its threshold together
  (:func:`~flow.front.golden.fusion.qlinear_convs`), whose integer kernels accumulate exactly
  and whose requantisation is fitted and checked over the accumulator's whole proven range.

The package, by concern: :mod:`~flow.front.golden.emit` (IR -> ONNX, one emitter per IR op),
:mod:`~flow.front.golden.fusion` (the nodes it computes together),
:mod:`~flow.front.golden.staircase` (thresholds as a few float32 ops, fitted and checked) and
:mod:`~flow.front.golden.session` (the model in ONNX Runtime).
"""

from flow.front.golden.emit import build_golden
from flow.front.golden.session import (
    OPTIMIZERS_OFF,
    PRIMARY,
    GoldenModel,
    audit_optimised,
    golden_from_qonnx,
    prune_to,
)

__all__ = ["OPTIMIZERS_OFF", "PRIMARY", "GoldenModel", "audit_optimised", "build_golden",
           "golden_from_qonnx", "prune_to"]
