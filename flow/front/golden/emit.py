"""The golden graph's emission: one emitter per IR op, chosen from :data:`EMITTERS`.

:func:`build_golden` walks the integer IR in order and hands each node to the emitter registered
for its op (:func:`emits`), as an exporter's handler table does; the emitters share one
:class:`GoldenGraph` (the ONNX graph under construction, the fusion plan of
:mod:`flow.front.golden.fusion` and the tensors held with an offset). The model's outputs and
its ``metadata_props`` (the contract in :mod:`flow.front.golden`) are written last.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from flow.front.golden.emitter import GraphEmitter, channel_shape
from flow.front.golden.fusion import (
    bit_signs,
    border_response,
    conv_operand,
    emit_bits,
    emit_conv_sign,
    emit_qconv,
    foldable_pads,
    is_sign,
    qconv_operand,
    qlinear_convs,
    sign_after_conv,
)
from flow.front.golden.staircase import UINT8, fit_staircase
from flow.front.ir import FloatOp, IntegerIR, IRNode

OPSET = 17
"""The default-domain opset of the golden model."""

THRESHOLD_MODES = ("auto", "staircase", "table", "compare")
"""How :func:`build_golden` may compute a multi-level threshold node."""


def build_golden(ir: IntegerIR, *, primary: str | None = None,
                 thresholds: str = "auto") -> onnx.ModelProto:
    """Emit the golden ONNX model of ``ir``. ``primary`` names the logits output (default: the
    first QONNX output).

    ``thresholds`` picks how a multi-level threshold node ``q = base + step * sum_k [x >= t_k]``
    is computed; all forms are exact and tested equal, single-threshold (bipolar) nodes are always
    one comparison:

    * ``"compare"``: the K comparisons, broadcast and summed, and a sign as a comparison and a
      select (the definition, slowest);
    * ``"table"``: that sum tabulated once, at build time, for every integer of the input's proven
      range, looked up with ``Gather``;
    * ``"staircase"``: ``clip(floor(x * m_c + c_c), 0, K)``, four elementwise ops. A uniform
      quantizer behind a BatchNorm has thresholds ``ceil(a + k b)``; ``m_c, c_c`` are fitted per
      channel and the float32 result is checked against the table for *every* integer of the
      proven input range before it is used: a channel that does not pass raises;
    * ``"auto"`` (default): ``staircase`` for the channels that pass that check; the few that do
      not (ties that round to even on integer inputs) are looked up in their own table on their
      slice of the tensor and scattered over the result; a node where most channels fail uses
      ``table``. And first: a threshold whose input is a conv read by nothing else is computed
      with that conv by one uint8 ``QLinearConv`` where every channel fits its requantisation
      (:func:`qlinear_convs`); its count ``n`` is held as it is, the value offset by ``-base``
      (adds and clips carry offsets along; any other reader gets the value, one Add).

    Outside ``"compare"``, a sign (one threshold, outputs -1 / +1) read only by convs is carried as
    bits ``clip(x + 1 - t, 0, 1)`` (:func:`bit_signs`; the convs absorb ``s = 2b - 1``); another
    is ``clip(2x + 1 - 2t, -1, 1)``; and when its input is a conv output read by nothing else, the
    conv computes it, with doubled weights and the bias ``1 - 2t`` (:func:`emit_conv_sign`), or
    as bits in uint8.
    """
    if thresholds not in THRESHOLD_MODES:
        raise ValueError(f"thresholds must be one of {', '.join(THRESHOLD_MODES)}, "
                         f"not {thresholds!r}")
    g = GoldenGraph(ir, thresholds)
    for nd in ir.nodes:
        emitter = EMITTERS.get(nd.op)
        if emitter is None:
            raise AssertionError(nd.op)
        emitter(g, nd)
    outputs, meta = _emit_outputs(g, primary)
    return _model(g, outputs, meta)


class GoldenGraph:
    """What the emitters of one :func:`build_golden` call share: the graph under construction
    (``e``), the fusion plan (pads folded into convs, signs carried as bits or computed by their
    conv, conv + threshold pairs computed by one ``QLinearConv``) and the tensors held with an
    offset (an int8 conv's count ``n`` is held as it is, i.e. its value ``base + n`` offset by
    ``-base``; adds and clips carry offsets along, and any other reader gets the value, one Add,
    when first needed)."""

    def __init__(self, ir: IntegerIR, thresholds: str) -> None:
        self.ir = ir
        self.mode = thresholds
        self.e = GraphEmitter()
        self.shapes = {n: t.shape for n, t in ir.tensors.items()}
        self.folded = foldable_pads(ir)
        self.signs = sign_after_conv(ir) if thresholds != "compare" else {}
        bits_ok = bit_signs(ir, self.folded) if thresholds != "compare" else {}
        self.qconvs = qlinear_convs(ir, self.folded, bits_ok) if thresholds == "auto" else {}
        # a sign computed by its conv in float32 (signs) is -1 / +1, one computed in uint8 is bits
        self.bits = {k: v for k, v in bits_ok.items()
                     if not (v.inputs[0] in self.signs and v.inputs[0] not in self.qconvs)}
        self.stored: dict[str, tuple[str, float]] = {}  # IR tensor -> (graph tensor, offset != 0)
        self.made: set[str] = set()
        self.u8: dict[str, tuple[str, int]] = {}  # IR tensor -> (its uint8 copy, that offset)

    def rank(self, nd: IRNode) -> int:
        return len(self.shapes[nd.output])

    def held(self, name: str) -> tuple[str, float]:
        """The graph tensor holding IR tensor ``name`` and its offset."""
        return self.stored.get(name, (name, 0.0))

    def value(self, name: str) -> str:
        """IR tensor ``name`` itself (an offset one is un-offset here, once)."""
        if name in self.stored and name not in self.made:
            self.made.add(name)
            g, o = self.stored[name]
            self.e.node("Add", [g, self.e.const(np.float32(-o), "unoffset")], name)
        return name

    def values(self, nd: IRNode) -> None:
        """Make every input of ``nd`` available as its value."""
        for i in nd.inputs:
            self.value(i)

    def as_u8(self, name: str) -> tuple[str, int]:
        """A uint8 copy of IR tensor ``name`` and the offset it holds it with."""
        if name not in self.u8:
            g, o = self.held(name)
            t = self.ir.tensors[name]
            lo, hi = ((0, 1) if name in self.bits else
                      (float(np.min(t.lo)) + o, float(np.max(t.hi)) + o))
            if lo < 0 or hi > UINT8[1]:
                g, o = self.e.node("Add", [g, self.e.const(np.float32(-lo), "to_uint8")]), o - lo
            self.u8[name] = (self.e.node("Cast", [g], to=TensorProto.UINT8), int(o))
        return self.u8[name]

    def carry_offset(self, nd: IRNode) -> bool:
        """An add or clip with an offset input: computed on the held tensors, its result held
        with the summed offset (or, when that is 0, as its value). False when no input is
        offset."""
        if not any(i in self.stored for i in nd.inputs):
            return False
        e, a = self.e, nd.attrs
        (g, o), more = self.held(nd.inputs[0]), [self.held(i) for i in nd.inputs[1:]]
        o_out = o + sum(m[1] for m in more)
        name = None if o_out else nd.output
        if nd.op == "add":
            g = e.node("Add", [g, *(m[0] for m in more)], name)
        else:
            g = e.node("Clip", [g, e.const(np.float32(a["min"] + o), "lo"),
                                e.const(np.float32(a["max"] + o), "hi")], name)
        if o_out:
            self.stored[nd.output] = (g, o_out)
        return True


Emitter = Callable[[GoldenGraph, IRNode], None]

EMITTERS: dict[str, Emitter] = {}
"""IR op -> the function that emits a node of it (registered with :func:`emits`)."""


def emits(*ops: str) -> Callable[[Emitter], Emitter]:
    """Register the decorated function as the emitter of IR ops ``ops``."""

    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return register


@emits("input")
def _emit_input(g: GoldenGraph, nd: IRNode) -> None:
    f = g.e.node("Cast", ["pixels_nhwc"], to=TensorProto.FLOAT)
    g.e.node("Transpose", [f], nd.output, perm=[0, 3, 1, 2])


@emits("conv")
def _emit_conv(g: GoldenGraph, nd: IRNode) -> None:
    if nd.output in g.qconvs:
        _emit_qlinear_conv(g, nd)
        return
    g.values(nd)
    e, a, src = g.e, nd.attrs, nd.inputs[0]
    if nd.output in g.signs:
        emit_conv_sign(e, nd, g.signs[nd.output], conv_operand(nd, g.folded, g.bits))
    elif src in g.bits or getattr(g.folded.get(src), "inputs", [None])[0] in g.bits:
        op = conv_operand(nd, g.folded, g.bits)
        e.node("Conv", [op.x, e.const(op.weight, "w2"), e.const(op.bias, "minus_sum_w")],
               nd.output, pads=op.pads, strides=a["strides"], dilations=a["dilations"],
               group=a["group"], kernel_shape=a["kernel_shape"])
    elif src in g.folded:
        # conv(pad(x, v)) == conv(pad(x, 0)) + v * conv(border): the spatial padding moves
        # into the Conv and its constant border into one integer bias map (exact: integers)
        pad = g.folded[src]
        p, v = pad.attrs["pads"], float(pad.attrs["value"])
        y = e.node("Conv", [pad.inputs[0], e.const(a["weight"], "w")], pads=[p[2], p[3], p[6], p[7]],
                   strides=a["strides"], dilations=a["dilations"], group=a["group"],
                   kernel_shape=a["kernel_shape"])
        border = v * border_response(g.ir.tensors[pad.inputs[0]].shape, p, a)
        e.node("Add", [y, e.const(border, "border")], nd.output)
    else:
        e.node("Conv", [src, e.const(a["weight"], "w")], nd.output, pads=a["pads"],
               strides=a["strides"], dilations=a["dilations"], group=a["group"],
               kernel_shape=a["kernel_shape"])


def _emit_qlinear_conv(g: GoldenGraph, nd: IRNode) -> None:
    """A conv and its threshold as one uint8 ``QLinearConv``; the count is held offset by
    ``-base`` (a sign's count is its bits, no offset)."""
    q = g.qconvs[nd.output]
    op, x_zp = qconv_operand(nd, g.folded, g.bits)
    x, o = g.as_u8(op.x)
    n = emit_qconv(g.e, q, op, x, x_zp + o)
    out = q.threshold.output
    o_out = 0.0 if out in g.bits else -float(q.threshold.attrs["base"])
    g.u8[out] = (n, int(o_out))
    held = g.e.node("Cast", [n], None if o_out else out, to=TensorProto.FLOAT)
    if o_out:
        g.stored[out] = (held, o_out)


@emits("threshold")
def _emit_threshold_node(g: GoldenGraph, nd: IRNode) -> None:
    src = nd.inputs[0]
    if nd.output in g.bits and src not in g.qconvs:
        emit_bits(g.e, nd, g.rank(nd), *g.held(src))
        return
    g.values(nd)
    if src in g.signs or src in g.qconvs:
        return  # computed by its conv
    _emit_threshold(g.e, nd, g.ir.tensors[src], g.rank(nd), g.mode)


@emits("matmul")
def _emit_matmul(g: GoldenGraph, nd: IRNode) -> None:
    g.values(nd)
    g.e.node("MatMul", [nd.inputs[0], g.e.const(nd.attrs["weight"], "w")], nd.output)


@emits("clip")
def _emit_clip(g: GoldenGraph, nd: IRNode) -> None:
    if g.carry_offset(nd):
        return
    g.values(nd)
    e, a = g.e, nd.attrs
    e.node("Clip", [nd.inputs[0], e.const(np.float32(a["min"]), "lo"),
                    e.const(np.float32(a["max"]), "hi")], nd.output)


@emits("add")
def _emit_add(g: GoldenGraph, nd: IRNode) -> None:
    if g.carry_offset(nd):
        return
    g.values(nd)
    g.e.node("Add", nd.inputs, nd.output)


@emits("shift")
def _emit_shift(g: GoldenGraph, nd: IRNode) -> None:
    g.values(nd)
    g.e.node("Mul", [nd.inputs[0], g.e.const(np.float32(nd.attrs["factor"]), "f")], nd.output)


@emits("pad")
def _emit_pad(g: GoldenGraph, nd: IRNode) -> None:
    g.values(nd)
    if nd.output in g.folded:
        return  # folded into its conv
    e, a = g.e, nd.attrs
    e.node("Pad", [nd.inputs[0], e.const(a["pads"], "pads", np.int64),
                   e.const(np.float32(a["value"]), "pv")], nd.output, mode="constant")


@emits("maxpool")
def _emit_maxpool(g: GoldenGraph, nd: IRNode) -> None:
    g.values(nd)
    g.e.node("MaxPool", nd.inputs, nd.output, **{k: v for k, v in nd.attrs.items()})


@emits("sum")
def _emit_sum(g: GoldenGraph, nd: IRNode) -> None:
    g.values(nd)
    a = nd.attrs
    g.e.node("ReduceSum", [nd.inputs[0], g.e.const(a["axes"], "axes", np.int64)], nd.output,
             keepdims=a["keepdims"])


@emits("reshape")
def _emit_reshape(g: GoldenGraph, nd: IRNode) -> None:
    g.values(nd)
    a = nd.attrs
    if "perm" in a:
        g.e.node("Transpose", nd.inputs, nd.output, perm=a["perm"])
    else:
        g.e.node("Reshape", [nd.inputs[0], g.e.const([0] + a["shape"][1:], "shape", np.int64)],
                 nd.output)


def _emit_outputs(g: GoldenGraph, primary: str | None) -> tuple[list, dict[str, str]]:
    """The graph outputs and ``metadata_props``: ``scores``, ``logits`` and ``top1`` for the
    ``primary`` output (default: the first), an int32 tensor per tap."""
    e, ir, N = g.e, g.ir, "N"
    outputs = []
    meta = {"sibnn.input": "pixels_nhwc: uint8 (N, H, W, C); the model sees pixels / 255, NCHW",
            "sibnn.format": "1"}
    prim = primary or ir.outputs[0].name
    tap_scales = {}
    for o in ir.outputs:
        t = ir.tensors[g.value(o.tensor)]
        if o.name == prim:
            e.node("Cast", [o.tensor], "scores", to=TensorProto.INT32)
            x = o.tensor
            for op in o.chain:
                x = _emit_float_op(e, x, op)
            e.node("Identity", [x], "logits")
            e.node("ArgMax", ["logits"], "top1", axis=1, keepdims=0)
            n_cls = t.shape[-1]
            outputs += [helper.make_tensor_value_info("scores", TensorProto.INT32, [N, n_cls]),
                        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [N, n_cls]),
                        helper.make_tensor_value_info("top1", TensorProto.INT64, [N])]
            s = np.asarray(o.scale, np.float64)
            meta["sibnn.scale"] = repr(float(s)) if s.size == 1 and np.isfinite(s) else "none"
            meta["sibnn.logits"] = ("logits == scores * scale" if meta["sibnn.scale"] != "none"
                                    else "logits = final float ops applied to scores")
        else:
            if o.chain and not _chain_is_identity(o):
                raise ValueError(f"tap output {o.name} is not quantised")
            e.node("Cast", [o.tensor], o.name, to=TensorProto.INT32)
            outputs.append(helper.make_tensor_value_info(o.name, TensorProto.INT32,
                                                         [N, *t.shape[1:]]))
            tap_scales[o.name] = np.asarray(o.scale, np.float64).tolist()
    meta["sibnn.tap_scales"] = json.dumps(tap_scales)
    meta["sibnn.notes"] = json.dumps(ir.notes)
    return outputs, meta


def _model(g: GoldenGraph, outputs: list, meta: dict[str, str]) -> onnx.ModelProto:
    """The checked ONNX model: uint8 NHWC input, ``outputs``, only the nodes and initializers
    they need, ``meta`` as ``metadata_props``."""
    in_c, in_h, in_w = g.ir.input_shape[1:]
    graph_inputs = [helper.make_tensor_value_info("pixels_nhwc", TensorProto.UINT8,
                                                  ["N", in_h, in_w, in_c])]
    graph = helper.make_graph(_live(g.e.nodes, {o.name for o in outputs}), "sibnn_golden",
                              graph_inputs, outputs, [])
    used = {i for n in graph.node for i in n.input}
    graph.initializer.extend(t for t in g.e.inits if t.name in used)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sibnn.golden")
    model.ir_version = 8
    for k, v in meta.items():
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, k: v})
    onnx.checker.check_model(model)
    return model


def _live(nodes: list, outputs: set) -> list:
    """``nodes`` less those no graph output needs (e.g. a float copy of an int8 tensor that only
    int8 convs read)."""
    need, keep = set(outputs), []
    for n in reversed(nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(n.input)
    return keep[::-1]


def _emit_threshold(e: GraphEmitter, nd, src, rank: int, mode: str) -> None:
    """``q = base + step * sum_k [d_c * x >= t_ck]`` (see :func:`build_golden`)."""
    a = nd.attrs
    thr, d = a["thresholds"], a["direction"]
    C, K = thr.shape
    cs = channel_shape(rank, C)
    base, step = np.float32(a["base"]), np.float32(a["step"])
    x = nd.inputs[0]
    if mode != "compare" and is_sign(nd, src):
        # a sign: d x >= t  <=>  2 d x + 1 - 2t >= 1 for integers x, t and d = +-1, and that odd
        # integer is never 0, so clipping it to [-1, 1] gives exactly -1 / +1 (ONNX Runtime's
        # Sign is several times slower than Mul, Add and Clip together)
        two = np.float32(2) if np.all(d == 1) else (2 * d).astype(np.float32).reshape(cs)
        two_x = e.node("Mul", [x, e.const(two, "two")])
        odd = e.node("Add", [two_x, e.const((1 - 2 * thr).reshape(cs), "one_minus_2thr")])
        e.node("Clip", [odd, e.const(np.float32(-1), "lo"), e.const(np.float32(1), "hi")],
               nd.output)
    elif K == 1 and np.all(d == 1):
        ge = e.node("GreaterOrEqual", [x, e.const(thr.reshape(cs), "thr")])
        e.node("Where", [ge, e.const(base + step, "hi"), e.const(base, "lo")], nd.output)
    elif mode == "compare" or K == 1:
        if np.any(d != 1):
            x = e.node("Mul", [x, e.const(d.reshape(cs), "dir")])
        xu = e.node("Unsqueeze", [x, e.const([-1], "ax", np.int64)])
        cmp = e.node("GreaterOrEqual", [xu, e.const(thr.reshape(cs + (K,)), "thr")])
        cnt = e.node("ReduceSum", [e.node("Cast", [cmp], to=TensorProto.FLOAT),
                                   e.const([-1], "ax", np.int64)], keepdims=0)
        if step != 1:
            cnt = e.node("Mul", [cnt, e.const(step, "step")])
        e.node("Add", [cnt, e.const(base, "base")], nd.output)
    else:
        # table[c, x - lo_c] = base + step * sum_k [d_c * x >= t_ck] for every integer x of the
        # input's proven range [lo_c, hi_c]: the same thresholds, evaluated once at build time
        lo = np.broadcast_to(np.asarray(src.lo), (C,)).astype(np.int64)
        hi = np.broadcast_to(np.asarray(src.hi), (C,)).astype(np.int64)
        L = int(np.max(hi - lo)) + 1
        vals = lo[:, None] + np.arange(L)[None, :]
        cnt = ((d[:, None, None] * vals[:, :, None]) >= thr[:, None, :]).sum(-1)
        table = (base + step * cnt).astype(np.float32)  # (C, L)
        ok = np.zeros(C, bool)
        shift = 0.0  # the base, when the clip's bounds carry it
        if mode in ("auto", "staircase"):
            m, c, ok, shift = fit_staircase(thr, d, vals, cnt, float(base) if step == 1 else 0.0)
            if mode == "staircase" and not ok.all():
                raise ValueError(f"threshold node {nd.output}: the thresholds of channel(s) "
                                 f"{np.flatnonzero(~ok).tolist()[:8]} are not a staircase "
                                 "ceil(a + k b) on the input range; use thresholds='auto'")
        if not ok.any() or ok.sum() < C / 2:
            offset = (np.arange(C) * L - lo).astype(np.float32).reshape(cs)
            idx = e.node("Cast", [e.node("Add", [x, e.const(offset, "off")])],
                         to=TensorProto.INT32)
            e.node("Gather", [e.const(table.reshape(-1), "table"), idx], nd.output, axis=0)
            return
        z = e.node("Add", [e.node("Mul", [x, e.const(m.reshape(cs), "m")]),
                           e.const(c.reshape(cs), "c")])
        q = e.node("Clip", [e.node("Floor", [z]), e.const(np.float32(shift), "lo"),
                            e.const(np.float32(shift + K), "hi")],
                   nd.output if shift and ok.all() else None)
        if shift and ok.all():
            return
        if step != 1:
            q = e.node("Mul", [q, e.const(step, "step")])
        if ok.all():
            e.node("Add", [q, e.const(base, "base")], nd.output)
            return
        # the few channels that are no staircase (ties to even): their own small table, looked
        # up on their slice of the tensor only and scattered over the staircase's result
        if not shift:
            q = e.node("Add", [q, e.const(base, "base")])
        bad = np.flatnonzero(~ok)
        nb = len(bad)
        bshape = (1, nb) + (1,) * (rank - 2)
        xb = e.node("Gather", [x, e.const(bad, "bad", np.int64)], axis=1)
        offset = (np.arange(nb) * L - lo[bad]).astype(np.float32).reshape(bshape)
        idx = e.node("Cast", [e.node("Add", [xb, e.const(offset, "off")])], to=TensorProto.INT32)
        tb = e.node("Gather", [e.const(table[bad].reshape(-1), "table"), idx], axis=0)
        where = e.node("Expand", [e.const(bad.reshape(bshape), "bad", np.int64),
                                  e.node("Shape", [tb])])
        e.node("ScatterElements", [q, where, tb], nd.output, axis=1)


def _emit_float_op(e: GraphEmitter, x: str, op: FloatOp) -> str:
    k, p = op.kind, op.params
    if k in ("mul", "add", "sub", "div"):
        onnx_op = {"mul": "Mul", "add": "Add", "sub": "Sub", "div": "Div"}[k]
        return e.node(onnx_op, [x, e.const(p[0], k)])
    if k == "rsub":
        return e.node("Sub", [e.const(p[0], k), x])
    if k == "relu":
        return e.node("Relu", [x])
    if k == "clip":
        return e.node("Clip", [x, e.const(p[0], "lo"), e.const(p[1], "hi")])
    if k == "bn":
        mean, var, w, b, eps = p
        return e.node("BatchNormalization", [x, e.const(w, "g"), e.const(b, "b"), e.const(mean, "m"),
                                             e.const(var, "v")], epsilon=float(eps))
    raise AssertionError(k)


def _chain_is_identity(o) -> bool:
    return all(op.kind == "mul" for op in o.chain)
