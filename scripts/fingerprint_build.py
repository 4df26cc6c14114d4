"""Fingerprint a build directory, so a refactor can prove it changed nothing a user sees.

    python scripts/fingerprint_build.py BUILD_DIR [--json OUT]

Prints one sha256 per artefact:
- every ``report/*.json`` (estimates, folding, verification, summary), with the wall-clock fields
  (``build_seconds``) removed, as canonical JSON;
- the golden model's outputs: the golden model is rebuilt from the build's ``model.qonnx.onnx``
  and run on 256 seeded uint8 NHWC images (all outputs, block taps included); every output tensor is hashed as bytes.

Two builds of the same model before and after a refactor must print the same lines."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

WALL_CLOCK_KEYS = {"build_seconds", "verify_seconds", "seconds", "wall_s", "time_s"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report_hashes(build: Path) -> dict[str, str]:
    out = {}
    for p in sorted((build / "report").glob("*.json")):
        canon = json.dumps(_strip(json.loads(p.read_text())), sort_keys=True).encode()
        out[f"report/{p.name}"] = _sha(canon)
    return out


def golden_hashes(build: Path, n: int = 256, seed: int = 0) -> dict[str, str]:
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    try:  # the golden model's public entry point (its module may move in a refactor)
        from flow.front.golden import golden_from_qonnx
    except ImportError:
        from flow.golden import golden_from_qonnx
    golden, _ = golden_from_qonnx(ModelWrapper(str(build / "model.qonnx.onnx")))
    dims = [d.dim_value for d in golden.proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, *dims[1:]), dtype=np.uint8)
    outs = golden.run(pixels)  # every output, taps included
    return {f"golden/{o}": _sha(np.ascontiguousarray(v).tobytes()) for o, v in outs.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    h = {**report_hashes(a.build), **golden_hashes(a.build)}
    for k, v in h.items():
        print(f"{v}  {k}")
    if a.json:
        a.json.write_text(json.dumps(h, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
