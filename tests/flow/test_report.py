"""The report module parses a checked-in build report (no tools needed) and prints the table."""

from __future__ import annotations

import json
from pathlib import Path

from flow.report import finn_estimates, format_summary, load_summary

FIXTURE = Path(__file__).parents[1] / "fixtures" / "flow_build"
"""Reports of one default build (si_resnet_w1a1, pynq-z2, exact front end, no Vivado)."""


def test_summary_schema():
    s = load_summary(FIXTURE)
    keys = {"schema_version", "model", "board", "fpga_part", "clock_ns", "all_nodes_hw",
            "non_hw_nodes", "estimates", "budget", "verification", "outputs"}
    assert keys <= set(s)
    assert set(s["estimates"]) == {"LUT", "BRAM_18K", "URAM", "DSP", "throughput_fps",
                                   "latency_ns"}
    assert set(s["budget"]) == {"LUT", "BRAM_18K", "URAM", "DSP"}
    for v in s["verification"]:
        assert {"step", "exact", "n_inputs"} <= set(v)
    assert s["outputs"]["bitfile"] == "skipped: Vivado not found"


def test_estimates_match_finn_reports():
    s = load_summary(FIXTURE)
    assert finn_estimates(FIXTURE) == s["estimates"]


def test_table_lists_resources_fps_and_every_stage():
    s = load_summary(FIXTURE)
    text = format_summary(s)
    for k in ("LUT", "BRAM_18K", "URAM", "DSP", "fps", "latency"):
        assert k in text
    for v in s["verification"]:
        assert v["step"] in text
    assert "not verified" in text  # specialised stages, no Vivado here


def test_times():
    t = json.loads((FIXTURE / "time_per_step.json").read_text())  # as bench/flow.py reads it
    assert "convert_to_hw" in t and all(v >= 0 for v in t.values())
