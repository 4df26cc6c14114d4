"""The stage executor: qonnx's node execution without its silent rounding, and as exact as
``execute_onnx`` on every stage of a real build."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.util.basic import qonnx_make_model

from flow.proof.verify import (
    StageExecutor,
    execute_stage,
    python_model_view,
    stage_input,
    verification_pixels,
)
from sibnn_base.errors import VerificationError


def _mul_graph(factor: float, out_type: str) -> ModelWrapper:
    """y = x * factor, with y annotated ``out_type``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Mul", ["x", "f"], ["y"], name="scale")
    g = helper.make_graph([node], "g", [x], [y],
                          [helper.make_tensor("f", TensorProto.FLOAT, [1], [factor])])
    m = ModelWrapper(qonnx_make_model(g))
    m.set_tensor_datatype("x", DataType["INT4"])
    m.set_tensor_datatype("y", DataType[out_type])
    return m


def test_off_grid_values_are_named_not_rounded():
    """Float noise on an integer tensor (2.0000002 for an INT4): qonnx's execute_onnx rounds it
    away with a warning; the stage executor names the node, the tensor and the index."""
    m = _mul_graph(1.0000001, "INT4")
    x = np.array([[0.0, 1.0, 2.0, -6.0]], np.float32)
    with pytest.warns(UserWarning, match="rounded"):
        lenient = execute_onnx(m, {"x": x})["y"]
    assert lenient[0, 2] == 2.0  # the noise silently removed
    with pytest.raises(VerificationError, match=r"node scale \(Mul\): output y\[\[0, 1\]\] = "
                                                r"np.float32\(1.0000001\) is not an integer"):
        StageExecutor(m)({"x": x})


def _thresholding(out_type: str) -> ModelWrapper:
    """A FINN Thresholding layer with 15 thresholds and no bias: outputs 0..15."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    thr = np.tile(np.arange(15, dtype=np.float32) - 7, (4, 1))
    node = helper.make_node("Thresholding", ["x", "t"], ["y"], name="thr",
                            domain="finn.custom_op.fpgadataflow", backend="fpgadataflow",
                            NumChannels=4, PE=1, numSteps=15, inputDataType="INT8",
                            weightDataType="INT8", outputDataType=out_type, ActVal=0,
                            numInputVectors=[1])
    g = helper.make_graph([node], "g", [x], [y],
                          [helper.make_tensor("t", TensorProto.FLOAT, thr.shape, thr.ravel())])
    m = ModelWrapper(qonnx_make_model(g))
    m.set_tensor_datatype("x", DataType["INT8"])
    m.set_tensor_datatype("y", DataType[out_type])
    return m


def test_a_hw_layer_out_of_its_stream_width_is_named():
    """A HW layer whose values do not fit its annotated type (they would wrap in hardware) passes
    qonnx's sanitizer unchanged; here it fails. A standard node's range is not checked (FINN
    annotates some counts before their bias is added), its integrality is."""
    x = np.array([[-20.0, 0.0, 7.0, 20.0]], np.float32)
    assert execute_onnx(_thresholding("INT4"), {"x": x})["y"].tolist() == [[0, 8, 15, 15]]
    with pytest.raises(VerificationError, match=r"node thr \(Thresholding\): output y\[\[0, 1\]\] "
                                                r"= np.float32\(8.0\) is not a INT4 value"):
        StageExecutor(_thresholding("INT4"))({"x": x})
    assert StageExecutor(_thresholding("UINT4"))({"x": x})["y"].tolist() == [[0, 8, 15, 15]]
    assert StageExecutor(_mul_graph(4.0, "INT2"))({"x": x})["y"].tolist() == [[-80, 0, 28, 80]]


def test_parameters_are_read_only_and_images_independent():
    m = _mul_graph(2.0, "INT6")
    run = StageExecutor(m)
    with pytest.raises(ValueError, match="read-only"):
        run.template["f"][0] = 3.0
    a = run({"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)})["y"]
    b = run({"x": np.array([[-1.0, 0.0, 1.0, 7.0]], np.float32)})["y"]
    assert a.tolist() == [[2, 4, 6, 8]] and b.tolist() == [[-2, 0, 2, 14]]


def test_wrong_input_shape_is_one_line():
    with pytest.raises(VerificationError, match=r"stage input x has shape \(1, 5\)"):
        StageExecutor(_mul_graph(2.0, "INT6"))({"x": np.zeros((1, 5), np.float32)})


def test_every_stage_of_a_build_equals_execute_onnx(small_hw_build):
    """Bit for bit the outputs of qonnx's own executor, on every stage the build saved (the
    specialised ones through their python-model views)."""
    px = verification_pixels((28, 28, 1), 3, 0)
    stages = sorted((small_hw_build / "intermediate_models").glob("[0-9]*.onnx"))
    checked = 0
    for f in stages:
        m = ModelWrapper(str(f))
        if any(n.op_type == "StreamingDataflowPartition" for n in m.graph.node):
            continue
        m = python_model_view(m) or m
        iname, oname = m.graph.input[0].name, m.graph.output[0].name
        x = stage_input(m, px)
        shape = m.get_tensor_shape(iname)
        ref = np.concatenate([execute_onnx(m, {iname: x[i:i + 1].reshape(shape)})[oname]
                              for i in range(len(x))])
        assert np.array_equal(execute_stage(m, px), ref), f.name
        checked += 1
    assert checked >= 7
