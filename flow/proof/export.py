"""The ``sibnn-export`` tool: a model or QONNX file exported, its golden model built, and the two
proven equal before anything is written.

:func:`export_bundle` writes the bundle (QONNX, ``reference.onnx``, a golden input/output pair and
``verification.json``) atomically after :func:`flow.proof.verify.verify` found golden == Brevitas
(and QONNX) on integers; :func:`main` is the CLI. The export itself is
:mod:`flow.front.export`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("flow.proof.export:main"))

from pathlib import Path
from typing import TYPE_CHECKING

from flow.front.export import Weights, export_qonnx_model, load_qonnx, resolve_network

if TYPE_CHECKING:
    from torch import nn


def export_bundle(out_dir: str | Path, *, model: nn.Module | None = None,
                  qonnx_path: str | Path | None = None, n_inputs: int = 64, seed: int = 0,
                  check_qonnx: bool = True, weights: Weights | None = None) -> dict:
    """Write ``model.qonnx.onnx``, ``reference.onnx``, ``input.npy``, ``expected_output.npy`` and
    ``verification.json`` into ``out_dir`` atomically, after proving golden == Brevitas (and
    QONNX) on integers. Give a torch ``model`` or an existing QONNX file (``qonnx_path``)."""
    import json
    import time

    import numpy as np
    import onnx

    from flow.front.golden import GoldenModel, build_golden
    from flow.front.integerize import integerize
    from flow.proof.verify import load_real_images, make_inputs, verify
    from sibnn_base import runlog
    from sibnn_base.atomic import atomic_output_dir

    if (model is None) == (qonnx_path is None):
        raise ValueError("give exactly one of model / qonnx_path")
    t0 = time.perf_counter()
    with atomic_output_dir(out_dir, "export") as tmp:
        runlog.attach(tmp / "export.log")  # warnings so far (an unhashed checkpoint) and after
        if model is not None:
            qonnx = export_qonnx_model(model, tmp / "model.qonnx.onnx", weights=weights)
            with_taps = export_qonnx_model(model, tmp / "taps.qonnx.onnx", with_taps=True)
            (tmp / "taps.qonnx.onnx").unlink()
            ir = integerize(with_taps)
            source = getattr(model, "arch", type(model).__name__)
        else:
            qonnx = load_qonnx(qonnx_path, for_golden=True)
            qonnx.save(str(tmp / "model.qonnx.onnx"))
            with_taps = qonnx
            ir = integerize(qonnx)
            source = str(qonnx_path)
        proto = build_golden(ir)
        onnx.save(proto, str(tmp / "reference.onnx"))
        golden = GoldenModel(tmp / "reference.onnx", proto)
        c, h, w = ir.input_shape[1:]
        real = load_real_images(n_inputs, seed) if (c, h, w) == (1, 28, 28) else None
        px = make_inputs((h, w, c), n_inputs, seed, real)
        rep = verify(golden, px, torch_model=model,
                     qonnx_model=with_taps if check_qonnx else None)
        out = golden.run(px)
        np.save(tmp / "input.npy", px)
        np.save(tmp / "expected_output.npy", out["scores"])
        report = {
            "tool": "sibnn-export", "source": source, "exact": rep.exact,
            "reference": {"input": "pixels_nhwc uint8 (N,H,W,C)", "scale": golden.scale,
                          "outputs": golden.output_names, "tap_scales": golden.tap_scales},
            "golden_io": {"input.npy": list(px.shape), "expected_output.npy": "scores int32"},
            "verification": rep.to_dict(), "notes": ir.notes,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "verification.json").write_text(json.dumps(report, indent=2))
    runlog.attach(Path(out_dir) / "export.log")
    return report


def main(argv: list[str] | None = None) -> int:
    from sibnn_base.errors import cli_errors

    return cli_errors(_main)(argv)


def _main(argv: list[str] | None) -> int:
    from flow.config import DEFAULT_MODEL
    from sibnn_base.errors import ArgumentParser

    p = ArgumentParser(prog="sibnn-export", description=(
        "Export a model to QONNX and build its bit-exact golden model (reference.onnx)."))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help=f"registered model (default: the shipped {DEFAULT_MODEL})")
    src.add_argument("--onnx", help="an existing QONNX file (e.g. a Brevitas bnn_pynq export)")
    p.add_argument("--checkpoint", help="checkpoint of --model (default: the shipped weights)")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--n-inputs", type=int, default=64, help="verification images (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict-checkpoint", action="store_true",
                   help="refuse a checkpoint without a payload sha256 (default: load it with a "
                        "warning in the log)")
    args = p.parse_args(argv)
    if args.n_inputs < 1:
        from sibnn_base.errors import ConfigError
        raise ConfigError(f"--n-inputs must be >= 1 verification image, got {args.n_inputs}")
    if args.onnx:
        if args.checkpoint:
            from sibnn_base.errors import ConfigError
            raise ConfigError("--checkpoint cannot be combined with --onnx")
        rep = export_bundle(args.out, qonnx_path=args.onnx, n_inputs=args.n_inputs,
                            seed=args.seed)
    else:
        net, weights = resolve_network(args.model, checkpoint=args.checkpoint, seed=args.seed,
                                       allow_untrained=False,
                                       strict_checkpoint=args.strict_checkpoint)
        rep = export_bundle(args.out, model=net, weights=weights, n_inputs=args.n_inputs,
                            seed=args.seed)
    v = rep["verification"]
    print(f"exported {rep['source']} to {args.out}: golden == "
          f"{' and '.join(sorted({c['between'].split(' vs ')[1] for c in v['comparisons']}))} on "
          f"{v['n_inputs']} inputs ({len(v['comparisons'])} tensors, "
          f"np.array_equal) in {rep['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
