"""``medpipe data mri-brain``: multi-coil brain k-space studies with tissue, lesion and atlas truth.

Each study is one medpipe k-space HDF5 file (``<name>.h5``, fully sampled: the pipeline
undersamples it retrospectively, as fastMRI evaluates) of a contiguous axial stack through a
whole brain (``medpipe.data.brain_study``: a warped real T1 with a lesion) at 1 mm in-plane (a
clinical T1's resolution, and the CIRIM bundle's), simulated the way
one acquisition is: one birdcage coil array for every slice, one smooth phase map drifting
slowly from slice to slice, complex Gaussian noise at ``snr`` (``medpipe.recon.simulate``).
The truth goes beside the studies, never among them (a study folder holds studies only):
``<truth>/<name>_labels.nii.gz`` on the acquisition's exact grid (the grid the
reconstruction, the segmentation and the atlas labels land on).

Example:
    medpipe data mri-brain build/mri_studies --studies 4 --broken 1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError

__all__ = ["write_mri_brain_study", "write_mri_brain_studies", "BROKEN_KINDS"]

BROKEN_KINDS = ("truncated", "coils")  # a cut-off HDF5 file; a 12-coil file the 8-coil bundle refuses


def write_mri_brain_study(out_dir: str | Path, name: str, *, seed: int = 0, matrix: int = 192, pixel_mm: float = 1.0,
                          slices: int = 52, slice_mm: float = 3.0, coils: int = 8, snr: float = 30.0,
                          truth_dir: str | Path | None = None, source: str | None = None,
                          overwrite: bool = False) -> dict[str, Any]:
    """Simulate and write one study; returns the k-space file, the truth file and the case facts."""
    from medpipe.data.brain_study import brain_centre, brain_lesion_volume
    from medpipe.io.kspace import KSpace, axial_affine, write_kspace
    from medpipe.io.volumes import write_volume
    from medpipe.recon.simulate import birdcage_maps, simulate_slice, smooth_phase

    if matrix < 32 or slices < 4 or coils < 1 or pixel_mm <= 0 or slice_mm <= 0 or snr <= 0:
        raise InputError(f"an MRI brain study needs matrix >= 32, slices >= 4, coils >= 1 and positive sizes and SNR "
                         f"(got matrix {matrix}, slices {slices}, coils {coils}, {pixel_mm} mm, {slice_mm} mm, "
                         f"SNR {snr})")
    out = Path(out_dir) / f"{name}.h5"
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    # the grid: RAS affine of an axial series centred on the brain (the acquisition's own grid)
    aff = axial_affine(matrix, matrix, slices, (pixel_mm, pixel_mm), slice_mm, centre=tuple(brain_centre(seed, source)))
    image, labels = brain_lesion_volume((matrix, matrix, slices), affine=aff, seed=seed, vary=True, source=source,
                                        lesion=True)
    vol = image.array[0]  # (cols, rows, slices) on the k-space grid
    rng = np.random.default_rng([seed, 61])
    maps = birdcage_maps((matrix, matrix), coils, rng)
    base_phase = smooth_phase((matrix, matrix), rng)
    obj = vol > 0.1
    if obj.any():  # the RSS of the maps averages 1 over the object, as for single slices
        from medpipe.recon.sense import rss

        maps = maps / float(rss(maps)[np.transpose(obj, (1, 0, 2)).any(-1)].mean())
    sigma_level = float(vol[obj].mean()) / snr if obj.any() else 1.0 / snr
    kspace, refs = [], []
    for k in range(slices):
        mag = vol[:, :, k].T.astype(np.float32)  # (rows, cols)
        phase = base_phase + (k - slices / 2) * 0.01 * smooth_phase((matrix, matrix), np.random.default_rng([seed, k]))
        # one receiver: the same noise in every slice, snr relative to the whole object's mean
        sim = simulate_slice(mag, coils=coils, snr=snr, rng=rng, phase=phase, maps=maps, sigma=sigma_level)
        kspace.append(sim.kspace)
        refs.append(sim.reference)
    meta = {"simulated": True, "source_name": image.meta.extra["source_brain"], "seed": int(seed), "snr": float(snr),
            "noise_sigma": sigma_level, "acquisition": "simulated multi-coil 2D Cartesian, contiguous axial stack",
            "modality": "MR", "patient_id": f"SIM-{name.upper()}", "description": f"medpipe simulated brain ({name})",
            "lesion": bool(labels.array.max() >= 3)}
    data = np.stack(kspace, 1)
    # the true coil maps are not stored (an acquisition has none; they would double the file)
    ks = KSpace(data, np.ones((1, 1, matrix), bool), aff, None, None, np.stack(refs), meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_kspace(ks, out, overwrite=overwrite)
    truth = None
    if truth_dir is not None:
        truth = write_volume(labels, Path(truth_dir) / f"{name}_labels.nii.gz")
    return {"file": out, "truth": truth, "shape": [matrix, matrix, slices], "spacing_mm": [pixel_mm, pixel_mm, slice_mm],
            "source": meta["source_name"], "lesion_ml": round(float((labels.array == 3).sum()) * pixel_mm ** 2 * slice_mm
                                                               / 1000.0, 3)}


def _break(path: Path, kind: str) -> None:
    """Make a study unusable the way real ones are: a cut-off transfer, or the wrong coil array."""
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind != "coils":
        raise InputError(f"broken kind must be one of {', '.join(BROKEN_KINDS)}, got {kind!r}")


def write_mri_brain_studies(folder: str | Path, n: int = 4, *, broken: int = 0, broken_kind: str = "truncated",
                            seed: int = 0, truth_dir: str | Path | None = None, overwrite: bool = False,
                            progress: bool = True, **grid: Any) -> list[dict[str, Any]]:
    """``n`` studies ``mri_0 ..`` (sources alternate MNI152 / Colin27); the last ``broken`` are unusable."""
    if n < 1 or not 0 <= broken <= n:
        raise InputError(f"need at least one study and 0 <= broken <= studies (got {n} studies, {broken} broken)")
    if broken_kind not in BROKEN_KINDS:
        raise InputError(f"broken kind must be one of {', '.join(BROKEN_KINDS)}, got {broken_kind!r}")
    folder = Path(folder)
    truth = Path(truth_dir) if truth_dir is not None else folder.parent / f"{folder.name}_truth"
    rows = []
    items = range(n)
    if progress:
        from rich.progress import track

        items = track(items, description=f"simulating {n} brain k-space studies")
    for i in items:
        is_broken = i >= n - broken
        kw = dict(grid)
        if is_broken and broken_kind == "coils":
            kw["coils"] = 12
        info = write_mri_brain_study(folder, f"mri_{i}", seed=seed + i, truth_dir=None if is_broken else truth,
                                     overwrite=overwrite, **kw)
        if is_broken:
            _break(info["file"], broken_kind)
        info["broken"] = broken_kind if is_broken else None
        rows.append(info)
    return rows
