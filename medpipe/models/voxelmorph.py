"""VoxelMorph-style diffeomorphic U-Net (Dalca et al. 2019), the learned baseline.

Laid out like PyPI ``voxelmorph`` 0.3.4's ``VxmPairwise`` (neurite ``BasicUNet``): per level
a 3³ conv + activation whose output is the skip, then 2× max-pool; a bottleneck conv; per
level trilinear 2× upsampling, concatenation with the skip, 3³ conv + activation; a 1³
conv to 3 channels and a 3³ *flow layer* initialised N(0, 1e-5). With the default five
levels of 16 features and one-channel images this has the package's 105,017 parameters
(a test checks the count against the package when it is installed). The velocity is
integrated by scaling and squaring (7 steps here, the package defaults to 5).

Input ``cat(fixed, moving)`` (the package concatenates ``source, target``; the order only
swaps the first conv's input channels); output the velocity in voxel units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpipe.models.registry import register_model, with_task

__all__ = ["VoxelMorphUNet", "voxelmorph"]

_ACT = {"relu": lambda: nn.ReLU(), "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def _conv(in_ch: int, out_ch: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, 3, padding=1), _ACT[act]())


class VoxelMorphUNet(nn.Module):
    """U-Net + flow layer; ``forward`` gives the velocity field ``(B, num_classes, I, J, K)``."""

    is_registration = True

    def __init__(self, in_channels: int = 2, num_classes: int = 3, *, features: Sequence[int] = (16, 16, 16, 16, 16),
                 activation: str = "leaky_relu", spatial_dims: int = 3):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"this VoxelMorph baseline is 3D, spatial_dims must be 3, not {spatial_dims}")
        if activation not in _ACT:
            raise ValueError(f"activation must be one of {sorted(_ACT)}, got {activation!r}")
        feats = [int(f) for f in features]
        self.in_channels, self.num_classes, self.spatial_dims = in_channels, num_classes, 3
        n = len(feats)
        self.input_shape_must_be_divisible_by = [2**n] * 3
        self.down = nn.ModuleList([_conv(in_channels if i == 0 else feats[i - 1], feats[i], activation) for i in range(n)])
        self.bottleneck = _conv(feats[-1], feats[-1], activation)
        ups, prev = [], feats[-1]
        for i in reversed(range(n)):
            ups.append(_conv(prev + feats[i], feats[i], activation))
            prev = feats[i]
        self.up = nn.ModuleList(ups)
        self.out_layer = nn.Conv3d(prev, num_classes, 1)
        self.flow = nn.Conv3d(num_classes, num_classes, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv in self.down:
            x = conv(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        x = self.bottleneck(x)
        for conv, skip in zip(self.up, reversed(skips), strict=True):
            # to the skip's size: the package's exact 2x when the input divides by 2^levels, and any
            # other size still works (training crops, brains that are not a multiple of 32)
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = conv(torch.cat((x, skip), dim=1))
        return self.flow(self.out_layer(x))

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Same keys as MICDIR's (no half-resolution head, no graph loss)."""
        return {"velocity": self(x)}


@register_model
@with_task("registration")
def voxelmorph(**cfg) -> VoxelMorphUNet:
    """VoxelMorph-style diffeomorphic U-Net (5 levels × 16 features; 105,017 params at 2 → 3)."""
    return VoxelMorphUNet(**cfg)
