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
  intermediate is bounded by 2**24 (checked when the IR is built).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flow.front.integerize import FloatOp, IntegerIR

OPSET = 17


class _Emitter:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def const(self, arr, hint: str, dtype=np.float32) -> str:
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), n))
        return n

    def node(self, op: str, inputs: list[str], output: str | None = None, hint: str = "",
             **attrs) -> str:
        out = output or self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out


def _channel_shape(rank: int, c: int) -> tuple[int, ...]:
    return (1, c) + (1,) * (rank - 2)


def _emit_float_op(e: _Emitter, x: str, op: FloatOp, rank: int) -> str:
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


THRESHOLD_MODES = ("auto", "staircase", "table", "compare")


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
      ``table``.

    Outside ``"compare"``, a sign (one threshold, outputs -1 / +1) is ``clip(2x + 1 - 2t, -1, 1)``,
    and when its input is a conv output read by nothing else, the conv computes it with doubled
    weights and the bias ``1 - 2t`` (:func:`_emit_conv_sign`).
    """
    if thresholds not in THRESHOLD_MODES:
        raise ValueError(f"thresholds must be one of {', '.join(THRESHOLD_MODES)}, "
                         f"not {thresholds!r}")
    e = _Emitter()
    shapes = {n: t.shape for n, t in ir.tensors.items()}
    N = "N"
    in_c, in_h, in_w = ir.input_shape[1:]
    graph_inputs = [helper.make_tensor_value_info("pixels_nhwc", TensorProto.UINT8,
                                                  [N, in_h, in_w, in_c])]
    folded = _foldable_pads(ir)
    signs = _sign_after_conv(ir) if thresholds != "compare" else {}
    for nd in ir.nodes:
        a = nd.attrs
        rank = len(shapes[nd.output])
        if nd.op == "threshold" and nd.inputs[0] in signs:
            pass  # computed by its conv (below)
        elif nd.op == "conv" and nd.output in signs:
            _emit_conv_sign(e, nd, signs[nd.output])
        elif nd.op == "input":
            f = e.node("Cast", ["pixels_nhwc"], to=TensorProto.FLOAT)
            e.node("Transpose", [f], nd.output, perm=[0, 3, 1, 2])
        elif nd.op == "conv" and nd.inputs[0] in folded:
            # conv(pad(x, v)) == conv(pad(x, 0)) + v * conv(border): the spatial padding moves
            # into the Conv and its constant border into one integer bias map (exact: integers)
            pad = folded[nd.inputs[0]]
            p, v = pad.attrs["pads"], float(pad.attrs["value"])
            y = e.node("Conv", [pad.inputs[0], e.const(a["weight"], "w")], pads=[p[2], p[3], p[6], p[7]],
                       strides=a["strides"], dilations=a["dilations"], group=a["group"],
                       kernel_shape=a["kernel_shape"])
            border = v * _border_response(ir.tensors[pad.inputs[0]].shape, p, a)
            e.node("Add", [y, e.const(border, "border")], nd.output)
        elif nd.op == "conv":
            e.node("Conv", [nd.inputs[0], e.const(a["weight"], "w")], nd.output, pads=a["pads"],
                   strides=a["strides"], dilations=a["dilations"], group=a["group"],
                   kernel_shape=a["kernel_shape"])
        elif nd.op == "matmul":
            e.node("MatMul", [nd.inputs[0], e.const(a["weight"], "w")], nd.output)
        elif nd.op == "threshold":
            _emit_threshold(e, nd, ir.tensors[nd.inputs[0]], rank, thresholds)
        elif nd.op == "clip":
            e.node("Clip", [nd.inputs[0], e.const(np.float32(a["min"]), "lo"),
                            e.const(np.float32(a["max"]), "hi")], nd.output)
        elif nd.op == "add":
            e.node("Add", nd.inputs, nd.output)
        elif nd.op == "shift":
            e.node("Mul", [nd.inputs[0], e.const(np.float32(a["factor"]), "f")], nd.output)
        elif nd.op == "pad" and nd.output in folded:
            pass  # folded into its conv
        elif nd.op == "pad":
            e.node("Pad", [nd.inputs[0], e.const(a["pads"], "pads", np.int64),
                           e.const(np.float32(a["value"]), "pv")], nd.output, mode="constant")
        elif nd.op == "maxpool":
            e.node("MaxPool", nd.inputs, nd.output, **{k: v for k, v in a.items()})
        elif nd.op == "sum":
            e.node("ReduceSum", [nd.inputs[0], e.const(a["axes"], "axes", np.int64)], nd.output,
                   keepdims=a["keepdims"])
        elif nd.op == "reshape":
            if "perm" in a:
                e.node("Transpose", nd.inputs, nd.output, perm=a["perm"])
            else:
                e.node("Reshape", [nd.inputs[0], e.const([0] + a["shape"][1:], "shape", np.int64)],
                       nd.output)
        else:
            raise AssertionError(nd.op)

    outputs = []
    meta = {"sibnn.input": "pixels_nhwc: uint8 (N, H, W, C); the model sees pixels / 255, NCHW",
            "sibnn.format": "1"}
    prim = primary or ir.outputs[0].name
    tap_scales = {}
    for o in ir.outputs:
        t = ir.tensors[o.tensor]
        if o.name == prim:
            e.node("Cast", [o.tensor], "scores", to=TensorProto.INT32)
            x = o.tensor
            for op in o.chain:
                x = _emit_float_op(e, x, op, len(t.shape))
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
    graph = helper.make_graph(e.nodes, "sibnn_golden", graph_inputs, outputs, e.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sibnn.golden")
    model.ir_version = 8
    for k, v in meta.items():
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, k: v})
    onnx.checker.check_model(model)
    return model


def _emit_threshold(e: _Emitter, nd, src, rank: int, mode: str) -> None:
    """``q = base + step * sum_k [d_c * x >= t_ck]`` (see :func:`build_golden`)."""
    a = nd.attrs
    thr, d = a["thresholds"], a["direction"]
    C, K = thr.shape
    cs = _channel_shape(rank, C)
    base, step = np.float32(a["base"]), np.float32(a["step"])
    x = nd.inputs[0]
    if mode != "compare" and _is_sign(nd, src):
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
            m, c, ok, shift = _staircase(thr, d, vals, cnt, float(base) if step == 1 else 0.0)
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


def _consumers(ir: IntegerIR) -> dict[str, list]:
    """The nodes reading each tensor of ``ir``."""
    out: dict[str, list] = {}
    for nd in ir.nodes:
        for i in nd.inputs:
            out.setdefault(i, []).append(nd)
    return out


def _is_sign(nd, src) -> bool:
    """A single-threshold node with outputs -1 / +1, directions +-1, on integer thresholds whose
    doubled values stay far inside float32's exact integers (the input's range is the IR's
    proof)."""
    a = nd.attrs
    thr, d = a["thresholds"], a["direction"]
    bound = max(float(np.max(np.abs(src.lo))), float(np.max(np.abs(src.hi))))
    return (thr.shape[1] == 1 and bool(np.all(np.abs(d) == 1)) and float(a["base"]) == -1 and
            float(a["step"]) == 2 and bool(np.all(thr == np.round(thr))) and
            float(np.max(np.abs(thr))) < 2**21 and bound < 2**21)


def _sign_after_conv(ir: IntegerIR) -> dict:
    """Sign nodes (:func:`_is_sign`) whose input is the output of an unpadded conv (the SI
    squeezes) read by nothing else, keyed by that conv output: the conv computes the sign itself
    (:func:`_emit_conv_sign`)."""
    consumers = _consumers(ir)
    producer = {nd.output: nd for nd in ir.nodes}
    outputs = {o.tensor for o in ir.outputs}
    out = {}
    for nd in ir.nodes:
        if nd.op != "threshold":
            continue
        src = nd.inputs[0]
        conv = producer.get(src)
        if conv is None or conv.op != "conv" or src in outputs or len(consumers[src]) != 1:
            continue
        padded = any(conv.attrs["pads"]) or \
            getattr(producer.get(conv.inputs[0]), "op", None) == "pad"
        if not padded and _is_sign(nd, ir.tensors[src]):
            out[src] = nd
    return out


def _emit_conv_sign(e: _Emitter, conv, sign) -> None:
    """``sign(d conv(x, W) >= t)`` as ``clip(conv(x, 2dW) + 1 - 2t, -1, 1)`` (``d = +-1`` per output
    channel): the doubled conv and its bias are integers below 2**22 (:func:`_is_sign`), exact in
    float32 in any summation order, and the odd result clips to exactly -1 / +1. One Conv with a
    bias and one Clip, which ONNX Runtime's optimiser may fuse into the conv (an exact fusion: the
    clip follows the sum)."""
    a = conv.attrs
    thr = sign.attrs["thresholds"][:, 0]
    d = np.asarray(sign.attrs["direction"], np.float32).reshape(-1, 1, 1, 1)
    w2 = 2 * d * np.asarray(a["weight"], np.float32)
    bias = (1 - 2 * thr).astype(np.float32)
    y = e.node("Conv", [conv.inputs[0], e.const(w2, "w2"), e.const(bias, "one_minus_2thr")],
               pads=a["pads"], strides=a["strides"], dilations=a["dilations"], group=a["group"],
               kernel_shape=a["kernel_shape"])
    e.node("Clip", [y, e.const(np.float32(-1), "lo"), e.const(np.float32(1), "hi")],
           sign.output)


def _staircase(thr: np.ndarray, d: np.ndarray, vals: np.ndarray, cnt: np.ndarray,
               base: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-channel float32 ``(m, c)`` with ``clip(floor(x * m + c), shift, shift + K) == cnt +
    shift`` for every integer ``x`` of ``vals`` (C, L), computed exactly as ONNX Runtime computes
    it (float32 Mul, then Add, then Floor), the mask of the channels where that holds (the others,
    e.g. a quantizer whose ties round to even on integer inputs, need the table), and ``shift``:
    a nonzero integer ``base`` (the node's) when the same channels hold with it (the clip's bounds
    then carry the base, saving an Add), else 0.

    For ``y = d x`` and integer thresholds ``t_k = ceil(a + (k - 1) b)`` (``b > 0``), ``y >= t_k``
    iff ``y >= a + (k - 1) b``, so the count is ``clip(floor((y - a) / b) + 1, 0, K)``: ``a, b``
    are taken from the middle of the intervals the K thresholds allow."""
    C, K = thr.shape
    m = np.zeros(C, np.float64)
    c = np.zeros(C, np.float64)
    fitted = np.zeros(C, bool)
    for ch in range(C):
        t = np.sort(thr[ch].astype(np.float64))
        y = d[ch] * vals[ch].astype(np.float64)
        y_lo, y_hi = float(y.min()), float(y.max())
        # thresholds outside the input's range (clamped to it by the IR) are met always or never:
        # only the ones inside it pin the staircase; the check below covers the others
        inside = np.flatnonzero((t > y_lo) & (t <= y_hi))
        if len(inside) == 0:  # a constant count
            m[ch], c[ch], fitted[ch] = 0.0, float(np.sum(t <= y_lo)) + 0.5, True
            continue
        k, tk = inside.astype(np.float64), t[inside]
        if len(inside) == 1:  # one step: the others far outside the range
            b = y_hi - y_lo + 2.0
            a = tk[0] - k[0] * b - 0.5
        else:
            gap = k[None, :] - k[:, None]  # j - i
            upper = gap > 0
            diff = tk[None, :] - tk[:, None]
            b_lo = np.max((diff - 1)[upper] / gap[upper])
            b_hi = np.min((diff + 1)[upper] / gap[upper])
            if not b_lo < b_hi or b_hi <= 0:
                continue
            b = (b_lo + b_hi) / 2 if b_lo > 0 else b_hi / 2
            a_lo, a_hi = np.max(tk - 1 - k * b), np.min(tk - k * b)
            if not a_lo < a_hi:
                continue
            a = (a_lo + a_hi) / 2
        m[ch], c[ch], fitted[ch] = d[ch] / b, 1.0 - a / b, True
    m32 = m.astype(np.float32)

    def check(shift: float) -> tuple[np.ndarray, np.ndarray]:
        c32 = (c + shift).astype(np.float32)
        z = vals.astype(np.float32) * m32[:, None]
        z = z + c32[:, None]
        got = np.clip(np.floor(z), np.float32(shift), np.float32(shift + K))
        return c32, fitted & np.all(got == (cnt + shift).astype(np.float32), axis=1)

    c32, ok = check(0.0)
    if base != 0 and base == np.round(base):
        c_b, ok_b = check(base)
        if np.array_equal(ok_b, ok):
            return m32, c_b, ok, base
    return m32, c32, ok, 0.0


def _foldable_pads(ir: IntegerIR) -> dict:
    """Pad nodes (spatial, constant value) whose only consumer is an unpadded conv, by output."""
    consumers = _consumers(ir)
    outputs = {o.tensor for o in ir.outputs}
    out = {}
    for nd in ir.nodes:
        if nd.op != "pad" or nd.output in outputs:
            continue
        p = list(nd.attrs["pads"])
        users = consumers.get(nd.output, [])
        if len(p) == 8 and p[0] == p[1] == p[4] == p[5] == 0 and len(users) == 1 and \
                users[0].op == "conv" and not any(users[0].attrs["pads"]):
            out[nd.output] = nd
    return out


def _border_response(shape, pads, conv_attrs) -> np.ndarray:
    """``conv(mask)`` with ``mask`` 1 on the padded border and 0 inside, (1, C_out, H_o, W_o):
    what the pad value contributes to each output, computed exactly (float64 on integers)."""
    import torch

    _, c, h, w = shape
    mask = np.ones((1, c, h + pads[2] + pads[6], w + pads[3] + pads[7]))
    mask[:, :, pads[2]:pads[2] + h, pads[3]:pads[3] + w] = 0
    wt = torch.from_numpy(np.asarray(conv_attrs["weight"], np.float64))
    y = torch.nn.functional.conv2d(torch.from_numpy(mask), wt, stride=conv_attrs["strides"],
                                   dilation=conv_attrs["dilations"], groups=conv_attrs["group"])
    return y.numpy().astype(np.float32)


def _chain_is_identity(o) -> bool:
    return all(op.kind == "mul" for op in o.chain)


OPTIMIZERS_OFF = ("ConvMulFusion", "ConvBNFusion", "MatMulScaleFusion", "MatMulAddFusion",
                  "MatMulBNFusion", "GemmActivationFusion")
"""ONNX Runtime graph optimisations the golden model never runs: each folds a float factor or
offset into a Conv/MatMul's weights or bias (e.g. a staircase multiplier into the conv before
it), which changes float32 rounding. The rest is audited (:func:`audit_optimised`)."""

_EXACT_OPS = {("", op) for op in (
    "Add", "ArgMax", "Cast", "Clip", "Conv", "Expand", "Floor", "Gather", "GreaterOrEqual",
    "Identity", "MatMul", "MaxPool", "Mul", "Pad", "ReduceSum", "Relu", "Reshape",
    "ScatterElements", "Shape", "Sign", "Sub", "Transpose", "Unsqueeze", "Where",
    "BatchNormalization", "Div")} | {
    ("com.microsoft.nchwc", "Conv"), ("com.microsoft.nchwc", "ReorderInput"),
    ("com.microsoft.nchwc", "ReorderOutput"), ("com.microsoft.nchwc", "MaxPool"),
    ("com.microsoft", "FusedConv")}
"""What an audited optimised golden graph may hold: our own standard ops, and the Conv forms
ONNX Runtime's CPU optimiser makes (blocked NCHWc layout and its reorders, a fused activation or
residual sum applied after the full accumulation)."""


def audit_optimised(original: onnx.ModelProto, optimised: onnx.ModelProto) -> list[str]:
    """Why ``optimised`` (ONNX Runtime's rewrite of ``original``) might not compute bit for bit
    what ``original`` computes; empty when it provably does.

    The golden model carries integers in float32, bounded by 2**24 (checked when the IR is built),
    so any summation order of integer products is exact. The rewrite is accepted when:

    * every node is an allowed op (:data:`_EXACT_OPS`), a fused activation being Relu or Clip;
    * every Conv's weights and bias are integers (no float factor or offset folded in), except a
      one-tap depthwise Conv without bias, sum or activation, which is a per-channel Mul (the
      NCHWc layout's form of one: one rounded product per value, as Mul);
    * the non-integer constants of Mul/Add/Sub/Div nodes (those Convs counted as Mul) are the same
      multiset as before, so every float step of the staircases and the logit chain is still
      there, on its own.
    """
    from onnx import numpy_helper as nh

    def consts(m):
        return {t.name: nh.to_array(t) for t in m.graph.initializer}

    def key(op, arr):
        return op, np.asarray(arr, np.float32).reshape(-1).tobytes()

    def float_steps(m, c):
        out = []
        for n in m.graph.node:
            if n.op_type in ("Mul", "Add", "Sub", "Div"):
                out += [key(n.op_type, c[i]) for i in n.input
                        if i in c and c[i].dtype.kind == "f" and np.any(c[i] != np.round(c[i]))]
            elif _is_channel_mul(n, c):
                out.append(key("Mul", c[n.input[1]]))
        return sorted(out)

    why = []
    c = consts(optimised)
    for n in optimised.graph.node:
        if (n.domain, n.op_type) not in _EXACT_OPS:
            why.append(f"{n.domain or 'ai.onnx'}.{n.op_type} ({n.name}) is not audited")
            continue
        if n.op_type in ("Conv", "FusedConv") and not _is_channel_mul(n, c):
            act = {a.name: helper.get_attribute_value(a) for a in n.attribute}.get("activation")
            if act not in (None, b"Relu", b"Clip", "Relu", "Clip"):
                why.append(f"{n.name}: fused activation {act!r}")
            for i in n.input[1:3]:
                if i and i in c and np.any(c[i] != np.round(c[i])):
                    why.append(f"{n.name}: non-integer weights or bias {i} (a float folded in)")
    if float_steps(original, consts(original)) != float_steps(optimised, c):
        why.append("the float multipliers/offsets differ from the original graph's")
    return why


def _is_channel_mul(n, consts: dict) -> bool:
    """A Conv that is exactly a per-channel Mul: one tap, depthwise, with float weights and no
    bias, residual sum or activation."""
    if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in consts or \
            any(n.input[2:]):
        return False
    w = consts[n.input[1]]
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    return (w.ndim == 4 and w.shape[1:] == (1, 1, 1) and attrs.get("group") == w.shape[0] and
            "activation" not in attrs)


PRIMARY = ("scores", "logits", "top1")
"""The golden model's outputs that Brevitas' forward computes too (the rest are the taps)."""


def prune_to(proto: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` that computes only the graph outputs ``keep``: the other outputs, the
    nodes only they need, and the initializers no node reads any more are dropped. ONNX Runtime
    runs every node of a graph, fetched or not, so this is what asking for fewer outputs costs."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    kept_outputs = [o for o in g.output if o.name in keep]
    del g.output[:]
    g.output.extend(kept_outputs)
    need = {o.name for o in kept_outputs}
    nodes = []
    for n in reversed(list(g.node)):
        if any(o in need for o in n.output):
            nodes.append(n)
            need.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(nodes))
    inits = [t for t in g.initializer if t.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in need]
    del g.value_info[:]
    g.value_info.extend(vis)
    return m


@dataclass
class GoldenModel:
    """A loaded golden model in ONNX Runtime.

    ``optimised`` (default): ONNX Runtime's full CPU graph optimisation minus
    :data:`OPTIMIZERS_OFF`, used only when :func:`audit_optimised` proves the rewritten graph
    exact; otherwise, and with ``optimised=False``, no graph optimisation at all.
    :attr:`session_note` says which one runs, and why."""

    path: Path | None
    proto: onnx.ModelProto
    threads: int = 1
    optimised: bool = True

    def __post_init__(self) -> None:
        self.session_note = "no graph optimisation (optimised=False)"
        self.session = None
        if self.optimised:
            self.session, self.session_note = self._optimised_session()
        if self.session is None:
            self.session = self._session(self._options(0))
        self.meta = {p.key: p.value for p in self.proto.metadata_props}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._primary: GoldenModel | None = None

    def primary(self) -> GoldenModel:
        """This golden model without its taps (:data:`PRIMARY` outputs only, :func:`prune_to`),
        optimised and audited the same way; what :meth:`run` uses when no tap is asked for."""
        if self._primary is None:
            keep = [n for n in self.output_names if n in PRIMARY]
            if len(keep) == len(self.output_names):
                self._primary = self
            else:
                self._primary = GoldenModel(None, prune_to(self.proto, keep), self.threads,
                                            self.optimised)
        return self._primary

    def _options(self, level: int, dump: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level else
                                       ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # the "NCHWc model is hardware specific" notice on dumping
        if dump:
            so.optimized_model_filepath = dump
        return so

    def _session(self, so, disabled=()):
        import onnxruntime as ort

        return ort.InferenceSession(self.proto.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled))

    def _optimised_session(self):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="sibnn-golden-") as d:
            dump = str(Path(d) / "optimised.onnx")
            sess = self._session(self._options(1, dump), OPTIMIZERS_OFF)
            why = audit_optimised(self.proto, onnx.load(dump))
        if why:
            return None, f"no graph optimisation: the optimised graph failed the audit ({why[0]})"
        return sess, "ONNX Runtime graph optimisation, audited exact"

    def kernel_profile(self, pixels_nhwc: np.ndarray, runs: int = 3) -> dict[str, int]:
        """Microseconds per op type over ``runs`` runs on ``pixels_nhwc``, from ONNX Runtime's
        profiler, in a twin of this session (same graph, same optimisation)."""
        import collections
        import tempfile

        audited = self.session_note.endswith("audited exact")
        with tempfile.TemporaryDirectory(prefix="sibnn-golden-") as d:
            so = self._options(1 if audited else 0)
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(d) / "profile")
            sess = self._session(so, OPTIMIZERS_OFF if audited else ())
            for _ in range(runs):
                sess.run(None, {"pixels_nhwc": pixels_nhwc})
            events = json.loads(Path(sess.end_profiling()).read_text())
        t: collections.Counter = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                t[e["args"]["op_name"]] += int(e["dur"])
        return dict(t)

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> GoldenModel:
        return cls(Path(path), onnx.load(str(path)), threads)

    @property
    def scale(self) -> float | None:
        s = self.meta.get("sibnn.scale", "none")
        return None if s == "none" else float(s)

    @property
    def tap_scales(self) -> dict[str, float]:
        return json.loads(self.meta.get("sibnn.tap_scales", "{}"))

    @property
    def tap_names(self) -> list[str]:
        return [n for n in self.output_names if n not in ("scores", "logits", "top1")]

    def run(self, pixels_nhwc: np.ndarray, outputs: list[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Run on uint8 NHWC pixels; ``outputs`` limits what is computed (default: all; without
        taps, the session of :meth:`primary`, which does not compute them)."""
        if pixels_nhwc.dtype != np.uint8 or pixels_nhwc.ndim != 4:
            raise ValueError("golden input must be uint8 NHWC pixels")
        names = outputs or self.output_names
        model = self.primary() if all(n in PRIMARY for n in names) else self
        outs = model.session.run(names, {"pixels_nhwc": pixels_nhwc})
        return dict(zip(names, outs, strict=True))


def golden_from_qonnx(qonnx_model, threads: int = 1) -> tuple[GoldenModel, IntegerIR]:
    """Integerize a cleaned QONNX ``ModelWrapper`` and load its golden model."""
    from flow.front.integerize import integerize

    ir = integerize(qonnx_model)
    return GoldenModel(None, build_golden(ir), threads), ir
