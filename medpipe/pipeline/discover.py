"""Which studies a ``medpipe run`` INPUT holds.

The rule, in order:

1. A file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``, ``.zip``, a k-space
   ``.h5``/``.hdf5``, or a single DICOM file) is one study.
2. A folder that directly contains DICOM files (by the ``DICM`` magic or a ``.dcm``
   suffix; a DICOMDIR counts) is one study.
3. A folder whose DICOM-holding sub-folders all hold series of the *same*
   StudyInstanceUID (one study exported as one folder per series), with no image files
   beside them, is one study; sub-folders without DICOM files (a ``ground_truth/`` or
   ``reports/`` folder) do not split it into a batch.
4. A folder whose image files are the contrasts of one case (one shared name plus a contrast
   suffix: BraTS ``_t1 _t1ce _t2 _flair`` / ``-t1n -t1c -t2w -t2f``, nnU-Net ``_0000`` ...) is one
   multi-contrast study (what the ``load_channels`` stage reads).
5. Otherwise every visible child that is an image file, a zip or a non-empty folder is
   one study (a batch). Hidden entries and other files (README, JSON) are ignored.

A folder with nothing study-like in it is an error, as are two studies that would get
the same name (``case1.nii.gz`` next to ``case1/``).
"""

from __future__ import annotations

import re
from pathlib import Path

from medpipe.errors import InputError
from medpipe.pipeline.runner import study_name_of

__all__ = ["discover_studies", "is_dicom_file"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".h5", ".hdf5")  # .h5: raw k-space
_CONTRAST = re.compile(r"^(?P<case>.+?)[_-](?P<contrast>t1|t1ce|t1c|t1n|t1w|t1gd|t2|t2w|t2f|flair|\d{4})$", re.I)


def _one_multicontrast_case(images: list[Path]) -> bool:
    """Two or more files named ``CASE<sep>CONTRAST`` with one CASE and distinct contrasts."""
    if len(images) < 2:
        return False
    stems = [next((p.name[: -len(s)] for s in _IMAGE_SUFFIXES if p.name.lower().endswith(s)), p.name) for p in images]
    found = [_CONTRAST.match(s) for s in stems]
    if not all(found):
        return False
    cases = {m.group("case") for m in found}
    contrasts = [m.group("contrast").lower() for m in found]
    return len(cases) == 1 and len(set(contrasts)) == len(contrasts)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 magic at byte 128, or a ``.dcm`` suffix."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm" or path.name.upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(_IMAGE_SUFFIXES) or name.endswith(".zip"))


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _first_dicom(folder: Path) -> Path | None:
    for p in sorted(folder.rglob("*")):
        if not any(part.startswith(".") for part in p.relative_to(folder).parts) and is_dicom_file(p):
            return p
    return None


def _study_uid(folder: Path) -> str | None:
    """The folder's StudyInstanceUID; ``""`` when it holds no DICOM, None when unreadable."""
    first = _first_dicom(folder)
    if first is None:
        return ""
    try:
        import pydicom

        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "")) or None
    except Exception:  # unreadable header: do not merge folders on a guess
        return None


def discover_studies(path: str | Path) -> list[tuple[str, Path]]:
    """(study name, study path) pairs for a ``medpipe run`` INPUT; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_file():
        if _is_image_file(path) or is_dicom_file(path):
            return [(study_name_of(path), path)]
        raise InputError(
            f"input {path} is neither a study folder nor an image file (.nii/.nii.gz/.nrrd/.mha/.zip/DICOM)"
        )
    children = _visible(path)
    if any(is_dicom_file(c) for c in children):
        return [(study_name_of(path), path)]
    folders = [c for c in children if c.is_dir() and any(_visible(c))]
    images = [c for c in children if _is_image_file(c)]
    if folders and not images:
        uids = {_study_uid(f) for f in folders} - {""}
        if len(uids) == 1 and None not in uids:
            return [(study_name_of(path), path)]
    if images and not folders and _one_multicontrast_case([i for i in images if not i.name.lower().endswith(".zip")]):
        return [(study_name_of(path), path)]
    studies = [(study_name_of(c), c) for c in [*folders, *images]]
    if not studies:
        raise InputError(f"input folder {path} holds no DICOM files, image files or study folders")
    seen: dict[str, Path] = {}
    for name, p in studies:
        if name in seen:
            raise InputError(f"input folder {path}: {seen[name].name} and {p.name} would both be study {name!r}; rename one")
        seen[name] = p
    return sorted(studies)
