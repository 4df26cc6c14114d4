"""Our graph rewrites (flow/hw/transforms/) on tiny hand-built graphs: exact on seeded inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.composed import ComposedTransformation
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import qonnx_make_model

from flow.hw import transforms as T


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _mk(g) -> object:
    return qonnx_make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                              helper.make_opsetid("qonnx.custom_op.general", 1)])


def _run(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    return execute_onnx(model, {model.graph.input[0].name: x})[model.graph.output[0].name]


def _bipolar_fork_graph(seed: int = 0) -> ModelWrapper:
    """x (NHWC 1x4x4x6) -> bipolar MT -> {Pad(-1) -> MatMul, MatMul, ReduceSum} -> Adds."""
    rng = np.random.default_rng(seed)
    k = 6
    nodes = [
        helper.make_node("MultiThreshold", ["x", "thr"], ["b"], domain="qonnx.custom_op.general",
                         out_dtype="BIPOLAR", out_scale=2.0, out_bias=-1.0),
        helper.make_node("MatMul", ["b", "w1"], ["m1"]),
        helper.make_node("MatMul", ["b", "w2"], ["m2"]),
        helper.make_node("Pad", ["b", "pads", "padv", "axes"], ["p"], mode="constant"),
        helper.make_node("ReduceSum", ["p", "rax"], ["s"], keepdims=0),
        helper.make_node("Add", ["m1", "m2"], ["a"]),
        helper.make_node("ReduceSum", ["a", "rax"], ["sa"], keepdims=0),
        helper.make_node("Add", ["sa", "s"], ["y"]),
    ]
    g = helper.make_graph(nodes, "fork", [_vi("x", [1, 4, 4, k])], [_vi("y", [1, k])],
                          value_info=[_vi("p", [1, 6, 6, k]), _vi("s", [1, k]), _vi("sa", [1, k])])
    model = ModelWrapper(_mk(g))
    model.set_initializer("thr", np.zeros((1, 1), np.float32))
    model.set_initializer("w1", rng.choice([-1.0, 1.0], size=(k, k)).astype(np.float32))
    model.set_initializer("w2", rng.choice([-1.0, 1.0], size=(k, k)).astype(np.float32))
    model.set_initializer("pads", np.array([1, 1, 1, 1], np.int64))
    model.set_initializer("padv", np.array(-1.0, np.float32))
    model.set_initializer("axes", np.array([1, 2], np.int64))
    model.set_initializer("rax", np.array([1, 2], np.int64))
    model.set_tensor_datatype("x", DataType["INT8"])
    model.set_tensor_datatype("w1", DataType["BIPOLAR"])
    model.set_tensor_datatype("w2", DataType["BIPOLAR"])
    model = model.transform(InferShapes())
    model.set_tensor_datatype("b", DataType["BIPOLAR"])
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xnor_on_a_fork_is_exact(seed):
    model = _bipolar_fork_graph(seed)
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-3, 4, size=(1, 4, 4, 6)).astype(np.float32) for _ in range(4)]
    xs.append(np.zeros((1, 4, 4, 6), np.float32))  # ties: x == threshold
    before = [_run(model, x) for x in xs]
    new = model.transform(ComposedTransformation([T.ConvertBipolarToXnor()]))
    ops = [n.op_type for n in new.graph.node]
    assert ops.count("XnorPopcountMatMul") == 2 and "MatMul" not in ops
    mt = new.get_nodes_by_op_type("MultiThreshold")[0]
    assert new.get_tensor_datatype(mt.output[0]) == DataType["BINARY"]
    pad = new.get_nodes_by_op_type("Pad")[0]
    assert float(new.get_initializer(pad.input[2])) == 0.0  # -1 in bipolar is 0 in XNOR domain
    for x, y in zip(xs, before, strict=True):
        assert np.array_equal(_run(new, x), y)


def test_strip_output_affine_records_and_recomputes():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Mul", ["m", "s"], ["q"]),
             helper.make_node("Add", ["q", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [_vi("x", [1, 3])], [_vi("y", [1, 2])])
    model = ModelWrapper(_mk(g))
    model.set_initializer("w", np.array([[1, -1], [1, 1], [-1, 1]], np.float32))
    model.set_initializer("s", np.array([0.37], np.float32))
    model.set_initializer("b", np.array([0.5], np.float32))
    model = model.transform(InferShapes())
    x = np.array([[1.0, -1.0, 1.0]], np.float32)
    ref = _run(model, x)
    new = model.transform(ComposedTransformation([T.StripOutputAffine()]))
    assert [n.op_type for n in new.graph.node] == ["MatMul"]
    rec = json.loads(new.get_metadata_prop(T.OUTPUT_AFFINE_KEY))
    assert [r["op"] for r in rec] == ["Mul", "Add"]
    scores = _run(new, x)
    assert np.array_equal(scores, np.round(scores))
    assert np.array_equal(T.apply_output_affine(scores, rec), ref)


def test_pad_moves_before_transpose_and_sum_pool_becomes_accpool():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Pad", ["t", "pads", "v"], ["p"], mode="constant"),
             helper.make_node("Transpose", ["p"], ["q"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["q"], ["r"], perm=[0, 3, 1, 2]),
             helper.make_node("ReduceSum", ["r", "ax"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "g", [_vi("x", [1, 3, 3, 2])], [_vi("y", [1, 2])])
    model = ModelWrapper(_mk(g))
    model.set_initializer("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    model.set_initializer("v", np.array(0.0, np.float32))
    model.set_initializer("ax", np.array([2, 3], np.int64))
    model.set_tensor_datatype("x", DataType["INT4"])
    model = model.transform(InferShapes())
    x = np.random.default_rng(0).integers(-8, 8, size=(1, 3, 3, 2)).astype(np.float32)
    ref = _run(model, x)
    import finn.transformation.streamline.absorb as absorb

    new = model.transform(ComposedTransformation([
        T.MovePadBeforeTranspose(), absorb.AbsorbConsecutiveTransposes(),
        T.GlobalSumPoolToAccPool()]))
    ops = [n.op_type for n in new.graph.node]
    assert "Transpose" not in ops and "ReduceSum" not in ops
    assert "GlobalAccPool" in ops
    pad = new.get_nodes_by_op_type("Pad")[0]
    assert list(new.get_initializer(pad.input[3])) == [1, 2]
    assert np.array_equal(_run(new, x), ref)


def test_pixel_preprocessing_is_bit_exact_division():
    g = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "g",
                          [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    model = ModelWrapper(_mk(g))
    model.set_initializer("c", np.array([3.0], np.float32))
    model = model.transform(InferShapes())
    new = model.transform(T.InsertPixelPreprocessing())
    assert new.get_tensor_datatype(new.graph.input[0].name) == DataType["UINT8"]
    px = np.arange(256, dtype=np.float32)
    for chunk in px.reshape(-1, 4):
        x = chunk.reshape(1, 4)
        assert np.array_equal(_run(new, x), _run(model, x / np.float32(255.0)))
    again = new.transform(T.InsertPixelPreprocessing())
    assert len(again.graph.node) == len(new.graph.node)


def test_identity_im2col_removed_and_identical_ones_shared():
    def im2col(i, o, k, s):
        return helper.make_node("Im2Col", [i], [o], domain="qonnx.custom_op.general",
                                stride=[s, s], kernel_size=[k, k], input_shape="(1, 4, 4, 3)",
                                pad_amount=[0, 0, 0, 0])

    nodes = [im2col("x", "a", 1, 1), im2col("x", "b", 1, 2), im2col("x", "c", 1, 2),
             helper.make_node("MatMul", ["a", "w"], ["ma"]),
             helper.make_node("MatMul", ["b", "w"], ["mb"]),
             helper.make_node("MatMul", ["c", "w"], ["mc"]),
             helper.make_node("Add", ["mb", "mc"], ["y"])]
    g = helper.make_graph(nodes, "g", [_vi("x", [1, 4, 4, 3])],
                          [_vi("y", [1, 2, 2, 2]), _vi("ma", [1, 4, 4, 2])])
    model = ModelWrapper(_mk(g))
    model.set_initializer("w", np.arange(6, dtype=np.float32).reshape(3, 2) - 2)
    model.set_tensor_datatype("x", DataType["INT4"])
    model = model.transform(InferShapes())
    x = np.random.default_rng(0).integers(-4, 4, size=(1, 4, 4, 3)).astype(np.float32)

    def both(m):
        out = execute_onnx(m, {m.graph.input[0].name: x})
        return [out[o.name] for o in m.graph.output]

    ref = both(model)
    new = model.transform(ComposedTransformation([T.RemoveIdentityIm2Col(),
                                                  T.ShareIdenticalIm2Col()]))
    assert [n.op_type for n in new.graph.node].count("Im2Col") == 1
    for a, b in zip(both(new), ref, strict=True):
        assert np.array_equal(a, b)


def _forks_graph() -> ModelWrapper:
    """Every kind of fork: the graph input read twice (``x``), a node output read twice (``t``),
    and a graph output also read by a node (``y``, which feeds the second output ``z``)."""
    nodes = [helper.make_node("Add", ["x", "c1"], ["t"]),
             helper.make_node("Mul", ["x", "c2"], ["u"]),
             helper.make_node("Mul", ["t", "c2"], ["v"]),
             helper.make_node("Add", ["t", "u"], ["w"]),
             helper.make_node("Add", ["v", "w"], ["y"]),
             helper.make_node("Mul", ["y", "c2"], ["z"])]
    shape = [1, 4, 4, 8]
    g = helper.make_graph(nodes, "forks", [_vi("x", shape)], [_vi("y", shape), _vi("z", shape)])
    model = ModelWrapper(_mk(g))
    model.set_initializer("c1", np.array([3.0], np.float32))
    model.set_initializer("c2", np.array([-2.0], np.float32))
    model.set_tensor_datatype("x", DataType["INT4"])
    return model.transform(InferShapes())


def test_every_fork_becomes_a_replicate_stream_and_stays_exact():
    from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import (
        InferDuplicateStreamsLayer,
    )

    model = _forks_graph()
    x = np.random.default_rng(0).integers(-8, 8, size=(1, 4, 4, 8)).astype(np.float32)

    def outs(m):
        res = execute_onnx(m, {"x": x})
        return [res[o.name] for o in m.graph.output]

    ref = outs(model)
    new = model.transform(T.InferReplicateStreams())
    reps = new.get_nodes_by_op_type("ReplicateStream")
    assert len(reps) == 3
    assert [o.name for o in new.graph.output] == ["y", "z"]  # a graph output keeps its name
    outputs = {o.name for o in new.graph.output}
    for name in [new.graph.input[0].name] + [o for n in new.graph.node for o in n.output]:
        consumers = new.find_consumers(name) or []
        assert len(consumers) + (name in outputs) <= 1, name
    for a, b in zip(outs(new), ref, strict=True):
        assert np.array_equal(a, b)
    # our input/output forks are the node FINN's InferReplicateStream makes for the inner one
    by_input = {n.input[0]: n for n in reps}
    finn_made = {a.name for a in by_input["t"].attribute}
    assert {a.name for a in by_input["x"].attribute} == finn_made
    assert {a.name for a in next(n for n in reps if "y" in n.output).attribute} == finn_made
    from qonnx.custom_op.registry import getCustomOp

    for n in reps:
        inst = getCustomOp(n)
        assert inst.get_nodeattr("num") == len(n.output)
        assert inst.get_nodeattr("dtype") == new.get_tensor_datatype(n.input[0]).name
        assert list(inst.get_nodeattr("num_inputs")) == [1, 4, 4]
    assert getCustomOp(by_input["x"]).get_nodeattr("dtype") == "INT4"
    # FINN's convert_to_hw ends with InferDuplicateStreamsLayer: nothing is left for it
    _, changed = InferDuplicateStreamsLayer().apply(new)
    assert not changed
    again = new.transform(T.InferReplicateStreams())
    assert len(again.get_nodes_by_op_type("ReplicateStream")) == 3
