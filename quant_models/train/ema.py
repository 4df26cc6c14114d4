"""An exponential moving average of a student's weights, the network a stage ships when its
``ema_decay`` is set.

Why a binary network wants it: a 1-bit weight is the sign of a latent float weight, and many
latent weights sit near 0, so every optimizer step flips some of them even late in a cosine
decay. The shipped Fashion-MNIST student's validation accuracy moved by up to a point from one
epoch to the next in its last four epochs (87.52, 86.54, 86.98, 87.86 %), so the epoch a run
happens to end on decides its accuracy as much as the recipe does. The average of the latent
weights over the last few hundred steps flips only where the trajectory has settled on the other
side of 0, and its sign is the weight the network is evaluated and exported with.

Measured (Fashion-MNIST, the shipped student recipe, 18 epochs, seed 0, decay 0.998): the average
was smoother from epoch to epoch but *below* the last step's weights at the end, on both students:
``si_h_resnet_w1a1_mbh`` 86.72 vs 87.26 % val, ``resnet_w1a1_mbh`` 86.08 vs 86.56 % val
(``bench/results/accuracy.json``, ``full_runs``). So no shipped recipe uses it; other decays are
untested.

The average covers every parameter (latent weights, BatchNorm affines, biases, learned scales).
BatchNorm statistics are not averaged: they are re-estimated for the averaged weights before every
evaluation (:func:`~.engine.recalibrate_bn`), because statistics of other weights are wrong for
binary activations. The averaged network is an ordinary copy of the student, so it exports and
builds like one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; starts at the
    student's initial weights (no bias correction: a stage is thousands of steps long and is
    judged at its end)."""

    def __init__(self, student: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src = list(student.parameters())
        self._dst = list(self.model.parameters())

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the student's current weights (one optimizer step)."""
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged network's weights (what ``last.pt`` stores to resume the average)."""
        return {k: v.contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
