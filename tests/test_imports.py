"""Imports run one way. Across the tree the layers are ``sibnn_base`` < ``quant_models`` <
``flow`` < ``bench`` < ``tests``: no module imports a layer above its own (the product never
imports benchmarks or tests; benchmarks never import tests). Inside and across them the module
graph, function-level imports included, has no cycle (e.g. checkpoint knows nothing of the
registry; the registry builds on checkpoint)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "quant_models"


LAYERS = ("sibnn_base", "quant_models", "flow", "bench", "tests")
"""Top-level packages, lowest first: each may import only those before it (and itself)."""


def module_files(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports anywhere in its body (top level,
    functions, ``TYPE_CHECKING`` blocks); ``from pkg import sub`` counts as importing ``pkg.sub``
    when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # the deepest known module that t names (``a.b.func`` -> ``a.b``)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(*packages: str) -> dict[str, set[str]]:
    files = {k: v for p in packages for k, v in module_files(p).items()}
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_parser_sees_relative_and_function_level_imports():
    graph = import_graph(PACKAGE)
    assert "quant_models.checkpoint" in graph["quant_models.registry"]
    assert "quant_models.registry" in graph["quant_models.train.stage_setup"]  # ``from ..registry``
    assert "quant_models.train.loop" in graph["quant_models.train"]  # a package's __init__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_are_edges(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .other import g\n    return g\n")
    assert imported_modules("pkg.m", src, {"pkg", "pkg.m", "pkg.other"}) == {"pkg.other"}


def test_quant_models_imports_have_no_cycle():
    graph = import_graph(PACKAGE)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert "quant_models.registry" not in graph["quant_models.checkpoint"]


def test_no_import_runs_back_up_the_layers():
    graph = import_graph(*LAYERS)
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                    if rank[t.split(".")[0]] > rank[m.split(".")[0]])
    assert upward == [], "imports that run back up: " + "; ".join(upward)


def test_the_whole_tree_has_no_import_cycle():
    graph = import_graph(*LAYERS)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_layer_check_sees_an_upward_import(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from bench.common import write_results\n")
    assert imported_modules("flow.m", src, {"flow.m", "bench.common"}) == {"bench.common"}
