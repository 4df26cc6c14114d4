"""Run the ordered steps: progress, intermediate models, timings, verification, status file.

* prints ``[i/N] step (seconds)`` as each step ends;
* saves ``intermediate_models/NN_<step>.onnx`` (NN = the step's index in the build's step list);
* writes ``time_per_step.json`` and ``report/verification.json``;
* calls the verifier after every step whose graph executes here (qonnx ``execute_onnx``); graphs
  with specialised ``*_hls``/``*_rtl`` layers need cppsim/rtlsim, so they are reported as not
  verified with the reason;
* *raises* on failure (no debugger, no return codes).

The runner only runs: what a stage is checked against, and how, is :mod:`flow.proof.verify`'s
(:func:`~flow.proof.verify.verify_step` with a :data:`~flow.proof.verify.Verifier`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from qonnx.core.modelwrapper import ModelWrapper

from flow.hw.steps import FlowContext, Step
from flow.proof.verify import Verifier, verify_step
from sibnn_base import signals


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
    from flow.hw.steps import op_histogram

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
        signals.check()  # a signal that third-party code swallowed stops us here
        t0 = time.perf_counter()
        with _tool_output(ctx.out_dir / "build.log", step.name), _noted(step.name):
            model = step.fn(model, ctx)
        dt = time.perf_counter() - t0
        model.save(str(inter / f"{index:02d}_{step.name}.onnx"))
        rec = StepRecord(index, step.name, dt, "done", ops=op_histogram(model))
        if verifier is not None:
            t1 = time.perf_counter()
            with _tool_output(ctx.out_dir / "build.log", f"verify {step.name}"), \
                    _noted(f"verify {step.name}"):
                rec.verification = verify_step(step.name, model, verifier, ctx.tools.has_vivado)
            rec.verify_seconds = time.perf_counter() - t1
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
def _noted(step: str):
    """Name the step on any exception raised inside it (:func:`flow.guard.failed_step`)."""
    from flow.guard import STEP_NOTE

    try:
        yield
    except Exception as err:
        err.add_note(STEP_NOTE + step)
        raise


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
