"""QONNX -> exact integer IR: the arithmetic every later stage must reproduce bit for bit.

The cleaned QONNX graph is walked in topological order. Every tensor becomes one of

* :class:`IntTensor`: an integer tensor ``q`` with ``real = scale * q`` (``scale`` per tensor or
  per channel) and per-channel integer bounds, computed exactly;
* :class:`Pending`: a float32 function (``FloatOp`` chain, evaluated with *torch*, i.e. with
  Brevitas' own kernels) of an :class:`IntTensor`, not yet quantised;
* a constant.

A ``Quant``/``BipolarQuant`` on a :class:`Pending` becomes a :class:`ThresholdNode`: for every
channel the float32 function is evaluated on *every* integer of the accumulator's range and the
thresholds are read off, so the result is exact by construction, ties included (Brevitas rounds
half to even; FINN's formula ``(k - 0.5) * s`` would round them up). Accumulations are exact
because every value is a small integer (the bound is checked against float32's 2**24).

The IR is emitted as a standard-ONNX golden model by :mod:`flow.front.golden` and lowered to a FINN
graph by :mod:`flow.front.lower`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sibnn_base.errors import UnsupportedGraphError

if TYPE_CHECKING:  # torch is imported where it runs: a CLI's argument errors stay fast
    import torch

F32_EXACT = 2**24
"""Integers up to this magnitude are exact in float32: the golden model's accumulation bound."""


# ------------------------------------------------------------------------------------------------
# IR values
# ------------------------------------------------------------------------------------------------
@dataclass
class IntTensor:
    """``real = scale * q``; ``q`` integer with ``lo <= q <= hi`` (per channel along axis 1)."""

    name: str
    shape: tuple[int, ...]
    scale: np.ndarray  # float64, scalar () or per-channel (C,)
    lo: np.ndarray  # int64, () or (C,)
    hi: np.ndarray
    dyadic: bool = True  # scale is a power of two (float conv of Brevitas is exact)

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) >= 2 else 1

    def per_channel(self, arr: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(arr), (self.channels,)).copy()


@dataclass(frozen=True)
class FloatOp:
    """One float32 op of a pending chain. ``kind`` in: mul, add, sub, div, bn, relu, clip."""

    kind: str
    params: tuple = ()

    def torch(self, t: torch.Tensor) -> torch.Tensor:
        import torch

        k, p = self.kind, self.params
        if k == "mul":
            return t * _t(p[0])
        if k == "add":
            return t + _t(p[0])
        if k == "sub":
            return t - _t(p[0])
        if k == "rsub":
            return _t(p[0]) - t
        if k == "div":
            return t / _t(p[0])
        if k == "bn":
            mean, var, w, b, eps = p
            return torch.nn.functional.batch_norm(t, _t(mean), _t(var), _t(w), _t(b), False, 0.0,
                                                  float(eps))
        if k == "relu":
            return torch.relu(t)
        if k == "clip":
            return torch.clamp(t, float(p[0]), float(p[1]))
        raise AssertionError(k)


def _t(a) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


@dataclass
class Pending:
    """``float32 chain(to_float(base))``: an unquantised function of an integer tensor."""

    base: IntTensor
    ops: list[FloatOp] = field(default_factory=list)
    pre: FloatOp | None = None  # how the base becomes float (default: mul by its scale)

    def all_ops(self) -> list[FloatOp]:
        first = self.pre or FloatOp("mul", (_scale_bcast(self.base),))
        return [first, *self.ops]


def _scale_bcast(t: IntTensor) -> np.ndarray:
    s = np.asarray(t.scale, dtype=np.float32)
    if s.ndim == 0:
        return s
    return s.reshape((1, -1) + (1,) * (len(t.shape) - 2))


# ------------------------------------------------------------------------------------------------
# IR nodes (what the golden model and the FINN lowering emit)
# ------------------------------------------------------------------------------------------------
@dataclass
class IRNode:
    op: str  # input | conv | matmul | threshold | clip | add | pad | maxpool | sum | reshape | shift
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    source: str = ""  # the QONNX node it came from


@dataclass
class IROutput:
    name: str  # QONNX output name (logits or a tap)
    tensor: str  # IR integer tensor
    scale: np.ndarray
    chain: list[FloatOp]  # float ops from integer to the model's float output (logits)


@dataclass
class IntegerIR:
    """The network in exact integer arithmetic. ``nodes`` are in topological order."""

    nodes: list[IRNode]
    tensors: dict[str, IntTensor]
    input_name: str
    input_shape: tuple[int, ...]  # NCHW of the float model input
    outputs: list[IROutput]
    notes: list[str] = field(default_factory=list)

    def output(self, name: str) -> IROutput:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)


# ------------------------------------------------------------------------------------------------
# Quantiser semantics (mirror Brevitas, evaluated with torch float32)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantSpec:
    scale: np.ndarray
    zero_point: float
    min_int: int
    max_int: int
    rounding: str
    bipolar: bool

    def apply(self, y: torch.Tensor, layout_rank: int) -> torch.Tensor:
        import torch

        """Integer level (as float tensor) of ``y``; exactly Brevitas' operations."""
        if self.bipolar:
            return torch.where(y >= 0, 1.0, -1.0)
        s = _t(self.scale)
        if s.ndim == 1 and s.numel() > 1:
            s = s.reshape((1, -1) + (1,) * (layout_rank - 2))
        z = y / s + float(self.zero_point)
        z = {"ROUND": torch.round, "FLOOR": torch.floor, "CEIL": torch.ceil,
             "ROUND_TO_ZERO": torch.trunc}[self.rounding](z)
        z = torch.clamp(z, float(self.min_int), float(self.max_int))
        return z - float(self.zero_point)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _int_bounds(bw: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if signed:
        lo = -(2 ** (bw - 1)) + (1 if narrow else 0)
        return lo, 2 ** (bw - 1) - 1
    return 0, 2**bw - 1 - (1 if narrow else 0)


def _is_pow2(a: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    if np.any(a <= 0):
        return False
    m, _ = np.frexp(a)
    return bool(np.all(m == 0.5))


# ------------------------------------------------------------------------------------------------
# The walker
# ------------------------------------------------------------------------------------------------
SHAPE_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
FLOAT_OPS = {"BatchNormalization", "Mul", "Div", "Sub", "Relu", "Clip"}
SUPPORTED = ({"Quant", "BipolarQuant", "Conv", "MatMul", "Gemm", "Add", "Pad", "MaxPool",
              "ReduceSum", "GlobalAveragePool"} | SHAPE_OPS | FLOAT_OPS)


class Integerizer:
    def __init__(self, model, input_pixels: bool = True) -> None:
        self.mw = model
        self.graph = model.graph
        self.env: dict[str, object] = {}
        self.nodes: list[IRNode] = []
        self.tensors: dict[str, IntTensor] = {}
        self.notes: list[str] = []
        self.input_pixels = input_pixels
        self._n = 0

    # -- helpers -------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, name: str):
        if name == "":
            return None
        init = self.mw.get_initializer(name)
        if init is not None:
            return np.asarray(init)
        v = self.env.get(name)
        if isinstance(v, np.ndarray):
            return v
        return None

    def shape(self, name: str) -> tuple[int, ...]:
        s = self.mw.get_tensor_shape(name)
        if s is None:
            raise UnsupportedGraphError(f"tensor {name!r} has no shape; run qonnx cleanup first")
        return tuple(int(d) for d in s)

    def add_tensor(self, t: IntTensor) -> IntTensor:
        bound = int(max(np.max(np.abs(t.lo)), np.max(np.abs(t.hi))))
        if bound >= F32_EXACT:
            raise UnsupportedGraphError(
                f"integer tensor {t.name} can reach {bound}, beyond float32's exact range 2**24")
        self.tensors[t.name] = t
        return t

    def emit(self, op: str, inputs: list[str], out: IntTensor, source, **attrs) -> IntTensor:
        self.nodes.append(IRNode(op, inputs, out.name, attrs, source.name if source is not None
                                 else ""))
        return self.add_tensor(out)

    def need_int(self, node, name: str) -> IntTensor:
        v = self.env.get(name)
        if isinstance(v, IntTensor):
            return v
        kind = "an unquantised float tensor" if isinstance(v, Pending) else "not an integer tensor"
        raise UnsupportedGraphError(
            f"node {node.name or node.op_type} ({node.op_type}): input {name!r} is {kind}; "
            "sibnn needs quantised inputs here")

    def as_pending(self, v) -> Pending:
        if isinstance(v, Pending):
            return Pending(v.base, list(v.ops), v.pre)
        assert isinstance(v, IntTensor)
        return Pending(v)

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> IntegerIR:
        g = self.graph
        if len(g.input) != 1:
            raise UnsupportedGraphError(f"expected one graph input, found {len(g.input)}")
        inp = g.input[0].name
        in_shape = self.shape(inp)
        self.check_supported()
        if self.input_pixels:
            # golden input: uint8 pixels; the float model sees pixel / 255
            c = in_shape[1] if len(in_shape) == 4 else 1
            px = IntTensor("pixels", in_shape, np.array(1.0 / 255), np.zeros(c, np.int64),
                           np.full(c, 255, np.int64), dyadic=False)
            self.nodes.append(IRNode("input", [], "pixels", {"layout": "NCHW"}))
            self.add_tensor(px)
            self.env[inp] = Pending(px, [], pre=FloatOp("div", (np.float32(255.0),)))
        else:
            raise UnsupportedGraphError("only pixel inputs (uint8, x = pixel/255) are supported")
        for node in g.node:
            self.visit(node)
        outputs = []
        for o in g.output:
            v = self.env.get(o.name)
            if isinstance(v, IntTensor):
                outputs.append(IROutput(o.name, v.name, np.asarray(v.scale), []))
            elif isinstance(v, Pending):
                ops = v.all_ops()
                outputs.append(IROutput(o.name, v.base.name, _chain_scale(v), ops))
            else:
                raise UnsupportedGraphError(f"graph output {o.name} is not computed from the input")
        return IntegerIR(self.nodes, self.tensors, "pixels", in_shape, outputs, self.notes)

    def check_supported(self) -> None:
        bad = [f"{n.op_type} ({n.name or 'unnamed'})" for n in self.graph.node
               if n.op_type not in SUPPORTED or (n.domain not in ("", "ai.onnx")
                                                 and n.op_type not in ("Quant", "BipolarQuant"))]
        if bad:
            raise UnsupportedGraphError(
                f"unsupported op(s): {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; "
                f"sibnn maps {', '.join(sorted(SUPPORTED))}")

    def is_const(self, name: str) -> bool:
        return (name == "" or self.mw.get_initializer(name) is not None
                or isinstance(self.env.get(name), (np.ndarray, _QuantConst)))

    def visit(self, node) -> None:
        if all(self.is_const(i) for i in node.input):
            self.env[node.output[0]] = self.fold_const(node)
            return
        handler = getattr(self, f"op_{node.op_type}", None)
        if handler is None:
            raise UnsupportedGraphError(f"unsupported op {node.op_type} at node {node.name}")
        handler(node)

    # -- constant folding of weight quantisers ----------------------------------------------
    def fold_const(self, node):
        op = node.op_type
        ins = [self.env.get(i) if isinstance(self.env.get(i), _QuantConst) else self.const(i)
               for i in node.input]
        if op in ("Quant", "BipolarQuant"):
            q, spec = self.quant_const(node, ins)
            return _QuantConst(q, spec)
        if isinstance(ins[0], _QuantConst) and op in SHAPE_OPS:
            qc = ins[0]
            if np.asarray(qc.spec.scale).size > 1:
                raise UnsupportedGraphError(f"{op} {node.name}: reshapes per-channel weight scales")
            q = _run_single(node, [qc.q.astype(np.float32)] + ins[1:]).astype(np.int64)
            return _QuantConst(q, qc.spec)
        if any(isinstance(v, _QuantConst) for v in ins):
            raise UnsupportedGraphError(f"cannot fold {op} node {node.name} on quantised weights")
        return _run_single(node, ins)

    def quant_spec(self, node, ins) -> QuantSpec:
        if node.op_type == "BipolarQuant":
            return QuantSpec(np.asarray(ins[1], np.float64), 0.0, -1, 1, "ROUND", True)
        scale, zp, bw = (np.asarray(ins[1], np.float64), ins[2], ins[3])
        if np.any(np.asarray(zp) != 0):
            raise UnsupportedGraphError(f"Quant node {node.name}: non-zero zero point")
        if np.asarray(bw).size != 1 or float(bw) != int(bw):
            raise UnsupportedGraphError(f"Quant node {node.name}: bit width must be an integer")
        lo, hi = _int_bounds(int(bw), bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0)))
        rnd = _attr(node, "rounding_mode", b"ROUND")
        rnd = rnd.decode() if isinstance(rnd, bytes) else str(rnd)
        if rnd not in ("ROUND", "FLOOR", "CEIL", "ROUND_TO_ZERO"):
            raise UnsupportedGraphError(f"Quant node {node.name}: rounding mode {rnd}")
        return QuantSpec(scale, 0.0, lo, hi, rnd, False)

    def quant_const(self, node, ins):
        spec = self.quant_spec(node, ins)
        x = _t(ins[0])
        q = spec.apply(x, x.ndim).numpy().astype(np.int64)
        return q, spec

    # -- activation quantisers -------------------------------------------------------------------
    def op_Quant(self, node) -> None:
        self.activation_quant(node)

    def op_BipolarQuant(self, node) -> None:
        self.activation_quant(node)

    def activation_quant(self, node) -> None:
        ins = [self.const(i) for i in node.input]
        spec = self.quant_spec(node, ins)
        src = self.env.get(node.input[0])
        if not isinstance(src, (IntTensor, Pending)):
            raise UnsupportedGraphError(f"{node.op_type} node {node.name}: input is not computed")
        pend = self.as_pending(src)
        base = pend.base
        scale = np.asarray(spec.scale, np.float64)
        out_scale = scale if scale.size > 1 else scale.reshape(())
        step = 2 if spec.bipolar else 1
        levels = (spec.min_int, spec.max_int)
        rank = len(base.shape)
        C = base.channels
        lo, hi = base.per_channel(base.lo), base.per_channel(base.hi)
        length = int(np.max(hi - lo)) + 1
        grid = lo[:, None] + np.minimum(np.arange(length)[None, :], (hi - lo)[:, None])  # (C, L)
        import torch

        if rank == 4:
            t = torch.from_numpy(grid.astype(np.float32)).reshape(1, C, length, 1)
        elif rank == 2:
            t = torch.from_numpy(grid.astype(np.float32)).T.contiguous()  # (L, C)
        else:
            raise UnsupportedGraphError(f"{node.op_type} {node.name}: rank-{rank} input")
        with torch.no_grad():
            y = t
            for fop in pend.all_ops():
                y = fop.torch(y)
            q = spec.apply(y, rank)
        q = q.reshape(1, C, length).squeeze(0) if rank == 4 else q.T
        q = q.numpy().astype(np.int64)  # (C, L)
        out_name = self.fresh("q")
        # the function is the identity or a clamp of the integer: no thresholds needed
        if not spec.bipolar and np.array_equal(q, np.clip(grid, spec.min_int, spec.max_int)):
            qlo, qhi = np.clip(lo, *levels), np.clip(hi, *levels)
            out = IntTensor(out_name, base.shape, out_scale, qlo, qhi, _is_pow2(scale))
            if np.all(lo >= spec.min_int) and np.all(hi <= spec.max_int):
                out.name = base.name  # an alias: same integers, the quantizer's scale
                self.env[node.output[0]] = out
                return
            self.emit("clip", [base.name], out, node, min=spec.min_int, max=spec.max_int)
            self.env[node.output[0]] = out
            return
        thr, direction = _thresholds(q, grid, lo, hi, spec.min_int, spec.max_int, step, node)
        qlo = q.min(axis=1)
        qhi = q.max(axis=1)
        out = IntTensor(out_name, base.shape, out_scale, qlo, qhi, _is_pow2(scale))
        self.emit("threshold", [base.name], out, node, thresholds=thr, direction=direction,
                  base=spec.min_int, step=step, bipolar=spec.bipolar)
        self.env[node.output[0]] = out

    # -- weight layers -------------------------------------------------------------------------
    def weight(self, node, name: str):
        v = self.env.get(name)
        if isinstance(v, _QuantConst):
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
        group = int(_attr(node, "group", 1))
        k = list(_attr(node, "kernel_shape", w.shape[2:]))
        pads = list(_attr(node, "pads", [0] * (2 * len(k))))
        strides = list(_attr(node, "strides", [1] * len(k)))
        dil = list(_attr(node, "dilations", [1] * len(k)))
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
        out = IntTensor(self.fresh("acc"), out_shape, scale, lo, hi, x.dyadic and _is_pow2(ws))
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
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            raise UnsupportedGraphError(f"Gemm {node.name}: only transB/bias variants supported")
        x = self.need_int(node, node.input[0])
        w, ws = self.weight(node, node.input[1])
        if _attr(node, "transB", 0):
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
                        x.dyadic and _is_pow2(ws))
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

    # -- integer ops -------------------------------------------------------------------------------
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
            if ratio != round(ratio) or not _is_pow2(np.array(ratio)):
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
        mode = _attr(node, "mode", b"constant")
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
        axes = [int(a) for a in self.const(axes).reshape(-1)] if axes else list(_attr(node, "axes"))
        keep = int(_attr(node, "keepdims", 1))
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
                        x.per_channel(x.lo) * n, x.per_channel(x.hi) * n, _is_pow2(scale))
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
            node.op_type != "Transpose" or list(_attr(node, "perm"))[:2] == [0, 1])
        if keeps_channels:
            lo, hi = x.lo, x.hi
        else:
            if np.asarray(x.scale).size > 1:
                raise UnsupportedGraphError(f"{node.op_type} {node.name}: moves per-channel scales")
            lo, hi = np.asarray(np.min(x.lo)), np.asarray(np.max(x.hi))
        out = IntTensor(self.fresh("r"), out_shape, x.scale, lo, hi, x.dyadic)
        attrs = {"shape": list(out_shape)}
        if node.op_type == "Transpose":
            attrs["perm"] = list(_attr(node, "perm"))
        self.emit("reshape", [x.name], out, node, **attrs)
        self.env[node.output[0]] = out

    op_Reshape = op_Flatten = op_Transpose = op_Squeeze = op_Unsqueeze = op_Identity = shape_op

    # -- float ops: extend a pending chain ---------------------------------------------------------
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
                                           float(_attr(node, "epsilon", 1e-5)))))

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


@dataclass
class _QuantConst:
    q: np.ndarray
    spec: QuantSpec


def _onnx_dtype(v) -> int:
    return helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)


def _run_single(node, vals: list) -> np.ndarray:
    """Evaluate one standard ONNX node on constants with onnxruntime."""
    import onnxruntime as ort

    names = [f"i{k}" for k in range(len(vals))]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    g = helper.make_graph(
        [helper.make_node(node.op_type, names, ["o"], **attrs)], "fold",
        [helper.make_tensor_value_info(n, _onnx_dtype(v), np.shape(v)) for n, v in zip(names, vals, strict=True)],
        [helper.make_tensor_value_info("o", onnx.TensorProto.UNDEFINED, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: np.asarray(v) for n, v in zip(names, vals, strict=True)})[0]


def _thresholds(q, grid, lo, hi, qmin, qmax, step, node):
    """Per-channel thresholds on ``direction * acc`` reproducing ``q`` (C, L) over ``grid``."""
    C, L = q.shape
    n_levels = (qmax - qmin) // step
    thr = np.zeros((C, n_levels), np.int64)
    direction = np.ones(C, np.int64)
    for c in range(C):
        n = int(hi[c] - lo[c]) + 1
        qc = q[c, :n]
        d = np.diff(qc)
        if np.all(d >= 0):
            direction[c] = 1
            accs = grid[c, :n]
            for k in range(n_levels):
                level = qmin + step * (k + 1)
                idx = np.nonzero(qc >= level)[0]
                thr[c, k] = accs[idx[0]] if idx.size else hi[c] + 1
        elif np.all(d <= 0):
            direction[c] = -1
            accs = -grid[c, :n][::-1]
            qr = qc[::-1]
            for k in range(n_levels):
                level = qmin + step * (k + 1)
                idx = np.nonzero(qr >= level)[0]
                thr[c, k] = accs[idx[0]] if idx.size else -lo[c] + 1
        else:
            raise UnsupportedGraphError(
                f"{node.op_type} node {node.name}: channel {c} is not monotone in its integer "
                "input, so it cannot be expressed as thresholds")
        if np.any((qc - qmin) % step):
            raise UnsupportedGraphError(f"{node.op_type} {node.name}: levels off the grid")
    return thr, direction


def _chain_scale(p: Pending) -> np.ndarray:
    """If the chain is ``acc * s1 * s2 ...`` (muls only), the single scale; else NaN."""
    s = np.asarray(p.base.scale, np.float64) if p.pre is None else None
    if s is None:
        return np.array(np.nan)
    for op in p.ops:
        if op.kind != "mul":
            return np.array(np.nan)
        s = s * np.asarray(op.params[0], np.float64).reshape(-1) if np.size(op.params[0]) > 1 \
            else s * float(np.asarray(op.params[0]))
    return np.asarray(s)


def integerize(model) -> IntegerIR:
    """Build the exact integer IR of a cleaned QONNX ``ModelWrapper`` (input: x = pixel / 255)."""
    return Integerizer(model).run()


def tensor_from_proto(t) -> np.ndarray:  # small utility for tests
    return numpy_helper.to_array(t)
