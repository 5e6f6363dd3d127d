"""Coil sensitivity maps from the calibration (ACS) region: a fast low-resolution estimate and
ESPIRiT.

``acs_maps`` is what the learned reconstructions use: the ACS box of each coil, Hann-windowed,
transformed to a low-resolution coil image and divided by the root-sum-of-squares (a few
milliseconds per slice). ``espirit_maps`` is the compressed-sensing baselines' calibration,
built from sigpy's primitives (``array_to_blocks``, its centred FFT and ``resize``) the way
sigpy's ``EspiritCalib`` is, with one difference: the calibration region is the *rectangular*
ACS box (the full readout extent x the fully sampled lines) instead of a square. At 8x with a
0.04 centre fraction a 256-column scan has ~10 ACS lines, so sigpy's square region (24 x 24 by
default) reaches into unsampled columns and its maps fall apart (REFERENCES.md); the full
readout keeps the calibration matrix overdetermined.
"""

from __future__ import annotations

import numpy as np

from medpipe.errors import InputError
from medpipe.recon.masks import acs_region

__all__ = ["acs_maps", "espirit_maps"]


def _calibration(kspace: np.ndarray, mask: np.ndarray, min_lines: int) -> tuple[slice, slice]:
    rows, cols = acs_region(mask, kspace.shape[-2:])
    n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
    if min(n_r, n_c) < min_lines:
        raise InputError(f"the sampling mask has a fully sampled centre of only {n_r} x {n_c} k-space points; "
                         f"coil maps need at least {min_lines} calibration lines (raise center_fraction)")
    return rows, cols


def acs_maps(kspace: np.ndarray, mask: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Fast RSS-normalised maps ``(coils, rows, cols)`` from one slice's ACS region."""
    from medpipe.recon.fft import ifft2c

    rows, cols = _calibration(kspace, mask, 2)
    n_c = cols.stop - cols.start
    # Low-pass over the same k-space width in both axes (rows are fully sampled but the maps
    # should be as smooth along the readout as across it).
    half_r = min((rows.stop - rows.start) // 2, max(1, n_c * kspace.shape[-2] // (2 * kspace.shape[-1])))
    rc = kspace.shape[-2] // 2
    r_sl = slice(max(rows.start, rc - half_r), min(rows.stop, rc + half_r + 1))
    win_r = np.hanning(r_sl.stop - r_sl.start + 2)[1:-1]
    win_c = np.hanning(n_c + 2)[1:-1]
    low = np.zeros_like(kspace)
    low[:, r_sl, cols] = kspace[:, r_sl, cols] * (win_r[:, None] * win_c[None, :])
    imgs = ifft2c(low)
    norm = np.sqrt((np.abs(imgs) ** 2).sum(0, keepdims=True))
    return (imgs / np.maximum(norm, eps * float(norm.max()) + 1e-30)).astype(np.complex64)


def espirit_maps(kspace: np.ndarray, mask: np.ndarray, *, kernel_width: int = 6, thresh: float = 0.02,
                 crop: float = 0.8, max_rows: int = 64) -> np.ndarray:
    """ESPIRiT maps ``(coils, rows, cols)`` (one set) from a rectangular ACS region.

    The region is the fully sampled columns x up to ``max_rows`` central readout rows, widened
    along the rows (and the kernel narrowed) until the block matrix has at least three times as
    many rows as unknowns.
    Per pixel the leading eigenvector of the kernel covariance is taken (eigendecomposition of
    the small ``coils x coils`` matrices, not power iterations), phase-referenced to the coil
    sum, and zeroed where its eigenvalue is below ``crop`` (0.8, BART ``ecalib``'s default: sigpy's
    0.95 blanks parts of the head when only ~8 ACS lines exist).
    """
    import sigpy as sp

    coils, n_rows, _ = kspace.shape
    rows, cols = _calibration(kspace, mask, 3)
    n_c, avail = cols.stop - cols.start, rows.stop - rows.start
    # The largest kernel (<= kernel_width) whose block matrix is >= 3x overdetermined: few ACS
    # lines (8x, small matrices) get a smaller kernel instead of a noisy null space.
    for kw in range(min(kernel_width, n_c), 2, -1):
        if (n_c - kw + 1) * (avail - kw + 1) >= 3 * coils * kw * kw:
            kernel_width = kw
            break
    else:
        kernel_width = min(3, n_c)
    unknowns = coils * kernel_width**2
    need = int(np.ceil(3 * unknowns / (n_c - kernel_width + 1))) + kernel_width - 1
    n_r = min(avail, max(min(max_rows, avail), need))
    rc = (rows.start + rows.stop) // 2
    r_sl = slice(max(rows.start, rc - n_r // 2), max(rows.start, rc - n_r // 2) + n_r)
    calib = np.ascontiguousarray(kspace[:, r_sl, cols])
    mat = sp.array_to_blocks(calib, [kernel_width] * 2, [1, 1])
    mat = mat.reshape([coils, -1, kernel_width**2]).transpose([1, 0, 2]).reshape([-1, unknowns])
    _, s, vh = np.linalg.svd(mat, full_matrices=False)
    vh = vh[s > thresh * s.max()]
    kernels = vh.reshape([len(vh), coils, kernel_width, kernel_width])
    img_shape = kspace.shape[1:]
    aha = np.zeros(img_shape + (coils, coils), np.complex128)
    for start in range(0, len(kernels), 16):  # bounded memory: 16 kernels' images at a time
        block = sp.ifft(sp.resize(kernels[start:start + 16], (len(kernels[start:start + 16]),) + kspace.shape),
                        axes=(-2, -1))
        block = np.moveaxis(block, 1, -1)  # (k, rows, cols, coils)
        aha += np.einsum("krci,krcj->rcij", block, block.conj())
    aha *= np.prod(img_shape) / kernel_width**2
    w, v = np.linalg.eigh(aha)
    maps = v[..., -1]  # (rows, cols, coils): eigenvector of the largest eigenvalue
    ref = maps.sum(-1, keepdims=True)
    maps = maps * np.exp(-1j * np.angle(ref))
    maps = np.moveaxis(maps, -1, 0) * (w[..., -1] > crop)[None]
    return maps.astype(np.complex64)
