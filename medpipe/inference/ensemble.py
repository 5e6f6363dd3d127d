"""Several trained networks (nnU-Net folds) as one network whose logits are their mean.

nnU-Net predicts each fold over the whole volume and averages the logits, holding a
``classes x voxels`` buffer per fold. Stitching is linear, so averaging per tile first is
the same; and when every member ends in a linear 1x1 head, the mean of the heads applied
to their own features is *one* linear head on the concatenated features:
``mean_f(W_f x_f + b_f) = [W_1 .. W_F] / F @ [x_1; ..; x_F] + mean_f(b_f)``. So an ensemble
is a single module the sliding-window engine (and OpenVINO) runs and stitches like any
other, with ``forward_features`` = the members' features side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MeanEnsemble", "ensemble_of"]


class MeanEnsemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.in_channels = getattr(first, "in_channels", None)
        self.num_classes = getattr(first, "num_classes", None)
        self.spatial_dims = getattr(first, "spatial_dims", 3)
        if hasattr(first, "input_shape_must_be_divisible_by"):
            self.input_shape_must_be_divisible_by = first.input_shape_must_be_divisible_by
        heads = [getattr(m, "head", None) for m in members]
        self._has_head = all(isinstance(h, (nn.Conv2d, nn.Conv3d)) and hasattr(m, "forward_features")
                             for h, m in zip(heads, members, strict=True))
        if self._has_head:
            conv = type(heads[0])
            k = heads[0].out_channels
            head = conv(sum(h.in_channels for h in heads), k, 1, bias=all(h.bias is not None for h in heads))
            with torch.no_grad():
                head.weight.copy_(torch.cat([h.weight for h in heads], dim=1) / len(heads))
                if head.bias is not None:
                    head.bias.copy_(torch.stack([h.bias for h in heads]).mean(0))
            self._head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for m in self.members:
            y = m(x)
            y = y[0] if isinstance(y, (list, tuple)) else y
            out = y if out is None else out + y
        return out / len(self.members)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not self._has_head:
            raise AttributeError("the ensemble's members have no linear head to stitch features for")
        return torch.cat([m.forward_features(x) for m in self.members], dim=1)

    @property
    def head(self) -> nn.Module | None:
        return self._head if self._has_head else None


def ensemble_of(models: Sequence[nn.Module]) -> nn.Module:
    """The single model for ``models`` (itself when there is one)."""
    return models[0] if len(models) == 1 else MeanEnsemble(models).eval()
