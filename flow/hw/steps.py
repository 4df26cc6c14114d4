"""The build as one explicit, ordered list of plain steps ``step_<verb>(model, ctx) -> model``.

FINN's own steps (``finn.builder.build_dataflow_steps``) are called by name where they fit; our
steps close the gaps for the SI fork/join, the bipolar padding, the sum pool and the uint8
interface (see :mod:`flow.hw.transforms`). ``ctx`` is a :class:`FlowContext`: our configs, FINN's
``DataflowBuildConfig`` and the tool status. A step that decides something the report needs
leaves it in a typed field of the context (the fold step: :attr:`FlowContext.folding`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.composed import ComposedTransformation
from qonnx.transformation.general import GiveUniqueNodeNames, RemoveUnusedTensors
from qonnx.transformation.infer_data_layouts import InferDataLayouts
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

from flow.config import BoardConfig, BuildConfig, FrontEnd
from flow.env.finn import ToolStatus, is_hw_node
from flow.hw import transforms as T
from flow.hw.folding import FoldingRecord
from sibnn_base.errors import ConfigError, UnsupportedGraphError

if TYPE_CHECKING:
    from finn.builder.build_dataflow_config import DataflowBuildConfig

    from flow.front.integerize import IntegerIR


@dataclass
class FlowContext:
    """What every step may read, and the typed records steps leave for the report."""

    cfg: BuildConfig
    board: BoardConfig
    tools: ToolStatus
    finn_cfg: DataflowBuildConfig
    """FINN's ``DataflowBuildConfig`` (output_dir = the build's working directory)."""
    finn_steps: ModuleType
    """``finn.builder.build_dataflow_steps``, imported through :mod:`flow.env.finn`."""
    out_dir: Path
    all_steps: list[Step] = field(default_factory=list)
    """The whole step list of this build (intermediate models are numbered by it)."""
    ir: IntegerIR | None = None
    """The integer IR of the source graph, when the plan built one (the exact front end's input)."""
    lowered: ModelWrapper | None = None
    """The exact front end's lowered graph, when the plan's front-end probe made it."""
    folding: FoldingRecord | None = None
    """What the fold step decided (``summary.json["folding"]``); None until it ran."""


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[[ModelWrapper, FlowContext], ModelWrapper]
    vivado: bool = False
    """Needs Vivado / Vitis HLS; skipped (and reported as such) without them."""
    output: str | None = None
    """The ``summary.json["outputs"]`` key this step produces, if any."""


def step_prepare_io(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """uint8 pixel input (``/255`` in front) and integer-score output (trailing scale recorded)."""
    model = model.transform(T.InsertPixelPreprocessing())
    model = model.transform(ComposedTransformation([T.StripOutputAffine()]))
    return model


def step_qonnx_to_finn(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    return ctx.finn_steps.step_qonnx_to_finn(model, ctx.finn_cfg)


def step_tidy_up(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    return ctx.finn_steps.step_tidy_up(model, ctx.finn_cfg)


def step_streamline(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """FINN's streamlining for fork/join graphs, plus our XNOR, pooling and interface rewrites.

    Order: ``StreamlinePlus`` (moves the residual scales past the adds and forks) -> conv lowering
    -> :class:`~flow.hw.transforms.ConvertBipolarToXnor` (all consumers of a fork at once) ->
    ``StreamlinePlus`` again -> sum pool, NHWC padding and input transpose rewrites -> a last
    ``StreamlinePlus`` -> drop the identity pixel threshold -> integer constant annotation.
    """
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC
    from finn.transformation.streamline.streamline_plus import StreamlinePlus as _StreamlinePlus

    def StreamlinePlus():  # noqa: N802 (FINN's name)
        return T.FixedPoint.from_composed(_StreamlinePlus())

    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold())
    model = model.transform(StreamlinePlus())
    model = model.transform(LowerConvsToMatMul())
    model = model.transform(MakeMaxPoolNHWC())
    model = model.transform(absorb.AbsorbTransposeIntoMultiThreshold())
    model = model.transform(MakeMaxPoolNHWC())
    model = model.transform(absorb.AbsorbConsecutiveTransposes())
    model = model.transform(ComposedTransformation([T.ConvertBipolarToXnor()]))
    model = model.transform(StreamlinePlus())
    rewrites = [T.GlobalSumPoolToAccPool(), T.MovePadBeforeTranspose(),
                absorb.AbsorbConsecutiveTransposes(), T.MoveTransposeBeforeMultiThreshold(),
                T.AbsorbInputTranspose()]
    model = model.transform(ComposedTransformation(rewrites))
    model = model.transform(StreamlinePlus())
    model = model.transform(ComposedTransformation(rewrites))
    model = model.transform(ComposedTransformation([T.RemoveIdentityMultiThreshold()]))
    model = model.transform(InferDataTypes())
    model = model.transform(T.AnnotateIntegerInitializers())
    model = model.transform(InferDataLayouts())
    model = model.transform(RemoveUnusedTensors())
    return model


def step_convert_to_hw(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """FINN's conversion to HW layers; then every node must be a HW layer (else: name them).

    Identity ``Im2Col`` nodes (1x1, stride 1) are dropped and identical ones on one tensor merged
    first, so no sliding-window unit is built twice or for nothing; then every fork becomes a
    ``ReplicateStream`` (FINN would insert its deprecated ``DuplicateStreams``).
    """
    model = model.transform(ComposedTransformation([T.RemoveIdentityIm2Col(),
                                                    T.ShareIdenticalIm2Col(),
                                                    T.InferReplicateStreams()]))
    model = ctx.finn_steps.step_convert_to_hw(model, ctx.finn_cfg)
    left = non_hw_nodes(model)
    if left:
        raise UnsupportedGraphError(
            "no hardware layer for: " + ", ".join(left) +
            " (these would run on the CPU; the flow requires an all-HW graph)")
    floats = [f"{n.name} ({model.get_tensor_datatype(n.output[0]).name})"
              for n in model.graph.node if not model.get_tensor_datatype(n.output[0]).is_integer()]
    if floats:
        raise UnsupportedGraphError("hardware layers with non-integer outputs: " + ", ".join(floats))
    return model


def non_hw_nodes(model: ModelWrapper) -> list[str]:
    return [f"{n.op_type} ({n.name})" for n in model.graph.node if not is_hw_node(n)]


def step_create_dataflow_partition(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    return ctx.finn_steps.step_create_dataflow_partition(model, ctx.finn_cfg)


def step_specialize_layers(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """FINN's specialisation, with MVAUs as HLS (:class:`~flow.hw.transforms.PreferHlsMvau`: an
    RTL MVAU's DSP primitives cannot run as generated code without Vivado)."""
    model = model.transform(T.PreferHlsMvau())
    return ctx.finn_steps.step_specialize_layers(model, ctx.finn_cfg)


def step_fold(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """Auto-fold to the board budget, or apply (after validating) the user's folding file; the
    decision goes to :attr:`FlowContext.folding`."""
    from flow.hw import folding

    model = model.transform(GiveUniqueNodeNames())
    auto, dsp = None, None
    if ctx.cfg.folding:
        data = folding.load_folding(ctx.cfg.folding)
        model = folding.apply_folding(model, data, source=f"folding file {ctx.cfg.folding}")
        est = folding.estimate(model, ctx.board.fpga_part)
    else:
        auto = folding.auto_fold(model, ctx.board, target_fps=ctx.cfg.target_fps,
                                 wwidth_max=ctx.cfg.mvau_wwidth_max)
        model, est = auto.model, auto.estimate
        if ctx.cfg.dsp_multipliers:
            model, est, dsp = folding.use_dsp_multipliers(model, ctx.board)
    over = {k: (est.resources.get(k, 0), ctx.board.budget[k]) for k in ctx.board.budget
            if est.resources.get(k, 0) > ctx.board.budget[k]}
    if over and not ctx.cfg.allow_over_budget:
        need = ", ".join(f"{k} {v:,.0f} vs budget {b:,}" for k, (v, b) in over.items())
        what = ("its smallest folding needs" if not ctx.cfg.folding and ctx.cfg.target_fps is None
                else "this folding needs")
        raise ConfigError(f"the model does not fit {ctx.board.name} within "
                          f"{ctx.board.budget_fraction:.0%} of its resources: {what} {need}; "
                          "fold further, choose a larger board, or pass --allow-over-budget")
    folding.write_folding(model, ctx.out_dir / "report" / "folding_config.json")
    ctx.folding = FoldingRecord(
        estimate=est, within_budget=est.within(ctx.board.budget),
        file=str(ctx.cfg.folding) if ctx.cfg.folding else None, auto=auto,
        dsp_multipliers=tuple(dsp) if dsp is not None else None)
    return model


def step_minimize_bit_width(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """FINN's bit-width minimisation, then :class:`~flow.hw.transforms.FixXnorAccumulatorWidth`
    (FINN sizes XNOR accumulators too narrow and clips their thresholds) and
    :class:`~flow.hw.transforms.KeepBipolarWeights` (FINN widens +-1 weights to INT2); weights
    FINN would type BINARY or BIPOLAR without being +-1 keep a legal type
    (:func:`~flow.hw.transforms.pin_legal_weight_types`)."""
    import copy

    before = copy.deepcopy(model)
    pinned = T.pin_legal_weight_types(model)
    model = ctx.finn_steps.step_minimize_bit_width(model, ctx.finn_cfg)
    T.unpin_weight_types(model, pinned)
    return model.transform(T.FixXnorAccumulatorWidth(before)).transform(T.KeepBipolarWeights())


def step_generate_estimate_reports(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    return ctx.finn_steps.step_generate_estimate_reports(model, ctx.finn_cfg)


def step_hw_codegen(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    return ctx.finn_steps.step_hw_codegen(model, ctx.finn_cfg)


FIFO_DEPTHS_FILE = "report/fifo_depths.json"
"""Where ``--sim stitched`` writes the FIFO depths it sized (FINN's FIFO config format)."""


def step_set_fifo_depths(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """FINN's ``set_fifo_depths`` (Vivado). With ``fifo_sizing: sim`` (default) FINN applies the
    depths the stitched simulation sized (:data:`FIFO_DEPTHS_FILE`, ``auto_fifo_depths: false``),
    so its Vivado-simulator sizing is skipped; with ``fifo_sizing: finn`` FINN sizes them."""
    import dataclasses

    from flow.config import FifoSizing

    cfg = ctx.finn_cfg
    if FifoSizing(ctx.cfg.fifo_sizing) == FifoSizing.SIM:
        path = ctx.out_dir / FIFO_DEPTHS_FILE
        if not path.is_file():
            raise ConfigError(f"fifo_sizing: sim needs {FIFO_DEPTHS_FILE} from the stitched "
                              "simulation, which did not run before set_fifo_depths; use "
                              "--sim stitched (or fifo_sizing: finn)")
        cfg = dataclasses.replace(cfg, auto_fifo_depths=False, fifo_config_file=str(path))
    return ctx.finn_steps.step_set_fifo_depths(model, cfg)


def _finn(name: str) -> Callable[[ModelWrapper, FlowContext], ModelWrapper]:
    def step(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
        return getattr(ctx.finn_steps, name)(model, ctx.finn_cfg)

    step.__name__ = name
    step.__doc__ = f"FINN's own ``{name}`` (needs Vivado)."
    return step


def step_lower(model: ModelWrapper, ctx: FlowContext) -> ModelWrapper:
    """The exact front end (``flow.hw.lower``): QONNX -> integer IR -> streamlined FINN graph.

    Thresholds are exact by construction (ties round as Brevitas rounds them), the input is uint8
    NHWC pixels and the output the integer class scores; the dropped float logit scale is recorded
    under ``sibnn_output_affine`` like :class:`~flow.hw.transforms.StripOutputAffine` does.
    """
    import json

    from flow.front.integerize import integerize
    from flow.hw.lower import lower_to_finn

    ir = ctx.ir if ctx is not None and ctx.ir is not None else integerize(model)
    # the plan's probe already lowered this IR to pick the front end: reuse it, never lower twice
    low = ctx.lowered if ctx is not None and ctx.lowered is not None else lower_to_finn(ir)
    chain = ir.outputs[0].chain
    ops = {"mul": "Mul", "div": "Div", "add": "Add", "sub": "Sub"}
    if all(op.kind in ops and np.asarray(op.params[0]).size == 1 for op in chain):
        low.set_metadata_prop(T.OUTPUT_AFFINE_KEY, json.dumps(
            [{"op": ops[op.kind], "const": float(np.asarray(op.params[0]).reshape(-1)[0]),
              "node": "ir_output_chain"} for op in chain]))
    return low


FRONT_ENDS: dict[FrontEnd, list[Step]] = {
    FrontEnd.EXACT: [
        Step("lower", step_lower),
        Step("tidy_up", step_tidy_up),
    ],
    FrontEnd.FINN: [
        Step("prepare_io", step_prepare_io),
        Step("qonnx_to_finn", step_qonnx_to_finn),
        Step("tidy_up", step_tidy_up),
        Step("streamline", step_streamline),
    ],
}
"""The two front ends: ``exact`` (sibnn's integer IR, ``flow.hw.lower``) and ``finn`` (FINN's
``ConvertQONNXtoFINN`` + streamlining with our rewrites, for graphs the IR does not cover);
``auto`` is not one, it picks one of them (:mod:`flow.plan`)."""

BACK_END: list[Step] = [
    Step("convert_to_hw", step_convert_to_hw),
    Step("create_dataflow_partition", step_create_dataflow_partition),
    Step("specialize_layers", step_specialize_layers),
    Step("fold", step_fold),
    Step("minimize_bit_width", step_minimize_bit_width),
    Step("generate_estimate_reports", step_generate_estimate_reports, output="estimates"),
    Step("hw_codegen", step_hw_codegen, output="hls_rtl_sources"),
    Step("hw_ipgen", _finn("step_hw_ipgen"), vivado=True, output="ip_cores"),
    Step("set_fifo_depths", step_set_fifo_depths, vivado=True, output="fifo_depths"),
    Step("create_stitched_ip", _finn("step_create_stitched_ip"), vivado=True, output="stitched_ip"),
    Step("synthesize_bitfile", _finn("step_synthesize_bitfile"), vivado=True, output="bitfile"),
    Step("make_driver", _finn("step_make_driver"), vivado=True, output="pynq_driver"),
    Step("deployment_package", _finn("step_deployment_package"), vivado=True,
         output="deployment_package"),
]


def steps_for(front_end: FrontEnd | str) -> list[Step]:
    """The whole build, in order, for one front end."""
    if front_end not in FRONT_ENDS:
        raise ConfigError(f"unknown front end {front_end!r}; valid: "
                          f"{', '.join(fe.value for fe in FRONT_ENDS)}")
    return [*FRONT_ENDS[front_end], *BACK_END]


def step_names(front_end: FrontEnd | str | None = None) -> list[str]:
    """Step names of one front end, or (``None``) of all, in order and without repeats."""
    if front_end is not None:
        return [s.name for s in steps_for(front_end)]
    names: list[str] = []
    for fe in FRONT_ENDS:
        for s in steps_for(fe):
            if s.name not in names:
                names.append(s.name)
    return names


def check_step_names(start: str | None, stop: str | None,
                     front_end: FrontEnd | str | None = None) -> None:
    """``--start-step``/``--stop-step`` name steps of ``front_end`` (``None``: of either front
    end, the check before the front end is known); else a ConfigError listing the steps."""
    names = step_names(front_end)
    for flag, s in (("--start-step", start), ("--stop-step", stop)):
        if s is not None and s not in names:
            other = [fe.value for fe in FRONT_ENDS if s in step_names(fe)]
            hint = f" with the {FrontEnd(front_end).value} front end (it is a step of: " \
                   f"{', '.join(other)})" if other else ""
            raise ConfigError(f"{flag} {s!r} is not a step{hint}; steps: {', '.join(names)}")


def select_steps(start: str | None, stop: str | None,
                 front_end: FrontEnd | str = FrontEnd.FINN) -> list[Step]:
    """The slice ``start..stop`` (inclusive) of the build; unknown names are ConfigError."""
    check_step_names(start, stop, front_end)
    steps = steps_for(front_end)
    names = [s.name for s in steps]
    i = names.index(start) if start else 0
    j = names.index(stop) if stop else len(names) - 1
    if i > j:
        raise ConfigError(f"--start-step {start} comes after --stop-step {stop}")
    return steps[i:j + 1]


def op_histogram(model: ModelWrapper) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))
