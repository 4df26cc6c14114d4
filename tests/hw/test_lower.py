"""The exact front end: IR -> streamlined FINN graph -> FINN's convert_to_hw, all-HW and
bit-exact against the golden model, on our family (ties included) and on bnn_pynq networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow.env.finn import HW_DOMAIN, dataflow_config, detect_tools, finn_session
from flow.front.export import export_qonnx_model
from flow.front.golden import GoldenModel, build_golden
from flow.front.integerize import integerize
from flow.hw.lower import lower_to_finn
from flow.proof.verify import GoldenVerifier, make_inputs
from quant_models import build_model
from quant_models.stress import randomize_bn
from tests.fuzz import random_model


def _to_hw(model, tmp_path):
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    with finn_session(tmp_path, detect_tools()) as steps:
        cfg = dataflow_config(tmp_path, board="Pynq-Z2", fpga_part="xc7z020clg400-1",
                              clock_ns=10.0, shell_flow_type="vivado_zynq")
        return steps.step_convert_to_hw(model.transform(InferDataLayouts()), cfg)


def _lower_and_check(model, shape_chw, tmp_path, n=6, seed=0):
    mw = export_qonnx_model(model, tmp_path / "m.onnx", input_shape=(1, *shape_chw))
    ir = integerize(mw)
    golden = GoldenModel(None, build_golden(ir))
    c, h, w = shape_chw
    px = make_inputs((h, w, c), n, seed)
    verify = GoldenVerifier(golden, px)
    finn = lower_to_finn(ir)
    assert verify("lowered", finn)["exact"]
    hw = _to_hw(finn, tmp_path)
    assert [n.op_type for n in hw.graph.node if n.domain != HW_DOMAIN] == []
    assert verify("convert_to_hw", hw)["exact"]
    return finn, hw


def test_si_student_maps_all_hw_with_streams_and_integer_adds(tmp_path):
    torch.manual_seed(0)
    m = build_model("si_resnet_w1a1", width=8, depth=[1, 1])
    randomize_bn(m, np.random.default_rng(0))  # 20% negative BN scales: decreasing channels
    finn, hw = _lower_and_check(m.eval(), (1, 28, 28), tmp_path)
    ops = [n.op_type for n in hw.graph.node]
    assert "DuplicateStreams" in ops and "ElementwiseAdd" in ops and "GlobalAccPool" in ops
    for n in hw.graph.node:
        if n.op_type == "ElementwiseAdd":
            for t in n.input:
                assert hw.get_tensor_datatype(t).is_integer()
    # the XNOR-on-a-fork trap: the bipolar fork feeds several binary MVAUs in XNOR mode
    from qonnx.custom_op.registry import getCustomOp

    xnor = [n for n in hw.graph.node if n.op_type == "MVAU"
            and getCustomOp(n).get_nodeattr("binaryXnorMode") == 1]
    assert len(xnor) >= 4
    # the graph input is the uint8 pixel stream, NHWC
    assert hw.get_tensor_datatype(hw.graph.input[0].name).name == "UINT8"
    assert hw.get_tensor_shape(hw.graph.input[0].name) == [1, 28, 28, 1]


def test_strided_shortcut_on_sign_of_h_shares_the_si_squeeze_window(tmp_path):
    """SI on ``h``: the squeeze reads ``h``, the shortcut ``a = sign(h + b)``, both 1x1 at stride
    2. The shortcut reads the sign of the squeeze's window instead (a 1x1 window only selects
    pixels), so one window generator on ``h`` serves both, exactly."""
    from qonnx.custom_op.registry import getCustomOp

    torch.manual_seed(0)
    m = build_model("si_h_resnet_w1a1", width=8, depth=[1, 1], sign_bias=True)
    randomize_bn(m, np.random.default_rng(1))
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "bias") and isinstance(mod.bias, torch.nn.Parameter) and \
                    mod.bias.dim() == 4:
                mod.bias.uniform_(-1.0, 1.0)  # sign biases off the grid: thresholds move
    finn, hw = _lower_and_check(m.eval(), (1, 28, 28), tmp_path)
    strided = [n for n in finn.graph.node if n.op_type == "Im2Col"
               and tuple(getCustomOp(n).get_nodeattr("stride")) == (2, 2)
               and tuple(getCustomOp(n).get_nodeattr("kernel_size")) == (1, 1)]
    assert len(strided) == 2 and len({n.input[0] for n in strided}) == 1  # both window h
    signs = [c for n in strided for c in finn.find_consumers(n.output[0])
             if c.op_type == "MultiThreshold"]
    assert len(signs) == 1 and finn.get_tensor_datatype(signs[0].output[0]).name == "BINARY"
    assert finn.find_consumers(signs[0].output[0])[0].op_type == "XnorPopcountMatMul"
    # what convert_to_hw runs first: the two windows of h become one, feeding both
    from flow.hw.transforms import ShareIdenticalIm2Col

    shared = finn.transform(ShareIdenticalIm2Col())
    strided = [n for n in shared.graph.node if n.op_type == "Im2Col"
               and tuple(getCustomOp(n).get_nodeattr("stride")) == (2, 2)
               and tuple(getCustomOp(n).get_nodeattr("kernel_size")) == (1, 1)]
    assert len(strided) == 1
    assert sorted(c.op_type for c in shared.find_consumers(strided[0].output[0])) == \
        ["MatMul", "MultiThreshold"]


@pytest.mark.parametrize("seed", [1, 6])
def test_random_tie_topologies(seed, tmp_path):
    m, _, kw = random_model(seed, ties=True)
    _lower_and_check(m, (kw["in_channels"], kw["input_size"], kw["input_size"]), tmp_path,
                     n=8, seed=seed)


@pytest.mark.parametrize("net,shape", [("tfc_1w1a", (1, 28, 28)), ("cnv_1w1a", (3, 32, 32))])
def test_bnn_pynq_networks_map_all_hw(net, shape, tmp_path):
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    torch.manual_seed(0)
    m, _ = model_with_cfg(net, pretrained=False)
    randomize_bn(m, np.random.default_rng(0))
    _lower_and_check(m.eval(), shape, tmp_path, n=3)


def test_bipolar_tensor_shared_by_xnor_and_multibit_convs(tmp_path):
    """Regression (multi-bit SI weights): the block's bipolar input feeds the +-1 main conv and
    the 2-bit SI squeeze. It used to be emitted as INT2 {-1, +1} for the squeeze while the main
    conv still read it as XNOR bits (79 of 80 scores wrong). Then both read the bits, the squeeze
    as an integer MatMul on BINARY, which FINN's HLS MVAU refuses outside XNOR mode ("True
    binary (non-bipolar) inputs not yet supported" in hw_codegen). Now the main conv stays XNOR
    and the squeeze reads the same bits recast to BIPOLAR (finn-hlslib ``Recast<Binary>``)."""
    from qonnx.custom_op.registry import getCustomOp

    torch.manual_seed(0)
    m = build_model("si_resnet_w1a1", width=4, depth=[1], input_size=8, si_weight_bits=2)
    randomize_bn(m, np.random.default_rng(0), ties=True)
    finn, hw = _lower_and_check(m.eval(), (1, 8, 8), tmp_path, n=16)
    mms = {n.output[0]: n for n in finn.graph.node if n.op_type in ("MatMul", "XnorPopcountMatMul")}
    kinds = sorted((n.op_type, finn.get_tensor_datatype(n.input[0]).name,
                    finn.get_tensor_datatype(n.input[1]).name) for n in mms.values())
    assert ("XnorPopcountMatMul", "BINARY", "BINARY") in kinds  # the 3x3 conv
    # the 2-bit squeeze reads the bits as BIPOLAR, with its integer weights (not +-1: no XNOR)
    assert any(k[0] == "MatMul" and k[1] == "BIPOLAR" and k[2] != "BIPOLAR" for k in kinds), kinds
    assert not any(k[0] == "MatMul" and k[1] == "BINARY" for k in kinds), kinds
    recasts = [n for n in finn.graph.node if n.op_type == "Thresholding"]
    assert recasts and all(finn.get_tensor_datatype(n.input[0]).name == "BINARY" and
                           finn.get_tensor_datatype(n.output[0]).name == "BIPOLAR"
                           for n in recasts)
    for n in hw.graph.node:  # what FINN's HLS MVAU takes: no true-binary input outside XNOR
        if n.op_type == "MVAU" and not getCustomOp(n).get_nodeattr("binaryXnorMode"):
            assert getCustomOp(n).get_nodeattr("inputDataType") != "BINARY", n.name


def test_si_squeeze_whose_quantiser_is_a_clip_keeps_the_fork_binary(tmp_path):
    """Regression (found by the knob sweep): with dyadic BatchNorms a 2-bit SI activation can be
    the identity on its accumulator but for saturation, so the IR has a clip, not thresholds.
    That consumer used to turn the block's bipolar input into INT2, and the 3x3 conv then padded
    an integer stream with -1, which FINN cannot (FMPadding pads 0). A clip absorbs the bit
    correction like thresholds do, so the fork stays bits for every consumer."""
    torch.manual_seed(118)
    m = build_model("si_resnet_w1a1", width=12, depth=[2, 1], input_size=8, res_bits=4,
                    res_scale_log2=-3, r=8, si_act_bits=2, si_weight_bits=1)
    randomize_bn(m, np.random.default_rng(118), ties=True)
    ir = integerize(export_qonnx_model(m.eval(), tmp_path / "m.onnx", input_shape=(1, 1, 8, 8)))
    assert "clip" in [nd.op for nd in ir.nodes]
    finn, _ = _lower_and_check(m, (1, 8, 8), tmp_path, n=16)
    from qonnx.util.basic import get_by_name

    for n in finn.graph.node:
        if n.op_type == "Im2Col" and any(get_by_name(n.attribute, "pad_amount").ints):
            assert finn.get_tensor_datatype(n.input[0]).name in ("BINARY", "UINT8"), n.name


def test_tensor_datatypes_come_from_qonnx_candidates():
    """The lowering's datatypes are qonnx's smallest candidates on the stream widths it uses."""
    from qonnx.core.datatype import DataType

    from flow.hw.lower import _dtype_for
    from sibnn_base.errors import UnsupportedGraphError

    cases = {(0, 1): "BINARY", (0, 2): "UINT2", (0, 255): "UINT8", (0, 256): "UINT16",
             (-1, 0): "INT2", (-1, 1): "INT2", (-128, 127): "INT8", (-129, 0): "INT16",
             (0, 288): "UINT16", (-1785, 1785): "INT16", (-(2**31), 2**31 - 1): "INT32"}
    for (lo, hi), name in cases.items():
        assert _dtype_for(lo, hi) == DataType[name], (lo, hi)
    with pytest.raises(UnsupportedGraphError, match="more than 32 bits"):
        _dtype_for(0, 2**32)
