"""Every documented model knob crossed with the compiler: built through ``flow/build.py`` to
``hw_codegen`` with the exact front end, every executed stage equal to the golden model, and,
where g++/finn-hlslib and Verilator are here, every node run as its generated HLS C++ (cppsim)
or RTL (rtlsim), exact against FINN's python model of that node and the golden model.

The default run covers the SI bit widths that share the non-binary MVAU path ({1, 2} weight bits
x {1, 2} activation bits) and the method's variants through ``hw_codegen``, with the generated
code of one small network and of one random topology (:data:`FUZZ_SEEDS`); ``slow`` sweeps every
:class:`NetSpec` knob, every knob pairwise with ``depth``, ``width`` and ``r``
(:data:`PAIR_GRID`) and a dozen random topologies, all of it as generated code, with random
weights and tie-producing dyadic BatchNorms on >= 32 inputs per stage.
"""

from __future__ import annotations

import itertools

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
from tests.conftest import assert_every_stage_exact, available_sim_mode

SIM_INPUTS = 2
"""Verification inputs that run through the generated code (each node is compared with its
python model on every one, so two already exercise every node)."""


def _quiet(_msg: str) -> None:
    pass


def build_knobs(tmp_path, arch: str, seed: int, n_inputs: int = 32, build_kw: dict | None = None,
                sim: bool = False, stop_step: str = "hw_codegen", **knobs) -> dict:
    """Export ``arch(**knobs)`` with seeded weights and tie BatchNorms, build it up to
    ``stop_step`` (``build_kw``: more build config keys) and return the summary (asserting every
    executed stage exact and the graph all-HW). With ``sim`` the generated code of every node
    runs too, where the tools are here; without them the test skips after the build, saying
    which tool is missing (the build itself was checked)."""
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
    mode = available_sim_mode() if sim else "none"
    sim_kw = {"sim": mode, "sim_inputs": SIM_INPUTS} if mode != "none" else {}
    # one SetFolding at a fixed target instead of the budget search: the folding is not what
    # is tested here, and the search dominates the build time
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp_path / "out"),
                                     stop_step=stop_step, verify_inputs=n_inputs,
                                     front_end="exact", target_fps=1000,
                                     **(build_kw or {}), **sim_kw),
                echo=_quiet)
    s = load_summary(out)
    assert_every_stage_exact(s, n_inputs, {"export", "lower", "convert_to_hw",
                                           "create_dataflow_partition", stop_step})
    if sim:
        _check_simulation(s, mode)
    return s


def _check_simulation(s: dict, mode: str) -> None:
    """Every node ran as generated code (``--sim all``) and matched, or skip naming the tool."""
    if mode != "all":
        from flow.sim.simulate import find_simulators
        from sibnn_base.errors import ToolMissingError

        try:
            find_simulators("all")
        except ToolMissingError as err:
            pytest.skip(f"built exact through hw_codegen; generated code not run: {err}")
    sim = s["simulation"]
    assert sim["mode"] == "all" and sim["against"] == "golden", sim
    assert sim["python_only"] == [], sim["python_only_reasons"]
    assert sim["cppsim"]["exact"] is True and sim["rtlsim"]["exact"] is True
    assert sim["cppsim"]["nodes"] > 0 and sim["rtlsim"]["nodes"] > 0
    st = s["stitched"]  # the whole accelerator too, with its FIFOs sized
    assert st["exact"] is True and st["deadlock_free"] is True and st["throughput_held"] >= 0.99


@pytest.mark.parametrize("si_weight_bits", [1, 2])
@pytest.mark.parametrize("si_act_bits", [1, 2])
def test_si_bit_widths_build_exact(tmp_path, si_weight_bits, si_act_bits):
    build_knobs(tmp_path, "si_resnet_w1a1", seed=10 * si_weight_bits + si_act_bits, width=8,
                depth=[1, 1], si_weight_bits=si_weight_bits, si_act_bits=si_act_bits)


def test_multi_bit_si_weights_on_the_binary_stream_run_as_generated_code(tmp_path, sim_cache):
    """Regression: 2-bit SI weights on the block's binary input ``a`` (and on the binary SI
    activation). Both MVAUs read the XNOR-domain bits, which FINN's HLS MVAU refuses outside XNOR
    mode ("True binary (non-bipolar) inputs not yet supported" in ``hw_codegen``); they now read
    them as BIPOLAR through a recast, and run exact as generated code. At this size FINN's
    weight minimisation would also type the squeeze's 2-bit weights, which draw only {-1, 0},
    as BIPOLAR."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    s = build_knobs(tmp_path, "si_resnet_w1a1", seed=5, width=4, depth=[1], r=4, si_weight_bits=2,
                    si_act_bits=1, sim=True)
    assert s["front_end"] == "exact"
    model = ModelWrapper(str(next((tmp_path / "out" / "intermediate_models")
                                  .glob("*_hw_codegen.onnx"))))
    mvaus = [getCustomOp(n) for n in model.graph.node if n.op_type == "MVAU_hls"]
    multi_bit_on_bits = [i for i in mvaus if i.get_nodeattr("inputDataType") == "BIPOLAR"]
    assert len(multi_bit_on_bits) == 2  # the SI squeeze and the SI interaction
    for i in mvaus:
        if not i.get_nodeattr("binaryXnorMode"):
            assert "BINARY" not in (i.get_nodeattr("inputDataType"),
                                    i.get_nodeattr("weightDataType"))
    typed = [(model.get_initializer(i.onnx_node.input[1]), i.get_nodeattr("weightDataType"))
             for i in mvaus]
    for w, dt in typed:
        assert dt != "BIPOLAR" or np.all(np.abs(w) == 1), dt
    assert any(w.min() == -1 and w.max() == 0 and dt == "INT2" for w, dt in typed)


@pytest.mark.parametrize("arch,knobs", [
    ("si_h_resnet_w1a1", {}),
    ("si_h_resnet_w1a1_mbh", {"stem_bits": 1, "si_blocks": "all"}),
    ("resnet_w1a1", {"head_bits": 4, "sign_bias": True}),
    ("si_resnet_w1a1", {"sign_bias": True, "si_weight_bits": 2}),
    ("si_h_resnet_w1a1_mbh", {"stem_bits": 8, "si_blocks": "all"}),
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

    kw = {"seed": 3, "width": 8, "depth": [1, 1], "stem_bits": 8, "si_blocks": "all"}
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

PAIR_AXES = {"depth": [[1], [1, 1], [2, 1]], "width": [4, 8, 12], "r": [1, 2, 4]}
"""The structural knobs every other knob is crossed with, pairwise."""
PAIR_KNOBS = {"si_act_bits": [1, 2, 3], "si_weight_bits": [1, 2, 3], "res_bits": [2, 4, 8],
              "res_scale_log2": [-2, 0], "si_input": ["a", "h"], "head_bits": [1, 8],
              "sign_bias": [False, True], "stem_bits": [1, 8], "si_blocks": ["all", "downsample"]}


def pairwise_grid(seed: int = 36, candidates: int = 64) -> list[dict]:
    """A small set of knob settings in which every value of each of ``depth``, ``width`` and
    ``r`` meets every value of every other knob (and of the other two axes) at least once:
    greedy all-pairs, each case the seeded random candidate that covers the most pairs still
    missing."""
    rng = np.random.default_rng(seed)
    params = {**PAIR_AXES, **PAIR_KNOBS}
    names = list(params)
    todo = {((a, i), (b, j)) for a in PAIR_AXES for b in names if b != a
            for i in range(len(params[a])) for j in range(len(params[b]))
            if a < b or b not in PAIR_AXES}

    def pairs(pick: dict) -> set:
        return {p for p in todo if pick[p[0][0]] == p[0][1] and pick[p[1][0]] == p[1][1]}

    cases = []
    while todo:
        first = next(iter(sorted(todo)))  # every case covers at least one missing pair
        best, best_cover = None, set()
        for _ in range(candidates):
            pick = {k: int(rng.integers(len(v))) for k, v in params.items()}
            pick[first[0][0]], pick[first[1][0]] = first[0][1], first[1][1]
            cover = pairs(pick)
            if len(cover) > len(best_cover):
                best, best_cover = pick, cover
        todo -= best_cover
        cases.append({k: params[k][i] for k, i in best.items()})
    return cases


PAIR_GRID = pairwise_grid()


def _case_id(arch: str, kw: dict) -> str:
    return (f"{arch}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
            .replace(" ", "").replace("[", "").replace("]", "").replace(",", "."))


def test_pairwise_grid_crosses_every_knob_with_depth_width_and_r():
    """The pairwise grid really covers every (axis value, knob value) pair, and stays small."""
    params = {**PAIR_AXES, **PAIR_KNOBS}
    for a, b in itertools.product(PAIR_AXES, params):
        if a == b:
            continue
        seen = {(repr(c[a]), repr(c[b])) for c in PAIR_GRID}
        assert seen == {(repr(x), repr(y)) for x in params[a] for y in params[b]}, (a, b)
    assert len(PAIR_GRID) <= 20


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(SLOW_GRID)),
                         ids=[_case_id(a, kw) for a, kw in SLOW_GRID])
def test_every_knob_builds_exact(tmp_path, sim_cache, case):
    arch, knobs = SLOW_GRID[case]
    build_knobs(tmp_path, arch, seed=100 + case, sim=True, **knobs)


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(PAIR_GRID)),
                         ids=[_case_id("si_resnet_w1a1", kw) for kw in PAIR_GRID])
def test_knobs_pairwise_with_depth_width_r_build_exact(tmp_path, sim_cache, case):
    build_knobs(tmp_path, "si_resnet_w1a1", seed=300 + case, sim=True, **PAIR_GRID[case])


FUZZ_SEEDS = range(12)
"""Random topologies (:func:`tests.fuzz.random_overrides`) built and run as generated code: the
smallest (seed 3) by default, all of them under ``slow``."""


@pytest.mark.parametrize("seed", [s if s == 3 else pytest.param(s, marks=pytest.mark.slow)
                                  for s in FUZZ_SEEDS])
def test_random_topology_runs_as_generated_code(tmp_path, sim_cache, seed):
    from tests.fuzz import random_overrides

    arch, kw = random_overrides(np.random.default_rng(seed))
    build_knobs(tmp_path, arch, seed=seed, sim=True, **kw)


def test_thresholds_finn_would_type_bipolar_keep_a_legal_type(tmp_path):
    """Regression (found by the pairwise grid): a threshold layer whose thresholds lie in
    ``[-1, 0]`` with a -1, which FINN's ``minimize_weight_bit_width`` types as BIPOLAR (no 0)
    and then raises on; the pairwise case that drew them builds exact through
    ``minimize_bit_width`` now (``pin_legal_weight_types``)."""
    case = next(i for i, kw in enumerate(PAIR_GRID)
                if _case_id("si_resnet_w1a1", kw) == "si_resnet_w1a1-depth1.1-width4-r1-"
                "si_act_bits1-si_weight_bits1-res_bits4-res_scale_log20-si_inputh-head_bits1-"
                "sign_biasTrue-stem_bits1-si_blocksall")
    build_knobs(tmp_path, "si_resnet_w1a1", seed=300 + case, stop_step="minimize_bit_width",
                **PAIR_GRID[case])
