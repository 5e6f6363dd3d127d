"""Multi-coil Cartesian k-space from a magnitude image: smooth phase, birdcage coils, noise.

No raw brain k-space installs offline, so the learned reconstructions train and are measured on
k-space simulated from real magnitude images: ``image = magnitude * exp(i * phase)`` with a
smooth random phase (a low-order polynomial plus a few broad bumps, like B0 and coil-phase
variation) or a measured one, multiplied by sigpy's birdcage sensitivities (random coil-ring
radius, rotation and order, scaled so the RSS of the maps averages 1 over the object),
transformed with the centred unitary FFT, plus complex white Gaussian noise of standard deviation
``sigma = mean object intensity / snr`` per coil (unitary, so the same sigma in image space).
The reference is what fastMRI uses: the RSS of the fully sampled *noisy* coil images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medpipe.recon.fft import fft2c, ifft2c
from medpipe.recon.sense import rss

__all__ = ["SimulatedSlice", "smooth_phase", "birdcage_maps", "simulate_slice"]


@dataclass
class SimulatedSlice:
    kspace: np.ndarray  # (coils, rows, cols) complex64, fully sampled
    maps: np.ndarray  # (coils, rows, cols) the true sensitivities
    reference: np.ndarray  # (rows, cols) RSS of the fully sampled noisy coil images
    sigma: float  # noise standard deviation per coil (k-space and image space)


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, max_rad: float = np.pi) -> np.ndarray:
    """A smooth random phase map in radians (polynomial up to order 2 plus three broad bumps)."""
    r = np.linspace(-1, 1, shape[0])[:, None]
    c = np.linspace(-1, 1, shape[1])[None, :]
    a = rng.uniform(-1, 1, 6)
    ph = a[0] + a[1] * r + a[2] * c + 0.6 * (a[3] * r * r + a[4] * c * c + a[5] * r * c)
    for _ in range(3):
        r0, c0 = rng.uniform(-0.7, 0.7, 2)
        w = rng.uniform(0.2, 0.5)
        ph = ph + rng.uniform(-1, 1) * np.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * w * w))
    return (max_rad * ph / max(1e-6, float(np.abs(ph).max()))).astype(np.float32)


def birdcage_maps(shape: tuple[int, int], coils: int, rng: np.random.Generator) -> np.ndarray:
    """sigpy's birdcage sensitivities with a random ring radius, rotation and channel order."""
    import sigpy.mri

    radius = rng.uniform(1.1, 1.6)
    maps = sigpy.mri.birdcage_maps((coils, *shape), r=radius, nzz=coils, dtype=np.complex64)
    k = int(rng.integers(0, 4))
    maps = np.rot90(maps, k=k, axes=(1, 2)) if shape[0] == shape[1] else maps
    if rng.uniform() < 0.5:
        maps = maps[:, ::-1, :]
    maps = maps[rng.permutation(coils)] * np.exp(1j * rng.uniform(0, 2 * np.pi, coils))[:, None, None]
    return np.ascontiguousarray(maps).astype(np.complex64)


def simulate_slice(magnitude: np.ndarray, *, coils: int = 8, snr: float = 30.0, rng: np.random.Generator,
                   phase: np.ndarray | None = None, maps: np.ndarray | None = None,
                   sigma: float | None = None) -> SimulatedSlice:
    """Fully sampled multi-coil k-space of one slice (see the module docstring).

    ``sigma`` fixes the noise level instead of deriving it from ``snr`` (one receiver for a
    whole stack: the same noise in every slice, however much tissue it holds)."""
    mag = np.asarray(magnitude, np.float32)
    if mag.ndim != 2:
        raise ValueError(f"simulate_slice needs a 2D magnitude image, got shape {mag.shape}")
    ph = smooth_phase(mag.shape, rng) if phase is None else np.asarray(phase, np.float32)
    img = mag * np.exp(1j * ph)
    s = birdcage_maps(mag.shape, coils, rng) if maps is None else np.asarray(maps, np.complex64)
    obj = mag > 0.1 * float(mag.max())
    if maps is None and obj.any():
        s = s / float(rss(s)[obj].mean())
    sig = float(sigma) if sigma is not None else float(mag[obj].mean() if obj.any() else mag.mean()) / float(snr)
    noise = (rng.standard_normal((coils, *mag.shape)) + 1j * rng.standard_normal((coils, *mag.shape))) * (sig / np.sqrt(2))
    ksp = (fft2c(s * img[None]) + noise).astype(np.complex64)
    return SimulatedSlice(kspace=ksp, maps=s.astype(np.complex64), reference=rss(ifft2c(ksp)).astype(np.float32),
                          sigma=sig)
