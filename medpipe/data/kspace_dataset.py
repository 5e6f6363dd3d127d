"""``medpipe data kspace``: fully sampled multi-coil k-space files simulated from brain MRI.

One medpipe k-space HDF5 file per source volume (``<source>_<seed>.h5``): the slices chosen
from it (``medpipe.recon.sources``), each simulated with its own smooth phase, birdcage coil
geometry and noise (``medpipe.recon.simulate``), the fully sampled RSS reference, the true coil
maps, and an axial geometry (1 mm pixels). Training, validation and test folders are written by
separate calls with separate sources, so held-out evaluation never sees a training brain.

Example:
    medpipe data kspace build/kspace/test --source colin27 --slices 24 --seed 7
    medpipe data kspace build/kspace/train --source mni152 --slices 120 --augment --planes axial,coronal
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError

__all__ = ["write_kspace_volume"]


def write_kspace_volume(out_dir: str | Path, source: str, *, slices: int = 16, coils: int = 8, matrix: int = 256,
                        snr: tuple[float, float] = (30.0, 30.0), seed: int = 0, augment: bool = False,
                        planes: tuple[str, ...] = ("axial",), copies: int = 1, overwrite: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Simulate and write one k-space file; returns what was written."""
    from medpipe.io.kspace import KSpace, axial_affine, write_kspace
    from medpipe.recon.simulate import simulate_slice
    from medpipe.recon.sources import brain_slices

    if coils < 1 or slices < 1 or copies < 1 or matrix < 32:
        raise InputError(f"coils, slices and copies must be >= 1 and matrix >= 32 (got {coils}, {slices}, {copies}, "
                         f"{matrix})")
    if not 0 < snr[0] <= snr[1]:
        raise InputError(f"SNR must be a positive number or a range low,high; got {snr}")
    out = Path(out_dir) / f"{source}_{seed}.h5"
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    from medpipe.recon.sources import BrainSlice, augment_slice

    base = brain_slices(source, matrix=matrix, n=slices, seed=seed, augment=False, planes=planes)
    rng_aug = np.random.default_rng([seed, 5])
    chosen = [BrainSlice(*augment_slice(s.magnitude, s.phase, rng_aug), s.source, s.index, s.plane) if augment else s
              for _ in range(copies) for s in base]
    rng = np.random.default_rng([seed, 17])
    kspace, maps, refs, sigmas, snrs = [], [], [], [], []
    iterator = chosen
    if progress:
        from rich.progress import track

        iterator = track(chosen, description=f"simulating {source}")
    for s in iterator:
        level = float(rng.uniform(*snr))
        sim = simulate_slice(s.magnitude, coils=coils, snr=level, rng=rng, phase=s.phase)
        kspace.append(sim.kspace)
        maps.append(sim.maps)
        refs.append(sim.reference)
        sigmas.append(sim.sigma)
        snrs.append(level)
    meta = {"simulated": True, "source_name": source, "seed": int(seed), "snr": snrs, "noise_sigma": sigmas,
            "planes": [s.plane for s in chosen], "slice_index": [int(s.index) for s in chosen],
            "acquisition": "simulated multi-coil 2D Cartesian", "modality": "MR",
            "patient_id": f"SIM-{source.upper()}", "description": f"medpipe simulated k-space ({source})"}
    data = np.stack(kspace, 1)
    ks = KSpace(data, np.ones((1, 1, matrix), bool), axial_affine(matrix, matrix, data.shape[1], (1.0, 1.0), 1.0),
                None, np.stack(maps, 1), np.stack(refs), meta)
    write_kspace(ks, out, overwrite=overwrite)
    return {"file": out, "slices": data.shape[1], "coils": coils, "matrix": matrix}
