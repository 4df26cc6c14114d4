"""sibnn's own resource model for the stream layers that FINN estimates at 0 LUT.

FINN's ``lut_estimation()`` returns 0 unless a layer overrides it, and ElementwiseAdd (and the
other ElementwiseBinary ops), DuplicateStreams, ReplicateStream, AddStreams and StreamingEltwise do
not: the fork and the integer add of every SI branch cost "0 LUT" in every FINN estimate, while
in silicon they are adders and stream registers. This module models them; the numbers are
labelled as ours in ``summary.json`` (``estimates.sibnn_modelled``) and never mixed silently into
FINN's.

The model, per node, from the HLS that finn-plus 1.6.1 generates for each layer (the formula of
each layer type is documented next to it below: :data:`FORK_OPS`, :data:`ADD_OPS`,
:data:`MUL_OPS`), for a 7-series/UltraScale fabric. Every layer pays for its ports:

* every AXI-stream port of an HLS top gets a register slice (Vitis HLS ``regslice_both``): a
  two-entry skid buffer, ``2 * W`` FF and ``W`` LUT (the output mux) for a ``W``-bit stream, plus
  about :data:`PORT_CONTROL_LUT` LUT / :data:`PORT_CONTROL_FF` FF of valid/ready control.

Loop counters of the looped layers (``ReplicateStream_hls``, ``ElementwiseBinary_hls``: a
``ceil(log2(iterations))``-bit counter, 10 bits for 784 iterations) are not counted.

This is a model, not a measurement: without Vivado it cannot be calibrated here, so it is kept
simple and visible. Where a synthesis report exists, it is the number to trust.
"""

from __future__ import annotations

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from flow.env.finn import is_hw_node

PORT_CONTROL_LUT = 4
"""LUTs of one stream port's valid/ready handshake (per register slice)."""
PORT_CONTROL_FF = 3
"""FFs of one stream port's handshake state."""

FORK_OPS = ("ReplicateStream", "DuplicateStreams")
"""Stream forks, ``LUT = sum(W) + PORT_CONTROL_LUT * (1 + n)``, ``FF = 2 * sum(W) +
PORT_CONTROL_FF * (1 + n)`` over the input and the ``n`` outputs (``W = PE * bits`` each): register
slices only, no datapath. ``ReplicateStream_hls`` (what sibnn builds; finn-plus
``custom_op/fpgadataflow/hls/replicate_stream_hls.py``, ``docompute``) is an II=1 loop that reads
one word and writes it to every output. ``DuplicateStreams_hls`` (finn-plus' deprecated fork,
``duplicatestreams_hls.py``) does the same through finn-hlslib's ``StreamingDup`` (``dup.hpp``).
Both cost the same here."""

ADD_OPS = ("ElementwiseAdd", "ElementwiseSub", "ElementwiseBinaryOperation", "AddStreams",
           "StreamingEltwise")
"""Integer adds (finn-plus ``elementwise_binary_hls.py``; finn-hlslib ``streamtools.h`` for
``AddStreams``/``StreamingEltwise``, which finn-plus 1.6.1 no longer ships): the port register
slices plus ``PE`` ripple-carry adders of the ``B``-bit output on the carry chain, ``PE * B`` LUT,
registered (``PE * B`` FF)."""

MUL_OPS = ("ElementwiseMul",)
"""Integer multiplies: the port register slices plus ``PE`` array multipliers in LUTs (no DSP
assumed), ``PE * B * B`` LUT and ``PE * B`` FF for a ``B``-bit output."""

MODELLED = FORK_OPS + ADD_OPS + MUL_OPS
"""Layer types (without ``_hls``/``_rtl``) whose FINN LUT estimate is 0 and which we model."""


def _ports(inst, n_in: int, n_out: int) -> tuple[list[int], list[int]]:
    ins = [int(inst.get_instream_width(i)) for i in range(n_in)]
    outs = [int(inst.get_outstream_width(i)) for i in range(n_out)]
    return ins, outs


def node_cost(model: ModelWrapper, node) -> dict | None:
    """``{"LUT", "FF", "formula"}`` for one node of a :data:`MODELLED` type, else None."""
    base = node.op_type.removesuffix("_hls").removesuffix("_rtl")
    if base not in MODELLED:
        return None
    inst = getCustomOp(node)
    n_in = sum(1 for i in node.input if model.get_initializer(i) is None)
    n_out = len(node.output)
    ins, outs = _ports(inst, n_in, n_out)
    widths = ins + outs
    lut = sum(widths) + PORT_CONTROL_LUT * len(widths)
    ff = 2 * sum(widths) + PORT_CONTROL_FF * len(widths)
    formula = f"regslices of {len(widths)} ports, {sum(widths)} bits"
    if base in ADD_OPS:
        pe = int(inst.get_nodeattr("PE"))
        bits = outs[0] // pe
        lut += pe * bits
        ff += pe * bits
        formula += f" + {pe} adders x {bits} bits"
    elif base in MUL_OPS:
        pe = int(inst.get_nodeattr("PE"))
        bits = outs[0] // pe
        lut += pe * bits * bits
        ff += pe * bits
        formula += f" + {pe} multipliers {bits}x{bits} bits"
    return {"op": node.op_type, "LUT": lut, "FF": ff, "formula": formula}


def modelled_costs(model: ModelWrapper) -> dict[str, dict]:
    """Our cost of every node FINN estimates at 0 LUT, by node name."""
    out = {}
    for n in model.graph.node:
        if is_hw_node(n):
            c = node_cost(model, n)
            if c is not None:
                out[n.name] = c
    return out


def with_modelled(est: dict, costs: dict[str, dict]) -> dict:
    """FINN's totals plus ours, labelled: ``LUT`` stays FINN's number; ``LUT_modelled`` adds
    ours, and ``sibnn_modelled`` lists every node we priced."""
    lut = sum(c["LUT"] for c in costs.values())
    ff = sum(c["FF"] for c in costs.values())
    return {**est, "LUT_modelled": est.get("LUT", 0.0) + lut,
            "sibnn_modelled": {"LUT": lut, "FF": ff, "nodes": costs,
                               "note": "LUT/FF of the stream layers FINN estimates at 0 (forks, "
                                       "adds), by sibnn's model (flow/hw/resources.py); "
                                       "LUT_modelled = FINN's LUT + these"}}
