"""Every board file loads, speaks FINN's vocabulary and agrees with FINN's own part tables."""

from __future__ import annotations

import pytest

from flow.config import BUDGETED, RESOURCES, ShellFlow, list_boards, load_board

BOARDS = list_boards()


def test_the_five_boards_exist():
    assert {"pynq-z2", "pynq-z1", "ultra96-v2", "zcu104", "kv260"} <= set(BOARDS)


@pytest.mark.parametrize("name", BOARDS)
def test_board_file(name):
    from finn.util.basic import part_map
    from finn.util.platforms import platforms

    b = load_board(name)
    assert b.name == name
    assert sorted(b.capacity) == sorted(RESOURCES)
    assert b.shell_flow_type in tuple(ShellFlow)
    assert b.synth_clk_period_ns > 0
    assert 0 < b.budget_fraction <= 1
    # FINN knows the board under this name and maps it to the same part
    assert part_map[b.board] == b.fpga_part
    # capacities match FINN's platform model where it has one
    if b.board in platforms:
        lut, ff, bram, uram, dsp = platforms[b.board]().compute_resources[0]
        assert (b.capacity["LUT"], b.capacity["FF"], b.capacity["BRAM_18K"],
                b.capacity["URAM"], b.capacity["DSP"]) == (lut, ff, bram, uram, dsp)
    for k in BUDGETED:
        assert b.budget[k] == int(b.capacity[k] * b.budget_fraction)


def test_pynq_z2_is_the_anchor():
    b = load_board("pynq-z2")
    assert (b.fpga_part, b.capacity["LUT"], b.capacity["BRAM_18K"], b.capacity["DSP"]) == (
        "xc7z020clg400-1", 53200, 280, 220)
    assert b.budget == {"LUT": 42560, "BRAM_18K": 224, "URAM": 0, "DSP": 176}


@pytest.fixture(scope="module")
def tfc_specialised(tmp_path_factory):
    """Brevitas TFC-W1A1 (seeded) built up to specialised layers, once for all boards."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import export_bnn_pynq

    tmp = tmp_path_factory.mktemp("tfc")
    onnx = export_bnn_pynq("TFC_1W1A", tmp / "tfc.onnx")
    out = build(resolve_build_config(onnx=str(onnx), output_dir=str(tmp / "out"),
                                     stop_step="specialize_layers", verify_inputs=1),
                echo=lambda _m: None)
    return ModelWrapper(str(next((out / "intermediate_models").glob("*_specialize_layers.onnx"))))


@pytest.mark.parametrize("name", BOARDS)
def test_auto_folding_fits_every_board(name, tfc_specialised, tmp_path):
    from flow.env.finn import detect_tools, finn_session
    from flow.hw.folding import auto_fold

    b = load_board(name)
    with finn_session(tmp_path / "finn", detect_tools()):
        res = auto_fold(tfc_specialised, b)
    assert res.feasible and res.estimate.within(b.budget)
    assert 0 < res.estimate.max_cycles < 2**62


def test_folding_search_estimates_each_distinct_folding_once(tfc_specialised, tmp_path,
                                                             monkeypatch):
    """Neighbouring targets of the binary search often fold alike: each folding is estimated
    once, and the cached search finds what estimating every point finds."""
    from flow.env.finn import detect_tools, finn_session
    from flow.hw import folding

    b = load_board("pynq-z2")
    real, calls = folding.estimate, []

    def counting(model, part):
        calls.append(folding._signature(model))
        return real(model, part)

    with finn_session(tmp_path / "finn", detect_tools()):
        monkeypatch.setattr(folding, "estimate", counting)
        res = folding.auto_fold(tfc_specialised, b, widen=False)
        assert len(calls) == len(set(calls)) and len(calls) < res.evaluated
        assert res.estimate == real(res.model, b.fpga_part)
        # folding afresh at the target found reproduces the folding returned
        again = folding._fold(tfc_specialised, res.target_cycles, folding.MVAU_WWIDTH_MAX)
        assert folding._signature(again) == folding._signature(res.model)


@pytest.mark.vivado
@pytest.mark.parametrize("name", BOARDS)
def test_bitfile_per_board(name, tmp_path):
    from flow.env.finn import detect_tools

    tools = detect_tools()
    if not tools.has_vivado:
        pytest.skip(f"needs Xilinx Vivado ({tools.reason})")
    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import export_bnn_pynq
    from flow.report import load_summary

    onnx = export_bnn_pynq("TFC_1W1A", tmp_path / "tfc.onnx")
    out = build(resolve_build_config(board=name, onnx=str(onnx), output_dir=str(tmp_path / "o"),
                                     require_bitfile=True), echo=lambda _m: None)
    assert load_summary(out)["outputs"]["bitfile"] == "generated"
