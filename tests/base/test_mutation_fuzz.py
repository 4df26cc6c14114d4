"""Mutation fuzz of everything a user hands ``sibnn-build``: bytes of a QONNX file and of a
checkpoint, keys and values of a board YAML, of a build config and of a folding JSON.

Every mutant either builds (every stage exact against the golden model: a build that is not
exits 3) or is refused with exit 2 and exactly one stderr line. None may end in a traceback,
an internal error (exit 1), a verification failure, a hang, a temp dir left behind, or a changed
file that existed before. Seeded: a failure names its mutant and reproduces. The default run
makes a few mutants of each kind (about a minute and a half on 2 cores); ``slow`` makes many.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT

PER_KIND = {"default": 4, "slow": 24}
STOP = {"qonnx": "tidy_up", "qonnx_graph": "tidy_up", "checkpoint": "lower", "board": "lower", "config": "lower",
        "folding": "fold"}
"""How far each kind of mutant is built: far enough to use what was mutated."""


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict:
    """The valid inputs every mutant starts from: a TFC QONNX, its folding JSON, a small
    checkpoint with its payload hash, the pynq-z2 board file and a small build config."""
    import torch

    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import export_bnn_pynq
    from quant_models import build_model
    from quant_models.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("mutants_src")
    onnx = export_bnn_pynq("TFC_1W1A", d / "tfc.onnx")
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "small.pt",
                           build_model("resnet_w1a1", width=4, depth=[1], input_size=28))
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(d / "fold"),
                                     stop_step="fold", verify_inputs=4), echo=lambda *_: None)
    return {"qonnx": onnx.read_bytes(), "qonnx_graph": onnx.read_bytes(), "checkpoint": ckpt.read_bytes(),
            "board": yaml.safe_load((ROOT / "flow" / "boards" / "pynq-z2.yaml").read_text()),
            "config": {"verify_inputs": 4, "seed": 0, "front_end": "auto",
                       "target_fps": 100000, "mvau_wwidth_max": 36, "budget_fraction": 0.8},
            "folding": json.loads((out / "report" / "folding_config.json").read_text())}


# -- mutators: each takes the original and a seeded generator, returns the mutant's content

def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip, overwrite, delete or insert a few bytes, or truncate."""
    buf = bytearray(data)
    how = rng.integers(0, 5)
    if how == 4:
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(buf)))
        if how == 0:
            buf[i] ^= 1 << int(rng.integers(0, 8))
        elif how == 1:
            buf[i] = int(rng.integers(0, 256))
        elif how == 2:
            del buf[i]
        else:
            buf.insert(i, int(rng.integers(0, 256)))
    return bytes(buf)


def mutate_graph(data: bytes, rng: np.random.Generator) -> bytes:
    """A well-formed ONNX file with one structural change: a node's op type, an attribute, an
    input name or an initializer's values or shape (what a byte flip rarely reaches)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    g = model.graph
    node = g.node[int(rng.integers(0, len(g.node)))]
    how = int(rng.integers(0, 6))
    if how == 0:
        node.op_type = str(rng.choice(["Quant", "BipolarQuant", "Conv", "Relu", "Softmax", "Foo"]))
    elif how == 1 and node.attribute:
        att = node.attribute[int(rng.integers(0, len(node.attribute)))]
        att.i, att.f = int(rng.choice([-1, 0, 2, 33])), float(rng.choice([-1.0, 0.5, 1e9]))
    elif how == 2 and node.input:
        node.input[int(rng.integers(0, len(node.input)))] = "nowhere"
    elif how == 3:
        g.node.remove(node)
    else:
        init = g.initializer[int(rng.integers(0, len(g.initializer)))]
        arr = numpy_helper.to_array(init).copy()
        if how == 4 and arr.size:
            arr.reshape(-1)[int(rng.integers(0, arr.size))] = rng.choice([0.0, -1.0, 0.5, 3.0,
                                                                          1e6, np.nan])
        else:
            arr = arr.reshape(-1)[: max(arr.size - 1, 0)]
        init.CopyFrom(numpy_helper.from_array(arr.astype(arr.dtype), init.name))
    return model.SerializeToString()


ODD_VALUES = [None, 0, -1, 1, 3, 7.5, 1e9, -1e-9, float("nan"), float("inf"), True, "",
              "x", "1", "pynq-z2", [], [1, 2], {}, {"a": 1}]


def _paths(tree, prefix=()) -> list[tuple]:
    """Every key path of a nested dict (dict values are paths too)."""
    out = []
    for k, v in tree.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


def mutate_tree(tree: dict, rng: np.random.Generator) -> dict:
    """Delete, rename or retype one key anywhere in the tree, or add an unknown one."""
    tree = copy.deepcopy(tree)
    path = _paths(tree)[int(rng.integers(0, len(_paths(tree))))]
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    how = rng.integers(0, 5)
    if how == 0:
        del parent[key]
    elif how == 1:
        parent[str(key) + str(rng.choice(["_", "s", "X"]))] = parent.pop(key)
    elif how == 2:
        parent[f"unknown_{int(rng.integers(0, 99))}"] = 1
    else:
        parent[key] = ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))]
    return tree


def _write_mutant(kind: str, content, path: Path) -> None:
    if kind in ("qonnx", "qonnx_graph", "checkpoint"):
        path.write_bytes(content)
    elif kind == "folding":
        path.write_text(json.dumps(content, allow_nan=True))
    else:
        path.write_text(yaml.safe_dump(content, allow_unicode=True))


def _argv(kind: str, mutant: Path, src: Path, out: Path) -> list[str]:
    base = ["--output-dir", str(out), "--stop-step", STOP[kind]]
    fast = ["--config", str(src / "fast.yaml")]
    return {"qonnx": ["--onnx", str(mutant), *fast],
            "qonnx_graph": ["--onnx", str(mutant), *fast],
            "checkpoint": ["--model", "resnet_w1a1", "--checkpoint", str(mutant), *fast],
            "board": ["--board", str(mutant), "--onnx", str(src / "tfc.onnx"), *fast],
            "config": ["--config", str(mutant), "--onnx", str(src / "tfc.onnx")],
            "folding": ["--folding", str(mutant), "--onnx", str(src / "tfc.onnx"), *fast],
            }[kind] + base


def _make_jobs(originals: dict, d: Path, per_kind: int, seed: int) -> list[dict]:
    (d / "tfc.onnx").write_bytes(originals["qonnx"])
    (d / "fast.yaml").write_text("verify_inputs: 4\n")
    jobs = []
    for k, kind in enumerate(STOP):
        rng = np.random.default_rng([seed, k])
        for i in range(per_kind):
            orig = originals[kind]
            content = (mutate_graph(orig, rng) if kind == "qonnx_graph" else
                       mutate_bytes(orig, rng) if isinstance(orig, bytes) else
                       mutate_tree(orig, rng))
            suffix = {"qonnx": ".onnx", "qonnx_graph": ".onnx", "checkpoint": ".pt", "folding": ".json"}.get(kind, ".yaml")
            mutant = d / f"{kind}-{i}{suffix}"
            _write_mutant(kind, content, mutant)
            jobs.append({"id": f"{kind}-{i}", "limit_s": 300,
                         "argv": _argv(kind, mutant, d, d / "out" / f"{kind}-{i}")})
    return jobs


def _run_fuzz(originals: dict, d: Path, per_kind: int, seed: int) -> list[dict]:
    jobs = _make_jobs(originals, d, per_kind, seed)
    (d / "out").mkdir()
    (d / "out" / "precious").mkdir()
    (d / "out" / "precious" / "notes.txt").write_text("mine\n")
    before = _snapshot(d)
    (d / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([sys.executable, "-m", "tests.mutation_driver", str(d / "jobs.json"),
                    str(d / "results.json")], cwd=ROOT, check=True,
                   timeout=300 * len(jobs) + 120)
    results = json.loads((d / "results.json").read_text())
    after = _snapshot(d)
    changed = [p for p, h in before.items() if after.get(p) != h and p != "results.json"]
    assert changed == [], f"pre-existing files changed: {changed}"
    temps = [p.name for p in (d / "out").iterdir() if p.name.startswith(".")]
    assert temps == [], f"temp dirs left: {temps}"
    return results


def _verdict(r: dict, out: Path) -> str | None:
    """What is wrong with one mutant's run, or None."""
    if r["hang"]:
        return "hang"
    if r["escaped"]:
        return "traceback: " + r["escaped"].strip().splitlines()[-1]
    if "Traceback" in r["stderr"]:
        return "traceback on stderr"
    if r["rc"] == 0:
        summary = json.loads((out / "report" / "summary.json").read_text())
        bad = [v["step"] for v in summary["verification"] if not v.get("exact", True)
               and not v.get("python_model", {}).get("exact")]
        return f"built, but not exact at {bad}" if bad else None
    if r["rc"] != 2:
        return f"exit {r['rc']}: {r['stderr'].strip()[-300:]}"
    if len(r["stderr"].splitlines()) != 1 or not r["stderr"].startswith("error: "):
        return f"exit 2 without exactly one error line: {r['stderr'][-300:]!r}"
    return None


def _check(results: list[dict], d: Path) -> dict[str, int]:
    wrong = {r["id"]: v for r in results if (v := _verdict(r, d / "out" / r["id"]))}
    assert wrong == {}, json.dumps(wrong, indent=1)
    return {"built": sum(r["rc"] == 0 for r in results),
            "refused": sum(r["rc"] == 2 for r in results)}


def test_mutants_build_exactly_or_are_refused_in_one_line(originals, tmp_path):
    counts = _check(_run_fuzz(originals, tmp_path, PER_KIND["default"], seed=0), tmp_path)
    assert counts["built"] + counts["refused"] == PER_KIND["default"] * len(STOP)


@pytest.mark.slow
def test_many_mutants(originals, tmp_path):
    counts = _check(_run_fuzz(originals, tmp_path, PER_KIND["slow"], seed=1), tmp_path)
    assert counts["built"] + counts["refused"] == PER_KIND["slow"] * len(STOP)
