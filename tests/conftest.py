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
    """Run ``python <args>`` as a user would, capturing output."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """A user error: the given exit code, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.strip() and "warn" not in ln.lower() and not ln.startswith("  ")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
