"""Reconstruct a ``KSpace`` slice by slice: RSS, SENSE, compressed sensing (sigpy, BART) or a
RIM/CIRIM bundle, and turn the result into an ``Image`` on the acquisition's grid.

=================  =============================================================================
method             what it computes
=================  =============================================================================
``rss``            root-sum-of-squares of the zero-filled coil images (fastMRI's reference for
                   fully sampled data and its "zero-filled" baseline for undersampled data)
``zero_filled``    SENSE combination ``Aᴴ y`` with ACS coil maps (the RIMs' starting image)
``sense``          CG-SENSE (sigpy ``SenseRecon``, 30 iterations, small Tikhonov term)
``cs``             L1-wavelet compressed sensing (sigpy ``L1WaveletRecon``, db4, 100 iterations)
                   with ESPIRiT maps
``bart``           BART ``pics -S -l1`` with BART ``ecalib`` maps (Debian ``bart``)
``rim`` / ``cirim`` a bundle's network with ACS maps
=================  =============================================================================

Compressed sensing and SENSE work on data scaled so the zero-filled image's 99th percentile is 1,
so ``lam`` means the same for every scan; the result is scaled back.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import BundleError, InputError
from medpipe.io.kspace import KSpace, center_crop
from medpipe.recon.fft import ifft2c
from medpipe.recon.sense import rss, sense_combine

__all__ = ["METHODS", "ReconResult", "reconstruct", "reconstruct_slice", "to_image", "bart_available",
           "DEFAULT_CS_LAMBDA"]

METHODS = ("rss", "zero_filled", "sense", "cs", "bart", "rim", "cirim")
DEFAULT_CS_LAMBDA = 0.003  # benchmarks/recon.py picked 0.001 (4x) / 0.003 (8x) on the validation brain
DEFAULT_BART_LAMBDA = 0.005  # the benchmark picked 0.002 (4x) / 0.01 (8x)


@dataclass
class ReconResult:
    magnitude: np.ndarray  # (slices, rows, cols) float32 on the image grid
    complex_image: np.ndarray | None  # same shape, complex64, when the method has a phase
    seconds: list[float] = field(default_factory=list)  # per slice, coil maps included
    info: dict[str, Any] = field(default_factory=dict)


def bart_available() -> bool:
    return shutil.which("bart") is not None


def _scale(y: np.ndarray) -> float:
    return float(max(np.percentile(rss(ifft2c(y), 0), 99), 1e-12))


def _weights(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(mask, shape), dtype=np.float32)


def _cs(y: np.ndarray, mask: np.ndarray, lam: float, iterations: int, maps: np.ndarray | None) -> np.ndarray:
    import sigpy.mri as mr

    from medpipe.recon.coilmaps import espirit_maps

    mps = espirit_maps(y, mask) if maps is None else maps
    sc = _scale(y)
    app = mr.app.L1WaveletRecon(y / sc, mps, lam, weights=_weights(mask, y.shape[1:]), wave_name="db4",
                                max_iter=iterations, show_pbar=False)
    return app.run() * sc


def _sense(y: np.ndarray, mask: np.ndarray, maps: np.ndarray) -> np.ndarray:
    import sigpy.mri as mr

    sc = _scale(y)
    app = mr.app.SenseRecon(y / sc, maps, lamda=1e-3, weights=_weights(mask, y.shape[1:]), max_iter=30,
                            show_pbar=False)
    return app.run() * sc


def _bart(y: np.ndarray, mask: np.ndarray, lam: float) -> np.ndarray:
    """BART ``ecalib`` + ``pics -S -l1 -r lam`` on one slice (cfl files in a temporary folder)."""
    if not bart_available():
        raise InputError("method 'bart' needs the BART toolbox: apt-get install bart")
    sc = _scale(y)
    # ESPIRiT calibrates on the fully sampled centre: ecalib's default 24 lines on a smaller ACS
    # (8 lines of a 96-line 4x scan) took zero-filled lines in and scaled the image 0.4-1x per slice
    acs = _acs_width(np.broadcast_to(np.asarray(mask, bool), y.shape[1:]))
    if acs < 6:
        raise InputError(f"BART ESPIRiT needs at least 6 fully sampled central k-space lines; this mask has {acs}")
    calib = ["-r", str(min(24, acs)), "-k", str(min(6, acs // 2))]
    with tempfile.TemporaryDirectory(prefix="medpipe-bart-") as tmp:
        base = Path(tmp)
        _write_cfl(base / "ksp", np.transpose(y / sc, (1, 2, 0))[:, :, None, :])  # (x, y, z, coils)
        run = {"check": True, "capture_output": True, "cwd": tmp}
        try:
            subprocess.run(["bart", "ecalib", "-m1", *calib, "ksp", "maps"], **run)
            subprocess.run(["bart", "pics", "-S", "-l1", "-r", str(lam), "ksp", "maps", "img"], **run)
        except subprocess.CalledProcessError as exc:
            raise InputError(f"BART failed: {exc.stderr.decode(errors='replace').strip()[:200]}") from exc
        img = _read_cfl(base / "img")
    return img.reshape(y.shape[1:]) * sc


def _acs_width(mask: np.ndarray) -> int:
    """Side of the largest fully sampled square centred where the centred FFT puts k = 0."""
    rows, cols = mask.shape
    cr, cc = rows // 2, cols // 2
    w = 0
    while (cr - w - 1 >= 0 and cc - w - 1 >= 0 and cr + w + 1 <= rows and cc + w + 1 <= cols
           and mask[cr - w - 1:cr + w + 1, cc - w - 1:cc + w + 1].all()):
        w += 1
    return 2 * w


def _write_cfl(name: Path, arr: np.ndarray) -> None:
    name.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in arr.shape) + "\n")
    np.asarray(arr, np.complex64).ravel(order="F").tofile(name.with_suffix(".cfl"))


def _read_cfl(name: Path) -> np.ndarray:
    dims = [int(d) for d in name.with_suffix(".hdr").read_text().splitlines()[1].split()]
    return np.fromfile(name.with_suffix(".cfl"), np.complex64).reshape(dims, order="F")


def reconstruct_slice(y: np.ndarray, mask: np.ndarray, method: str, *, model=None, lam: float | None = None,
                      cs_iterations: int = 100, maps: np.ndarray | None = None) -> np.ndarray:
    """One slice ``(coils, rows, cols)`` -> complex (or, for ``rss``, magnitude) image (rows, cols)."""
    from medpipe.recon.coilmaps import acs_maps

    if method == "rss":
        return rss(ifft2c(y), 0)
    if method == "cs":
        return _cs(y, mask, DEFAULT_CS_LAMBDA if lam is None else lam, cs_iterations, maps)
    if method == "bart":
        return _bart(y, mask, DEFAULT_BART_LAMBDA if lam is None else lam)
    mps = acs_maps(y, mask) if maps is None else maps
    if method == "zero_filled":
        return sense_combine(ifft2c(y), mps, 0)
    if method == "sense":
        return _sense(y, mask, mps)
    if method in ("rim", "cirim"):
        import torch

        if model is None:
            raise BundleError(f"method {method!r} needs a model bundle")
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(y))[None],
                        torch.from_numpy(np.ascontiguousarray(mask))[None, None], torch.from_numpy(mps)[None])
        return out[0].numpy()
    raise InputError(f"unknown reconstruction method {method!r}; choose one of {', '.join(METHODS)}")


def reconstruct(ks: KSpace, method: str, *, model=None, lam: float | None = None, cs_iterations: int = 100,
                coil_maps: str = "auto", track=None) -> ReconResult:
    """Every slice of ``ks``; ``coil_maps`` ``auto`` (the method's own), ``acs``, ``espirit`` or
    ``file`` (the maps stored with the k-space)."""
    from medpipe.recon.coilmaps import acs_maps, espirit_maps

    if method not in METHODS:
        raise InputError(f"unknown reconstruction method {method!r}; choose one of {', '.join(METHODS)}")
    if coil_maps == "file" and ks.coil_maps is None:
        raise InputError(f"{ks.meta.get('source', 'k-space')} stores no coil maps; use coil_maps auto, acs or espirit")
    mags, cplx, secs = [], [], []
    slices = range(ks.n_slices)
    for s in (track(slices, total=ks.n_slices, description=f"{method} reconstruction") if track else slices):
        y, m = ks.data[:, s], ks.slice_mask(s)
        t0 = time.perf_counter()
        maps = None
        if coil_maps == "file":
            maps = ks.coil_maps[:, s]  # type: ignore[index]
        elif coil_maps == "acs" and method != "rss":
            maps = acs_maps(y, m)
        elif coil_maps == "espirit" and method != "rss":
            maps = espirit_maps(y, m)
        img = reconstruct_slice(y, m, method, model=model, lam=lam, cs_iterations=cs_iterations, maps=maps)
        secs.append(time.perf_counter() - t0)
        img = center_crop(img, ks.image_shape)
        mags.append(np.abs(img).astype(np.float32))
        cplx.append(None if method == "rss" else img.astype(np.complex64))
    has_phase = all(c is not None for c in cplx)
    return ReconResult(np.stack(mags), np.stack(cplx) if has_phase else None, secs, {"method": method})


def to_image(ks: KSpace, volume: np.ndarray, description: str, extra: dict[str, Any] | None = None):
    """An ``Image`` on the acquisition's grid: array (1, cols, rows, slices), the KSpace affine."""
    from medpipe.image import Image, ImageMeta

    arr = np.moveaxis(np.asarray(volume), 0, -1)  # (rows, cols, slices)
    arr = np.transpose(arr, (1, 0, 2))[None]  # (1, cols, rows, slices)
    meta = ImageMeta(modality="MR", description=description,
                     source_files=[str(ks.meta["study"])] if ks.meta.get("study") else [],
                     extra={"recon": extra or {}, "acceleration": round(float(ks.acceleration), 3)})
    return Image(np.ascontiguousarray(arr), ks.affine.copy(), meta)
