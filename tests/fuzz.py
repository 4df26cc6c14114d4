"""Random small topologies from the registry, with trained-like or tie-producing BatchNorms.

Test support for the exactness tests (a few topologies by default, >= 50 x 200 inputs under
``slow``); the BatchNorm randomisation itself is :func:`quant_models.stress.randomize_bn`.
"""

from __future__ import annotations

import numpy as np
import torch

from quant_models import build_model
from quant_models.stress import randomize_bn


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
