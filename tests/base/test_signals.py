"""Signals at any moment: SIGINT, SIGTERM and SIGHUP sent to ``flow/build.py`` at many points of a
small build (start-up, torch's import, the export, between steps, while g++/Verilator compile the
generated code). Each time the CLI must exit ``128 + n`` within seconds with one line on stderr,
leave nothing of ours in temp (its own ``TMPDIR``, the sibling temp dirs, the compile cache),
keep the previous output byte-identical, keep ``<dir>.failed`` only once a step has run, and end
its child processes.

The default run lands a handful of signals, each at a moment it waits for (not a fixed sleep, so
the moment is the same on a fast and a slow machine); ``slow`` sweeps time offsets across the
whole build."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT, available_sim_mode

COMPILERS = {"g++", "cc1plus", "c++", "verilator", "verilator_bin", "make", "as", "ld"}
EXIT_WITHIN_S = 30.0
"""How long a signalled CLI may take to exit (seconds) on a loaded 2-core machine."""


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A finished TFC build (the previous output every signal must leave untouched), the TFC
    QONNX and a small build config."""
    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import export_bnn_pynq

    tmp = tmp_path_factory.mktemp("signals")
    onnx = export_bnn_pynq("TFC_1W1A", tmp / "tfc.onnx")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"verify_inputs": 4, "sim_inputs": 2, "sim_frames": 2}))
    small = tmp / "small.yaml"
    small.write_text(yaml.safe_dump({"verify_inputs": 4, "model_overrides":
                                     {"width": 4, "depth": [1], "input_size": 28}}))
    out = tmp / "out"
    build(resolve_build_config(str(cfg), onnx=str(onnx), output_dir=str(out),
                               stop_step="tidy_up"), echo=lambda *_: None)
    return {"onnx": onnx, "cfg": cfg, "small": small, "out": out, "before": _snapshot(out)}


def _tfc_sim_cmd(s: dict) -> list[str]:
    mode = available_sim_mode()
    extra = ["--stop-step", "hw_codegen"] + (["--sim", mode] if mode != "none" else [])
    return ["flow/build.py", "--onnx", str(s["onnx"]), "--config", str(s["cfg"]),
            "--output-dir", str(s["out"]), *extra]


def _model_cmd(s: dict) -> list[str]:
    return ["flow/build.py", "--model", "resnet_w1a1", "--config", str(s["small"]),
            "--output-dir", str(s["out"]), "--stop-step", "tidy_up"]


class _Run:
    """A CLI started as a user would start it, with its own TMPDIR and compile cache."""

    def __init__(self, argv: list[str], scratch: Path) -> None:
        self.tmpdir, self.cache = scratch / "tmp", scratch / "cache"
        self.tmpdir.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        env.update(TMPDIR=str(self.tmpdir), SIBNN_SIM_CACHE=str(self.cache))
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                      signal.SIG_DFL))
        self.out: list[str] = []
        self.reader = threading.Thread(target=lambda: self.out.extend(self.proc.stdout),
                                       daemon=True)
        self.reader.start()
        self.t0 = time.monotonic()

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait_for(self, trigger: tuple[str, float], limit: float = 300.0) -> bool:
        """Wait until ``trigger`` holds: ``("after", s)``, ``("steps", n)`` (n steps printed),
        ``("compiler", s)`` (a compiler child has run for s seconds). False if the CLI ended
        first."""
        kind, value = trigger
        seen = None
        while time.monotonic() - self.t0 < limit and self.proc.poll() is None:
            now = time.monotonic()
            if kind == "after" and now - self.t0 >= value:
                return True
            if kind == "steps" and sum(bool(re.match(r"\[\d+/\d+\]", ln))
                                       for ln in list(self.out)) >= value:
                return True
            if kind == "compiler":
                if any(p.name() in COMPILERS for p in self.descendants()):
                    seen = seen or now
                    if now - seen >= value:
                        return True
            time.sleep(0.05)
        return False


def _interrupt_and_check(s: dict, argv: list[str], trigger, sig: int, scratch: Path) -> str:
    """Run ``argv``, send ``sig`` at ``trigger``, check every promise; returns what happened."""
    run = _Run(argv, scratch)
    if not run.wait_for(trigger):
        run.proc.wait(timeout=600)
        pytest.fail(f"the build ended (exit {run.proc.returncode}) before {trigger}: "
                    "the trigger never fired")
    children = run.descendants()
    sent = time.monotonic()
    run.proc.send_signal(sig)
    try:
        err = run.proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        run.proc.kill()
        pytest.fail(f"{signal.Signals(sig).name} at {trigger}: the CLI did not exit in 120 s")
    took = time.monotonic() - sent
    run.reader.join(timeout=10)
    out, failed = s["out"], s["out"].with_name(s["out"].name + ".failed")
    what = f"{signal.Signals(sig).name} at {trigger}"
    assert run.proc.returncode == 128 + sig, (what, run.proc.returncode, err[-3000:])
    assert took < EXIT_WITHIN_S, (what, took)
    assert "Traceback" not in err and err.splitlines()[-1:] == [
        f"terminated by {signal.Signals(sig).name}"], (what, err[-3000:])
    assert sorted(p.name for p in out.parent.glob(f".{out.name}.*")) == [], what
    assert list(run.tmpdir.iterdir()) == [], (what, list(run.tmpdir.iterdir()))
    assert [p.name for p in run.cache.glob(".*")] == [], what  # no half-built cache entry
    time.sleep(0.5)
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], (what, [(p.pid, p.name()) for p in alive])
    assert _snapshot(out) == s["before"], what
    header = any(ln.startswith("sibnn-build:") for ln in run.out)
    if failed.exists():  # kept for inspection only once the build got to its steps
        assert header, (what, "a <dir>.failed before any step ran")
        assert '"status": "failed"' in (failed / "status.json").read_text(), what
        import shutil

        shutil.rmtree(failed)
    return f"{what}: exit {run.proc.returncode} in {took:.1f} s"


DEFAULT = [("model", ("after", 0.3), signal.SIGTERM),
           ("model", ("after", 2.5), signal.SIGHUP),
           ("model", ("after", 5.0), signal.SIGINT),
           ("tfc", ("steps", 2), signal.SIGTERM),
           ("tfc", ("compiler", 2.0), signal.SIGINT)]
"""Start-up, torch's import and the export (the --model path), between steps, and while the
generated code compiles."""


@pytest.mark.parametrize("which,trigger,sig", DEFAULT,
                         ids=[f"{w}-{t[0]}-{t[1]}-{signal.Signals(g).name}"
                              for w, t, g in DEFAULT])
def test_signal_at_a_moment_ends_the_build_cleanly(setup, which, trigger, sig, tmp_path):
    if which == "tfc" and trigger[0] == "compiler" and available_sim_mode() == "none":
        pytest.skip("needs g++ or Verilator with finn-hlslib (make deps) for --sim")
    argv = _tfc_sim_cmd(setup) if which == "tfc" else _model_cmd(setup)
    _interrupt_and_check(setup, argv, trigger, sig, tmp_path)


@pytest.mark.slow
def test_signal_at_every_offset_of_a_build(setup, tmp_path):
    """Time offsets every tenth of a reference run, for both builds, cycling the signals."""
    sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    results = []
    for which, argv in (("model", _model_cmd(setup)), ("tfc", _tfc_sim_cmd(setup))):
        ref = tmp_path / f"ref-{which}"
        t0 = time.monotonic()
        probe = [a if a != str(setup["out"]) else str(ref) for a in argv]
        subprocess.run([sys.executable, *probe], cwd=ROOT, check=True, capture_output=True,
                       env=dict(os.environ, SIBNN_SIM_CACHE=str(tmp_path / f"c-{which}")))
        total = time.monotonic() - t0
        # from 0.3 s: before that the interpreter is still starting, and no line of sibnn has
        # run (SIGTERM/SIGHUP then end it by their default action, before anything is written)
        offsets = [0.3, 0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0] + \
            [total * k / 10 for k in range(1, 9)]
        for i, dt in enumerate(offsets):
            results.append(_interrupt_and_check(setup, argv, ("after", dt), sigs[i % 3],
                                                tmp_path / f"{which}-{i}"))
    assert len(results) == 32


def _results_snapshot() -> dict[str, str]:
    return _snapshot(ROOT / "bench" / "results")


OTHER_CLIS = {
    "export": (["-m", "flow.proof.export", "--out", "{t}/exp"], ("after", 4.0)),
    "train": (["-m", "quant_models.train.cli", "--config", "{t}/train.yaml"], ("after", 6.0)),
    "bench-golden": (["-m", "bench.golden_speed", "--n", "8", "--repeats", "1"], ("after", 5.0)),
    "bench-sim": (["-m", "bench.sim", "--onnx", "{onnx}", "--jobs", "1"], ("compiler", 1.0)),
}
"""The other CLIs, each stopped once while it works: the export of the shipped model, a
training run, and two benchmarks (``slow``: the one stopped while its g++ children compile)."""


@pytest.mark.parametrize("name", [n if n != "bench-sim" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in OTHER_CLIS])
def test_signal_ends_every_other_cli_cleanly(setup, name, tmp_path):
    if name == "bench-sim" and available_sim_mode() != "all":
        pytest.skip("bench.sim needs g++, Verilator and finn-hlslib (make deps)")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(
        {"experiment": "t", "out_dir": str(tmp_path / "runs"), "num_threads": 1,
         "progress": False, "data": {"name": "digits", "val_size": 100},
         "model": {"width": 8, "depth": [1]},
         "stages": [{"name": "s", "student": "resnet_w1a1", "epochs": 200, "batch_size": 32}]}))
    argv, trigger = OTHER_CLIS[name]
    argv = [a.replace("{t}", str(tmp_path)).replace("{onnx}", str(setup["onnx"])) for a in argv]
    results = _results_snapshot()
    run = _Run(argv, tmp_path / "scratch")
    assert run.wait_for(trigger), f"{name} ended (exit {run.proc.returncode}) before {trigger}"
    children = run.descendants()
    run.proc.send_signal(signal.SIGTERM)
    err = run.proc.communicate(timeout=120)[1]
    assert run.proc.returncode == 143, (name, run.proc.returncode, err[-3000:])
    assert "Traceback" not in err and err.splitlines()[-1:] == ["terminated by SIGTERM"], err
    assert list(run.tmpdir.iterdir()) == [], list(run.tmpdir.iterdir())
    time.sleep(0.5)
    assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert not (tmp_path / "exp").exists()
    assert [p for p in tmp_path.rglob(".*") if p.parent.name != "scratch"] == []
    assert _results_snapshot() == results
