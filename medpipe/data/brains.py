"""Real brain MRI that installs offline: the MNI152 2009a template and the Colin27 brain.

Nothing is downloaded: the MNI152 ICBM 2009a nonlinear-symmetric T1 (skull-stripped) and
its grey/white-matter probability maps ship inside nilearn's wheel (PyPI ``nilearn``);
Colin27 (``ch2bet``, skull-stripped) and the AAL atlas drawn on it (116 regions) ship in
Debian's ``mricron-data``. Both are T1-weighted, in MNI space, 1 mm.

Tissue labels (1 grey matter, 2 white matter) are what registration is scored on:

* MNI152 — the template's own probability maps: a voxel is GM or WM when that map is the
  larger one and above 0.5;
* Colin27 — it has no tissue maps, so its skull-stripped T1 is split into CSF / GM / WM by a
  three-class k-means on intensity inside the brain mask (Colin27 is an average of 27
  scans, so its tissue contrast is clean enough for that; this is a labelling choice, stated
  wherever the numbers are reported).

Example:
    >>> t1, tissue = mni152(spacing=2.0)      # doctest: +SKIP
    >>> t1.shape, tissue.meta.extra["labels"]  # doctest: +SKIP
    ((99, 117, 95), {1: 'grey_matter', 2: 'white_matter'})
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image, ImageMeta

__all__ = ["TISSUE_LABELS", "TISSUE_COLORS", "LOBE_LABELS", "mni152", "colin27", "colin27_aal", "brain_lobes", "mricron_dir",
           "nilearn_data_dir"]

TISSUE_LABELS = {1: "grey_matter", 2: "white_matter"}
TISSUE_COLORS = {1: (160, 160, 160), 2: (245, 245, 245)}
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
_MNI = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_data_dir() -> Path:
    """Where nilearn's wheel keeps the MNI152 2009a files (InputError naming the install)."""
    try:
        import nilearn.datasets
    except ImportError as exc:
        raise InputError("the MNI152 template comes with nilearn: pip install nilearn") from exc
    folder = Path(nilearn.datasets.__file__).parent / "data"
    if not (folder / _MNI.format("t1")).is_file():
        raise InputError(f"nilearn is installed but {folder / _MNI.format('t1')} is missing; reinstall nilearn")
    return folder


def mricron_dir() -> Path:
    """Debian ``mricron-data``'s template folder (InputError naming the install)."""
    if not (MRICRON_TEMPLATES / "ch2bet.nii.gz").is_file():
        raise InputError(f"Colin27 comes with Debian's mricron-data ({MRICRON_TEMPLATES} is missing it): "
                         "apt-get install mricron-data")
    return MRICRON_TEMPLATES


def _load(path: Path, *, is_label: bool = False) -> Image:
    from medpipe.io.volumes import read_volume

    img = read_volume(path, is_label=is_label)
    return img if is_label else img.with_array(img.array.astype(np.float32))


def _to_spacing(img: Image, spacing: float | None) -> Image:
    if spacing is None:
        return img
    from medpipe.transforms import resample_to_spacing

    out, _ = resample_to_spacing(img, float(spacing), order=1)
    out.meta.extra.pop("geometry_history", None)  # a dataset, not a study: nothing to restore
    return out


def _tissue_image(labels: np.ndarray, ref: Image, description: str) -> Image:
    meta = ImageMeta(modality="SEG", description=description,
                     extra={"labels": dict(TISSUE_LABELS), "colors": {k: list(c) for k, c in TISSUE_COLORS.items()}})
    return Image(labels.astype(np.uint8)[None], ref.affine.copy(), meta, is_label=True)


def mni152(spacing: float | None = None) -> tuple[Image, Image]:
    """The MNI152 2009a T1 (float32) and its GM/WM labels, at 1 mm or resampled to ``spacing`` mm."""
    folder = nilearn_data_dir()
    t1 = _load(folder / _MNI.format("t1"))
    gm = _to_spacing(_load(folder / _MNI.format("gm")), spacing).array[0] / 255.0
    wm = _to_spacing(_load(folder / _MNI.format("wm")), spacing).array[0] / 255.0
    t1 = _to_spacing(t1, spacing)
    t1.meta = ImageMeta(modality="MR", description="MNI152 ICBM 2009a nonlinear symmetric T1 (nilearn)")
    lab = np.where((gm >= wm) & (gm > 0.5), 1, np.where((wm > gm) & (wm > 0.5), 2, 0))
    return t1, _tissue_image(lab, t1, "MNI152 2009a GM/WM (probability maps > 0.5)")


def _kmeans_1d(values: np.ndarray, k: int = 3, iters: int = 50) -> np.ndarray:
    centres = np.percentile(values, np.linspace(15, 85, k))
    for _ in range(iters):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        new = np.array([values[assign == c].mean() if np.any(assign == c) else centres[c] for c in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def colin27(spacing: float | None = None) -> tuple[Image, Image]:
    """Colin27's skull-stripped T1 (``ch2bet``) and GM/WM labels from 3-class k-means."""
    t1 = _load(mricron_dir() / "ch2bet.nii.gz")
    t1.meta = ImageMeta(modality="MR", description="Colin27 (ch2bet, Debian mricron-data)")
    arr = t1.array[0]
    brain = arr > 0
    centres = _kmeans_1d(arr[brain].astype(np.float64))
    cut_gm, cut_wm = (centres[0] + centres[1]) / 2, (centres[1] + centres[2]) / 2
    lab = np.zeros(arr.shape, np.uint8)
    lab[brain & (arr >= cut_gm) & (arr < cut_wm)] = 1
    lab[brain & (arr >= cut_wm)] = 2
    tissue = _tissue_image(lab, t1, "Colin27 GM/WM (3-class k-means of ch2bet)")
    if spacing is not None:
        tissue = _to_spacing(tissue, spacing)
    return _to_spacing(t1, spacing), tissue


def colin27_aal(spacing: float | None = None) -> Image:
    """The AAL atlas (116 regions) on Colin27's grid, with region names."""
    folder = mricron_dir()
    lab = _load(folder / "aal.nii.gz", is_label=True)
    names = {}
    for line in (folder / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    lab.meta = ImageMeta(modality="SEG", description="AAL (Colin27)", extra={"labels": names})
    return _to_spacing(lab, spacing)


LOBES = ("frontal", "parietal", "temporal", "occipital", "limbic", "deep_grey", "cerebellum")
_LOBE_OF = (  # AAL region-name prefixes -> lobe (the usual AAL lobar grouping; fusiform with temporal)
    ("frontal", ("Precentral", "Frontal", "Rolandic", "Supp_Motor", "Olfactory", "Rectus", "Paracentral")),
    ("parietal", ("Postcentral", "Parietal", "SupraMarginal", "Angular", "Precuneus")),
    ("temporal", ("Heschl", "Temporal", "Fusiform")),
    ("occipital", ("Calcarine", "Cuneus", "Lingual", "Occipital")),
    ("limbic", ("Insula", "Cingulum", "Hippocampus", "ParaHippocampal", "Amygdala")),
    ("deep_grey", ("Caudate", "Putamen", "Pallidum", "Thalamus")),
    ("cerebellum", ("Cerebelum", "Vermis")),
)
LOBE_LABELS: dict[int, str] = {i + 1 + 7 * s: f"{lobe}_{side}" for s, side in enumerate(("left", "right"))
                               for i, lobe in enumerate(LOBES)}


def brain_lobes(reference: Image, brain: np.ndarray | None = None) -> Image:
    """Lobar territories (7 per hemisphere, ``LOBE_LABELS``) on ``reference``'s grid, from AAL.

    AAL parcellates grey matter only; a lesion sits in white matter, so every voxel of
    ``brain`` (default: ``reference > 0``) takes the lobe of its nearest AAL voxel — the
    territories people report a lesion's location in. AAL is drawn on Colin27 in MNI space,
    so it lands on an MNI152 grid by world coordinates (the standard use). Midline vermis
    goes to the hemisphere its voxel lies in."""
    from scipy.ndimage import distance_transform_edt

    from medpipe.registration.field import sample_world

    aal = colin27_aal()
    names = aal.meta.extra["labels"]
    lut = np.zeros(max(names) + 1, np.uint8)
    for value, name in names.items():
        lobe = next((i for i, (_, prefixes) in enumerate(_LOBE_OF) if name.startswith(prefixes)), None)
        if lobe is not None:
            side = 1 if name.endswith("_R") else 0
            lut[value] = lobe + 1 + 7 * side
    shape = reference.shape
    ijk = np.moveaxis(np.indices(shape, dtype=np.float64), 0, -1)
    world = ijk @ reference.affine[:3, :3].T + reference.affine[:3, 3]
    picked = np.rint(sample_world(aal.array[:1].astype(np.float32), aal.affine, world, order=0)[0]).astype(np.int64)
    lobes = lut[np.clip(picked, 0, lut.size - 1)]
    x_world = world[..., 0]
    vermis = np.isin(picked, [v for v, n in names.items() if n.startswith("Vermis")])
    lobes[vermis] = np.where(x_world[vermis] > 0, 7 + 7, 7)  # RAS: +x is the patient's right
    inside = (reference.array[0] > 0) if brain is None else np.asarray(brain, bool)
    if lobes.any():
        _, nearest = distance_transform_edt(lobes == 0, return_indices=True)
        filled = lobes[tuple(nearest)]
        lobes = np.where(inside, filled, 0).astype(np.uint8)
    meta = ImageMeta(modality="SEG", description="lobar territories (AAL grouped by lobe, filled into white matter)",
                     extra={"labels": dict(LOBE_LABELS)})
    return Image(lobes[None], reference.affine.copy(), meta, is_label=True)
