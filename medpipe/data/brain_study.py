"""Brain MRI cases from the real brains that install offline, with a lesion, for the MRI job.

Why: the end-to-end MRI job (k-space -> CIRIM -> segmentation -> atlas registration) needs
T1 volumes with tissue and lesion truth, and raw k-space of them, and none ships with any
package. We start from the two real skull-stripped T1 brains that install from registries
(MNI152 2009a from nilearn's wheel, Colin27 ``ch2bet`` from Debian's mricron-data;
``medpipe.data.brains``) with their grey/white-matter labels, and make each case a
different subject:

* a random smooth diffeomorphic-looking warp (a small affine: +-8 deg, +-6 % scale, +-6 mm,
  plus a smooth displacement of a few mm drawn on a 24 mm control grid), so registration to
  the atlas has real work to do and no two cases share anatomy;
* a tumour-like lesion (label 3) in white matter: an irregular core that is dark on T1 like
  necrosis, inside an oedema halo of intermediate signal that spreads along white matter;
  the lesion label is the whole abnormal region (core + oedema), the part a T1 shows;
* a smooth multiplicative bias field, and (``vary``) a gamma change of the tissue contrast.

Labels: 1 grey matter, 2 white matter, 3 lesion (``BRAIN_LABELS``). Intensities are scaled so
the 99.5th percentile inside the brain is 1. ``brain_lesion_volume`` has the phantom makers'
signature, so ``medpipe data phantoms --modality brain_t1`` and the training recipe use it;
``medpipe.data.mri_brain_studies`` turns cases into multi-coil k-space studies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from medpipe.image import Image, ImageMeta

__all__ = ["BRAIN_LABELS", "BRAIN_COLORS", "BRAIN_SOURCES", "brain_centre", "brain_lesion_volume",
           "brain_t1_training_case"]

BRAIN_LABELS: dict[int, str] = {1: "grey_matter", 2: "white_matter", 3: "lesion"}
BRAIN_COLORS: dict[int, tuple[int, int, int]] = {1: (90, 140, 230), 2: (245, 245, 200), 3: (255, 60, 60)}
BRAIN_SOURCES = ("mni152", "colin27")
_SOURCE_MM = 1.5  # the sources are read once at 1.5 mm: finer than any case grid we make


@lru_cache(maxsize=2)
def _source(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 scaled to p99.5 = 1, tissue labels, affine) of a source brain at 1.5 mm."""
    from medpipe.data.brains import colin27, mni152

    t1, tissue = (mni152 if name == "mni152" else colin27)(spacing=_SOURCE_MM)
    arr = t1.array[0].astype(np.float32)
    brain = arr > 0.02 * float(arr.max())
    arr = np.where(brain, arr / float(np.percentile(arr[brain], 99.5)), 0.0).astype(np.float32)
    lab = tissue.array[0].astype(np.uint8)
    if lab.shape != arr.shape:  # colin27's labels are resampled separately: same grid by construction
        raise ValueError(f"{name}: tissue labels {lab.shape} and T1 {arr.shape} differ")
    return arr, lab, t1.affine.copy()


def _source_name(seed: int, source: str | None) -> str:
    name = source or BRAIN_SOURCES[seed % 2]
    if name not in BRAIN_SOURCES:
        raise ValueError(f"source must be one of {BRAIN_SOURCES}, got {name!r}")
    return name


def brain_centre(seed: int = 0, source: str | None = None) -> np.ndarray:
    """World (RAS mm) centroid of the source brain a case of ``seed`` is made from."""
    _, lab, aff = _source(_source_name(seed, source))
    return aff[:3, :3] @ np.argwhere(lab > 0).mean(0) + aff[:3, 3]


def _grid_world(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, shape (3, I, J, K)."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    return world.reshape(3, *shape)


def _sample(volume: np.ndarray, affine: np.ndarray, world: np.ndarray, order: int) -> np.ndarray:
    """``volume`` (on ``affine``) sampled at world points ``(3, I, J, K)``; zero outside."""
    from medpipe.registration.field import sample_world

    return sample_world(volume[None], affine, np.moveaxis(world, 0, -1), order=order)[0]


def _random_warp(world: np.ndarray, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """World points mapped into the source brain: small affine + smooth displacement (mm)."""
    from scipy.ndimage import zoom

    ang = np.deg2rad(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    lin = rot @ np.diag(rng.uniform(0.94, 1.06, 3))
    shift = rng.uniform(-6, 6, 3)
    pts = world.reshape(3, -1) - centre[:, None]
    mapped = (lin @ pts) + centre[:, None] + shift[:, None]
    shape = world.shape[1:]
    extent = np.abs(world.reshape(3, -1).max(1) - world.reshape(3, -1).min(1))
    coarse = tuple(int(max(3, np.ceil(e / 24.0) + 1)) for e in extent)  # a 24 mm control grid
    disp = rng.normal(0.0, 2.5, (3, *coarse)).astype(np.float32)
    disp = np.stack([zoom(d, [s / c for s, c in zip(shape, coarse, strict=True)], order=3) for d in disp])
    return (mapped.reshape(3, *shape) + disp[:, : shape[0], : shape[1], : shape[2]]).astype(np.float32)


def _lesion(tissue: np.ndarray, world: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(core, whole lesion) boolean masks: an irregular core inside a white-matter-seeking halo."""
    wm = tissue == 2
    brain = tissue > 0
    idx = np.argwhere(wm)
    if len(idx) == 0:
        return np.zeros(tissue.shape, bool), np.zeros(tissue.shape, bool)
    # a white-matter voxel away from the midline (|x| > 15 mm) and the brain's edge
    xs = world[0][wm]
    far = idx[np.abs(xs - np.median(xs)) > 15.0]
    c = (far if len(far) else idx)[rng.integers(len(far) if len(far) else len(idx))]
    centre = world[:, c[0], c[1], c[2]]
    rel = world - centre[:, None, None, None]
    radius = rng.uniform(9.0, 17.0)  # mm, the oedema's
    axes = rng.uniform(0.75, 1.25, 3)
    r = np.sqrt(sum((rel[i] / axes[i]) ** 2 for i in range(3)))
    # an irregular boundary: the radius modulated by a few low-order lobes
    theta = np.arctan2(rel[1], rel[0])
    phi = np.arctan2(rel[2], np.hypot(rel[0], rel[1]))
    lobes = 1.0 + sum(rng.uniform(-0.15, 0.15) * np.cos(k * theta + rng.uniform(0, 6.3)) * np.cos((k - 1) * phi)
                      for k in (2, 3, 4))
    rn = r / (radius * lobes)
    core = (rn <= rng.uniform(0.35, 0.55)) & brain
    halo = (rn <= 1.0) & brain & (wm | (rn <= 0.6))  # oedema follows white matter, grey matter only close in
    return core, core | halo


def brain_lesion_volume(
    shape: tuple[int, int, int] = (80, 96, 80),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    *,
    affine: np.ndarray | None = None,
    vary: bool = True,
    source: str | None = None,
    lesion: bool | None = None,
) -> tuple[Image, Image]:
    """A warped real T1 brain with a lesion (float32, p99.5 = 1) and its labels on one grid.

    The grid is ``shape`` at ``spacing`` mm centred on the brain (RAS axes), or ``affine``.
    ``source`` defaults to MNI152 for even seeds and Colin27 for odd ones; ``lesion``
    defaults to a lesion in 5 of 6 cases (``vary``) or always. No noise is added: k-space
    simulation adds its own, training augmentation its own."""
    name = _source_name(seed, source)
    src, src_lab, src_aff = _source(name)
    rng = np.random.default_rng([seed, 41])
    centre = brain_centre(seed, name)
    if affine is None:
        sp = np.asarray(spacing, float)
        affine = np.diag([*sp, 1.0])
        affine[:3, 3] = centre - sp * (np.asarray(shape) - 1) / 2.0
    affine = np.asarray(affine, float)
    world = _grid_world(tuple(shape), affine)
    src_pts = _random_warp(world, centre, rng) if vary else world
    t1 = _sample(src, src_aff, src_pts, order=1).astype(np.float32)
    onehot = [_sample((src_lab == v).astype(np.float32), src_aff, src_pts, order=1) for v in (0, 1, 2)]
    tissue = np.argmax(np.stack(onehot), 0).astype(np.uint8)
    tissue[t1 <= 0.02] = 0
    labels = tissue.copy()
    has_lesion = lesion if lesion is not None else (not vary or rng.uniform() > 1 / 6)
    if has_lesion:
        core, whole = _lesion(tissue, world, rng)
        wm_level = float(np.median(t1[tissue == 2])) if np.any(tissue == 2) else 1.0
        target = np.where(core, rng.uniform(0.22, 0.32), rng.uniform(0.45, 0.55)) * wm_level
        # partial volume: blend towards the lesion signal with a smoothed mask
        from scipy.ndimage import gaussian_filter

        weight = np.clip(gaussian_filter(whole.astype(np.float32), 0.6), 0, 1)
        weight = np.where(core, np.maximum(weight, 0.999), weight)
        t1 = np.where(t1 > 0, (1 - weight) * t1 + weight * target, t1).astype(np.float32)
        labels[whole] = 3
    coords = (world - world.reshape(3, -1).mean(1)[:, None, None, None]) / 100.0
    b = rng.uniform(-1, 1, 3) if vary else np.array([0.5, -0.3, 0.2])
    bias = 1.0 + 0.10 * b[0] * coords[0] + 0.08 * b[1] * coords[1] + 0.08 * b[2] * coords[2]
    gamma = rng.uniform(0.85, 1.15) if vary else 1.0
    t1 = np.where(t1 > 0, np.clip(t1, 0, None) ** gamma * bias, 0.0).astype(np.float32)
    meta = ImageMeta(modality="MR", description=f"medpipe brain case from {name} (warped, lesion)",
                     extra={"phantom_seed": int(seed), "source_brain": name, "lesion": bool(has_lesion)})
    seg_meta = ImageMeta(modality="SEG", description=f"medpipe brain case labels ({name})",
                         extra={"labels": dict(BRAIN_LABELS), "colors": {k: list(c) for k, c in BRAIN_COLORS.items()},
                                "phantom_seed": int(seed)})
    return Image(t1[None], affine.copy(), meta), Image(labels[None], affine.copy(), seg_meta, is_label=True)


def brain_t1_training_case(
    shape: tuple[int, int, int] = (80, 96, 80),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    *,
    affine: np.ndarray | None = None,
    vary: bool = True,
) -> tuple[Image, Image]:
    """A case for training the segmentation bundle: ``brain_lesion_volume`` plus what a
    reconstructed image adds: Rician noise (sigma 1-6 % of the p99.5) and a slight blur
    (0-0.8 voxel), drawn per case, so the network sees the images the MRI job feeds it."""
    from scipy.ndimage import gaussian_filter

    from medpipe.data.phantoms import _rician

    image, labels = brain_lesion_volume(shape, spacing, seed, affine=affine, vary=vary)
    rng = np.random.default_rng([seed, 43])
    arr = image.array[0]
    blur = rng.uniform(0.0, 0.8) if vary else 0.3
    if blur > 0.05:
        arr = gaussian_filter(arr, blur)
    sigma = rng.uniform(0.01, 0.06) if vary else 0.03
    arr = _rician(arr, sigma, rng)  # magnitude images: Rician, background too
    image.meta.extra.update(noise_sigma=round(float(sigma), 4), blur_voxels=round(float(blur), 3))
    return image.with_array(arr[None]), labels
