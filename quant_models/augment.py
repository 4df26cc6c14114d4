"""Training-time augmentation of in-memory image batches: horizontal flips, random crops and cutout.

Every random draw of an epoch is made up front, per training sample, from one seeded generator
(:meth:`EpochAugmentation.draw`), and a batch picks its samples' draws by index
(:meth:`EpochAugmentation.apply`): an epoch's augmentation depends on its seed alone, not on the
batch size, the process count or where a resumed run started.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample crops: ``x`` (N, C, H, W) zero-padded by ``pad``, then the H x W window at
    ``offsets[i] = (dy, dx)`` in ``0..2*pad`` (``(pad, pad)`` gives ``x`` back unchanged)."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = (offsets[:, 0, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w, device=dev))[:, None, None, :]
    return padded[torch.arange(n, device=dev)[:, None, None, None],
                  torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def cutout(x: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square of each image of ``x`` (N, C, H, W), clipped at the
    border, whose centre pixel is ``centres[i] = (row, col)`` (for an even ``size``, the centre
    is the lower right of the middle four)."""
    h, w = x.shape[-2:]
    lo = size // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = centres[:, 0, None, None] - lo, centres[:, 1, None, None] - lo
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(inside[:, None], 0.0)


@dataclass(frozen=True)
class EpochAugmentation:
    """One epoch's augmentation of a training split: per sample, whether it is flipped, its crop
    offset and its cutout centre (``None`` where that augmentation is off)."""

    flips: torch.Tensor | None
    """(N,) bool: mirror sample i left to right."""
    shifts: torch.Tensor | None
    """(N, 2) crop offsets in ``0..2*pad`` (:func:`random_crop`)."""
    pad: int
    """Zero padding of the random crop, in pixels."""
    centres: torch.Tensor | None
    """(N, 2) cutout centres (:func:`cutout`)."""
    cut: int
    """Side of the cutout square, in pixels."""

    @classmethod
    def draw(cls, n: int, image_size: int, generator: torch.Generator, device: torch.device, *,
             hflip: bool, crop_pad: int, cutout_size: int) -> EpochAugmentation:
        """Draw the augmentation of ``n`` samples of ``image_size`` (the smaller side) from
        ``generator``, flips, then crops, then cutout (a run without cutout draws what it always
        drew), and put the draws on ``device``."""
        g = generator
        flips = (torch.rand(n, generator=g) < 0.5).to(device) if hflip else None
        shifts = (torch.randint(0, 2 * crop_pad + 1, (n, 2), generator=g).to(device)
                  if crop_pad else None)
        centres = (torch.randint(0, image_size, (n, 2), generator=g).to(device)
                   if cutout_size else None)
        return cls(flips, shifts, crop_pad, centres, cutout_size)

    def apply(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Augment the batch ``x`` of the samples ``idx``."""
        if self.flips is not None:
            f = self.flips[idx]
            x = torch.where(f[:, None, None, None], x.flip(3), x)
        if self.shifts is not None:
            x = random_crop(x, self.shifts[idx], self.pad)
        if self.centres is not None:
            x = cutout(x, self.centres[idx], self.cut)
        return x
