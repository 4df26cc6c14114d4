"""What sibnn can take to hardware: the ONNX/QONNX ops (:data:`SUPPORTED_OPS`) and the one check
(:func:`check_supported`) that names every unsupported layer before any work is done. A build
runs it once, on the source graph with its own node names (:func:`flow.front.export.load_qonnx`, or
the registry export); no step repeats it."""

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


def unsupported_nodes(model: ModelWrapper) -> list[str]:
    """``"op (node): reason"`` for every node the flow cannot map."""
    bad = []
    for n in model.graph.node:
        name = f"{n.op_type} ({n.name or 'unnamed'})"
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
