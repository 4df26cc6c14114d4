"""Golden model (ONNX Runtime) throughput against Brevitas eval throughput, same inputs, one run.

Goal: golden >= 5x Brevitas at batch 64, >= 10x at batch 1. Both single-threaded
(torch.set_num_threads(1), ORT intra_op 1) so the ratio measures the implementations, not the
thread pools. Also measured: the share of the golden model's kernel time spent in its convolutions
(ONNX Runtime's profiler), and so the ratio it would reach if everything else were free.

    python -m bench.golden_speed [--n 512] [--batch 64]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("bench.golden_speed:main"))

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import write_results
from sibnn_base.errors import ArgumentParser, cli_errors


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _conv_share(golden, pixels) -> float:
    """Fraction of the golden session's kernel time spent in its convolutions: float ``Conv``
    and uint8 ``QLinearConv`` nodes (any domain)."""
    t = golden.kernel_profile(pixels)
    return (t.get("Conv", 0) + t.get("QLinearConv", 0)) / max(1, sum(t.values()))


def run(n: int = 256, batches: tuple[int, ...] = (1, 64), repeats: int = 3,
        pretrained: bool | None = None, model_name: str | None = None) -> dict:
    """Time ``model_name`` (default: the build's default model, the one verification runs on
    by default) with its shipped weights where it has them, else seeded weights."""
    from flow.config import DEFAULT_MODEL
    from flow.front.export import export_qonnx_model
    from flow.front.golden import GoldenModel, golden_from_qonnx
    from flow.proof.verify import make_inputs, pixels_to_x, verify
    from quant_models import build_model
    from quant_models.registry import get_entry
    from quant_models.stress import randomize_bn

    torch.set_num_threads(1)
    name = model_name or DEFAULT_MODEL
    if pretrained is None:
        pretrained = get_entry(name).pretrained is not None
    if pretrained:
        model, which = build_model(name, pretrained=True), f"shipped {name}"
    else:
        torch.manual_seed(0)
        model = build_model(name)
        randomize_bn(model, np.random.default_rng(0))
        model.eval()
        which = f"{name} default size, seeded weights"
    with tempfile.TemporaryDirectory() as d:
        mw = export_qonnx_model(model, Path(d) / "m.onnx", with_taps=True)
        golden, _ = golden_from_qonnx(mw, threads=1)
    c, h, w = model.spec.input_shape
    px = make_inputs((h, w, c), n, seed=0)
    assert verify(golden, px[:64], torch_model=model).exact  # the same function, proven first
    # what is timed: the golden model asked for Brevitas' outputs, i.e. its tap-free session
    # (ONNX Runtime's graph optimisation where audited exact, flow.front.golden.audit_optimised);
    # its outputs are checked equal to the full, unoptimised session's first, on every timed image
    plain = GoldenModel(None, golden.proto, threads=1, optimised=False)
    primary = ["scores", "logits", "top1"]
    ref = dict(zip(primary, plain.session.run(primary, {"pixels_nhwc": px}), strict=True))
    got = golden.run(px, primary)
    assert all(np.array_equal(ref[k], got[k]) for k in primary)
    x = pixels_to_x(px)
    rows, per_batch = [], {}
    for batch in batches:
        m = n if batch > 1 else min(n, 64)
        chunks = [(px[i:i + batch], x[i:i + batch]) for i in range(0, m, batch)]

        def brevitas(chunks=chunks):
            with torch.no_grad():
                for _, xb in chunks:
                    model(xb)

        def gold(chunks=chunks):
            for pb, _ in chunks:
                golden.run(pb, primary)

        brevitas()
        gold()  # warm-up
        t_b, t_g = _best_of(brevitas, repeats), _best_of(gold, repeats)
        conv = _conv_share(golden.primary(), chunks[0][0])
        per_batch[str(batch)] = {"n_images": m, "brevitas_img_per_s": m / t_b,
                                 "golden_img_per_s": m / t_g, "ratio": t_b / t_g,
                                 "goal_met": t_b / t_g >= (5.0 if batch > 1 else 10.0),
                                 "conv_share_of_kernel_time": round(conv, 3),
                                 "ratio_if_only_convs_cost": round(t_b / (t_g * conv), 2)}
        rows.append([str(batch), f"{m / t_b:.0f}", f"{m / t_g:.0f}", f"{t_b / t_g:.2f}",
                     f"{conv:.0%}", f"{t_b / (t_g * conv):.1f}"])
    ops = [n.op_type for n in golden.primary().proto.graph.node]
    res = {"model": which, "threads": 1, "repeats": repeats, "goal_ratio": 5.0,
           "golden_convs": {"uint8_QLinearConv": ops.count("QLinearConv"),
                            "float32_Conv": ops.count("Conv")},
           "goal_ratio_batch1": 10.0, "golden_session": golden.primary().session_note,
           "per_batch": per_batch,
           "notes": "best of `repeats`; Brevitas eval forward (logits) in torch against the "
                    "golden model asked for the same (scores, logits, top1: GoldenModel.run "
                    "then uses its tap-free session, GoldenModel.primary), ONNX Runtime with "
                    "the audited graph optimisation; outputs checked identical to the "
                    "unoptimised full session's first"}
    write_results("golden_speed", res,
                  [["batch", "Brevitas img/s", "golden img/s", "golden / Brevitas",
                    "golden time in convs", "ratio if only the convs cost"], *rows])
    return res


@cli_errors
def main(argv: list[str] | None = None) -> int | None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=None, help="registry model (default: the build's default)")
    a = p.parse_args(argv)
    r = run(a.n, repeats=a.repeats, model_name=a.model)
    for b, v in r["per_batch"].items():
        print(f"batch {b}: golden {v['golden_img_per_s']:.0f} img/s vs Brevitas "
              f"{v['brevitas_img_per_s']:.0f} img/s = {v['ratio']:.2f}x "
              f"(goal {'>= 5x' if b != '1' else '>= 10x'}: "
              f"{'met' if v['goal_met'] else 'MISSED'})")


if __name__ == "__main__":
    raise SystemExit(main())
