"""Fusions of the golden graph: which IR nodes it computes together, and how.

:func:`flow.front.golden.emit.build_golden` plans them once per IR, then emits:

* a pad node read only by an unpadded conv folds into that conv (:func:`foldable_pads`), its
  constant border becoming one integer bias map (:func:`border_response`) or, for bits, the
  Conv's own zero padding;
* a sign (one threshold, outputs -1 / +1, :func:`is_sign`) read only by convs is carried as bits
  (:func:`bit_signs`, :func:`emit_bits`), the convs absorbing ``s = 2 b - 1``
  (:class:`ConvOperand`);
* a sign on a conv output read by nothing else is computed by the conv (:func:`sign_after_conv`,
  :func:`emit_conv_sign`);
* a threshold on such a conv output is computed with it by one uint8 ``QLinearConv`` where every
  channel fits its requantisation (:func:`qlinear_convs`, :func:`emit_qconv`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flow.front.golden.emitter import GraphEmitter, channel_shape
from flow.front.golden.staircase import UINT8, fit_requant_staircase
from flow.front.ir import IntegerIR


def foldable_pads(ir: IntegerIR) -> dict:
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


def _consumers(ir: IntegerIR) -> dict[str, list]:
    """The nodes reading each tensor of ``ir``."""
    out: dict[str, list] = {}
    for nd in ir.nodes:
        for i in nd.inputs:
            out.setdefault(i, []).append(nd)
    return out


def is_sign(nd, src) -> bool:
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


def sign_after_conv(ir: IntegerIR) -> dict:
    """Sign nodes (:func:`is_sign`) whose input is the output of an unpadded conv (the SI
    squeezes) read by nothing else, keyed by that conv output: the conv computes the sign itself
    (:func:`emit_conv_sign`)."""
    producer = {nd.output: nd for nd in ir.nodes}
    out = {}
    for nd, conv in _conv_thresholds(ir):
        src = nd.inputs[0]
        padded = any(conv.attrs["pads"]) or \
            getattr(producer.get(conv.inputs[0]), "op", None) == "pad"
        if not padded and is_sign(nd, ir.tensors[src]):
            out[src] = nd
    return out


def bit_signs(ir: IntegerIR, folded: dict) -> dict:
    """Sign nodes (:func:`is_sign`) whose output is read only by
    unpadded convs, directly or through a pad of value -1 folded into the conv, and is not a
    graph output, by output: the golden graph carries them as bits ``b = (s + 1) / 2`` in {0, 1}
    (:func:`emit_bits`, one op fewer than the sign) and their convs absorb ``s = 2 b - 1``
    (:func:`conv_operand`), which also removes the padded convs' border maps."""
    consumers = _consumers(ir)
    outputs = {o.tensor for o in ir.outputs}
    out = {}
    for nd in ir.nodes:
        if nd.op != "threshold" or nd.output in outputs or \
                not is_sign(nd, ir.tensors[nd.inputs[0]]):
            continue
        users = consumers.get(nd.output, [])

        def ok(u):
            if u.op == "conv":
                return not any(u.attrs["pads"])
            return u.op == "pad" and u.output in folded and float(u.attrs["value"]) == -1.0
        if users and all(ok(u) for u in users):
            out[nd.output] = nd
    return out


@dataclass
class QConv:
    """A conv and the threshold that alone reads it, computed by one uint8 ``QLinearConv``
    (:func:`qlinear_convs`): ONNX Runtime's integer kernels accumulate exactly, and its
    requantisation ``clamp(rint(f32(f32(acc + B) * S)) + zp, 0, 255)`` (one float32 product,
    rounded half to even) is made to compute the threshold's count ``n``: ``S, B`` per channel
    are fitted (:func:`fit_requant_staircase`) and checked on every integer of the accumulator's
    proven range. A ``Clip`` to ``[0, K]`` follows. The graph stores ``n``, i.e. the threshold's
    value ``base + n`` offset by ``-base`` (a sign's ``n`` is its bits)."""

    conv: object
    threshold: object
    scale: np.ndarray  # float32 per output channel, > 0
    offset: np.ndarray  # int64 per output channel: B, for y = d acc
    zero_point: int
    levels: int  # K


def qlinear_convs(ir: IntegerIR, folded: dict, bits_ok: dict) -> dict:
    """Thresholds whose input is a conv output read by nothing else (and no graph output), keyed
    by that conv output, that one uint8 ``QLinearConv`` computes: the conv's input spans at most
    256 integers (a sign: its bits), its weights are small (``|w| <= 64`` as the kernel sees
    them: ONNX Runtime's AVX2 kernels add pairs of 8-bit products in 16 bits), its output levels
    are ``base + n`` (``step`` 1) or a sign read only by convs (``bits_ok``), and every channel
    fits (:func:`fit_requant_staircase`)."""
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
            fit = fit_requant_staircase(a["thresholds"], np.asarray(a["direction"]),
                                        t.per_channel(t.lo), t.per_channel(t.hi), zp)
            if fit is not None:
                out[src] = QConv(conv, nd, fit[0], fit[1], zp, K)
                break
    return out


@dataclass
class ConvOperand:
    """How the golden graph computes a conv's integer accumulator:
    ``acc == Conv(x, weight, pads) + bias`` (``bias`` per output channel), all integers.

    ``x`` is the conv's IR input, or its bits (:func:`bit_signs`): ``s = 2 b - 1`` and a pad
    value of -1 is a pad value of 0 for ``b``, so ``conv(pad(s, -1), W) == conv(pad(b, 0), 2 W) -
    sum(W)`` and the padding is the Conv's own zero padding."""

    x: str
    weight: np.ndarray
    bias: np.ndarray
    pads: list


def conv_operand(conv, folded: dict, bits: dict) -> ConvOperand:
    """The :class:`ConvOperand` of an IR conv whose input is bits, or is not padded by a pad
    node (a folded pad of another value needs its border map: :func:`~flow.front.golden.emit.build_golden`)."""
    a = conv.attrs
    w = np.asarray(a["weight"], np.float64)
    src, pads = conv.inputs[0], list(a["pads"])
    pad = folded.get(src)
    if pad is not None:
        p = pad.attrs["pads"]
        src, pads = pad.inputs[0], [p[2], p[3], p[6], p[7]]
    if src in bits:
        return ConvOperand(src, 2 * w, -w.sum(axis=(1, 2, 3)), pads)
    if pad is not None:
        raise AssertionError(f"{conv.output}: a padded conv on a non-bit input has a border map")
    return ConvOperand(src, w, np.zeros(w.shape[0]), pads)


def qconv_operand(conv, folded: dict, bits: dict) -> tuple[ConvOperand, int]:
    """A conv as int8 ``QLinearConv`` sees it: ``acc == raw + bias`` with ``raw = sum (x - x_zp)
    w`` over the window padded with ``x_zp``. A pad node of value ``v`` becomes ``x_zp = v`` and
    the bias ``v sum(W)`` (each tap reads ``v``, or ``x = (x - v) + v``); bits take doubled
    weights and the bias ``-sum(W)`` (:func:`conv_operand`). Returns the operand and ``x_zp``."""
    pad = folded.get(conv.inputs[0])
    if pad is None or pad.inputs[0] in bits:
        return conv_operand(conv, folded, bits), 0
    op = conv_operand(conv, {}, bits)
    v = float(pad.attrs["value"])
    p = pad.attrs["pads"]
    op.x, op.pads = pad.inputs[0], [p[2], p[3], p[6], p[7]]
    op.bias = v * op.weight.sum(axis=(1, 2, 3))
    return op, int(v)


def border_response(shape, pads, conv_attrs) -> np.ndarray:
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


def emit_bits(e: GraphEmitter, nd, rank: int, x: str, offset: float = 0.0) -> None:
    """``b = [d v >= t] = clip(d x + 1 - t - d o, 0, 1)`` for integers ``v, t``, ``d = +-1``
    and ``x = v + o`` (the graph tensor holding ``v`` with the offset ``o``)."""
    thr, d = nd.attrs["thresholds"][:, 0], np.asarray(nd.attrs["direction"])
    cs = channel_shape(rank, len(thr))
    if np.any(d != 1):
        x = e.node("Mul", [x, e.const(d.astype(np.float32).reshape(cs), "dir")])
    one_minus = (1 - thr - d * offset).astype(np.float32).reshape(cs)
    y = e.node("Add", [x, e.const(one_minus, "one_minus_thr")])
    e.node("Clip", [y, e.const(np.float32(0), "zero"), e.const(np.float32(1), "one")], nd.output)


def emit_conv_sign(e: GraphEmitter, conv, sign, op: ConvOperand) -> None:
    """``sign(d acc >= t)`` as ``clip(Conv(x, 2dW) + 2d bias + 1 - 2t, -1, 1)`` (``d = +-1`` per
    output channel, ``acc = Conv(x, W) + bias``, :class:`ConvOperand`): the doubled conv and its
    bias are integers below 2**22 (:func:`is_sign`), exact in float32 in any summation order, and
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


def emit_qconv(e: GraphEmitter, q: QConv, op: ConvOperand, x_u8: str, x_zp: int) -> str:
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
