"""Dataset fingerprint: the facts about a dataset that nnU-Net's planning rules need.

Spacings and shapes (in the RAS orientation training uses), and for CT the foreground
intensity distribution: voxels inside the label map, sampled per case, whose 0.5/99.5
percentiles become the clip window and whose mean/std the z-score (nnU-Net's
``CTNormalization``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medpipe.training.dataset import TrainingDataset, load_case

__all__ = ["Fingerprint", "compute_fingerprint", "ras_spacing_shape"]


@dataclass
class Fingerprint:
    """Per-case spacings/shapes (RAS axis order) and foreground intensity statistics."""

    spacings: list[list[float]]
    shapes: list[list[int]]
    modality: str
    intensity: dict[str, float]
    n_cases: int

    def to_dict(self) -> dict:
        return asdict(self)


def ras_spacing_shape(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[list[float], list[int]]:
    """Spacing and shape along R, A, S (what ``reorient(img, "RAS")`` will produce)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    out_sp, out_shape = [0.0] * 3, [0] * 3
    for src, (dst, _flip) in enumerate(ornt):
        out_sp[int(dst)] = float(sp[src])
        out_shape[int(dst)] = int(shape[src])
    return out_sp, out_shape


def compute_fingerprint(ds: TrainingDataset, samples_per_case: int = 10_000, seed: int = 0) -> Fingerprint:
    """Read every case once; intensities are sampled from label > 0 voxels of channel 0."""
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    for case in ds.cases:
        image, label = load_case(case)
        if image.n_channels != len(ds.channels):
            from medpipe.errors import InputError

            kind = " (an RGB picture?)" if image.n_channels == 3 else ""
            raise InputError(f"case {case.name!r}: {case.images[0].name} holds {image.n_channels} channel(s){kind} "
                             f"but the dataset declares {len(ds.channels)} ({', '.join(ds.channels)})")
        sp, sh = ras_spacing_shape(image.affine, image.shape)
        spacings.append(sp)
        shapes.append(sh)
        fg = image.array[0][label.array[0] > 0]
        if fg.size:
            samples.append(rng.choice(fg, size=min(samples_per_case, fg.size), replace=False))
    vals = np.concatenate(samples).astype(np.float64) if samples else np.zeros(1)
    lo, hi = np.percentile(vals, [0.5, 99.5])
    intensity = {
        "percentile_00_5": float(lo),
        "percentile_99_5": float(hi),
        "mean": float(vals.mean()),
        "std": float(vals.std()),
        "clipped_mean": float(np.clip(vals, lo, hi).mean()),
        "clipped_std": float(np.clip(vals, lo, hi).std()),
    }
    return Fingerprint(spacings, shapes, ds.modality, intensity, len(ds.cases))
