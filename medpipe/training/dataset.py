"""Training datasets: an nnU-Net v2 folder or a CSV list of image,label pairs, validated up front.

nnU-Net's own loader trusts the folder and fails deep inside an epoch (or silently trains
on a label map that is shifted against its image). Here every case is checked before any
work starts — files present, one file per channel, image and label on the same grid,
label values declared in dataset.json — and the first problem is one sentence naming the
case and file.

Example:
    >>> ds = open_dataset("Dataset001_CT")          # doctest: +SKIP
    >>> validate_dataset(ds)                        # doctest: +SKIP
    >>> image, label = load_case(ds.cases[0])       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image

__all__ = ["Case", "TrainingDataset", "open_dataset", "load_nnunet_folder", "load_pair_list",
           "validate_dataset", "load_case"]


@dataclass
class Case:
    """One training case: channel files in order, and the label map."""

    name: str
    images: list[Path]
    label: Path


@dataclass
class TrainingDataset:
    """Cases plus what the dataset declares (channels, label names, modality)."""

    root: Path
    cases: list[Case]
    channels: list[str]
    labels: dict[int, str]
    modality: str = "CT"
    declared_labels: bool = True  # False for CSV lists: label names are found, not declared
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def open_dataset(path: str | Path) -> TrainingDataset:
    """An nnU-Net folder (has dataset.json) or a CSV/TXT list of ``image,label`` rows."""
    path = Path(path)
    if path.is_dir():
        return load_nnunet_folder(path)
    if path.suffix.lower() in (".csv", ".txt", ".tsv"):
        return load_pair_list(path)
    if not path.exists():
        raise InputError(f"dataset {path} does not exist")
    raise InputError(f"dataset {path} is neither an nnU-Net folder (with dataset.json) nor a .csv list of image,label pairs")


def _modality(channel_names: list[str]) -> str:
    return "CT" if channel_names and channel_names[0].strip().upper() == "CT" else "MR"


def load_nnunet_folder(folder: str | Path) -> TrainingDataset:
    """Read ``dataset.json``, ``imagesTr/CASE_XXXX<ext>`` and ``labelsTr/CASE<ext>``."""
    folder = Path(folder)
    dj = folder / "dataset.json"
    if not dj.exists():
        raise InputError(f"{folder} has no dataset.json, so it is not an nnU-Net v2 dataset folder")
    try:
        meta = json.loads(dj.read_text())
    except ValueError as exc:
        raise InputError(f"{dj} is not valid JSON: {exc}") from exc
    ch = meta.get("channel_names") or meta.get("modality")
    if not isinstance(ch, dict) or not ch:
        raise InputError(f"{dj} has no 'channel_names' mapping (e.g. {{\"0\": \"CT\"}})")
    channels = [str(ch[k]) for k in sorted(ch, key=int)]
    from medpipe.evaluation import read_label_names

    labels = read_label_names(dj)
    if 0 not in labels:
        raise InputError(f"{dj}: labels must include background with value 0")
    if sorted(labels) != list(range(len(labels))):
        raise InputError(f"{dj}: label values must be consecutive 0..{len(labels) - 1}, got {sorted(labels)}")
    ending = str(meta.get("file_ending", ".nii.gz"))
    img_dir, lab_dir = folder / "imagesTr", folder / "labelsTr"
    if not lab_dir.is_dir():
        raise InputError(f"{folder} has no labelsTr folder")
    if not img_dir.is_dir():
        raise InputError(f"{folder} has no imagesTr folder")
    cases = []
    # nnU-Net's 2D picture convention: an RGB picture is ONE file (_0000.png) holding the 3 channels
    one_file = ending.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff") and len(channels) > 1
    for lab in sorted(lab_dir.glob(f"*{ending}")):
        if lab.name.startswith("."):
            continue
        name = lab.name[: -len(ending)]
        n_files = 1 if one_file and not (img_dir / f"{name}_0001{ending}").exists() else len(channels)
        cases.append(Case(name, [img_dir / f"{name}_{c:04d}{ending}" for c in range(n_files)], lab))
    labelled = {c.name for c in cases}
    for img in sorted(img_dir.glob(f"*_0000{ending}")):
        name = img.name[: -len(f"_0000{ending}")]
        if name not in labelled:
            raise InputError(f"case {name!r}: {img} has no label map {lab_dir / (name + ending)}")
    if not cases:
        raise InputError(f"{lab_dir} holds no label maps ending in {ending}")
    n_decl = meta.get("numTraining")
    extra = {"numTraining": n_decl, "name": meta.get("name", folder.name)}
    return TrainingDataset(folder, cases, channels, labels, _modality(channels), True, extra)


def load_pair_list(path: str | Path, modality: str = "CT") -> TrainingDataset:
    """A CSV (or whitespace TXT) of ``image,label`` rows; relative paths are from its folder.

    Label names are not declared, so they are the values found in the label maps
    (``label_1``...), checked when the dataset is validated.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"dataset list {path} does not exist")
    rows = []
    text = path.read_text().splitlines()
    reader = csv.reader(text) if path.suffix.lower() == ".csv" else (line.split() for line in text)
    for i, row in enumerate(reader, 1):
        row = [c.strip() for c in row if c.strip()]
        if not row or row[0].startswith("#") or (i == 1 and row[0].lower() == "image"):
            continue
        if len(row) != 2:
            raise InputError(f"{path} line {i}: expected two columns image,label, got {len(row)}")
        rows.append([(path.parent / r) if not Path(r).is_absolute() else Path(r) for r in row])
    if not rows:
        raise InputError(f"{path} lists no image,label pairs")
    from medpipe.evaluation import case_name

    cases = [Case(case_name(lab), [img], lab) for img, lab in rows]
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"{path} lists case {dup!r} twice (case names come from the label file names)")
    return TrainingDataset(path.parent, cases, [modality], {0: "background"}, modality.upper(), False)


def _header(path: Path, case: str, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    if not path.exists():
        raise InputError(f"case {case!r}: {what} file {path} is missing")
    from medpipe.io.volumes import volume_format

    volume_format(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise InputError(f"case {case!r}: {path} could not be read as NIfTI: {exc}") from exc
        return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    image = Image.load(path)
    return image.shape, image.affine


def validate_dataset(ds: TrainingDataset, check_label_values: bool = True) -> TrainingDataset:
    """Check every case (files, grids, label values); fills label names for CSV lists."""
    found: set[int] = set()
    for case in ds.cases:
        lab_shape, lab_aff = _header(case.label, case.name, "label")
        for c, img in enumerate(case.images):
            shape, aff = _header(img, case.name, f"channel {c} image")
            if shape != lab_shape:
                raise GeometryError(f"case {case.name!r}: image {img.name} has shape {shape} but label "
                                    f"{case.label.name} has {lab_shape}")
            if not np.allclose(aff, lab_aff, atol=1e-3):
                raise GeometryError(f"case {case.name!r}: image {img.name} and label {case.label.name} have "
                                    "different affines (they are not on the same voxel grid)")
        if check_label_values:
            values = {int(v) for v in np.unique(Image.load(case.label, is_label=True).array)}
            if ds.declared_labels:
                extra = sorted(values - set(ds.labels))
                if extra:
                    raise InputError(f"case {case.name!r}: label map {case.label.name} holds values {extra} "
                                     f"that dataset.json does not declare ({sorted(ds.labels)})")
            found |= values
    if not ds.declared_labels and check_label_values:
        top = max(found | {1})
        ds.labels = {0: "background", **{v: f"label_{v}" for v in range(1, top + 1)}}
    return ds


def load_case(case: Case) -> tuple[Image, Image]:
    """The case's channels stacked as one ``Image`` and its label map."""
    chans = [Image.load(p) for p in case.images]
    label = Image.load(case.label, is_label=True)
    arr = np.concatenate([c.array.astype(np.float32, copy=False) for c in chans], axis=0)
    image = chans[0].with_geometry(arr, chans[0].affine)
    return image, label
