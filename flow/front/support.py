"""What sibnn can take to hardware: the ONNX/QONNX ops (:data:`SUPPORTED_OPS`) and the one check
(:func:`check_supported`) that names every unsupported layer before any work is done. A build
runs it once, on the graph it compiles: a file after constant folding and qonnx's cleanup
(:func:`flow.front.export.load_qonnx`; a plain Brevitas export holds ops that only compute
constants, e.g. TensorNorm's ``Pow`` on two initializers), or the registry export. Nodes are named
as the file names them (:func:`tag_source_names`), not by cleanup's renaming; no step repeats it.

``sibnn-export --onnx`` checks instead what the integer IR takes (:func:`check_for_golden`); both
sets come from the integer IR's handler table (:data:`~flow.front.integerize.INTEGER_IR_OPS`)."""

from __future__ import annotations

from pathlib import Path

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.basic import get_by_name

from flow.front.integerize import INTEGER_IR_OPS
from sibnn_base.errors import UnsupportedGraphError

FINN_FRONT_END_ONLY_OPS = frozenset({"BinaryQuant", "Trunc", "MultiThreshold"})
"""Ops a build takes that the integer IR has no handler for: FINN's own front end
(``--front-end finn``) maps them."""

INTEGER_IR_ONLY_OPS = frozenset({"Squeeze", "Unsqueeze", "Clip"})
"""Ops the integer IR maps (:data:`~flow.front.integerize.INTEGER_IR_OPS`, what
``sibnn-export`` takes) that a build's check does not accept."""

SUPPORTED_OPS = (INTEGER_IR_OPS - INTEGER_IR_ONLY_OPS) | FINN_FRONT_END_ONLY_OPS
"""ONNX/QONNX ops the front end plus our steps can take to hardware (with the checks below):
the integer IR's ops (its handler table is the one list) less :data:`INTEGER_IR_ONLY_OPS`, plus
:data:`FINN_FRONT_END_ONLY_OPS`."""


SOURCE_NAME_KEY = "sibnn.source_name"
"""Node metadata key holding a node's name in the file it was loaded from."""


def tag_source_names(model: ModelWrapper) -> None:
    """Record each node's name in the file (``node i`` when it has none) in its metadata, where
    it survives qonnx's cleanup, which folds constants and renames every node."""
    for i, n in enumerate(model.graph.node):
        if source_name(n) is None:
            entry = n.metadata_props.add()
            entry.key, entry.value = SOURCE_NAME_KEY, n.name or f"node {i}"


def source_name(node) -> str | None:
    """The name :func:`tag_source_names` recorded for ``node``, or None."""
    return next((p.value for p in node.metadata_props if p.key == SOURCE_NAME_KEY), None)


def untag_source_names(model: ModelWrapper) -> None:
    """Remove what :func:`tag_source_names` added."""
    for n in model.graph.node:
        keep = [p for p in n.metadata_props if p.key != SOURCE_NAME_KEY]
        if len(keep) != len(n.metadata_props):
            del n.metadata_props[:]
            n.metadata_props.extend(keep)


def node_label(node) -> str:
    """``op (name)``, with the name the source file gave the node where it was recorded."""
    return f"{node.op_type} ({source_name(node) or node.name or 'unnamed'})"


def unsupported_nodes(model: ModelWrapper) -> list[str]:
    """``"op (node): reason"`` for every node the flow cannot map."""
    bad = []
    for n in model.graph.node:
        name = node_label(n)
        if n.op_type not in SUPPORTED_OPS:
            bad.append(name)
            continue
        if n.op_type == "Pad":
            mode = get_by_name(n.attribute, "mode")
            if mode is not None and mode.s.decode() != "constant":
                bad.append(f"{name}: mode {mode.s.decode()}")
        if n.op_type == "Gemm":
            ta = get_by_name(n.attribute, "transA")
            if ta is not None and ta.i:
                bad.append(f"{name}: transposed input (transA)")
        if n.op_type == "Conv":
            dil = get_by_name(n.attribute, "dilations")
            if dil is not None and any(d != 1 for d in dil.ints):
                bad.append(f"{name}: dilated convolution")
        if n.op_type == "ReduceSum" and len(n.input) > 1:
            axes = model.get_initializer(n.input[1])
            shape = model.get_tensor_shape(n.input[0])
            if axes is None or shape is None or len(shape) != 4 or \
                    sorted(int(a) % 4 for a in axes.reshape(-1)) != [2, 3]:
                bad.append(f"{name}: only a global sum over H, W maps")
    return bad


def check_supported(model: ModelWrapper) -> ModelWrapper:
    """Name every layer the flow cannot map; then the I/O count. Returns ``model``.

    Inputs that are initializers (a plain Brevitas ``export_qonnx`` lists its weights as graph
    inputs too) are weights, not inputs: only the others count."""
    bad = unsupported_nodes(model)
    if bad:
        raise UnsupportedGraphError("unsupported layer(s): " + "; ".join(bad))
    static = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in static]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UnsupportedGraphError(
            f"the graph has {len(inputs)} inputs ({', '.join(inputs[:4])}) and "
            f"{len(model.graph.output)} outputs; the flow maps single-input single-output networks")
    return model


def check_for_golden(model: ModelWrapper, path: Path) -> None:
    """What ``sibnn-export --onnx`` needs: Quant nodes, and only ops the integer IR covers
    (:data:`~flow.front.integerize.INTEGER_IR_OPS`)."""
    nodes = model.graph.node
    if not any(n.op_type in ("Quant", "BipolarQuant") for n in nodes):
        raise UnsupportedGraphError(f"{path} is not a QONNX model (no Quant/BipolarQuant nodes)")
    bad = [node_label(n) for n in nodes if n.op_type not in INTEGER_IR_OPS]
    if bad:
        raise UnsupportedGraphError(f"{path}: unsupported op(s) {', '.join(bad[:8])}"
                                    f"{' ...' if len(bad) > 8 else ''}")
