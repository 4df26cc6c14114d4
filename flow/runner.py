"""Run the ordered steps: progress, intermediate models, timings, verification, status file.

* prints ``[i/N] step (seconds)`` as each step ends;
* saves ``intermediate_models/NN_<step>.onnx`` (NN = the step's index in the build's step list);
* writes ``time_per_step.json`` and ``report/verification.json``;
* calls the verifier after every step whose graph executes here (qonnx ``execute_onnx``); graphs
  with specialised ``*_hls``/``*_rtl`` layers need cppsim/rtlsim, so they are reported as not
  verified with the reason;
* *raises* on failure (no debugger, no return codes).

A verifier is any callable ``verifier(step_name, model) -> {"step", "exact", "n_inputs"}`` that
raises :class:`~sibnn_base.errors.VerificationError` on a mismatch. :class:`ChainVerifier` is the
local one: it checks every executable stage's integer scores against the first stage's, and the
first stage's against the exported model's float logits through the recorded output scale.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from sibnn_base.errors import VerificationError

from . import transforms as T
from .finn_env import HW_DOMAIN
from .steps import FlowContext, Step

Verifier = Callable[[str, ModelWrapper], dict]


def is_executable(model: ModelWrapper, has_vivado: bool = False) -> tuple[bool, str]:
    """Whether qonnx ``execute_onnx`` can run ``model`` here, and if not, why."""
    special = [n.name for n in model.graph.node if n.op_type.endswith(("_hls", "_rtl"))]
    if special:
        if has_vivado:
            return False, ("specialised HLS/RTL layers execute only in cppsim/rtlsim; running "
                           "them from this flow is not implemented yet (not verified)")
        return False, ("specialised HLS/RTL layers execute only in cppsim/rtlsim, which need "
                       "Vivado/Vitis HLS: Vivado not found (not verified)")
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




def stage_input(model: ModelWrapper, pixels: np.ndarray) -> np.ndarray:
    """The input ``model`` expects for uint8 ``pixels`` (NCHW): raw pixels once the input is
    ``UINT8``, ``pixels / 255`` (float32, like ``ToTensor``) before; NHWC when recorded."""
    name = model.graph.input[0].name
    if model.get_tensor_datatype(name) == DataType["UINT8"]:
        x = pixels.astype(np.float32)
    else:
        x = (pixels.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    if model.get_metadata_prop(T.INPUT_LAYOUT_KEY) == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x)


def execute_stage(model: ModelWrapper, pixels: np.ndarray) -> np.ndarray:
    """Run ``model`` on every image of ``pixels`` (batch 1 each, as FINN graphs are built)."""
    from qonnx.core.onnx_exec import execute_onnx

    x = stage_input(model, pixels)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    outs = [execute_onnx(model, {iname: x[i:i + 1]})[oname] for i in range(x.shape[0])]
    return np.concatenate(outs, axis=0)


def verification_pixels(hwc: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    """``n`` uint8 NHWC images: the golden harness' extremes (0, 255, constant, checkerboard, one
    bright pixel), seeded random ones, and real Fashion-MNIST images when installed and the shape
    fits (``flow.verify.make_inputs``)."""
    from .verify import load_real_images, make_inputs

    real = load_real_images(max(n, 1), seed) if tuple(hwc) == (28, 28, 1) else None
    return make_inputs(tuple(hwc), n, seed, real)


@dataclass
class GoldenVerifier:
    """Verify each stage against the golden model (``flow.verify.check_stage``).

    A stage whose float logit scale was removed (``sibnn_output_affine`` recorded) outputs integer
    scores even where FINN still annotates the output FLOAT32; the check then runs on a copy
    annotated ``INT32`` so the scores are compared as integers (and must be integral).
    """

    golden: object
    pixels: np.ndarray

    def __post_init__(self) -> None:
        self.gold = self.golden.run(self.pixels)

    def __call__(self, step: str, model: ModelWrapper) -> dict:
        import copy

        from .verify import check_stage

        out = model.graph.output[0].name
        stripped = bool(model.get_metadata_prop(T.OUTPUT_AFFINE_KEY))
        if not stripped and not model.get_tensor_datatype(out).is_integer() and \
                "logits" in self.gold:
            # float logits (the scale chain is still in the graph): bit-exact float32 equality
            y = execute_stage(model, self.pixels.transpose(0, 3, 1, 2))
            ref = self.gold["logits"].reshape(y.shape)
            if not np.array_equal(y, ref):
                idx, a, b = _first_mismatch(y, ref)
                raise VerificationError(f"step {step}: output {out} index {idx}: {a!r}, the "
                                        f"golden model's logits give {b!r}")
            return {"step": step, "exact": True, "n_inputs": int(len(y)), "against": "golden"}
        if stripped and not model.get_tensor_datatype(out).is_integer():
            model = copy.deepcopy(model)
            model.set_tensor_datatype(out, DataType["INT32"])
        res = check_stage(step, model, self.golden, self.pixels, gold=self.gold)
        return {"step": res["step"], "exact": res["exact"], "n_inputs": res["n_inputs"],
                "against": "golden"}


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> tuple[tuple, float, float]:
    idx = tuple(int(i) for i in np.argwhere(a != b)[0])
    return idx, float(a[idx]), float(b[idx])


@dataclass
class ChainVerifier:
    """Local integer-exactness check (used until ``flow.verify.check_stage`` is wired in).

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
        y = execute_stage(model, self.pixels_nhwc.transpose(0, 3, 1, 2))
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


@dataclass
class StepRecord:
    index: int
    name: str
    seconds: float
    status: str
    """``done``, ``skipped: <reason>``."""
    verification: dict | None = None
    verify_seconds: float = 0.0
    ops: dict = field(default_factory=dict)


def run_steps(model: ModelWrapper, steps: list[Step], ctx: FlowContext,
              verifier: Verifier | None, *, echo: Callable[[str], None] = print
              ) -> tuple[ModelWrapper, list[StepRecord]]:
    """Run ``steps`` on ``model`` inside ``ctx.out_dir``; raise on the first failure."""
    from .steps import op_histogram

    inter = ctx.out_dir / "intermediate_models"
    inter.mkdir(parents=True, exist_ok=True)
    records: list[StepRecord] = []
    total = len(steps)
    for i, step in enumerate(steps, start=1):
        index = ctx.all_steps.index(step)
        if step.vivado and not ctx.tools.has_vivado:
            rec = StepRecord(index, step.name, 0.0, ctx.tools.skipped)
            records.append(rec)
            echo(f"[{i}/{total}] {step.name} ({ctx.tools.skipped})")
            continue
        t0 = time.perf_counter()
        with _tool_output(ctx.out_dir / "build.log", step.name):
            model = step.fn(model, ctx)
        dt = time.perf_counter() - t0
        model.save(str(inter / f"{index:02d}_{step.name}.onnx"))
        rec = StepRecord(index, step.name, dt, "done", ops=op_histogram(model))
        ok, why = is_executable(model, ctx.tools.has_vivado)
        if verifier is not None:
            if ok:
                t1 = time.perf_counter()
                with _tool_output(ctx.out_dir / "build.log", f"verify {step.name}"):
                    rec.verification = verifier(step.name, model)
                rec.verify_seconds = time.perf_counter() - t1
            else:
                rec.verification = {"step": step.name, "exact": None, "n_inputs": 0,
                                    "reason": why}
                view = python_model_view(model)
                if view is not None:
                    # the HLS/RTL code needs cppsim/rtlsim, but FINN's python models of the same
                    # layers, with this stage's folding and datatypes, still run: a mismatch
                    # there is a real failure and raises
                    t1 = time.perf_counter()
                    with _tool_output(ctx.out_dir / "build.log", f"verify {step.name}"):
                        pm = verifier(step.name, view)
                    rec.verify_seconds = time.perf_counter() - t1
                    rec.verification["python_model"] = {"exact": pm["exact"],
                                                        "n_inputs": pm["n_inputs"]}
        records.append(rec)
        v = ""
        if rec.verification is not None:
            v = ("  exact" if rec.verification["exact"] else "  not verified") + \
                (" in cppsim/rtlsim; python model of the HW layers exact"
                 if rec.verification.get("python_model", {}).get("exact") else "") + \
                (f" ({rec.verify_seconds:.1f} s)" if rec.verify_seconds else "")
        echo(f"[{i}/{total}] {step.name} ({dt:.2f} s){v}")
        _write_progress(ctx.out_dir, records)
    return model, records


@contextmanager
def _tool_output(log: Path, title: str):
    """Send what FINN/qonnx print (and their Python warnings) to ``log`` instead of the console."""
    import warnings

    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), \
            warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: print(
            f"{cat.__name__}: {msg}", file=f)
        print(f"== {title}", file=f)
        yield


def _write_progress(out_dir: Path, records: list[StepRecord]) -> None:
    (out_dir / "time_per_step.json").write_text(json.dumps(
        {r.name: round(r.seconds, 4) for r in records if r.status == "done"}, indent=2))
    ver = [r.verification for r in records if r.verification is not None]
    report = out_dir / "report"
    report.mkdir(exist_ok=True)
    (report / "verification.json").write_text(json.dumps(
        {"stages": ver, "verify_seconds": {r.name: round(r.verify_seconds, 4) for r in records
                                           if r.verification is not None}}, indent=2))


def write_status(out_dir: Path, status: str, **extra) -> Path:
    """Write ``status.json`` (always: running, ok or failed, with the error)."""
    path = Path(out_dir) / "status.json"
    data = {"tool": "sibnn-build", "status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
