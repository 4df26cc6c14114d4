"""Rewrites into integer arithmetic FINN can lower.

* :class:`ConvertBipolarToXnor`: FINN's ``ConvertBipolarMatMulToXnorPopcount`` follows one path up
  from each MatMul and fails on a *fork* of a bipolar tensor. This version starts from each bipolar
  ``MultiThreshold`` and rewrites *all* its consumers at once: the threshold emits {0, 1}; ``Pad``
  by -1 becomes ``Pad`` by 0 (the same number in the XNOR domain); every bipolar-weight ``MatMul``
  becomes ``XnorPopcountMatMul`` with its ``2p - K`` correction; a sum reduction gets
  ``2s - N``; any other consumer gets ``2b - 1`` back. Every rewrite is exact.
* :class:`RemoveIdentityMultiThreshold`: a threshold on an integer tensor that maps every integer
  to itself (the 8-bit pixel quantizer after ``/255 * 255``) is dropped.
* :class:`AnnotateIntegerInitializers`: integer-valued constants of ``Mul``/``Add`` get the
  smallest integer ``DataType``, so the integer adds and scales after streamlining become integer
  ``ElementwiseAdd``/``ElementwiseMul`` layers instead of float ones.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

from flow.hw.transforms.graph_edit import const, insert_after, new_tensor, scalar_const

_TRANSPARENT = ("Transpose", "Reshape", "Flatten", "Im2Col", "MaxPool", "MaxPoolNHWC")
"""Ops through which a bipolar value stays bipolar (and binary stays binary): pure data movement
or a max (monotone, so max commutes with ``b -> 2b - 1``)."""


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
                c.input[2] = const(model, 0.0)
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
        return scalar_const(model, pad.input[2])

    @staticmethod
    def _to_xnor(model: ModelWrapper, mm) -> None:
        w = model.get_initializer(mm.input[1])
        k = w.shape[0]
        model.set_initializer(mm.input[1], (w + 1) / 2)
        model.set_tensor_datatype(mm.input[1], DataType["BINARY"])
        out = mm.output[0]
        pop = new_tensor(model, model.get_tensor_shape(out))
        mm.op_type = "XnorPopcountMatMul"
        mm.domain = "qonnx.custom_op.general"
        mm.output[0] = pop
        model.set_tensor_datatype(pop, DataType["UINT32"])
        dbl = new_tensor(model, model.get_tensor_shape(out))
        insert_after(model, mm, [
            helper.make_node("Mul", [pop, const(model, [2.0])], [dbl]),
            helper.make_node("Add", [dbl, const(model, [-float(k)])], [out]),
        ])

    @staticmethod
    def _decode_reduce_sum(model: ModelWrapper, rs) -> None:
        shape = model.get_tensor_shape(rs.input[0])
        axes = model.get_initializer(rs.input[1]) if len(rs.input) > 1 else None
        axes = list(range(len(shape))) if axes is None else [int(a) % len(shape) for a in axes]
        n = int(np.prod([shape[a] for a in axes]))
        out = rs.output[0]
        s = new_tensor(model, model.get_tensor_shape(out))
        dbl = new_tensor(model, model.get_tensor_shape(out))
        rs.output[0] = s
        insert_after(model, rs, [
            helper.make_node("Mul", [s, const(model, [2.0])], [dbl]),
            helper.make_node("Add", [dbl, const(model, [-float(n)])], [out]),
        ])

    @staticmethod
    def _decode_edge(model: ModelWrapper, c, t: str) -> None:
        shape = model.get_tensor_shape(t)
        dbl, bip = new_tensor(model, shape), new_tensor(model, shape)
        prod = model.find_producer(t)
        nodes = [helper.make_node("Mul", [t, const(model, [2.0])], [dbl]),
                 helper.make_node("Add", [dbl, const(model, [-1.0])], [bip])]
        insert_after(model, prod, nodes)
        for k, x in enumerate(c.input):
            if x == t:
                c.input[k] = bip
        model.set_tensor_datatype(bip, DataType["BIPOLAR"])

    @staticmethod
    def _decode_output(model: ModelWrapper, t: str) -> None:
        raise NotImplementedError("a bipolar graph output in the XNOR domain")


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
