"""Resampling speed on a 512x512x300 CT-sized volume: medpipe vs scipy.ndimage.zoom / MONAI.

The geometry round trip is the part of a segmentation pipeline that runs on the full-size
scan (before and after the network), so it must take seconds, not minutes, on a laptop
CPU. Measures: image to 1.5 mm (cubic), label map to 1.5 mm and back (one-hot linear),
against scipy's spline zoom (order 3 / order 1) on the same volume.

Usage: python benchmarks/resample.py [--size 512 512 300] [--skip-scipy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import markdown_table, record  # noqa: E402


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--skip-scipy", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from scipy import ndimage

    from medpipe.data.phantoms import ct_phantom
    from medpipe.transforms import resample_to_spacing, restore_geometry

    shape = tuple(args.size)
    spacing = (0.78, 0.78, 1.0)
    ct, lab = ct_phantom(shape, spacing, seed=0)
    rows = []
    t, (img15, _) = _time(lambda: resample_to_spacing(ct, 1.5))
    rows.append(["medpipe image -> 1.5 mm, cubic (Catmull-Rom)", f"{t:.2f}", "x".join(map(str, img15.shape))])
    t, (lab15, _) = _time(lambda: resample_to_spacing(lab, 1.5))
    rows.append(["medpipe labels -> 1.5 mm, one-hot linear (8 organs)", f"{t:.2f}", "x".join(map(str, lab15.shape))])
    t, back = _time(lambda: restore_geometry(lab15, lab))
    rows.append(["medpipe restore labels -> input grid, one-hot linear", f"{t:.2f}", "x".join(map(str, back.shape))])
    dice = []
    for v in range(1, 9):
        a, b = lab.array[0] == v, back.array[0] == v
        dice.append(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    if not args.skip_scipy:
        zoom = np.array(spacing) / 1.5
        t, z = _time(lambda: ndimage.zoom(ct.array[0], zoom, order=3))
        rows.append(["scipy.ndimage.zoom image, order 3 (spline)", f"{t:.2f}", "x".join(map(str, z.shape))])
        t, z = _time(lambda: ndimage.zoom(ct.array[0], zoom, order=1))
        rows.append(["scipy.ndimage.zoom image, order 1", f"{t:.2f}", "x".join(map(str, z.shape))])
    body = (
        f"Volume {'x'.join(map(str, shape))} float32 CT phantom at {spacing} mm "
        f"({np.prod(shape) / 1e6:.0f} M voxels), resampled to 1.5 mm isotropic.\n\n"
        + markdown_table(["operation", "seconds", "output shape"], rows)
        + f"\n\nLabel round trip (to 1.5 mm and back) Dice per organ: min {min(dice):.3f}, "
        f"mean {np.mean(dice):.3f}.\n"
    )
    print(body)
    if not args.no_record:
        record("resample", "Resampling (transforms.resample_to_spacing / restore_geometry)", body)


if __name__ == "__main__":
    main()
