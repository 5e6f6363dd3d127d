"""Reconstruction losses: fastMRI's SSIM loss (7x7 uniform window) plus L1, summed over every
RIM time step and CIRIM cascade with ``logspace(-1, 0, n)`` weights (the later the estimate,
the more it counts), as the CIRIM authors train (0.1 L1 + 0.9 SSIM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ssim_loss", "estimate_loss"]


def ssim_loss(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, win: int = 7,
              k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """``1 - SSIM`` of magnitude images ``(B, rows, cols)``, valid 7x7 uniform windows with the
    sample-covariance correction (the definition ``medpipe.metrics.ssim`` and scikit-image use)."""
    x, y = x.unsqueeze(1), y.unsqueeze(1)
    w = torch.full((1, 1, win, win), 1.0 / win**2, dtype=x.dtype, device=x.device)
    np_ = win * win
    cov = np_ / (np_ - 1)
    ux, uy = F.conv2d(x, w), F.conv2d(y, w)
    uxx, uyy, uxy = F.conv2d(x * x, w), F.conv2d(y * y, w), F.conv2d(x * y, w)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    dr = data_range.view(-1, 1, 1, 1)
    c1, c2 = (k1 * dr) ** 2, (k2 * dr) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return 1.0 - s.mean()


def estimate_loss(estimates: list[list[torch.Tensor]], target: torch.Tensor, l1_weight: float = 0.1,
                  ssim_weight: float = 0.9) -> torch.Tensor:
    """Weighted mean over cascades and steps of ``l1 * L1 + ssim * (1 - SSIM)`` on magnitudes.

    ``estimates`` are complex images in the model's normalised scale, ``target`` the reference
    magnitude in that same scale; the data range is each target's maximum.
    """
    data_range = target.flatten(1).amax(1)
    wc = torch.logspace(-1, 0, len(estimates), dtype=target.dtype, device=target.device)
    total = target.new_zeros(())
    for c, steps in enumerate(estimates):
        wt = torch.logspace(-1, 0, len(steps), dtype=target.dtype, device=target.device)
        per = target.new_zeros(())
        for t, est in enumerate(steps):
            mag = est.abs()
            term = target.new_zeros(())
            if l1_weight:
                term = term + l1_weight * (mag - target).abs().mean() / data_range.mean()
            if ssim_weight:
                term = term + ssim_weight * ssim_loss(mag, target, data_range)
            per = per + wt[t] * term
        total = total + wc[c] * per / wt.sum()
    return total / wc.sum()
