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
  ``QLinearConv`` nodes that compute a conv and its threshold together (:func:`_qlinear_convs`),
  whose integer kernels accumulate exactly and whose requantisation is fitted and checked over
  the accumulator's whole proven range.
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
      ``table``. And first: a threshold whose input is a conv read by nothing else is computed
      with that conv by one uint8 ``QLinearConv`` where every channel fits its requantisation
      (:func:`_qlinear_convs`); its count ``n`` is held as it is, the value offset by ``-base``
      (adds and clips carry offsets along; any other reader gets the value, one Add).

    Outside ``"compare"``, a sign (one threshold, outputs -1 / +1) read only by convs is carried as
    bits ``clip(x + 1 - t, 0, 1)`` (:func:`_bit_signs`; the convs absorb ``s = 2b - 1``); another
    is ``clip(2x + 1 - 2t, -1, 1)``; and when its input is a conv output read by nothing else, the
    conv computes it, with doubled weights and the bias ``1 - 2t`` (:func:`_emit_conv_sign`), or
    as bits in uint8.
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
    bits_ok = _bit_signs(ir, folded) if thresholds != "compare" else {}
    qconvs = _qlinear_convs(ir, folded, bits_ok) if thresholds == "auto" else {}
    # a sign computed by its conv in float32 (signs) is -1 / +1, one computed in uint8 is bits
    bits = {k: v for k, v in bits_ok.items()
            if not (v.inputs[0] in signs and v.inputs[0] not in qconvs)}
    # an int8 conv's count n is held as it is, i.e. its value base + n offset by -base; adds and
    # clips carry offsets along, and any other reader gets the value (one Add, when first needed)
    stored: dict[str, tuple[str, float]] = {}  # IR tensor -> (graph tensor, offset), offset != 0
    made: set[str] = set()
    u8: dict[str, tuple[str, int]] = {}  # IR tensor -> (its uint8 copy, that copy's offset)

    def held(name: str) -> tuple[str, float]:
        return stored.get(name, (name, 0.0))

    def value(name: str) -> str:
        if name in stored and name not in made:
            made.add(name)
            g, o = stored[name]
            e.node("Add", [g, e.const(np.float32(-o), "unoffset")], name)
        return name

    def as_u8(name: str) -> tuple[str, int]:
        if name not in u8:
            g, o = held(name)
            t = ir.tensors[name]
            lo, hi = (0, 1) if name in bits else (float(np.min(t.lo)) + o, float(np.max(t.hi)) + o)
            if lo < 0 or hi > UINT8[1]:
                g, o = e.node("Add", [g, e.const(np.float32(-lo), "to_uint8")]), o - lo
            u8[name] = (e.node("Cast", [g], to=TensorProto.UINT8), int(o))
        return u8[name]

    for nd in ir.nodes:
        a = nd.attrs
        rank = len(shapes[nd.output])
        if nd.op in ("add", "clip") and any(i in stored for i in nd.inputs):
            (g, o), more = held(nd.inputs[0]), [held(i) for i in nd.inputs[1:]]
            o_out = o + sum(m[1] for m in more)
            name = None if o_out else nd.output
            if nd.op == "add":
                g = e.node("Add", [g, *(m[0] for m in more)], name)
            else:
                g = e.node("Clip", [g, e.const(np.float32(a["min"] + o), "lo"),
                                    e.const(np.float32(a["max"] + o), "hi")], name)
            if o_out:
                stored[nd.output] = (g, o_out)
            continue
        if nd.op == "threshold" and nd.output in bits and nd.inputs[0] not in qconvs:
            _emit_bits(e, nd, rank, *held(nd.inputs[0]))
            continue
        if not (nd.op == "conv" and nd.output in qconvs):
            for i in nd.inputs:
                value(i)
        if nd.op == "threshold" and (nd.inputs[0] in signs or nd.inputs[0] in qconvs):
            pass  # computed by its conv (below)
        elif nd.op == "conv" and nd.output in qconvs:
            q = qconvs[nd.output]
            op, x_zp = _qconv_operand(nd, folded, bits)
            x, o = as_u8(op.x)
            n = _emit_qconv(e, q, op, x, x_zp + o)
            out = q.threshold.output
            o_out = 0.0 if out in bits else -float(q.threshold.attrs["base"])
            u8[out] = (n, int(o_out))
            g = e.node("Cast", [n], None if o_out else out, to=TensorProto.FLOAT)
            if o_out:
                stored[out] = (g, o_out)
        elif nd.op == "conv" and nd.output in signs:
            _emit_conv_sign(e, nd, signs[nd.output], _conv_operand(nd, folded, bits))
        elif nd.op == "conv" and (nd.inputs[0] in bits or
                                  getattr(folded.get(nd.inputs[0]), "inputs", [None])[0] in bits):
            op = _conv_operand(nd, folded, bits)
            e.node("Conv", [op.x, e.const(op.weight, "w2"), e.const(op.bias, "minus_sum_w")],
                   nd.output, pads=op.pads, strides=a["strides"], dilations=a["dilations"],
                   group=a["group"], kernel_shape=a["kernel_shape"])
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
        t = ir.tensors[value(o.tensor)]
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
    graph = helper.make_graph(_live(e.nodes, {o.name for o in outputs}), "sibnn_golden",
                              graph_inputs, outputs, [])
    used = {i for n in graph.node for i in n.input}
    graph.initializer.extend(t for t in e.inits if t.name in used)
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


def _conv_thresholds(ir: IntegerIR):
    """``(threshold, conv)`` for every threshold node whose input is a conv output that nothing
    else reads and that is no graph output (a conv and threshold the golden graph may fuse)."""
    consumers = _consumers(ir)
    producer = {nd.output: nd for nd in ir.nodes}
    outputs = {o.tensor for o in ir.outputs}
    for nd in ir.nodes:
        if nd.op != "threshold":
            continue
        src = nd.inputs[0]
        conv = producer.get(src)
        if conv is not None and conv.op == "conv" and src not in outputs and \
                len(consumers[src]) == 1:
            yield nd, conv


def _sign_after_conv(ir: IntegerIR) -> dict:
    """Sign nodes (:func:`_is_sign`) whose input is the output of an unpadded conv (the SI
    squeezes) read by nothing else, keyed by that conv output: the conv computes the sign itself
    (:func:`_emit_conv_sign`)."""
    producer = {nd.output: nd for nd in ir.nodes}
    out = {}
    for nd, conv in _conv_thresholds(ir):
        src = nd.inputs[0]
        padded = any(conv.attrs["pads"]) or \
            getattr(producer.get(conv.inputs[0]), "op", None) == "pad"
        if not padded and _is_sign(nd, ir.tensors[src]):
            out[src] = nd
    return out


@dataclass
class _ConvOperand:
    """How the golden graph computes a conv's integer accumulator:
    ``acc == Conv(x, weight, pads) + bias`` (``bias`` per output channel), all integers.

    ``x`` is the conv's IR input, or its bits (:func:`_bit_signs`): ``s = 2 b - 1`` and a pad
    value of -1 is a pad value of 0 for ``b``, so ``conv(pad(s, -1), W) == conv(pad(b, 0), 2 W) -
    sum(W)`` and the padding is the Conv's own zero padding."""

    x: str
    weight: np.ndarray
    bias: np.ndarray
    pads: list


def _conv_operand(conv, folded: dict, bits: dict) -> _ConvOperand:
    """The :class:`_ConvOperand` of an IR conv whose input is bits, or is not padded by a pad
    node (a folded pad of another value needs its border map: :func:`build_golden`)."""
    a = conv.attrs
    w = np.asarray(a["weight"], np.float64)
    src, pads = conv.inputs[0], list(a["pads"])
    pad = folded.get(src)
    if pad is not None:
        p = pad.attrs["pads"]
        src, pads = pad.inputs[0], [p[2], p[3], p[6], p[7]]
    if src in bits:
        return _ConvOperand(src, 2 * w, -w.sum(axis=(1, 2, 3)), pads)
    if pad is not None:
        raise AssertionError(f"{conv.output}: a padded conv on a non-bit input has a border map")
    return _ConvOperand(src, w, np.zeros(w.shape[0]), pads)


def _qconv_operand(conv, folded: dict, bits: dict) -> tuple[_ConvOperand, int]:
    """A conv as int8 ``QLinearConv`` sees it: ``acc == raw + bias`` with ``raw = sum (x - x_zp)
    w`` over the window padded with ``x_zp``. A pad node of value ``v`` becomes ``x_zp = v`` and
    the bias ``v sum(W)`` (each tap reads ``v``, or ``x = (x - v) + v``); bits take doubled
    weights and the bias ``-sum(W)`` (:func:`_conv_operand`). Returns the operand and ``x_zp``."""
    pad = folded.get(conv.inputs[0])
    if pad is None or pad.inputs[0] in bits:
        return _conv_operand(conv, folded, bits), 0
    op = _conv_operand(conv, {}, bits)
    v = float(pad.attrs["value"])
    p = pad.attrs["pads"]
    op.x, op.pads = pad.inputs[0], [p[2], p[3], p[6], p[7]]
    op.bias = v * op.weight.sum(axis=(1, 2, 3))
    return op, int(v)


def _bit_signs(ir: IntegerIR, folded: dict) -> dict:
    """Sign nodes (:func:`_is_sign`) whose output is read only by
    unpadded convs, directly or through a pad of value -1 folded into the conv, and is not a
    graph output, by output: the golden graph carries them as bits ``b = (s + 1) / 2`` in {0, 1}
    (:func:`_emit_bits`, one op fewer than the sign) and their convs absorb ``s = 2 b - 1``
    (:func:`_conv_operand`), which also removes the padded convs' border maps."""
    consumers = _consumers(ir)
    outputs = {o.tensor for o in ir.outputs}
    out = {}
    for nd in ir.nodes:
        if nd.op != "threshold" or nd.output in outputs or \
                not _is_sign(nd, ir.tensors[nd.inputs[0]]):
            continue
        users = consumers.get(nd.output, [])

        def ok(u):
            if u.op == "conv":
                return not any(u.attrs["pads"])
            return u.op == "pad" and u.output in folded and float(u.attrs["value"]) == -1.0
        if users and all(ok(u) for u in users):
            out[nd.output] = nd
    return out


def _emit_bits(e: _Emitter, nd, rank: int, x: str, offset: float = 0.0) -> None:
    """``b = [d v >= t] = clip(d x + 1 - t - d o, 0, 1)`` for integers ``v, t``, ``d = +-1``
    and ``x = v + o`` (the graph tensor holding ``v`` with the offset ``o``)."""
    thr, d = nd.attrs["thresholds"][:, 0], np.asarray(nd.attrs["direction"])
    cs = _channel_shape(rank, len(thr))
    if np.any(d != 1):
        x = e.node("Mul", [x, e.const(d.astype(np.float32).reshape(cs), "dir")])
    one_minus = (1 - thr - d * offset).astype(np.float32).reshape(cs)
    y = e.node("Add", [x, e.const(one_minus, "one_minus_thr")])
    e.node("Clip", [y, e.const(np.float32(0), "zero"), e.const(np.float32(1), "one")], nd.output)


def _emit_conv_sign(e: _Emitter, conv, sign, op: _ConvOperand) -> None:
    """``sign(d acc >= t)`` as ``clip(Conv(x, 2dW) + 2d bias + 1 - 2t, -1, 1)`` (``d = +-1`` per
    output channel, ``acc = Conv(x, W) + bias``, :class:`_ConvOperand`): the doubled conv and its
    bias are integers below 2**22 (:func:`_is_sign`), exact in float32 in any summation order, and
    the odd result clips to exactly -1 / +1. One Conv with a bias and one Clip, which ONNX
    Runtime's optimiser may fuse into the conv (an exact fusion: the clip follows the sum)."""
    a = conv.attrs
    thr = sign.attrs["thresholds"][:, 0]
    d = np.asarray(sign.attrs["direction"], np.float64)
    w2 = (2 * d.reshape(-1, 1, 1, 1) * op.weight).astype(np.float32)
    bias = (2 * d * op.bias + 1 - 2 * thr).astype(np.float32)
    y = e.node("Conv", [op.x, e.const(w2, "w2"), e.const(bias, "one_minus_2thr")],
               pads=op.pads, strides=a["strides"], dilations=a["dilations"], group=a["group"],
               kernel_shape=a["kernel_shape"])
    e.node("Clip", [y, e.const(np.float32(-1), "lo"), e.const(np.float32(1), "hi")],
           sign.output)


UINT8 = (0, 255)


@dataclass
class _QConv:
    """A conv and the threshold that alone reads it, computed by one uint8 ``QLinearConv``
    (:func:`_qlinear_convs`): ONNX Runtime's integer kernels accumulate exactly, and its
    requantisation ``clamp(rint(f32(f32(acc + B) * S)) + zp, 0, 255)`` (one float32 product,
    rounded half to even) is made to compute the threshold's count ``n``: ``S, B`` per channel
    are fitted (:func:`_requant_staircase`) and checked on every integer of the accumulator's
    proven range. A ``Clip`` to ``[0, K]`` follows. The graph stores ``n``, i.e. the threshold's
    value ``base + n`` offset by ``-base`` (a sign's ``n`` is its bits)."""

    conv: object
    threshold: object
    scale: np.ndarray  # float32 per output channel, > 0
    offset: np.ndarray  # int64 per output channel: B, for y = d acc
    zero_point: int
    levels: int  # K


def _qlinear_convs(ir: IntegerIR, folded: dict, bits_ok: dict) -> dict:
    """Thresholds whose input is a conv output read by nothing else (and no graph output), keyed
    by that conv output, that one uint8 ``QLinearConv`` computes: the conv's input spans at most
    256 integers (a sign: its bits), its weights are small (``|w| <= 64`` as the kernel sees
    them: ONNX Runtime's AVX2 kernels add pairs of 8-bit products in 16 bits), its output levels
    are ``base + n`` (``step`` 1) or a sign read only by convs (``bits_ok``), and every channel
    fits (:func:`_requant_staircase`)."""
    out = {}
    for nd, conv in _conv_thresholds(ir):
        src = nd.inputs[0]
        a = nd.attrs
        K = a["thresholds"].shape[1]
        if K > UINT8[1] or not (nd.output in bits_ok or
                                (float(a["step"]) == 1 and float(a["base"]) == np.round(a["base"]))):
            continue
        x = conv.inputs[0]
        pad = folded.get(x)
        if pad is not None:
            x = pad.inputs[0]
        xt = ir.tensors[x]
        w = np.abs(np.asarray(conv.attrs["weight"]))
        if x in bits_ok:
            if np.max(w) * 2 > 64:
                continue
        elif np.max(w) > 64 or np.max(xt.hi) - np.min(xt.lo) > UINT8[1] or (
                pad is not None and not np.min(xt.lo) <= float(pad.attrs["value"]) <= np.max(xt.hi)):
            continue
        t = ir.tensors[src]
        for zp in (UINT8[1] - K, 128, 0):
            fit = _requant_staircase(a["thresholds"], np.asarray(a["direction"]),
                                     t.per_channel(t.lo), t.per_channel(t.hi), zp)
            if fit is not None:
                out[src] = _QConv(conv, nd, fit[0], fit[1], zp, K)
                break
    return out


def _emit_qconv(e: _Emitter, q: _QConv, op: _ConvOperand, x_u8: str, x_zp: int) -> str:
    """The ``QLinearConv`` (uint8 in and out, int8 weights, scales 1 but the per-channel weight
    scale ``S``) and its ``Clip``; returns the uint8 count. ``acc = raw + op.bias`` with
    ``raw = sum (x - x_zp) w`` (padding reads ``x_zp``), so ``y = d acc`` takes ``d w`` and
    ``B + d op.bias``."""
    a = q.conv.attrs
    d = np.asarray(q.threshold.attrs["direction"], np.float64)
    w = (d.reshape(-1, 1, 1, 1) * op.weight).astype(np.int8)
    b = (q.offset + d * op.bias).astype(np.int32)
    f32, u8 = np.float32, np.uint8
    y = e.node("QLinearConv", [x_u8, e.const(f32(1), "x_scale"), e.const(u8(x_zp), "x_zp", u8),
                               e.const(w, "w_int8", np.int8), e.const(q.scale, "staircase_scale"),
                               e.const(np.zeros(len(d), np.int8), "w_zp", np.int8),
                               e.const(f32(1), "y_scale"), e.const(u8(q.zero_point), "y_zp", u8),
                               e.const(b, "staircase_offset", np.int32)],
               pads=op.pads, strides=a["strides"], dilations=a["dilations"], group=a["group"],
               kernel_shape=a["kernel_shape"])
    return e.node("Clip", [y, e.const(u8(0), "zero", u8), e.const(u8(q.levels), "levels", u8)])


def _requant_staircase(thr: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       zp: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel a float32 ``S > 0`` and an integer ``B`` with, for every integer ``acc`` of
    the channel's proven range ``[lo, hi]`` and ``y = d acc``,
    ``clip(rint(clamp(f32(f32(y + B) * S), -zp, 255 - zp)) + zp, 0, K) == sum_k [y >= t_k]``
    (ONNX Runtime's uint8 requantisation, then the Clip); None when a channel has none.

    Away from ties ``rint(S (y + B)) + zp == floor(S y + c)`` with ``c = S B + zp + 0.5``. Each
    count ``v`` taken on ``[y_v, Y_v]`` needs ``S y_v + c >= v`` and ``S Y_v + c < v + 1``: for a
    slope ``S`` inside the feasible interval (around the widest gap, :func:`_widest_slope`) that
    is a window for ``c``, so for ``B``; slopes across the interval are tried until one leaves an
    integer ``B`` well inside its window, and the float32 arithmetic is then checked on the
    whole range."""
    C, K = thr.shape
    S_out = np.zeros(C, np.float32)
    B_out = np.zeros(C, np.int64)
    for ch in range(C):
        x = np.arange(int(lo[ch]), int(hi[ch]) + 1, dtype=np.int64)
        y = int(d[ch]) * x
        n = (y[:, None] >= thr[ch][None, :]).sum(1)
        lows, ups = [], []
        for v in np.unique(n):
            yv = y[n == v]
            if v > 0:
                lows.append((int(yv.min()), int(v)))
            if v < K:
                ups.append((int(yv.max()), int(v) + 1))
        m = _widest_slope(lows, ups)
        if m is None:
            return None
        if not lows or not ups:  # a constant count: any slope
            m = max(m, 1.0 / (float(np.max(np.abs(y))) + 2.0))
        yl, vl = np.array([p[0] for p in lows], float), np.array([p[1] for p in lows], float)
        yu, vu = np.array([p[0] for p in ups], float), np.array([p[1] for p in ups], float)

        ends = []  # the feasible slopes: an interval around m (the gap is concave in S)
        for far in (m * 1e-3, min(2.0, 4 * m + 1)):
            inside, out = m, far
            for _ in range(60):
                mid = (inside + out) / 2
                c_lo, c_hi = _c_window(np.array([mid]), yl, vl, yu, vu)
                inside, out = (mid, out) if c_hi[0] > c_lo[0] else (inside, mid)
            ends.append(inside)
        s = np.linspace(ends[0], ends[1], 2049)[1:-1]
        s = np.concatenate([[m], s[np.argsort(np.abs(s - m))]]).astype(np.float32)
        s = s[s > 0].astype(np.float64)
        c_lo, c_hi = _c_window(s, yl, vl, yu, vu)
        c_lo = np.where(np.isfinite(c_lo), c_lo, c_hi - 1.0)
        c_hi = np.where(np.isfinite(c_hi), c_hi, c_lo + 1.0)
        b = np.round(((c_lo + c_hi) / 2 - zp - 0.5) / s)  # c = S B + zp + 0.5, mid-window
        c = s * b + zp + 0.5
        margin = np.minimum(c - c_lo, c_hi - c)
        got = None
        for i in np.flatnonzero(margin > 1e-4)[:16]:
            S, B = np.float32(s[i]), int(b[i])
            r = y + B
            if np.max(np.abs(r)) >= 2 ** 24:  # int32 -> float32 exact
                continue
            v = np.clip(r.astype(np.float32) * S, np.float32(-zp), np.float32(UINT8[1] - zp))
            if np.array_equal(np.clip(np.rint(v).astype(np.int64) + zp, 0, K), n):
                got = (S, B)
                break
        if got is None:
            return None
        S_out[ch], B_out[ch] = got
    return S_out, B_out


def _c_window(s: np.ndarray, yl, vl, yu, vu) -> tuple[np.ndarray, np.ndarray]:
    """For each slope ``s``, the window ``[c_lo, c_hi)`` of offsets ``c`` with ``s y + c >= v``
    at every lower constraint ``(yl, vl)`` and ``s y + c < v`` at every upper one ``(yu, vu)``."""
    c_hi = (np.min(vu[None, :] - s[:, None] * yu[None, :], axis=1) if len(yu) else
            np.full(len(s), np.inf))
    c_lo = (np.max(vl[None, :] - s[:, None] * yl[None, :], axis=1) if len(yl) else
            np.full(len(s), -np.inf))
    return c_lo, c_hi


def _widest_slope(lows: list, ups: list) -> float | None:
    """The slope ``m >= 0`` maximising ``min_up(v - m y) - max_low(v - m y)`` (the gap left for
    ``c``), when that gap is positive; None otherwise (no staircase)."""
    cand = {0.0, 1.0, 2.0}
    for lines in (lows, ups):
        for i, (y1, v1) in enumerate(lines):
            for y2, v2 in lines[i + 1:]:
                if y1 != y2:
                    r = (v1 - v2) / (y1 - y2)
                    if 0 <= r <= 2:
                        cand.add(r)
    ms = np.array(sorted(cand))
    g_hi = (np.min([v - ms * yy for yy, v in ups], axis=0) if ups else np.full(len(ms), np.inf))
    g_lo = (np.max([v - ms * yy for yy, v in lows], axis=0) if lows else np.full(len(ms), -np.inf))
    gap = g_hi - g_lo
    i = int(np.argmax(gap))
    return float(ms[i]) if gap[i] > 0 else None


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
    "BatchNormalization", "Div", "QLinearConv")} | {
    ("com.microsoft", "QLinearConv"),
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
    * every int8 ``QLinearConv`` (:func:`_qlinear_convs`, maybe in ONNX Runtime's channels-last
      form) has the original's weights, scales, zero points and offsets;
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

    def qconvs(m, c):
        # every QLinearConv's constant operands (weights, scales, zero points, offsets), by value
        return sorted(tuple(c[i].tobytes() + str(c[i].dtype).encode() if i in c else b"?"
                            for i in n.input[1:]) for n in m.graph.node
                      if n.op_type == "QLinearConv")

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
    if qconvs(original, consts(original)) != qconvs(optimised, c):
        why.append("the int8 convs' weights, scales or offsets differ from the original graph's")
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
