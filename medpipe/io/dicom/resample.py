"""Put an irregular slice stack (tilted, gapped, uneven) onto a regular orthogonal grid.

Only used when the caller asks for it (``resample_irregular=True`` / ``--resample-irregular``).
Like dcm2niix's gantry-tilt correction, each slice is shifted in-plane so that its origin
lies on the line through the first slice's origin along the normal (de-shearing), then the
stack is linearly interpolated along the normal at the median step. Every such change is
returned as a sentence that ends up in ``image.meta.extra["warnings"]``.
"""

from __future__ import annotations

import numpy as np

from medpipe.io.dicom.geometry import StackGeometry

__all__ = ["resample_stack"]


def resample_stack(stack: np.ndarray, geo: StackGeometry) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``stack`` is ``(K, rows, cols[, 3])`` in sorted order; returns (stack, LPS affine, notes)."""
    from scipy import ndimage

    notes: list[str] = []
    depth = geo.depth
    keep = np.ones(len(depth), bool)
    keep[1:] = np.diff(depth) >= 0.01
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} slice(s) at duplicate positions (kept the first of each)")
    src = stack[keep]
    depth = depth[keep]
    pos = geo.positions[keep]
    dtype = src.dtype
    work = src.astype(np.float32)
    fill = float(work.min())
    dc, dr = geo.pixel_spacing
    if geo.sheared:
        rel = pos - pos[0]
        for k in range(1, len(work)):
            shift_rc = (float(rel[k] @ geo.col_cos) / dr, float(rel[k] @ geo.row_cos) / dc)
            if work.ndim == 4:
                shift_rc = (*shift_rc, 0.0)
            work[k] = ndimage.shift(work[k], shift_rc, order=1, mode="constant", cval=fill)
        notes.append(
            f"de-sheared a gantry tilt of {geo.tilt_deg:.2f} degrees onto an orthogonal grid "
            "(in-plane linear interpolation)"
        )
    step = geo.step
    n_out = int(np.floor((depth[-1] - depth[0]) / step + 0.5)) + 1
    target = depth[0] + step * np.arange(n_out)
    target = np.clip(target, depth[0], depth[-1])
    if geo.missing or not geo.uniform or len(depth) != n_out or not np.allclose(depth, target, atol=1e-3):
        idx = np.clip(np.searchsorted(depth, target, side="right") - 1, 0, max(len(depth) - 2, 0))
        nxt = np.minimum(idx + 1, len(depth) - 1)
        gap = np.where(nxt > idx, depth[nxt] - depth[idx], 1.0)
        w = np.clip((target - depth[idx]) / gap, 0.0, 1.0).astype(np.float32)
        wshape = (-1,) + (1,) * (work.ndim - 1)
        work = work[idx] * (1 - w).reshape(wshape) + work[nxt] * w.reshape(wshape)
        what = []
        if geo.missing:
            what.append(f"interpolated {geo.missing} missing slice(s)")
        if not geo.uniform:
            what.append("evened out non-uniform slice spacing")
        notes.append(
            f"{' and '.join(what) or 'resampled'}: {len(depth)} slices -> {n_out} at {step:.4g} mm along the normal "
            "(linear interpolation)"
        )
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        work = np.clip(np.rint(work), info.min, info.max).astype(dtype)
    return work, geo.regular_affine_lps(), notes
