"""Stitch a network's features, not its logits, when its head is a linear 1x1 convolution.

Why: the Gaussian-weighted mean over overlapping tiles is linear, and so is a 1x1(x1)
convolution head, so ``mean_t(head(f_t)) == head(mean_t(f_t))`` exactly (up to rounding).
Stitching the ``C`` features in front of the head instead of the ``K`` class logits shrinks
the stitching buffer by ``K / C`` (105-class STU-Net: 8 to 96 features for sizes XS to H)
and computes the head once per voxel instead of once per tile covering it. MONAI and
nnU-Net stitch logits, so a 105-class model needs ``105 x voxels`` floats there. Mirroring
TTA is linear too (the head is pointwise), so TTA passes average features as well.

A network opts in with the timm-style pair ``forward_features(x)`` and ``head`` (a
pointwise ``ConvNd`` with ``head(forward_features(x)) == model(x)`` in eval mode), as
``STUNet`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LinearHead", "FeatureExtractor", "linear_head_of"]

_TEMPORARY_BYTES = 32 * 2**20


@dataclass(frozen=True)
class LinearHead:
    """A pointwise head ``logits = W @ features + b`` applied to stitched features."""

    weight: torch.Tensor  # (K, C) fp32
    bias: torch.Tensor | None  # (K,) fp32
    forward_features: Callable[[torch.Tensor], torch.Tensor]

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(C, *S)`` mean features → ``(K, *S)`` fp32 logits."""
        flat = features.reshape(features.shape[0], -1).float()
        out = torch.addmm(self.bias[:, None], self.weight, flat) if self.bias is not None else self.weight @ flat
        return out.view(-1, *features.shape[1:])

    def argmax(self, features: torch.Tensor) -> torch.Tensor:
        """``(C, *S)`` mean features → ``(*S)`` class indices (first maximum on ties).

        The product is formed as ``(S, K)`` — classes innermost — because torch's argmax over
        a strided leading axis is ~3x slower than over the contiguous last one."""
        flat = features.reshape(features.shape[0], -1).float().t()
        w = self.weight.t()
        top = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
        step = max(1, _TEMPORARY_BYTES // (4 * self.num_classes))  # bounds the (S, K) product
        for s0 in range(0, flat.shape[0], step):
            rows = flat[s0:s0 + step]
            out = torch.addmm(self.bias[None, :], rows, w) if self.bias is not None else rows @ w
            top[s0:s0 + step] = out.argmax(-1)
        return top.view(features.shape[1:])


class FeatureExtractor(nn.Module):
    """``model.forward_features`` as a module's ``forward`` (what OpenVINO converts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _is_pointwise_conv(m: object) -> bool:
    return (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in m.kernel_size)
            and all(s == 1 for s in m.stride) and all(d == 1 for d in m.dilation) and m.groups == 1
            and isinstance(m.padding, tuple) and all(p == 0 for p in m.padding))


def linear_head_of(model: nn.Module, features_from: nn.Module | None = None) -> LinearHead | None:
    """The linear head of ``model`` if it exposes ``forward_features`` + a pointwise ``head``.

    ``features_from`` is the module whose ``forward_features`` runs the trunk (e.g. the
    ``optimize_for_inference`` copy of ``model``); the head's weights come from ``model``."""
    head = getattr(model, "head", None)
    runner = features_from if features_from is not None else model
    forward_features = getattr(runner, "forward_features", None)
    if not callable(forward_features) or not _is_pointwise_conv(head):
        return None
    weight = head.weight.detach().float().reshape(head.out_channels, head.in_channels)
    bias = head.bias.detach().float() if head.bias is not None else None
    return LinearHead(weight, bias, forward_features)
