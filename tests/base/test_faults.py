"""Fault injection on sibnn-build: signals mid-build, a full disk, leftovers of killed runs and a
``<dir>.failed`` that is not ours. The previous output stays byte-identical and no temp dir is
left behind; nothing sibnn did not write is ever removed."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flow.build import build
from flow.config import resolve_build_config
from flow.front.export import export_bnn_pynq
from sibnn_base.errors import OutputDirError
from tests.conftest import ROOT


def _quiet(_msg: str) -> None:
    pass


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """A finished TFC build (to fold) that every fault below must leave untouched."""
    tmp = tmp_path_factory.mktemp("faults")
    onnx = export_bnn_pynq("TFC_1W1A", tmp / "tfc.onnx")
    out = tmp / "out"
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="fold"),
          echo=_quiet)
    return onnx, out


def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*"))


_PAUSED_BUILD = """
import pathlib, runpy, sys, time
import flow.hw.steps as steps
ready = pathlib.Path(sys.argv.pop(1))
i = [s.name for s in steps.BACK_END].index("fold")
real = steps.BACK_END[i]
def paused(model, ctx):
    model = real.fn(model, ctx)
    ready.touch()  # the build is now inside its temp dir, mid-run
    time.sleep(600)
    return model
steps.BACK_END[i] = steps.Step("fold", paused)
sys.argv[0] = "flow/build.py"
runpy.run_path("flow/build.py", run_name="__main__")
"""
"""``flow/build.py`` with its fold step paused until a signal arrives: the signal lands mid-build
on any machine, however fast (a fixed sleep raced the build on a fast CI runner)."""


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                      (signal.SIGHUP, 129)])
def test_signal_mid_build_keeps_the_previous_output_and_no_temp_dir(prior, sig, code, tmp_path):
    onnx, out = prior
    before = _snapshot(out)
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_BUILD, str(ready), "--onnx", str(onnx),
                             "--output-dir", str(out), "--stop-step", "fold"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored: undo that, as an
                            # interactive terminal would have it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists() and _temps(out), "the build never reached its fold step"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    assert _snapshot(out) == before
    assert _temps(out) == []
    failed = out.with_name(out.name + ".failed")
    if failed.exists():  # the started build is kept for inspection, marked as failed
        assert '"status": "failed"' in (failed / "status.json").read_text()


def test_full_disk_is_one_line_and_keeps_the_previous_output(prior, monkeypatch):
    onnx, out = prior
    before = _snapshot(out)
    import flow.report

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(flow.report, "write_summary", full)
    with pytest.raises(OutputDirError, match="No space left on device.*unchanged"):
        build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="fold"),
              echo=_quiet)
    assert _snapshot(out) == before and _temps(out) == []


def test_a_failed_dir_we_did_not_write_is_never_removed(prior, tmp_path):
    onnx, _ = prior
    out = tmp_path / "o"
    theirs = tmp_path / "o.failed"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("my notes\n")

    def broken_verifier(pixels, golden):
        def verify(step, model):
            if step == "convert_to_hw":
                raise RuntimeError("injected fault")
            return {"step": step, "exact": True, "n_inputs": 1, "seconds": 0.0}
        return verify

    with pytest.raises(RuntimeError, match="injected fault"):
        build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="fold"),
              echo=_quiet, verifier_factory=broken_verifier)
    assert (theirs / "notes.txt").read_text() == "my notes\n"
    ours = tmp_path / "o.failed-1"
    assert '"status": "failed"' in (ours / "status.json").read_text()
    assert not out.exists() and _temps(out) == []


def test_a_rerun_removes_stale_temp_dirs_of_ours_only(prior, tmp_path):
    onnx, _ = prior
    out = tmp_path / "o"
    stale = tmp_path / ".o.tmp-killed"
    stale.mkdir()
    (stale / ".sibnn-tmp").write_text("999999999")  # a pid that is not running
    foreign = tmp_path / ".o.tmp-someone-elses"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="tidy_up"),
          echo=_quiet)
    assert not stale.exists()
    assert (foreign / "data.bin").read_bytes() == b"x"
    assert not (out / ".sibnn-tmp").exists()


def test_partial_rerun_keeps_nothing_of_the_old_build_past_its_stop_step(prior, tmp_path):
    import shutil

    onnx, out = prior
    out2 = tmp_path / "o"
    shutil.copytree(out, out2)
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out2),
                               stop_step="generate_estimate_reports"), echo=_quiet)
    assert list((out2 / "report").glob("estimate_*.json"))
    build(resolve_build_config(onnx=str(onnx), output_dir=str(out2), start_step="fold",
                               stop_step="fold"), echo=_quiet)
    models = sorted(p.name for p in (out2 / "intermediate_models").glob("[0-9][0-9]_*.onnx"))
    assert models[-1].endswith("_fold.onnx"), models  # no minimize_bit_width, no estimates
    assert not list((out2 / "report").glob("estimate_*.json"))
    assert (out2 / "report" / "folding_config.json").is_file()


def test_one_ownership_rule_for_every_tool(prior, tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    _, out = prior
    proc = run_cli(["-m", "flow.proof.export", "--out", str(out)])
    assert_one_line_error(proc, str(out), "holds a sibnn 'build' result, not 'export'")


def test_full_disk_during_export_and_checkpoint_is_one_line(tmp_path, monkeypatch):
    import torch

    import sibnn_base.atomic
    from quant_models import build_model
    from quant_models.checkpoint import save_checkpoint

    m = build_model("resnet_w1a1", width=4, depth=[1], input_size=8)
    path = tmp_path / "m.pt"
    save_checkpoint(path, m)
    before = path.read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputDirError, match="No space left on device; the previous file"):
        save_checkpoint(path, m)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1
    out = tmp_path / "exp"
    monkeypatch.setattr(sibnn_base.atomic, "write_marker", full)
    with pytest.raises(OutputDirError, match="cannot write .*exp: No space left"):
        with sibnn_base.atomic.atomic_output_dir(out, "export") as d:
            (d / "x").write_text("x")
    assert not out.exists() and len(list(tmp_path.iterdir())) == 1
