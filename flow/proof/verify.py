"""The exactness harness: Brevitas (torch), QONNX ``execute_onnx``, the golden model and every
executable FINN stage, compared on *integer* tensors with ``np.array_equal``.

Floats are turned into integers by dividing by their documented scale; a value that is not an
exact multiple of its scale is itself a failure. A mismatch raises :class:`VerificationError`
naming the tensor, the first differing index and both values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from flow.env.finn import HW_DOMAIN
from flow.front.golden import GoldenModel
from flow.hw import transforms as T
from sibnn_base.errors import VerificationError


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def make_inputs(hwc: tuple[int, int, int], n: int, seed: int,
                real: np.ndarray | None = None) -> np.ndarray:
    """``n`` uint8 NHWC images: extremes first (all 0, all 255, constant 128, a 0/255
    checkerboard, a single bright pixel), then seeded random (uniform, sparse, low-contrast), then
    up to a third real images from ``real`` (uint8 NHWC) if given."""
    h, w, c = hwc
    rng = np.random.default_rng(seed)
    fixed = [np.zeros(hwc), np.full(hwc, 255), np.full(hwc, 128),
             ((np.indices((h, w)).sum(0) % 2) * 255)[:, :, None].repeat(c, 2)]
    spot = np.zeros(hwc)
    spot[h // 2, w // 2, :] = 255
    fixed.append(spot)
    imgs = [f.astype(np.uint8) for f in fixed][:n]
    n_real = 0
    if real is not None and len(real):
        n_real = min(len(real), max(0, (n - len(imgs)) // 3))
        idx = rng.choice(len(real), n_real, replace=False)
        imgs += [real[i] for i in idx]
    while len(imgs) < n:
        kind = len(imgs) % 3
        if kind == 0:
            im = rng.integers(0, 256, hwc)
        elif kind == 1:
            im = np.where(rng.random(hwc) < 0.7, 0, rng.integers(0, 256, hwc))
        else:
            im = rng.integers(100, 140, hwc)
        imgs.append(im.astype(np.uint8))
    return np.stack(imgs[:n]).astype(np.uint8)


def pixels_to_x(pixels_nhwc: np.ndarray):
    """The float model input: ``x = pixels / 255`` in NCHW (torch float32)."""
    import torch

    px = np.ascontiguousarray(pixels_nhwc) if pixels_nhwc.flags.writeable else pixels_nhwc.copy()
    return torch.from_numpy(px).permute(0, 3, 1, 2).contiguous().float() / 255.0


# ------------------------------------------------------------------------------------------------
# Executors
# ------------------------------------------------------------------------------------------------
def run_brevitas(model, pixels_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the torch model: ``logits`` and, when it has them, every tap."""
    import torch

    x = pixels_to_x(pixels_nhwc)
    with torch.no_grad():
        if hasattr(model, "forward_taps"):
            logits, taps = model.forward_taps(x)
            out = {"logits": logits.numpy()}
            out.update({k: v.numpy() for k, v in taps.items()})
            return out
        return {"logits": model(x).numpy()}


def run_qonnx(model, pixels_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """The QONNX graph executed by qonnx, one image at a time (exported graphs have batch 1),
    through :class:`StageExecutor`."""
    x = pixels_to_x(pixels_nhwc).numpy()
    in_name = model.graph.input[0].name
    shape = model.get_tensor_shape(in_name)
    names = [o.name for o in model.graph.output]
    outs: dict[str, list] = {o: [] for o in names}
    run = StageExecutor(model)
    for i in range(len(x)):
        r = run({in_name: x[i:i + 1].reshape(shape)})
        for k in outs:
            outs[k].append(r[k])
    res = {k: np.concatenate(v) for k, v in outs.items()}
    res["logits"] = res.pop(names[0])  # the primary output, whatever the exporter named it
    return res


# ------------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    tensor: str
    between: str
    exact: bool
    n_values: int


@dataclass
class Report:
    comparisons: list[Comparison] = field(default_factory=list)
    n_inputs: int = 0
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return all(c.exact for c in self.comparisons)

    def to_dict(self) -> dict:
        return {"exact": self.exact, "n_inputs": self.n_inputs, "seconds": round(self.seconds, 3),
                "comparisons": [c.__dict__ for c in self.comparisons]}


def to_int_grid(values: np.ndarray, scale, name: str, source: str) -> np.ndarray:
    """The integers ``q`` with ``float32(q * scale) == values`` bit for bit, as int64.

    ``q = rint(values / scale)``; a value whose float32 product ``q * scale`` does not reproduce it
    exactly is off its grid, and that is a failure (no tolerance anywhere).
    """
    values = np.asarray(values)
    s = np.asarray(scale, dtype=np.float32)
    if s.ndim == 1 and s.size > 1 and values.ndim >= 2:
        s = s.reshape((1, -1) + (1,) * (values.ndim - 2))
    q = np.rint(values.astype(np.float64) / s.astype(np.float64))
    recon = q.astype(np.float32) * s
    bad = np.argwhere(recon != values.astype(np.float32))
    if bad.size:
        i = tuple(bad[0])
        raise VerificationError(
            f"{source}: tensor {name} is off its grid at index {list(map(int, i))}: "
            f"{values[i]!r} is not float32(integer * {float(np.ravel(s)[0]):g})")
    return q.astype(np.int64)


def assert_equal(name: str, expected: np.ndarray, got: np.ndarray, between: str) -> Comparison:
    """``np.array_equal`` or a :class:`VerificationError` with the first differing index."""
    if expected.shape != got.shape:
        raise VerificationError(f"{between}: tensor {name} has shape {got.shape}, expected "
                                f"{expected.shape}")
    if not np.array_equal(expected, got):
        idx = tuple(np.argwhere(expected != got)[0])
        n_bad = int(np.count_nonzero(expected != got))
        raise VerificationError(
            f"{between}: tensor {name} differs at index {list(map(int, idx))}: expected "
            f"{expected[idx]!r}, got {got[idx]!r} ({n_bad} of {expected.size} values differ)")
    return Comparison(name, between, True, int(expected.size))


def compare_to_golden(outputs: dict[str, np.ndarray], gold: dict[str, np.ndarray],
                      golden: GoldenModel, source: str) -> list[Comparison]:
    """Compare a float model's outputs (``logits`` + taps) with the golden model's integers."""
    res = []
    logits = outputs["logits"]
    scale = golden.scale
    if scale is not None:
        ints = to_int_grid(logits, scale, "logits", source)
        res.append(assert_equal("scores", gold["scores"].astype(np.int64), ints,
                                f"golden vs {source}"))
    res.append(assert_equal("logits (float32 bits)", gold["logits"], logits.astype(np.float32),
                            f"golden vs {source}"))
    for tap, s in golden.tap_scales.items():
        if tap in outputs:
            ints = to_int_grid(outputs[tap], s, tap, source)
            res.append(assert_equal(tap, gold[tap].astype(np.int64), ints, f"golden vs {source}"))
    return res


def verify(golden: GoldenModel, pixels_nhwc: np.ndarray, *, torch_model=None,
           qonnx_model=None) -> Report:
    """Golden vs Brevitas and/or QONNX on ``pixels_nhwc``. Raises on the first mismatch."""
    t0 = time.perf_counter()
    rep = Report(n_inputs=len(pixels_nhwc))
    gold = golden.run(pixels_nhwc)
    if torch_model is not None:
        rep.comparisons += compare_to_golden(run_brevitas(torch_model, pixels_nhwc), gold, golden,
                                             "brevitas")
    if qonnx_model is not None:
        rep.comparisons += compare_to_golden(run_qonnx(qonnx_model, pixels_nhwc), gold, golden,
                                             "qonnx")
    rep.seconds = time.perf_counter() - t0
    return rep


# ------------------------------------------------------------------------------------------------
# FINN stages
# ------------------------------------------------------------------------------------------------
def stage_input(model, pixels_nhwc: np.ndarray) -> np.ndarray:
    """The input a FINN-stage graph expects for uint8 ``pixels_nhwc``: raw pixels once its input
    is ``UINT8``, ``pixels / 255`` (float32, like ``ToTensor``) before; NHWC where the graph
    records it (``sibnn_input_layout``, set by the lowering and by our input transforms), NCHW
    otherwise. The one place that decides a stage's input layout."""
    name = model.graph.input[0].name
    x = pixels_nhwc.astype(np.float32)
    if model.get_tensor_datatype(name) != DataType["UINT8"]:
        x = (x / np.float32(255.0)).astype(np.float32)
    if model.get_metadata_prop(T.INPUT_LAYOUT_KEY) != "NHWC":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


class StageExecutor:
    """qonnx's node execution of one stage graph, image after image, stricter and faster than
    ``execute_onnx``.

    Every node runs through qonnx's own ``execute_node`` (FINN's python models for the HW ops,
    ONNX Runtime for standard ops), in graph order. What differs from ``execute_onnx``:

    * **no silent rounding.** ``execute_onnx`` passes every tensor through
      ``sanitize_quant_values``, which *rounds* a value that is off its datatype annotation (with a
      warning) and never checks ranges. Here every node output annotated with an integer datatype
      must already be an integer, and every output of a HW layer (``fpgadataflow`` domain: its
      annotation is the stream's width in hardware) must also be in its type's range, or
      :class:`~sibnn_base.errors.VerificationError` names the node, the tensor and the first bad
      index. (Range is not checked before the HW layers: FINN's ConvertQONNXtoFINN annotates a
      signed quantizer's threshold count, 0..2**b - 1 before its bias Add, with the signed type.)
    * the initializers are converted once per stage, not once per image, and are read-only, so a
      node that wrote into its parameters would raise instead of corrupting the next image.
    """

    def __init__(self, model: ModelWrapper) -> None:
        from qonnx.util.basic import get_preferred_qonnx_opset

        if not model.check_all_tensor_shapes_specified():
            raise VerificationError("stage graph has tensors without shapes (run InferShapes)")
        self.model = model
        self.template = model.make_empty_exec_context()
        inits = {t.name for t in model.graph.initializer}
        for name in inits:
            arr = self.template[name]
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False
        self.buffers = [k for k, v in self.template.items()
                        if k not in inits and isinstance(v, np.ndarray)]
        opsets = model.get_opset_imports()
        default = get_preferred_qonnx_opset()
        self.nodes = []
        for n in model.graph.node:  # (node, opset, its outputs annotated with integer types)
            hw = n.domain.startswith(HW_DOMAIN)
            ints = [(o, dt if hw else None) for o in n.output
                    if (dt := model.get_tensor_datatype(o)) is not None and dt.is_integer()]
            self.nodes.append((n, opsets.get(n.domain, default), ints))

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on one input dict; the full execution context."""
        from qonnx.core.onnx_exec import execute_node

        ctx = dict(self.template)
        for k in self.buffers:
            ctx[k] = np.zeros_like(self.template[k])
        for name, value in inputs.items():
            if name in ctx and ctx[name].shape != value.shape:
                raise VerificationError(f"stage input {name} has shape {value.shape}, the graph "
                                        f"expects {ctx[name].shape}")
            ctx[name] = value
        graph = self.model.graph
        for node, opset, ints in self.nodes:
            execute_node(node, ctx, graph, opset)
            for out, dt in ints:
                v = ctx[out]
                ok = dt.allowed(v) if dt is not None else np.round(v) == v
                if not np.all(ok):
                    idx = tuple(int(i) for i in np.argwhere(~np.asarray(ok))[0])
                    what = (f"a {dt.name} value, as the HW layer's annotation says" if dt is not None
                            else f"an integer, as its {self.model.get_tensor_datatype(out).name} "
                                 "annotation says")
                    raise VerificationError(
                        f"node {node.name} ({node.op_type}): output {out}[{list(idx)}] = "
                        f"{v[idx]!r} is not {what}")
        return ctx


def execute_stage(model, pixels_nhwc: np.ndarray) -> np.ndarray:
    """Run a FINN-stage graph on every image of ``pixels_nhwc``, batch 1 each as FINN graphs are
    built (:class:`StageExecutor`); returns the primary output. The one stage executor."""
    x = stage_input(model, pixels_nhwc)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    shape = model.get_tensor_shape(iname)
    run = StageExecutor(model)
    outs = [run({iname: x[i:i + 1].reshape(shape)})[oname] for i in range(x.shape[0])]
    return np.concatenate(outs, axis=0)


def check_scores(step: str, model, y: np.ndarray, golden: GoldenModel, gold: dict,
                 integer: bool = False) -> None:
    """``y`` (``model``'s primary output, however computed) reduced to integer scores equals the
    golden model's ``gold["scores"]``; ``integer`` forces the output to be read as integers (a
    stage whose logit scale was removed). Raises :class:`VerificationError`."""
    y = y.reshape(gold["scores"].shape)
    oname = model.graph.output[0].name
    dt = model.get_tensor_datatype(oname)
    if integer or (dt is not None and dt.is_integer() and dt != DataType["FLOAT32"]):
        ints = to_int_grid(y, 1.0, oname, f"step {step}")
    elif golden.scale is not None:
        ints = to_int_grid(y, golden.scale, oname, f"step {step}")
    else:
        raise VerificationError(f"step {step}: float output and no documented scale")
    assert_equal("scores", gold["scores"].astype(np.int64), ints, f"golden vs step {step}")


# ------------------------------------------------------------------------------------------------
# Build-stage verifiers (what flow.runner calls after every step)
# ------------------------------------------------------------------------------------------------
Verifier = Callable[[str, ModelWrapper], dict]


def is_executable(model: ModelWrapper, has_vivado: bool = False) -> tuple[bool, str]:
    """Whether qonnx ``execute_onnx`` can run ``model`` here, and if not, why."""
    special = [n.name for n in model.graph.node if n.op_type.endswith(("_hls", "_rtl"))]
    if special:
        if has_vivado:
            return False, ("specialised HLS/RTL layers execute only in cppsim/rtlsim; running "
                           "them from this flow is not implemented yet (not verified)")
        return False, ("specialised HLS/RTL layers execute in FINN only in cppsim/rtlsim, which "
                       "need Vivado/Vitis HLS: Vivado not found (not verified at this step; "
                       "--sim all runs the generated code with g++/Verilator after hw_codegen)")
    if any(n.op_type == "StreamingDataflowPartition" for n in model.graph.node):
        return False, "a dataflow partition node (its child model is verified instead)"
    return True, ""


def python_model_view(model: ModelWrapper) -> ModelWrapper | None:
    """A copy of a specialised graph with every ``*_hls``/``*_rtl`` layer mapped back to its
    FINN HW-abstraction op (same attributes), whose python execution models the layer: folding,
    datatypes and thresholds are checked even where cppsim/rtlsim cannot run. None if the graph
    has no specialised layers or holds a partition node."""
    import copy

    if any(n.op_type == "StreamingDataflowPartition" for n in model.graph.node):
        return None
    special = [n for n in model.graph.node if n.op_type.endswith(("_hls", "_rtl"))]
    if not special:
        return None
    view = copy.deepcopy(model)
    for n in view.graph.node:
        if n.domain.startswith(HW_DOMAIN + ".") and n.op_type.endswith(("_hls", "_rtl")):
            n.op_type = n.op_type.rsplit("_", 1)[0]
            n.domain = HW_DOMAIN
    return view




def verification_pixels(hwc: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    """``n`` uint8 NHWC images: the golden harness' extremes (0, 255, constant, checkerboard, one
    bright pixel), seeded random ones, and real Fashion-MNIST images when installed and the shape
    fits (:func:`make_inputs`)."""
    real = load_real_images(max(n, 1), seed) if tuple(hwc) == (28, 28, 1) else None
    return make_inputs(tuple(hwc), n, seed, real)


@dataclass
class GoldenVerifier:
    """Verify each stage against the golden model (:func:`check_scores`).

    A stage whose float logit scale was removed (``sibnn_output_affine`` recorded) outputs integer
    scores even where FINN still annotates the output FLOAT32; they are read as integers (and
    must be integral).
    """

    golden: object
    pixels: np.ndarray

    def __post_init__(self) -> None:
        self.gold = self.golden.run(self.pixels, ["scores", "logits"])  # no taps: primary()

    def __call__(self, step: str, model: ModelWrapper) -> dict:
        return self.check(step, model, execute_stage(model, self.pixels))

    def check(self, step: str, model: ModelWrapper, y: np.ndarray) -> dict:
        """Compare ``y``, ``model``'s primary output on :attr:`pixels` however it was computed
        (python execution, or generated code in :mod:`flow.sim.simulate`), with the golden
        model."""
        out = model.graph.output[0].name
        stripped = bool(model.get_metadata_prop(T.OUTPUT_AFFINE_KEY))
        dt = model.get_tensor_datatype(out)
        if not stripped and not dt.is_integer() and "logits" in self.gold:
            # float logits (the scale chain is still in the graph): bit-exact float32 equality
            ref = self.gold["logits"].reshape(y.shape)
            if not np.array_equal(y, ref):
                idx, a, b = _first_mismatch(y, ref)
                raise VerificationError(f"step {step}: output {out} index {idx}: {a!r}, the "
                                        f"golden model's logits give {b!r}")
            return {"step": step, "exact": True, "n_inputs": int(len(y)), "against": "golden"}
        check_scores(step, model, y, self.golden, self.gold, integer=stripped)
        return {"step": step, "exact": True, "n_inputs": int(len(y)), "against": "golden"}


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> tuple[tuple, float, float]:
    idx = tuple(int(i) for i in np.argwhere(a != b)[0])
    return idx, float(a[idx]), float(b[idx])


@dataclass
class ChainVerifier:
    """Local integer-exactness check, for graphs the golden model does not cover.

    Used where the golden model does not cover a graph. The first call must see the exported model
    (float logits). Later stages must reproduce the logits bit for bit through the recorded output
    ops, and once they output integer scores ``s`` those must equal the first stage's scores
    (``np.array_equal``). ``pixels`` are uint8 NHWC.
    """

    pixels_nhwc: np.ndarray
    logits: np.ndarray | None = None
    scores: np.ndarray | None = None
    scores_step: str = ""

    def __call__(self, step: str, model: ModelWrapper) -> dict:
        y = execute_stage(model, self.pixels_nhwc)
        tensor = model.graph.output[0].name
        recorded = json.loads(model.get_metadata_prop(T.OUTPUT_AFFINE_KEY) or "[]")
        if self.logits is None:
            self.logits = y
            if not recorded and np.array_equal(y, np.round(y)):
                self.scores, self.scores_step = y, step
            return {"step": step, "exact": True, "n_inputs": int(len(y)), "against": "export"}
        if y.shape != self.logits.shape:
            raise VerificationError(f"step {step}: output {tensor} has shape {y.shape}, "
                                    f"expected {self.logits.shape}")
        back = T.apply_output_affine(y, recorded)
        if not np.array_equal(back, self.logits):
            idx, a, b = _first_mismatch(back, self.logits)
            raise VerificationError(f"step {step}: output {tensor} index {idx}: gives logit "
                                    f"{a!r}, the exported model gives {b!r}")
        if not recorded and self.scores is None:
            return {"step": step, "exact": True, "n_inputs": int(len(y)), "against": "export"}
        if not np.array_equal(y, np.round(y)):
            idx = tuple(int(i) for i in np.argwhere(y != np.round(y))[0])
            raise VerificationError(f"step {step}: output {tensor}[{idx}] = {y[idx]!r} is not an "
                                    "integer score")
        if self.scores is None:
            self.scores, self.scores_step = y, step
        elif not np.array_equal(y, self.scores):
            idx, a, b = _first_mismatch(y, self.scores)
            raise VerificationError(f"step {step}: output {tensor} index {idx}: {a!r} != {b!r} "
                                    f"after step {self.scores_step}")
        return {"step": step, "exact": True, "n_inputs": int(len(y)), "against": "export"}


def verify_step(step: str, model, verifier: Verifier, has_vivado: bool = False) -> dict:
    """Check one build stage with ``verifier``: directly where the graph executes here; where it
    holds specialised HLS/RTL layers, through FINN's python models of the same layers (a mismatch
    there raises too), reported as not verified in cppsim/rtlsim with the reason."""
    ok, why = is_executable(model, has_vivado)
    if ok:
        return verifier(step, model)
    rec = {"step": step, "exact": None, "n_inputs": 0, "reason": why}
    view = python_model_view(model)
    if view is not None:
        pm = verifier(step, view)
        rec["python_model"] = {"exact": pm["exact"], "n_inputs": pm["n_inputs"]}
    return rec


def load_real_images(n: int, seed: int = 0) -> np.ndarray | None:
    """Up to ``n`` Fashion-MNIST test images (uint8 NHWC) if the Debian package is installed."""
    from quant_models.data import sample_test_images

    return sample_test_images(n, seed)
