"""Cycle models of the HLS nodes for the stitched simulation (:mod:`flow.sim.stitched`): one place
that says, per op type, which finn-hlslib (or FINN-generated) loop the node's code runs, which
iteration reads and which writes, and the pipeline depth assumed.

Every model is a *schedule*: the iterations of one invocation of the node's top function (one
frame), in order, each one clock cycle at II=1 (every loop here is ``#pragma HLS pipeline
II=1 style=flp``). An iteration reads one beat from each input in its read mask and, ``depth``
cycles later, writes one beat to each output in its write mask. A *barrier* iteration waits
until the pipeline has drained (the first iteration of a frame: the top function restarts; the
first of a second loop in the same function). The C++ engine (``stitched_sim.cpp``, class
``Hls``) runs the schedule with flushable-pipeline semantics and 2-beat register slices on every
AXI-stream port, as Vitis HLS implements ``#pragma HLS INTERFACE axis``.

What is modelled, and what is not:

* **Reads, writes, II and loop structure** follow the source named in :data:`MODELS`, so the
  cycles per frame and the order of reads and writes are those of the generated code.
* **Pipeline depth** (:func:`pipeline_depth`) is an estimate: the real depth is known only after
  HLS synthesis (Vitis HLS, not available here). It moves a node's latency by a few cycles and
  the FIFO occupancies by as many beats, not its throughput.
* **Weights** of an MVAU in ``internal_decoupled`` mode come from FINN's memory streamer
  (``memstream``), which prefetches: the model assumes a weight beat is always available.
* **Values**: an HLS node emits the beats FINN's python model of that node computes from the
  frame (``--sim cppsim`` proves those equal to the generated C++); the simulation checks every
  beat it *receives* against the same execution, so a node only emits values computed from
  exactly the inputs it got.

A node whose op type has no model here is refused with the reason (no guessing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

READ = 1
"""Bit ``k`` (``READ << k``): the iteration reads one beat from input stream ``k``."""
WRITE = 1 << 8
"""Bit ``8 + j`` (``WRITE << j``): the iteration writes one beat to output stream ``j``."""
BARRIER = 1 << 14
"""The iteration issues only once the pipeline is empty."""


@dataclass(frozen=True)
class CycleModel:
    """One node's schedule for one frame, and what it follows."""

    schedule: np.ndarray
    """uint16 per iteration: :data:`READ`/:data:`WRITE` masks and :data:`BARRIER`."""
    depth: int
    """Pipeline stages between an iteration's reads and its writes."""
    source: str
    """The function and loop the schedule follows (finn-hlslib file, or FINN's generator)."""

    @property
    def iterations(self) -> int:
        return int(len(self.schedule))


class NoCycleModel(Exception):
    """The node's op type (or this configuration of it) has no cycle model."""


def _attr(inst, name: str, default=None):
    try:
        return inst.get_nodeattr(name)
    except AttributeError:
        return default


def _num_vectors(inst) -> int:
    return int(np.prod(inst.get_nodeattr("numInputVectors")))


def pipeline_depth(inst) -> int:
    """Estimated pipeline stages of the node's loop (see the module docstring): one stage to
    read, a balanced reduction tree of ``log2`` levels for SIMD-wide products and threshold
    comparisons, one stage to write."""
    op = inst.onnx_node.op_type
    if op.startswith("MVAU"):
        simd = int(inst.get_nodeattr("SIMD"))
        steps = 0 if _attr(inst, "noActivation", 1) else 2 ** _bits(inst.get_output_datatype()) - 1
        return 3 + math.ceil(math.log2(max(simd, 1))) + math.ceil(math.log2(steps + 1))
    if op.startswith("Thresholding"):
        steps = 2 ** _bits(inst.get_output_datatype()) - 1
        return 2 + math.ceil(math.log2(steps + 1))
    if op.startswith(("ElementwiseAdd", "ElementwiseBinary", "AddStreams")):
        return 3
    if op.startswith("GlobalAccPool"):
        return 3
    if op.startswith("LabelSelect"):
        return 3
    return 2


def _bits(dt) -> int:
    return int(dt.bitwidth())


def _mvau(inst) -> tuple[np.ndarray, str]:
    """``Matrix_Vector_Activate_Stream_Batch`` / ``Matrix_Vector_Activate_Batch``
    (finn-hlslib ``mvau.hpp``): one loop of ``reps * NF * SF`` iterations; ``nf == 0`` reads
    the input (later neuron folds reuse ``inputBuf``), ``sf == SF - 1`` writes the output."""
    mw, mh = int(inst.get_nodeattr("MW")), int(inst.get_nodeattr("MH"))
    simd, pe = int(inst.get_nodeattr("SIMD")), int(inst.get_nodeattr("PE"))
    sf, nf = mw // simd, mh // pe
    one = np.zeros((nf, sf), dtype=np.uint16)
    one[0, :] |= READ
    one[:, sf - 1] |= WRITE
    sched = np.tile(one.reshape(-1), _num_vectors(inst))
    return sched, "finn-hlslib mvau.hpp Matrix_Vector_Activate_Stream_Batch, loop i < reps*NF*SF"


def _threshold(inst) -> tuple[np.ndarray, str]:
    """``Thresholding_Batch`` / ``Thresholding_Stream_Batch`` (``activations.hpp``): one read
    and one write per iteration, ``reps * NumChannels / PE`` iterations."""
    n = _num_vectors(inst) * int(inst.get_nodeattr("NumChannels")) // int(inst.get_nodeattr("PE"))
    return (np.full(n, READ | WRITE, dtype=np.uint16),
            "finn-hlslib activations.hpp Thresholding_Batch, loop i < reps*NF")


def _replicate(inst) -> tuple[np.ndarray, str]:
    """FINN's generated ``ReplicateStream`` / ``DuplicateStreams`` loop: each iteration reads
    one beat and writes it to every output."""
    n_out = len(inst.onnx_node.output)
    n = int(np.prod(inst.get_folded_output_shape(0)[:-1]))
    w = sum(WRITE << j for j in range(n_out))
    return (np.full(n, READ | w, dtype=np.uint16),
            f"FINN {inst.onnx_node.op_type} docompute: loop i < {n}, read in0, write each out")


def _eltwise(inst) -> tuple[np.ndarray, str]:
    """FINN's generated ``ElementwiseBinary`` loop nest (``elementwise_binary_hls``): one
    iteration per output beat; an input is read when its (unbroadcast) beat changes. Only the
    case with both inputs streamed at the output's shape is modelled."""
    out = tuple(inst.get_folded_output_shape(0))
    for k in range(2):
        if tuple(inst.get_folded_input_shape(k)) != out:
            raise NoCycleModel(f"{inst.onnx_node.op_type} with a broadcast input "
                               f"(input {k} folded {inst.get_folded_input_shape(k)}, output {out})")
    n = int(np.prod(out[:-1]))
    return (np.full(n, READ | (READ << 1) | WRITE, dtype=np.uint16),
            "FINN ElementwiseBinaryOperation_hls docompute: pipelined loop nest, read lhs and "
            "rhs, write out, each iteration")


def _accpool(inst) -> tuple[np.ndarray, str]:
    """``AccPool_Batch`` (finn-hlslib ``maxpool.h``): a pipelined loop over pixels x folds
    reading one beat each, then a second loop writing the ``NumChannels / PE`` accumulators."""
    folds = int(inst.get_nodeattr("NumChannels")) // int(inst.get_nodeattr("PE"))
    vecs = inst.get_nodeattr("numInputVectors")
    pixels = int(np.prod(vecs[1:])) if len(vecs) > 1 else int(vecs[0])
    reads = np.full(pixels * folds, READ, dtype=np.uint16)
    writes = np.full(folds, WRITE, dtype=np.uint16)
    writes[0] |= BARRIER
    return (np.concatenate([reads, writes]),
            "finn-hlslib maxpool.h AccPool_Batch: loop pixel x fold (read), then loop fold (write)")


def _labelselect(inst) -> tuple[np.ndarray, str]:
    """``LabelSelect_Batch`` (finn-hlslib ``maxpool.h``): a loop over ``NumClasses / PE`` beats
    reading the scores, then a loop writing the ``K`` labels."""
    folds = int(inst.get_nodeattr("Labels")) // int(inst.get_nodeattr("PE"))
    k = int(inst.get_nodeattr("K"))
    reads = np.full(folds, READ, dtype=np.uint16)
    writes = np.full(k, WRITE, dtype=np.uint16)
    writes[0] |= BARRIER
    return (np.concatenate([reads, writes]),
            "finn-hlslib maxpool.h LabelSelect_Batch: loop over class folds (read), then K writes")


def _pool(inst) -> tuple[np.ndarray, str]:
    """``Pool_batch`` (finn-hlslib ``maxpool.h``): one loop of ``reps * NF * SF`` iterations
    (``NF = Channels / PE``, ``SF`` = kernel size), each reading one beat of the window; the
    output is written when ``sf == SF - 1``."""
    k = int(np.prod(inst.get_nodeattr("KernelSize")))
    nf = int(inst.get_nodeattr("Channels")) // int(inst.get_nodeattr("PE"))
    reps = int(np.prod(inst.get_nodeattr("OutImgDims"))) * int(inst.get_nodeattr("BatchSize"))
    one = np.full(k, READ, dtype=np.uint16)
    one[-1] |= WRITE
    return (np.tile(one, reps * nf),
            "finn-hlslib maxpool.h Pool_batch: loop i < reps*NF*SF, read each, write at sf == SF-1")


MODELS: dict[str, Callable] = {
    "Pool_hls": _pool,
    "MVAU_hls": _mvau,
    "Thresholding_hls": _threshold,
    "ReplicateStream_hls": _replicate,
    "DuplicateStreams_hls": _replicate,
    "ElementwiseAdd_hls": _eltwise,
    "GlobalAccPool_hls": _accpool,
    "LabelSelect_hls": _labelselect,
}
"""Op type -> schedule builder. Every entry names its source in :attr:`CycleModel.source`."""


def cycle_model(inst) -> CycleModel:
    """The :class:`CycleModel` of one HLS node (a FINN custom-op instance); raises
    :class:`NoCycleModel` naming what is missing."""
    op = inst.onnx_node.op_type
    if op not in MODELS:
        raise NoCycleModel(f"no cycle model for {op} (modelled: {', '.join(sorted(MODELS))})")
    sched, source = MODELS[op](inst)
    sched = np.asarray(sched, dtype=np.uint16).copy()
    if sched.size == 0:
        raise NoCycleModel(f"{op}: empty schedule")
    sched[0] |= BARRIER  # a new invocation of the top function: the pipeline has drained
    return CycleModel(schedule=sched, depth=pipeline_depth(inst), source=source)
