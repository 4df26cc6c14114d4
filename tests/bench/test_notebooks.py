"""The notebooks execute (small configuration by default, full one under ``slow``) and write PNGs;
the committed notebooks hold their outputs (``make notebooks``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _execute(path: Path, workdir: Path, full: bool) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("SIBNN_NOTEBOOKS_FULL")
    os.environ["SIBNN_NOTEBOOKS_FULL"] = "1" if full else "0"
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("SIBNN_NOTEBOOKS_FULL", None)
        else:
            os.environ["SIBNN_NOTEBOOKS_FULL"] = env_before


@pytest.fixture
def workdir(tmp_path):
    # notebooks use repo-relative paths (flow/, bench/): run them in a copy-free
    # scratch dir that links those in, so build/ output lands in tmp_path
    for name in ("flow", "quant_models", "sibnn_base", "bench"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path, workdir):
    _execute(path, workdir, full=False)
    pngs = list((workdir / "build" / "notebooks" / "plots").glob("*.png"))
    assert pngs, "the notebook wrote no PNG"
    assert all(p.stat().st_size > 5000 for p in pngs)


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_full_configuration(path, workdir):
    _execute(path, workdir, full=True)
    assert list((workdir / "build" / "notebooks" / "plots").glob("*.png"))


def test_there_are_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_estimates_per_board.ipynb", "02_si_cost.ipynb",
                                           "03_exactness.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path):
    # `make notebooks` runs them top to bottom and commits the outputs, so a reader on the web
    # sees every table and figure without running anything
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name} is not run top to bottom: run make notebooks"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], path.name
    plots = [c for c in code if "Image(filename=png)" in c.source]
    assert plots, f"{path.name} shows no figure"
    for c in plots:
        assert any("image/png" in o.get("data", {}) for o in c.outputs), \
            f"{path.name}: a plot cell has no PNG output"


def test_pareto_front_and_accuracy_by_width():
    from flow.studies import accuracy_by_width, pareto_front

    pts = [(100, 80.0), (200, 85.0), (150, 79.0), (300, 85.0), (250, 90.0)]
    assert pareto_front(pts) == [0, 1, 4]
    acc = accuracy_by_width({"plain": 88.0, "si_h_mbh": 89.0, "w16_plain": 85.5,
                             "w16_si_h_mbh": 86.0, "full": 87.0, "w16_teacher": 91.0})
    assert acc == {("plain", 32): 88.0, ("si_h_mbh", 32): 89.0, ("plain", 16): 85.5,
                   ("si_h_mbh", 16): 86.0}
