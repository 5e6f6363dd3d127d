"""Real brain MRI that installs offline, as 2D magnitude slices for k-space simulation.

=============  ==========================================================================
source         where it comes from
=============  ==========================================================================
``phantom``    medpipe's T1 brain phantom (``medpipe.data.phantoms``), varied per seed
``mni152``     the MNI152 2009 T1 template inside nilearn's wheel (``pip install nilearn``)
``colin27``    Colin27 (``ch2``, with scalp and skull), Debian ``mricron-data``
``itk_t1``     a real 128 x 128 x 62 T1 head (2 x 2 x 3 mm), Debian ``insighttoolkit5-examples``
``itk_complex`` a complex-valued 181 x 217 brain slice with real phase, same package
``inia19``     the INIA19 macaque T1 template (0.5 mm, used as if 1 mm), ``mricron-data``
=============  ==========================================================================

Slices are laid out like an axial DICOM series (rows anterior -> posterior, columns patient
right -> left), at 1 mm in-plane, centred in a square ``matrix``; intensities are scaled so the
volume's 99.5th percentile is 1. Training draws can be augmented (rotation, scale, flip,
gamma) and also take coronal and sagittal slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.errors import InputError

__all__ = ["SOURCES", "BrainSlice", "source_path", "brain_slices", "augment_slice"]

_MRICRON = Path("/usr/share/mricron/templates")
_ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
_DEBIAN = {
    "colin27": (_MRICRON / "ch2.nii.gz", "mricron-data"),
    "inia19": (_MRICRON / "inia19-t1-brain.nii.gz", "mricron-data"),
    "itk_t1": (_ITK / "KmeansTest_T1UCharRaw.nii.gz", "insighttoolkit5-examples"),
    "itk_complex": (_ITK / "itkBrainSliceComplex.mha", "insighttoolkit5-examples"),
}
SOURCES: tuple[str, ...] = ("phantom", "mni152", "colin27", "itk_t1", "itk_complex", "inia19")


@dataclass
class BrainSlice:
    magnitude: np.ndarray  # (rows, cols) float32, 1 mm pixels
    phase: np.ndarray | None  # measured phase (radians) when the source has one
    source: str
    index: int  # slice index in the source volume
    plane: str  # axial / coronal / sagittal


def source_path(name: str) -> Path:
    """The file a source reads; a missing package gives one sentence naming what to install."""
    if name == "mni152":
        import importlib.util

        spec = importlib.util.find_spec("nilearn")
        if spec is None or spec.origin is None:
            raise InputError("the mni152 source needs nilearn's packaged template: pip install nilearn")
        path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        if not path.is_file():
            raise InputError(f"nilearn is installed but its MNI152 template {path} is missing; reinstall nilearn")
        return path
    if name not in _DEBIAN:
        raise InputError(f"unknown k-space source {name!r}; choose from {', '.join(SOURCES)}")
    path, package = _DEBIAN[name]
    if not path.is_file():
        raise InputError(f"the {name} source needs {path}: apt-get install {package}")
    return path


def _volume(name: str, seed: int) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray | None]:
    """(RAS-canonical magnitude volume, spacing, phase volume or None)."""
    import nibabel as nib

    if name == "phantom":
        from medpipe.data.phantoms import mr_brain_phantom

        img, _ = mr_brain_phantom(shape=(176, 208, 24), spacing=(1.0, 1.0, 4.0), seed=seed, vary=True)
        nii = nib.as_closest_canonical(img.to_nibabel())
        return np.asarray(nii.dataobj, np.float32), tuple(float(z) for z in nii.header.get_zooms()[:3]), None
    path = source_path(name)
    if name == "itk_complex":
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (rows, cols, 2)
        z = arr[..., 0] + 1j * arr[..., 1]
        # stored like a radiological axial slice already (rows A->P); put it in RAS (x, y, 1)
        vol = np.abs(z)[::-1, ::-1].T[:, :, None]
        ph = np.angle(z)[::-1, ::-1].T[:, :, None]
        return vol.astype(np.float32), (1.0, 1.0, 1.0), ph.astype(np.float32)
    nii = nib.as_closest_canonical(nib.load(str(path)))
    spacing = tuple(float(z) for z in nii.header.get_zooms()[:3])
    if name == "inia19":
        spacing = (1.0, 1.0, 1.0)  # a macaque brain at twice its size: anatomy variety, not a scale model
    return np.asarray(nii.dataobj, np.float32), spacing, None


def _plane(vol: np.ndarray, plane: str, k: int) -> np.ndarray:
    """Slice ``k`` of a RAS volume, displayed radiologically (rows, cols)."""
    if plane == "axial":
        return vol[::-1, ::-1, k].T  # rows A->P, cols R->L
    if plane == "coronal":
        return vol[::-1, k, ::-1].T  # rows S->I, cols R->L
    return vol[k, ::-1, ::-1].T  # sagittal: rows S->I, cols A->P


def _in_plane(spacing: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) pixel size of a slice in ``plane`` of a RAS volume with ``spacing``."""
    if plane == "axial":
        return spacing[1], spacing[0]
    if plane == "coronal":
        return spacing[2], spacing[0]
    return spacing[2], spacing[1]


def _fit(sl: np.ndarray, spacing: tuple[float, float], matrix: int) -> np.ndarray:
    from scipy import ndimage

    if any(abs(s - 1.0) > 1e-3 for s in spacing):
        sl = ndimage.zoom(sl, spacing, order=1)
    out = np.zeros((matrix, matrix), np.float32)
    r, c = sl.shape
    rs, cs = max(0, (r - matrix) // 2), max(0, (c - matrix) // 2)
    sl = sl[rs:rs + matrix, cs:cs + matrix]
    r0, c0 = (matrix - sl.shape[0]) // 2, (matrix - sl.shape[1]) // 2
    out[r0:r0 + sl.shape[0], c0:c0 + sl.shape[1]] = sl
    return out


def augment_slice(mag: np.ndarray, phase: np.ndarray | None, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Random rotation (+-12 deg), scale (0.85-1.15), shift, left-right flip and gamma (0.7-1.4)."""
    from scipy import ndimage

    angle, scale = rng.uniform(-12, 12), rng.uniform(0.85, 1.15)
    c = (np.array(mag.shape) - 1) / 2
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
    off = c - rot @ c + rng.uniform(-8, 8, 2)
    mag = ndimage.affine_transform(mag, rot, offset=off, order=1)
    if phase is not None:
        phase = ndimage.affine_transform(phase, rot, offset=off, order=0)
    if rng.uniform() < 0.5:
        mag = mag[:, ::-1]
        phase = None if phase is None else phase[:, ::-1]
    mag = np.clip(mag, 0, None) ** rng.uniform(0.7, 1.4)
    return np.ascontiguousarray(mag, dtype=np.float32), None if phase is None else np.ascontiguousarray(phase)


def brain_slices(name: str, *, matrix: int = 256, n: int | None = None, seed: int = 0, augment: bool = False,
                 planes: tuple[str, ...] = ("axial",), min_head_fraction: float = 0.12) -> list[BrainSlice]:
    """Up to ``n`` slices of a source (evenly spread over the ones with enough head in them)."""
    vol, spacing, phase = _volume(name, seed)
    hi = float(np.percentile(vol[vol > 0], 99.5)) if (vol > 0).any() else 1.0
    vol = vol / max(hi, 1e-6)
    rng = np.random.default_rng([seed, 31])
    out: list[BrainSlice] = []
    for plane in planes:
        axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
        cands = []
        for k in range(vol.shape[axis]):
            sl = _plane(vol, plane, k)
            area = float((sl > 0.1).sum()) * float(np.prod(_in_plane(spacing, plane)))
            if area / matrix**2 >= min_head_fraction:
                cands.append(k)
        out += [BrainSlice(np.empty(0), None, name, k, plane) for k in cands]
    if n is not None and len(out) > n:
        pick = np.linspace(0, len(out) - 1, n).round().astype(int)
        out = [out[i] for i in pick]
    for s in out:
        mag = _fit(_plane(vol, s.plane, s.index), _in_plane(spacing, s.plane), matrix)
        ph = None if phase is None else _fit(_plane(phase, s.plane, s.index), (1.0, 1.0), matrix)
        if augment:
            mag, ph = augment_slice(mag, ph, rng)
        s.magnitude, s.phase = mag, ph
    return out
