"""Deterministic synthetic CT abdomen and T1 brain phantoms with exact ground-truth labels.

medpipe ships no patient data and downloads nothing, yet its demo, tests and benchmarks
need volumes that look like scans: a body with fat and muscle, organs with realistic
Hounsfield units, noise, partial-volume edges, and a label map that matches voxel for
voxel. Public phantoms (Shepp-Logan, XCAT) are either too simple or not redistributable,
so we build our own from smoothly deformed ellipsoids, numpy only, in well under a second.

Anatomy is laid out in voxel space as in an axial series stored the DICOM way (index I
runs right -> left, J anterior -> posterior, K inferior -> superior), which is what the
default affine ``diag(-sx, -sy, sz)`` in RAS+ says. Passing another ``affine`` moves or
tilts the grid without re-laying the anatomy.

Example:
    >>> ct, seg = ct_phantom(seed=3)
    >>> ct.meta.modality, seg.meta.extra["labels"][1]
    ('CT', 'liver')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image, ImageMeta

__all__ = ["CT_LABELS", "CT_COLORS", "MR_LABELS", "MR_COLORS", "ct_phantom", "mr_brain_phantom", "default_affine",
           "CT_REFERENCE_HALF_FOV_MM"]

CT_LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "stomach",
    6: "aorta",
    7: "vertebrae",
    8: "pancreas",
}
# RGB per label: Slicer-like hues, spread apart so neighbouring organs stay distinguishable in previews.
CT_COLORS: dict[int, tuple[int, int, int]] = {
    1: (221, 130, 101),  # liver: brownish red
    2: (157, 108, 162),  # spleen: purple
    3: (250, 200, 60),  # kidney_right: amber
    4: (235, 140, 30),  # kidney_left: orange
    5: (255, 160, 200),  # stomach: pink
    6: (220, 40, 40),  # aorta: red
    7: (241, 214, 145),  # vertebrae: bone
    8: (90, 190, 110),  # pancreas: green
}
MR_LABELS: dict[int, str] = {1: "white_matter", 2: "grey_matter", 3: "csf"}
MR_COLORS: dict[int, tuple[int, int, int]] = {1: (245, 245, 245), 2: (160, 160, 160), 3: (80, 160, 220)}

# The CT anatomy is laid out in a normalised frame whose unit is this many millimetres per
# axis (I, J, K): the body is 0.88 x 0.68 of it in-plane (an adult abdomen of about
# 335 x 260 mm) and the organs sit inside with adult sizes, whatever grid samples them.
CT_REFERENCE_HALF_FOV_MM = (190.0, 190.0, 160.0)

# Paint order: later organs win where shapes touch, so the label map never overlaps.
_CT_PAINT_ORDER = (1, 2, 5, 8, 3, 4, 6, 7)


def default_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], z0: float = -650.0) -> np.ndarray:
    """RAS+ affine of a typical axial DICOM study (LPS patient axes), table centred in-plane."""
    sx, sy, sz = (float(s) for s in spacing)
    aff = np.diag([-sx, -sy, sz, 1.0])
    # LPS origin (-(I-1)/2 sx, -(J-1)/2 sy - 20, z0) -> RAS
    aff[:3, 3] = [(shape[0] - 1) / 2 * sx, (shape[1] - 1) / 2 * sy + 20.0, z0]
    return aff


def _check_shape(shape: tuple[int, ...], spacing: tuple[float, ...], minimum: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if len(shape) != 3 or any(int(s) < minimum for s in shape):
        raise InputError(f"phantom shape must be three sizes of at least {minimum} voxels, got {tuple(shape)}")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise InputError(f"phantom spacing must be three positive millimetre values, got {tuple(spacing)}")
    return tuple(int(s) for s in shape), tuple(float(s) for s in spacing)  # type: ignore[return-value]


# ------------------------------------------------------------------------- geometry helpers
def _coords(shape: tuple[int, int, int], spacing: tuple[float, float, float] | None = None) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates per axis, 1D and increasing.

    Without ``spacing`` they span [-1, 1] over the array (the anatomy scales with the grid,
    as the MR head phantom wants); with it they are millimetres from the array centre
    divided by ``CT_REFERENCE_HALF_FOV_MM``, so the anatomy has a fixed physical size and
    the grid is a window onto it.
    """
    if spacing is None:
        return tuple(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    return tuple(((np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * sp / half).astype(np.float32)
                 for n, sp, half in zip(shape, spacing, CT_REFERENCE_HALF_FOV_MM, strict=True))


def _axes(coords: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-axis coordinates, broadcastable to the grid."""
    u, v, w = coords
    return u[:, None, None], v[None, :, None], w[None, None, :]


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """The magnitude of ``signal`` plus complex Gaussian noise of standard deviation ``sigma * scale``
    per channel (real part drawn first): what an MR magnitude image is, background included."""
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    if scale != 1.0:
        n1, n2 = n1 * scale, n2 * scale
    return np.sqrt((signal + n1) ** 2 + n2**2).astype(np.float32)


def _smooth(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 filter along ``axes`` (partial-volume blur, noise correlation)."""
    for ax in axes:
        if a.shape[ax] < 3:
            continue
        pad = [(1, 1) if i == ax else (0, 0) for i in range(a.ndim)]
        p = np.pad(a, pad, mode="edge")
        lo = [slice(None)] * a.ndim
        mid = [slice(None)] * a.ndim
        hi = [slice(None)] * a.ndim
        lo[ax], mid[ax], hi[ax] = slice(0, -2), slice(1, -1), slice(2, None)
        a = 0.25 * p[tuple(lo)] + 0.5 * p[tuple(mid)] + 0.25 * p[tuple(hi)]
    return a


@dataclass
class _Blob:
    """A smoothly deformed ellipsoid in normalised coordinates."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0  # rotation about the K axis (radians)
    amp: float = 0.12  # deformation amplitude, in units of the radii
    freqs: np.ndarray | None = None  # (3 components, 2 terms, 3 dims) spatial frequencies
    phases: np.ndarray | None = None  # (3, 2)

    def draw(self, rng: np.random.Generator) -> _Blob:
        self.freqs = rng.uniform(0.6, 2.2, size=(3, 2, 3)) * rng.choice([-1.0, 1.0], size=(3, 2, 3))
        self.phases = rng.uniform(0, 2 * np.pi, size=(3, 2))
        return self

    def field(self, coords: tuple[np.ndarray, ...]) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """Bounding-box slices and the squared normalised radius inside them (<= 1 is inside)."""
        reach = max(self.radii) * (1.0 + 2 * self.amp) + 0.02
        sl = []
        for c, axis in zip(self.center, coords, strict=True):
            lo = int(np.searchsorted(axis, c - reach, side="left"))
            hi = int(np.searchsorted(axis, c + reach, side="right"))
            sl.append(slice(max(lo - 1, 0), min(hi + 1, axis.size)))
        u, v, w = (axis[s] for axis, s in zip(coords, sl, strict=True))
        x = u[:, None, None] - np.float32(self.center[0])
        y = v[None, :, None] - np.float32(self.center[1])
        z = w[None, None, :] - np.float32(self.center[2])
        ca, sa = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        x, y = ca * x + sa * y, -sa * x + ca * y
        rx, ry, rz = (np.float32(r) for r in self.radii)
        p = (x / rx, y / ry, z / rz)  # unit-sphere coordinates
        disp = []
        for comp in range(3):
            d = 0.0
            for term in range(2):
                f = self.freqs[comp, term]  # type: ignore[index]
                d = d + np.sin(f[0] * p[0] + f[1] * p[1] + f[2] * p[2] + self.phases[comp, term])  # type: ignore[index]
            disp.append(np.float32(self.amp / 2) * d)
        r2 = (p[0] + disp[0]) ** 2 + (p[1] + disp[1]) ** 2 + (p[2] + disp[2]) ** 2
        return tuple(sl), r2.astype(np.float32, copy=False)  # type: ignore[return-value]


def _jitter(rng: np.random.Generator | None, value: float, spread: float) -> float:
    return value if rng is None else float(value + rng.uniform(-spread, spread))


def _scale(rng: np.random.Generator | None, value: float, rel: float) -> float:
    return value if rng is None else float(value * (1.0 + rng.uniform(-rel, rel)))


# ------------------------------------------------------------------------------ CT phantom
def _ct_organs(vr: np.random.Generator | None) -> dict[int, _Blob]:
    """Organ ellipsoids (centre, radii in normalised coords); ``vr`` jitters them when varying."""

    def blob(c, r, angle=0.0, amp=0.12) -> _Blob:
        c = tuple(_jitter(vr, ci, 0.04) for ci in c)
        r = tuple(_scale(vr, ri, 0.12) for ri in r)
        return _Blob(c, r, _jitter(vr, angle, 0.15), _scale(vr, amp, 0.3))

    return {
        1: blob((-0.36, 0.0, 0.32), (0.345, 0.36, 0.53), angle=0.2, amp=0.16),  # ~1.5 l
        2: blob((0.52, 0.26, 0.40), (0.16, 0.20, 0.26), angle=-0.5, amp=0.14),
        3: blob((-0.34, 0.34, -0.24), (0.12, 0.15, 0.30), angle=0.3, amp=0.08),
        4: blob((0.34, 0.34, -0.14), (0.12, 0.15, 0.30), angle=-0.3, amp=0.08),
        5: blob((0.30, -0.26, 0.45), (0.25, 0.17, 0.26), angle=-0.4, amp=0.18),
        8: blob((0.12, 0.07, 0.02), (0.32, 0.09, 0.12), angle=-0.2, amp=0.12),  # body ~13 mm AP, as adults
    }


def ct_phantom(
    shape: tuple[int, int, int] = (128, 112, 104),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    seed: int = 0,
    *,
    affine: np.ndarray | None = None,
    vary: bool = False,
) -> tuple[Image, Image]:
    """An abdomen-like CT (float32 HU) and its organ label map (uint8, ``CT_LABELS``).

    The anatomy has adult physical sizes (body about 335 x 260 mm, liver about 1.5 l) centred
    on the array, so ``shape`` x ``spacing`` is the field of view: the default 384 x 336 x
    312 mm holds the whole abdomen; a smaller grid shows the middle of it. Choose the voxel
    size, not the shape, to make a small volume of the whole body.

    ``seed`` always drives the noise; with ``vary=True`` it also draws body size, organ
    positions, sizes and shapes and the noise level (for training sets).
    """
    shape, spacing = _check_shape(shape, spacing, 8)
    vr = np.random.default_rng([seed, 7]) if vary else None
    shape_rng = np.random.default_rng([seed, 11]) if vary else np.random.default_rng(20240601)
    noise_rng = np.random.default_rng([seed, 13])
    coords = _coords(shape, spacing)
    u, v, w = _axes(coords)

    # Body: an elliptic cylinder whose size drifts a little along K; fat rim, muscle wall.
    ax = _scale(vr, 0.88, 0.06) * (1.0 + 0.04 * np.cos(1.3 * w))
    ay = _scale(vr, 0.68, 0.08) * (1.0 + 0.03 * np.sin(1.1 * w + 0.5))
    cy = _jitter(vr, 0.04, 0.03)
    rb = np.sqrt((u / ax) ** 2 + ((v - cy) / ay) ** 2).astype(np.float32)  # 1 = skin
    fat_rim = _scale(vr, 0.9, 0.03)
    body = rb <= 1.0
    interior = rb <= fat_rim - 0.06

    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[(rb <= fat_rim) & ~interior] = 45.0  # abdominal wall muscle
    # Visceral content: fat and bowel mixed as a smooth texture between about -90 and +30 HU.
    tex = np.sin(7.0 * u + 2.0) * np.sin(6.0 * v + 1.0) * np.sin(5.0 * w) + 0.5 * np.sin(11.0 * u - 9.0 * v + 3.0 * w)
    visceral = (-30.0 + 45.0 * tex).astype(np.float32)
    hu[interior] = np.broadcast_to(visceral, shape)[interior]
    # Paraspinal muscles.
    for side in (-1.0, 1.0):
        musc = ((u - side * 0.2) / 0.13) ** 2 + ((v - 0.58) / 0.1) ** 2 <= 1.0
        hu[np.broadcast_to(musc, shape) & body] = 55.0

    labels = np.zeros(shape, np.uint8)
    organ_hu = np.zeros(shape, np.float32)
    blobs = _ct_organs(vr)
    for lab in _CT_PAINT_ORDER:
        if lab in blobs:
            blob = blobs[lab].draw(shape_rng)
            sl, r2 = blob.field(coords)
            inside = (r2 <= 1.0) & interior[sl]
            labels[sl][inside] = lab
            organ_hu[sl][inside] = _organ_hu(lab, r2, blob, coords[1][sl[1]])[inside]
        elif lab == 6:
            _paint_aorta(labels, organ_hu, interior, u, v, vr)
        elif lab == 7:
            _paint_vertebrae(labels, organ_hu, body, hu, u, v, w, vr)
    hu = np.where(labels > 0, organ_hu, hu)

    # Partial-volume blur, then correlated noise of the requested strength.
    hu = _smooth(hu, (0, 1, 2))
    sigma = _scale(vr, 14.0, 0.4) if vary else 14.0
    noise = noise_rng.standard_normal(shape, dtype=np.float32)
    noise = _smooth(noise, (0, 1)) * np.float32(sigma / 0.375)  # [1,2,1]^2 keeps 0.375 of the std
    hu = np.maximum(hu + noise, -1024.0).astype(np.float32)

    aff = default_affine(shape, spacing) if affine is None else np.asarray(affine, dtype=np.float64)
    names = dict(CT_LABELS)
    ct_meta = ImageMeta(modality="CT", description="medpipe CT abdomen phantom", extra={"phantom_seed": int(seed)})
    seg_meta = ImageMeta(
        modality="SEG", description="medpipe CT abdomen phantom labels",
        extra={"labels": names, "colors": {k: list(c) for k, c in CT_COLORS.items()}, "phantom_seed": int(seed)},
    )  # fmt: skip
    return Image(hu[None], aff, ct_meta), Image(labels[None], aff.copy(), seg_meta, is_label=True)


def _organ_hu(lab: int, r2: np.ndarray, blob: _Blob, v_coords: np.ndarray) -> np.ndarray:
    """Hounsfield units inside an organ (with internal structure where the organ has one)."""
    base = {1: 60.0, 2: 50.0, 3: 150.0, 4: 150.0, 5: 40.0, 8: 45.0}[lab]
    out = np.full(r2.shape, base, np.float32)
    if lab in (3, 4):  # cortex bright, medulla and renal sinus darker
        out[r2 < 0.45] = 105.0
        out[r2 < 0.12] = 15.0
    elif lab == 5:  # wall, then fluid below and gas above (supine: anterior is up)
        v = v_coords[None, :, None]
        lumen = r2 < 0.7
        gas = lumen & (v < blob.center[1] - 0.25 * blob.radii[1])
        out[lumen] = 15.0
        out[gas] = -950.0
    return out


def _paint_aorta(labels, organ_hu, interior, u, v, vr) -> None:
    cu, cv, rad = _jitter(vr, 0.07, 0.03), _jitter(vr, 0.16, 0.02), _scale(vr, 0.06, 0.15)  # ~23 mm across
    tube = ((u - cu) ** 2 + (v - cv) ** 2 <= rad**2) & interior
    labels[tube] = 6
    organ_hu[tube] = 200.0  # arterial contrast


def _paint_vertebrae(labels, organ_hu, body, hu, u, v, w, vr) -> None:
    """Vertebral bodies + spinous processes in a column, intervertebral discs unlabelled."""
    cv, rad = _jitter(vr, 0.40, 0.02), _scale(vr, 0.12, 0.1)  # lumbar bodies ~45 mm across
    period, phase = _scale(vr, 0.23, 0.1), _jitter(vr, 0.0, 0.2)  # ~37 mm per level (bone + disc)
    in_level = np.abs(((w - phase) / period) % 1.0 - 0.5) < 0.39  # bone; the rest is disc
    dist = np.sqrt(u**2 + ((v - cv) / 1.1) ** 2)
    column = dist <= rad
    spinous = (np.abs(u) <= 0.035) & (v > cv + rad * 0.9) & (v < cv + rad + 0.12)
    lamina = (np.abs(np.abs(u) - 0.07) <= 0.03) & (v > cv + rad * 0.8) & (v < cv + rad + 0.05)
    bone = ((column | spinous | lamina) & in_level) & body
    disc = np.broadcast_to(column & ~in_level, labels.shape) & body
    hu[disc] = 80.0
    labels[disc] = 0
    labels[bone] = 7
    rim = np.broadcast_to((dist > rad * 0.78) | spinous | lamina, labels.shape)
    organ_hu[bone] = np.where(rim[bone], 1000.0, 550.0)  # cortical shell, cancellous core


# --------------------------------------------------------------------------- MR phantom
def mr_brain_phantom(
    shape: tuple[int, int, int] = (64, 64, 48),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5),
    seed: int = 0,
    *,
    affine: np.ndarray | None = None,
    vary: bool = False,
) -> tuple[Image, Image]:
    """A T1-weighted-looking head (float32) and its tissue labels (uint8, ``MR_LABELS``).

    Scalp, skull, CSF, folded cortex, white matter, deep grey nuclei and ventricles, with a
    smooth multiplicative bias field and Rician noise.
    """
    shape, spacing = _check_shape(shape, spacing, 8)
    vr = np.random.default_rng([seed, 7]) if vary else None
    noise_rng = np.random.default_rng([seed, 13])
    coords = _coords(shape)
    u, v, w = _axes(coords)
    head = _Blob((0.0, _jitter(vr, 0.0, 0.03), -0.05), (_scale(vr, 0.74, 0.06), _scale(vr, 0.9, 0.05), 0.86), amp=0.03)
    head.draw(np.random.default_rng([seed, 11]) if vary else np.random.default_rng(7))
    sl, r2 = head.field(coords)
    r = np.full(shape, 9.0, np.float32)
    r[sl] = np.sqrt(r2)

    # Cortex folding: the grey/white boundary radius oscillates with direction (gyri).
    theta = np.arctan2(v, u)
    phi = np.arctan2(w + 0.05, np.sqrt(u**2 + v**2) + 1e-6)
    fold = 0.045 * np.sin(9 * theta + _jitter(vr, 0.0, 3.0)) * np.cos(7 * phi) + 0.02 * np.sin(17 * theta)
    wm_edge = 0.66 + fold

    t1 = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    t1[r <= 1.0] = 0.78  # scalp fat: bright in T1
    t1[r <= 0.93] = 0.06  # skull: dark
    t1[r <= 0.86] = 0.22  # CSF
    labels[r <= 0.86] = 3
    brain = r <= 0.81
    wm = r <= wm_edge
    t1[brain] = 0.58
    labels[brain] = 2
    t1[wm] = 0.86
    labels[wm] = 1
    for side in (-1.0, 1.0):  # deep grey nuclei (thalamus / basal ganglia)
        deep = ((u - side * 0.2) / 0.1) ** 2 + ((v - 0.05) / 0.13) ** 2 + (w / 0.12) ** 2 <= 1.0
        t1[deep] = 0.62
        labels[deep] = 2
    vsize = _scale(vr, 1.0, 0.3)
    for side in (-1.0, 1.0):  # lateral ventricles
        vent = ((u - side * 0.09) / (0.06 * vsize)) ** 2 + ((v + 0.02) / 0.26) ** 2 + ((w - 0.12) / (0.13 * vsize)) ** 2 <= 1.0
        t1[vent] = 0.2
        labels[vent] = 3

    t1 = _smooth(t1, (0, 1, 2))
    # Bias field: smooth multiplicative inhomogeneity of about +-15 %.
    b = (vr.uniform(-1, 1, 4) if vr is not None else np.array([0.8, -0.5, 0.4, 0.3])).astype(np.float32)
    bias = 1.0 + 0.1 * b[0] * u + 0.08 * b[1] * v + 0.08 * b[2] * w + 0.06 * b[3] * u * w
    signal = 1000.0 * t1 * bias
    sigma = np.float32(_scale(vr, 22.0, 0.4) if vary else 22.0)
    mag = _rician(signal, sigma, noise_rng)

    aff = default_affine(shape, spacing, z0=-40.0) if affine is None else np.asarray(affine, dtype=np.float64)
    mr_meta = ImageMeta(modality="MR", description="medpipe T1 brain phantom", extra={"phantom_seed": int(seed)})
    seg_meta = ImageMeta(
        modality="SEG", description="medpipe T1 brain phantom labels",
        extra={"labels": dict(MR_LABELS), "colors": {k: list(c) for k, c in MR_COLORS.items()}, "phantom_seed": int(seed)},
    )  # fmt: skip
    return Image(mag[None], aff, mr_meta), Image(labels[None], aff.copy(), seg_meta, is_label=True)
