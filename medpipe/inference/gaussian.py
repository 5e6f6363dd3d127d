"""Gaussian importance map for blending overlapping tiles (nnU-Net's recipe).

Predictions near a patch border see less context and are less reliable, so each tile's
logits are weighted by a Gaussian centred on the patch: sigma = 1/8 of the patch size
per axis, scaled to a maximum of 1, and any zero (underflow at the corners of large or
very anisotropic patches) replaced by the map's smallest non-zero value so no voxel
ever gets a zero total weight. Built analytically (separable), cached per patch size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["gaussian_importance_map"]


@lru_cache(maxsize=16)
def _cached(patch: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    g = np.ones((), dtype=np.float64)
    for p in patch:
        centre = p // 2
        sigma = max(p * sigma_scale, 1e-6)
        ax = np.exp(-0.5 * ((np.arange(p) - centre) / sigma) ** 2)
        g = np.multiply.outer(g, ax)
    g = (g / g.max()).astype(np.float32)
    nonzero = g[g > 0]
    g[g == 0] = nonzero.min()
    t = torch.from_numpy(g)
    t.requires_grad_(False)
    return t


def gaussian_importance_map(patch_size: tuple[int, ...] | list[int], sigma_scale: float = 0.125,
                            device: str | torch.device = "cpu") -> torch.Tensor:
    """float32 map of shape ``patch_size`` (max 1, strictly positive). Do not modify it in place."""
    t = _cached(tuple(int(p) for p in patch_size), float(sigma_scale))
    return t if torch.device(device).type == "cpu" else t.to(device)
