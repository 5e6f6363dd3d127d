"""Random smooth diffeomorphic warps and intensity changes: registration pairs with known truth.

A random stationary velocity field (white noise on a coarse control grid, upsampled and
Gaussian-smoothed, at two scales) plus a small random affine is integrated by scaling and
squaring, so the warp is invertible by construction and its displacement is the ground
truth. Intensity changes (gamma, smooth multiplicative bias, a random monotone remapping of
the tissue contrast, blur, noise) make the two images of a pair differ the way two scans
of one modality do. Each draw owns its ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medpipe.registration import spatial

__all__ = ["random_displacement", "augment_intensity", "normalize_intensity"]


def random_displacement(shape: tuple[int, int, int], rng: np.random.Generator, *, amplitude: float = 2.0,
                        affine_strength: float = 1.0) -> torch.Tensor:
    """A random diffeomorphic displacement ``(1, 3, I, J, K)`` in voxels.

    ``amplitude`` scales the velocity (voxels; typical largest displacement ~2-3x it);
    ``affine_strength`` scales a small random affine (±4° per axis, ±4% scale, ±2 voxels).
    """
    small = tuple(max(8, n // 2) for n in shape)  # integrated at half resolution, then resized
    vel = torch.zeros(1, 3, *small)
    for grid, weight in ((4, 1.0), (8, 0.5)):
        noise = torch.from_numpy(rng.standard_normal((1, 3, grid, grid, grid)).astype(np.float32))
        vel += weight * F.interpolate(noise, size=small, mode="trilinear", align_corners=True)
    vel *= amplitude / float(vel.abs().amax().clamp_min(1e-6)) * 2.0 * (small[0] - 1) / max(shape[0] - 1, 1)
    disp = spatial.integrate_velocity(vel)
    if affine_strength > 0:
        ang = np.radians(rng.uniform(-4, 4, 3)) * affine_strength
        cx, cy, cz = np.cos(ang)
        sx, sy, sz = np.sin(ang)
        rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
               @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
        mat = rot @ np.diag(1 + rng.uniform(-0.04, 0.04, 3) * affine_strength)
        shift = rng.uniform(-1, 1, 3) * affine_strength  # voxels of the half-resolution grid = +-2 full voxels
        centre = (np.asarray(small) - 1) / 2.0
        grid_pts = spatial.identity_grid(small)[0].reshape(3, -1).numpy()
        moved = mat @ (grid_pts - centre[:, None]) + centre[:, None] + shift[:, None]
        aff = torch.from_numpy((moved - grid_pts).reshape(1, 3, *small).astype(np.float32))
        disp = spatial.compose(disp, aff)
    return spatial.resize_field(disp, tuple(shape))


def normalize_intensity(x: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale to [0, 1] by the foreground (non-zero) percentiles: what the registration nets see."""
    fg = x[x > 0]
    if fg.size < 10:
        fg = x.ravel()
    lo, hi = np.percentile(fg, [low, high]) if fg.size else (0.0, 1.0)
    lo = min(float(lo), 0.0)
    return np.clip((x - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0.1:
        return x
    r = int(np.ceil(2.5 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    for d in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + d] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - d)] = pad[2 * (2 - d) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def augment_intensity(x: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """Same-modality scan-to-scan differences on a [0, 1] image ``(1, 1, I, J, K)``."""
    mask = (x > 0.02).float()
    # monotone piecewise-linear remap: shifts the grey/white contrast like another scanner/subject
    knots = np.sort(np.concatenate([[0.0, 1.0], np.clip(np.linspace(0.25, 0.75, 3) + rng.normal(0, 0.05 * strength, 3), 0.05, 0.95)]))
    xs = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    y = torch.from_numpy(np.interp(x.numpy(), xs, knots).astype(np.float32))
    y = y.clamp(0, 1) ** float(np.exp(rng.normal(0, 0.2 * strength)))
    shape = x.shape[2:]
    coarse = torch.from_numpy(rng.normal(0, 0.1 * strength, (1, 1, 3, 3, 3)).astype(np.float32))
    bias = torch.exp(F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True))
    y = y * bias
    y = _smooth(y, float(rng.uniform(0, 1.0 * strength)))
    y = y + torch.from_numpy(rng.normal(0, rng.uniform(0, 0.03 * strength), x.shape).astype(np.float32)) * mask
    return (y * mask).clamp(0, 1)
