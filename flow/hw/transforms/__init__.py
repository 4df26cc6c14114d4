"""sibnn's own graph rewrites, as qonnx ``Transformation`` subclasses returning ``(model, changed)``.

They close the gaps FINN's default flow leaves for binary residual nets (FINDINGS.md), one module
per concern; every name is reachable from here (``from flow.hw import transforms as T``):

* :mod:`~flow.hw.transforms.interface`: what the accelerator's ports carry: uint8 pixels in
  (:class:`InsertPixelPreprocessing`), NHWC in (:class:`AbsorbInputTranspose`), integer class
  scores out, the removed float output chain recorded (:class:`StripOutputAffine`,
  :func:`apply_output_affine`).
* :mod:`~flow.hw.transforms.integer_ops`: integer arithmetic FINN can lower: bipolar tensors and
  *all* their consumers into the XNOR domain at once (:class:`ConvertBipolarToXnor`), identity
  thresholds dropped, integer constants typed.
* :mod:`~flow.hw.transforms.layout`: transposes, pads, the global sum pool and sliding windows
  on the NHWC stream as FINN's layers want them.
* :mod:`~flow.hw.transforms.finn_fixes`: around FINN's own passes: HLS MVAUs, bit widths FINN
  gets wrong, ``ReplicateStream`` for every fork.
* :mod:`~flow.hw.transforms.graph_edit`: :class:`FixedPoint` and the small edits they share.
"""

from flow.hw.transforms.finn_fixes import (
    FixXnorAccumulatorWidth,
    InferReplicateStreams,
    KeepBipolarWeights,
    PreferHlsMvau,
    pin_legal_weight_types,
    unpin_weight_types,
)
from flow.hw.transforms.graph_edit import FixedPoint
from flow.hw.transforms.integer_ops import (
    AnnotateIntegerInitializers,
    ConvertBipolarToXnor,
    RemoveIdentityMultiThreshold,
)
from flow.hw.transforms.interface import (
    INPUT_LAYOUT_KEY,
    OUTPUT_AFFINE_KEY,
    AbsorbInputTranspose,
    InsertPixelPreprocessing,
    StripOutputAffine,
    apply_output_affine,
)
from flow.hw.transforms.layout import (
    GlobalSumPoolToAccPool,
    MovePadBeforeTranspose,
    MoveTransposeBeforeMultiThreshold,
    RemoveIdentityIm2Col,
    ShareIdenticalIm2Col,
)

__all__ = [
    "INPUT_LAYOUT_KEY", "OUTPUT_AFFINE_KEY", "AbsorbInputTranspose", "AnnotateIntegerInitializers",
    "ConvertBipolarToXnor", "FixXnorAccumulatorWidth", "FixedPoint", "GlobalSumPoolToAccPool",
    "InferReplicateStreams", "InsertPixelPreprocessing", "KeepBipolarWeights",
    "MovePadBeforeTranspose", "MoveTransposeBeforeMultiThreshold", "PreferHlsMvau",
    "RemoveIdentityIm2Col", "RemoveIdentityMultiThreshold", "ShareIdenticalIm2Col",
    "StripOutputAffine", "apply_output_affine", "pin_legal_weight_types", "unpin_weight_types",
]
