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

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python flow/build.py
    # the repository root replaces the script's own directory on the path, so flow's modules
    # (config, report, hw, ...) are imported as flow.* and never shadow an installed package
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_here)]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sibnn_base import signals as _signals  # handled from here on, imports included

    _signals.install(early=True)

from flow.config import (  # noqa: E402
    DEFAULT_MODEL,
    SIM_INPUTS_DEFAULT,
    BoardConfig,
    BuildConfig,
    FifoSizing,
    FrontEnd,
    SimMode,
    list_boards,
    load_board,
    resolve_build_config,
    write_config,
)
from flow.guard import graph_tool_errors  # noqa: E402
from flow.hw.finn_env import ToolStatus  # noqa: E402
from sibnn_base import runlog, signals  # noqa: E402
from sibnn_base.atomic import (  # noqa: E402
    DISK_ERRORS,
    TEMP_OWNER,
    check_target,
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


def _check_output_dir(final: Path) -> None:
    check_target(final, "build")
    if final.exists() and not os.access(final, os.W_OK):
        raise OutputDirError(f"output directory {final} is not writable")


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


def build_model_wrapper(model, cfg: BuildConfig, board: BoardConfig, out_dir: Path, tools,
                        *, front_end: FrontEnd = FrontEnd.FINN, verifier=None, echo=print,
                        ir=None, lowered=None):
    """Run the selected steps on a cleaned QONNX ``model`` inside ``out_dir`` (exists, ours).

    Returns ``(final_model, records, ctx)``. Raises on any failure.
    """
    from flow.hw.finn_env import dataflow_config, finn_session
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


def _outputs(records, tools, stop_step: str | None) -> dict[str, str]:
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


@dataclass
class BuildPlan:
    """Everything a build decides, resolved once before any step runs (:func:`make_plan`), then
    completed with the source graph (:func:`resolve_source`). :mod:`flow.runner` only runs it;
    :mod:`flow.proof.verify` owns the checking."""

    cfg: BuildConfig
    board: BoardConfig
    tools: ToolStatus
    final: Path
    """The output directory the build replaces atomically."""
    resume: bool
    """A partial rerun (``--start-step``) inside an earlier build of ``final``."""
    # resolved from the source graph (resolve_source)
    exported: Any = None
    """The cleaned QONNX graph being compiled (``model.qonnx.onnx``)."""
    weights: str = ""
    """Which weights, in one line, for the report."""
    golden: Any = None
    """The golden model (ONNX Runtime), or None where the integer IR does not cover the graph."""
    ir: Any = None
    lowered: Any = None
    """The exact front end's lowered graph from the front-end probe (reused by ``lower``)."""
    front_end: FrontEnd = FrontEnd.FINN
    front_end_note: str = ""
    golden_io: dict | None = None
    """The check of the golden model against ``sibnn-export``'s I/O pair, when the ONNX file
    came with one."""
    sims: Any = None
    """The code simulators ``--sim`` needs (:class:`flow.proof.simulate.Simulators`), found
    before anything is written; None for ``--sim none``."""
    stitched: bool = False
    """Run the stitched simulation: ``--sim stitched|all``, or a Vivado build whose FIFOs are
    sized by it (``fifo_sizing: sim``), where it runs between ``hw_codegen`` and the Vivado
    steps."""

    @property
    def all_steps(self) -> list:
        from flow.hw.steps import steps_for

        return steps_for(self.front_end)

    @property
    def steps(self) -> list:
        from flow.hw.steps import select_steps

        return select_steps(self.cfg.start_step, self.cfg.stop_step, self.front_end)


def make_plan(cfg: BuildConfig) -> BuildPlan:
    """Check everything that can be checked before anything is written: board, tools, step
    names, the folding file, the output directory and what a partial rerun needs."""
    from flow.hw.finn_env import detect_tools
    from flow.hw.parts import check_part
    from flow.hw.steps import step_names

    board = load_board(cfg.board, cfg.budget_fraction)
    check_part(board)
    tools = detect_tools()
    if cfg.require_bitfile:
        tools.require_vivado("the bitfile (require_bitfile)")
    for flag, name in (("--start-step", cfg.start_step), ("--stop-step", cfg.stop_step)):
        if name is not None and name not in step_names():
            raise ConfigError(f"{flag} {name!r} is not a step; steps: {', '.join(step_names())}")
    sims = None
    stitched = "stitched" in SimMode(cfg.sim).kinds or (
        tools.has_vivado and FifoSizing(cfg.fifo_sizing) == FifoSizing.SIM
        and _reaches(cfg, "set_fifo_depths"))
    if SimMode(cfg.sim).kinds or stitched:
        from flow.proof.simulate import find_simulators

        _check_sim_steps(cfg)
        # a missing g++/Verilator/finn-hlslib: fail first
        sims = find_simulators(cfg.sim if SimMode(cfg.sim).kinds else "stitched")
    if cfg.fifo_depths:
        from flow.hw.stitched_run import load_fifo_depths

        load_fifo_depths(cfg.fifo_depths)  # malformed file: fail before anything is written
    if cfg.folding:
        from flow.hw.folding import load_folding

        load_folding(cfg.folding)  # malformed file: fail before anything is written
    final = cfg.resolved_output_dir().absolute()
    _check_output_dir(final)
    resume = bool(cfg.start_step)
    if resume and not (final / "model.qonnx.onnx").is_file():
        raise ConfigError(f"--start-step {cfg.start_step} needs an earlier build in {final}")
    return BuildPlan(cfg=cfg, board=board, tools=tools, final=final, resume=resume, sims=sims,
                     stitched=stitched)


def _reaches(cfg: BuildConfig, step: str) -> bool:
    """Whether the selected steps include ``step`` (a back-end step)."""
    from flow.hw.steps import BACK_END

    names = [s.name for s in BACK_END]
    stop = cfg.stop_step if cfg.stop_step in names else None
    start = cfg.start_step if cfg.start_step in names else None
    i = names.index(step)
    return (stop is None or names.index(stop) >= i) and (start is None or names.index(start) <= i)


def resolve_source(plan: BuildPlan, work: Path) -> BuildPlan:
    """Load or export the source graph into ``work``, check once that every layer maps, build
    the golden model and pick the front end (lowering once, kept for the ``lower`` step)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.front.export import export_qonnx_model, load_qonnx, resolve_network
    from flow.front.support import check_supported

    cfg = plan.cfg
    if plan.resume:
        plan.exported = ModelWrapper(str(work / "model.qonnx.onnx"))
        plan.weights = "from the previous build"
    elif cfg.onnx:
        plan.exported = load_qonnx(cfg.onnx)  # checked with the file's own node names
        plan.exported.save(str(work / "model.qonnx.onnx"))
        plan.weights = f"ONNX file {cfg.onnx}" + _described(plan.exported)
    else:
        net, weights = resolve_network(cfg.model or DEFAULT_MODEL, checkpoint=cfg.checkpoint,
                                       overrides=cfg.model_overrides, seed=cfg.seed,
                                       strict_checkpoint=cfg.strict_checkpoint)
        plan.exported = check_supported(export_qonnx_model(net, work / "model.qonnx.onnx",
                                                           weights=weights))
        plan.weights = weights.description
    _pick_front_end(plan)
    if cfg.onnx and plan.golden is not None:
        plan.golden_io = _check_golden_io(Path(cfg.onnx), plan.golden)
    return plan


def _described(mw) -> str:
    from flow.front.export import description

    d = description(mw)
    return f" ({d['sibnn_arch']}, {d.get('sibnn_weights', '?')})" if "sibnn_arch" in d else ""


def _check_golden_io(onnx: Path, golden) -> dict | None:
    """A ``sibnn-export`` bundle ships ``input.npy`` / ``expected_output.npy`` next to its QONNX:
    the golden model this build verifies against must reproduce them bit for bit."""
    import numpy as np

    from flow.proof.verify import assert_equal

    x, y = onnx.parent / "input.npy", onnx.parent / "expected_output.npy"
    if not (x.is_file() and y.is_file()):
        return None
    px, expected = np.load(x), np.load(y)
    assert_equal("scores", expected.astype(np.int64),
                 golden.run(px)["scores"].astype(np.int64), f"{y.name} vs this build's golden")
    return {"input": str(x), "n_inputs": int(len(px)), "exact": True}


def _pick_front_end(plan: BuildPlan) -> None:
    """``auto`` takes the exact front end (``flow.front.lower``) when the integer IR covers the graph and
    FINN's otherwise (the note says why); ``exact`` makes that an error; ``finn`` always uses
    FINN's. The golden model is used for verification whenever it builds."""
    from flow.front.golden import golden_from_qonnx
    from flow.hw.lower import lower_to_finn
    from sibnn_base.errors import UnsupportedGraphError

    requested = FrontEnd(plan.cfg.front_end)
    why = ""
    try:
        plan.golden, plan.ir = golden_from_qonnx(plan.exported)
    except UnsupportedGraphError as err:
        why = f"integer IR: {err}"
    if requested == FrontEnd.FINN:
        plan.front_end = FrontEnd.FINN
        return
    if plan.ir is not None:
        try:
            plan.lowered = lower_to_finn(plan.ir)
            plan.front_end = FrontEnd.EXACT
            return
        except UnsupportedGraphError as err:
            why = f"lowering: {err}"
    if requested == FrontEnd.EXACT:
        raise UnsupportedGraphError(f"the exact front end cannot take this graph ({why})")
    plan.front_end, plan.front_end_note = FrontEnd.FINN, f"exact front end unavailable ({why})"


def _pixels(plan: BuildPlan):
    from flow.proof.verify import verification_pixels

    shape = plan.exported.get_tensor_shape(plan.exported.graph.input[0].name)
    return verification_pixels((shape[2], shape[3], shape[1]), plan.cfg.verify_inputs,
                               plan.cfg.seed)


def _check_sim_steps(cfg: BuildConfig) -> None:
    """``--sim`` runs the code ``hw_codegen`` generates: the build must get that far. Every
    front end shares the back end from ``hw_codegen`` on, so this is known before any export."""
    from flow.hw.steps import BACK_END

    names = [s.name for s in BACK_END]
    reaching = names[names.index("hw_codegen"):]
    if cfg.stop_step is not None and cfg.stop_step not in reaching:
        raise ConfigError(f"--sim {SimMode(cfg.sim).value} runs the code hw_codegen generates, "
                          f"but --stop-step {cfg.stop_step} stops before it")


def _simulate(plan: BuildPlan, work: Path, echo) -> tuple[dict, dict | None]:
    """Run the ``hw_codegen`` stage as generated code (``--sim``): the ``simulation`` record
    (node by node: cppsim/rtlsim) and the ``stitched`` record (the whole accelerator), or
    None where the mode does not include it."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.hw.sim_common import default_cache_dir
    from flow.proof.simulate import simulate
    from flow.report import simulation_line

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
        pixels = _pixels(plan)[: plan.cfg.sim_inputs or SIM_INPUTS_DEFAULT]
        rec = simulate(model, pixels, plan.sims, work=work / "sim", cache=default_cache_dir(),
                       jobs=plan.cfg.sim_jobs, golden=plan.golden)
        echo(f"  simulation: {simulation_line(rec)} ({rec['seconds']['total']:.1f} s)")
    stitched = _simulate_stitched(plan, model, work, echo) if plan.stitched else None
    return rec, stitched


def _simulate_stitched(plan: BuildPlan, model, work: Path, echo) -> dict:
    """``--sim stitched``: the whole accelerator, its FIFOs sized (``report/fifo_depths.json``
    in FINN's format) and its stitched graph saved as an intermediate model."""
    import json

    from flow.hw.finn_env import finn_session
    from flow.hw.sim_common import default_cache_dir
    from flow.hw.stitched_run import load_fifo_depths, run_stitched
    from flow.report import finn_estimates, stitched_line
    cfg, board = plan.cfg, plan.board
    imposed = load_fifo_depths(cfg.fifo_depths) if cfg.fifo_depths else None
    try:
        fps_finn = float(finn_estimates(work)["throughput_fps"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        fps_finn = None
    pixels = _pixels(plan)[: cfg.sim_frames]

    def session():
        return finn_session(work / "finn_build", plan.tools, log_file=work / "build.log")

    rec, sized, fifo_cfg = run_stitched(
        model, pixels, fpga_part=board.fpga_part, clk_ns=board.synth_clk_period_ns,
        session=session, tools=plan.sims.rtlsim, cache=default_cache_dir() / "stitched",
        work=work / "sim" / "stitched", jobs=cfg.sim_jobs, golden=plan.golden,
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


def _run_steps_and_sims(plan: BuildPlan, model, work: Path, verifier, echo):
    """The steps, and the ``--sim`` simulations of the ``hw_codegen`` graph. On a Vivado machine
    the simulations run between ``hw_codegen`` and the Vivado steps, so the FIFO depths the
    stitched simulation sizes reach ``set_fifo_depths``. Returns ``(final model, step records,
    context, simulation record, stitched record)``."""
    import dataclasses

    cfg = plan.cfg
    kw = dict(front_end=plan.front_end, verifier=verifier, echo=echo, ir=plan.ir,
              lowered=plan.lowered)
    split = (plan.tools.has_vivado and plan.sims is not None and _reaches(cfg, "hw_codegen")
             and _reaches(cfg, "hw_ipgen"))
    if not split:
        final, records, ctx = build_model_wrapper(model, cfg, plan.board, work, plan.tools, **kw)
        return (final, records, ctx, *_simulate(plan, work, echo))
    first = dataclasses.replace(cfg, stop_step="hw_codegen")
    final, records, ctx = build_model_wrapper(model, first, plan.board, work, plan.tools, **kw)
    simulation, stitched = _simulate(plan, work, echo)
    rest = dataclasses.replace(cfg, start_step="hw_ipgen")
    final, more, ctx = build_model_wrapper(final, rest, plan.board, work, plan.tools, **kw)
    return final, records + more, ctx, simulation, stitched


def _verifier(plan: BuildPlan, verifier_factory):
    from flow.proof.verify import ChainVerifier, GoldenVerifier

    pixels = _pixels(plan)
    if verifier_factory is not None:
        return verifier_factory(pixels, plan.golden)
    if plan.golden is not None:
        return GoldenVerifier(plan.golden, pixels)
    return ChainVerifier(pixels)


def build(cfg: BuildConfig, *, echo=print, verifier_factory=None) -> Path:
    """The whole build for ``cfg``; returns the output directory. See the module docstring.

    ``verifier_factory(pixels_nhwc, golden)`` may replace the default verifier (the golden model
    where it builds, else :class:`~flow.proof.verify.ChainVerifier`).
    """
    from qonnx.core.modelwrapper import ModelWrapper

    from flow import report
    from flow.runner import write_status

    plan = make_plan(cfg)
    final, board, tools = plan.final, plan.board, plan.tools
    work = make_temp_dir(final, "tmp-", "build")
    started = time.time()
    running = False
    try:
        runlog.attach(work / "build.log")
        signals.check()
        if plan.resume:
            shutil.copytree(final, work, dirs_exist_ok=True)
        with graph_tool_errors(final):
            resolve_source(plan, work)
        all_steps, steps = plan.all_steps, plan.steps
        model = plan.exported
        if plan.resume:
            first = all_steps.index(steps[0])
            forget_outputs_from(work, all_steps, first)
            if first > 0:
                prev = all_steps[first - 1]
                prev_file = work / "intermediate_models" / f"{first - 1:02d}_{prev.name}.onnx"
                if not prev_file.is_file():
                    raise ConfigError(f"--start-step {cfg.start_step} needs "
                                      f"{final / prev_file.relative_to(work)} from an earlier build")
                model = ModelWrapper(str(prev_file))
        write_config(cfg, board, work)
        write_status(work, "running", model=cfg.model_name, board=board.name)
        echo(f"sibnn-build: {cfg.model_name} ({plan.weights}) -> {board.name} [{final}]")
        echo(f"  front end: {plan.front_end.value}" +
             (f"; {plan.front_end_note}" if plan.front_end_note else ""))
        echo("  verification against: " + ("the golden model" if plan.golden is not None else
                                          "the exported model (no golden model for this graph)"))
        if plan.golden_io:
            echo(f"  golden model == the export's I/O pair on {plan.golden_io['n_inputs']} inputs")
        if tools.has_vivado:
            echo(f"  Vivado: {tools.vivado}")
        else:
            echo(f"  Vivado not found ({tools.reason}): Vivado-only outputs are skipped")
        verifier = _verifier(plan, verifier_factory)
        signals.check()
        running = True
        with graph_tool_errors(final):
            baseline = verifier("export", plan.exported)
            final_model, records, ctx, simulation, stitched = _run_steps_and_sims(
                plan, model, work, verifier, echo)
        summary = report.build_summary(
            model_name=cfg.model_name, board=board, out_dir=work, final_model=final_model,
            records=records, outputs=_outputs(records, tools, cfg.stop_step),
            extra={"weights": plan.weights, "front_end": plan.front_end.value,
                   "front_end_note": plan.front_end_note,
                   "verified_against": "golden" if plan.golden is not None else "export",
                   "golden_io": plan.golden_io,
                   "simulation": simulation,
                   "stitched": stitched,
                   "folding": ctx.results.get("folding"),
                   "output_affine": final_model.get_metadata_prop("sibnn_output_affine"),
                   "input_layout": final_model.get_metadata_prop("sibnn_input_layout") or "NCHW",
                   "build_seconds": round(time.time() - started, 2)})
        summary["verification"].insert(0, baseline)
        report.write_summary(summary, work)
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
    p.add_argument("--board", default=None, help="board id (hw_configs/<board>.yaml)")
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
                   help="exact: sibnn's integer IR (flow.front.lower); finn: FINN's ConvertQONNXtoFINN "
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


if __name__ == "__main__":
    sys.exit(main())
