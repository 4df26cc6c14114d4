"""The README's results block and docs/results.md are what ``python -m bench.report`` writes from
``bench/results/*.json``, and the user-facing docs stay short and free of tracker references."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[2]


def test_readme_results_block_is_generated():
    text = (ROOT / "README.md").read_text()
    start, end = text.index(report.BEGIN), text.index(report.END) + len(report.END)
    assert text[start:end] == report.readme_block(), \
        "README results block is stale: run python -m bench.report"


def test_results_page_is_generated():
    assert (ROOT / "docs" / "results.md").read_text() == report.results_page(), \
        "docs/results.md is stale: run python -m bench.report"


def test_headline_is_short_and_names_its_sources():
    rows = report.headline_rows()
    assert 1 <= len(rows) <= report.MAX_HEADLINE_ROWS
    for _, value, source in rows:
        assert re.search(r"\d", value)
        assert source.split(":")[0].removesuffix(".json") in report.FILES


def _copy_results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", res)
    return res


def test_numbers_follow_the_bench_files(tmp_path):
    # a number changed in a bench file changes the block: nothing in it is typed by hand
    res = _copy_results(tmp_path)
    data = json.loads((res / "flow.json").read_text())
    data["default_build"]["estimates"]["LUT"] = 12345.0
    (res / "flow.json").write_text(json.dumps(data))
    assert "12,345" in report.readme_block(res)
    assert "12,345" not in report.readme_block()


def test_check_fails_on_a_stale_readme_and_write_fixes_it(tmp_path):
    readme, page = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(f"intro\n\n{report.BEGIN}\n| old | 1 | x |\n{report.END}\n\nrest\n")
    args = ["--readme", str(readme), "--page", str(page)]
    assert report.main([*args, "--check"]) == 1
    assert report.main(args) == 0
    assert report.main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\nrest\n")
    assert "| old |" not in text


def test_missing_markers_are_an_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert report.main(["--readme", str(readme), "--page", str(tmp_path / "r.md")]) == 2
    assert "markers" in capsys.readouterr().err


def test_readme_is_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert len(text.encode()) <= 20 * 1024


DOCS = ["README.md", "CHANGELOG.md", "configs/experiments/README.md",
        *(f"docs/{n}.md" for n in ("golden", "flow", "simulation", "si_hardware", "training",
                                   "errors", "results"))]


@pytest.mark.parametrize("name", DOCS)
def test_docs_exist_without_tracker_references(name):
    text = (ROOT / name).read_text()
    assert not re.search(r"\bissues? ?#?\d+", text, re.IGNORECASE), name


def test_docs_links_resolve():
    for name in ("README.md", *(d for d in DOCS if d.startswith("docs/"))):
        base = (ROOT / name).parent
        for target in re.findall(r"\]\(([^)#\s]+)\)", (ROOT / name).read_text()):
            if "://" not in target:
                assert (base / target).exists(), f"{name} links to missing {target}"


def test_configs_and_notebooks_without_tracker_references():
    files = [*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("notebooks/*.ipynb")]
    assert files
    for path in files:
        assert not re.search(r"\bissues? ?#?\d+", path.read_text(), re.IGNORECASE), path.name
