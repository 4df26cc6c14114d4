"""The CLIs' contract beyond bad input: the exit-code table (0 ok, 2 bad input or tool, 3
verification failed, 1 internal error with the log path, 128+n signal), exceptions from the graph
tools inside a step, third-party warnings kept off stderr (``-v`` shows them), and checkpoints
without a payload hash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

SI_RESNET_W1A1_PAYLOAD = "103adedea3215785471dc5601b1a3840b67c2ee6daeed4d9e4c9d44bd69349d7"
"""The payload sha256 of the shipped ``si_resnet_w1a1_fmnist.pt``'s tensors, computed from the
file as it was shipped before it carried the hash: the re-saved file holds the same tensors."""


def test_every_shipped_checkpoint_carries_its_payload_hash():
    from quant_models.checkpoint import load_checkpoint, payload_sha256
    from quant_models.registry import PRETRAINED_DIR, get_entry, list_models, verify_sha256

    shipped = [get_entry(n).pretrained for n in list_models() if get_entry(n).pretrained]
    assert len(shipped) >= 3
    for entry in shipped:
        path = PRETRAINED_DIR / entry.file
        verify_sha256(path, entry.sha256)
        ckpt = load_checkpoint(path, strict=True)  # checks the tensors against the hash
        assert ckpt["payload_sha256"] == payload_sha256(ckpt["state_dict"])
    ckpt = load_checkpoint(PRETRAINED_DIR / "si_resnet_w1a1_fmnist.pt")
    assert ckpt["payload_sha256"] == SI_RESNET_W1A1_PAYLOAD


def test_an_unhashed_checkpoint_loads_with_a_warning_and_strict_refuses_it(tmp_path):
    import torch

    from quant_models import build_model
    from quant_models.checkpoint import (
        UnverifiedCheckpointWarning,
        load_checkpoint,
        make_checkpoint,
    )
    from sibnn_base.errors import CheckpointError

    ckpt = make_checkpoint(build_model("resnet_w1a1", width=4, depth=[1], input_size=8))
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "payload_sha256"}, path)
    with pytest.warns(UnverifiedCheckpointWarning, match="no payload_sha256"):
        assert load_checkpoint(path)["arch"] == "resnet_w1a1"
    with pytest.raises(CheckpointError, match="strict-checkpoint"):
        load_checkpoint(path, strict=True)


def _build_cli(args: list[str], **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    e.update(env)
    return subprocess.run([sys.executable, "flow/build.py", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("verbose", [False, True])
def test_warnings_go_to_the_log_and_v_shows_them(tmp_path, verbose):
    """Every warning forced on (``PYTHONWARNINGS=always``): the library's own (Brevitas, torch)
    and ours (an unhashed checkpoint) all land in build.log; stderr stays empty unless ``-v``."""
    import torch

    from quant_models import build_model
    from quant_models.checkpoint import make_checkpoint

    ckpt = make_checkpoint(build_model("resnet_w1a1", width=4, depth=[1], input_size=28))
    torch.save({k: v for k, v in ckpt.items() if k != "payload_sha256"}, tmp_path / "old.pt")
    out = tmp_path / "b"
    proc = _build_cli(["--model", "resnet_w1a1", "--checkpoint", str(tmp_path / "old.pt"),
                       "--output-dir", str(out), "--stop-step", "lower"] + (["-v"] * verbose),
                      PYTHONWARNINGS="always")
    assert proc.returncode == 0, proc.stderr
    log = (out / "build.log").read_text()
    assert "UnverifiedCheckpointWarning: checkpoint" in log
    assert [ln for ln in log.splitlines() if "Warning" in ln and "site-packages" in ln]
    if verbose:
        assert "UnverifiedCheckpointWarning" in proc.stderr
    else:
        assert proc.stderr == ""


def test_an_internal_error_is_one_line_naming_the_log_with_the_traceback(tmp_path, capsys,
                                                                        monkeypatch):
    import signal
    import warnings

    from sibnn_base import runlog
    from sibnn_base.errors import SimulationBuildError, cli_errors

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    runlog.attach(None)

    def broken(_argv=None):
        return {}["missing"]

    assert cli_errors(broken)() == 1
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.startswith("internal error: KeyError: 'missing'")
    log = Path(line.split("(traceback: ")[1].rstrip(")\n"))
    assert log.is_relative_to(tmp_path) and "Traceback" in log.read_text()

    def gxx_failed(_argv=None):  # g++ on our generated code: ours to fix, so exit 1 too
        raise SimulationBuildError("g++ failed on node MVAU_hls_0 (log: x/compile.log)")

    assert cli_errors(gxx_failed)() == 1
    assert capsys.readouterr().err.startswith("internal error: g++ failed on node MVAU_hls_0")
    runlog.attach(None)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _shape_breaking_verifier(pixels, golden):
    """A verifier that, at ``convert_to_hw``, hands qonnx's executor an input of the wrong shape:
    an exception raised by qonnx's own code inside a step."""
    from qonnx.core.onnx_exec import execute_onnx

    def verify(step, model):
        if step == "convert_to_hw":
            execute_onnx(model, {model.graph.input[0].name: np.zeros((1, 3), np.float32)})
        return {"step": step, "exact": True, "n_inputs": 1, "seconds": 0.0}
    return verify


def test_a_graph_tool_exception_in_a_step_is_one_line_exit_2(tmp_path):
    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import export_bnn_pynq
    from sibnn_base.errors import UnsupportedGraphError

    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc.onnx")
    out = tmp_path / "o"
    with pytest.raises(UnsupportedGraphError,
                       match=r"qonnx cannot take this model at step verify convert_to_hw: "
                             r"Exception: Shape mismatch .*\(traceback: o\.failed/build\.log\)"):
        build(resolve_build_config(onnx=str(onnx), output_dir=str(out), stop_step="fold",
                                   verify_inputs=4), echo=lambda *_: None,
              verifier_factory=_shape_breaking_verifier)
    log = (tmp_path / "o.failed" / "build.log").read_text()
    assert "Traceback" in log and "Shape mismatch" in log
