"""Read and write volume files (NIfTI, NRRD, MetaImage) as ``Image``, geometry kept exactly.

nibabel, pynrrd and SimpleITK do the byte work; this module exists because each of them
speaks a different space (NIfTI is RAS+, NRRD and MetaImage are usually LPS), puts
channels on a different axis, and fails with a different exception. Here that is all
converted once, at the file boundary, so the rest of medpipe only ever sees RAS+
channel-first ``Image`` objects and one clear ``InputError`` per bad file.

Metadata that the formats have no field for (modality, series UID, label names) travels
as a small JSON blob: a NIfTI comment extension, an NRRD key/value pair, a MetaImage
header field. Other tools ignore it; medpipe reads it back.

Example:
    >>> img = read_volume("ct.nii.gz")               # doctest: +SKIP
    >>> write_volume(img, "ct.nrrd")                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image, ImageMeta
from medpipe.io.atomic import atomic_path, check_writable

__all__ = ["read_volume", "write_volume", "volume_format", "VOLUME_SUFFIXES"]

# suffix -> format name
VOLUME_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    # one-slice pictures (medpipe.io.image2d): X-ray exports, ultrasound frames, endoscopy, histology tiles
    ".png": "picture",
    ".jpg": "picture",
    ".jpeg": "picture",
    ".bmp": "picture",
    ".tif": "picture",
    ".tiff": "picture",
}
_META_KEY = "medpipe_meta"
_NIFTI_COMMENT_ECODE = 6  # NIFTI_ECODE_COMMENT
_LPS = np.diag([-1.0, -1.0, 1.0])
_NIFTI_INTENT_LABEL = 1002


def volume_format(path: str | Path) -> str:
    """The format name for ``path``'s extension, or an InputError naming the file."""
    name = Path(path).name.lower()
    for suffix, fmt in VOLUME_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    known = ", ".join(VOLUME_SUFFIXES)
    raise InputError(
        f"{path} has an unsupported extension; medpipe reads and writes {known} "
        "(DICOM folders go through medpipe.io.dicom)"
    )


# --------------------------------------------------------------------------- reading
def read_volume(path: str | Path, is_label: bool = False) -> Image:
    """Read a NIfTI/NRRD/MetaImage file into a RAS+ channel-first ``Image``.

    ``is_label=True`` (or a file marked as a label map) keeps/gets an integer dtype.
    """
    path = Path(path)
    fmt = volume_format(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a {fmt} file (read DICOM folders with medpipe.io.dicom)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path} is not readable (check its permissions)")
    readers = {"nifti": _read_nifti, "nrrd": _read_nrrd, "metaimage": _read_metaimage, "picture": _read_picture}
    try:
        img = readers[fmt](path)
    except InputError:
        raise
    except Exception as exc:  # the libraries raise anything from ValueError to RuntimeError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} could not be read as {fmt}: {reason[:200]}") from exc
    img.meta.source_files = [str(path)]
    if is_label or img.is_label:
        img = Image(_as_label_array(img.array, path), img.affine, img.meta, is_label=True)
    return img


def _as_label_array(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer array for a label map; refuse real-valued data rather than round it silently."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    finite = np.isfinite(arr)
    if not finite.all() or not np.array_equal(arr, np.round(arr)):
        raise InputError(f"{path} holds non-integer values, so it cannot be read as a label map")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    for dt in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dt)
    raise InputError(f"{path} holds label values too large for an integer label map")


def _meta_from_json(text: str | None) -> tuple[ImageMeta, bool]:
    if not text:
        return ImageMeta(), False
    try:
        d = json.loads(text)
    except (ValueError, TypeError):
        return ImageMeta(), False
    if not isinstance(d, dict):
        return ImageMeta(), False
    extra = d.get("extra") or {}
    if isinstance(extra.get("labels"), dict):  # JSON object keys are strings; label values are ints
        with contextlib.suppress(ValueError):
            extra["labels"] = {int(k): v for k, v in extra["labels"].items()}
    meta = ImageMeta(
        modality=str(d.get("modality", "")),
        series_uid=str(d.get("series_uid", "")),
        description=str(d.get("description", "")),
        extra=extra if isinstance(extra, dict) else {},
    )
    return meta, bool(d.get("is_label", False))


def _meta_to_json(image: Image) -> str:
    extra: dict[str, Any] = {}
    for k, v in image.meta.extra.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue  # arrays and objects stay in memory only
        extra[str(k)] = v
    return json.dumps(
        {
            "modality": image.meta.modality,
            "series_uid": image.meta.series_uid,
            "description": image.meta.description,
            "is_label": image.is_label,
            "extra": extra,
        },
        separators=(",", ":"),
    )


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    nii = nib.load(str(path))
    if not isinstance(nii, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path} is not a NIfTI-1/2 image")
    hdr = nii.header
    text = None
    for ext in hdr.extensions:
        if ext.get_code() == _NIFTI_COMMENT_ECODE:
            content = ext.get_content()
            raw = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
            if raw.startswith(_META_KEY + ":"):
                text = raw[len(_META_KEY) + 1 :].rstrip("\x00")
    meta, label_flag = _meta_from_json(text)
    # nibabel moves scl_slope/scl_inter from the header onto the array proxy at load time
    slope = float(getattr(nii.dataobj, "slope", 1.0))
    inter = float(getattr(nii.dataobj, "inter", 0.0))
    scaled = slope != 1.0 or inter != 0.0
    disk_dtype = hdr.get_data_dtype()
    if scaled:
        data = np.asanyarray(nii.dataobj)
        if np.issubdtype(disk_dtype, np.integer) and data.dtype == np.float64:
            data = data.astype(np.float32)
    else:
        data = np.asanyarray(nii.dataobj.get_unscaled()) if hasattr(nii.dataobj, "get_unscaled") else nii.get_fdata()
    if not meta.description:
        meta.description = hdr["descrip"].item().decode("latin-1", "replace").strip("\x00 ")
    is_label = label_flag or int(hdr["intent_code"]) == _NIFTI_INTENT_LABEL
    if data.ndim == 3:
        arr = data[None]
    elif data.ndim == 4:
        arr = np.moveaxis(data, -1, 0)
    elif data.ndim == 5 and data.shape[3] == 1:  # vector images (x, y, z, 1, c)
        arr = np.moveaxis(data[:, :, :, 0, :], -1, 0)
    elif data.ndim == 2:
        arr = data[None, :, :, None]
    else:
        raise InputError(f"{path} holds a {data.ndim}-D array of shape {data.shape}, not a 3D volume")
    affine = np.asarray(nii.affine, dtype=np.float64)
    return Image(np.ascontiguousarray(arr), affine, meta, is_label=is_label)


def _read_nrrd(path: Path) -> Image:
    import nrrd

    data, hdr = nrrd.read(str(path))
    dirs = hdr.get("space directions")
    space = str(hdr.get("space", "")).lower()
    if dirs is None:
        raise InputError(f"{path} has no 'space directions' field, so its geometry is unknown")
    dirs = np.asarray(dirs, dtype=np.float64)
    spatial = [i for i in range(dirs.shape[0]) if np.all(np.isfinite(dirs[i]))]
    other = [i for i in range(data.ndim) if i not in spatial]
    if len(spatial) != 3 or len(other) > 1:
        raise InputError(f"{path} has {len(spatial)} spatial axes; medpipe needs a 3D volume (plus channels)")
    to_ras = _nrrd_space_to_ras(space, path)
    affine = np.eye(4)
    affine[:3, :3] = to_ras @ dirs[spatial].T
    origin = np.asarray(hdr.get("space origin", np.zeros(3)), dtype=np.float64)
    affine[:3, 3] = to_ras @ np.nan_to_num(origin)
    arr = np.moveaxis(data, other[0], 0) if other else data[None]
    meta, is_label = _meta_from_json(hdr.get(_META_KEY))
    return Image(np.ascontiguousarray(arr), affine, meta, is_label=is_label)


def _nrrd_space_to_ras(space: str, path: Path) -> np.ndarray:
    names = {
        "left-posterior-superior": "LPS", "lps": "LPS",
        "right-anterior-superior": "RAS", "ras": "RAS",
        "left-anterior-superior": "LAS", "las": "LAS",
        "scanner-xyz": "RAS", "3d-right-handed": "RAS",
    }  # fmt: skip
    code = names.get(space)
    if code is None:
        raise InputError(f"{path} uses NRRD space '{space}', which medpipe cannot map to patient RAS")
    return np.diag([1.0 if code[0] == "R" else -1.0, 1.0 if code[1] == "A" else -1.0, 1.0])


def _read_metaimage(path: Path) -> Image:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise InputError(f"{path} is a {img.GetDimension()}-D image; medpipe needs a 3D volume")
    text = img.GetMetaData(_META_KEY) if img.HasMetaDataKey(_META_KEY) else None
    meta, is_label = _meta_from_json(text)
    return Image.from_sitk(img, meta=meta, is_label=is_label)


def _read_picture(path: Path) -> Image:
    from medpipe.io.image2d import read_image2d

    return read_image2d(path, _meta_from_json)


def _write_picture(image: Image, arr: np.ndarray, tmp: Path, final: Path) -> None:
    from medpipe.io.image2d import write_image2d

    write_image2d(image, arr, tmp, final, _meta_to_json(image))


# --------------------------------------------------------------------------- writing
def write_volume(image: Image, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``image`` to ``path`` (format by extension), atomically; returns the path."""
    path = Path(path)
    fmt = volume_format(path)
    check_writable(path, overwrite)
    arr = _disk_array(image, path)
    writers = {"nifti": _write_nifti, "nrrd": _write_nrrd, "metaimage": _write_metaimage,
               "picture": lambda img, a, tmp: _write_picture(img, a, tmp, path)}
    name = path.name.lower()
    if name.endswith((".mhd", ".nhdr")):  # header + data file: stage both, move data first
        _write_detached(image, arr, path, writers[fmt])
    else:
        with atomic_path(path, overwrite=overwrite) as tmp:
            writers[fmt](image, arr, tmp)
    return path


def _disk_array(image: Image, path: Path) -> np.ndarray:
    """The array in a dtype every reader accepts (labels as the smallest fitting int)."""
    arr = image.array
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if image.is_label:
        arr = _as_label_array(arr, path)
        if arr.dtype == np.int64 or arr.dtype == np.uint64:
            lo, hi = int(arr.min()), int(arr.max())
            for dt in (np.uint8, np.uint16, np.int16, np.int32):
                if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                    return arr.astype(dt)
    elif arr.dtype == np.int64 and arr.size and np.iinfo(np.int32).min <= arr.min() and arr.max() <= np.iinfo(np.int32).max:
        return arr.astype(np.int32)
    return arr


def _write_detached(image: Image, arr: np.ndarray, path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        writer(image, arr, stage / path.name)
        files = sorted(stage.iterdir(), key=lambda p: p.name == path.name)  # header last
        for f in files:
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_nifti(image: Image, arr: np.ndarray, tmp: Path) -> None:
    import nibabel as nib

    nii = image.with_array(arr).to_nibabel()
    nii.header.set_data_dtype(arr.dtype)
    if image.meta.description:
        nii.header["descrip"] = image.meta.description.encode("latin-1", "replace")[:79]
    payload = f"{_META_KEY}:{_meta_to_json(image)}".encode()
    nii.header.extensions.append(nib.nifti1.Nifti1Extension(_NIFTI_COMMENT_ECODE, payload))
    nib.save(nii, str(tmp))


def _write_nrrd(image: Image, arr: np.ndarray, tmp: Path) -> None:
    import nrrd

    lps_dirs = (_LPS @ image.affine[:3, :3]).T  # one row per voxel axis
    origin = _LPS @ image.affine[:3, 3]
    header: dict[str, Any] = {
        "space": "left-posterior-superior",
        "space origin": origin,
        "encoding": "gzip",
        _META_KEY: _meta_to_json(image),
    }
    if image.n_channels == 1:
        data = arr[0]
        header["space directions"] = lps_dirs
        header["kinds"] = ["domain"] * 3
    else:
        data = arr
        header["space directions"] = np.vstack([np.full(3, np.nan), lps_dirs])
        header["kinds"] = ["vector", "domain", "domain", "domain"]
    detached = tmp.name.lower().endswith(".nhdr")
    nrrd.write(str(tmp), np.asarray(data), header, detached_header=detached, index_order="F")


def _write_metaimage(image: Image, arr: np.ndarray, tmp: Path) -> None:
    import SimpleITK as sitk

    img = image.with_array(arr).to_sitk()
    img.SetMetaData(_META_KEY, _meta_to_json(image))
    sitk.WriteImage(img, str(tmp), useCompression=True)
