"""The model zoo: every registered model, taps, the SI overhead, quantizer grids."""

from __future__ import annotations

import brevitas.nn as qnn
import pytest
import torch

from quant_models import TEACHER_OF, build_model, list_models, resolve_spec
from quant_models.info import summary
from sibnn_base.errors import ConfigError, UnknownModelError
from tests.conftest import assert_one_line_error, run_cli

DATASETS = {"fmnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs(name, dataset):
    model = build_model(name, dataset=dataset).eval()
    x = torch.rand(2, *DATASETS[dataset])
    with torch.no_grad():
        logits, taps = model.forward_taps(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    assert list(taps) == model.tap_names
    assert model.tap_names[0] == "stem" and model.tap_names[1] == "block_0"


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("student", sorted(TEACHER_OF))
def test_student_and_teacher_taps_match(student, dataset):
    s = build_model(student, dataset=dataset).eval()
    t = build_model(TEACHER_OF[student], dataset=dataset).eval()
    x = torch.rand(1, *DATASETS[dataset])
    with torch.no_grad():
        _, st = s.forward_taps(x)
        _, tt = t.forward_taps(x)
    assert list(st) == list(tt)
    assert {k: v.shape for k, v in st.items()} == {k: v.shape for k, v in tt.items()}


@pytest.mark.parametrize("kw", [{"dataset": "fmnist"}, {"dataset": "cifar10"},
                                {"dataset": "fmnist", "width": 16, "depth": [2, 2]},
                                {"dataset": "cifar10", "width": 32, "depth": [1, 1, 1, 1]},
                                {"dataset": "fmnist", "r": 8}])
def test_si_overhead_at_most_ten_percent(kw):
    with_si = summary(build_model("si_resnet_w1a1", **kw))["total_params"]
    without = summary(build_model("resnet_w1a1", **kw))["total_params"]
    assert with_si > without
    assert with_si <= 1.10 * without, (with_si, without)


def test_shipped_si_variant_and_its_twin_without_si_differ_by_the_si_params_only():
    s = summary(build_model("si_h_resnet_w1a1_mbh"))
    plain = summary(build_model("resnet_w1a1_mbh", stem_bits=8))
    assert s["total_params"] - s["si_params"] == plain["total_params"]
    assert s["total_params"] <= 1.10 * plain["total_params"]


def test_si_params_counted_per_block():
    s = summary(build_model("si_resnet_w1a1"))
    assert s["si_params"] > 0
    assert s["si_params"] == sum(b["si"] for b in s["blocks"])
    plain = summary(build_model("resnet_w1a1"))
    assert s["total_params"] - s["si_params"] == plain["total_params"]


def test_overrides_change_the_network():
    spec = resolve_spec("si_resnet_w1a1", dataset="cifar10", width=8, depth=[1, 2], r=2)
    assert spec.input_shape == (3, 32, 32) and spec.width == 8 and spec.depth == (1, 2)
    m = build_model("si_resnet_w1a1", width=8, depth=[1, 2], r=2)
    assert len(m.blocks) == 3
    assert m.blocks[0].si.squeeze.out_channels == 4


def _quant_layers(model):
    return [m for m in model.modules() if isinstance(m, qnn.QuantIdentity)]


def test_student_activations_lie_on_their_grids():
    model = build_model("si_resnet_w1a1", si_act_bits=2).eval()
    seen = []

    def hook(mod, args, out):
        q = mod.act_quant
        bits, scale = int(q.bit_width()), float(q.scale())
        z = out / scale
        assert torch.equal(z, torch.round(z)), "off the grid"
        if bits == 1:
            assert set(torch.unique(out).tolist()) <= {-1.0, 1.0}
        else:
            signed = bool(q.is_signed) if hasattr(q, "is_signed") else True
            lo = -(2 ** (bits - 1)) if signed else 0
            hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
            assert lo <= z.min() and z.max() <= hi
        seen.append(bits)

    hooks = [m.register_forward_hook(hook) for m in _quant_layers(model)]
    with torch.no_grad():
        _, taps = model.forward_taps(torch.rand(4, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert {1, 2, 4, 8} <= set(seen)
    for name, t in taps.items():
        z = t / 0.5  # the default residual grid: 4-bit, step 2**-1
        assert torch.equal(z, torch.round(z)) and z.min() >= -8 and z.max() <= 7, name


def test_every_weight_layer_is_binary_by_default():
    model = build_model("si_resnet_w1a1")
    layers = [m for m in model.modules() if isinstance(m, (qnn.QuantConv2d, qnn.QuantLinear))]
    assert layers
    for m in layers:
        assert int(m.quant_weight().bit_width) == 1
        assert set(torch.unique(m.quant_weight().value).tolist()) <= {-1.0, 1.0}


def test_bipolar_padding_is_minus_one():
    model = build_model("si_resnet_w1a1").eval()
    pads = []
    model.blocks[0].pad.register_forward_hook(lambda m, a, o: pads.append(o))
    with torch.no_grad():
        model(torch.rand(1, 1, 28, 28))
    border = torch.cat([pads[0][..., 0, :].flatten(), pads[0][..., -1, :].flatten()])
    assert torch.all(border == -1.0)


def test_unknown_model_lists_valid_ones():
    with pytest.raises(UnknownModelError, match="valid models: resnet_w1a1, resnet_w1a1_mbh, "
                                                "si_h_resnet_w1a1, si_h_resnet_w1a1_mbh, "
                                                "si_resnet_fp, si_resnet_w1a1"):
        build_model("resnet50")


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown override key.*widht"):
        build_model("si_resnet_w1a1", widht=8)


def test_invalid_override_value():
    with pytest.raises(ConfigError, match="r must be"):
        build_model("si_resnet_w1a1", r=0)


def test_info_cli_prints_si_share():
    proc = run_cli(["-m", "quant_models", "info", "si_resnet_w1a1", "--set", "dataset=cifar10"])
    assert proc.returncode == 0, proc.stderr
    assert "SI overhead vs the same network without SI" in proc.stdout
    assert "block_0" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["info", "nope"], "unknown model 'nope'"),
    (["info", "si_resnet_w1a1", "--set", "bogus=1"], "unknown override key(s) bogus"),
    (["info", "si_resnet_w1a1", "--set", "width"], "not KEY=VALUE"),
])
def test_info_cli_bad_input(args, needle):
    assert_one_line_error(run_cli(["-m", "quant_models", *args]), needle)


# -- the method's variants: SI on h, multi-bit head, sign bias ------------------------------------

def _params(net) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("arch", ["si_resnet_w1a1", "si_h_resnet_w1a1", "si_h_resnet_w1a1_mbh"])
def test_si_variants_stay_within_ten_percent_of_parameters(arch):
    si = build_model(arch, dataset="fmnist")
    plain = build_model("resnet_w1a1", dataset="fmnist", head_bits=si.spec.head_bits,
                        sign_bias=si.spec.sign_bias)
    assert 0 < _params(si) / _params(plain) - 1 <= 0.10


def test_si_on_h_reads_the_multibit_residual():
    torch.manual_seed(0)
    net = build_model("si_h_resnet_w1a1", width=8, depth=[1, 1], input_size=8).eval()
    seen = []
    net.blocks[0].si.squeeze.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    net(torch.rand(4, 1, 8, 8))
    vals = torch.unique(seen[0])
    assert len(vals) > 2  # h on the residual grid, not sign(h) in {-1, +1}
    a_net = build_model("si_resnet_w1a1", width=8, depth=[1, 1], input_size=8).eval()
    seen.clear()
    a_net.blocks[0].si.squeeze.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    a_net(torch.rand(4, 1, 8, 8))
    assert set(torch.unique(seen[0]).tolist()) <= {-1.0, 1.0}


def test_multibit_head_pools_h_into_an_int_fc():
    net = build_model("si_h_resnet_w1a1_mbh", width=8, depth=[1], input_size=8).eval()
    assert isinstance(net.head.act, torch.nn.Identity)
    assert int(net.head.fc.quant_weight().bit_width) == 8
    w1 = build_model("si_resnet_w1a1", width=8, depth=[1], input_size=8)
    assert int(w1.head.fc.quant_weight().bit_width) == 1


def test_sign_bias_starts_at_zero_and_changes_nothing():
    torch.manual_seed(0)
    a = build_model("si_resnet_w1a1", width=8, depth=[1, 1], input_size=8).eval()
    b = build_model("si_resnet_w1a1", width=8, depth=[1, 1], input_size=8, sign_bias=True).eval()
    missing, unexpected = b.load_state_dict(a.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(".bias") for k in missing)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(a(x), b(x))
    b.blocks[0].act.bias.data.fill_(100.0)  # every sign of block 0 becomes +1
    assert not torch.equal(a(x), b(x))


def test_registry_defaults_are_the_shipped_architecture_and_may_be_overridden():
    """``si_h_resnet_w1a1_mbh`` builds its shipped network (8-bit stem, SI in the downsample
    blocks) unless told otherwise; the keys its name stands for stay fixed."""
    shipped = resolve_spec("si_h_resnet_w1a1_mbh")
    assert (shipped.stem_bits, shipped.si_blocks) == (8, "downsample")
    other = resolve_spec("si_h_resnet_w1a1_mbh", stem_bits=1, si_blocks="all")
    assert (other.stem_bits, other.si_blocks) == (1, "all")
    assert (other.si_input, other.head_bits, other.sign_bias) == ("h", 8, True)
    assert resolve_spec("resnet_w1a1_mbh").stem_bits == 1  # nothing shipped: NetSpec's default


def test_registry_variant_refuses_a_conflicting_fixed_key():
    with pytest.raises(ConfigError, match="si_h_resnet_w1a1 fixes si_input='h'"):
        build_model("si_h_resnet_w1a1", si_input="a")
    with pytest.raises(ConfigError, match="si_input must be 'a' or 'h'"):
        build_model("si_resnet_w1a1", si_input="x")
    with pytest.raises(ConfigError, match="head_bits must be in 1..8"):
        build_model("resnet_w1a1", head_bits=9)
    with pytest.raises(ConfigError, match="stem_bits must be in 1..8"):
        build_model("resnet_w1a1", stem_bits=0)
    with pytest.raises(ConfigError, match="si_blocks must be one of all, downsample"):
        build_model("si_h_resnet_w1a1_mbh", si_blocks="first")


def test_si_blocks_downsample_puts_si_only_where_the_block_changes_shape():
    """``si_blocks: downsample``: SI in the blocks whose shortcut is a binary 1x1 conv (stride 2
    or new width), none in the identity-shortcut blocks; the teacher's SI tensors of the blocks
    that keep theirs still match by name and shape (``init_from``)."""
    from quant_models.info import summary

    kw = {"width": 8, "depth": [2, 1, 2], "input_size": 16}
    every = build_model("si_h_resnet_w1a1_mbh", si_blocks="all", **kw)
    down = build_model("si_h_resnet_w1a1_mbh", si_blocks="downsample", **kw)
    assert [b.si is not None for b in every.blocks] == [True] * 5
    assert [b.si is not None for b in down.blocks] == [False, False, True, True, False]
    assert [b.downsample for b in down.blocks] == [False, False, True, True, False]
    assert down.spec.to_dict()["si_blocks"] == "downsample"
    teacher = build_model("si_resnet_fp", **kw).state_dict()
    theirs = {k: v.shape for k, v in down.state_dict().items() if ".si." in k}
    assert theirs and all(k in teacher and teacher[k].shape == s for k, s in theirs.items())
    s_every, s_down = summary(every), summary(down)
    assert 0 < s_down["si_params"] < s_every["si_params"]
    assert s_down["overhead_vs_no_si"] <= 0.10


def test_stem_bits_gives_the_stem_multi_bit_weights_and_nothing_else():
    """``stem_bits`` changes the quantiser of the stem's conv only; the FP twin ignores it."""
    one, eight = (build_model("si_h_resnet_w1a1_mbh", stem_bits=b) for b in (1, 8))
    w1, w8 = one.stem.conv.quant_weight(), eight.stem.conv.quant_weight()
    assert int(w1.bit_width) == 1 and int(w8.bit_width) == 8
    assert len(torch.unique(w8.value)) > 2
    other = [(n, type(m.weight_quant.tensor_quant).__name__) for n, m in one.named_modules()
             if hasattr(m, "weight_quant") and not n.startswith("stem")]
    assert other == [(n, type(m.weight_quant.tensor_quant).__name__)
                     for n, m in eight.named_modules()
                     if hasattr(m, "weight_quant") and not n.startswith("stem")]
    assert build_model("si_resnet_fp", stem_bits=8).spec.stem_bits == 8
