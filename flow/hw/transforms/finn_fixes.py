"""Fixes around FINN's own passes (finn-plus 1.6.1): implementation choices and bit widths that
would make a node unsimulatable or wrong, and the forks FINN would give a deprecated layer.

* :class:`PreferHlsMvau`: every MVAU without an explicit style is specialised as HLS.
* :class:`FixXnorAccumulatorWidth`, :class:`KeepBipolarWeights`, :func:`pin_legal_weight_types` /
  :func:`unpin_weight_types`: around FINN's ``step_minimize_bit_width``.
* :class:`InferReplicateStreams`: every fork of a stream becomes finn-plus' ``ReplicateStream``
  (the successor of ``DuplicateStreams``, which finn-plus deprecates), before FINN's
  ``step_convert_to_hw`` would insert ``DuplicateStreams`` for it.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation

from flow.env.finn import HW_DOMAIN
from flow.hw.transforms.graph_edit import new_tensor


class PreferHlsMvau(Transformation):
    """Every MVAU without an explicit ``preferred_impl_style`` is specialised as HLS.

    FINN would make an MVAU with >= 4-bit inputs and weights (the multi-bit head) an RTL MVAU,
    whose DSP primitives Verilator cannot simulate: that node could never run as generated code
    without Vivado (``--sim``), only as FINN's python model. The HLS MVAU computes the same
    integers with LUT multipliers and runs in cppsim, so every node of the build stays provable."""

    def apply(self, model: ModelWrapper):
        for n in model.graph.node:
            if n.op_type == "MVAU" and n.domain == HW_DOMAIN:
                inst = getCustomOp(n)
                if inst.get_nodeattr("preferred_impl_style") == "":
                    inst.set_nodeattr("preferred_impl_style", "hls")
        return model, False


class FixXnorAccumulatorWidth(Transformation):
    """Widen the accumulator of XNOR-mode MVAUs that FINN's ``MinimizeAccumulatorWidth`` made
    too narrow, and restore the thresholds it clipped.

    finn-plus 1.6.1 sizes an XNOR MVAU's accumulator from ``sum(w_bipolar * x_binary)``, range
    ``[-#neg, #pos]``, but the layer computes a *popcount* in ``[0, MW]``. With ``MW = 4`` it picks
    INT3, so a popcount of 4 cannot be represented and the thresholds at 4 are clipped to 3: the
    layer's function changes. sibnn's python-model verification after ``minimize_bit_width``
    caught this on the SI interaction layer (1x1, 4 inputs). ``before`` is the graph as it was
    before minimisation (its thresholds are the exact ones).
    """

    def __init__(self, before: ModelWrapper) -> None:
        super().__init__()
        self.before = {n.name: n for n in before.graph.node}
        self.before_model = before

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        changed = False
        for n in model.graph.node:
            if not n.op_type.startswith("MVAU"):
                continue
            inst = getCustomOp(n)
            if not inst.get_nodeattr("binaryXnorMode"):
                continue
            mw = int(inst.get_nodeattr("MW"))
            adt = DataType[inst.get_nodeattr("accDataType")]
            thr_name = n.input[2] if len(n.input) > 2 else None
            old = self.before.get(n.name)
            thr_old = None
            if thr_name and old is not None and len(old.input) > 2:
                thr_old = self.before_model.get_initializer(old.input[2])
            hi = mw if thr_old is None else max(mw, int(np.max(thr_old)))
            lo = 0 if thr_old is None else min(0, int(np.min(thr_old)))
            if adt.allowed(lo) and adt.allowed(hi) and (
                    thr_old is None or np.array_equal(model.get_initializer(thr_name), thr_old)):
                continue
            new = DataType.get_smallest_possible(hi) if lo >= 0 else \
                DataType.get_smallest_possible(-max(abs(lo), hi + 1))
            inst.set_nodeattr("accDataType", new.name)
            if thr_old is not None:
                model.set_initializer(thr_name, thr_old)
                model.set_tensor_datatype(thr_name, new)
            changed = True
        return model, changed


class KeepBipolarWeights(Transformation):
    """Give a non-XNOR MVAU whose weights are all ``+-1`` its 1-bit ``BIPOLAR`` weight type back.

    finn-plus 1.6.1's ``MinimizeWeightBitWidth`` sizes weights from their range: ``[-1, +1]``
    becomes INT2. That is exact but wasteful on an MVAU with multi-bit input and binary weights
    (the SI squeeze that reads the 4-bit residual ``h``): the weights are stored with 2 bits, and
    every product is an INT4 x INT2 multiply. With ``BIPOLAR`` weights FINN's HLS MVAU stores 1 bit
    per weight and computes each product as a conditional negation (finn-hlslib ``Recast<Binary>``:
    ``w ? x : -x``), the same integers. XNOR MVAUs (binary input too) are left alone: their weights
    are already BINARY. Run after FINN's ``step_minimize_bit_width``; the accumulator FINN sized
    from the ``+-1`` values stays valid, because the values do not change.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        for n in model.graph.node:
            if not n.op_type.startswith("MVAU") or len(n.input) < 2:
                continue
            inst = getCustomOp(n)
            if inst.get_nodeattr("binaryXnorMode") or "BIPOLAR" in (
                    inst.get_nodeattr("weightDataType"), inst.get_nodeattr("inputDataType")):
                continue  # BIPOLAR x BIPOLAR would be FINN's popcount, another function
            w = model.get_initializer(n.input[1])
            if w is None or model.get_tensor_datatype(n.input[1]) != DataType["BIPOLAR"] or \
                    not np.all(np.abs(w) == 1):
                continue
            inst.set_nodeattr("weightDataType", "BIPOLAR")
        return model, False


def _finn_weight_type(w: np.ndarray) -> DataType:
    """The type finn-plus 1.6.1's value-based ``MinimizeWeightBitWidth`` gives MVAU weights ``w``
    (``MatrixVectorActivation.minimize_weight_bit_width``)."""
    lo, hi = float(w.min()), float(w.max())
    if lo < 0:
        return DataType.get_smallest_possible(lo if abs(lo) > hi else -hi - 1)
    return DataType.get_smallest_possible(hi)


def _finn_threshold_type_illegal(model: ModelWrapper, node) -> bool:
    """Whether FINN's ``Thresholding.minimize_weight_bit_width`` would pick a type that cannot
    hold the node's thresholds and raise ("Thresholds can't be expressed with type BIPOLAR"):
    thresholds in ``[-1, 0]`` with a -1 get ``BIPOLAR`` (the smallest type holding -1), which
    has no 0. Mirrors FINN's choice for integer inputs."""
    from qonnx.custom_op.registry import getCustomOp

    t = model.get_initializer(node.input[1]) if len(node.input) > 1 else None
    if t is None:
        return False
    inst = getCustomOp(node)
    if not (inst.get_input_datatype(0).is_integer() and inst.get_input_datatype(1).is_integer()):
        return False
    lo, hi = float(np.min(t)), float(np.max(t))
    if lo == hi == 0:
        return False
    signed = inst.get_input_datatype(0).signed()
    if lo < 0:
        tdt = DataType.get_smallest_possible(lo if abs(lo) > hi else -hi - 1)
    else:
        tdt = DataType.get_smallest_possible(-hi - 1 if signed else hi)
    hw = inst.get_hw_compatible_threshold_tensor(t)
    return not bool(np.vectorize(tdt.allowed)(hw).all())


def pin_legal_weight_types(model: ModelWrapper) -> dict[str, int]:
    """Before FINN's ``step_minimize_bit_width``: pin a legal weight type on every non-XNOR MVAU
    whose weights FINN would type wrongly, and return ``{node: runtime_writeable_weights}`` for
    :func:`unpin_weight_types`.

    FINN types weights in ``{-1, 0}`` as ``BIPOLAR`` (the smallest type holding -1; a 0 is then
    packed as -1, and on a BIPOLAR input FINN asserts in the threshold conversion) and weights in
    ``{0, 1}`` as ``BINARY``, which its HLS MVAU takes only in XNOR mode ("True binary
    (non-bipolar) inputs not yet supported" in ``hw_codegen``). A small layer of 2-bit weights can
    draw only those values. Such a node gets the smallest 2+-bit integer type and keeps it through
    FINN's step because it is marked runtime-writeable meanwhile (FINN then sizes its accumulator
    from the types, not the values: wider, never wrong). A thresholding node whose thresholds FINN
    would type as BIPOLAR while holding a 0 (:func:`_finn_threshold_type_illegal`) keeps its
    present type the same way."""
    from qonnx.custom_op.registry import getCustomOp

    pinned = {}
    for n in model.graph.node:
        if n.op_type.startswith("Thresholding") and _finn_threshold_type_illegal(model, n):
            inst = getCustomOp(n)  # keep its present (legal, wider) type through FINN's step
            pinned[n.name] = inst.get_nodeattr("runtime_writeable_weights")
            inst.set_nodeattr("runtime_writeable_weights", 1)
            continue
        if not n.op_type.startswith("MVAU") or len(n.input) < 2:
            continue
        inst = getCustomOp(n)
        w = model.get_initializer(n.input[1])
        if w is None or inst.get_nodeattr("binaryXnorMode"):
            continue
        finn = _finn_weight_type(w)
        if finn not in (DataType["BINARY"], DataType["BIPOLAR"]) or (
                finn == DataType["BIPOLAR"] and np.all(np.abs(w) == 1)):
            continue
        lo, hi = int(w.min()), int(w.max())
        legal = next(DataType[f"{'INT' if lo < 0 else 'UINT'}{k}"] for k in range(2, 33)
                     if DataType[f"{'INT' if lo < 0 else 'UINT'}{k}"].allowed(lo)
                     and DataType[f"{'INT' if lo < 0 else 'UINT'}{k}"].allowed(hi))
        pinned[n.name] = inst.get_nodeattr("runtime_writeable_weights")
        inst.set_nodeattr("weightDataType", legal.name)
        inst.set_nodeattr("runtime_writeable_weights", 1)
        model.set_tensor_datatype(n.input[1], legal)
    return pinned


def unpin_weight_types(model: ModelWrapper, pinned: dict[str, int]) -> None:
    """Undo :func:`pin_legal_weight_types`' runtime-writeable marks (the types stay)."""
    from qonnx.custom_op.registry import getCustomOp

    for name, before in pinned.items():
        getCustomOp(model.get_node_from_name(name)).set_nodeattr("runtime_writeable_weights",
                                                                 before)


class InferReplicateStreams(Transformation):
    """Put a ``ReplicateStream`` HW layer on every tensor read by more than one consumer.

    finn-plus 1.6.1's ``step_convert_to_hw`` ends with ``InferDuplicateStreamsLayer``, which
    inserts ``DuplicateStreams``; finn-plus deprecates that op (its PR 166: removed in the release
    after 1.6.1) in favour of ``ReplicateStream``
    (inferred by ``finn.transformation.fpgadataflow.replicate_stream.InferReplicateStream``, HLS
    backend only, python execution and FINN's folding supported). Run before FINN's step, this
    leaves no fork for ``InferDuplicateStreamsLayer``. Run it after the ``Im2Col`` rewrites, so
    identical sliding windows are merged before their input is replicated.

    FINN's ``InferReplicateStream`` covers a node output with several consumers. It skips two forks
    that ``InferDuplicateStreamsLayer`` covers: a graph input read by several nodes, and a graph
    output that a node also reads. Those get the same node here (a graph output keeps its name).
    """

    def apply(self, model: ModelWrapper):
        from finn.transformation.fpgadataflow.replicate_stream import InferReplicateStream
        from qonnx.transformation.infer_data_layouts import InferDataLayouts

        changed = False
        g = model.graph
        for inp in g.input:
            consumers = model.find_consumers(inp.name) or []
            if len(consumers) >= 2:
                _replicate(model, inp.name, consumers, keep_name=False, index=0)
                changed = True
        for out in g.output:
            consumers = model.find_consumers(out.name) or []
            producer = model.find_producer(out.name)
            if consumers and producer is not None:
                index = list(g.node).index(producer) + 1
                _replicate(model, out.name, consumers, keep_name=True, index=index)
                changed = True
        model, finn_changed = InferReplicateStream().apply(model)
        changed = changed or finn_changed
        if changed:
            model = model.transform(InferDataLayouts())
        return model, changed


def _replicate(model: ModelWrapper, tensor: str, consumers: list, keep_name: bool,
               index: int) -> None:
    """Insert at ``index`` the ``ReplicateStream`` FINN's ``InferReplicateStream`` builds for
    ``tensor``, one replica per consumer; with ``keep_name`` the producer writes a new tensor and
    the last replica is ``tensor`` itself (a graph output keeps its name)."""
    shape = model.get_tensor_shape(tensor)
    dtype = model.get_tensor_datatype(tensor)
    replicas = [new_tensor(model, shape) for _ in consumers]
    for replica, consumer in zip(replicas, consumers, strict=True):
        consumer.input[list(consumer.input).index(tensor)] = replica
        model.set_tensor_datatype(replica, dtype)
    src = tensor
    if keep_name:
        src = new_tensor(model, shape)
        producer = model.find_producer(tensor)
        producer.output[list(producer.output).index(tensor)] = src
        model.set_tensor_datatype(src, dtype)
        replicas.append(tensor)
    model.graph.node.insert(index, helper.make_node(
        "ReplicateStream", [src], replicas, domain=HW_DOMAIN, backend="fpgadataflow",
        num=len(replicas), num_elems=int(shape[-1]), PE=1, num_inputs=[int(d) for d in shape[:-1]],
        dtype=dtype.name, name=f"ReplicateStream_{tensor}"))
