"""Folding: automatic to the board budget, or a user's FINN-schema JSON checked against the graph.

Automatic folding searches FINN's own ``SetFolding`` heuristic over its one knob, the target
cycles per frame ``T``: it keeps the smallest ``T`` (highest estimated throughput) for which every
budgeted resource estimate (FINN's ``res_estimation``: LUT, BRAM_18K, URAM, DSP) is within the board
budget. The search is a bisection on ``T`` between 1 and the fully folded design's cycles, which
ends after ``log2`` steps (no iteration count to tune); every evaluated point is kept and the best
feasible one wins, so a non-monotone estimate cannot make it pick an infeasible design.

The result is written as FINN's folding JSON (``"Defaults"`` + node names), which
``--folding`` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from flow.config import BUDGETED, BoardConfig
from flow.env.finn import MVAU_WWIDTH_MAX, is_hw_node
from sibnn_base.errors import ConfigError

FOLDING_ATTRS = ("PE", "SIMD", "parallel_window", "ram_style", "ram_style_thresholds",
                 "resType", "mem_mode", "runtime_writeable_weights", "depth_trigger_uram",
                 "depth_trigger_bram", "impl_style")
"""Node attributes a folding file may set (FINN's ``hw_attrs`` list, minus transformer ones)."""


@dataclass(frozen=True)
class Estimate:
    """FINN's estimates for one folded graph."""

    resources: dict[str, float]
    """Totals over all nodes: LUT, BRAM_18K, URAM, DSP."""
    max_cycles: int
    """Cycles per frame of the slowest node (sets the throughput)."""
    critical_path_cycles: int
    """Pessimistic latency in cycles (sum along the critical path)."""
    bottleneck: str
    """Name of the slowest node."""

    valid: bool = True
    """Every node's folding passed FINN's consistency checks (:func:`folding_errors`)."""

    def within(self, budget: dict[str, int]) -> bool:
        return self.valid and all(self.resources.get(k, 0) <= budget[k] for k in BUDGETED)


def estimate(model: ModelWrapper, fpga_part: str) -> Estimate:
    """Sum FINN's per-node resource estimates and read its cycle estimates."""
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles

    if folding_errors(model) or constraint_errors(model):
        return Estimate({k: float("inf") for k in BUDGETED}, 2**62, 2**62, "", False)
    # AnnotateCycles only annotates node attributes: the folding checked above is the one
    # estimated, and qonnx's cleanup (which converts every parameter tensor) has nothing to do
    model = model.transform(AnnotateCycles(), cleanup=False)
    per_node = model.analysis(lambda m: res_estimation(m, fpga_part))
    totals = {k: 0.0 for k in BUDGETED}
    for res in per_node.values():
        for k in BUDGETED:
            totals[k] += float(res.get(k, 0))
    perf = model.analysis(dataflow_performance)
    return Estimate(totals, int(perf["max_cycles"]), int(perf["critical_path_cycles"]),
                    str(perf["max_cycles_node_name"]), True)


def folding_errors(model: ModelWrapper) -> list[str]:
    """FINN's own consistency checks of every HW node's folding (stream widths, folded shapes).

    ``SetFolding`` can pick a PE that does not divide a ``Reshape``'s last axis at high targets;
    such a point is invalid, not merely expensive.
    """
    errors = []
    # names only: ModelWrapper.get_initializer converts the whole tensor to numpy
    params = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if not is_hw_node(n):
            continue
        inst = getCustomOp(n)
        try:
            for i in range(len(n.input)):
                if n.input[i] not in params:
                    inst.get_instream_width(i)
                    inst.get_folded_input_shape(i)
            inst.get_outstream_width()
            inst.get_folded_output_shape()
        except (AssertionError, ValueError, ZeroDivisionError) as err:
            errors.append(f"{n.name}: {err or type(err).__name__}")
    return errors


def _fold(model: ModelWrapper, target_cycles: int, wwidth_max: int) -> ModelWrapper:
    from finn.transformation.fpgadataflow.set_folding import SetFolding

    # SetFolding only sets node attributes: no cleanup (it converts every parameter tensor)
    folded = model.transform(SetFolding(target_cycles, mvau_wwidth_max=wwidth_max,
                                        two_pass_relaxation=True), cleanup=False)
    return repair_min_simd(folded)


@dataclass(frozen=True)
class FoldingResult:
    """One automatic folding: the folded graph, its estimate and how the search found it."""

    model: ModelWrapper
    estimate: Estimate
    target_cycles: int
    feasible: bool
    evaluated: int
    wwidth_max: int = MVAU_WWIDTH_MAX
    """The MVAU weight-stream cap the folding was found with (FINN's ``mvau_wwidth_max``)."""


@dataclass(frozen=True)
class FoldingRecord:
    """What the build's fold step decided (:func:`flow.hw.steps.step_fold`), for the report."""

    estimate: Estimate
    """FINN's estimates of the folded graph (after :func:`use_dsp_multipliers`)."""
    within_budget: bool
    file: str | None = None
    """The user's folding file; None for automatic folding."""
    auto: FoldingResult | None = None
    """The automatic folding's search result; None with a folding file."""
    dsp_multipliers: tuple[str, ...] | None = None
    """The MVAUs whose multipliers went to DSP slices; None where that was not tried."""

    def to_summary(self) -> dict:
        """``summary.json["folding"]``."""
        if self.auto is None:
            rec: dict = {"mode": "user", "file": self.file}
        else:
            rec = {"mode": "auto", "target_cycles": self.auto.target_cycles,
                   "feasible": self.auto.feasible, "evaluated": self.auto.evaluated,
                   "mvau_wwidth_max": self.auto.wwidth_max}
            if self.dsp_multipliers is not None:
                rec["dsp_multipliers"] = list(self.dsp_multipliers)
        return {**rec, "estimate": self.estimate.resources, "max_cycles": self.estimate.max_cycles,
                "bottleneck": self.estimate.bottleneck, "within_budget": self.within_budget}


def auto_fold(model: ModelWrapper, board: BoardConfig, *, target_fps: int | None = None,
              wwidth_max: int = MVAU_WWIDTH_MAX, widen: bool = True) -> FoldingResult:
    """Fold ``model`` (specialised HW layers) for ``board``.

    With ``target_fps`` FINN's ``SetFolding`` is applied for that target once (FINN's behaviour);
    otherwise the fastest folding whose estimates fit the budget is searched. FINN caps an MVAU's
    weight stream at ``mvau_wwidth_max`` bits (``SIMD * PE * weight bits`` for 1-bit weights), which
    can stop a layer short of its fastest folding; with ``widen`` the search is repeated for
    ``wwidth_max * 2**k`` (k = 1, 2, 3) and the fastest feasible result wins (fewer LUTs on a tie).
    When even the fully folded design exceeds the budget, it is returned with ``feasible=False``.
    """
    if target_fps is None and widen:
        results = [_search(model, board, w) for w in (wwidth_max * 2**k for k in range(4))]
        feasible = [r for r in results if r.feasible]
        pool = feasible or results
        best = min(pool, key=lambda r: (r.estimate.max_cycles, r.estimate.resources["LUT"]))
        return FoldingResult(best.model, best.estimate, best.target_cycles, best.feasible,
                             sum(r.evaluated for r in results), best.wwidth_max)
    return _search(model, board, wwidth_max, target_fps)


DSP_MIN_BITS = 4
"""An HLS MVAU's multipliers go to DSP slices (:func:`use_dsp_multipliers`) when its weights and
its inputs both have at least this many bits: below that a product is a few LUTs (FINN-R's
multiplier model prices a 2 x 4-bit product at 6 x 3 LUTs), not worth a DSP48."""


def use_dsp_multipliers(model: ModelWrapper,
                        board: BoardConfig) -> tuple[ModelWrapper, Estimate, list[str]]:
    """Set ``resType = "dsp"`` on the HLS MVAUs with multi-bit products (:data:`DSP_MIN_BITS`),
    the most LUT-hungry first (FINN's HLS MVAU defaults to LUT multipliers), while the board's
    DSP budget holds; returns the graph, its estimate and the nodes set to DSP.

    The folding is not touched, so the throughput is the same; only where the products are built
    changes (``ap_resource_dsp`` in the generated HLS instead of ``ap_resource_lut``), so the
    arithmetic, and cppsim, are the same. FINN prices a DSP MVAU at ``PE * SIMD *
    ceil((W + A) / 48)`` DSPs and no multiplier LUTs."""
    cands = []
    for n in model.graph.node:
        if n.op_type != "MVAU_hls":
            continue
        inst = getCustomOp(n)
        w, a = inst.get_input_datatype(1).bitwidth(), inst.get_input_datatype(0).bitwidth()
        if min(w, a) < DSP_MIN_BITS or inst.get_nodeattr("resType") == "dsp":
            continue
        cands.append((-inst.get_nodeattr("PE") * inst.get_nodeattr("SIMD") * (w + a), n.name))
    est, chosen = estimate(model, board.fpga_part), []
    for _, name in sorted(cands):
        inst = getCustomOp(model.get_node_from_name(name))
        inst.set_nodeattr("resType", "dsp")
        trial = estimate(model, board.fpga_part)
        if trial.resources.get("DSP", 0) <= board.budget["DSP"] and trial.valid:
            est = trial
            chosen.append(name)
        else:
            inst.set_nodeattr("resType", "lut")
    return model, est, chosen


def _signature(model: ModelWrapper) -> str:
    """The folding of every HW node, as one string: equal strings, equal estimates."""
    return json.dumps(folding_dict(model), sort_keys=True, default=str)


def _search(model: ModelWrapper, board: BoardConfig, wwidth_max: int,
            target_fps: int | None = None) -> FoldingResult:
    budget = board.budget
    clock = board.synth_clk_period_ns
    if target_fps is not None:
        t = max(1, int(1e9 / (clock * target_fps)))
        m = _fold(model, t, wwidth_max)
        est = estimate(m, board.fpga_part)
        return FoldingResult(m, est, t, est.within(budget), 1, wwidth_max)
    seen: dict[str, Estimate] = {}  # neighbouring targets often give the same folding

    def cached(m: ModelWrapper) -> Estimate:
        key = _signature(m)
        if key not in seen:
            seen[key] = estimate(m, board.fpga_part)
        return seen[key]

    slow = _fold(model, 10**12, wwidth_max)
    slow_est = cached(slow)
    best = FoldingResult(slow, slow_est, slow_est.max_cycles, slow_est.within(budget), 1,
                         wwidth_max)
    lo, hi = 1, slow_est.max_cycles  # hi is feasible iff the folded-out design fits
    evaluated = 1
    while lo < hi:
        mid = (lo + hi) // 2
        m = _fold(model, mid, wwidth_max)
        est = cached(m)
        evaluated += 1
        if est.within(budget):
            if not best.feasible or est.max_cycles < best.estimate.max_cycles:
                best = FoldingResult(m, est, mid, True, evaluated, wwidth_max)
            hi = mid
        else:
            lo = mid + 1
    return FoldingResult(best.model, best.estimate, best.target_cycles, best.feasible, evaluated,
                         wwidth_max)


def folding_dict(model: ModelWrapper) -> dict:
    """The graph's folding in FINN's JSON schema (``"Defaults"`` + one entry per HW node)."""
    cfg: dict = {"Defaults": {}}
    for n in model.graph.node:
        if not is_hw_node(n):
            continue
        inst = getCustomOp(n)
        entry = {}
        for a in FOLDING_ATTRS:
            try:
                v = inst.get_nodeattr(a)
            except AttributeError:
                continue
            entry[a] = v.tolist() if hasattr(v, "tolist") else v
        if entry:
            cfg[n.name] = entry
    return cfg


def write_folding(model: ModelWrapper, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(folding_dict(model), indent=2, sort_keys=True))
    return path


def load_folding(path: str | Path) -> dict:
    """Read a folding JSON; malformed files are :class:`ConfigError`."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read folding file {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed folding file {path}: {err.msg} at line {err.lineno}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"folding file {path}: expected an object of objects (FINN schema)")
    return data


FOLD_DIM = {
    "MVAU": {"PE": "MH", "SIMD": "MW"},
    "VVAU": {"PE": "Channels"},
    "Thresholding": {"PE": "NumChannels"},
    "ConvolutionInputGenerator": {"SIMD": "IFMChannels"},
    "FMPadding": {"SIMD": "NumChannels"},
    "DuplicateStreams": {"PE": "NumChannels"},
    "ReplicateStream": {"PE": "num_elems"},
    "GlobalAccPool": {"PE": "NumChannels"},
    "StreamingMaxPool": {"PE": "NumChannels"},
    "LabelSelect": {"PE": "Labels"},
    "AddStreams": {"PE": "NumChannels"},
    "ChannelwiseOp": {"PE": "NumChannels"},
}
"""For each layer type (without its ``_hls``/``_rtl`` suffix), the dimension each folding factor
must divide: a PE or SIMD that does not divide it has no folded shape (finn-hlslib's
``static_assert``s, FINN's ``get_folded_*_shape``). ElementwiseBinary ops fold their last axis."""

HLS_MVAU_MIN_SIMD_DIV = 1024
"""FINN's HLS MVAU needs ``SIMD >= MW / 1024`` (the weight memory depth limit it asserts at ipgen)."""


def _base_op(op_type: str) -> str:
    return op_type.removesuffix("_hls").removesuffix("_rtl")


def _fold_dim(node, inst, attr: str) -> tuple[str, int] | None:
    base = _base_op(node.op_type)
    if base.startswith(("Elementwise", "StreamingEltwise")) and attr == "PE":
        return "channels", int(inst.get_normal_output_shape()[-1])
    dim = FOLD_DIM.get(base, {}).get(attr)
    if dim is None:
        return None
    try:
        return dim, int(inst.get_nodeattr(dim))
    except AttributeError:
        return None


def _divisors(n: int) -> str:
    ds = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, ds)) if len(ds) <= 12 else ", ".join(map(str, ds[:12])) + ", ..."


def _type_error(inst, attr: str, value) -> str | None:
    """Why ``value`` cannot be attribute ``attr`` of ``inst`` (FINN's own type table), or None."""
    spec = inst.get_nodeattr_types().get(attr)
    if spec is None:
        return None
    kind, allowed = spec[0], (spec[3] if len(spec) > 3 else None)
    if kind == "i":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{attr} must be an integer, got {value!r}"
    elif kind == "s":
        if not isinstance(value, str):
            return f"{attr} must be a string, got {value!r}"
    elif kind == "ints":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
            return f"{attr} must be a list of integers, got {value!r}"
    if allowed and value not in allowed:
        return f"{attr}={value!r} is not one of {', '.join(sorted(map(str, allowed)))}"
    return None


def validate_folding(data: dict, model: ModelWrapper, source: str = "folding file") -> None:
    """Check a folding file against ``model`` before anything is applied: every name must be a
    hardware node of ``model``, every attribute one that node has, of the type FINN declares.

    Raises :class:`ConfigError` naming all unknown nodes, or the first bad attribute.
    """
    nodes = {n.name: n for n in model.graph.node}
    unknown = sorted(k for k in data if k != "Defaults" and k not in nodes)
    if unknown:
        hw = sorted(k for k, n in nodes.items() if is_hw_node(n))
        raise ConfigError(f"{source} names unknown node(s) {', '.join(unknown)}; "
                          f"nodes of this graph: {', '.join(hw)}")
    for name, attrs in data.items():
        if name == "Defaults":
            continue
        node = nodes[name]
        if not is_hw_node(node):
            raise ConfigError(f"{source}: node {name} ({node.op_type}) is not a hardware layer")
        inst = getCustomOp(node)
        for a, v in attrs.items():
            try:
                inst.get_nodeattr(a)
            except AttributeError:
                raise ConfigError(f"{source}: node {name} ({node.op_type}) has no attribute "
                                  f"{a!r}, so the entry would be unused") from None
            why = _type_error(inst, a, v)
            if why:
                raise ConfigError(f"{source}: node {name} ({node.op_type}): {why}")


def constraint_errors(model: ModelWrapper) -> list[str]:
    """Every hardware node's folding checked against its own constraints, one message per
    violation naming the node and the rule: PE/SIMD positive and dividing their dimension
    (:data:`FOLD_DIM`), the HLS MVAU's ``SIMD >= MW / 1024``, and FINN's ``AP_INT_MAX_W``
    (8191 bits) for every stream and weight word of an HLS layer."""
    from finn.util.basic import MAX_ALLOWED_AP_INT_W

    errors = []
    for n in model.graph.node:
        if not is_hw_node(n):
            continue
        inst = getCustomOp(n)
        bad = False
        for attr in ("PE", "SIMD"):
            try:
                v = inst.get_nodeattr(attr)
            except AttributeError:
                continue
            dim = _fold_dim(n, inst, attr)
            if v < 1:
                errors.append(f"{n.name} ({n.op_type}): {attr}={v} must be >= 1")
                bad = True
            elif dim is not None and dim[1] % v:
                errors.append(f"{n.name} ({n.op_type}): {attr}={v} must divide {dim[0]}={dim[1]} "
                              f"(valid: {_divisors(dim[1])})")
                bad = True
        if bad:
            continue
        if n.op_type == "MVAU_hls":
            simd, mw = inst.get_nodeattr("SIMD"), inst.get_nodeattr("MW")
            if simd * HLS_MVAU_MIN_SIMD_DIV < mw:
                errors.append(f"{n.name} ({n.op_type}): SIMD={simd} is below MW/1024 = "
                              f"{mw / HLS_MVAU_MIN_SIMD_DIV:g} (the HLS MVAU's weight memory "
                              "depth limit)")
                continue
        if n.op_type.endswith("_hls") and hasattr(inst, "get_ap_int_max_w"):
            try:
                inst.get_ap_int_max_w()
            except Exception as err:  # noqa: BLE001 - FINNInternalError and friends
                if "AP_INT_MAX_W" not in str(err):
                    raise
                errors.append(f"{n.name} ({n.op_type}): a stream or weight word is wider than "
                              f"AP_INT_MAX_W = {MAX_ALLOWED_AP_INT_W} bits; fold it further "
                              "(smaller PE/SIMD)")
    return errors


def repair_min_simd(model: ModelWrapper) -> ModelWrapper:
    """Raise an HLS MVAU's SIMD to the smallest divisor of MW that meets ``SIMD >= MW / 1024``
    (FINN's ``SetFolding`` folds a wide layer down to SIMD 1 and leaves it unbuildable)."""
    for n in model.graph.node:
        if n.op_type != "MVAU_hls":
            continue
        inst = getCustomOp(n)
        simd, mw = inst.get_nodeattr("SIMD"), inst.get_nodeattr("MW")
        if simd * HLS_MVAU_MIN_SIMD_DIV < mw:
            inst.set_nodeattr("SIMD", next(d for d in range(simd, mw + 1)
                                           if mw % d == 0 and d * HLS_MVAU_MIN_SIMD_DIV >= mw))
    return model


def apply_folding(model: ModelWrapper, data: dict, source: str = "folding file") -> ModelWrapper:
    """Validate, then apply with FINN's ``ApplyConfig`` (the same schema it exports)."""
    from finn.transformation.general import ApplyConfig

    validate_folding(data, model, source)
    try:
        model = model.transform(ApplyConfig(data))
    except (AssertionError, ValueError, TypeError, KeyError) as err:  # e.g. a malformed Defaults
        raise ConfigError(f"{source} cannot be applied: {err or type(err).__name__}") from None
    errors = constraint_errors(model) or folding_errors(model)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {errors[0]}{more}")
    return model
