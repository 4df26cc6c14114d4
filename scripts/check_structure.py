"""The code-structure goals, checked from the tree (``make lint`` runs this).

- size: no module over 600 lines, no function over 80, no class over 300 (tests excepted);
- layers: a module imports only from its own layer or lower ones (LAYERS, highest first), and no
  two modules import each other, directly or through others (the import graph has no cycle).

    python scripts/check_structure.py          # prints every breach, exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOTS = ("sibnn_base", "quant_models", "flow", "bench")
MAX_MODULE, MAX_FUNCTION, MAX_CLASS = 600, 80, 300

# Highest first. A module belongs to the first entry that is a prefix of its dotted name.
LAYERS: list[tuple[str, ...]] = [
    ("bench",),
    ("flow.studies", "flow.plots"),
    ("flow.build", "flow.plan", "flow.cli"),
    ("flow.runner", "flow.report"),
    ("flow.sim",),            # generated code run: cppsim, rtlsim, the stitched accelerator
    ("flow.proof",),          # exactness: the stage executor and the verifiers
    ("flow.hw",),             # FINN: the exact lowering, rewrites, steps, folding, resources
    ("flow.front",),          # models and QONNX in: export, integer IR, golden model
    ("flow.config", "flow.boards"),
    ("flow.env", "flow.guard", "flow"),  # the one FINN/tool glue module; the package itself
    ("quant_models.train",),
    ("quant_models",),
    ("sibnn_base",),
]


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(mod: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    return rank if rank is not None else len(LAYERS)


def imports(path: Path, mod: str, known: set[str]) -> set[str]:
    """The sibnn modules ``mod`` imports (any depth: function-level imports count)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod:
                out.add(n)
    return out


def main() -> int:
    files = {module_name(p): p for r in ROOTS for p in Path(r).rglob("*.py")}
    known = set(files)
    breaches = []
    graph = {}
    for mod, path in sorted(files.items()):
        src = path.read_text()
        if (n := src.count("\n")) > MAX_MODULE:
            breaches.append(f"size: {path} is {n} lines (max {MAX_MODULE})")
        for node in ast.walk(ast.parse(src)):
            span = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and span > MAX_FUNCTION:
                breaches.append(f"size: {path}:{node.lineno} {node.name}() is {span} lines "
                                f"(max {MAX_FUNCTION})")
            if isinstance(node, ast.ClassDef) and span > MAX_CLASS:
                breaches.append(f"size: {path}:{node.lineno} class {node.name} is {span} lines "
                                f"(max {MAX_CLASS})")
        graph[mod] = imports(path, mod, known)
        for dep in sorted(graph[mod]):
            # a package's __init__ importing its own submodules is not a climb
            if dep.startswith(mod + "."):
                continue
            if layer_of(dep) < layer_of(mod):
                breaches.append(f"layer: {mod} imports {dep}, a higher layer")
    # cycles, each reported once by its smallest member
    seen_cycles = set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep.startswith(node + ".") or node.startswith(dep + "."):
                    continue  # package <-> its own submodule
                if dep == start:
                    cyc = tuple(path)
                    key = frozenset(cyc)
                    if key not in seen_cycles:
                        seen_cycles.add(key)
                        breaches.append("cycle: " + " -> ".join(cyc + (start,)))
                elif dep not in path and dep > start and len(path) < 8:
                    stack.append((dep, path + [dep]))
    for b in breaches:
        print(b)
    print(f"{len(breaches)} breach(es) in {len(files)} modules")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
