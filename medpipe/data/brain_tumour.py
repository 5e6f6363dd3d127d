"""A BraTS-like multi-parametric MR phantom: skull-stripped T1, T1c, T2 and FLAIR with a glioma.

Why: brain-tumour networks (the reversible U-Net, U-Mamba on BraTS) need four co-registered
contrasts and the tumour sub-regions the challenge labels, and no such data ships with any
package. We start from the tissue layout of ``mr_brain_phantom`` (white/grey matter, CSF,
ventricles, deep grey nuclei) and add a lesion the way gliomas look on the four sequences:

* **necrotic core** (label 1, NCR): dark on T1/T1c, very bright on T2, intermediate on FLAIR;
* **peritumoral oedema** (label 2, ED): an irregular halo that spreads further along white
  matter than grey matter; mildly dark on T1, bright on T2 and brightest on FLAIR;
* **enhancing tumour** (label 3, ET): the rim around the core; bright only on T1c (gadolinium).

Labels follow the BraTS convention as nnU-Net and BraTS 2021+ store it: 0 background
(all healthy tissue), 1 NCR, 2 ED, 3 ET (BraTS <= 2020 files store ET as 4). The usual
evaluation regions are derived from them: whole tumour = {1,2,3}, tumour core = {1,3},
enhancing tumour = {3} (``brats_regions``). Like BraTS the volumes are skull-stripped (zero
outside the brain), each contrast has its own smooth bias field and Rician noise.

Example:
    >>> image, labels = brain_tumour_phantom(seed=3, vary=True)
    >>> image.n_channels, sorted(labels.meta.extra["labels"].values())
    (4, ['edema', 'enhancing_tumor', 'necrotic_core'])
"""

from __future__ import annotations

import numpy as np

from medpipe.data.phantoms import (
    _axes,
    _Blob,
    _check_shape,
    _coords,
    _jitter,
    _rician,
    _scale,
    _smooth,
    mr_brain_phantom,
)
from medpipe.image import Image, ImageMeta

__all__ = ["BRATS_LABELS", "BRATS_COLORS", "BRATS_CHANNELS", "brain_tumour_phantom", "brats_regions"]

BRATS_CHANNELS = ("T1", "T1c", "T2", "FLAIR")
BRATS_LABELS: dict[int, str] = {1: "necrotic_core", 2: "edema", 3: "enhancing_tumor"}
BRATS_COLORS: dict[int, tuple[int, int, int]] = {1: (255, 60, 60), 2: (60, 200, 90), 3: (255, 220, 40)}

# Relative signal per tissue and contrast: background, WM, GM, CSF, NCR, ED, ET (rows = T1, T1c, T2, FLAIR)
_TISSUES = ("background", "wm", "gm", "csf", "ncr", "ed", "et")
_SIGNAL = np.array([
    [0.0, 0.86, 0.58, 0.22, 0.26, 0.55, 0.52],   # T1
    [0.0, 0.88, 0.60, 0.24, 0.24, 0.58, 1.25],   # T1c: gadolinium lights up the rim
    [0.0, 0.36, 0.55, 1.00, 0.95, 0.82, 0.62],   # T2
    [0.0, 0.42, 0.56, 0.08, 0.55, 1.05, 0.72],   # FLAIR: CSF suppressed, oedema brightest
], dtype=np.float32)


def brats_regions(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The BraTS evaluation regions from a label map (1 NCR, 2 ED, 3 or 4 ET)."""
    lab = np.asarray(labels)
    et = (lab == 3) | (lab == 4)
    return {"whole_tumor": (lab > 0), "tumor_core": et | (lab == 1), "enhancing_tumor": et}


def _tumour(shape: tuple[int, int, int], tissue: np.ndarray, rng: np.random.Generator,
            vr: np.random.Generator | None) -> np.ndarray:
    """NCR/ED/ET label map: a deformed core + rim, inside an oedema halo favouring white matter."""
    brain = tissue > 0
    wm = tissue == 1
    idx = np.argwhere(wm)
    pick = rng if vr is None else vr
    # centre: a white-matter voxel in one hemisphere, away from the midline
    u = idx[:, 0] / max(shape[0] - 1, 1) * 2 - 1
    candidates = idx[np.abs(u) > 0.18] if np.any(np.abs(u) > 0.18) else idx
    c = candidates[pick.integers(len(candidates))] if vr is not None else candidates[len(candidates) // 3]
    center = tuple(float(ci / max(n - 1, 1) * 2 - 1) for ci, n in zip(c, shape, strict=True))
    r_et = _scale(vr, 0.2, 0.3)
    r_core = r_et * _scale(vr, 0.6, 0.25)
    r_ed = r_et * _scale(vr, 2.0, 0.25)
    radii = tuple(_scale(vr, 1.0, 0.2) for _ in range(3))
    angle = _jitter(vr, 0.0, 1.2)
    out = np.zeros(shape, np.uint8)

    def region(radius: float, amp: float) -> tuple[tuple[slice, ...], np.ndarray]:
        blob = _Blob(center, tuple(radius * r for r in radii), angle=angle, amp=amp).draw(rng)
        return blob.field(_coords(shape))  # the head spans [-1, 1] over the grid

    sl, r2 = region(r_ed, 0.25)
    # oedema follows white matter tracts: grey matter only near the lesion
    halo = (r2 <= 1.0) & brain[sl] & (wm[sl] | (r2 <= 0.45)) & (tissue[sl] != 3)
    out[sl][halo] = 2
    sl, r2 = region(r_et, 0.15)
    out[sl][(r2 <= 1.0) & brain[sl]] = 3
    sl, r2 = region(r_core, 0.2)
    out[sl][(r2 <= 1.0) & brain[sl]] = 1
    return out


def brain_tumour_phantom(
    shape: tuple[int, int, int] = (64, 64, 48),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    *,
    affine: np.ndarray | None = None,
    vary: bool = False,
) -> tuple[Image, Image]:
    """A 4-channel (T1, T1c, T2, FLAIR) skull-stripped head with a glioma, and its BraTS labels.

    ``seed`` drives the noise (and with ``vary=True`` also anatomy, lesion position, size
    and shape, bias fields and noise level — for training sets)."""
    shape, spacing = _check_shape(shape, spacing, 16)
    _, tissue_img = mr_brain_phantom(shape, spacing, seed, affine=affine, vary=vary)
    tissue = tissue_img.array[0]
    vr = np.random.default_rng([seed, 17]) if vary else None
    shape_rng = np.random.default_rng([seed, 19]) if vary else np.random.default_rng(31)
    noise_rng = np.random.default_rng([seed, 23])
    lesion = _tumour(shape, tissue, shape_rng, vr)
    brain = tissue > 0
    # tissue index into _SIGNAL columns: 0 bg, 1 WM, 2 GM, 3 CSF; lesion labels 1..3 -> columns 4..6
    column = tissue.astype(np.int64)
    column[lesion > 0] = 3 + lesion[lesion > 0]
    u, v, w = _axes(_coords(shape))
    channels = []
    for c in range(4):
        signal = _SIGNAL[c][column]
        signal = _smooth(signal, (0, 1, 2))  # partial volume
        b = (vr.uniform(-1, 1, 3) if vr is not None else np.array([0.6, -0.4, 0.3]) * (1 - 0.3 * c)).astype(np.float32)
        bias = 1.0 + 0.1 * b[0] * u + 0.08 * b[1] * v + 0.08 * b[2] * w
        sigma = np.float32(_scale(vr, 0.025, 0.4) if vary else 0.025)
        s = 1000.0 * signal * bias
        mag = _rician(s, sigma, noise_rng, scale=1000.0)
        channels.append(np.where(brain, mag, 0.0).astype(np.float32))  # skull-stripped like BraTS
    aff = tissue_img.affine.copy()
    meta = ImageMeta(modality="MR", description="medpipe BraTS-like brain tumour phantom (T1, T1c, T2, FLAIR)",
                     extra={"phantom_seed": int(seed), "channels": list(BRATS_CHANNELS)})
    seg_meta = ImageMeta(modality="SEG", description="medpipe brain tumour phantom labels (BraTS convention)",
                         extra={"labels": dict(BRATS_LABELS), "colors": {k: list(c) for k, c in BRATS_COLORS.items()},
                                "phantom_seed": int(seed)})
    return Image(np.stack(channels), aff, meta), Image(lesion[None], aff.copy(), seg_meta, is_label=True)
