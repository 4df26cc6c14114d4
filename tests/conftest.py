"""Shared fixtures: small, seeded, and never depending on files another test wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def run_cli(args: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <args>`` as a user would, capturing output (warnings not silenced: a CLI's
    stderr must carry sibnn's own lines only)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """A user error: the given exit code, exactly one line on the raw stderr naming the problem
    (no third-party warning, no traceback)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def assert_every_stage_exact(s: dict, n_inputs: int, steps: set[str]) -> None:
    """Every step in ``steps`` verified, each stage exact against the golden model on at least
    ``n_inputs`` inputs (after specialisation: FINN's python models of the HW layers), and the
    graph all-HW."""
    ver = {v["step"]: v for v in s["verification"]}
    assert steps <= set(ver), sorted(ver)
    for v in ver.values():
        got = v if v["exact"] is not None else v["python_model"]
        assert got["exact"] is True and got["n_inputs"] >= n_inputs, v
    assert s["all_nodes_hw"] is True and s["non_hw_nodes"] == []


SMALL_HW = {"width": 8, "depth": [1, 1], "stem_bits": 1, "si_blocks": "all"}
"""The small SI-ResNet most flow tests compile (seconds per stage instead of minutes): a binary
stem and SI in every block (a fork/join per block, and a binary-weight MVAU on multi-bit inputs
in each), more of the compiler than the shipped default's 8-bit stem and downsample-only SI."""


def available_sim_mode() -> str:
    """The widest ``--sim`` mode this machine's tools allow (``all``: cppsim, rtlsim and the
    stitched design; else ``cppsim``, ``rtlsim`` or ``none``), so the shared build runs every
    generated-code simulation that can run here."""
    from flow.sim.simulate import find_simulators
    from sibnn_base.errors import ToolMissingError

    ok = []
    for kind in ("cppsim", "rtlsim"):
        try:
            find_simulators(kind)
            ok.append(kind)
        except ToolMissingError:
            pass
    return {2: "all", 0: "none"}.get(len(ok)) or ok[0]


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory):
    """One compile cache for the whole test session (``SIBNN_SIM_CACHE``), never ``~/.cache``."""
    path = tmp_path_factory.mktemp("sim_cache")
    old = os.environ.get("SIBNN_SIM_CACHE")
    os.environ["SIBNN_SIM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SIBNN_SIM_CACHE", None)
    else:
        os.environ["SIBNN_SIM_CACHE"] = old


@pytest.fixture(scope="session")
def small_hw_build(tmp_path_factory, sim_cache):
    """The small SI-ResNet built for pynq-z2 through ``hw_codegen`` on 4 verification inputs,
    running every generated-code simulation whose tools are here (:func:`available_sim_mode`;
    cold: it fills :func:`sim_cache`), the stitched design on all 4 as frames. Shared by the
    python-model, cppsim, rtlsim, ``--sim`` and stitched tests, which must not modify it."""
    from flow.build import build
    from flow.config import BuildConfig

    out = tmp_path_factory.mktemp("small_hw") / "b"
    cfg = BuildConfig(board="pynq-z2", output_dir=str(out), stop_step="hw_codegen",
                      model_overrides=SMALL_HW, verify_inputs=4, sim=available_sim_mode(),
                      sim_frames=4)
    build(cfg, echo=lambda *a, **k: None)
    return out
