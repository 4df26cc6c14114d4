"""The golden model is bit-exact with Brevitas and QONNX, ties included, on our family and on
Brevitas' own bnn_pynq networks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from flow.front.export import export_qonnx_model
from flow.front.golden import GoldenModel, build_golden, golden_from_qonnx
from flow.front.integerize import integerize
from flow.proof.verify import load_real_images, make_inputs, pixels_to_x, verify
from quant_models import build_model
from quant_models.stress import randomize_bn
from sibnn_base.errors import UnsupportedGraphError, VerificationError
from tests.fuzz import count_ties, random_model


def _golden_for(model, tmp_path, name="m"):
    mw = export_qonnx_model(model, tmp_path / f"{name}.onnx", with_taps=True)
    golden, ir = golden_from_qonnx(mw)
    return mw, golden, ir


@pytest.fixture(scope="module")
def default_student(tmp_path_factory):
    """The default-size student with trained-like BatchNorm statistics (seeded)."""
    torch.manual_seed(1)
    m = build_model("si_resnet_w1a1")
    randomize_bn(m, np.random.default_rng(1))
    m.eval()
    mw, golden, ir = _golden_for(m, tmp_path_factory.mktemp("default"))
    return m, mw, golden, ir


def test_default_student_exact_on_random_extreme_and_real_images(default_student):
    m, mw, golden, _ = default_student
    px = make_inputs((28, 28, 1), 48, seed=3, real=load_real_images(64))
    rep = verify(golden, px, torch_model=m)
    assert rep.exact
    tensors = {c.tensor for c in rep.comparisons}
    assert {"scores", "logits (float32 bits)", "stem", "block_0"} <= tensors
    rep = verify(golden, px[:6], qonnx_model=mw)
    assert rep.exact


def test_logits_are_scores_times_scale(default_student):
    m, _, golden, _ = default_student
    px = make_inputs((28, 28, 1), 16, seed=4)
    out = golden.run(px)
    with torch.no_grad():
        logits = m(pixels_to_x(px)).numpy()
    assert out["scores"].dtype == np.int32
    prod = out["scores"].astype(np.float32) * np.float32(golden.scale)
    assert np.array_equal(prod, logits)
    assert np.array_equal(out["top1"], logits.argmax(1))


def test_reference_uses_only_default_domain_ops(default_student):
    proto = default_student[2].proto
    assert {n.domain for n in proto.graph.node} <= {""}
    assert all(o.domain in ("", "ai.onnx") for o in proto.opset_import)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [28, 28, 1]  # NHWC pixels


def test_taps_exposed_as_integer_outputs(default_student):
    golden = default_student[2]
    assert golden.tap_names == default_student[0].tap_names
    out = golden.run(make_inputs((28, 28, 1), 2, seed=0))
    for tap in golden.tap_names:
        assert out[tap].dtype == np.int32
        assert out[tap].min() >= -8 and out[tap].max() <= 7  # 4-bit residual grid


@pytest.mark.parametrize("seed", [0, 1, 6])
@pytest.mark.parametrize("ties", [False, True])
def test_random_topologies(seed, ties, tmp_path):
    m, arch, kw = random_model(seed, ties=ties)
    mw, golden, _ = _golden_for(m, tmp_path)
    px = make_inputs((kw["input_size"], kw["input_size"], kw["in_channels"]), 60, seed)
    assert verify(golden, px, torch_model=m, qonnx_model=mw if seed == 0 else None).exact


def test_tie_models_really_hit_ties_and_half_up_rounding_would_fail():
    """The tie fixture is not vacuous: quantizer inputs land on n + 0.5, where FINN's
    ``(k - 0.5) * s`` thresholds (ties up) disagree with Brevitas (ties to even)."""
    m, _, kw = random_model(1, ties=True)
    px = make_inputs((kw["input_size"], kw["input_size"], kw["in_channels"]), 20, 1)
    counts = count_ties(m, pixels_to_x(px))
    assert counts["multi_bit"] > 100 and counts["bipolar"] > 0
    y = torch.tensor([0.5, 1.5, 2.5, -0.5])
    assert not torch.equal(torch.round(y), torch.floor(y + 0.5))


def test_mismatch_names_tensor_and_index(default_student, tmp_path):
    m, _, golden, ir = default_student
    node = next(n for n in ir.nodes if n.op == "threshold" and n.source.startswith("Quant"))
    saved = node.attrs["thresholds"].copy()
    try:
        node.attrs["thresholds"] = saved + 1000  # a broken stage: every level unreachable
        broken = GoldenModel(None, build_golden(ir))
    finally:
        node.attrs["thresholds"] = saved
    with pytest.raises(VerificationError, match=r"tensor \S+ differs at index \[.*expected .*got"):
        verify(broken, make_inputs((28, 28, 1), 4, 0), torch_model=m)


def test_unsupported_op_is_named(tmp_path):
    m = build_model("si_resnet_w1a1", width=4, depth=[1]).eval()
    mw = export_qonnx_model(m, tmp_path / "m.onnx")
    node = next(n for n in mw.graph.node if n.op_type == "ReduceSum")
    node.op_type = "ReduceMax"
    node.name = "the_pool"
    with pytest.raises(UnsupportedGraphError, match=r"ReduceMax \(the_pool\)"):
        integerize(mw)


@pytest.mark.parametrize("net,shape", [("tfc_1w1a", (1, 1, 28, 28)), ("cnv_1w1a", (1, 3, 32, 32))])
def test_brevitas_bnn_pynq_networks(net, shape, tmp_path):
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    torch.manual_seed(0)
    m, _ = model_with_cfg(net, pretrained=False)
    randomize_bn(m, np.random.default_rng(0))
    m.eval()
    mw = export_qonnx_model(m, tmp_path / f"{net}.onnx", input_shape=shape)
    golden, _ = golden_from_qonnx(mw)
    px = make_inputs((shape[2], shape[3], shape[1]), 24, 0)
    assert verify(golden, px, torch_model=m).exact
    assert verify(golden, px[:3], qonnx_model=mw).exact
    assert {n.domain for n in golden.proto.graph.node} <= {""}


@pytest.mark.slow
def test_fuzz_fifty_topologies_two_hundred_inputs(tmp_path):
    """>= 50 random topologies x 200 inputs (ties in half of them); QONNX on every 10th."""
    n_top = 0
    for seed in range(100, 150):
        ties = seed % 2 == 0
        m, _, kw = random_model(seed, ties=ties)
        mw, golden, _ = _golden_for(m, tmp_path, f"t{seed}")
        px = make_inputs((kw["input_size"], kw["input_size"], kw["in_channels"]), 200, seed)
        assert verify(golden, px, torch_model=m).exact
        if seed % 10 == 0:
            assert verify(golden, px[:20], qonnx_model=mw).exact
        n_top += 1
    assert n_top == 50


def test_golden_model_file_round_trip(default_student, tmp_path):
    golden = default_student[2]
    onnx.save(golden.proto, str(tmp_path / "reference.onnx"))
    g2 = GoldenModel.load(tmp_path / "reference.onnx")
    px = make_inputs((28, 28, 1), 4, 0)
    assert all(np.array_equal(a, b) for a, b in zip(golden.run(px).values(), g2.run(px).values(), strict=True))
    assert g2.scale == golden.scale


@pytest.mark.parametrize("seed,ties", [(1, True), (6, True), (3, False), (11, False)])
def test_threshold_forms_agree(seed, ties):
    """The literal compare-and-sum form, the table, and the default (fitted staircases, with the
    channels whose ties round to even looked up in their own table) agree exactly."""
    m, _, kw = random_model(seed, ties=ties)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        ir = integerize(export_qonnx_model(m, Path(d) / "m.onnx", with_taps=True))
    forms = {t: GoldenModel(None, build_golden(ir, thresholds=t), optimised=t != "compare")
             for t in ("auto", "table", "compare")}
    assert not any(n.op_type == "Clip" and "one_minus_2thr" in "".join(n.input)
                   for n in forms["compare"].proto.graph.node)  # the definition: no sign rewrite
    assert any(n.op_type == "Gather" for n in forms["table"].proto.graph.node)
    assert any(n.op_type == "ReduceSum" for n in forms["compare"].proto.graph.node)
    px = make_inputs((kw["input_size"], kw["input_size"], kw["in_channels"]), 50, seed)
    ref = forms["compare"].run(px)
    for t in ("auto", "table"):
        got = forms[t].run(px)
        assert all(np.array_equal(ref[k], got[k]) for k in ref), t


def _qconv_levels(proto) -> list[int]:
    """The number of levels ``K`` of every uint8 conv of a golden graph (its Clip's bound)."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    clip_of = {n.input[0]: n for n in proto.graph.node if n.op_type == "Clip"}
    return [int(init[clip_of[n.output[0]].input[2]]) for n in proto.graph.node
            if n.op_type == "QLinearConv"]


def test_the_shipped_model_thresholds_are_staircases(tmp_path):
    """On the shipped student every multi-level threshold node is a fitted staircase (no full
    table lookup), in float32 or in a uint8 conv's requantisation, checked over each input's
    whole proven range at build time, and the golden model stays bit-exact with Brevitas."""
    m = build_model("si_resnet_w1a1", pretrained=True)
    ir = integerize(export_qonnx_model(m, tmp_path / "m.onnx", with_taps=True))
    auto = GoldenModel(None, build_golden(ir))
    multi = [nd for nd in ir.nodes if nd.op == "threshold" and nd.attrs["thresholds"].shape[1] > 1]
    floors = sum(n.op_type == "Floor" for n in auto.proto.graph.node)
    assert floors + sum(k > 1 for k in _qconv_levels(auto.proto)) == len(multi)
    px = make_inputs((28, 28, 1), 64, 0)
    assert verify(auto, px, torch_model=m).exact
    with pytest.raises(ValueError, match="not a staircase"):
        build_golden(ir, thresholds="staircase")  # a few channels round ties to even


def test_the_default_model_runs_its_block_convs_in_uint8(tmp_path):
    """Every block conv of the shipped default model, with the threshold after it, is one uint8
    ``QLinearConv`` (ONNX Runtime's integer kernels; the staircase in its requantisation, fitted
    per channel and checked over the accumulator's whole proven range at build time); the stem
    (8-bit weights) stays a float conv. The result is bit-exact with Brevitas on every output,
    the block taps (held as offset counts inside the graph) included, and with the definition."""
    from flow.config import DEFAULT_MODEL

    m = build_model(DEFAULT_MODEL, pretrained=True)
    ir = integerize(export_qonnx_model(m, tmp_path / "m.onnx", with_taps=True))
    golden = GoldenModel(None, build_golden(ir))
    producer = {nd.output: nd for nd in ir.nodes}
    pairs = [nd for nd in ir.nodes if nd.op == "threshold" and
             getattr(producer.get(nd.inputs[0]), "op", None) == "conv" and
             producer[nd.inputs[0]].inputs[0] != "pixels"]
    levels = _qconv_levels(golden.proto)
    assert len(levels) == len(pairs) and set(levels) == {1, 15}
    assert sum(n.op_type == "Conv" for n in golden.proto.graph.node) == 1  # the stem
    assert golden.session_note == "ONNX Runtime graph optimisation, audited exact"
    px = make_inputs((28, 28, 1), 64, 3)
    assert verify(golden, px, torch_model=m).exact
    ref = GoldenModel(None, build_golden(ir, thresholds="compare"), optimised=False).run(px)
    got = golden.run(px)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_the_requantisation_model_is_onnx_runtimes():
    """The fits of the uint8 convs are checked against a model of ONNX Runtime's requantisation,
    ``clamp(rint(f32(f32(acc + B) * S)) + zp, 0, 255)``, half to even: the real kernel meets it
    on a 1x1 ``QLinearConv`` over random accumulators, scales and offsets, exact ties included
    (scales 1/2 and 1/4)."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    ci, co, zp, x_zp = 64, 16, 100, 3
    w = rng.choice([-2, -1, 1, 2], (co, ci, 1, 1)).astype(np.int8)
    scale = rng.uniform(0.01, 0.3, co).astype(np.float32)
    scale[:2] = [0.5, 0.25]
    bias = rng.integers(-3000, 3000, co).astype(np.int32)
    consts = [nh.from_array(np.float32(1), "xs"), nh.from_array(np.uint8(x_zp), "xz"),
              nh.from_array(w, "w"), nh.from_array(scale, "ws"),
              nh.from_array(np.zeros(co, np.int8), "wz"), nh.from_array(np.float32(1), "ys"),
              nh.from_array(np.uint8(zp), "yz"), nh.from_array(bias, "b")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                            ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [8, ci, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.integers(0, 16, (8, ci, 16, 16)).astype(np.uint8)
    got = sess.run(None, {"x": x})[0].astype(np.int64)
    acc = np.einsum("nchw,oc->nohw", x.astype(np.int64) - x_zp, w[:, :, 0, 0].astype(np.int64))
    v = (acc + bias[None, :, None, None]).astype(np.float32) * scale[None, :, None, None]
    ties = np.abs(v - np.floor(v) - 0.5) == 0
    assert ties[:, :2].sum() > 100  # the model's half-to-even is exercised
    want = np.rint(np.clip(v, np.float32(-zp), np.float32(255 - zp))).astype(np.int64) + zp
    assert np.array_equal(got, want)


def test_signs_are_computed_by_their_convs(default_student):
    """No ONNX Sign (several times slower than Clip in ONNX Runtime): a sign whose input is a conv
    read by nothing else is computed by that conv, in float32 (doubled weights and a bias, then a
    Clip) or as the bits of a uint8 conv's requantisation; the other signs are bits,
    ``clip(x + 1 - t, 0, 1)``, which the convs reading them absorb (doubled weights, bias)."""
    _, _, golden, ir = default_student
    nodes = golden.proto.graph.node
    assert not any(n.op_type == "Sign" for n in nodes)
    by_conv = [n for n in nodes if n.op_type == "Conv" and len(n.input) == 3 and
               "one_minus_2thr" in n.input[2]]
    by_conv += [k for k in _qconv_levels(golden.proto) if k == 1]
    n_signs = sum(1 for nd in ir.nodes if nd.op == "threshold" and
                  nd.attrs["thresholds"].shape[1] == 1)
    assert 1 <= len(by_conv) < n_signs  # the SI squeezes; the others read a clip or a staircase
    bit_convs = [n for n in nodes if n.op_type == "Conv" and len(n.input) == 3 and
                 "minus_sum_w" in n.input[2]]
    assert bit_convs and not any(n.op_type == "Pad" for n in nodes)


def test_optimised_session_is_audited_and_equal(default_student):
    """The golden session runs ONNX Runtime's graph optimisation only where the audit proves the
    rewritten graph exact, and then equals the unoptimised session bit for bit."""
    m, _, golden, _ = default_student
    assert golden.session_note == "ONNX Runtime graph optimisation, audited exact"
    plain = GoldenModel(None, golden.proto, optimised=False)
    assert plain.session_note.startswith("no graph optimisation")
    px = make_inputs((28, 28, 1), 48, 5)
    a, b = golden.run(px), plain.run(px)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    prof = golden.kernel_profile(px[:4], runs=1)  # where the time goes (bench/golden_speed)
    assert prof["Conv"] > 0 and "Sign" not in prof


def test_asking_for_no_tap_runs_the_tap_free_session(default_student):
    """``run(px, ["scores", ...])`` uses :meth:`GoldenModel.primary`: the graph pruned to the
    primary outputs (fewer nodes), audited like the full one, with the same outputs."""
    from flow.front.golden import PRIMARY, prune_to

    _, _, golden, _ = default_student
    prim = golden.primary()
    assert prim is golden.primary() and prim is not golden
    assert [o.name for o in prim.proto.graph.output] == list(PRIMARY)
    assert len(prim.proto.graph.node) < len(golden.proto.graph.node)
    assert prim.session_note == golden.session_note
    px = make_inputs((28, 28, 1), 32, 7)
    full = dict(zip(PRIMARY, golden.session.run(list(PRIMARY), {"pixels_nhwc": px}), strict=True))
    part = golden.run(px, ["scores", "top1"])
    assert all(np.array_equal(full[k], part[k]) for k in part)
    assert set(golden.run(px)) == set(golden.output_names)  # all, taps included: the full graph
    one = prune_to(golden.proto, ["scores"])
    assert [o.name for o in one.graph.output] == ["scores"]
    names = {i for n in one.graph.node for i in n.input} | {o for n in one.graph.node
                                                           for o in n.output}
    assert {t.name for t in one.graph.initializer} <= names


def test_audit_rejects_a_float_folded_into_a_conv(default_student, tmp_path):
    """ONNX Runtime's ConvMulFusion (on by default) multiplies a staircase's float factor into
    the conv weights before it, which changes float32 rounding: the audit names it."""
    from flow.front.golden import OPTIMIZERS_OFF, audit_optimised

    _, _, golden, _ = default_student

    def dump(disabled):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / "o.onnx")
        ort.InferenceSession(golden.proto.SerializeToString(), so,
                             providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return onnx.load(str(tmp_path / "o.onnx"))

    why = audit_optimised(golden.proto, dump([]))
    assert any("float folded in" in w for w in why), why
    assert any("multipliers/offsets differ" in w for w in why)
    assert audit_optimised(golden.proto, dump(list(OPTIMIZERS_OFF))) == []


def test_audit_rejects_a_changed_int8_conv(tmp_path):
    """A uint8 conv whose staircase scale changed between the graph and its optimised form (a
    rewrite that altered the requantisation) is named by the audit."""
    from onnx import numpy_helper as nh

    from flow.config import DEFAULT_MODEL
    from flow.front.golden import audit_optimised

    m = build_model(DEFAULT_MODEL, pretrained=True)
    proto = build_golden(integerize(export_qonnx_model(m, tmp_path / "m.onnx")))
    assert audit_optimised(proto, proto) == []
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    t = next(t for t in bad.graph.initializer if t.name.startswith("staircase_scale"))
    arr = nh.to_array(t).copy()
    arr[0] = np.nextafter(arr[0], np.float32(1))
    t.CopyFrom(nh.from_array(arr, t.name))
    assert any("int8 convs" in w for w in audit_optimised(proto, bad))
