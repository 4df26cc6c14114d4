"""Float graphs, refused before step 1: a model with no quantizer at all (a float torch network
exported to ONNX), or a conv/matmul whose weights are float values no quantizer produces, cannot
become integer hardware. Without this check such a model passes the op-support check and fails
at ``streamline`` as a verification error (exit 3), as if the compiler were wrong.

Kept apart from :mod:`flow.front.support` (which ops map) on purpose: this judges the numbers."""

from __future__ import annotations

import numpy as np

from sibnn_base.errors import UnsupportedGraphError

QUANTIZERS = ("Quant", "BipolarQuant", "BinaryQuant", "Trunc", "MultiThreshold")
"""Ops that put a tensor on an integer grid (QONNX's quantizers and FINN's thresholds)."""

WEIGHTED = ("Conv", "MatMul", "Gemm", "ConvTranspose")
"""Ops whose second input is a weight tensor that must be integer in hardware."""

_PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast")
"""Ops a weight may pass through between its quantizer and its conv/matmul."""


def _name(node, i: int) -> str:
    return f"{node.op_type} ({node.name or f'node {i}'})"


def _weight_is_quantized(model, tensor: str) -> bool:
    """Whether ``tensor`` comes from a quantizer (through pass-through ops), or is an initializer
    holding integers only (weights already on an integer grid)."""
    for _ in range(len(model.graph.node) + 1):
        init = model.get_initializer(tensor)
        if init is not None:
            values = np.asarray(init)
            return values.dtype.kind in "iub" or bool(np.all(np.isfinite(values)) and
                                                      np.all(values == np.round(values)))
        producer = model.find_producer(tensor)
        if producer is None:
            return True  # a graph input: not a weight we can judge here
        if producer.op_type in QUANTIZERS:
            return True
        if producer.op_type not in _PASS_THROUGH or not producer.input:
            return False
        tensor = producer.input[0]
    return False


def float_ops(model) -> tuple[bool, list[str]]:
    """``(has_quantizer, [float ops])``: whether the graph quantizes anything, and every
    conv/matmul whose weights are float (op and node name, the file's own)."""
    nodes = list(model.graph.node)
    has_quantizer = any(n.op_type in QUANTIZERS for n in nodes)
    bad = [_name(n, i) for i, n in enumerate(nodes)
           if n.op_type in WEIGHTED and len(n.input) > 1
           and not _weight_is_quantized(model, n.input[1])]
    return has_quantizer, bad


def check_quantized(model) -> None:
    """Refuse a graph with no quantizer, or with float weights no quantizer produces (a one-line
    :class:`UnsupportedGraphError` naming the float ops)."""
    has_quantizer, bad = float_ops(model)
    if not has_quantizer:
        ops = [_name(n, i) for i, n in enumerate(model.graph.node)][:8]
        raise UnsupportedGraphError(
            "the graph has no quantizers (no Quant/BipolarQuant/MultiThreshold), so it is a "
            f"float network: float op(s) {', '.join(ops)}{' ...' if len(model.graph.node) > 8 else ''};"
            " sibnn compiles quantized (QONNX) networks, e.g. a Brevitas export_qonnx")
    if bad:
        raise UnsupportedGraphError(
            f"float op(s) that cannot become integer hardware: {', '.join(bad[:8])}"
            f"{' ...' if len(bad) > 8 else ''} (weights not produced by a quantizer)")
