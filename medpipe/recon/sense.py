"""The SENSE model ``A x = M F (S x)`` and its adjoint, plus coil combination.

``SenseOp.gradient`` is the data-consistency term every RIM step sees,
``∇ = Σ_c S_cᴴ F⁻¹ M (M F S_c x − y_c)``. With a 1D mask (constant along the readout rows)
it runs in *hybrid space*: the measured data are inverse-transformed along the readout once
(``to_data_domain``), after which the row FFT cancels out of ``Fᴴ M F`` (the mask acts per
column, so it commutes with the row transform) and each step needs 1D FFTs along the columns
only: half the FFT work of the textbook 2D form, to rounding error (tested).

Shapes: images ``(B, rows, cols)``, k-space and maps ``(B, coils, rows, cols)``, complex; masks
broadcast to ``(B, 1, rows | 1, cols)``.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from medpipe.recon.fft import fft1c, fft2c, ifft1c, ifft2c

__all__ = ["SenseOp", "rss", "sense_combine"]

T = TypeVar("T", np.ndarray, torch.Tensor)


def rss(coil_images: T, dim: int = 0) -> T:
    """Root-sum-of-squares coil combination (magnitude), the fastMRI reference."""
    if isinstance(coil_images, torch.Tensor):
        return torch.sqrt((coil_images.abs() ** 2).sum(dim))
    return np.sqrt((np.abs(coil_images) ** 2).sum(axis=dim))


def sense_combine(coil_images: T, maps: T, dim: int = 0) -> T:
    """``Σ_c conj(S_c) x_c``: the complex image that fully sampled coil images imply."""
    if isinstance(coil_images, torch.Tensor):
        return (maps.conj() * coil_images).sum(dim)
    return (np.conj(maps) * coil_images).sum(axis=dim)


class SenseOp:
    """Multi-coil Cartesian SENSE operator for a batch of 2D slices."""

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor) -> None:
        if maps.ndim != 4 or not maps.is_complex():
            raise ValueError(f"coil maps must be complex (B, coils, rows, cols), got {tuple(maps.shape)} {maps.dtype}")
        mask = mask.to(maps.real.dtype)
        while mask.ndim < 4:
            mask = mask.unsqueeze(0)
        if mask.shape[-1] != maps.shape[-1] or mask.shape[-2] not in (1, maps.shape[-2]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match coil maps {tuple(maps.shape)}")
        self.maps = maps
        self.mask = mask
        self.hybrid = mask.shape[-2] == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, rows, cols)`` -> masked multi-coil k-space."""
        return self.mask * fft2c(self.maps * x.unsqueeze(1))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Multi-coil k-space -> image (``Aᴴ y``)."""
        return (self.maps.conj() * ifft2c(self.mask * y)).sum(1)

    def to_data_domain(self, kspace: torch.Tensor) -> torch.Tensor:
        """Measured k-space in the domain ``gradient`` expects (hybrid space for 1D masks)."""
        return ifft1c(kspace, dim=-2) if self.hybrid else kspace

    def gradient(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """``Aᴴ (A x − y)`` with ``data = to_data_domain(y)``."""
        sx = self.maps * x.unsqueeze(1)
        if self.hybrid:
            resid = self.mask * (fft1c(sx, dim=-1) - data)
            back = ifft1c(resid, dim=-1)
        else:
            resid = self.mask * (fft2c(sx) - data)
            back = ifft2c(resid)
        return (self.maps.conj() * back).sum(1)

    def zero_filled(self, data: torch.Tensor) -> torch.Tensor:
        """SENSE combination of the zero-filled data (``Aᴴ y``), the RIM's initial estimate."""
        back = ifft1c(self.mask * data, dim=-1) if self.hybrid else ifft2c(self.mask * data)
        return (self.maps.conj() * back).sum(1)
