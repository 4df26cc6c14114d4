"""Stress weights for untrained networks: BatchNorm statistics that make every threshold and
rounding tie matter. Exactness tests, the fuzz and the golden-speed benchmark build their
networks with it; a trained checkpoint never goes through it."""

from __future__ import annotations

import numpy as np
import torch


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
