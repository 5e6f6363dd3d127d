"""Write an ``Image`` as a realistic DICOM series (and a small example study).

Our DICOM reader is only as good as the series it is tested on, and hospital series come
in every shape: oblique, flipped, tilted gantries, missing slices, shuffled files, odd
names, compressed transfer syntaxes, multi-frame objects, MONOCHROME1. Anonymised real
studies cannot ship with the project and tools like highdicom build derived objects
(SEG, SR) rather than acquisition series, so we write our own series writer on top of
pydicom with every one of those variations as a switch, and geometry derived exactly
from the ``Image`` affine (RAS+ converted to DICOM's LPS here, at the boundary).

The pixel rows of slice ``k`` run along the image's ``J`` axis and the columns along
``I``: the first ``ImageOrientationPatient`` vector is the direction of ``I`` and
``PixelSpacing`` is ``[spacing_J, spacing_I]`` (row spacing first).

Example:
    >>> from medpipe.data.phantoms import ct_phantom
    >>> ct, _ = ct_phantom(shape=(32, 32, 8))
    >>> files = write_dicom_series(ct, "/tmp/ct_series")      # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.io.atomic import atomic_path

__all__ = ["write_dicom_series", "write_dicom_study", "dicom_rescale"]

MANUFACTURER = "medpipe phantom"
_LPS = np.diag([-1.0, -1.0, 1.0])
_NAMINGS = ("numbered", "uid", "noext")


# --------------------------------------------------------------------------- small helpers
def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _ds(x: float) -> float:
    """The float a DS string of ``x`` reads back as (DICOM decimal strings hold 16 chars)."""
    from pydicom.valuerep import format_number_as_ds

    return float(format_number_as_ds(float(x)))


def _fmt(values: Iterable[float]) -> list[str]:
    from pydicom.valuerep import format_number_as_ds

    return [format_number_as_ds(float(v)) for v in values]


def _study_datetime(seed: int, series_number: int) -> tuple[str, str, str]:
    day = _dt.date(2024, 1, 15) + _dt.timedelta(days=int(seed) % 365)
    t = _dt.datetime(2000, 1, 1, 9, 30) + _dt.timedelta(minutes=2 * int(series_number))
    return day.strftime("%Y%m%d"), "093000", t.strftime("%H%M%S")


# --------------------------------------------------------------------------- pixel values
def dicom_rescale(
    values: np.ndarray, modality: str, rescale: str | tuple[float, float] = "auto", *, monochrome1: bool = False
) -> tuple[np.ndarray, float, float]:
    """Stored integers plus (slope, intercept) so that ``slope * stored + intercept`` = values.

    ``"auto"``: integer-valued data are stored exactly (CT as int16 with intercept -1024,
    others as uint16/int16 with intercept 0); real-valued data get a slope != 1 spanning the
    16-bit range (error at most slope / 2). ``"none"``: integers only, slope 1, intercept 0.
    A ``(slope, intercept)`` tuple is used as given. ``monochrome1`` inverts the stored
    values and negates the slope, so the modality values stay the same.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise InputError("the image holds NaN or infinite values, which DICOM cannot store")
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    integral = bool(np.all(v == np.round(v)))
    if isinstance(rescale, tuple):
        slope, inter = _ds(rescale[0]), _ds(rescale[1])
        if slope == 0:
            raise InputError("a DICOM rescale slope of 0 cannot represent the image")
    elif rescale == "none":
        if not integral:
            raise InputError("rescale='none' needs integer pixel values; use rescale='auto' for real-valued images")
        slope, inter = 1.0, 0.0
    elif rescale == "auto":
        slope, inter = _auto_rescale(lo, hi, integral, modality, signed=modality == "CT" or monochrome1)
    else:
        raise InputError(f"rescale must be 'auto', 'none' or (slope, intercept), got {rescale!r}")
    if monochrome1:  # stored' = -1 - stored  =>  value = -slope * stored' + (intercept - slope)
        slope, inter = -slope, _ds(inter - slope)
    stored = np.round((v - inter) / slope)
    signed = modality == "CT" or monochrome1 or (stored.size > 0 and stored.min() < 0)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.size and (stored.min() < info.min or stored.max() > info.max):
        raise InputError(
            f"values {lo:g}..{hi:g} do not fit 16-bit DICOM pixels with slope {slope:g} and intercept {inter:g}"
        )
    return stored.astype(dtype), slope, inter


def _auto_rescale(lo: float, hi: float, integral: bool, modality: str, signed: bool) -> tuple[float, float]:
    """Exact integers where possible, else a slope spanning most of the 16-bit range."""
    if integral:
        for inter in (-1024.0, 0.0) if modality == "CT" else (0.0,):
            if lo - inter >= -32768 and hi - inter <= 32767:
                return 1.0, inter
        if not signed and lo >= 0 and hi <= 65535:
            return 1.0, 0.0
    if hi == lo:
        return 1.0, _ds(lo)
    slope = _ds(float(f"{(hi - lo) / 65000.0:.4g}"))
    if signed or lo < 0:  # int16 around the middle of the range
        return slope, _ds(float(f"{(hi + lo) / 2:.6g}"))
    return slope, _ds(float(f"{lo:.6g}"))  # uint16 from the minimum up


# --------------------------------------------------------------------------- geometry
def _slice_geometry(image: Image, gantry_tilt_deg: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(row and column direction cosines in LPS, IPP per slice in LPS, PixelSpacing)."""
    lps = _LPS @ image.affine[:3, :3]
    origin = _LPS @ image.affine[:3, 3]
    sp = np.linalg.norm(lps, axis=0)
    row_dir, col_dir = lps[:, 0] / sp[0], lps[:, 1] / sp[1]
    if abs(float(row_dir @ col_dir)) > 1e-6:
        raise GeometryError(
            "the image's I and J axes are not perpendicular, so its slices cannot be written as DICOM "
            "(ImageOrientationPatient needs orthogonal row and column directions)"
        )
    k = np.arange(image.shape[2], dtype=np.float64)
    ipp = origin[None, :] + k[:, None] * lps[:, 2][None, :]
    if gantry_tilt_deg:
        # A tilted gantry keeps IOP axial but moves each slice along the column direction.
        shift = np.tan(np.radians(gantry_tilt_deg)) * sp[2]
        ipp = ipp + k[:, None] * shift * col_dir[None, :]
    return np.stack([row_dir, col_dir]), ipp, [float(sp[1]), float(sp[0])]


def _image_type(row_col: np.ndarray, modality: str) -> list[str]:
    normal = np.cross(row_col[0], row_col[1])
    axial = abs(normal[2]) > 0.9
    if axial:
        return ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY", "M", "ND"]
    return ["DERIVED", "SECONDARY", "REFORMATTED"] if modality == "CT" else ["ORIGINAL", "PRIMARY", "M", "ND"]


# --------------------------------------------------------------------------- datasets
def _base_dataset(info: dict[str, Any], sop_class: str, sop_uid: str, transfer_syntax: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDPIPE_0_1"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = info["patient_name"]
    ds.PatientID = info["patient_id"]
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = info["study_uid"]
    ds.SeriesInstanceUID = info["series_uid"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = info["date"]
    ds.StudyTime = info["study_time"]
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = info["series_time"]
    ds.StudyID = "1"
    ds.AccessionNumber = f"ACC{info['seed']:06d}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = info.get("study_description", "medpipe phantom study")
    ds.SeriesDescription = info["series_description"]
    ds.SeriesNumber = info["series_number"]
    ds.Modality = info["modality"]
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.InstitutionName = "medpipe"
    ds.SoftwareVersions = "medpipe 0.1"
    return ds


def _add_pixel_module(ds, rows: int, cols: int, stored_dtype, monochrome1: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if np.dtype(stored_dtype) == np.int16 else 0


def _add_modality_tags(ds, modality: str) -> None:
    if modality == "CT":
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "ABDOMEN"
    elif modality == "MR":
        ds.MagneticFieldStrength = "3"
        ds.RepetitionTime = "8.1"
        ds.EchoTime = "3.7"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.MRAcquisitionType = "3D"
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "HEAD"


def write_dicom_series(
    image: Image,
    folder: str | Path,
    *,
    modality: str | None = None,
    series_description: str = "",
    series_number: int = 1,
    patient_id: str = "PHANTOM001",
    patient_name: str = "Phantom^Abdomen",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    seed: int = 0,
    gantry_tilt_deg: float = 0.0,
    drop_slices: Sequence[int] = (),
    shuffle: bool = False,
    naming: str = "numbered",
    multiframe: bool = False,
    transfer_syntax: str | None = None,
    monochrome1: bool = False,
    rescale: str | tuple[float, float] = "auto",
) -> list[Path]:
    """Write one channel of ``image`` as a DICOM series, slices along K; returns the files written.

    UIDs are deterministic in ``seed`` (and the study/series identity), so the same call
    writes the same series. ``drop_slices`` leaves gaps, ``shuffle`` writes files in random
    order under random names, ``gantry_tilt_deg`` shears slice positions like a tilted CT,
    ``multiframe`` writes one Enhanced CT/MR object, ``transfer_syntax`` compresses.
    """
    from pydicom.uid import ExplicitVRLittleEndian

    if image.n_channels != 1:
        raise InputError(f"write_dicom_series writes one channel, the image has {image.n_channels}")
    if naming not in _NAMINGS:
        raise InputError(f"naming must be one of {', '.join(_NAMINGS)}, got {naming!r}")
    modality = (modality or image.meta.modality or "OT").upper()
    n_slices = image.shape[2]
    dropped = {int(k) for k in drop_slices}
    if any(k < 0 or k >= n_slices for k in dropped):
        raise InputError(f"drop_slices must be slice indices in 0..{n_slices - 1}, got {sorted(dropped)}")
    keep = [k for k in range(n_slices) if k not in dropped]
    if not keep:
        raise InputError("drop_slices removes every slice, so there is no series left to write")
    if transfer_syntax is not None:
        _check_encoder(transfer_syntax, image.shape)

    row_col, ipp, pixel_spacing = _slice_geometry(image, gantry_tilt_deg)
    values = image.array[0][:, :, keep]
    stored, slope, inter = dicom_rescale(values, modality, rescale, monochrome1=monochrome1)
    stored_full = np.zeros(image.shape, stored.dtype)
    stored_full[:, :, keep] = stored

    study_uid = study_uid or _uid("study", patient_id, seed)
    series_uid = series_uid or _uid("series", study_uid, series_number, series_description, seed)
    for_uid = frame_of_reference_uid or _uid("frame-of-reference", study_uid, seed)
    date, study_time, series_time = _study_datetime(seed, series_number)
    info = dict(
        patient_id=patient_id, patient_name=patient_name, study_uid=study_uid, series_uid=series_uid,
        date=date, study_time=study_time, series_time=series_time, seed=int(seed),
        series_description=series_description or image.meta.description or f"{modality} series",
        series_number=int(series_number), modality=modality,
    )  # fmt: skip
    geo = dict(
        row_col=row_col, ipp=ipp, pixel_spacing=pixel_spacing, slope=slope, inter=inter,
        thickness=float(image.spacing[2]), for_uid=for_uid, tilt=float(gantry_tilt_deg),
        window=_window(values, modality),
    )  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), int(series_number), 99])
    ts = ExplicitVRLittleEndian

    if multiframe:
        sop_uid = _uid("instance", series_uid, "multiframe")
        ds = _multiframe_dataset(info, geo, stored_full, keep, sop_uid, monochrome1)
        name = _file_name(naming, shuffle, rng, 1, sop_uid)
        return [_save(ds, folder / name, transfer_syntax, ts)]

    order = list(keep)
    if shuffle:
        order = [order[i] for i in rng.permutation(len(order))]
    written = []
    for k in order:
        sop_uid = _uid("instance", series_uid, k)
        ds = _slice_dataset(info, geo, stored_full[:, :, k].T, k, sop_uid, monochrome1, ts)
        written.append(_save(ds, folder / _file_name(naming, shuffle, rng, k + 1, sop_uid), transfer_syntax, ts))
    return written


def _window(values: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return 40.0, 400.0
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    return float(f"{(lo + hi) / 2:.6g}"), float(f"{max(hi - lo, 1.0):.6g}")


def _file_name(naming: str, shuffle: bool, rng: np.random.Generator, number: int, sop_uid: str) -> str:
    ext = "" if naming == "noext" else ".dcm"
    if shuffle:
        return rng.bytes(8).hex().upper() + ext
    if naming == "uid":
        return sop_uid + ext
    return f"IM{number:05d}{ext}"


def _slice_dataset(info, geo, pixels: np.ndarray, k: int, sop_uid: str, monochrome1: bool, ts):
    from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(info["modality"], SecondaryCaptureImageStorage)
    ds = _base_dataset(info, sop_class, sop_uid, ts)
    ds.ImageType = _image_type(geo["row_col"], info["modality"])
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    _add_modality_tags(ds, info["modality"])
    ds.FrameOfReferenceUID = geo["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = _fmt(geo["ipp"][k])
    ds.ImageOrientationPatient = _fmt(geo["row_col"].ravel())
    normal = np.cross(geo["row_col"][0], geo["row_col"][1])
    ds.SliceLocation = _fmt([float(geo["ipp"][k] @ normal)])[0]
    ds.PixelSpacing = _fmt(geo["pixel_spacing"])
    ds.SliceThickness = _fmt([geo["thickness"]])[0]
    ds.SpacingBetweenSlices = _fmt([geo["thickness"]])[0]
    if info["modality"] == "CT":
        ds.GantryDetectorTilt = _fmt([geo["tilt"]])[0]
    _add_pixel_module(ds, pixels.shape[0], pixels.shape[1], pixels.dtype, monochrome1)
    if info["modality"] == "CT" or (geo["slope"], geo["inter"]) != (1.0, 0.0):
        ds.RescaleIntercept = _fmt([geo["inter"]])[0]
        ds.RescaleSlope = _fmt([geo["slope"]])[0]
        ds.RescaleType = "HU" if info["modality"] == "CT" else "US"
    ds.WindowCenter = _fmt([geo["window"][0]])[0]
    ds.WindowWidth = _fmt([geo["window"][1]])[0]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _multiframe_dataset(info, geo, stored_full: np.ndarray, keep: list[int], sop_uid: str, monochrome1: bool):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import EnhancedCTImageStorage, EnhancedMRImageStorage, ExplicitVRLittleEndian

    if info["modality"] not in ("CT", "MR"):
        raise InputError(f"multiframe writing supports CT and MR (Enhanced CT/MR Image Storage), not {info['modality']}")
    sop_class = EnhancedCTImageStorage if info["modality"] == "CT" else EnhancedMRImageStorage
    ds = _base_dataset(info, sop_class, sop_uid, ExplicitVRLittleEndian)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if info["modality"] == "CT" else "VOLUME", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.FrameOfReferenceUID = geo["for_uid"]
    ds.PositionReferenceIndicator = ""
    _add_modality_tags(ds, info["modality"])
    ds.NumberOfFrames = len(keep)
    pixels = np.stack([stored_full[:, :, k].T for k in keep])
    _add_pixel_module(ds, pixels.shape[1], pixels.shape[2], pixels.dtype, monochrome1)

    measures = Dataset()
    measures.PixelSpacing = _fmt(geo["pixel_spacing"])
    measures.SliceThickness = _fmt([geo["thickness"]])[0]
    measures.SpacingBetweenSlices = _fmt([geo["thickness"]])[0]
    orient = Dataset()
    orient.ImageOrientationPatient = _fmt(geo["row_col"].ravel())
    transform = Dataset()
    transform.RescaleIntercept = _fmt([geo["inter"]])[0]
    transform.RescaleSlope = _fmt([geo["slope"]])[0]
    transform.RescaleType = "HU" if info["modality"] == "CT" else "US"
    voi = Dataset()
    voi.WindowCenter = _fmt([geo["window"][0]])[0]
    voi.WindowWidth = _fmt([geo["window"][1]])[0]
    shared = Dataset()
    shared.PixelMeasuresSequence = Seq([measures])
    shared.PlaneOrientationSequence = Seq([orient])
    shared.PixelValueTransformationSequence = Seq([transform])
    shared.FrameVOILUTSequence = Seq([voi])
    ds.SharedFunctionalGroupsSequence = Seq([shared])

    per_frame = []
    for n, k in enumerate(keep):
        pos = Dataset()
        pos.ImagePositionPatient = _fmt(geo["ipp"][k])
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = n + 1
        content.DimensionIndexValues = [1, n + 1]
        item = Dataset()
        item.PlanePositionSequence = Seq([pos])
        item.FrameContentSequence = Seq([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Seq(per_frame)

    dim_uid = _uid("dimension", sop_uid)
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = Seq([org])
    idx = []
    for pointer in (0x00209056, 0x00209057):  # StackID, InStackPositionNumber
        d = Dataset()
        d.DimensionOrganizationUID = dim_uid
        d.DimensionIndexPointer = pointer
        d.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        idx.append(d)
    ds.DimensionIndexSequence = Seq(idx)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


# --------------------------------------------------------------------------- compression
def _check_encoder(transfer_syntax: str, shape: tuple[int, int, int]) -> None:
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGLosslessSV1

    ts = UID(transfer_syntax)
    if ts in (JPEG2000, JPEG2000Lossless) and min(shape[:2]) < 32:
        raise InputError(
            f"JPEG 2000 encoding (pylibjpeg-openjpeg, 6 wavelet levels) needs slices of at least 32x32 pixels, "
            f"these are {shape[0]}x{shape[1]}"
        )
    if ts == JPEGLosslessSV1:
        try:
            import gdcm  # noqa: F401
        except ImportError as exc:
            raise InputError("writing JPEG Lossless SV1 needs python-gdcm (pip install python-gdcm)") from exc
        return
    try:
        enc = get_encoder(ts)
    except NotImplementedError as exc:
        raise InputError(f"no DICOM encoder exists for transfer syntax {ts} ({ts.name})") from exc
    if not enc.is_available:
        missing = "; ".join(f"{k}: {', '.join(v)}" for k, v in enc.missing_dependencies.items()) if hasattr(enc, "missing_dependencies") else ""
        raise InputError(f"no installed encoder for {ts.name}; install one of the plugins ({missing})")


def _save(ds, path: Path, transfer_syntax: str | None, plain_ts) -> Path:
    from pydicom.uid import UID, JPEGLosslessSV1

    ts = UID(transfer_syntax) if transfer_syntax else None
    with atomic_path(path) as tmp:
        if ts is None:
            ds.save_as(tmp, enforce_file_format=True)
        elif ts == JPEGLosslessSV1:
            ds.save_as(tmp, enforce_file_format=True)
            _gdcm_transcode(tmp, ts)
        else:
            ds.compress(ts, generate_instance_uid=False)
            ds.save_as(tmp, enforce_file_format=True)
    return path


def _gdcm_transcode(path: Path, ts) -> None:
    """Re-encode ``path`` in place with GDCM (pydicom has no JPEG Lossless encoder)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise InputError(f"GDCM could not re-read {path} for JPEG Lossless encoding")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise InputError(f"GDCM could not encode {path} as {ts.name}")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    out = path.with_name(path.name + ".j")
    writer.SetFileName(str(out))
    if not writer.Write():
        raise InputError(f"GDCM could not write {out}")
    os.replace(out, path)


# --------------------------------------------------------------------------- example study
def write_dicom_study(folder: str | Path, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Write the built-in example study (axial CT, coronal reformat, text SR, README, labels).

    See ``medpipe.data.example_study`` for the layout; returns series UIDs and file lists.
    """
    from medpipe.data.example_study import write_example_study

    return write_example_study(folder, seed=seed, overwrite=overwrite)
