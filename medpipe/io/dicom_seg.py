"""Write a label map as a DICOM Segmentation that references its source series.

highdicom builds the SEG object (it knows the IOD, the frame-of-reference and derivation
references and the colour encoding); this module exists to put *our* label map onto the
source slices correctly: it reads the source datasets (files or zip members), puts them
in the label map's slice order, checks that the label map lies on exactly the source
series' grid (a SEG that is off by a slice is worse than none), and turns label names and
colours into coded segment descriptions (SNOMED CT codes where the name is a known
structure, a generic "Tissue" code otherwise).

Example:
    >>> write_dicom_seg(labels, source_files, {1: ("liver", (221, 130, 101))}, "seg.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import DicomError, GeometryError
from medpipe.image import Image
from medpipe.io.atomic import atomic_path

__all__ = ["write_dicom_seg", "read_source_datasets", "segment_codes", "source_affine", "repair_source_uids"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_GEOMETRY_ATOL_MM = 1e-2


def read_source_datasets(files: Sequence[str | Path]) -> list[Any]:
    """Read source DICOM headers+pixels-free datasets; ``path!member`` reads a zip member."""
    import io
    import zipfile

    import pydicom

    out = []
    for f in files:
        s = str(f)
        try:
            if "!" in s and not Path(s).exists():
                zpath, member = s.split("!", 1)
                with zipfile.ZipFile(zpath) as zf:
                    data = zf.read(member)
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            else:
                ds = pydicom.dcmread(s, stop_before_pixels=True)
        except (OSError, KeyError, zipfile.BadZipFile, pydicom.errors.InvalidDicomError) as exc:
            raise DicomError(f"cannot read source DICOM file {s} for the DICOM SEG ({exc})") from exc
        out.append(ds)
    return out


def _blank(ds: Any, keyword: str) -> bool:
    return not str(getattr(ds, keyword, "") or "").strip()


def repair_source_uids(datasets: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Copies of the source headers with the UIDs a SEG must reference filled in.

    Anonymised exports often blank the dataset's SOP Class/Instance UIDs while the file
    meta keeps them: those are taken from the file meta. Blank Study/Series/Frame of
    Reference UIDs get one generated UID each for the whole series (recorded in the returned
    facts, so run.json says the SEG references UIDs that are not in the source files). A
    source instance without any SOP Instance UID cannot be referenced at all: DicomError."""
    import copy

    import highdicom as hd

    from medpipe.io.dicom.headers import file_meta_uid

    out = [copy.deepcopy(ds) for ds in datasets]
    facts: dict[str, Any] = {}
    where = getattr(datasets[0], "filename", None) or "the source series"
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        fixed = 0
        for ds in out:
            if _blank(ds, keyword):
                uid = file_meta_uid(ds, meta_keyword)
                if not uid:
                    raise DicomError(f"{where}: source files have no {keyword} (blank in the dataset and in the "
                                     "file meta), so a DICOM SEG cannot reference them; write NIfTI/NRRD instead")
                setattr(ds, keyword, uid)
                fixed += 1
        if fixed:
            facts[f"{keyword}_from_file_meta"] = fixed
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(getattr(ds, keyword, "") or "").strip() for ds in out}
        if "" in values:
            uid = next((v for v in values if v), None) or str(hd.UID())
            for ds in out:
                setattr(ds, keyword, uid)
            facts[f"{keyword}_generated"] = uid
    return out, facts


def _plane(ds: Any, frame: int | None) -> tuple[np.ndarray, list[float], np.ndarray]:
    """(IOP, PixelSpacing, IPP) of a single-frame dataset or of one frame of a multi-frame one."""
    if frame is None:
        return (
            np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
            [float(v) for v in ds.PixelSpacing],
            np.asarray(ds.ImagePositionPatient, dtype=np.float64),
        )
    per = ds.PerFrameFunctionalGroupsSequence[frame]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    def item(name: str) -> Any:
        if name in per:
            return getattr(per, name)[0]
        if shared is not None and name in shared:
            return getattr(shared, name)[0]
        raise DicomError(f"{getattr(ds, 'filename', 'the source')}: frame {frame + 1} has no {name}")

    return (
        np.asarray(item("PlaneOrientationSequence").ImageOrientationPatient, dtype=np.float64),
        [float(v) for v in item("PixelMeasuresSequence").PixelSpacing],
        np.asarray(item("PlanePositionSequence").ImagePositionPatient, dtype=np.float64),
    )


def _slices(datasets: list[Any]) -> list[tuple[Any, int | None]]:
    """(dataset, frame) per slice, sorted along the slice normal (the loader's order)."""
    if len(datasets) == 1 and int(getattr(datasets[0], "NumberOfFrames", 1) or 1) > 1:
        items: list[tuple[Any, int | None]] = [(datasets[0], f) for f in range(int(datasets[0].NumberOfFrames))]
    elif any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DicomError(
            f"{getattr(datasets[0], 'filename', 'the source series')}: a series of several multi-frame files "
            "cannot be referenced by one DICOM SEG; write NIfTI/NRRD instead"
        )
    else:
        items = [(ds, None) for ds in datasets]
    iop = _plane(*items[0])[0]
    normal = np.cross(iop[:3], iop[3:])
    depth = [float(np.dot(normal, _plane(ds, f)[2])) for ds, f in items]
    return [items[i] for i in np.argsort(depth, kind="stable")]


def source_affine(slices: Sequence[tuple[Any, int | None]]) -> np.ndarray:
    """RAS+ affine of the source slices in the given order (I = columns, J = rows)."""
    iop, ps, ipp0 = _plane(*slices[0])  # ps = (between rows, between columns)
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * ps[1]
    aff[:3, 1] = iop[3:] * ps[0]
    if len(slices) > 1:
        ipp1 = _plane(*slices[-1])[2]
        aff[:3, 2] = (ipp1 - ipp0) / (len(slices) - 1)
    else:
        thick = float(getattr(slices[0][0], "SliceThickness", 1.0) or 1.0)
        aff[:3, 2] = np.cross(iop[:3], iop[3:]) * thick
    aff[:3, 3] = ipp0
    out = np.eye(4)
    out[:3, :] = _LPS_TO_RAS @ aff[:3, :]
    return out


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", name) if p)


_SIDES = ("left", "right")


def segment_codes(name: str) -> tuple[Any, Any, Any | None]:
    """(category, type, laterality modifier or None) codes for a structure name.

    Known anatomy (e.g. "liver", "kidney_right", "vertebrae") maps to SNOMED CT
    "Anatomical Structure" / the organ's code; anything else to "Tissue" / "Tissue".
    """
    from pydicom.sr.codedict import codes

    words = [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]
    side = next((w for w in words if w in _SIDES), None)
    core = [w for w in words if w not in _SIDES]
    candidates = [_camel(" ".join(words)), _camel(" ".join(core))]
    if core and core[-1].endswith("e") and core[-1] == "vertebrae":
        candidates.append("Vertebra")
    if core and core[-1].endswith("s"):
        candidates.append(_camel(" ".join([*core[:-1], core[-1][:-1]])))
    for cand in candidates:
        if not cand:
            continue
        try:
            typ = getattr(codes.SCT, cand)
        except AttributeError:
            continue
        lat = getattr(codes.SCT, side.capitalize()) if side else None
        return codes.SCT.AnatomicalStructure, typ, lat
    return codes.SCT.Tissue, codes.SCT.Tissue, None


def write_dicom_seg(
    labels: Image,
    source: Sequence[str | Path] | Sequence[Any],
    label_info: Mapping[int, tuple[str, tuple[int, int, int]]],
    path: str | Path,
    *,
    segmentation_type: str = "binary",
    series_description: str = "medpipe segmentation",
    series_number: int = 901,
    algorithm_name: str = "medpipe",
    algorithm_version: str | None = None,
    overwrite: bool = True,
    facts: dict[str, Any] | None = None,
) -> dict[int, int]:
    """Write ``labels`` (on the source series' exact grid) as a DICOM SEG at ``path``.

    ``source``: the source series' files (paths, ``zip!member`` labels) or pydicom
    datasets, any order; or one multi-frame (enhanced) file. ``label_info``: ``value -> (name, (r, g, b))`` for the labels to
    write. Returns ``label value -> segment number`` (segment numbers run 1..N). ``facts``
    receives the UIDs taken from the file meta or generated for anonymised sources.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medpipe import __version__

    if not labels.is_label or labels.n_channels != 1:
        raise GeometryError("a DICOM SEG is written from a single-channel label map")
    if not source:
        raise DicomError("no source DICOM files for the DICOM SEG; the input was not a DICOM series")
    datasets = list(source) if not isinstance(source[0], (str, Path)) else read_source_datasets(source)  # type: ignore[arg-type]
    datasets, repairs = repair_source_uids(datasets)
    if facts is not None:
        facts.update(repairs)
    slices = _slices(datasets)
    arr = labels.array[0]
    n_slices = len(slices)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if arr.shape != (cols, rows, n_slices):
        raise GeometryError(
            f"the label map has shape {arr.shape} but the source series {datasets[0].SeriesInstanceUID} "
            f"is {cols}x{rows}x{n_slices} (columns x rows x slices); restore the geometry first"
        )
    src_aff = source_affine(slices)
    if not np.allclose(labels.affine, src_aff, atol=_GEOMETRY_ATOL_MM):
        raise GeometryError(
            f"the label map's affine does not match the source series {datasets[0].SeriesInstanceUID} "
            f"slice positions (max difference {np.abs(labels.affine - src_aff).max():.3g} mm); "
            "the mask would not overlay the images"
        )
    multiframe = slices[0][1] is not None
    if not multiframe:
        datasets = [ds for ds, _ in slices]  # SEG frames follow the source files in slice order

    values = sorted(int(v) for v in label_info)
    seg_number = {v: i + 1 for i, v in enumerate(values)}
    frames = np.zeros((n_slices, rows, cols), np.uint16 if len(values) > 255 else np.uint8)
    kji = arr.transpose(2, 1, 0)  # (slices, rows, cols)
    if multiframe:  # frame f of the SEG <-> frame f of the multi-frame source
        kji = kji[np.argsort([f for _, f in slices])]
    for v, s in seg_number.items():
        frames[kji == v] = s
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version or __version__,
    )
    descriptions = []
    for v in values:
        name, rgb = label_info[v]
        category, typ, lat = segment_codes(name)
        desc = hd.seg.SegmentDescription(
            segment_number=seg_number[v],
            segment_label=str(name)[:64],
            segmented_property_category=category,
            segmented_property_type=typ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=hd.UID(),
            tracking_id=f"{name} ({v})",
            display_color=hd.color.CIELabColor.from_rgb(*[min(max(int(c), 0), 255) for c in rgb]),
        )
        if lat is not None:
            from pydicom.dataset import Dataset

            mod = Dataset()
            mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = lat.value, lat.scheme_designator, lat.meaning
            desc.SegmentedPropertyTypeModifierCodeSequence = [mod]
        descriptions.append(desc)
    seg_type = {"binary": "BINARY", "labelmap": "LABELMAP"}.get(segmentation_type.lower())
    if seg_type is None:
        raise DicomError(f"DICOM SEG type must be 'binary' or 'labelmap', got {segmentation_type!r}")
    if not values:
        raise DicomError("the label map holds no labels to write as DICOM SEG segments")
    try:
        seg = _build_seg(hd, datasets, frames, seg_type, descriptions, series_number, algorithm_name,
                         algorithm_version or __version__, series_description)
    except Exception as exc:  # highdicom validates the IOD; its errors name a DICOM attribute, not our problem
        raise DicomError(f"highdicom could not build the DICOM SEG for series {datasets[0].SeriesInstanceUID} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return seg_number


def _build_seg(hd: Any, datasets: list[Any], frames: np.ndarray, seg_type: str, descriptions: list[Any],
               series_number: int, algorithm_name: str, version: str, series_description: str) -> Any:
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medpipe",
        manufacturer_model_name=algorithm_name,
        software_versions=version,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=True,
    )
