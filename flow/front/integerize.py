"""QONNX -> exact integer IR: the arithmetic every later stage must reproduce bit for bit.

The cleaned QONNX graph is walked in topological order. Every tensor becomes one of

* :class:`IntTensor`: an integer tensor ``q`` with ``real = scale * q`` (``scale`` per tensor or
  per channel) and per-channel integer bounds, computed exactly;
* :class:`Pending`: a float32 function (``FloatOp`` chain, evaluated with *torch*, i.e. with
  Brevitas' own kernels) of an :class:`IntTensor`, not yet quantised;
* a constant.

A ``Quant``/``BipolarQuant`` on a :class:`Pending` becomes a ``threshold`` :class:`IRNode`: for every
channel the float32 function is evaluated on *every* integer of the accumulator's range and the
thresholds are read off, so the result is exact by construction, ties included (Brevitas rounds
half to even; FINN's formula ``(k - 0.5) * s`` would round them up). Accumulations are exact
because every value is a small integer (the bound is checked against float32's 2**24).

The IR (:mod:`flow.front.ir`) is emitted as a standard-ONNX golden model by
:mod:`flow.front.golden` and lowered to a FINN graph by :mod:`flow.hw.lower`. The walker
(:class:`Integerizer`) dispatches each node to its ``op_<OpType>`` handler
(:mod:`flow.front.quant`, :mod:`flow.front.op_handlers`); the ops that have one are
:data:`INTEGER_IR_OPS`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from flow.front.ir import F32_EXACT, FloatOp, IntegerIR, IntTensor, IRNode, IROutput, Pending
from flow.front.op_handlers import SHAPE_OPS, FloatOpHandlers, IntegerOpHandlers, LinearHandlers
from flow.front.quant import QuantConst, QuantizerHandlers
from sibnn_base.errors import UnsupportedGraphError


class Integerizer(QuantizerHandlers, LinearHandlers, IntegerOpHandlers, FloatOpHandlers):
    """Walks a cleaned QONNX graph in topological order into an :class:`IntegerIR`: constants
    are folded, every other node goes to its ``op_<OpType>`` handler (the mixins)."""

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
               if n.op_type not in INTEGER_IR_OPS or (n.domain not in ("", "ai.onnx")
                                                      and n.op_type not in ("Quant", "BipolarQuant"))]
        if bad:
            raise UnsupportedGraphError(
                f"unsupported op(s): {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; "
                f"sibnn maps {', '.join(sorted(INTEGER_IR_OPS))}")

    def is_const(self, name: str) -> bool:
        return (name == "" or self.mw.get_initializer(name) is not None
                or isinstance(self.env.get(name), (np.ndarray, QuantConst)))

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
        ins = [self.env.get(i) if isinstance(self.env.get(i), QuantConst) else self.const(i)
               for i in node.input]
        if op in ("Quant", "BipolarQuant"):
            q, spec = self.quant_const(node, ins)
            return QuantConst(q, spec)
        if isinstance(ins[0], QuantConst) and op in SHAPE_OPS:
            qc = ins[0]
            if np.asarray(qc.spec.scale).size > 1:
                raise UnsupportedGraphError(f"{op} {node.name}: reshapes per-channel weight scales")
            q = _run_single(node, [qc.q.astype(np.float32)] + ins[1:]).astype(np.int64)
            return QuantConst(q, qc.spec)
        if any(isinstance(v, QuantConst) for v in ins):
            raise UnsupportedGraphError(f"cannot fold {op} node {node.name} on quantised weights")
        return _run_single(node, ins)


INTEGER_IR_OPS = frozenset(name[len("op_"):] for name in dir(Integerizer) if name.startswith("op_"))
"""The ONNX/QONNX ops the integer IR maps: those with an ``op_<OpType>`` handler. What the golden
model and the exact front end take (:mod:`flow.front.support` derives a build's set from it)."""


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
