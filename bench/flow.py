"""The FINN flow: time per step, verification overhead, SI hardware overhead, auto vs hand folding.

One run, one results file (``bench/results/flow.json`` + ``.md``); every ratio comes from numbers
measured in this run, with FINN's own estimators (no Vivado):

1. **Default build** (``flow/build.py --board pynq-z2``, estimates + code generation): seconds per
   step, and our verification time relative to the time of the steps themselves. Goal: the whole
   build in at most 180 s on 2 cores.
2. **SI hardware overhead**: each SI network against its twin without SI, folded for the same
   throughput target (the FPS auto-folding reaches for the twin on the board):
   ``si_resnet_w1a1`` (SI on ``a``) against ``resnet_w1a1``, and ``si_h_resnet_w1a1_mbh`` (SI on
   ``h``; binary or 8-bit stem; in every block or in the blocks that change shape only,
   ``si_blocks: downsample``) against ``resnet_w1a1_mbh`` with the same stem. Both sides of a
   pair are untrained (seeded), so they differ in the SI branch only. The headline is the pair
   of the default model as shipped (its checkpoint's ``stem_bits`` and ``si_blocks``). Goal: at
   most 10% more LUT and at most 10% more BRAM at the same FPS.
3. **Auto-folding against hand folding** on Brevitas CNV-W1A1 (seeded weights): FPS per LUT of our
   auto-folding against finn-examples' hand folding for cnv-w1a1 (MVAU PE/SIMD 16/3, 32/32, 16/32,
   16/32, 4/32, 1/32; FC 1/4, 1/8, 5/1; each sliding window's SIMD = its MVAU's SIMD), same graph,
   same estimator. Goal: at least 1.0x.

    python -m bench.flow [--board pynq-z2]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("bench.flow:main"))

import json
import tempfile
import time
from pathlib import Path

from bench.common import write_results
from flow.config import DEFAULT_BOARD
from quant_models.registry import SI_TWINS
from sibnn_base.errors import ArgumentParser, cli_errors

HAND_CNV = [(16, 3), (32, 32), (16, 32), (16, 32), (4, 32), (1, 32), (1, 4), (1, 8), (5, 1)]
"""finn-examples ``build/bnn-pynq`` cnv-w1a1 folding: (PE, SIMD) of the 9 MVAUs in order."""


def _quiet(_msg: str) -> None:
    pass


def _build(tmp: Path, name: str, **kw) -> tuple[Path, float]:
    from flow.build import build
    from flow.config import resolve_build_config

    t0 = time.perf_counter()
    out = build(resolve_build_config(output_dir=str(tmp / name), **kw), echo=_quiet)
    return out, time.perf_counter() - t0


def default_build(tmp: Path, board: str) -> dict:
    from flow.report import load_summary

    out, wall = _build(tmp, "default", board=board)
    s = load_summary(out)
    times = json.loads((out / "time_per_step.json").read_text())
    ver = json.loads((out / "report" / "verification.json").read_text())["verify_seconds"]
    steps_s = sum(times.values())
    verify_s = sum(ver.values())
    return {"model": s["model"], "weights": s["weights"], "front_end": s["front_end"],
            "wall_seconds": round(wall, 2), "step_seconds": times,
            "steps_total_seconds": round(steps_s, 2), "verify_seconds": ver,
            "verify_total_seconds": round(verify_s, 2),
            "verification_overhead": round(verify_s / steps_s, 3),
            "all_nodes_hw": s["all_nodes_hw"], "estimates": s["estimates"],
            "goal_180s_met": wall <= 180.0}


_A, _H = "si_resnet_w1a1", "si_h_resnet_w1a1_mbh"
SI_PAIRS = {
    _A: (_A, SI_TWINS[_A], {"stem_bits": 1}, {}),
    _H: (_H, SI_TWINS[_H], {"stem_bits": 1}, {"si_blocks": "all"}),
    f"{_H}, stem_bits=8": (_H, SI_TWINS[_H], {"stem_bits": 8}, {"si_blocks": "all"}),
    f"{_H}, stem_bits=8, si_blocks=downsample": (_H, SI_TWINS[_H], {"stem_bits": 8},
                                                {"si_blocks": "downsample"}),
}
"""Label -> (SI network, its twin without SI, model keys of both, model keys of the SI side only):
SI on the binary input ``a``; SI on the multi-bit residual ``h`` (with the 8-bit head and sign
bias on both sides) in every block, with a binary and with an 8-bit stem; and the same in the
blocks that change shape only (``si_blocks``)."""

HEADLINE_KEYS = ("stem_bits", "si_blocks")
"""The model arguments that pick the headline pair from the shipped default's checkpoint."""


def si_pair(tmp: Path, board: str, si: str, plain: str, shared: dict, si_only: dict) -> dict:
    """``si`` against ``plain``, the same network but for the SI branch: both untrained (seeded,
    the same seed) from the registry defaults plus ``shared`` (always given, so neither side
    picks up a shipped checkpoint; ``si_only`` on the SI side), folded for the same throughput
    target, the FPS auto-folding reaches for ``plain`` on the board."""
    from flow.report import load_summary

    assert shared, "shared model keys keep both sides untrained"

    def tag(name, kw):
        return "_".join([name, *(f"{k}-{v}" for k, v in kw.items())])

    def summary(out_name, **kw):  # pairs sharing a plain twin build it once per run
        out = tmp / out_name
        if not (out / "report" / "summary.json").is_file():
            out, _ = _build(tmp, out_name, board=board,
                            stop_step="generate_estimate_reports", **kw)
        return load_summary(out)

    base = summary(f"{tag(plain, shared)}_auto", model=plain, model_overrides=shared)
    target = int(base["estimates"]["throughput_fps"])
    res = {}
    for key, name, kw in ((plain, plain, shared), ("si", si, {**shared, **si_only})):
        s = summary(f"{tag(name, kw)}_t{target}", model=name, target_fps=target,
                    model_overrides=kw)
        if not s["weights"].startswith("untrained"):
            raise RuntimeError(f"SI pair {si} vs {plain}: {name} was built with {s['weights']}; "
                               "both sides must be untrained to differ only in the SI branch")
        res[key] = s["estimates"]
    r, s = res[plain], res["si"]
    lut = s["LUT"] / r["LUT"]
    # with sibnn's model of the forks and adds that FINN prices at 0 (flow/hw/resources.py)
    lut_m = s.get("LUT_modelled", s["LUT"]) / r.get("LUT_modelled", r["LUT"])
    bram = s["BRAM_18K"] / r["BRAM_18K"] if r["BRAM_18K"] else float("nan")
    return {"target_fps": target, "model": si, "model_overrides": {**shared, **si_only},
            "reference": plain, "reference_overrides": shared, "weights": "untrained, seed 0",
            plain: r, si: s,
            "lut_ratio": round(lut, 4), "lut_ratio_modelled": round(lut_m, 4),
            "bram_ratio": round(bram, 4),
            "fps_ratio": round(s["throughput_fps"] / r["throughput_fps"], 4),
            "goal_met": lut_m <= 1.10 and bram <= 1.10 and
            s["throughput_fps"] >= 0.999 * r["throughput_fps"]}


def headline_pair(default_model: str, shipped_args: dict | None) -> str:
    """The label of the pair that describes the build's default model: its SI network is the
    default model, with the shipped checkpoint's :data:`HEADLINE_KEYS` (registry defaults where
    nothing is shipped); ``si_resnet_w1a1``'s pair when no pair matches."""
    from quant_models.networks import NetSpec

    default = NetSpec().to_dict()
    shipped = {**default, **(shipped_args or {})}
    for label, (si, _, shared, si_only) in SI_PAIRS.items():
        net = {**default, **shared, **si_only}
        if si == default_model and all(net[k] == shipped[k] for k in HEADLINE_KEYS):
            return label
    return "si_resnet_w1a1"


def _shipped_args(name: str) -> dict | None:
    from quant_models.checkpoint import load_checkpoint
    from quant_models.registry import PRETRAINED_DIR, get_entry

    entry = get_entry(name).pretrained
    if entry is None:
        return None
    return load_checkpoint(PRETRAINED_DIR / entry.file, expected_arch=name)["model_args"]


def si_overhead(tmp: Path, board: str) -> dict:
    """Every pair of :data:`SI_PAIRS`; the headline numbers are those of the pair that
    describes the build's default model as shipped (:func:`headline_pair`)."""
    from flow.config import DEFAULT_MODEL

    pairs = {label: si_pair(tmp, board, *pair) for label, pair in SI_PAIRS.items()}
    head = headline_pair(DEFAULT_MODEL, _shipped_args(DEFAULT_MODEL))
    return {"headline": head, **pairs[head], "pairs": pairs}


def hand_vs_auto(tmp: Path, board: str) -> dict:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from flow.config import load_board
    from flow.env.finn import detect_tools, finn_session
    from flow.front.export import export_bnn_pynq
    from flow.hw.folding import estimate

    onnx = export_bnn_pynq("CNV_1W1A", tmp / "cnv_w1a1.onnx")
    out, _ = _build(tmp, "cnv", board=board, onnx=str(onnx), stop_step="fold", verify_inputs=2)
    b = load_board(board)
    inter = out / "intermediate_models"
    with finn_session(tmp / "finn_hand", detect_tools()):
        auto = ModelWrapper(str(next(inter.glob("*_fold.onnx"))))
        hand = ModelWrapper(str(next(inter.glob("*_fold.onnx"))))
        mvaus = [n for n in hand.graph.node if n.op_type.startswith("MVAU")]
        if len(mvaus) != len(HAND_CNV):
            raise RuntimeError(f"expected {len(HAND_CNV)} MVAUs in CNV, found {len(mvaus)}")
        for n, (pe, simd) in zip(mvaus, HAND_CNV, strict=True):
            inst = getCustomOp(n)
            inst.set_nodeattr("PE", pe)
            inst.set_nodeattr("SIMD", simd)
            prod = hand.find_producer(n.input[0])
            if prod is not None and prod.op_type.startswith("ConvolutionInputGenerator"):
                getCustomOp(prod).set_nodeattr("SIMD", simd)
        e_auto, e_hand = estimate(auto, b.fpga_part), estimate(hand, b.fpga_part)
    clock = b.synth_clk_period_ns
    fa, fh = e_auto.fps(clock), e_hand.fps(clock)
    ratio = (fa / e_auto.resources["LUT"]) / (fh / e_hand.resources["LUT"])
    return {"auto": {"fps": round(fa, 1), **e_auto.resources, "bottleneck": e_auto.bottleneck},
            "hand": {"fps": round(fh, 1), **e_hand.resources, "bottleneck": e_hand.bottleneck},
            "fps_per_lut_ratio": round(ratio, 3), "goal_met": ratio >= 1.0,
            "note": "finn-examples measured 3,020 img/s on a Pynq-Z2 at 100 MHz with the hand "
                    "folding; both numbers here are FINN estimates on the same graph"}


def run(board: str = DEFAULT_BOARD) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_flow_") as d:
        tmp = Path(d)
        return {"board": board, "default_build": default_build(tmp, board),
                "si_overhead": si_overhead(tmp, board),
                "auto_vs_hand_folding_cnv": hand_vs_auto(tmp, board)}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", default=DEFAULT_BOARD)
    a = p.parse_args(argv)
    res = run(a.board)
    d, si, hv = res["default_build"], res["si_overhead"], res["auto_vs_hand_folding_cnv"]
    table = [
        ["measure", "value", "goal"],
        ["default build wall time (s)", f"{d['wall_seconds']:.1f}", "<= 180"],
        ["verification / step time", f"{d['verification_overhead']:.2f}x", "-"],
    ]
    for name, pair in si["pairs"].items():
        tag = (f"{name} vs {pair['reference']}"
               + (" (default model)" if name == si["headline"] else ""))
        table += [
            [f"SI LUT ratio, {tag} @ {pair['target_fps']} fps (FINN's estimates)",
             f"{pair['lut_ratio']:.3f}", "-"],
            [f"SI LUT ratio, {tag}, forks/adds priced by sibnn's model",
             f"{pair['lut_ratio_modelled']:.3f}", "<= 1.10"],
            [f"SI BRAM ratio, {tag}", f"{pair['bram_ratio']:.3f}", "<= 1.10"],
            [f"SI FPS ratio, {tag}", f"{pair['fps_ratio']:.3f}", ">= 1.0"]]
    table += [
        ["CNV auto/hand FPS per LUT", f"{hv['fps_per_lut_ratio']:.3f}", ">= 1.0"],
        ["CNV auto fps / LUT", f"{hv['auto']['fps']:.0f} / {hv['auto']['LUT']:.0f}", "-"],
        ["CNV hand fps / LUT", f"{hv['hand']['fps']:.0f} / {hv['hand']['LUT']:.0f}", "-"],
    ]
    table += [[f"step {k} (s)", f"{v:.2f}", "-"] for k, v in d["step_seconds"].items()]
    path = write_results("flow", res, table)
    print((path.with_suffix(".md")).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
