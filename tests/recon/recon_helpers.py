"""Small simulated multi-coil k-space for the reconstruction tests (imported by conftest and tests)."""

from __future__ import annotations

import numpy as np

from medpipe.data.phantoms import mr_brain_phantom
from medpipe.io.kspace import KSpace, axial_affine
from medpipe.recon.simulate import simulate_slice


def small_kspace(slices: int = 3, coils: int = 4, matrix: int = 64, seed: int = 0, snr: float = 60.0) -> KSpace:
    img, _ = mr_brain_phantom(shape=(matrix, matrix, max(8, slices + 4)), spacing=(3.5, 3.5, 4.0), seed=seed, vary=True)
    mags = [img.array[0][::-1, ::-1, k + 2].T / img.array.max() for k in range(slices)]
    rng = np.random.default_rng(seed)
    sims = [simulate_slice(np.ascontiguousarray(m), coils=coils, snr=snr, rng=rng) for m in mags]
    return KSpace(np.stack([s.kspace for s in sims], 1), np.ones((1, 1, matrix), bool),
                  axial_affine(matrix, matrix, slices, (3.5, 3.5), 4.0), None,
                  np.stack([s.maps for s in sims], 1), np.stack([s.reference for s in sims]),
                  {"modality": "MR"})
