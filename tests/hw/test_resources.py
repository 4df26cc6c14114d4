"""sibnn's resource model for the layers FINN prices at 0 LUT (forks and integer adds)."""

from __future__ import annotations

from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper

from flow.hw.resources import PORT_CONTROL_FF, PORT_CONTROL_LUT, modelled_costs, with_modelled

DOM = "finn.custom_op.fpgadataflow.hls"


def _graph(nodes, inputs, outputs):
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 4, 8]) for n in inputs]
    vo = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 4, 8]) for n in outputs]
    return ModelWrapper(helper.make_model(helper.make_graph(nodes, "g", vi, vo)))


def test_fork_and_add_are_priced_from_their_stream_widths():
    dup = helper.make_node("DuplicateStreams_hls", ["x"], ["a", "b"], domain=DOM,
                           backend="fpgadataflow", NumChannels=8, PE=2, NumOutputStreams=2,
                           inputDataType="INT4", numInputVectors=[1, 4, 4], name="dup")
    add = helper.make_node("ElementwiseAdd_hls", ["a", "b"], ["y"], domain=DOM,
                           backend="fpgadataflow", lhs_shape=[1, 4, 4, 8], rhs_shape=[1, 4, 4, 8],
                           out_shape=[1, 4, 4, 8], lhs_dtype="INT4", rhs_dtype="INT4",
                           out_dtype="INT5", PE=2, name="add")
    m = _graph([dup, add], ["x"], ["y"])
    costs = modelled_costs(m)
    # fork: one 8-bit input and two 8-bit outputs (PE 2 x INT4): regslices only
    assert costs["dup"]["LUT"] == 3 * 8 + 3 * PORT_CONTROL_LUT
    assert costs["dup"]["FF"] == 2 * 3 * 8 + 3 * PORT_CONTROL_FF
    # add: ports 8 + 8 in, 10 out (PE 2 x INT5), plus 2 adders of 5 bits
    assert costs["add"]["LUT"] == 26 + 3 * PORT_CONTROL_LUT + 2 * 5
    assert costs["add"]["FF"] == 2 * 26 + 3 * PORT_CONTROL_FF + 2 * 5
    est = with_modelled({"LUT": 1000.0}, costs)
    assert est["LUT"] == 1000.0  # FINN's number is never changed
    assert est["LUT_modelled"] == 1000.0 + costs["dup"]["LUT"] + costs["add"]["LUT"]
    assert set(est["sibnn_modelled"]["nodes"]) == {"dup", "add"}


def test_replicate_stream_is_priced_like_the_fork_it_replaces():
    """ReplicateStream (what the flow builds) and DuplicateStreams (finn-plus' deprecated fork) of
    the same 3-way fork: register slices of one input and three outputs, no datapath."""
    rep = helper.make_node("ReplicateStream_hls", ["x"], ["a", "b", "c"], domain=DOM,
                           backend="fpgadataflow", num=3, num_elems=8, PE=2, dtype="INT4",
                           num_inputs=[1, 4, 4], name="rep")
    dup = helper.make_node("DuplicateStreams_hls", ["x"], ["a", "b", "c"], domain=DOM,
                           backend="fpgadataflow", NumChannels=8, PE=2, NumOutputStreams=3,
                           inputDataType="INT4", numInputVectors=[1, 4, 4], name="dup")
    cost = modelled_costs(_graph([rep], ["x"], ["a", "b", "c"]))["rep"]
    # one 8-bit input and three 8-bit outputs (PE 2 x INT4)
    assert cost["LUT"] == 4 * 8 + 4 * PORT_CONTROL_LUT
    assert cost["FF"] == 2 * 4 * 8 + 4 * PORT_CONTROL_FF
    assert cost["op"] == "ReplicateStream_hls" and cost["formula"] == "regslices of 4 ports, 32 bits"
    old = modelled_costs(_graph([dup], ["x"], ["a", "b", "c"]))["dup"]
    assert (old["LUT"], old["FF"]) == (cost["LUT"], cost["FF"])


def test_layers_finn_prices_are_not_modelled_again():
    mvau = helper.make_node("MVAU_hls", ["x"], ["y"], domain=DOM, backend="fpgadataflow",
                            MW=8, MH=8, SIMD=1, PE=1, inputDataType="BINARY",
                            weightDataType="BINARY", outputDataType="UINT4",
                            numInputVectors=[1], name="mv")
    assert modelled_costs(_graph([mvau], ["x"], ["y"])) == {}
