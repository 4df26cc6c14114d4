"""The accelerator's interface: what its ports carry.

* :class:`InsertPixelPreprocessing`: the accelerator eats uint8 pixels (finn-examples' bnn-pynq
  ``ToTensor``: a ``Div`` by 255 in front, input annotated ``UINT8``); streamlining absorbs it.
* :class:`AbsorbInputTranspose`: the input is read NHWC (recorded under
  :data:`INPUT_LAYOUT_KEY`), so no transpose stays outside the dataflow partition.
* :class:`StripOutputAffine`: a trailing chain of scalar ``Mul/Div/Add/Sub`` after the last
  integer tensor (a logit scale, Brevitas' ``TensorNorm``) is removed and *recorded* in the model
  metadata (:data:`OUTPUT_AFFINE_KEY`), so the accelerator outputs integer class scores.
  ``logits = f(scores)`` with the recorded chain (:func:`apply_output_affine`); a positive
  overall scale keeps the arg-max.
"""

from __future__ import annotations

import json

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

from flow.hw.transforms.graph_edit import const, new_tensor, perm, scalar_const


class InsertPixelPreprocessing(Transformation):
    """Put ``x / 255`` in front of the graph and make its input ``UINT8`` pixels.

    The float model's input is ``pixel / 255`` (``ToTensor``); ``Div`` is the same float32 op, so
    the preprocessed graph equals the original on every uint8 image bit for bit. Idempotent: a
    graph whose input is already ``UINT8`` is left alone.
    """

    def apply(self, model: ModelWrapper):
        inp = model.graph.input[0].name
        if model.get_tensor_datatype(inp) == DataType["UINT8"]:
            return model, False
        div_out = new_tensor(model, model.get_tensor_shape(inp))
        for n in model.graph.node:
            for k, t in enumerate(n.input):
                if t == inp:
                    n.input[k] = div_out
        div = helper.make_node("Div", [inp, const(model, 255.0)], [div_out],
                               name="Preprocess_Div255")
        model.graph.node.insert(0, div)
        model.set_tensor_datatype(inp, DataType["UINT8"])
        return model.transform(InferShapes()), False


INPUT_LAYOUT_KEY = "sibnn_input_layout"
"""Model metadata key: ``NHWC`` once the input transpose has been folded into the interface."""


class AbsorbInputTranspose(Transformation):
    """A graph input consumed only by ``Transpose(NCHW->NHWC)``: make the input NHWC instead.

    The accelerator then reads NHWC pixels (the order the camera/DMA delivers them) and no
    transpose stays outside the dataflow partition. Recorded under :data:`INPUT_LAYOUT_KEY`.
    """

    def apply(self, model: ModelWrapper):
        inp = model.graph.input[0]
        cons = model.find_consumers(inp.name) or []
        if len(cons) != 1 or cons[0].op_type != "Transpose" or perm(cons[0]) != [0, 2, 3, 1]:
            return model, False
        tr = cons[0]
        dt = model.get_tensor_datatype(inp.name)
        new_shape = model.get_tensor_shape(tr.output[0])
        for c in model.find_consumers(tr.output[0]) or []:
            for k, t in enumerate(c.input):
                if t == tr.output[0]:
                    c.input[k] = inp.name
        model.graph.node.remove(tr)
        model.set_tensor_shape(inp.name, new_shape)
        model.set_tensor_datatype(inp.name, dt)
        model.set_tensor_layout(inp.name, ["N", "H", "W", "C"])
        model.set_metadata_prop(INPUT_LAYOUT_KEY, "NHWC")
        return model.transform(InferShapes()), True


OUTPUT_AFFINE_KEY = "sibnn_output_affine"
"""Model metadata key holding the JSON list of removed output ops (op, constant, operand side)."""

_AFFINE_OPS = ("Mul", "Div", "Add", "Sub")


class StripOutputAffine(Transformation):
    """Remove the trailing scalar ``Mul/Div/Add/Sub`` chain in front of the graph output.

    The removed ops are appended (outermost last) to the JSON list under
    :data:`OUTPUT_AFFINE_KEY` in the model metadata, so ``logits`` can be recomputed from the
    integer scores with the same float32 ops. Stops at the first op that is not such a chain link.
    """

    def apply(self, model: ModelWrapper):
        out = model.graph.output[0].name
        prod = model.find_producer(out)
        if prod is None or prod.op_type not in _AFFINE_OPS:
            return model, False
        consts = [scalar_const(model, t) for t in prod.input]
        if sum(c is not None for c in consts) != 1:
            return model, False
        side = 1 if consts[1] is not None else 0
        if prod.op_type in ("Div", "Sub") and side == 0:
            return model, False  # c / x or c - x: not an affine map of x we record
        data_in = prod.input[1 - side]
        if len(model.find_consumers(data_in)) != 1 or model.get_initializer(data_in) is not None:
            return model, False
        # rewire: the producer's data input becomes the graph output
        recorded = json.loads(model.get_metadata_prop(OUTPUT_AFFINE_KEY) or "[]")
        recorded.insert(0, {"op": prod.op_type, "const": consts[side], "node": prod.name})
        model.set_metadata_prop(OUTPUT_AFFINE_KEY, json.dumps(recorded))
        upstream = model.find_producer(data_in)
        upstream.output[list(upstream.output).index(data_in)] = out
        model.graph.node.remove(prod)
        return model, True


def apply_output_affine(scores: np.ndarray, recorded: list[dict]) -> np.ndarray:
    """Recompute the float outputs from the integer scores with the recorded float32 ops."""
    y = np.asarray(scores, dtype=np.float32)
    for step in recorded:
        c = np.float32(step["const"])
        y = {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}[step["op"]](y, c)
        y = y.astype(np.float32)
    return y
