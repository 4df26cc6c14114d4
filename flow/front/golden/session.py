"""The golden model in ONNX Runtime: :class:`GoldenModel`, and the audit that lets it run
optimised.

ONNX Runtime's CPU graph optimisation is used only where :func:`audit_optimised` proves the
rewritten graph computes bit for bit what the emitted one does (:data:`OPTIMIZERS_OFF` are never
run); a run that asks for no tap uses a copy of the graph without them (:func:`prune_to`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from flow.front.golden.emit import build_golden
from flow.front.integerize import integerize
from flow.front.ir import IntegerIR

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
    ir = integerize(qonnx_model)
    return GoldenModel(None, build_golden(ir), threads), ir
