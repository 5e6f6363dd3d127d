"""The output convention the segmentation networks share (timm's ``forward_features`` + ``head``).

A network implements ``_decode(x, heads) -> (full-resolution features, [lower-resolution
head outputs, deepest first])`` and a pointwise ``head``; this mixin turns that into
``forward`` (deep-supervision list ``[full, 1/2, ...]`` in training mode only) and
``forward_features``, which the sliding-window engine uses to stitch features instead of
many-class logits.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeepSupervisionHeads"]


class DeepSupervisionHeads:
    deep_supervision: bool
    training: bool

    def _decode(self, x: torch.Tensor, heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    @property
    def head(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        want_all = self.deep_supervision and self.training
        features, outputs = self._decode(x, want_all)
        outputs.append(self.head(features))
        return outputs[::-1] if want_all else outputs[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution decoder features: ``head(forward_features(x)) == forward(x)`` in eval mode."""
        return self._decode(x, False)[0]
