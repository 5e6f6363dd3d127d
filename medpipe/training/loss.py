"""nnU-Net's training loss: soft Dice + cross-entropy, summed over deep-supervision outputs.

Soft Dice as nnU-Net's ``MemoryEfficientSoftDiceLoss`` (foreground classes only,
smooth 1e-5, per sample), reported as ``1 - Dice`` so the loss is >= 0. ``batch_dice``
sums over the batch first (nnU-Net's 2D configuration, and TransUNet's Dice): a 2D slice
holds few of the organs, and per-slice Dice of an absent organ only rewards predicting
nothing. Deep supervision:
output ``i`` (full resolution first) is weighted ``1 / 2**i``, the lowest resolution gets
0, weights normalised to sum to 1; targets are downsampled by nearest interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SoftDiceLoss", "DiceCELoss", "DeepSupervisionLoss", "deep_supervision_weights"]


class SoftDiceLoss(nn.Module):
    """``1 - mean soft Dice`` over foreground classes (per sample, nnU-Net style)."""

    def __init__(self, smooth: float = 1e-5, include_background: bool = False, batch_dice: bool = False):
        super().__init__()
        self.smooth = smooth
        self.include_background = include_background
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = (0, *range(2, probs.ndim)) if self.batch_dice else tuple(range(2, probs.ndim))
        inter = (probs * onehot).sum(axes)
        denom = probs.sum(axes) + onehot.sum(axes)
        dc = (2 * inter + self.smooth) / torch.clamp(denom + self.smooth, min=1e-8)
        return 1.0 - dc.mean()


class DiceCELoss(nn.Module):
    """``weight_ce * CE + weight_dice * (1 - soft Dice)``; target is ``(B, 1, ...)`` int."""

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = False):
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice=batch_dice)
        self.weight_ce, self.weight_dice = weight_ce, weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target[:, 0].long())
        return self.weight_ce * ce + self.weight_dice * self.dice(logits, target)


def deep_supervision_weights(n: int) -> list[float]:
    """``[1, 1/2, 1/4, ..., 0]`` normalised (the lowest resolution is ignored)."""
    w = [1 / (2**i) for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over outputs at decreasing resolution (full first)."""

    def __init__(self, base: nn.Module | None = None, weights: Sequence[float] | None = None):
        super().__init__()
        self.base = base or DiceCELoss()
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        weights = self.weights or deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for out, w in zip(outputs, weights, strict=True):
            if w == 0:
                continue
            t = target
            if tuple(out.shape[2:]) != tuple(target.shape[2:]):
                t = F.interpolate(target.float(), size=out.shape[2:], mode="nearest").long()
            total = total + w * self.base(out, t)
        return total
