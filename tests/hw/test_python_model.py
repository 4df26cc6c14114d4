"""After layer specialisation, FINN's python models of the HW layers still verify each stage."""

from __future__ import annotations

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper

from flow.proof.verify import GoldenVerifier, python_model_view, verification_pixels
from flow.report import load_summary
from sibnn_base.errors import VerificationError


@pytest.fixture(scope="module")
def small_build(small_hw_build):
    """The shared small build (conftest), through hw_codegen on 4 inputs."""
    return small_hw_build


def test_post_specialisation_stages_run_their_python_models(small_build):
    s = load_summary(small_build)
    late = [v for v in s["verification"] if v["step"] in ("specialize_layers", "fold",
                                                          "minimize_bit_width")]
    assert len(late) == 3
    for v in late:
        assert v["exact"] is None and "cppsim/rtlsim" in v["reason"]  # honest: HLS not verified
        assert v["python_model"] == {"exact": True, "n_inputs": 4}


def test_a_broken_folded_stage_fails(small_build):
    from flow.front.golden import golden_from_qonnx

    model = ModelWrapper(str(small_build / "intermediate_models" / "06_minimize_bit_width.onnx"))
    golden, _ = golden_from_qonnx(ModelWrapper(str(small_build / "model.qonnx.onnx")))
    node = next(n for n in model.graph.node if n.op_type.startswith("Thresholding"))
    thr = model.get_initializer(node.input[1])
    model.set_initializer(node.input[1], thr + 3)  # a wrong threshold table
    view = python_model_view(model)
    assert view is not None and all(not n.op_type.endswith(("_hls", "_rtl"))
                                    for n in view.graph.node)
    verifier = GoldenVerifier(golden, verification_pixels((28, 28, 1), 8, 0))
    with pytest.raises(VerificationError, match="differs at index"):
        verifier("minimize_bit_width", view)
    assert np.array_equal(model.get_initializer(node.input[1]), thr + 3)


def test_xnor_accumulators_hold_their_popcount(small_build, tmp_path):
    """finn-plus 1.6.1 sizes XNOR accumulators as if they held sum(w_bipolar * x_binary); the
    popcount needs [0, MW]. Our step widens them (and restores the clipped thresholds)."""
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp

    from flow.env.finn import dataflow_config, detect_tools, finn_session

    def too_narrow(model):
        bad = []
        for n in model.graph.node:
            if n.op_type.startswith("MVAU") and getCustomOp(n).get_nodeattr("binaryXnorMode"):
                adt = DataType[getCustomOp(n).get_nodeattr("accDataType")]
                if not adt.allowed(getCustomOp(n).get_nodeattr("MW")):
                    bad.append(n.name)
        return bad

    ours = ModelWrapper(str(small_build / "intermediate_models" / "06_minimize_bit_width.onnx"))
    assert too_narrow(ours) == []
    folded = ModelWrapper(str(small_build / "intermediate_models" / "05_fold.onnx"))
    with finn_session(tmp_path, detect_tools()) as steps:
        cfg = dataflow_config(tmp_path, board="Pynq-Z2", fpga_part="xc7z020clg400-1",
                              clock_ns=10.0, shell_flow_type="vivado_zynq")
        finn_only = steps.step_minimize_bit_width(folded, cfg)
    # upstream behaviour pinned: if this fails, FINN fixed it and FixXnorAccumulatorWidth can go
    assert too_narrow(finn_only) != []


def test_binary_weights_on_multibit_inputs_stay_one_bit(small_build, tmp_path):
    """The SI squeeze reads the 4-bit ``h`` with +-1 weights (and a binary stem the pixels):
    FINN's MinimizeWeightBitWidth makes them INT2 (2-bit storage, INT4 x INT2 products); our step
    gives them BIPOLAR back (1 bit, conditional negation), which the python model above verified
    exact on this very stage."""
    from qonnx.custom_op.registry import getCustomOp

    from flow.env.finn import dataflow_config, detect_tools, finn_session

    def weight_types(model):
        out = {}
        for n in model.graph.node:
            if n.op_type.startswith("MVAU") and not getCustomOp(n).get_nodeattr("binaryXnorMode"):
                w = model.get_initializer(n.input[1])
                if np.all(np.abs(w) == 1):
                    out[n.name] = getCustomOp(n).get_nodeattr("weightDataType")
        return out

    ours = weight_types(ModelWrapper(str(small_build / "intermediate_models" /
                                         "06_minimize_bit_width.onnx")))
    # the binary stem (it reads the 8-bit pixels) and one SI squeeze per block
    assert len(ours) == 3 and set(ours.values()) == {"BIPOLAR"}
    folded = ModelWrapper(str(small_build / "intermediate_models" / "05_fold.onnx"))
    with finn_session(tmp_path, detect_tools()) as steps:
        cfg = dataflow_config(tmp_path, board="Pynq-Z2", fpga_part="xc7z020clg400-1",
                              clock_ns=10.0, shell_flow_type="vivado_zynq")
        finn_only = weight_types(steps.step_minimize_bit_width(folded, cfg))
    # upstream behaviour pinned: if this fails, FINN keeps BIPOLAR and KeepBipolarWeights can go
    assert finn_only == dict.fromkeys(ours, "INT2")
