"""Cartesian sampling masks: fastMRI's 1D equispaced and random masks with a fully sampled
centre, and 2D variable-density masks (Gaussian, Poisson disc via sigpy) for 3D acquisitions.

1D masks come back with shape ``(1, cols)`` (they select phase-encoding columns and broadcast
over the readout rows); 2D masks with shape ``(rows, cols)``. Each mask is deterministic in
its ``seed``, so training draws and benchmark masks can be replayed.

The 1D rules are fastMRI's: ``round(cols * center_fraction)`` centre columns; random masks add
columns with probability ``(cols / R − centre) / (cols − centre)``; equispaced masks place
lines every ``R (centre − cols) / (centre R − cols)`` columns from a random offset, so the
*overall* acceleration is close to the nominal ``R`` (centre included).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from medpipe.errors import InputError

__all__ = ["MASK_KINDS", "make_mask", "mask_acceleration", "center_fraction_for", "acs_region"]

MaskKind = Literal["equispaced", "random", "gaussian2d", "poisson"]
MASK_KINDS: tuple[str, ...] = ("equispaced", "random", "gaussian2d", "poisson")
_CENTRE = {4: 0.08, 8: 0.04}


def center_fraction_for(acceleration: float) -> float:
    """fastMRI's centre fractions (0.08 at 4x, 0.04 at 8x); ``0.32 / R`` in between."""
    r = round(float(acceleration))
    return _CENTRE.get(r, 0.32 / float(acceleration)) if abs(acceleration - r) < 1e-9 else 0.32 / float(acceleration)


def _check(shape: tuple[int, int], acceleration: float, center_fraction: float) -> None:
    if len(shape) != 2 or min(shape) < 8:
        raise InputError(f"a sampling mask needs a (rows, cols) shape of at least 8x8, got {tuple(shape)}")
    if not acceleration >= 1.0:
        raise InputError(f"acceleration must be >= 1, got {acceleration}")
    if not 0.0 < center_fraction < 1.0:
        raise InputError(f"center_fraction must be in (0, 1), got {center_fraction}")
    if center_fraction > 1.0 / acceleration + 1e-9:
        raise InputError(f"a centre fraction of {center_fraction} already samples more than 1/{acceleration:g} "
                         "of k-space; lower center_fraction or the acceleration")


def _centre_slice(n: int, n_low: int) -> slice:
    pad = (n - n_low + 1) // 2
    return slice(pad, pad + n_low)


def _random_1d(cols: int, acc: float, cf: float, rng: np.random.Generator) -> np.ndarray:
    n_low = round(cols * cf)
    prob = (cols / acc - n_low) / (cols - n_low)
    mask = rng.uniform(size=cols) < prob
    mask[_centre_slice(cols, n_low)] = True
    return mask


def _equispaced_1d(cols: int, acc: float, cf: float, rng: np.random.Generator) -> np.ndarray:
    n_low = round(cols * cf)
    mask = np.zeros(cols, bool)
    mask[_centre_slice(cols, n_low)] = True
    if acc > 1:
        step = (acc * (n_low - cols)) / (n_low * acc - cols)
        offset = int(rng.integers(0, max(1, round(step))))
        mask[np.round(np.arange(offset, cols - 1, step)).astype(int)] = True
    return mask


def _gaussian_2d(shape: tuple[int, int], acc: float, cf: float, rng: np.random.Generator) -> np.ndarray:
    """Variable density: points drawn without replacement with a Gaussian density (sigma = 1/4
    of the matrix), plus a fully sampled centre box of ``cf`` of each axis."""
    rows, cols = shape
    target = int(round(rows * cols / acc))
    mask = np.zeros(shape, bool)
    mask[_centre_slice(rows, max(2, round(rows * cf))), _centre_slice(cols, max(2, round(cols * cf)))] = True
    need = target - int(mask.sum())
    if need > 0:
        r = np.arange(rows) - rows // 2
        c = np.arange(cols) - cols // 2
        dens = np.exp(-0.5 * ((r[:, None] / (rows / 4)) ** 2 + (c[None, :] / (cols / 4)) ** 2))
        dens[mask] = 0.0
        picks = rng.choice(rows * cols, size=need, replace=False, p=(dens / dens.sum()).ravel())
        mask.ravel()[picks] = True
    return mask


def _poisson(shape: tuple[int, int], acc: float, cf: float, seed: int) -> np.ndarray:
    import sigpy.mri

    calib = (max(2, round(shape[0] * cf)), max(2, round(shape[1] * cf)))
    return sigpy.mri.poisson(shape, acc, calib=calib, dtype=np.complex64, seed=seed).real > 0


def make_mask(kind: str, shape: tuple[int, int], acceleration: float, center_fraction: float | None = None,
              seed: int = 0) -> np.ndarray:
    """A boolean sampling mask: ``(1, cols)`` for 1D kinds, ``(rows, cols)`` for 2D kinds."""
    if kind not in MASK_KINDS:
        raise InputError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    cf = center_fraction_for(acceleration) if center_fraction is None else float(center_fraction)
    shape = (int(shape[0]), int(shape[1]))
    _check(shape, float(acceleration), cf)
    rng = np.random.default_rng(seed)
    if kind == "random":
        return _random_1d(shape[1], float(acceleration), cf, rng)[None]
    if kind == "equispaced":
        return _equispaced_1d(shape[1], float(acceleration), cf, rng)[None]
    if kind == "gaussian2d":
        return _gaussian_2d(shape, float(acceleration), cf, rng)
    return _poisson(shape, float(acceleration), cf, seed)


def mask_acceleration(mask: np.ndarray) -> float:
    """Measured acceleration of a mask: sampled share of its own extent, inverted."""
    m = np.asarray(mask, bool)
    n = int(m.sum())
    return math.inf if n == 0 else m.size / n


def _run(line: np.ndarray) -> slice:
    c = line.shape[0] // 2
    if not line[c]:
        return slice(c, c)
    lo, hi = c, c
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < line.shape[0] - 1 and line[hi + 1]:
        hi += 1
    return slice(lo, hi + 1)


def acs_region(mask: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The fully sampled calibration box around the k-space centre: for a 1D mask every row of
    the contiguous centre columns; for a 2D mask the largest centred box that is all sampled."""
    m = np.broadcast_to(np.asarray(mask, bool), shape)
    rows, cols = _run(m[:, shape[1] // 2]), _run(m[shape[0] // 2, :])
    r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
    while r1 > r0 and c1 > c0 and not m[r0:r1, c0:c1].all():
        miss = ~m[r0:r1, c0:c1]
        edges = [(miss[0].sum(), 0), (miss[-1].sum(), 1), (miss[:, 0].sum(), 2), (miss[:, -1].sum(), 3)]
        side = max(edges)[1]  # drop the edge line missing the most points
        if side == 0:
            r0 += 1
        elif side == 1:
            r1 -= 1
        elif side == 2:
            c0 += 1
        else:
            c1 -= 1
    rows, cols = slice(r0, r1), slice(c0, c1)
    if r1 <= r0 or c1 <= c0:
        return slice(0, 0), slice(0, 0)
    return rows, cols
