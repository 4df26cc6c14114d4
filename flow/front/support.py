"""What sibnn can take to hardware: the ONNX/QONNX ops (:data:`SUPPORTED_OPS`) and the one check
(:func:`check_supported`) that names every unsupported layer before any work is done. A build
runs it once, on the graph it compiles: a file after constant folding and qonnx's cleanup
(:func:`flow.front.export.load_qonnx`; a plain Brevitas export holds ops that only compute
constants, e.g. TensorNorm's ``Pow`` on two initializers), or the registry export. Nodes are named
as the file names them (:func:`tag_source_names`), not by cleanup's renaming; no step repeats it."""

from __future__ import annotations

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.basic import get_by_name

from sibnn_base.errors import UnsupportedGraphError

SUPPORTED_OPS = {
    "Quant", "BipolarQuant", "BinaryQuant", "Trunc", "MultiThreshold", "Conv", "MatMul", "Gemm",
    "BatchNormalization", "Add", "Sub", "Mul", "Div", "Pad", "Reshape", "Flatten", "MaxPool",
    "ReduceSum", "GlobalAveragePool", "Transpose", "Identity", "Relu",
}
"""ONNX/QONNX ops the front end plus our steps can take to hardware (with the checks below)."""


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
