"""The code-structure goals, checked from the tree: ``make lint`` runs this, and
``tests/test_structure.py`` runs the same checks in the default test suite.

- size: no module over 600 lines, no function over 80, no class over 300 (tests excepted);
- layers: a module imports only from its own layer or lower ones (LAYERS, highest first);
  function-level and ``TYPE_CHECKING`` imports count;
- cycles: the module graph has none.

    python scripts/check_structure.py          # prints every breach, exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sibnn_base", "quant_models", "flow", "bench", "tests")
SIZED = ("sibnn_base", "quant_models", "flow", "bench")
MAX_MODULE, MAX_FUNCTION, MAX_CLASS = 600, 80, 300

LAYERS: list[tuple[str, ...]] = [
    ("tests",),
    ("bench",),
    ("flow.studies", "flow.plots"),     # what the notebooks call
    ("flow.build", "flow.plan"),        # the CLI, the step loop, the frozen plan
    ("flow.runner", "flow.report"),     # running FINN's steps; reports
    ("flow.sim",),                      # generated code run: cppsim, rtlsim, the stitched design
    ("flow.proof",),                    # exactness: the stage executor, the verifiers, export
    ("flow.hw",),                       # FINN: the exact lowering, rewrites, steps, folding
    ("flow.front",),                    # models and QONNX in: the integer IR, golden model
    ("flow.config", "flow.boards"),
    ("flow.env", "flow.guard", "flow"),  # the one FINN/tool glue package; flow itself
    ("quant_models.train",),
    ("quant_models",),
    ("sibnn_base",),
]
"""Highest first. A module belongs to the longest entry that is a prefix of its dotted name."""


def module_files(*packages: str) -> dict[str, Path]:
    out = {}
    for package in packages:
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
            while t and t not in known:  # the deepest known module t names (a.b.func -> a.b)
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(*packages: str) -> dict[str, set[str]]:
    files = module_files(*packages)
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
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int:
    """The rank of ``module``'s layer in LAYERS (0 is the highest)."""
    best, rank = -1, len(LAYERS)
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    return rank


def layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"layer: {m} imports {t}, a higher layer" for m, targets in graph.items()
                  for t in targets if layer_of(t) < layer_of(m))


def size_breaches(*packages: str) -> list[str]:
    out = []
    for path in module_files(*packages).values():
        src = path.read_text()
        rel = path.relative_to(REPO)
        if (n := src.count("\n")) > MAX_MODULE:
            out.append(f"size: {rel} is {n} lines (max {MAX_MODULE})")
        for node in ast.walk(ast.parse(src)):
            span = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and span > MAX_FUNCTION:
                out.append(f"size: {rel}:{node.lineno} {node.name}() is {span} lines "
                           f"(max {MAX_FUNCTION})")
            elif isinstance(node, ast.ClassDef) and span > MAX_CLASS:
                out.append(f"size: {rel}:{node.lineno} class {node.name} is {span} lines "
                           f"(max {MAX_CLASS})")
    return out


def breaches() -> list[str]:
    graph = import_graph(*PACKAGES)
    out = size_breaches(*SIZED) + layer_breaches(graph)
    if cycle := find_cycle(graph):
        out.append("cycle: " + " -> ".join(cycle))
    return out


def main() -> int:
    found = breaches()
    for b in found:
        print(b)
    print(f"{len(found)} breach(es) in {len(module_files(*PACKAGES))} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
