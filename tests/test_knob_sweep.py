"""Every documented model knob crossed with the compiler: built through ``flow/build.py`` up to
``fold`` with the exact front end, every executed stage equal to the golden model.

The default run covers the SI bit widths that share the non-binary MVAU path ({1, 2} weight bits
x {1, 2} activation bits); ``slow`` sweeps every :class:`NetSpec` knob with random weights and
tie-producing dyadic BatchNorms on >= 32 inputs per stage.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow.build import build
from flow.config import resolve_build_config
from flow.front.export import export_qonnx_model
from flow.report import load_summary
from quant_models import build_model
from quant_models.blocks import BiasedSign
from quant_models.stress import randomize_bn


def _quiet(_msg: str) -> None:
    pass


def build_knobs(tmp_path, arch: str, seed: int, n_inputs: int = 32, build_kw: dict | None = None,
                **knobs) -> dict:
    """Export ``arch(**knobs)`` with seeded weights and tie BatchNorms, build it up to ``fold``
    (``build_kw``: more build config keys) and return the summary (asserting every executed
    stage exact and the graph all-HW)."""
    torch.manual_seed(seed)
    knobs.setdefault("input_size", 8)
    m = build_model(arch, **knobs)
    rng = np.random.default_rng(seed)
    randomize_bn(m, rng, ties=True)
    for mod in m.modules():  # sign biases on the quarter grid: some h + b land exactly on 0
        if isinstance(mod, BiasedSign):
            mod.bias.data = torch.from_numpy(rng.integers(-8, 9, mod.bias.shape) * 0.25).float()
    c, h, w = m.spec.input_shape
    onnx = tmp_path / "m.onnx"
    export_qonnx_model(m.eval(), onnx, input_shape=(1, c, h, w))
    # one SetFolding at a fixed target instead of the budget search: the folding is not what
    # is tested here, and the search dominates the build time
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out"),
                                     stop_step="fold", verify_inputs=n_inputs, front_end="exact",
                                     target_fps=1000, **(build_kw or {})),
                echo=_quiet)
    s = load_summary(out)
    executed = [v for v in s["verification"] if v["exact"] is not None]
    assert {"export", "lower", "convert_to_hw", "create_dataflow_partition"} <= \
        {v["step"] for v in executed}
    assert all(v["exact"] is True and v["n_inputs"] >= n_inputs for v in executed), executed
    assert s["all_nodes_hw"] is True and s["non_hw_nodes"] == []
    return s


@pytest.mark.parametrize("si_weight_bits", [1, 2])
@pytest.mark.parametrize("si_act_bits", [1, 2])
def test_si_bit_widths_build_exact(tmp_path, si_weight_bits, si_act_bits):
    build_knobs(tmp_path, "si_resnet_w1a1", seed=10 * si_weight_bits + si_act_bits, width=8,
                depth=[1, 1], si_weight_bits=si_weight_bits, si_act_bits=si_act_bits)


@pytest.mark.parametrize("arch,knobs", [
    ("si_h_resnet_w1a1", {}),
    ("si_h_resnet_w1a1_mbh", {}),
    ("resnet_w1a1", {"head_bits": 4, "sign_bias": True}),
    ("si_resnet_w1a1", {"sign_bias": True, "si_weight_bits": 2}),
    ("si_h_resnet_w1a1_mbh", {"stem_bits": 8}),
    ("si_h_resnet_w1a1_mbh", {"stem_bits": 8, "si_blocks": "downsample"}),
], ids=["si_on_h", "si_on_h_8bit_head_sign_bias", "plain_4bit_head_sign_bias", "si_a_sign_bias",
        "si_on_h_mbh_8bit_stem", "si_on_h_mbh_downsample_blocks_only"])
def test_model_variants_build_all_hw_exact(tmp_path, arch, knobs):
    """Every variant of the method (SI reading h, multi-bit head, learnable sign bias) exports,
    matches the golden model and builds all-HW and exact through flow/build.py."""
    s = build_knobs(tmp_path, arch, seed=7, width=8, depth=[1, 1], **knobs)
    assert s["front_end"] == "exact"


def test_multi_bit_products_go_to_dsp_slices_within_the_dsp_budget(tmp_path):
    """An 8-bit stem (8-bit pixels x 8-bit weights) gets DSP multipliers instead of FINN's LUT
    ones: fewer LUTs, the same folding and throughput, still exact; ``dsp_multipliers: false``
    keeps FINN's default, and a DSP budget too small for a layer leaves it on LUTs."""
    import dataclasses

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from flow.config import load_board
    from flow.hw.folding import use_dsp_multipliers

    kw = {"seed": 3, "width": 8, "depth": [1, 1], "stem_bits": 8}
    dsp = build_knobs(tmp_path / "dsp", "si_h_resnet_w1a1_mbh", **kw)
    lut = build_knobs(tmp_path / "lut", "si_h_resnet_w1a1_mbh", build_kw={
        "dsp_multipliers": False}, **kw)
    assert "MVAU_hls_0" in dsp["folding"]["dsp_multipliers"]  # the stem
    assert "dsp_multipliers" not in lut["folding"]
    d, lt = dsp["folding"], lut["folding"]  # the fold step's FINN estimates
    assert d["estimate"]["DSP"] > 0 == lt["estimate"]["DSP"]
    assert d["estimate"]["LUT"] < lt["estimate"]["LUT"]
    assert d["max_cycles"] == lt["max_cycles"] and d["target_cycles"] == lt["target_cycles"]

    model = ModelWrapper(str(tmp_path / "lut/out/intermediate_models/05_fold.onnx"))
    stem = getCustomOp(model.get_node_from_name("MVAU_hls_0"))
    need = stem.get_nodeattr("PE") * stem.get_nodeattr("SIMD")
    board = load_board("pynq-z2")
    small = dataclasses.replace(board, capacity={**board.capacity, "DSP": need - 1},
                                budget_fraction=1.0)
    use_dsp_multipliers(model, small)
    assert stem.get_nodeattr("resType") == "lut"
    use_dsp_multipliers(model, dataclasses.replace(small, capacity=board.capacity))
    assert stem.get_nodeattr("resType") == "dsp"


def _slow_grid() -> list[tuple[str, dict]]:
    """Each knob over its documented range, the others drawn at random (seeded)."""
    rng = np.random.default_rng(2026)
    cases: list[tuple[str, dict]] = []

    def pick(**fixed) -> dict:
        kw = {"width": int(rng.choice([4, 8, 12])),
              "depth": [int(rng.integers(1, 3)) for _ in range(int(rng.integers(1, 3)))],
              "res_bits": int(rng.choice([2, 3, 4, 6, 8])),
              "res_scale_log2": int(rng.integers(-3, 2)),
              "r": int(rng.choice([1, 2, 4, 8])),
              "si_act_bits": int(rng.integers(1, 5)),
              "si_weight_bits": int(rng.integers(1, 5))}
        kw.update(fixed)
        return kw

    for a in range(1, 5):
        for w in range(1, 5):
            cases.append(("si_resnet_w1a1", pick(si_act_bits=a, si_weight_bits=w)))
    for b in range(2, 9):
        cases.append(("si_resnet_w1a1", pick(res_bits=b)))
    for s in (-3, -1, 0, 2):
        cases.append(("si_resnet_w1a1", pick(res_scale_log2=s)))
    for r in (1, 3, 16):
        cases.append(("si_resnet_w1a1", pick(r=r)))
    for width, depth in ((2, [1]), (16, [1, 1]), (6, [2, 2, 1]), (8, [3])):
        cases.append(("si_resnet_w1a1", pick(width=width, depth=depth)))
    for si_input in ("a", "h"):
        for head_bits in (1, 2, 4, 8):
            cases.append(("si_resnet_w1a1", pick(si_input=si_input, head_bits=head_bits,
                                                 sign_bias=bool(head_bits % 2 == 0))))
    for stem_bits in (2, 4, 8):
        cases.append(("si_resnet_w1a1", pick(stem_bits=stem_bits, si_input="h")))
    for si_input in ("a", "h"):
        cases.append(("si_resnet_w1a1", pick(si_blocks="downsample", si_input=si_input,
                                             depth=[2, 1, 2])))
    for b in (2, 5, 8):
        kw = pick(res_bits=b, head_bits=int(rng.choice([1, 8])), sign_bias=bool(rng.integers(2)))
        for k in ("r", "si_act_bits", "si_weight_bits"):
            kw.pop(k)
        cases.append(("resnet_w1a1", kw))
    return cases


SLOW_GRID = _slow_grid()


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(SLOW_GRID)),
                         ids=[f"{a}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
                              .replace(" ", "").replace("[", "").replace("]", "").replace(",", ".")
                              for a, kw in SLOW_GRID])
def test_every_knob_builds_exact(tmp_path, case):
    arch, knobs = SLOW_GRID[case]
    build_knobs(tmp_path, arch, seed=100 + case, **knobs)
