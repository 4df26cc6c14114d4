"""The wheel: an installed sibnn carries what it reads at run time (the board files, the shipped
weights), built offline from a copy of the source tree (nothing is written into the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from flow.config import list_boards
from tests.conftest import ROOT


def test_wheel_holds_the_boards_and_the_pretrained_weights(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("sibnn_base", "quant_models", "flow"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("sibnn-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert {f"flow/boards/{b}.yaml" for b in list_boards()} <= names
    pretrained = {f"quant_models/pretrained/{p.name}"
                  for p in (ROOT / "quant_models" / "pretrained").glob("*.pt")}
    assert pretrained and pretrained <= names
    # the unpacked wheel, ahead of any source checkout on the path, finds its boards
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = ("import flow.config as c; print(c.__file__); print(' '.join(c.list_boards())); "
            "print(c.load_board('pynq-z2').fpga_part)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    where, boards, part = run.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site"))
    assert boards.split() == list_boards() and part == "xc7z020clg400-1"
