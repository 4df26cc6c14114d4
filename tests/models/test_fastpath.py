"""The fused training forward (quant_models/fastpath.py) computes Brevitas' values *and* gradients,
bit for bit (torch.equal), and never leaks into a model it was not asked to patch."""

from __future__ import annotations

import copy

import brevitas.nn as qnn
import pytest
import torch

from quant_models import build_model, list_models
from quant_models.fastpath import fast_forward, plain_forward
from quant_models.quantizers import (
    BinaryWeightQuant,
    BipolarActQuant,
    PixelQuant,
    SignedIntActQuant,
    residual_quant_kwargs,
)

BINARY_MODELS = [n for n in list_models() if build_model(n).spec.binary]
SMALL = {"width": 8, "depth": [1, 2]}


def _grid_probe() -> torch.Tensor:
    """Every boundary the quantizers have: ties (x / s = n + 1/2), the clamp limits and just
    beyond, +-1 (the bipolar gradient window, inclusive), signed zeros, large values."""
    base = torch.arange(-40, 41, dtype=torch.float32) / 8  # steps of 1/8: every tie of s = 1/2, 1/4
    extra = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0000001, -1.0000001, 3.75, -4.25, -4.5, 3.5,
                          254.5, 255.5, 256.0, 0.5, -0.5, 1e6, -1e6])
    return torch.cat([base, extra, base * 64])


def _run(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> tuple:
    xx = x.clone().requires_grad_()
    y = module(xx)
    y.backward(weight[: y.numel()].reshape(y.shape))
    grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return y.detach(), xx.grad, grads


QUANTIZERS = {
    "bipolar": lambda: qnn.QuantIdentity(act_quant=BipolarActQuant, return_quant_tensor=False),
    "residual4": lambda: qnn.QuantIdentity(act_quant=SignedIntActQuant, return_quant_tensor=False,
                                           **residual_quant_kwargs(4, -1)),
    "si2": lambda: qnn.QuantIdentity(act_quant=SignedIntActQuant, return_quant_tensor=False,
                                     **residual_quant_kwargs(2, 0)),
    "residual8_quarter": lambda: qnn.QuantIdentity(act_quant=SignedIntActQuant,
                                                   return_quant_tensor=False,
                                                   **residual_quant_kwargs(8, -2)),
    "pixel": lambda: qnn.QuantIdentity(act_quant=PixelQuant, return_quant_tensor=False),
}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_each_quantizer_matches_brevitas_at_every_boundary(name):
    ref = QUANTIZERS[name]()
    x = _grid_probe()
    w = torch.arange(1, x.numel() + 1, dtype=torch.float32)  # distinct upstream gradients
    want = _run(ref, x, w)
    counts = fast_forward(ref)
    assert sum(counts.values()) == 1, counts
    got = _run(ref, x, w)
    assert torch.equal(got[0], want[0]), "values differ"
    assert torch.equal(got[1], want[1]), "input gradients differ"
    # the probe does exercise both sides of every gradient window
    assert (want[1] == 0).any() and (want[1] != 0).any()


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_binary_weight_layers_match_brevitas(kind):
    torch.manual_seed(0)
    if kind == "conv":
        layer = qnn.QuantConv2d(3, 5, 3, stride=2, padding=1, bias=False,
                                weight_quant=BinaryWeightQuant)
        x = torch.randn(4, 3, 9, 9)
    else:
        layer = qnn.QuantLinear(6, 4, bias=False, weight_quant=BinaryWeightQuant)
        x = torch.randn(4, 6)
    with torch.no_grad():
        layer.weight.view(-1)[:3] = torch.tensor([0.0, -0.0, 1e-12])  # sign of the zeros
    w = torch.randn(10_000)
    want = _run(layer, x, w)
    assert sum(fast_forward(layer).values()) == 1
    got = _run(layer, x, w)
    for a, b in zip(got[:2], want[:2], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(got[2]["weight"], want[2]["weight"])


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    xx = x.clone().requires_grad_()
    logits, taps = model.forward_taps(xx)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss = loss + sum((t * (i + 1)).square().mean() for i, t in enumerate(taps.values()))
    loss.backward()
    out = {"logits": logits.detach(), "x.grad": xx.grad}
    out.update({f"tap.{k}": v.detach() for k, v in taps.items()})
    out.update({f"grad.{k}": p.grad.clone() for k, p in model.named_parameters()
                if p.grad is not None})
    out.update({f"state.{k}": v.clone() for k, v in model.state_dict().items()})
    model.zero_grad(set_to_none=True)
    return out


def _perturbed(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(name, **{**SMALL, **overrides})
    with torch.no_grad():  # BN affine and sign biases away from their trivial init
        for p in model.parameters():
            if p.ndim <= 1 or p.shape[-1] == 1 and p.ndim == 4 and p.shape[0] == 1:
                p.normal_(0.0, 0.7)
    return model


CASES = [(n, {}) for n in BINARY_MODELS] + [
    ("si_resnet_w1a1", {"si_act_bits": 2}),
    ("si_resnet_w1a1", {"si_weight_bits": 2}),  # IntWeightQuant: left to Brevitas
    ("si_resnet_w1a1", {"float_weights": True}),
]


@pytest.mark.parametrize(("name", "overrides"), CASES,
                         ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'default'}"
                              for n, o in CASES])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_every_binary_model_is_bit_identical_with_the_fused_forward(name, overrides, train):
    torch.manual_seed(2)
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    ref = _perturbed(name, **overrides).train(train)
    fused = copy.deepcopy(ref)
    counts = fast_forward(fused)
    assert counts.get("bipolar", 0) >= 3 and counts.get("int4", 0) >= 3, counts
    assert ("binary_conv" in counts) == (not overrides.get("float_weights", False)), counts
    want = _forward_backward(ref, x, y)
    got = _forward_backward(fused, x, y)
    assert want.keys() == got.keys()
    bad = [k for k in want if not torch.equal(want[k], got[k])]
    assert not bad, f"differ: {bad[:6]}"


def test_multi_bit_weights_keep_the_brevitas_forward():
    model = build_model("si_resnet_w1a1", si_weight_bits=2, **SMALL)
    fast_forward(model)
    si_convs = [m for n, m in model.named_modules() if ".si." in n and isinstance(m, qnn.QuantConv2d)]
    assert si_convs and all("forward" not in vars(m) for m in si_convs)


def test_plain_forward_restores_brevitas_and_deepcopy_uses_its_own_weights():
    model = build_model("si_resnet_w1a1", **SMALL).eval()
    x = torch.rand(4, 1, 28, 28)
    fast_forward(model)
    assert any("forward" in vars(m) for m in model.modules())
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.blocks[0].conv.weight.neg_()
        assert not torch.equal(twin(x), model(x))  # the copy computes with its own weights
    plain_forward(model)
    assert not any("forward" in vars(m) for m in model.modules())
    plain_forward(twin)
    assert not any("forward" in vars(m) for m in twin.modules())


def test_a_learned_scale_keeps_the_brevitas_forward():
    from brevitas.core.scaling import ScalingImplType

    class LearnedScale(SignedIntActQuant):
        scaling_impl_type = ScalingImplType.PARAMETER

    q = qnn.QuantIdentity(act_quant=LearnedScale, return_quant_tensor=False,
                          **residual_quant_kwargs(4, -1))
    assert fast_forward(q) == {} and "forward" not in vars(q)
