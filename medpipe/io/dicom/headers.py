"""Read one DICOM file's header into ``FrameRecord`` objects (one per 2D frame).

Only the header is parsed (``stop_before_pixels``); for uncompressed files we also note
where the PixelData value starts, so ``pixels.py`` can read the raw bytes straight into
numpy later without parsing the file again — that is what makes loading a 300-slice CT
as fast as ITK's C++ reader. Enhanced multi-frame files are expanded frame by frame
from their shared and per-frame functional groups.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword

from medpipe.io.dicom.model import FrameRecord, NonImageObject
from medpipe.io.dicom.sources import Source

__all__ = ["HeaderResult", "read_header", "read_sidecar_tags", "SIDECAR_TAGS", "NON_IMAGE_MODALITIES"]

_TAGS: dict[str, int] = {}

# Objects that carry no image volume even when they are DICOM: listed, never loaded.
NON_IMAGE_MODALITIES = {
    "SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "PR", "KO", "REG",
    "DOC", "FID", "AU", "ECG", "HD", "PLAN", "RWV", "OT_DOC",
}
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.66.",  # segmentation, registration, fiducials
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)

# Key tags copied into the sidecar of every converted series.
SIDECAR_TAGS = (
    "PatientID", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate", "StudyTime",
    "StudyDescription", "AccessionNumber", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "SeriesDate", "Modality", "Manufacturer", "ManufacturerModelName", "InstitutionName",
    "BodyPartExamined", "ProtocolName", "ImageType", "SOPClassUID", "FrameOfReferenceUID",
    "PatientPosition", "KVP", "XRayTubeCurrent", "Exposure", "SliceThickness",
    "SpacingBetweenSlices", "ConvolutionKernel", "ContrastBolusAgent", "GantryDetectorTilt",
    "MagneticFieldStrength", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle",
    "ScanningSequence", "SequenceVariant", "PixelBandwidth", "RescaleType", "Units",
)


@dataclass
class HeaderResult:
    frames: list[FrameRecord] = field(default_factory=list)
    modality: str = ""
    description: str = ""
    series_number: int | None = None
    non_image: NonImageObject | None = None
    skipped: bool = False  # not a DICOM file at all
    error: str | None = None  # a DICOM file we cannot use, and why
    error_series_uid: str = ""  # the series that file belongs to, when its header says


def _looks_like_dicom(head: bytes) -> bool:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # Preamble-less files: a little-endian group 0002/0008 tag at byte 0.
    if len(head) >= 8:
        group = struct.unpack("<H", head[:2])[0]
        explicit_meta = group == 0x0002 and head[4:6].isalpha()
        return explicit_meta or group == 0x0008
    return False


def _jsonable(value: Any) -> Any:
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSfloat, PersonName

    if isinstance(value, MultiValue | list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, IS | int):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return None
    return str(value)


def _float(x: Any, default: float | None = None) -> float | None:
    try:
        return float(x) if x is not None and x != "" else default
    except (TypeError, ValueError):
        return default


def _get(ds, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword)`` without pydicom's slow keyword lookup for absent tags."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = tag_for_keyword(keyword)
    if tag not in ds:
        return default
    value = ds[tag].value
    return default if value is None or value == "" else value


def _first(seq_parent: Any, seq_name: str) -> Any:
    seq = getattr(seq_parent, seq_name, None) if seq_parent is not None else None
    return seq[0] if seq else None


def _fg(frame_groups: Any, shared: Any, seq_name: str) -> Any:
    """A functional-group item: per-frame first, shared as fallback."""
    return _first(frame_groups, seq_name) or _first(shared, seq_name)


_RAW_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _pixel_location(fh, ds, size: int, tsuid: str) -> tuple[int | None, int | None, str | None]:
    """(offset, length, problem) of the PixelData value; fh sits at the PixelData element.

    Only native (uncompressed, non-deflated) files get an offset; everything else is
    decoded by pydicom and its plugins at load time.
    """
    if tsuid not in _RAW_SYNTAXES:
        return None, None, None
    start = fh.tell()
    tag = fh.read(4)
    if len(tag) < 4:
        return None, None, "has no pixel data"
    little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    fmt = "<" if little else ">"
    group, elem = struct.unpack(fmt + "HH", tag)
    if (group, elem) != (0x7FE0, 0x0010):
        return None, None, f"has no PixelData element (found tag ({group:04X},{elem:04X}) instead)"
    implicit = ds.original_encoding[0]
    if implicit:
        (length,) = struct.unpack(fmt + "I", fh.read(4))
        hdr = 8
    else:
        fh.read(4)  # VR + reserved
        (length,) = struct.unpack(fmt + "I", fh.read(4))
        hdr = 12
    if length == 0xFFFFFFFF:
        return None, None, None  # encapsulated (compressed) pixel data
    offset = start + hdr
    if offset + length > size:
        return offset, length, f"has truncated pixel data ({size - offset} of {length} bytes present)"
    return offset, length, None


def read_header(src: Source) -> HeaderResult:
    """Parse ``src``'s header; never raises for bad files (the result says why instead)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        fh = src.open()
    except PermissionError:
        return HeaderResult(error="permission denied")
    except OSError as exc:
        return HeaderResult(error=f"cannot be read ({exc.strerror or exc})")
    with fh:
        head = fh.read(132)
        if not _looks_like_dicom(head):
            return HeaderResult(skipped=True)
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(0)
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=head[128:132] != b"DICM")
        except InvalidDicomError:
            return HeaderResult(skipped=True)
        except Exception as exc:  # pydicom raises many kinds on corrupt headers
            return HeaderResult(error=f"has a corrupt DICOM header ({type(exc).__name__}: {exc})")
        try:
            return _records(src, ds, fh, size)
        except Exception as exc:
            return HeaderResult(error=f"has an unusable DICOM header ({type(exc).__name__}: {exc})")


def file_meta_uid(ds: Any, keyword: str) -> str:
    """A UID from the file meta information (``MediaStorageSOP...``), '' when absent."""
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, keyword, "") or "").strip() if meta is not None else ""


def _records(src: Source, ds, fh, size: int) -> HeaderResult:
    from pydicom.uid import UID

    modality = str(_get(ds, "Modality", "") or "")
    # Anonymisers often blank the dataset's SOP UIDs but leave the file meta's copies.
    sop_class = str(_get(ds, "SOPClassUID", "") or "") or file_meta_uid(ds, "MediaStorageSOPClassUID")
    if not sop_class and "SOPInstanceUID" not in ds and "Modality" not in ds:
        return HeaderResult(skipped=True)
    description = str(_get(ds, "SeriesDescription", "") or "")
    series_uid = str(_get(ds, "SeriesInstanceUID", "") or "")
    is_non_image = (
        modality.upper() in NON_IMAGE_MODALITIES
        or sop_class.startswith(_NON_IMAGE_SOP_PREFIXES)
        or "Rows" not in ds
    )
    if is_non_image:
        name = UID(sop_class).name if sop_class else "unknown SOP class"
        return HeaderResult(
            non_image=NonImageObject(src.label, modality, sop_class, str(name), description, series_uid)
        )
    tsuid = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "") if hasattr(ds, "file_meta") else ""
    if not tsuid:
        implicit, little = ds.original_encoding
        tsuid = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    image_type = _get(ds, "ImageType", []) or []
    if "MOSAIC" in [str(v).upper() for v in (image_type if not isinstance(image_type, str) else [image_type])]:
        return HeaderResult(
            error="is a Siemens MOSAIC (slices tiled in one image), which medpipe does not unpack; "
            "convert it with dcm2niix",
            error_series_uid=series_uid,
        )
    offset, length, pix_problem = _pixel_location(fh, ds, size, tsuid)
    if pix_problem:
        return HeaderResult(error=pix_problem, error_series_uid=series_uid)
    series_number = _get(ds, "SeriesNumber")
    common = dict(
        source=src,
        series_uid=series_uid,
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        transfer_syntax=tsuid,
        bits_allocated=int(_get(ds, "BitsAllocated", 16)),
        bits_stored=int(_get(ds, "BitsStored", _get(ds, "BitsAllocated", 16))),
        pixel_representation=int(_get(ds, "PixelRepresentation", 0)),
        samples_per_pixel=int(_get(ds, "SamplesPerPixel", 1)),
        photometric=str(_get(ds, "PhotometricInterpretation", "MONOCHROME2")).strip(),
        planar_configuration=int(_get(ds, "PlanarConfiguration", 0) or 0),
        pixel_offset=offset,
        pixel_length=length,
        gantry_tilt=_float(_get(ds, "GantryDetectorTilt"), 0.0) or 0.0,
    )
    n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)
    instance = int(_get(ds, "InstanceNumber", 0) or 0)
    sop_uid = str(_get(ds, "SOPInstanceUID", "") or "") or file_meta_uid(ds, "MediaStorageSOPInstanceUID")
    temporal_top = (
        _float(_get(ds, "TemporalPositionIdentifier")),
        _float(_get(ds, "AcquisitionNumber")),
        _float(_get(ds, "TriggerTime")),
        _float(_get(ds, "AcquisitionTime")),
    )
    frames: list[FrameRecord] = []
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        per_frame = _get(ds, "PerFrameFunctionalGroupsSequence", [])
        for i in range(n_frames):
            fg = per_frame[i] if i < len(per_frame) else None
            pos = _fg(fg, shared, "PlanePositionSequence")
            ori = _fg(fg, shared, "PlaneOrientationSequence")
            meas = _fg(fg, shared, "PixelMeasuresSequence")
            pvt = _fg(fg, shared, "PixelValueTransformationSequence")
            content = _fg(fg, shared, "FrameContentSequence")
            echo = _fg(fg, shared, "MREchoSequence")
            ipp = getattr(pos, "ImagePositionPatient", None) if pos is not None else None
            iop = getattr(ori, "ImageOrientationPatient", None) if ori is not None else None
            ps = getattr(meas, "PixelSpacing", None) if meas is not None else None
            frames.append(
                FrameRecord(
                    frame=i,
                    n_frames=n_frames,
                    sop_instance_uid=sop_uid,
                    iop=np.array(iop, float) if iop else None,
                    ipp=np.array(ipp, float) if ipp else None,
                    pixel_spacing=(float(ps[0]), float(ps[1])) if ps else None,
                    slope=_float(getattr(pvt, "RescaleSlope", None), 1.0) if pvt is not None else _float(_get(ds, "RescaleSlope"), 1.0),
                    intercept=_float(getattr(pvt, "RescaleIntercept", None), 0.0) if pvt is not None else _float(_get(ds, "RescaleIntercept"), 0.0),
                    echo=(_float(getattr(echo, "EffectiveEchoTime", None)),) if echo is not None else (),
                    temporal=(
                        _float(getattr(content, "TemporalPositionIndex", None)) if content is not None else None,
                        _float(getattr(content, "StackID", None)) if content is not None else None,
                    ),
                    instance_number=i,
                    slice_thickness=_float(getattr(meas, "SliceThickness", None)) if meas is not None else None,
                    spacing_between_slices=_float(getattr(meas, "SpacingBetweenSlices", None)) if meas is not None else None,
                    **common,
                )
            )
    else:
        iop = _get(ds, "ImageOrientationPatient")
        ipp = _get(ds, "ImagePositionPatient")
        ps = _get(ds, "PixelSpacing") or _get(ds, "ImagerPixelSpacing")
        thick = _float(_get(ds, "SliceThickness"))
        between = _float(_get(ds, "SpacingBetweenSlices"))
        ipp_arr = np.array(ipp, float) if ipp else None
        iop_arr = np.array(iop, float) if iop else None
        for i in range(n_frames):
            frame_ipp = ipp_arr
            if n_frames > 1 and ipp_arr is not None and iop_arr is not None:
                # Classic multi-frame volumes: frames stacked along the normal.
                normal = np.cross(iop_arr[:3], iop_arr[3:])
                frame_ipp = ipp_arr + i * (between or thick or 1.0) * normal
            frames.append(
                FrameRecord(
                    frame=i if n_frames > 1 else None,
                    n_frames=n_frames,
                    sop_instance_uid=sop_uid,
                    iop=iop_arr,
                    ipp=frame_ipp,
                    pixel_spacing=(float(ps[0]), float(ps[1])) if ps else None,
                    slope=_float(_get(ds, "RescaleSlope"), 1.0) or 1.0,
                    intercept=_float(_get(ds, "RescaleIntercept"), 0.0) or 0.0,
                    echo=(_float(_get(ds, "EchoNumbers")), _float(_get(ds, "EchoTime"))),
                    temporal=temporal_top,
                    instance_number=instance,
                    slice_thickness=thick,
                    spacing_between_slices=between,
                    **common,
                )
            )
    return HeaderResult(
        frames=frames,
        modality=modality,
        description=description,
        series_number=int(series_number) if series_number not in (None, "") else None,
    )


def read_sidecar_tags(src: Source) -> dict[str, Any]:
    """The key tags of one file (read once per series, for the sidecar)."""
    import pydicom

    try:
        with src.open() as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    except Exception:
        return {}
    out = {}
    for k in SIDECAR_TAGS:
        v = _get(ds, k)
        if v is not None:
            out[k] = _jsonable(v)
    return out
