"""A graph that is not a graph, refused before step 1: a node reading a tensor nothing produces
(no node, no initializer, no graph input), a graph output nothing produces, a tensor produced
twice, a quantizer whose scale or bit width is no number a quantizer can have, a NaN or
infinite constant, or a standard op that ONNX's own checker rejects.

Such a file parses as ONNX, so it used to reach shape inference or a rewrite and fail there,
as a verification failure or an internal error, instead of as the bad input it is."""

from __future__ import annotations

import numpy as np

from sibnn_base.errors import UnsupportedGraphError


def _name(node, i: int) -> str:
    return f"{node.op_type} ({node.name or f'node {i}'})"


def dangling(model) -> list[str]:
    """What reads or exports a tensor nothing defines, or defines one twice (file's names)."""
    g = model.graph
    sources = [i.name for i in g.input] + [t.name for t in g.initializer]
    produced = [t for n in g.node for t in n.output if t != ""]
    defined = set(sources) | set(produced) | {""}
    seen: set[str] = set(sources)
    problems = []
    for i, n in enumerate(g.node):
        problems += [f"{_name(n, i)} reads {t!r}, which nothing produces"
                     for t in n.input if t not in defined]
        problems += [f"{_name(n, i)} writes {t!r}, which is already defined"
                     for t in n.output if t in seen]
        seen.update(t for t in n.output if t != "")
    problems += [f"graph output {o.name!r} is produced by nothing" for o in g.output
                 if o.name not in defined]
    return problems


ARITY = {"Quant": 4, "BipolarQuant": 2, "Trunc": 5, "BinaryQuant": 2}
"""How many inputs each QONNX quantizer takes (qonnx ``custom_op/general``)."""


def bad_quantizers(model) -> list[str]:
    """Quantizers with the wrong number of inputs, a scale that is not finite and positive, or
    a Quant bit width that is not a positive integer (where those are constants)."""
    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ARITY:
            continue
        if len(n.input) != ARITY[n.op_type]:
            out.append(f"{_name(n, i)}: {len(n.input)} inputs, {n.op_type} takes "
                       f"{ARITY[n.op_type]}")
            continue
        scale = model.get_initializer(n.input[1])
        if scale is not None and not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            out.append(f"{_name(n, i)}: scale must be finite and positive")
        bits = model.get_initializer(n.input[3]) if n.op_type == "Quant" and len(n.input) > 3 \
            else None
        if bits is not None and not (np.size(bits) == 1 and np.isfinite(bits).all()
                                     and float(bits) == int(bits) and int(bits) >= 1):
            out.append(f"{_name(n, i)}: bit width must be a positive integer")
    return out


def non_finite(model) -> list[str]:
    """Float initializers holding NaN or infinity (no network the flow compiles has them; the
    comparison of NaN outputs could only fail)."""
    from onnx import numpy_helper

    out = []
    for t in model.graph.initializer:
        v = numpy_helper.to_array(t)
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            out.append(f"initializer {t.name!r} holds NaN or infinity")
    return out


def invalid_nodes(model) -> list[str]:
    """What ONNX's own checker finds wrong (e.g. a standard op with the wrong inputs or
    attributes; custom-domain ops such as QONNX's quantizers are left to the checks above)."""
    import onnx

    try:
        onnx.checker.check_model(model.model)
    except onnx.checker.ValidationError as err:
        return [" ".join(str(err).split())[:300]]
    return []


def check_well_formed(model) -> None:
    """Raise a one-line :class:`UnsupportedGraphError` naming what is malformed."""
    problems = dangling(model) + bad_quantizers(model) + non_finite(model)
    problems = problems or invalid_nodes(model)
    if problems:
        raise UnsupportedGraphError("malformed graph: " + "; ".join(problems[:4]) +
                                    (f"; ... ({len(problems)} problems)" if len(problems) > 4
                                     else ""))
