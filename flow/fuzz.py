"""Random small topologies from the registry, with trained-like or tie-producing BatchNorms.

Used by the exactness tests (a few topologies by default, >= 50 x 200 inputs under ``slow``).
"""

from __future__ import annotations

import numpy as np
import torch

from quant_models import build_model


def random_overrides(rng: np.random.Generator) -> tuple[str, dict]:
    """A random (arch, overrides) pair covering depth, width, r, SI bit widths and sizes."""
    arch = str(rng.choice(["si_resnet_w1a1", "si_resnet_w1a1", "resnet_w1a1"]))
    n_stages = int(rng.integers(1, 4))
    kw = {
        "in_channels": int(rng.choice([1, 3])),
        "input_size": int(rng.choice([8, 10, 12, 16])),
        "width": int(rng.choice([4, 8, 12])),
        "depth": [int(rng.integers(1, 3)) for _ in range(n_stages)],
        "res_bits": int(rng.choice([2, 3, 4])),
        "res_scale_log2": int(rng.integers(-2, 1)),
        "num_classes": int(rng.choice([3, 10])),
    }
    if arch == "si_resnet_w1a1":
        kw.update(r=int(rng.choice([1, 2, 4])), si_act_bits=int(rng.choice([1, 1, 2])),
                  si_weight_bits=int(rng.choice([1, 1, 2])))
    return arch, kw


def randomize_bn(model: torch.nn.Module, rng: np.random.Generator, ties: bool = False) -> None:
    """Give every BatchNorm random statistics and affine parameters, negative scales included.

    With ``ties=True`` the BatchNorms become dyadic (``eps = 0``, ``var = 1``, power-of-two
    gammas, quarter-step betas), so quantizer inputs land *exactly* on rounding ties
    (``y / s = n + 0.5``) and on zero for the sign: the rounding semantics are exercised.
    """
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            sign = torch.where(torch.rand(c, generator=gen) < 0.2, -1.0, 1.0)
            if ties:
                m.eps = 0.0
                m.running_var.fill_(1.0)
                m.running_mean.zero_()
                m.weight.data = sign * 2.0 ** torch.randint(-3, 2, (c,), generator=gen).float()
                m.bias.data = torch.randint(-12, 13, (c,), generator=gen).float() * 0.125
            else:
                m.running_mean.uniform_(-3, 3, generator=gen)
                m.running_var.uniform_(0.3, 10.0, generator=gen)
                m.weight.data = sign * torch.empty(c).uniform_(0.2, 2.0, generator=gen)
                m.bias.data = torch.empty(c).uniform_(-1.0, 1.0, generator=gen)
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "logit_scale"):
        head.logit_scale.data = torch.tensor(float(rng.uniform(0.001, 0.1)))


def random_model(seed: int, ties: bool = False):
    """A seeded random topology with seeded weights and BatchNorms, in eval mode."""
    rng = np.random.default_rng(seed)
    arch, kw = random_overrides(rng)
    torch.manual_seed(seed)
    model = build_model(arch, **kw)
    randomize_bn(model, rng, ties=ties)
    return model.eval(), arch, kw


def count_ties(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """How many quantizer inputs of ``model(x)`` sit exactly on a rounding tie.

    Multi-bit quantizers: ``y / scale == n + 0.5``; bipolar ones: ``y == 0``. Proves that a tie
    test really exercises ties.
    """
    import brevitas.nn as qnn

    counts = {"multi_bit": 0, "bipolar": 0}
    hooks = []

    def hook(mod, args, out):
        y = args[0].detach()
        q = mod.act_quant
        bw = float(q.bit_width())
        if bw == 1:
            counts["bipolar"] += int((y == 0).sum())
        else:
            s = float(q.scale())
            z = y / s
            counts["multi_bit"] += int(((z - 0.5) == torch.floor(z)).sum())

    for m in model.modules():
        if isinstance(m, qnn.QuantIdentity):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return counts
