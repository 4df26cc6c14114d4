"""``python flow/build.py --board BOARD [--model NAME | --onnx QONNX] ...``: QONNX -> FINN accelerator.

Three layers, as in qonnx's CLIs:

* :func:`build_model_wrapper`: the library function on objects (a QONNX ``ModelWrapper``, configs);
* :func:`build`: the file wrapper (resolves the model from the registry, a checkpoint or an ONNX
  file, and owns the output directory);
* :func:`main`: argument parsing only (also the ``sibnn-build`` console script).

The output directory is written atomically: the build runs in a temporary sibling directory that
replaces the old one with ``os.replace``/``rename`` only when it succeeded. Bad input (a
:class:`~sibnn_base.errors.UserError`) leaves nothing behind; any other failure keeps the
partial build as ``<output_dir>.failed/`` with its ``status.json``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # python flow/build.py: exactly the sibnn-build console script
    from sibnn_base.launch import build as _sibnn_build  # handles signals from its first line

    sys.exit(_sibnn_build())

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from flow.config import (  # noqa: E402
    DEFAULT_MODEL,
    SIM_INPUTS_DEFAULT,
    BoardConfig,
    BuildConfig,
    FrontEnd,
    SimMode,
    list_boards,
    resolve_build_config,
    write_config,
)
from flow.env.finn import ToolStatus  # noqa: E402
from flow.guard import graph_tool_errors  # noqa: E402
from flow.plan import BuildPlan, ResolvedSource, make_plan, reaches, resolve_source  # noqa: E402
from sibnn_base import runlog, signals  # noqa: E402
from sibnn_base.atomic import (  # noqa: E402
    DISK_ERRORS,
    TEMP_OWNER,
    make_temp_dir,
    owned_by_sibnn,
    swap_in,
)
from sibnn_base.errors import (  # noqa: E402
    ArgumentParser,
    ConfigError,
    OutputDirError,
    cli_errors,
)

if TYPE_CHECKING:
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.hw.folding import FoldingRecord
    from flow.hw.steps import FlowContext
    from flow.proof.verify import Verifier
    from flow.runner import StepRecord


STEP_REPORTS = {"fold": ("folding_config.json",),
                "generate_estimate_reports": ("estimate_*.json",)}
"""Report files each step writes (under ``report/``)."""


def forget_outputs_from(work: Path, all_steps: list, first: int) -> None:
    """A partial rerun starts at step ``first``: delete what the previous build wrote at that
    step and after it (intermediate models, step reports, timings), so nothing from the old build
    survives past the new stop step unmarked; the summary is rewritten from this run."""
    for i, st in enumerate(all_steps):
        if i < first:
            continue
        for f in (work / "intermediate_models").glob(f"{i:02d}_*.onnx"):
            f.unlink()
        for pattern in STEP_REPORTS.get(st.name, ()):
            for f in (work / "report").glob(pattern):
                f.unlink()
    for name in ("report/summary.json", "report/verification.json", "time_per_step.json"):
        (work / name).unlink(missing_ok=True)


def _relocate(root: Path, old: str, new: str) -> None:
    """Rewrite absolute paths FINN stored in node attributes after the directory moved."""
    from qonnx.core.modelwrapper import ModelWrapper

    for f in list(root.glob("*.onnx")) + list((root / "intermediate_models").glob("*.onnx")):
        m = ModelWrapper(str(f))
        changed = False
        for n in m.graph.node:
            for a in n.attribute:
                if a.type == a.STRING and old.encode() in a.s:
                    a.s = a.s.replace(old.encode(), new.encode())
                    changed = True
        if changed:
            m.save(str(f))


def build_model_wrapper(model: ModelWrapper, cfg: BuildConfig, board: BoardConfig,
                        out_dir: Path, tools: ToolStatus, *, front_end: FrontEnd = FrontEnd.FINN,
                        verifier: Verifier | None = None, echo: Callable[[str], None] = print,
                        ir=None, lowered: ModelWrapper | None = None
                        ) -> tuple[ModelWrapper, list[StepRecord], FlowContext]:
    """Run the selected steps on a cleaned QONNX ``model`` inside ``out_dir`` (exists, ours).

    Returns ``(final_model, records, ctx)``. Raises on any failure.
    """
    from flow.env.finn import dataflow_config, finn_session
    from flow.hw.steps import FlowContext, select_steps, steps_for
    from flow.runner import run_steps

    steps = select_steps(cfg.start_step, cfg.stop_step, front_end)
    with finn_session(out_dir / "finn_build", tools, log_file=out_dir / "build.log") as finn_steps:
        finn_cfg = dataflow_config(out_dir, board=board.board, fpga_part=board.fpga_part,
                                   clock_ns=board.synth_clk_period_ns,
                                   shell_flow_type=board.shell_flow_type.value,
                                   vivado=tools.has_vivado, mvau_wwidth_max=cfg.mvau_wwidth_max)
        ctx = FlowContext(cfg=cfg, board=board, tools=tools, finn_cfg=finn_cfg,
                          finn_steps=finn_steps, out_dir=out_dir,
                          all_steps=steps_for(front_end), ir=ir, lowered=lowered)
        final, records = run_steps(model, steps, ctx, verifier, echo=echo)
    return final, records, ctx


def _keep_failed(work: Path, final: Path, error: str) -> None:
    """Keep a failed build as ``<final>.failed`` (with its status file); ``final`` is untouched.
    A ``<final>.failed`` that sibnn did not write is kept: ours goes to ``<final>.failed-N``."""
    import sys as _sys

    from flow.runner import write_status

    exc = _sys.exc_info()[1]
    write_status(work, "failed", error=f"{type(exc).__name__}: {exc}" if exc else error)
    (work / TEMP_OWNER).unlink(missing_ok=True)
    failed = final.with_name(final.name + ".failed")
    if failed.exists() and not owned_by_sibnn(failed):  # never remove what we did not write
        n = 1
        while final.with_name(f"{final.name}.failed-{n}").exists():
            n += 1
        failed = final.with_name(f"{final.name}.failed-{n}")
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(work, failed)
    runlog.attach(failed / "build.log")


def _commit(work: Path, final: Path) -> None:
    """Swap the finished build in (:func:`~sibnn_base.atomic.swap_in`: a signal rolls it back)."""
    try:
        swap_in(work, final)
    except OSError as err:
        raise OutputDirError(f"cannot move the build into {final}: {err.strerror}") from None


def _outputs(records: list[StepRecord], tools: ToolStatus,
             stop_step: str | None) -> dict[str, str]:
    from flow.hw.steps import BACK_END

    done = {r.name: r.status for r in records}
    out = {}
    for s in BACK_END:
        if s.output is None:
            continue
        if s.name in done:
            out[s.output] = "generated" if done[s.name] == "done" else done[s.name]
        elif s.vivado and not tools.has_vivado:
            out[s.output] = tools.skipped
        else:
            out[s.output] = f"not run (--stop-step {stop_step})" if stop_step else "not run"
    return out


@dataclass(frozen=True)
class StepsRun:
    """What running the steps and the ``--sim`` simulations gave (:func:`_run_steps_and_sims`)."""

    final_model: ModelWrapper
    records: list[StepRecord]
    folding: FoldingRecord | None
    """The fold step's decision; None where this run did not include ``fold``."""
    simulation: dict
    """``summary.json["simulation"]`` (``{"mode": "none"}`` without ``--sim``)."""
    stitched: dict | None
    """``summary.json["stitched"]``, or None where the stitched simulation did not run."""


def _pixels(plan: BuildPlan, src: ResolvedSource):
    from flow.proof.verify import verification_pixels

    shape = src.exported.get_tensor_shape(src.exported.graph.input[0].name)
    return verification_pixels((shape[2], shape[3], shape[1]), plan.cfg.verify_inputs,
                               plan.cfg.seed)


def _simulate(plan: BuildPlan, src: ResolvedSource, work: Path,
              echo: Callable[[str], None]) -> tuple[dict, dict | None]:
    """Run the ``hw_codegen`` stage as generated code (``--sim``): the ``simulation`` record
    (node by node: cppsim/rtlsim) and the ``stitched`` record (the whole accelerator), or
    None where the mode does not include it."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.report import simulation_line
    from flow.sim.sim_common import default_cache_dir
    from flow.sim.simulate import simulate

    if plan.sims is None:
        return {"mode": "none"}, None
    found = sorted((work / "intermediate_models").glob("*_hw_codegen.onnx"))
    if not found:
        raise ConfigError(f"--sim {SimMode(plan.cfg.sim).value} needs the hw_codegen stage's model, "
                          "which this build did not produce")
    model = ModelWrapper(str(found[-1]))
    rec: dict = {"mode": SimMode(plan.cfg.sim).value}
    echo(f"  simulation (--sim {SimMode(plan.cfg.sim).value}): {plan.sims.describe()}")
    if {"cppsim", "rtlsim"} & set(plan.sims.mode.kinds):
        pixels = _pixels(plan, src)[: plan.cfg.sim_inputs or SIM_INPUTS_DEFAULT]
        rec = simulate(model, pixels, plan.sims, work=work / "sim", cache=default_cache_dir(),
                       jobs=plan.cfg.sim_jobs, golden=src.golden)
        echo(f"  simulation: {simulation_line(rec)} ({rec['seconds']['total']:.1f} s)")
    stitched = _simulate_stitched(plan, src, model, work, echo) if plan.stitched else None
    return rec, stitched


def _simulate_stitched(plan: BuildPlan, src: ResolvedSource, model: ModelWrapper, work: Path,
                       echo: Callable[[str], None]) -> dict:
    """``--sim stitched``: the whole accelerator, its FIFOs sized (``report/fifo_depths.json``
    in FINN's format) and its stitched graph saved as an intermediate model."""
    import json

    from flow.env.finn import finn_session
    from flow.report import finn_estimates, stitched_line
    from flow.sim.sim_common import default_cache_dir
    from flow.sim.stitched_run import load_fifo_depths, run_stitched
    cfg, board = plan.cfg, plan.board
    imposed = load_fifo_depths(cfg.fifo_depths) if cfg.fifo_depths else None
    try:
        fps_finn = float(finn_estimates(work)["throughput_fps"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        fps_finn = None
    pixels = _pixels(plan, src)[: cfg.sim_frames]

    def session():
        return finn_session(work / "finn_build", plan.tools, log_file=work / "build.log")

    rec, sized, fifo_cfg = run_stitched(
        model, pixels, fpga_part=board.fpga_part, clk_ns=board.synth_clk_period_ns,
        session=session, tools=plan.sims.rtlsim, cache=default_cache_dir() / "stitched",
        work=work / "sim" / "stitched", jobs=cfg.sim_jobs, golden=src.golden,
        imposed=imposed, fps_finn=fps_finn)
    inter = work / "intermediate_models"
    n = len(list(inter.glob("[0-9][0-9]_*.onnx")))
    sized.save(str(inter / f"{n:02d}_stitched.onnx"))
    (work / "report").mkdir(parents=True, exist_ok=True)
    (work / "report" / "fifo_depths.json").write_text(json.dumps(fifo_cfg, indent=2))
    echo(f"  stitched: {stitched_line(rec)} ({rec['wall_s']:.1f} s)")
    _check_fifo_budget(plan, work, rec)
    return rec


def _check_fifo_budget(plan: BuildPlan, work: Path, rec: dict) -> None:
    """The budget check again with the FIFOs priced at their sized depths (FINN's StreamingFIFO
    estimates on top of FINN's totals and sibnn's fork/add model)."""
    from flow.hw.resources import modelled_costs, with_modelled
    from flow.report import finn_estimates

    try:
        est = finn_estimates(work)
    except FileNotFoundError:
        return
    from qonnx.core.modelwrapper import ModelWrapper

    found = sorted((work / "intermediate_models").glob("*_hw_codegen.onnx"))
    if found:
        est = with_modelled(est, modelled_costs(ModelWrapper(str(found[-1]))))
    f, budget = rec["fifo_cost_finn"], plan.board.budget
    need = {"LUT": est.get("LUT_modelled", est.get("LUT", 0)) + f["LUT"],
            "BRAM_18K": est.get("BRAM_18K", 0) + f["BRAM_18K"]}
    over = {k: v for k, v in need.items() if v > budget.get(k, float("inf"))}
    rec["within_budget_with_fifos"] = not over
    if over and not plan.cfg.allow_over_budget:
        what = ", ".join(f"{k} {v:,.0f} vs budget {budget[k]:,}" for k, v in over.items())
        raise ConfigError(f"with its FIFOs at the sized depths the design does not fit "
                          f"{plan.board.name} within {plan.board.budget_fraction:.0%} of its "
                          f"resources: {what}; fold further, choose a larger board, or pass "
                          "--allow-over-budget")


def _run_steps_and_sims(plan: BuildPlan, src: ResolvedSource, model: ModelWrapper, work: Path,
                        verifier: Verifier, echo: Callable[[str], None]) -> StepsRun:
    """The steps, and the ``--sim`` simulations of the ``hw_codegen`` graph. On a Vivado machine
    the simulations run between ``hw_codegen`` and the Vivado steps, so the FIFO depths the
    stitched simulation sizes reach ``set_fifo_depths``."""
    cfg = plan.cfg
    kw = dict(front_end=src.front_end, verifier=verifier, echo=echo, ir=src.ir,
              lowered=src.lowered)
    split = (plan.tools.has_vivado and plan.sims is not None and reaches(cfg, "hw_codegen")
             and reaches(cfg, "hw_ipgen"))
    if not split:
        final, records, ctx = build_model_wrapper(model, cfg, plan.board, work, plan.tools, **kw)
        return StepsRun(final, records, ctx.folding, *_simulate(plan, src, work, echo))
    first = replace(cfg, stop_step="hw_codegen")
    final, records, ctx = build_model_wrapper(model, first, plan.board, work, plan.tools, **kw)
    folding = ctx.folding
    simulation, stitched = _simulate(plan, src, work, echo)
    rest = replace(cfg, start_step="hw_ipgen")
    final, more, ctx = build_model_wrapper(final, rest, plan.board, work, plan.tools, **kw)
    return StepsRun(final, records + more, folding, simulation, stitched)


def _verifier(plan: BuildPlan, src: ResolvedSource, verifier_factory) -> Verifier:
    from flow.proof.verify import ChainVerifier, GoldenVerifier

    pixels = _pixels(plan, src)
    if verifier_factory is not None:
        return verifier_factory(pixels, src.golden)
    if src.golden is not None:
        return GoldenVerifier(src.golden, pixels)
    return ChainVerifier(pixels)


def _first_model(plan: BuildPlan, src: ResolvedSource, work: Path) -> ModelWrapper:
    """The graph the first selected step takes: the source graph, or on a partial rerun the
    previous step's intermediate model (what the old build wrote from there on is deleted).
    A step name the chosen front end lacks is a ConfigError here, before any step runs."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.hw.steps import select_steps, steps_for

    all_steps = steps_for(src.front_end)
    first = all_steps.index(select_steps(plan.cfg.start_step, plan.cfg.stop_step,
                                         src.front_end)[0])
    if not plan.resume:
        return src.exported
    forget_outputs_from(work, all_steps, first)
    if first == 0:
        return src.exported
    prev = all_steps[first - 1]
    prev_file = work / "intermediate_models" / f"{first - 1:02d}_{prev.name}.onnx"
    if not prev_file.is_file():
        raise ConfigError(f"--start-step {plan.cfg.start_step} needs "
                          f"{plan.final / prev_file.relative_to(work)} from an earlier build")
    return ModelWrapper(str(prev_file))


def _announce(plan: BuildPlan, src: ResolvedSource, echo: Callable[[str], None]) -> None:
    """The build's first lines: what is built, for which board, and how it is checked."""
    tools = plan.tools
    echo(f"sibnn-build: {plan.cfg.model_name} ({src.weights}) -> {plan.board.name} "
         f"[{plan.final}]")
    echo(f"  front end: {src.front_end.value}" +
         (f"; {src.front_end_note}" if src.front_end_note else ""))
    echo("  verification against: " + ("the golden model" if src.golden is not None else
                                      "the exported model (no golden model for this graph)"))
    if src.golden_io:
        echo(f"  golden model == the export's I/O pair on {src.golden_io['n_inputs']} inputs")
    if tools.has_vivado:
        echo(f"  Vivado: {tools.vivado}")
    else:
        echo(f"  Vivado not found ({tools.reason}): Vivado-only outputs are skipped")


def _write_summary(plan: BuildPlan, src: ResolvedSource, run: StepsRun, baseline: dict,
                   work: Path, started: float) -> None:
    """``report/summary.json``: the report's fields, then this build's own records."""
    from flow import report
    from flow.hw.transforms import INPUT_LAYOUT_KEY, OUTPUT_AFFINE_KEY

    cfg, final_model = plan.cfg, run.final_model
    summary = report.build_summary(
        model_name=cfg.model_name, board=plan.board, out_dir=work, final_model=final_model,
        records=run.records, outputs=_outputs(run.records, plan.tools, cfg.stop_step),
        extra={"weights": src.weights, "front_end": src.front_end.value,
               "front_end_note": src.front_end_note,
               "verified_against": "golden" if src.golden is not None else "export",
               "golden_io": src.golden_io,
               "simulation": run.simulation,
               "stitched": run.stitched,
               "folding": run.folding.to_summary() if run.folding is not None else None,
               "output_affine": final_model.get_metadata_prop(OUTPUT_AFFINE_KEY),
               "input_layout": final_model.get_metadata_prop(INPUT_LAYOUT_KEY) or "NCHW",
               "build_seconds": round(time.time() - started, 2)})
    summary["verification"].insert(0, baseline)
    report.write_summary(summary, work)


def build(cfg: BuildConfig, *, echo: Callable[[str], None] = print,
          verifier_factory=None) -> Path:
    """The whole build for ``cfg``; returns the output directory. See the module docstring.

    ``verifier_factory(pixels_nhwc, golden)`` may replace the default verifier (the golden model
    where it builds, else :class:`~flow.proof.verify.ChainVerifier`).
    """
    from flow import report
    from flow.runner import write_status

    plan = make_plan(cfg)
    final, board = plan.final, plan.board
    work = make_temp_dir(final, "tmp-", "build")
    started = time.time()
    running = False
    try:
        runlog.attach(work / "build.log")
        signals.check()
        if plan.resume:
            shutil.copytree(final, work, dirs_exist_ok=True)
        with graph_tool_errors(final):
            src = resolve_source(plan, work)
        model = _first_model(plan, src, work)
        write_config(cfg, board, work)
        write_status(work, "running", model=cfg.model_name, board=board.name)
        _announce(plan, src, echo)
        verifier = _verifier(plan, src, verifier_factory)
        signals.check()
        running = True
        with graph_tool_errors(final):
            baseline = verifier("export", src.exported)
            run = _run_steps_and_sims(plan, src, model, work, verifier, echo)
        _write_summary(plan, src, run, baseline, work, started)
        write_status(work, "ok", model=cfg.model_name, board=board.name,
                     seconds=round(time.time() - started, 2))
        _relocate(work, str(work), str(final))
        (work / TEMP_OWNER).unlink(missing_ok=True)
        _commit(work, final)
    except BaseException as err:
        with signals.deferred():  # a signal now must not cut the cleanup short
            disk = isinstance(err, OSError) and err.errno in DISK_ERRORS
            if running and not disk:
                _keep_failed(work, final, f"{type(err).__name__}: {err}")
            else:  # bad input, a full or read-only disk, or a signal before any step
                shutil.rmtree(work, ignore_errors=True)
                runlog.attach(None)
        if disk:
            raise OutputDirError(f"cannot write the build next to {final}: {err.strerror}; "
                                 f"{final} is unchanged") from None
        raise
    runlog.attach(final / "build.log")
    echo(report.format_summary(report.load_summary(final)))
    return final


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from flow.hw.steps import step_names

    p = ArgumentParser(
        prog="sibnn-build",
        description="Compile a QONNX network into a FINN dataflow accelerator, verified at every "
                    "stage that executes here.",
        epilog=f"boards: {', '.join(list_boards())}; steps (exact front end): "
               f"{', '.join(step_names('exact'))}; (finn front end): {', '.join(step_names('finn'))}")
    p.add_argument("--board", default=None, help="board id (flow/boards/<board>.yaml) or a path to a board YAML")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help=f"registry model (default {DEFAULT_MODEL})")
    src.add_argument("--onnx", default=None, help="QONNX file (e.g. a Brevitas export)")
    p.add_argument("--checkpoint", default=None, help="checkpoint for --model")
    p.add_argument("--strict-checkpoint", action="store_true", default=None,
                   help="refuse a checkpoint without a payload sha256 (default: load it with a "
                        "warning in build.log)")
    p.add_argument("--output-dir", default=None, help="default build/<model>_<board>")
    p.add_argument("--config", default=None, help="build config YAML/JSON (keys of BuildConfig)")
    p.add_argument("--folding", default=None, help="FINN folding JSON (instead of auto folding)")
    p.add_argument("--start-step", default=None)
    p.add_argument("--stop-step", default=None)
    p.add_argument("--front-end", default=None, choices=[f.value for f in FrontEnd],
                   help="exact: sibnn's integer IR (flow.hw.lower); finn: FINN's ConvertQONNXtoFINN "
                        "+ streamlining; auto (default): exact where the IR covers the graph")
    p.add_argument("--require-bitfile", action="store_true", default=None,
                   help="fail (exit 2) instead of skipping the Vivado-only outputs")
    p.add_argument("--target-fps", type=int, default=None,
                   help="fold for this throughput instead of the fastest within budget")
    p.add_argument("--allow-over-budget", action="store_true", default=None,
                   help="build a folding whose estimates exceed the board budget")
    p.add_argument("--sim", default=None, choices=[m.value for m in SimMode],
                   help="after hw_codegen, run every HLS node as its generated C++ (cppsim, g++) "
                        "and/or every RTL node as its RTL (rtlsim, Verilator), exact against the "
                        "golden model; stitched: the whole accelerator with FIFOs, cycle by "
                        "cycle on several frames, sizing the FIFOs; all: the three "
                        "(default none)")
    p.add_argument("--fifo-depths", default=None, metavar="FILE",
                   help="impose these FIFO depths (FINN's FIFO config JSON) on the stitched "
                        "simulation instead of sizing them (what-if runs; --sim stitched|all)")
    return p.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = resolve_build_config(
        a.config, board=a.board, model=a.model, onnx=a.onnx, checkpoint=a.checkpoint,
        output_dir=a.output_dir, folding=a.folding, strict_checkpoint=a.strict_checkpoint,
        start_step=a.start_step,
        stop_step=a.stop_step, target_fps=a.target_fps, front_end=a.front_end,
        require_bitfile=a.require_bitfile, allow_over_budget=a.allow_over_budget, sim=a.sim,
        fifo_depths=a.fifo_depths)
    build(cfg)
    return 0
