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

    * ``"compare"``: the K comparisons, broadcast and summed (the definition, slowest);
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
    for nd in ir.nodes:
        a = nd.attrs
        rank = len(shapes[nd.output])
        if nd.op == "input":
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
    if K == 1 and np.all(d == 1) and base == -1 and step == 2 and \
            np.all(np.abs(thr) < 2**22) and np.all(thr == np.round(thr)):
        # a sign: x >= t  <=>  x - t + 0.5 > 0 for integers x, t, and that half-integer is never
        # 0, so Sign gives exactly -1 / +1 (cheaper than a compare and a select)
        shifted = e.node("Add", [x, e.const((0.5 - thr).reshape(cs), "half_minus_thr")])
        e.node("Sign", [shifted], nd.output)
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
        if mode in ("auto", "staircase"):
            m, c, ok = _staircase(thr, d, vals, cnt)
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
        q = e.node("Clip", [e.node("Floor", [z]), e.const(np.float32(0), "lo"),
                            e.const(np.float32(K), "hi")])
        if step != 1:
            q = e.node("Mul", [q, e.const(step, "step")])
        if ok.all():
            e.node("Add", [q, e.const(base, "base")], nd.output)
            return
        # the few channels that are no staircase (ties to even): their own small table, looked
        # up on their slice of the tensor only and scattered over the staircase's result
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


def _staircase(thr: np.ndarray, d: np.ndarray, vals: np.ndarray, cnt: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel float32 ``(m, c)`` with ``clip(floor(x * m + c), 0, K) == cnt`` for every
    integer ``x`` of ``vals`` (C, L), computed exactly as ONNX Runtime computes it (float32 Mul,
    then Add, then Floor), and the mask of the channels where that holds (the others, e.g. a
    quantizer whose ties round to even on integer inputs, need the table).

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
    m32, c32 = m.astype(np.float32), c.astype(np.float32)
    z = vals.astype(np.float32) * m32[:, None]
    z = z + c32[:, None]
    got = np.clip(np.floor(z), np.float32(0), np.float32(K))
    ok = fitted & np.all(got == cnt.astype(np.float32), axis=1)
    return m32, c32, ok


def _foldable_pads(ir: IntegerIR) -> dict:
    """Pad nodes (spatial, constant value) whose only consumer is an unpadded conv, by output."""
    consumers: dict[str, list] = {}
    for nd in ir.nodes:
        for i in nd.inputs:
            consumers.setdefault(i, []).append(nd)
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


@dataclass
class GoldenModel:
    """A loaded golden model: deterministic ORT session (no graph optimisation)."""

    path: Path | None
    proto: onnx.ModelProto
    threads: int = 1

    def __post_init__(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(self.proto.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        self.meta = {p.key: p.value for p in self.proto.metadata_props}
        self.output_names = [o.name for o in self.session.get_outputs()]

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
        """Run on uint8 NHWC pixels; ``outputs`` limits what is computed (default: all)."""
        if pixels_nhwc.dtype != np.uint8 or pixels_nhwc.ndim != 4:
            raise ValueError("golden input must be uint8 NHWC pixels")
        names = outputs or self.output_names
        outs = self.session.run(names, {"pixels_nhwc": pixels_nhwc})
        return dict(zip(names, outs, strict=True))


def golden_from_qonnx(qonnx_model, threads: int = 1) -> tuple[GoldenModel, IntegerIR]:
    """Integerize a cleaned QONNX ``ModelWrapper`` and load its golden model."""
    from flow.front.integerize import integerize

    ir = integerize(qonnx_model)
    return GoldenModel(None, build_golden(ir), threads), ir
