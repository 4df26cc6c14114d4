"""Distillation losses: logit KD with a temperature, and block-wise MSE on normalised taps."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .config import LossWeights, TapNorm


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch (Hinton)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                    reduction="batchmean") * (t * t)


def normalise_tap(x: torch.Tensor, how: TapNorm) -> torch.Tensor:
    """One tap (N, C, H, W) -> (N, D) with unit L2 norm per sample."""
    if how is TapNorm.ATTENTION:
        x = x.pow(2).mean(dim=1)
    flat = x.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


def block_mse(student_taps: Mapping[str, torch.Tensor], teacher_taps: Mapping[str, torch.Tensor],
              tap_weights: Mapping[str, float], how: TapNorm) -> torch.Tensor:
    """Weighted mean over taps of ``||n(s) - n(t)||**2`` (mean over the batch); each term is in
    ``[0, 4]`` whatever the tap's scale, so FP teacher and quantised student compare directly."""
    total = 0.0
    wsum = 0.0
    for name, w in tap_weights.items():
        if w == 0:
            continue
        s = normalise_tap(student_taps[name], how)
        t = normalise_tap(teacher_taps[name], how)
        total = total + w * (s - t).pow(2).sum(dim=1).mean()
        wsum += w
    return total / wsum if wsum else torch.zeros(())


def resolve_tap_weights(lw: LossWeights, tap_names: list[str]) -> dict[str, float]:
    """The per-tap weights of ``lw`` over the network's taps (all 1 when ``lw.taps`` is None)."""
    if lw.taps is None:
        return {n: 1.0 for n in tap_names}
    unknown = sorted(set(lw.taps) - set(tap_names))
    if unknown:
        from sibnn_base.errors import ConfigError

        raise ConfigError(f"loss_weights.taps names unknown tap(s) {', '.join(unknown)}; "
                          f"the network's taps: {', '.join(tap_names)}")
    return {n: float(lw.taps.get(n, 0.0)) for n in tap_names}


def distillation_loss(logits: torch.Tensor, taps: Mapping[str, torch.Tensor], y: torch.Tensor,
                      lw: LossWeights, tap_weights: Mapping[str, float],
                      t_logits: torch.Tensor | None = None,
                      t_taps: Mapping[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``ce * CE + kd * KD + block * MSE``; returns the total and its (detached) parts."""
    parts: dict[str, torch.Tensor] = {}
    total = torch.zeros((), dtype=logits.dtype, device=logits.device)
    if lw.ce > 0:
        parts["ce"] = F.cross_entropy(logits, y, label_smoothing=lw.label_smoothing)
        total = total + lw.ce * parts["ce"]
    if lw.kd > 0:
        parts["kd"] = logit_kd(logits, t_logits, lw.temperature)
        total = total + lw.kd * parts["kd"]
    if lw.block > 0:
        parts["block"] = block_mse(taps, t_taps, tap_weights, lw.tap_norm)
        total = total + lw.block * parts["block"]
    return total, {k: v.detach() for k, v in parts.items()}
