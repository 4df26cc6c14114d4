"""sibnn's own graph rewrites, as qonnx ``Transformation`` subclasses returning ``(model, changed)``.

They close the gaps FINN's default flow leaves for binary residual nets (FINDINGS.md):

* :class:`InsertPixelPreprocessing`: the accelerator eats uint8 pixels (finn-examples' bnn-pynq
  ``ToTensor``: a ``Div`` by 255 in front, input annotated ``UINT8``); streamlining absorbs it.
* :class:`StripOutputAffine`: a trailing chain of scalar ``Mul/Div/Add/Sub`` after the last
  integer tensor (a logit scale, Brevitas' ``TensorNorm``) is removed and *recorded* in the model
  metadata, so the accelerator outputs integer class scores. ``logits = f(scores)`` with the
  recorded chain; a positive overall scale keeps the arg-max.
* :class:`ConvertBipolarToXnor`: FINN's ``ConvertBipolarMatMulToXnorPopcount`` follows one path up
  from each MatMul and fails on a *fork* of a bipolar tensor. This version starts from each bipolar
  ``MultiThreshold`` and rewrites *all* its consumers at once: the threshold emits {0, 1}; ``Pad``
  by -1 becomes ``Pad`` by 0 (the same number in the XNOR domain); every bipolar-weight ``MatMul``
  becomes ``XnorPopcountMatMul`` with its ``2p - K`` correction; a sum reduction gets
  ``2s - N``; any other consumer gets ``2b - 1`` back. Every rewrite is exact.
* :class:`GlobalSumPoolToAccPool`: ``ReduceSum`` over the spatial axes (our global sum pool) becomes
  FINN's ``GlobalAccPool`` on the NHWC stream.
* :class:`RemoveIdentityMultiThreshold`: a threshold on an integer tensor that maps every integer
  to itself (the 8-bit pixel quantizer after ``/255 * 255``) is dropped.
* :class:`AnnotateIntegerInitializers`: integer-valued constants of ``Mul``/``Add`` get the
  smallest integer ``DataType``, so the integer adds and scales after streamlining become integer
  ``ElementwiseAdd``/``ElementwiseMul`` layers instead of float ones.
* :class:`InferReplicateStreams`: every fork of a stream becomes finn-plus' ``ReplicateStream``
  (the successor of ``DuplicateStreams``, which finn-plus deprecates), before FINN's
  ``step_convert_to_hw`` would insert ``DuplicateStreams`` for it.
"""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

from flow.hw.finn_env import HW_DOMAIN


class FixedPoint(Transformation):
    """Apply each transformation exhaustively, in order; report whether any changed the graph.

    The semantics of qonnx' ``ComposedTransformation`` (and so of FINN's ``StreamlinePlus``, which
    is a tree of them, reached to a fixed point by ``ModelWrapper.transform``), but the tidy-up
    (cleanup, unique names, shape and datatype inference) runs only after a transformation that
    changed something. qonnx runs it after every one, which made streamlining our nets cost minutes.
    """

    def __init__(self, transformations: list[Transformation]):
        super().__init__()
        self.transformations = list(transformations)

    @classmethod
    def from_composed(cls, t: Transformation) -> Transformation:
        """Convert a (nested) ``ComposedTransformation`` into the same tree of FixedPoints."""
        from qonnx.transformation.composed import ComposedTransformation

        if isinstance(t, ComposedTransformation):
            return cls([cls.from_composed(x) for x in t.transformations])
        return t

    def apply(self, model: ModelWrapper):
        from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
        from qonnx.transformation.remove import RemoveIdentityOps

        modified = False
        for t in self.transformations:
            changed_here = False
            while True:
                model, changed = t.apply(model)
                if not changed:
                    break
                changed_here = True
            if changed_here:
                modified = True
                model.cleanup()
                for tidy in (RemoveIdentityOps(), GiveUniqueNodeNames(),
                             GiveReadableTensorNames(), InferShapes(), InferDataTypes()):
                    model = model.transform(tidy)
        return model, modified


OUTPUT_AFFINE_KEY = "sibnn_output_affine"
"""Model metadata key holding the JSON list of removed output ops (op, constant, operand side)."""

_AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
_TRANSPARENT = ("Transpose", "Reshape", "Flatten", "Im2Col", "MaxPool", "MaxPoolNHWC")
"""Ops through which a bipolar value stays bipolar (and binary stays binary): pure data movement
or a max (monotone, so max commutes with ``b -> 2b - 1``)."""


def _new_tensor(model: ModelWrapper, shape) -> str:
    name = model.make_new_valueinfo_name()
    model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    return name


def _const(model: ModelWrapper, value, dtype: DataType | None = None) -> str:
    arr = np.asarray(value, dtype=np.float32)
    name = model.make_new_valueinfo_name()
    model.set_initializer(name, arr)
    if dtype is not None:
        model.set_tensor_datatype(name, dtype)
    return name


def _scalar_const(model: ModelWrapper, tensor: str) -> float | None:
    init = model.get_initializer(tensor)
    if init is None or init.size != 1:
        return None
    return float(np.asarray(init).reshape(-1)[0])


def _bypass(model: ModelWrapper, node, replacement: str) -> bool:
    """Feed ``node``'s consumers from ``replacement`` and remove ``node`` (not for graph outputs).
    Returns whether it was removed."""
    if node.output[0] in [o.name for o in model.graph.output]:
        return False
    for c in model.find_consumers(node.output[0]) or []:
        for k, t in enumerate(c.input):
            if t == node.output[0]:
                c.input[k] = replacement
    model.graph.node.remove(node)
    return True


def _insert_after(model: ModelWrapper, anchor, new_nodes) -> None:
    """Insert ``new_nodes`` right after node ``anchor`` (keeps the graph topologically sorted)."""
    idx = list(model.graph.node).index(anchor)
    for k, n in enumerate(new_nodes):
        model.graph.node.insert(idx + 1 + k, n)


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
        div_out = _new_tensor(model, model.get_tensor_shape(inp))
        for n in model.graph.node:
            for k, t in enumerate(n.input):
                if t == inp:
                    n.input[k] = div_out
        div = helper.make_node("Div", [inp, _const(model, 255.0)], [div_out],
                               name="Preprocess_Div255")
        model.graph.node.insert(0, div)
        model.set_tensor_datatype(inp, DataType["UINT8"])
        return model.transform(InferShapes()), False


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
        consts = [_scalar_const(model, t) for t in prod.input]
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


class RemoveIdentityMultiThreshold(Transformation):
    """Drop a ``MultiThreshold`` whose input is an integer type and that maps each integer of that
    type to itself (out_scale 1, out_bias = input min, one threshold per level in (k-1, k])."""

    def apply(self, model: ModelWrapper):
        for n in model.graph.node:
            if n.op_type != "MultiThreshold":
                continue
            idt = model.get_tensor_datatype(n.input[0])
            if not idt.is_integer() or idt.bitwidth() > 16:
                continue
            inst = getCustomOp(n)
            if inst.get_nodeattr("out_scale") != 1.0 or inst.get_nodeattr("out_bias") != idt.min():
                continue
            if DataType[inst.get_nodeattr("out_dtype")] != idt:
                continue
            thr = model.get_initializer(n.input[1])
            levels = np.arange(idt.min() + 1, idt.max() + 1, dtype=np.float64)
            if thr is None or thr.shape[-1] != levels.size:
                continue
            ok = np.all((thr > levels - 1) & (thr <= levels))
            if not ok:
                continue
            inp, out = n.input[0], n.output[0]
            for c in model.find_consumers(out) or []:
                for k, t in enumerate(c.input):
                    if t == out:
                        c.input[k] = inp
            if out == model.graph.output[0].name:
                continue
            model.graph.node.remove(n)
            return model.transform(InferDataTypes()), True
        return model, False


class ConvertBipolarToXnor(Transformation):
    """Rewrite every bipolar ``MultiThreshold`` and *all* its consumers into the XNOR domain.

    For ``b = (x + 1) / 2`` in {0, 1}: ``x . w = 2 popcount(xnor(b, w_b)) - K``, ``Pad(x, -1) =
    2 Pad(b, 0) - 1``, ``sum_N x = 2 sum_N b - N``. Runs after conv lowering. Returns after one
    threshold; compose it to a fixed point.
    """

    def apply(self, model: ModelWrapper):
        for mt in model.graph.node:
            if mt.op_type != "MultiThreshold":
                continue
            inst = getCustomOp(mt)
            if inst.get_nodeattr("out_dtype") != "BIPOLAR":
                continue
            if inst.get_nodeattr("out_scale") != 2.0 or inst.get_nodeattr("out_bias") != -1.0:
                continue
            self._convert(model, mt, inst)
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
            return model, True
        return model, False

    def _convert(self, model: ModelWrapper, mt, inst) -> None:
        inst.set_nodeattr("out_dtype", "BINARY")
        inst.set_nodeattr("out_scale", 1.0)
        inst.set_nodeattr("out_bias", 0.0)
        frontier = [mt.output[0]]
        while frontier:
            t = frontier.pop()
            model.set_tensor_datatype(t, DataType["BINARY"])
            if t in [o.name for o in model.graph.output]:
                self._decode_output(model, t)
                continue
            for c in list(model.find_consumers(t) or []):
                frontier.extend(self._rewrite_consumer(model, c, t))

    def _rewrite_consumer(self, model: ModelWrapper, c, t: str) -> list[str]:
        """Rewrite consumer ``c`` of binary tensor ``t``; return tensors that stay binary."""
        if c.op_type in _TRANSPARENT and c.input[0] == t:
            return [c.output[0]]
        if c.op_type == "Pad" and c.input[0] == t and self._pad_value(model, c) == -1.0:
            mode = get_by_name(c.attribute, "mode")
            if mode is None or mode.s.decode() == "constant":
                c.input[2] = _const(model, 0.0)
                return [c.output[0]]
        if c.op_type == "MatMul" and c.input[0] == t and \
                model.get_tensor_datatype(c.input[1]) == DataType["BIPOLAR"] and \
                model.get_initializer(c.input[1]) is not None:
            self._to_xnor(model, c)
            return []
        if c.op_type == "ReduceSum" and c.input[0] == t:
            self._decode_reduce_sum(model, c)
            return []
        self._decode_edge(model, c, t)
        return []

    @staticmethod
    def _pad_value(model: ModelWrapper, pad) -> float | None:
        if len(pad.input) < 3 or pad.input[2] == "":
            return 0.0
        return _scalar_const(model, pad.input[2])

    @staticmethod
    def _to_xnor(model: ModelWrapper, mm) -> None:
        w = model.get_initializer(mm.input[1])
        k = w.shape[0]
        model.set_initializer(mm.input[1], (w + 1) / 2)
        model.set_tensor_datatype(mm.input[1], DataType["BINARY"])
        out = mm.output[0]
        pop = _new_tensor(model, model.get_tensor_shape(out))
        mm.op_type = "XnorPopcountMatMul"
        mm.domain = "qonnx.custom_op.general"
        mm.output[0] = pop
        model.set_tensor_datatype(pop, DataType["UINT32"])
        dbl = _new_tensor(model, model.get_tensor_shape(out))
        _insert_after(model, mm, [
            helper.make_node("Mul", [pop, _const(model, [2.0])], [dbl]),
            helper.make_node("Add", [dbl, _const(model, [-float(k)])], [out]),
        ])

    @staticmethod
    def _decode_reduce_sum(model: ModelWrapper, rs) -> None:
        shape = model.get_tensor_shape(rs.input[0])
        axes = model.get_initializer(rs.input[1]) if len(rs.input) > 1 else None
        axes = list(range(len(shape))) if axes is None else [int(a) % len(shape) for a in axes]
        n = int(np.prod([shape[a] for a in axes]))
        out = rs.output[0]
        s = _new_tensor(model, model.get_tensor_shape(out))
        dbl = _new_tensor(model, model.get_tensor_shape(out))
        rs.output[0] = s
        _insert_after(model, rs, [
            helper.make_node("Mul", [s, _const(model, [2.0])], [dbl]),
            helper.make_node("Add", [dbl, _const(model, [-float(n)])], [out]),
        ])

    @staticmethod
    def _decode_edge(model: ModelWrapper, c, t: str) -> None:
        shape = model.get_tensor_shape(t)
        dbl, bip = _new_tensor(model, shape), _new_tensor(model, shape)
        prod = model.find_producer(t)
        nodes = [helper.make_node("Mul", [t, _const(model, [2.0])], [dbl]),
                 helper.make_node("Add", [dbl, _const(model, [-1.0])], [bip])]
        _insert_after(model, prod, nodes)
        for k, x in enumerate(c.input):
            if x == t:
                c.input[k] = bip
        model.set_tensor_datatype(bip, DataType["BIPOLAR"])

    @staticmethod
    def _decode_output(model: ModelWrapper, t: str) -> None:
        raise NotImplementedError("a bipolar graph output in the XNOR domain")


class GlobalSumPoolToAccPool(Transformation):
    """``ReduceSum`` over H, W of a 4D tensor (global sum pool) -> FINN ``GlobalAccPool``.

    Matches ``Transpose(perm=[0,3,1,2])`` (NHWC -> NCHW) followed by ``ReduceSum(axes=[2,3])``, the
    form it takes after conv lowering, and pools the NHWC stream directly; the output is reshaped
    to ``[N, C]`` when ``keepdims=0``. The input must have an integer type.
    """

    def apply(self, model: ModelWrapper):
        for rs in model.graph.node:
            if rs.op_type != "ReduceSum" or len(rs.input) < 2:
                continue
            axes = model.get_initializer(rs.input[1])
            shape = model.get_tensor_shape(rs.input[0])
            if axes is None or shape is None or len(shape) != 4:
                continue
            if sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
                continue
            tr = model.find_producer(rs.input[0])
            if tr is None or tr.op_type != "Transpose" or \
                    list(get_by_name(tr.attribute, "perm").ints) != [0, 3, 1, 2]:
                continue
            if len(model.find_consumers(tr.output[0])) != 1:
                continue
            nhwc = tr.input[0]
            idt = model.get_tensor_datatype(nhwc)
            if not idt.is_integer():
                continue
            n, h, w, c = model.get_tensor_shape(nhwc)
            keep = get_by_name(rs.attribute, "keepdims")
            keepdims = 1 if keep is None else keep.i
            out = rs.output[0]
            pooled = _new_tensor(model, [n, 1, 1, c])
            pool = helper.make_node("GlobalAccPool", [nhwc], [pooled],
                                    domain=HW_DOMAIN, backend="fpgadataflow",
                                    NumChannels=c, PE=1, inputDataType=idt.name,
                                    numInputVectors=[n, h, w], name=f"GlobalAccPool_{rs.name}")
            shape_out = [n, c] if not keepdims else [n, c, 1, 1]
            if keepdims:
                tail = helper.make_node("Transpose", [pooled], [out], perm=[0, 3, 1, 2])
            else:
                tail = helper.make_node("Reshape", [pooled, _const(model, np.array(shape_out, dtype=np.int64))], [out])
                model.set_initializer(tail.input[1], np.array(shape_out, dtype=np.int64))
            idx = list(model.graph.node).index(rs)
            model.graph.node.insert(idx, pool)
            model.graph.node.insert(idx + 1, tail)
            model.graph.node.remove(rs)
            model.graph.node.remove(tr)
            model.set_tensor_layout(pooled, ["N", "H", "W", "C"])
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
            return model, True
        return model, False


class AnnotateIntegerInitializers(Transformation):
    """Give integer-valued constant operands of ``Mul``/``Add``/``Sub`` the smallest integer type."""

    def apply(self, model: ModelWrapper):
        changed = False
        for n in model.graph.node:
            if n.op_type not in ("Mul", "Add", "Sub"):
                continue
            for t in n.input:
                init = model.get_initializer(t)
                if init is None or model.get_tensor_datatype(t) != DataType["FLOAT32"]:
                    continue
                if init.size == 0 or not np.all(np.isfinite(init)) or \
                        not np.array_equal(init, np.round(init)):
                    continue
                lo, hi = float(init.min()), float(init.max())
                dt = DataType.get_smallest_possible(lo if abs(lo) > abs(hi) else hi)
                if lo < 0 and not dt.signed():
                    dt = DataType.get_smallest_possible(-max(abs(lo), abs(hi)) - 1)
                if not (dt.allowed(lo) and dt.allowed(hi)):
                    continue
                model.set_tensor_datatype(t, dt)
                changed = True
        if changed:
            model = model.transform(InferDataTypes())
        return model, False


def _perm(node) -> list[int] | None:
    attr = get_by_name(node.attribute, "perm")
    return list(attr.ints) if attr is not None else None


class MovePadBeforeTranspose(Transformation):
    """``Transpose(NHWC->NCHW) -> Pad(H, W only)`` becomes ``Pad(NHWC, axes=[1, 2]) -> Transpose``.

    FINN's ``FMPadding`` wants an NHWC ``Pad`` with ``axes=[1, 2]``; conv lowering leaves our
    explicit ``Pad`` in NCHW between two transposes, which then cancel.
    """

    def apply(self, model: ModelWrapper):
        for pad in model.graph.node:
            if pad.op_type != "Pad" or len(pad.input) < 2:
                continue
            tr = model.find_producer(pad.input[0])
            if tr is None or tr.op_type != "Transpose" or _perm(tr) != [0, 3, 1, 2]:
                continue
            pads = model.get_initializer(pad.input[1])
            if pads is None or len(pads) != 8 or (len(pad.input) > 3 and pad.input[3]):
                continue
            pads = [int(p) for p in pads]
            if pads[0] or pads[1] or pads[4] or pads[5]:
                continue
            value = pad.input[2] if len(pad.input) > 2 else ""
            n, h, w, c = model.get_tensor_shape(tr.input[0])
            padded = _new_tensor(model, [n, h + pads[2] + pads[6], w + pads[3] + pads[7], c])
            new_pad = helper.make_node(
                "Pad", [tr.input[0], _const(model, np.array([pads[2], pads[3], pads[6], pads[7]], dtype=np.int64)),
                        value, _const(model, np.array([1, 2], dtype=np.int64))],
                [padded], mode="constant", name=pad.name)
            model.set_initializer(new_pad.input[1], np.array([pads[2], pads[3], pads[6], pads[7]], dtype=np.int64))
            model.set_initializer(new_pad.input[3], np.array([1, 2], dtype=np.int64))
            new_tr = helper.make_node("Transpose", [padded], [pad.output[0]], perm=[0, 3, 1, 2],
                                      name=f"{pad.name}_to_nchw")
            idx = list(model.graph.node).index(pad)
            model.graph.node.insert(idx, new_pad)
            model.graph.node.insert(idx + 1, new_tr)
            model.graph.node.remove(pad)
            if not model.find_consumers(tr.output[0]):
                model.graph.node.remove(tr)
            model.set_tensor_datatype(padded, model.get_tensor_datatype(tr.input[0]))
            model.set_tensor_layout(padded, ["N", "H", "W", "C"])
            return model.transform(InferShapes()), True
        return model, False


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
        if len(cons) != 1 or cons[0].op_type != "Transpose" or _perm(cons[0]) != [0, 2, 3, 1]:
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


class MoveTransposeBeforeMultiThreshold(Transformation):
    """``MultiThreshold(NCHW) -> Transpose(NCHW->NHWC)`` becomes ``Transpose -> MultiThreshold(NHWC)``.

    A per-channel threshold commutes with a layout change; moving the transpose up lets
    :class:`AbsorbInputTranspose` fold it into the interface when the threshold reads the graph
    input (Brevitas CNV's 8-bit input quantizer).
    """

    def apply(self, model: ModelWrapper):
        for mt in model.graph.node:
            if mt.op_type != "MultiThreshold":
                continue
            inst = getCustomOp(mt)
            if inst.get_nodeattr("data_layout") not in ("NCHW", ""):
                continue
            cons = model.find_consumers(mt.output[0]) or []
            if len(cons) != 1 or cons[0].op_type != "Transpose" or _perm(cons[0]) != [0, 2, 3, 1]:
                continue
            if mt.output[0] in [o.name for o in model.graph.output]:
                continue
            tr = cons[0]
            x, y, z = mt.input[0], mt.output[0], tr.output[0]
            n, c, h, w = model.get_tensor_shape(x)
            dt = model.get_tensor_datatype(y)
            tr.input[0], tr.output[0] = x, y
            mt.input[0], mt.output[0] = y, z
            model.set_tensor_shape(y, [n, h, w, c])
            model.set_tensor_datatype(y, model.get_tensor_datatype(x))
            model.set_tensor_datatype(z, dt)
            inst.set_nodeattr("data_layout", "NHWC")
            nodes = model.graph.node
            i_mt, i_tr = list(nodes).index(mt), list(nodes).index(tr)
            nodes.remove(tr)
            nodes.insert(i_mt, tr)
            del i_tr
            return model.transform(InferShapes()), True
        return model, False


class RemoveIdentityIm2Col(Transformation):
    """Drop ``Im2Col`` with a 1x1 kernel, stride 1, no padding and no dilation: it is the identity
    on the NHWC stream, but FINN would still build a sliding-window unit for it (the SI branch's
    1x1 convolutions had one each)."""

    def apply(self, model: ModelWrapper):
        for n in model.graph.node:
            if n.op_type != "Im2Col":
                continue
            inst = getCustomOp(n)
            if list(inst.get_nodeattr("kernel_size")) != [1, 1] or \
                    list(inst.get_nodeattr("stride")) != [1, 1] or \
                    any(inst.get_nodeattr("pad_amount")) or \
                    list(inst.get_nodeattr("dilations")) not in ([1, 1], []):
                continue
            if model.get_tensor_shape(n.input[0]) != model.get_tensor_shape(n.output[0]):
                continue
            if _bypass(model, n, n.input[0]):
                return model, True
        return model, False


class ShareIdenticalIm2Col(Transformation):
    """Two ``Im2Col`` nodes on the same tensor with the same attributes become one (the fork moves
    behind the sliding window). In a downsampling SI block the shortcut's and the SI squeeze's
    1x1 stride-2 convolutions read the same bipolar tensor and would each get a window unit."""

    def apply(self, model: ModelWrapper):
        seen: dict = {}
        for n in model.graph.node:
            if n.op_type != "Im2Col":
                continue
            key = (n.input[0], tuple(sorted((a.name, str(a)) for a in n.attribute)))
            if key not in seen:
                seen[key] = n
                continue
            if _bypass(model, n, seen[key].output[0]):
                return model, True
        return model, False


class PreferHlsMvau(Transformation):
    """Every MVAU without an explicit ``preferred_impl_style`` is specialised as HLS.

    FINN would make an MVAU with >= 4-bit inputs and weights (the multi-bit head) an RTL MVAU,
    whose DSP primitives Verilator cannot simulate: that node could never run as generated code
    without Vivado (``--sim``), only as FINN's python model. The HLS MVAU computes the same
    integers with LUT multipliers and runs in cppsim, so every node of the build stays provable."""

    def apply(self, model: ModelWrapper):
        for n in model.graph.node:
            if n.op_type == "MVAU" and n.domain == HW_DOMAIN:
                inst = getCustomOp(n)
                if inst.get_nodeattr("preferred_impl_style") == "":
                    inst.set_nodeattr("preferred_impl_style", "hls")
        return model, False


class FixXnorAccumulatorWidth(Transformation):
    """Widen the accumulator of XNOR-mode MVAUs that FINN's ``MinimizeAccumulatorWidth`` made
    too narrow, and restore the thresholds it clipped.

    finn-plus 1.6.1 sizes an XNOR MVAU's accumulator from ``sum(w_bipolar * x_binary)``, range
    ``[-#neg, #pos]``, but the layer computes a *popcount* in ``[0, MW]``. With ``MW = 4`` it picks
    INT3, so a popcount of 4 cannot be represented and the thresholds at 4 are clipped to 3: the
    layer's function changes. sibnn's python-model verification after ``minimize_bit_width``
    caught this on the SI interaction layer (1x1, 4 inputs). ``before`` is the graph as it was
    before minimisation (its thresholds are the exact ones).
    """

    def __init__(self, before: ModelWrapper) -> None:
        super().__init__()
        self.before = {n.name: n for n in before.graph.node}
        self.before_model = before

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        changed = False
        for n in model.graph.node:
            if not n.op_type.startswith("MVAU"):
                continue
            inst = getCustomOp(n)
            if not inst.get_nodeattr("binaryXnorMode"):
                continue
            mw = int(inst.get_nodeattr("MW"))
            adt = DataType[inst.get_nodeattr("accDataType")]
            thr_name = n.input[2] if len(n.input) > 2 else None
            old = self.before.get(n.name)
            thr_old = None
            if thr_name and old is not None and len(old.input) > 2:
                thr_old = self.before_model.get_initializer(old.input[2])
            hi = mw if thr_old is None else max(mw, int(np.max(thr_old)))
            lo = 0 if thr_old is None else min(0, int(np.min(thr_old)))
            if adt.allowed(lo) and adt.allowed(hi) and (
                    thr_old is None or np.array_equal(model.get_initializer(thr_name), thr_old)):
                continue
            new = DataType.get_smallest_possible(hi) if lo >= 0 else \
                DataType.get_smallest_possible(-max(abs(lo), hi + 1))
            inst.set_nodeattr("accDataType", new.name)
            if thr_old is not None:
                model.set_initializer(thr_name, thr_old)
                model.set_tensor_datatype(thr_name, new)
            changed = True
        return model, changed


class KeepBipolarWeights(Transformation):
    """Give a non-XNOR MVAU whose weights are all ``+-1`` its 1-bit ``BIPOLAR`` weight type back.

    finn-plus 1.6.1's ``MinimizeWeightBitWidth`` sizes weights from their range: ``[-1, +1]``
    becomes INT2. That is exact but wasteful on an MVAU with multi-bit input and binary weights
    (the SI squeeze that reads the 4-bit residual ``h``): the weights are stored with 2 bits, and
    every product is an INT4 x INT2 multiply. With ``BIPOLAR`` weights FINN's HLS MVAU stores 1 bit
    per weight and computes each product as a conditional negation (finn-hlslib ``Recast<Binary>``:
    ``w ? x : -x``), the same integers. XNOR MVAUs (binary input too) are left alone: their weights
    are already BINARY. Run after FINN's ``step_minimize_bit_width``; the accumulator FINN sized
    from the ``+-1`` values stays valid, because the values do not change.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        for n in model.graph.node:
            if not n.op_type.startswith("MVAU") or len(n.input) < 2:
                continue
            inst = getCustomOp(n)
            if inst.get_nodeattr("binaryXnorMode") or "BIPOLAR" in (
                    inst.get_nodeattr("weightDataType"), inst.get_nodeattr("inputDataType")):
                continue  # BIPOLAR x BIPOLAR would be FINN's popcount, another function
            w = model.get_initializer(n.input[1])
            if w is None or model.get_tensor_datatype(n.input[1]) != DataType["BIPOLAR"] or \
                    not np.all(np.abs(w) == 1):
                continue
            inst.set_nodeattr("weightDataType", "BIPOLAR")
        return model, False


def _finn_weight_type(w: np.ndarray) -> DataType:
    """The type finn-plus 1.6.1's value-based ``MinimizeWeightBitWidth`` gives MVAU weights ``w``
    (``MatrixVectorActivation.minimize_weight_bit_width``)."""
    lo, hi = float(w.min()), float(w.max())
    if lo < 0:
        return DataType.get_smallest_possible(lo if abs(lo) > hi else -hi - 1)
    return DataType.get_smallest_possible(hi)


def _finn_threshold_type_illegal(model: ModelWrapper, node) -> bool:
    """Whether FINN's ``Thresholding.minimize_weight_bit_width`` would pick a type that cannot
    hold the node's thresholds and raise ("Thresholds can't be expressed with type BIPOLAR"):
    thresholds in ``[-1, 0]`` with a -1 get ``BIPOLAR`` (the smallest type holding -1), which
    has no 0. Mirrors FINN's choice for integer inputs."""
    from qonnx.custom_op.registry import getCustomOp

    t = model.get_initializer(node.input[1]) if len(node.input) > 1 else None
    if t is None:
        return False
    inst = getCustomOp(node)
    if not (inst.get_input_datatype(0).is_integer() and inst.get_input_datatype(1).is_integer()):
        return False
    lo, hi = float(np.min(t)), float(np.max(t))
    if lo == hi == 0:
        return False
    signed = inst.get_input_datatype(0).signed()
    if lo < 0:
        tdt = DataType.get_smallest_possible(lo if abs(lo) > hi else -hi - 1)
    else:
        tdt = DataType.get_smallest_possible(-hi - 1 if signed else hi)
    hw = inst.get_hw_compatible_threshold_tensor(t)
    return not bool(np.vectorize(tdt.allowed)(hw).all())


def pin_legal_weight_types(model: ModelWrapper) -> dict[str, int]:
    """Before FINN's ``step_minimize_bit_width``: pin a legal weight type on every non-XNOR MVAU
    whose weights FINN would type wrongly, and return ``{node: runtime_writeable_weights}`` for
    :func:`unpin_weight_types`.

    FINN types weights in ``{-1, 0}`` as ``BIPOLAR`` (the smallest type holding -1; a 0 is then
    packed as -1, and on a BIPOLAR input FINN asserts in the threshold conversion) and weights in
    ``{0, 1}`` as ``BINARY``, which its HLS MVAU takes only in XNOR mode ("True binary
    (non-bipolar) inputs not yet supported" in ``hw_codegen``). A small layer of 2-bit weights can
    draw only those values. Such a node gets the smallest 2+-bit integer type and keeps it through
    FINN's step because it is marked runtime-writeable meanwhile (FINN then sizes its accumulator
    from the types, not the values: wider, never wrong). A thresholding node whose thresholds FINN
    would type as BIPOLAR while holding a 0 (:func:`_finn_threshold_type_illegal`) keeps its
    present type the same way."""
    from qonnx.custom_op.registry import getCustomOp

    pinned = {}
    for n in model.graph.node:
        if n.op_type.startswith("Thresholding") and _finn_threshold_type_illegal(model, n):
            inst = getCustomOp(n)  # keep its present (legal, wider) type through FINN's step
            pinned[n.name] = inst.get_nodeattr("runtime_writeable_weights")
            inst.set_nodeattr("runtime_writeable_weights", 1)
            continue
        if not n.op_type.startswith("MVAU") or len(n.input) < 2:
            continue
        inst = getCustomOp(n)
        w = model.get_initializer(n.input[1])
        if w is None or inst.get_nodeattr("binaryXnorMode"):
            continue
        finn = _finn_weight_type(w)
        if finn not in (DataType["BINARY"], DataType["BIPOLAR"]) or (
                finn == DataType["BIPOLAR"] and np.all(np.abs(w) == 1)):
            continue
        lo, hi = int(w.min()), int(w.max())
        legal = next(DataType[f"{'INT' if lo < 0 else 'UINT'}{k}"] for k in range(2, 33)
                     if DataType[f"{'INT' if lo < 0 else 'UINT'}{k}"].allowed(lo)
                     and DataType[f"{'INT' if lo < 0 else 'UINT'}{k}"].allowed(hi))
        pinned[n.name] = inst.get_nodeattr("runtime_writeable_weights")
        inst.set_nodeattr("weightDataType", legal.name)
        inst.set_nodeattr("runtime_writeable_weights", 1)
        model.set_tensor_datatype(n.input[1], legal)
    return pinned


def unpin_weight_types(model: ModelWrapper, pinned: dict[str, int]) -> None:
    """Undo :func:`pin_legal_weight_types`' runtime-writeable marks (the types stay)."""
    from qonnx.custom_op.registry import getCustomOp

    for name, before in pinned.items():
        getCustomOp(model.get_node_from_name(name)).set_nodeattr("runtime_writeable_weights",
                                                                 before)


class InferReplicateStreams(Transformation):
    """Put a ``ReplicateStream`` HW layer on every tensor read by more than one consumer.

    finn-plus 1.6.1's ``step_convert_to_hw`` ends with ``InferDuplicateStreamsLayer``, which
    inserts ``DuplicateStreams``; finn-plus deprecates that op (its PR 166: removed in the release
    after 1.6.1) in favour of ``ReplicateStream``
    (inferred by ``finn.transformation.fpgadataflow.replicate_stream.InferReplicateStream``, HLS
    backend only, python execution and FINN's folding supported). Run before FINN's step, this
    leaves no fork for ``InferDuplicateStreamsLayer``. Run it after the ``Im2Col`` rewrites, so
    identical sliding windows are merged before their input is replicated.

    FINN's ``InferReplicateStream`` covers a node output with several consumers. It skips two forks
    that ``InferDuplicateStreamsLayer`` covers: a graph input read by several nodes, and a graph
    output that a node also reads. Those get the same node here (a graph output keeps its name).
    """

    def apply(self, model: ModelWrapper):
        from finn.transformation.fpgadataflow.replicate_stream import InferReplicateStream
        from qonnx.transformation.infer_data_layouts import InferDataLayouts

        changed = False
        g = model.graph
        for inp in g.input:
            consumers = model.find_consumers(inp.name) or []
            if len(consumers) >= 2:
                _replicate(model, inp.name, consumers, keep_name=False, index=0)
                changed = True
        for out in g.output:
            consumers = model.find_consumers(out.name) or []
            producer = model.find_producer(out.name)
            if consumers and producer is not None:
                index = list(g.node).index(producer) + 1
                _replicate(model, out.name, consumers, keep_name=True, index=index)
                changed = True
        model, finn_changed = InferReplicateStream().apply(model)
        changed = changed or finn_changed
        if changed:
            model = model.transform(InferDataLayouts())
        return model, changed


def _replicate(model: ModelWrapper, tensor: str, consumers: list, keep_name: bool,
               index: int) -> None:
    """Insert at ``index`` the ``ReplicateStream`` FINN's ``InferReplicateStream`` builds for
    ``tensor``, one replica per consumer; with ``keep_name`` the producer writes a new tensor and
    the last replica is ``tensor`` itself (a graph output keeps its name)."""
    shape = model.get_tensor_shape(tensor)
    dtype = model.get_tensor_datatype(tensor)
    replicas = [_new_tensor(model, shape) for _ in consumers]
    for replica, consumer in zip(replicas, consumers, strict=True):
        consumer.input[list(consumer.input).index(tensor)] = replica
        model.set_tensor_datatype(replica, dtype)
    src = tensor
    if keep_name:
        src = _new_tensor(model, shape)
        producer = model.find_producer(tensor)
        producer.output[list(producer.output).index(tensor)] = src
        model.set_tensor_datatype(src, dtype)
        replicas.append(tensor)
    model.graph.node.insert(index, helper.make_node(
        "ReplicateStream", [src], replicas, domain=HW_DOMAIN, backend="fpgadataflow",
        num=len(replicas), num_elems=int(shape[-1]), PE=1, num_inputs=[int(d) for d in shape[:-1]],
        dtype=dtype.name, name=f"ReplicateStream_{tensor}"))
