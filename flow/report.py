"""Read, build and print the build reports (the one module that knows their layout).

Files under ``<build>/``:

* ``report/summary.json``: the issue's schema (``schema_version`` 1);
* ``report/verification.json``: one entry per stage;
* ``report/estimate_*.json``: FINN's own estimate reports;
* ``report/folding_config.json``: the folding, FINN schema;
* ``time_per_step.json``, ``status.json``, ``build_config.yaml``.

Notebooks call :func:`load_summary` and :func:`format_summary`; they hold no logic of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

from flow.config import BUDGETED, BoardConfig

SCHEMA_VERSION = 1


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def finn_estimates(out_dir: Path) -> dict:
    """Totals from FINN's ``estimate_layer_resources.json`` and ``estimate_network_performance.json``."""
    rep = Path(out_dir) / "report"
    res = _read_json(rep / "estimate_layer_resources.json")["total"]
    perf = _read_json(rep / "estimate_network_performance.json")
    est = {k: float(res.get(k, 0)) for k in BUDGETED}
    est["throughput_fps"] = float(perf["estimated_throughput_fps"])
    est["latency_ns"] = float(perf["estimated_latency_ns"])
    return est


def build_summary(*, model_name: str, board: BoardConfig, out_dir: Path, final_model,
                  records, outputs: dict[str, str], extra: dict | None = None) -> dict:
    """``summary.json`` as the issue specifies it."""
    from flow.hw.steps import non_hw_nodes

    non_hw = non_hw_nodes(final_model) if final_model is not None else []
    try:
        est = finn_estimates(out_dir)
    except FileNotFoundError:
        est = None
    if est is not None and final_model is not None:
        from flow.hw.resources import modelled_costs, with_modelled

        est = with_modelled(est, modelled_costs(final_model))
    summary = {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "board": board.name,
        "fpga_part": board.fpga_part,
        "clock_ns": board.synth_clk_period_ns,
        "all_nodes_hw": final_model is not None and not non_hw,
        "non_hw_nodes": non_hw,
        "estimates": est,
        "budget": board.budget,
        "capacity": board.capacity,
        "verification": [r.verification for r in records if r.verification is not None],
        "outputs": outputs,
    }
    if extra:
        summary.update(extra)
    return summary


def write_summary(summary: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "report" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return path


def load_summary(out_dir: str | Path) -> dict:
    """Load ``report/summary.json`` of a build directory and check its schema version."""
    data = _read_json(Path(out_dir) / "report" / "summary.json")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"summary schema {data.get('schema_version')} != {SCHEMA_VERSION}")
    return data


def simulation_line(rec: dict) -> str:
    """``cppsim exact (N HLS nodes), rtlsim exact (M RTL nodes) on K inputs; ...`` from the
    ``simulation`` record of ``summary.json`` (:mod:`flow.sim.simulate`)."""
    parts = [f"{k} exact ({rec[k]['nodes']} {'HLS' if k == 'cppsim' else 'RTL'} nodes)"
             for k in ("cppsim", "rtlsim") if k in rec]
    po = rec.get("python_only") or []
    tail = f"; python models only: {', '.join(po)}" if po else "; python_only: none"
    return ", ".join(parts) + f" on {rec['n_inputs']} inputs" + tail


def stitched_line(rec: dict) -> str:
    """``8 frames exact, 15898 fps (FINN estimate 15944), latency ..., no deadlock, FIFOs ...``
    from the ``stitched`` record of ``summary.json`` (:mod:`flow.sim.stitched_run`)."""
    est = rec.get("fps_finn_estimate")
    return (f"{rec['frames']} frames exact, {rec['fps']:.0f} fps simulated"
            + (f" (FINN estimate {est:.0f})" if est else "")
            + f", first frame after {rec['latency_cycles']} cycles, "
            + ("no deadlock" if rec["deadlock_free"] else "DEADLOCK")
            + f", {len(rec['fifo_depths'])} FIFOs {rec['fifo_sizing']}: {rec['fifo_bits']} bits "
              f"(FINN est. {rec['fifo_cost_finn']['LUT']} LUT, "
              f"{rec['fifo_cost_finn']['BRAM_18K']} BRAM18)"
            + (f"; below FINN's estimate because of {', '.join(rec['below_estimate_because'][:4])}"
               " (their cycles per frame, simulated alone, exceed the estimate: see "
               "summary.json stitched.nodes)" if rec.get("below_estimate_because") else ""))


def format_summary(summary: dict) -> str:
    """A short table: resources against the board, FPS, latency, verification per stage."""
    lines = [f"{summary['model']} on {summary['board']} ({summary['fpga_part']}, "
             f"{1000.0 / summary['clock_ns']:.0f} MHz)"]
    est = summary.get("estimates")
    cap = summary.get("capacity", {})
    bud = summary["budget"]
    lines.append(f"  {'resource':<10}{'estimate':>10}{'budget':>10}{'board':>10}{'use':>8}")
    for k in BUDGETED:
        e = est[k] if est else float("nan")
        use = f"{100.0 * e / cap[k]:.1f}%" if est and cap.get(k) else "-"
        lines.append(f"  {k:<10}{e:>10.0f}{bud[k]:>10}{cap.get(k, 0):>10}{use:>8}")
    if est and est.get("sibnn_modelled", {}).get("nodes"):
        m = est["sibnn_modelled"]
        lines.append(f"  + forks/adds FINN prices at 0 (sibnn model, {len(m['nodes'])} nodes): "
                     f"{m['LUT']:.0f} LUT, {m['FF']:.0f} FF -> LUT {est['LUT_modelled']:.0f} "
                     f"({100.0 * est['LUT_modelled'] / cap['LUT']:.1f}%)" if cap.get("LUT") else "")
    st = summary.get("stitched")
    if est and st and cap.get("LUT"):
        f = st["fifo_cost_finn"]
        lut = est.get("LUT_modelled", est["LUT"]) + f["LUT"]
        lines.append(f"  + {f['n']} FIFOs at the sized depths (FINN's StreamingFIFO estimate): "
                     f"{f['LUT']} LUT, {f['BRAM_18K']} BRAM18 -> LUT {lut:.0f} "
                     f"({100.0 * lut / cap['LUT']:.1f}%), BRAM18 {est['BRAM_18K'] + f['BRAM_18K']:.0f}")
    if est:
        lines.append(f"  throughput {est['throughput_fps']:.1f} fps, latency "
                     f"{est['latency_ns'] / 1000.0:.1f} us (FINN estimates)")
    lines.append(f"  all nodes in hardware: {summary['all_nodes_hw']}"
                 + (f" (outside: {', '.join(summary['non_hw_nodes'])})"
                    if summary["non_hw_nodes"] else ""))
    lines.append("  verification (np.array_equal on integer scores against the golden model):")
    notes = set()
    for v in summary["verification"]:
        state = "exact" if v["exact"] else ("MISMATCH" if v["exact"] is False else "not verified")
        pm = v.get("python_model")
        if v["exact"] is None and pm:
            state = "python model exact" if pm["exact"] else "python model MISMATCH"
            n = pm["n_inputs"]
            notes.add(v.get("reason", ""))
            why = " (HLS/RTL: not verified *)"
        else:
            n = v["n_inputs"]
            why = f" ({v['reason']})" if v.get("reason") else ""
        lines.append(f"    {v['step']:<28}{state:<20}{n:>3} inputs{why}")
    for note in sorted(x for x in notes if x):
        lines.append(f"    * {note}; FINN's python models of the same layers (this stage's "
                     "folding, datatypes, thresholds) were run instead")
    sim = summary.get("simulation") or {}
    if sim.get("n_inputs"):
        lines.append(f"  generated code (--sim {sim['mode']}): {simulation_line(sim)}")
    elif not st:
        lines.append("  generated code: not run (--sim cppsim|rtlsim runs the HLS C++ with g++ "
                     "and the RTL with Verilator node by node; --sim stitched runs the whole "
                     "accelerator with its FIFOs; --sim all does both)")
    if st:
        lines.append(f"  stitched accelerator (--sim {sim.get('mode')}): {stitched_line(st)}")
    lines.append("  outputs:")
    for k, v in summary["outputs"].items():
        lines.append(f"    {k:<22}{v}")
    return "\n".join(lines)
