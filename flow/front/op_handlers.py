"""The integerizer's handlers of QONNX layers, grouped by what they make of a tensor.

:class:`~flow.front.integerize.Integerizer` dispatches a node to its ``op_<OpType>`` method;
these mixins hold them (the quantisers' are in :mod:`flow.front.quant`):

* :class:`LinearHandlers`: ``Conv``, ``MatMul``, ``Gemm``, exact integer accumulators with
  per-channel bounds;
* :class:`IntegerOpHandlers`: ``Add``, ``Pad``, ``MaxPool``, ``ReduceSum``,
  ``GlobalAveragePool`` and the shape ops (:data:`SHAPE_OPS`), integers in, integers out;
* :class:`FloatOpHandlers`: ``BatchNormalization``, ``Mul``, ``Div``, ``Sub``, ``Relu``,
  ``Clip``, which extend a pending float32 chain until a quantiser reads it.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from flow.front.ir import FloatOp, IntTensor, Pending
from flow.front.quant import QuantConst, attr, is_pow2
from sibnn_base.errors import UnsupportedGraphError

SHAPE_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
"""Ops that only move integers (:meth:`IntegerOpHandlers.shape_op`); on a quantised constant
they are folded."""


class LinearHandlers:
    """Weight layers: ``x @ W`` as an exact integer accumulator, a float bias pending."""

    def weight(self, node, name: str):
        v = self.env.get(name)
        if isinstance(v, QuantConst):
            return v.q, np.asarray(v.spec.scale, np.float64)
        c = self.const(name)
        if c is not None:
            c = np.asarray(c)
            if np.all(c == np.round(c)):
                return c.astype(np.int64), np.array(1.0)
        raise UnsupportedGraphError(
            f"{node.op_type} node {node.name}: weights {name!r} are not quantised "
            "(expected a Quant/BipolarQuant on an initializer)")

    def op_Conv(self, node) -> None:
        x = self.need_int(node, node.input[0])
        w, ws = self.weight(node, node.input[1])
        if np.asarray(x.scale).size > 1:
            raise UnsupportedGraphError(f"Conv {node.name}: per-channel input scale")
        group = int(attr(node, "group", 1))
        k = list(attr(node, "kernel_shape", w.shape[2:]))
        pads = list(attr(node, "pads", [0] * (2 * len(k))))
        strides = list(attr(node, "strides", [1] * len(k)))
        dil = list(attr(node, "dilations", [1] * len(k)))
        if any(p for p in pads) and not (x.lo.min() <= 0 <= x.hi.max()):
            pass  # zero padding extends the range; handled by the bound below
        co = w.shape[0]
        out_shape = self.shape(node.output[0])
        xl, xh = x.per_channel(x.lo), x.per_channel(x.hi)
        if any(pads):
            xl, xh = np.minimum(xl, 0), np.maximum(xh, 0)
        cin_g = w.shape[1]
        lo = np.zeros(co, np.int64)
        hi = np.zeros(co, np.int64)
        for o in range(co):
            g = o // (co // group)
            wl = w[o].reshape(cin_g, -1)
            a = wl * xl[g * cin_g:(g + 1) * cin_g, None]
            b = wl * xh[g * cin_g:(g + 1) * cin_g, None]
            lo[o] = np.minimum(a, b).sum()
            hi[o] = np.maximum(a, b).sum()
        scale = np.asarray(x.scale) * ws.reshape(-1)
        scale = scale if scale.size > 1 else scale.reshape(())
        out = IntTensor(self.fresh("acc"), out_shape, scale, lo, hi, x.dyadic and is_pow2(ws))
        self.note_dyadic(node, out)
        self.emit("conv", [x.name], out, node, weight=w, pads=pads, strides=strides,
                  dilations=dil, group=group, kernel_shape=k)
        self.after_linear(node, out, node.input[2] if len(node.input) > 2 else "")

    def op_MatMul(self, node) -> None:
        x = self.need_int(node, node.input[0])
        w, ws = self.weight(node, node.input[1])  # (Ci, Co)
        if np.asarray(x.scale).size > 1 or ws.size > 1 and ws.reshape(-1).size != w.shape[1]:
            raise UnsupportedGraphError(f"MatMul {node.name}: unsupported scale layout")
        self.env[node.output[0]] = self.linear(node, x, w, ws)

    def op_Gemm(self, node) -> None:
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            raise UnsupportedGraphError(f"Gemm {node.name}: only transB/bias variants supported")
        x = self.need_int(node, node.input[0])
        w, ws = self.weight(node, node.input[1])
        if attr(node, "transB", 0):
            w = w.T
            ws = ws.reshape(-1)
        out = self.linear(node, x, w, ws)
        self.after_linear(node, out, node.input[2] if len(node.input) > 2 else "")

    def linear(self, node, x: IntTensor, w: np.ndarray, ws: np.ndarray) -> IntTensor:
        """``x @ w`` (w: Ci x Co) as an exact integer accumulator with per-column bounds."""
        xl, xh = x.per_channel(x.lo), x.per_channel(x.hi)
        a, b = w * xl[:, None], w * xh[:, None]
        lo, hi = np.minimum(a, b).sum(0), np.maximum(a, b).sum(0)
        scale = np.asarray(x.scale) * ws.reshape(-1)
        scale = scale if scale.size > 1 else scale.reshape(())
        out = IntTensor(self.fresh("acc"), self.shape(node.output[0]), scale, lo, hi,
                        x.dyadic and is_pow2(ws))
        self.note_dyadic(node, out)
        return self.emit("matmul", [x.name], out, node, weight=w)

    def after_linear(self, node, out: IntTensor, bias_name: str) -> None:
        if bias_name:
            b = self.const(bias_name)
            if b is None:
                raise UnsupportedGraphError(f"{node.op_type} {node.name}: non-constant bias")
            shape = (1, -1) + (1,) * (len(out.shape) - 2)
            self.env[node.output[0]] = Pending(out, [FloatOp("add", (np.asarray(b, np.float32)
                                                                     .reshape(shape),))])
        else:
            self.env[node.output[0]] = out

    def note_dyadic(self, node, t: IntTensor) -> None:
        if not t.dyadic:
            self.notes.append(f"{node.op_type} {node.name}: scales are not powers of two, so the "
                              "float model's accumulation is not exact; exactness is checked, "
                              "not guaranteed by construction")


class IntegerOpHandlers:
    """Integer ops: the result is an integer tensor with proven bounds."""

    def op_Add(self, node) -> None:
        a, b = (self.env.get(n) for n in node.input)
        ca, cb = (self.const(n) for n in node.input)
        if ca is not None or cb is not None:  # float bias: becomes part of a pending chain
            v, c = (b, ca) if ca is not None else (a, cb)
            p = self.as_pending(v)
            p.ops.append(FloatOp("add", (np.asarray(c, np.float32),)))
            self.env[node.output[0]] = p
            return
        a, b = self.need_int(node, node.input[0]), self.need_int(node, node.input[1])
        sa, sb = np.asarray(a.scale), np.asarray(b.scale)
        if sa.size > 1 or sb.size > 1:
            raise UnsupportedGraphError(f"Add {node.name}: per-channel scales cannot be added as "
                                        "integers; quantise both inputs with one shared quantizer")
        inputs = []
        s = min(float(sa), float(sb))
        lo = np.zeros(a.channels, np.int64)
        hi = np.zeros(a.channels, np.int64)
        for t in (a, b):
            ratio = float(t.scale) / s
            if ratio != round(ratio) or not is_pow2(np.array(ratio)):
                raise UnsupportedGraphError(
                    f"Add {node.name}: input scales {float(sa):g} and {float(sb):g} are not "
                    "integer-aligned; use a shared quantizer or power-of-two scales")
            name = t.name
            tl, th = t.per_channel(t.lo), t.per_channel(t.hi)
            if ratio != 1:
                shifted = IntTensor(self.fresh("shift"), t.shape, np.array(s), tl * int(ratio),
                                    th * int(ratio), t.dyadic)
                self.emit("shift", [t.name], shifted, node, factor=int(ratio))
                name = shifted.name
                tl, th = tl * int(ratio), th * int(ratio)
            inputs.append(name)
            lo, hi = lo + tl, hi + th
        out = IntTensor(self.fresh("sum"), self.shape(node.output[0]), np.array(s), lo, hi,
                        a.dyadic and b.dyadic)
        self.emit("add", inputs, out, node)
        self.env[node.output[0]] = out

    def op_Pad(self, node) -> None:
        x = self.need_int(node, node.input[0])
        pads = [int(p) for p in self.const(node.input[1]).reshape(-1)]
        mode = attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        val = 0.0
        if len(node.input) > 2 and node.input[2]:
            val = float(np.asarray(self.const(node.input[2])).reshape(-1)[0])
        if mode != "constant" or np.asarray(x.scale).size > 1:
            raise UnsupportedGraphError(f"Pad {node.name}: only constant padding is supported")
        qv = val / float(x.scale)
        if qv != round(qv):
            raise UnsupportedGraphError(f"Pad {node.name}: pad value {val} is not on the grid")
        qv = int(round(qv))
        lo = np.minimum(x.per_channel(x.lo), qv)
        hi = np.maximum(x.per_channel(x.hi), qv)
        out = IntTensor(self.fresh("pad"), self.shape(node.output[0]), x.scale, lo, hi, x.dyadic)
        self.emit("pad", [x.name], out, node, pads=pads, value=qv)
        self.env[node.output[0]] = out

    def op_MaxPool(self, node) -> None:
        x = self.need_int(node, node.input[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if np.any(np.asarray(x.scale) <= 0):
            raise UnsupportedGraphError(f"MaxPool {node.name}: negative scale")
        out = IntTensor(self.fresh("pool"), self.shape(node.output[0]), x.scale, x.lo, x.hi,
                        x.dyadic)
        self.emit("maxpool", [x.name], out, node, **attrs)
        self.env[node.output[0]] = out

    def op_ReduceSum(self, node) -> None:
        x = self.need_int(node, node.input[0])
        axes = node.input[1] if len(node.input) > 1 else None
        axes = [int(a) for a in self.const(axes).reshape(-1)] if axes else list(attr(node, "axes"))
        keep = int(attr(node, "keepdims", 1))
        r = len(x.shape)
        axes = sorted(a % r for a in axes)
        if 0 in axes or 1 in axes:
            raise UnsupportedGraphError(f"ReduceSum {node.name}: only spatial axes can be summed")
        n = int(np.prod([x.shape[a] for a in axes]))
        out = IntTensor(self.fresh("sum"), self.shape(node.output[0]), x.scale,
                        x.per_channel(x.lo) * n, x.per_channel(x.hi) * n, x.dyadic)
        self.emit("sum", [x.name], out, node, axes=axes, keepdims=keep)
        self.env[node.output[0]] = out

    def op_GlobalAveragePool(self, node) -> None:
        x = self.need_int(node, node.input[0])
        n = int(np.prod(x.shape[2:]))
        scale = np.asarray(x.scale) / n
        out = IntTensor(self.fresh("sum"), self.shape(node.output[0]), scale,
                        x.per_channel(x.lo) * n, x.per_channel(x.hi) * n, is_pow2(scale))
        self.note_dyadic(node, out)
        self.emit("sum", [x.name], out, node, axes=list(range(2, len(x.shape))), keepdims=1)
        self.env[node.output[0]] = out

    def shape_op(self, node) -> None:
        v = self.env.get(node.input[0])
        if isinstance(v, Pending):
            # a reshape commutes with a chain of scalar float ops: reshape the integers instead
            if not all(all(np.size(p) == 1 for p in op.params if isinstance(p, np.ndarray))
                       for op in v.all_ops()):
                raise UnsupportedGraphError(
                    f"{node.op_type} {node.name}: reshapes a tensor with per-channel float ops "
                    "pending; quantise it first")
            self.env[node.input[0]] = v.base
            self.shape_op(node)
            self.env[node.input[0]] = v
            self.env[node.output[0]] = Pending(self.env[node.output[0]], list(v.ops), v.pre)
            return
        x = self.need_int(node, node.input[0])
        out_shape = self.shape(node.output[0])
        keeps_channels = len(out_shape) >= 2 and out_shape[1] == x.channels and (
            node.op_type != "Transpose" or list(attr(node, "perm"))[:2] == [0, 1])
        if keeps_channels:
            lo, hi = x.lo, x.hi
        else:
            if np.asarray(x.scale).size > 1:
                raise UnsupportedGraphError(f"{node.op_type} {node.name}: moves per-channel scales")
            lo, hi = np.asarray(np.min(x.lo)), np.asarray(np.max(x.hi))
        out = IntTensor(self.fresh("r"), out_shape, x.scale, lo, hi, x.dyadic)
        attrs = {"shape": list(out_shape)}
        if node.op_type == "Transpose":
            attrs["perm"] = list(attr(node, "perm"))
        self.emit("reshape", [x.name], out, node, **attrs)
        self.env[node.output[0]] = out

    op_Reshape = op_Flatten = op_Transpose = op_Squeeze = op_Unsqueeze = op_Identity = shape_op



class FloatOpHandlers:
    """Float ops: extend the pending float32 chain of an integer tensor."""

    def float_op(self, node, fop: FloatOp) -> None:
        v = self.env.get(node.input[0])
        if not isinstance(v, (IntTensor, Pending)):
            raise UnsupportedGraphError(f"{node.op_type} {node.name}: input is not computed")
        p = self.as_pending(v)
        p.ops.append(fop)
        self.env[node.output[0]] = p

    def op_BatchNormalization(self, node) -> None:
        scale, bias, mean, var = (np.asarray(self.const(n), np.float32) for n in node.input[1:5])
        self.float_op(node, FloatOp("bn", (mean, var, scale, bias,
                                           float(attr(node, "epsilon", 1e-5)))))

    def _binary_const(self, node):
        c0, c1 = self.const(node.input[0]), self.const(node.input[1])
        if c1 is not None:
            return 0, np.asarray(c1, np.float32)
        if c0 is not None:
            return 1, np.asarray(c0, np.float32)
        raise UnsupportedGraphError(f"{node.op_type} {node.name}: two non-constant float inputs")

    def op_Mul(self, node) -> None:
        i, c = self._binary_const(node)
        v = self.env.get(node.input[i])
        self.float_op_on(node, v, FloatOp("mul", (c,)))

    def op_Div(self, node) -> None:
        i, c = self._binary_const(node)
        if i != 0:
            raise UnsupportedGraphError(f"Div {node.name}: constant numerator")
        self.float_op_on(node, self.env.get(node.input[0]), FloatOp("div", (c,)))

    def op_Sub(self, node) -> None:
        i, c = self._binary_const(node)
        kind = "sub" if i == 0 else "rsub"
        self.float_op_on(node, self.env.get(node.input[i]), FloatOp(kind, (c,)))

    def float_op_on(self, node, v, fop: FloatOp) -> None:
        if not isinstance(v, (IntTensor, Pending)):
            raise UnsupportedGraphError(f"{node.op_type} {node.name}: input is not computed")
        p = self.as_pending(v)
        p.ops.append(fop)
        self.env[node.output[0]] = p

    def op_Relu(self, node) -> None:
        self.float_op(node, FloatOp("relu"))

    def op_Clip(self, node) -> None:
        lo = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else -np.inf
        hi = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.inf
        self.float_op(node, FloatOp("clip", (float(np.asarray(lo)), float(np.asarray(hi)))))
