"""Centred orthonormal FFTs (the fastMRI convention), for numpy arrays and torch tensors alike.

``ifftshift -> fft(norm="ortho") -> fftshift`` keeps the k-space centre (DC) at index ``N // 2``
and makes the transform unitary, so noise keeps its standard deviation between k-space and
image space and the SENSE operator's adjoint is its plain conjugate transpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = ["fft2c", "ifft2c", "fft1c", "ifft1c"]

T = TypeVar("T", np.ndarray, torch.Tensor)


def _centred(x: T, dims: Sequence[int], inverse: bool) -> T:
    dims = tuple(dims)
    if isinstance(x, torch.Tensor):
        f = torch.fft.ifftn if inverse else torch.fft.fftn
        return torch.fft.fftshift(f(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims)
    f = np.fft.ifftn if inverse else np.fft.fftn
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=dims), axes=dims, norm="ortho"), axes=dims)


def fft2c(x: T, dims: Sequence[int] = (-2, -1)) -> T:
    """Image -> k-space over the last two axes (centred, unitary)."""
    return _centred(x, dims, inverse=False)


def ifft2c(x: T, dims: Sequence[int] = (-2, -1)) -> T:
    """k-space -> image over the last two axes (centred, unitary)."""
    return _centred(x, dims, inverse=True)


def fft1c(x: T, dim: int = -1) -> T:
    """Centred unitary FFT along one axis (the phase-encoding axis of hybrid space)."""
    return _centred(x, (dim,), inverse=False)


def ifft1c(x: T, dim: int = -1) -> T:
    """Centred unitary inverse FFT along one axis."""
    return _centred(x, (dim,), inverse=True)
