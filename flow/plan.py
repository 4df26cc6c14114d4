"""What a build decides before its steps run: the plan, then the source graph it compiles.

Two frozen records, each made in one place:

* :class:`BuildPlan` (:func:`make_plan`): everything that can be checked before anything is
  written: the board, the tools, the step names, the simulators ``--sim`` needs, the folding and
  FIFO files, the output directory and what a partial rerun needs;
* :class:`ResolvedSource` (:func:`resolve_source`): the source graph (a registry model, a
  checkpoint or an ONNX file), checked once that every layer maps, its golden model and the
  front end that compiles it.

:mod:`flow.build` runs them; :mod:`flow.proof.verify` owns the checking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from flow.config import DEFAULT_MODEL, BoardConfig, BuildConfig, FifoSizing, FrontEnd, SimMode
from flow.env.finn import ToolStatus
from sibnn_base.atomic import check_target
from sibnn_base.errors import ConfigError, OutputDirError

if TYPE_CHECKING:
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.front.golden import GoldenModel
    from flow.front.integerize import IntegerIR
    from flow.sim.simulate import Simulators


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build decides before it writes anything (:func:`make_plan`)."""

    cfg: BuildConfig
    board: BoardConfig
    tools: ToolStatus
    final: Path
    """The output directory the build replaces atomically."""
    resume: bool
    """A partial rerun (``--start-step``) inside an earlier build of ``final``."""
    sims: Simulators | None = None
    """The code simulators ``--sim`` needs, found before anything is written; None for
    ``--sim none``."""
    stitched: bool = False
    """Run the stitched simulation: ``--sim stitched|all``, or a Vivado build whose FIFOs are
    sized by it (``fifo_sizing: sim``), where it runs between ``hw_codegen`` and the Vivado
    steps."""


@dataclass(frozen=True)
class ResolvedSource:
    """The graph a build compiles and what it is checked against (:func:`resolve_source`)."""

    exported: ModelWrapper
    """The cleaned QONNX graph being compiled (``model.qonnx.onnx``)."""
    weights: str
    """Which weights, in one line, for the report."""
    front_end: FrontEnd
    """The front end that compiles it: ``exact`` or ``finn`` (never ``auto``)."""
    front_end_note: str = ""
    """Why ``auto`` fell back to FINN's front end (empty otherwise)."""
    golden: GoldenModel | None = None
    """The golden model (ONNX Runtime), or None where the integer IR does not cover the graph."""
    ir: IntegerIR | None = None
    """The integer IR the golden model was built from (the exact front end's input)."""
    lowered: ModelWrapper | None = None
    """The exact front end's lowered graph from the front-end probe (reused by ``lower``)."""
    golden_io: dict | None = None
    """The check of the golden model against ``sibnn-export``'s I/O pair, when the ONNX file
    came with one."""


def make_plan(cfg: BuildConfig) -> BuildPlan:
    """Check everything that can be checked before anything is written: board, tools, step
    names, the folding file, the output directory and what a partial rerun needs."""
    from flow.config import load_board
    from flow.env.finn import detect_tools
    from flow.env.parts import check_part
    from flow.hw.steps import check_step_names

    board = load_board(cfg.board, cfg.budget_fraction)
    check_part(board)
    tools = detect_tools()
    if cfg.require_bitfile:
        tools.require_vivado("the bitfile (require_bitfile)")
    check_step_names(cfg.start_step, cfg.stop_step)
    sims = None
    stitched = "stitched" in SimMode(cfg.sim).kinds or (
        tools.has_vivado and FifoSizing(cfg.fifo_sizing) == FifoSizing.SIM
        and reaches(cfg, "set_fifo_depths"))
    if SimMode(cfg.sim).kinds or stitched:
        from flow.sim.simulate import find_simulators

        _check_sim_steps(cfg)
        # a missing g++/Verilator/finn-hlslib: fail first
        sims = find_simulators(cfg.sim if SimMode(cfg.sim).kinds else "stitched")
    if cfg.fifo_depths:
        from flow.sim.stitched_run import load_fifo_depths

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


def _check_output_dir(final: Path) -> None:
    check_target(final, "build")
    if final.exists() and not os.access(final, os.W_OK):
        raise OutputDirError(f"output directory {final} is not writable")


def reaches(cfg: BuildConfig, step: str) -> bool:
    """Whether the selected steps include ``step`` (a back-end step)."""
    from flow.hw.steps import BACK_END

    names = [s.name for s in BACK_END]
    stop = cfg.stop_step if cfg.stop_step in names else None
    start = cfg.start_step if cfg.start_step in names else None
    i = names.index(step)
    return (stop is None or names.index(stop) >= i) and (start is None or names.index(start) <= i)


def _check_sim_steps(cfg: BuildConfig) -> None:
    """``--sim`` runs the code ``hw_codegen`` generates: the build must get that far. Every
    front end shares the back end from ``hw_codegen`` on, so this is known before any export."""
    from flow.hw.steps import BACK_END

    names = [s.name for s in BACK_END]
    reaching = names[names.index("hw_codegen"):]
    if cfg.stop_step is not None and cfg.stop_step not in reaching:
        raise ConfigError(f"--sim {SimMode(cfg.sim).value} runs the code hw_codegen generates, "
                          f"but --stop-step {cfg.stop_step} stops before it")


def resolve_source(plan: BuildPlan, work: Path) -> ResolvedSource:
    """Load or export the source graph into ``work``, check once that every layer maps, build
    the golden model and pick the front end (lowering once, kept for the ``lower`` step)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.front.export import export_qonnx_model, load_qonnx, resolve_network
    from flow.front.support import check_supported

    cfg = plan.cfg
    if plan.resume:
        exported = ModelWrapper(str(work / "model.qonnx.onnx"))
        weights = "from the previous build"
    elif cfg.onnx:
        exported = load_qonnx(cfg.onnx)  # checked with the file's own node names
        exported.save(str(work / "model.qonnx.onnx"))
        weights = f"ONNX file {cfg.onnx}" + _described(exported)
    else:
        net, found = resolve_network(cfg.model or DEFAULT_MODEL, checkpoint=cfg.checkpoint,
                                     overrides=cfg.model_overrides, seed=cfg.seed,
                                     strict_checkpoint=cfg.strict_checkpoint)
        exported = check_supported(export_qonnx_model(net, work / "model.qonnx.onnx",
                                                      weights=found))
        weights = found.description
    src = _pick_front_end(exported, weights, FrontEnd(cfg.front_end))
    if cfg.onnx and src.golden is not None:
        src = replace(src, golden_io=_check_golden_io(Path(cfg.onnx), src.golden))
    return src


def _described(mw: ModelWrapper) -> str:
    from flow.front.export import description

    d = description(mw)
    return f" ({d['sibnn_arch']}, {d.get('sibnn_weights', '?')})" if "sibnn_arch" in d else ""


def _check_golden_io(onnx: Path, golden: GoldenModel) -> dict | None:
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


def _pick_front_end(exported: ModelWrapper, weights: str,
                    requested: FrontEnd) -> ResolvedSource:
    """``auto`` takes the exact front end (``flow.hw.lower``) when the integer IR covers the
    graph and FINN's otherwise (the note says why); ``exact`` makes that an error; ``finn``
    always uses FINN's. The golden model is used for verification whenever it builds."""
    from flow.front.golden import golden_from_qonnx
    from flow.hw.lower import lower_to_finn
    from sibnn_base.errors import UnsupportedGraphError

    why = ""
    golden = ir = None
    try:
        golden, ir = golden_from_qonnx(exported)
    except UnsupportedGraphError as err:
        why = f"integer IR: {err}"

    def source(front_end: FrontEnd, note: str = "", lowered=None) -> ResolvedSource:
        return ResolvedSource(exported=exported, weights=weights, front_end=front_end,
                              front_end_note=note, golden=golden, ir=ir, lowered=lowered)

    if requested == FrontEnd.FINN:
        return source(FrontEnd.FINN)
    if ir is not None:
        try:
            return source(FrontEnd.EXACT, lowered=lower_to_finn(ir))
        except UnsupportedGraphError as err:
            why = f"lowering: {err}"
    if requested == FrontEnd.EXACT:
        raise UnsupportedGraphError(f"the exact front end cannot take this graph ({why})")
    return source(FrontEnd.FINN, f"exact front end unavailable ({why})")
