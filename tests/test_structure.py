"""The code-structure goals hold on the tree (scripts/check_structure.py is their one home):
modules, functions and classes within size; imports run one way down the layers
(``sibnn_base`` < ``quant_models`` < ``flow``'s env, config, front, hw, proof, sim, runner,
build, studies < ``bench`` < ``tests``), function-level imports included; no import cycle."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("check_structure",
                                               ROOT / "scripts" / "check_structure.py")
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)


def test_the_tree_meets_the_structure_goals():
    assert S.breaches() == []


def test_the_parser_sees_relative_and_function_level_imports():
    graph = S.import_graph("quant_models")
    assert "quant_models.checkpoint" in graph["quant_models.registry"]
    assert "quant_models.registry" in graph["quant_models.train.stage_setup"]  # ``from ..registry``
    assert "quant_models.train.loop" in graph["quant_models.train"]  # a package's __init__
    assert "quant_models.registry" not in graph["quant_models.checkpoint"]


def test_function_level_imports_are_edges(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .other import g\n    return g\n")
    assert S.imported_modules("pkg.m", src, {"pkg", "pkg.m", "pkg.other"}) == {"pkg.other"}


def test_a_cycle_and_an_upward_import_are_breaches():
    assert S.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert S.find_cycle({"a": {"b"}, "b": set()}) is None
    # the config may not reach up into the FINN steps; the golden model not into the proof
    assert S.layer_breaches({"flow.config": {"flow.hw.steps"}}) == [
        "layer: flow.config imports flow.hw.steps, a higher layer"]
    assert S.layer_breaches({"flow.front.golden": {"flow.proof.verify"}}) != []
    assert S.layer_breaches({"flow.proof.verify": {"flow.front.golden"}}) == []


def test_an_oversized_function_is_a_breach(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "big.py").write_text("def f():\n" + "    x = 1\n" * S.MAX_FUNCTION)
    monkeypatch.setattr(S, "REPO", tmp_path)
    assert S.size_breaches("pkg") == [f"size: pkg/big.py:1 f() is {S.MAX_FUNCTION + 1} lines "
                                      f"(max {S.MAX_FUNCTION})"]
