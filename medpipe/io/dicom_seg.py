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

__all__ = ["write_dicom_seg", "read_source_datasets", "segment_codes", "source_affine"]

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


def _sort_by_position(datasets: list[Any]) -> list[Any]:
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    depth = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))) for ds in datasets]
    return [datasets[i] for i in np.argsort(depth, kind="stable")]


def source_affine(datasets: Sequence[Any]) -> np.ndarray:
    """RAS+ affine of a single-frame series in the given slice order (I = columns, J = rows)."""
    ds0 = datasets[0]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    ps = [float(v) for v in ds0.PixelSpacing]  # (between rows, between columns)
    ipp0 = np.asarray(ds0.ImagePositionPatient, dtype=np.float64)
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * ps[1]
    aff[:3, 1] = iop[3:] * ps[0]
    if len(datasets) > 1:
        ipp1 = np.asarray(datasets[-1].ImagePositionPatient, dtype=np.float64)
        aff[:3, 2] = (ipp1 - ipp0) / (len(datasets) - 1)
    else:
        thick = float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
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
) -> dict[int, int]:
    """Write ``labels`` (on the source series' exact grid) as a DICOM SEG at ``path``.

    ``source``: the source series' files (paths, ``zip!member`` labels) or pydicom
    datasets, any order. ``label_info``: ``value -> (name, (r, g, b))`` for the labels to
    write. Returns ``label value -> segment number`` (segment numbers run 1..N).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medpipe import __version__

    if not labels.is_label or labels.n_channels != 1:
        raise GeometryError("a DICOM SEG is written from a single-channel label map")
    if not source:
        raise DicomError("no source DICOM files for the DICOM SEG; the input was not a DICOM series")
    datasets = list(source) if not isinstance(source[0], (str, Path)) else read_source_datasets(source)  # type: ignore[arg-type]
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DicomError(
            f"{getattr(datasets[0], 'filename', 'the source series')}: multi-frame source series are not "
            "supported for DICOM SEG output yet; write NIfTI/NRRD instead"
        )
    datasets = _sort_by_position(datasets)
    arr = labels.array[0]
    n_slices = len(datasets)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if arr.shape != (cols, rows, n_slices):
        raise GeometryError(
            f"the label map has shape {arr.shape} but the source series {datasets[0].SeriesInstanceUID} "
            f"is {cols}x{rows}x{n_slices} (columns x rows x slices); restore the geometry first"
        )
    src_aff = source_affine(datasets)
    if not np.allclose(labels.affine, src_aff, atol=_GEOMETRY_ATOL_MM):
        raise GeometryError(
            f"the label map's affine does not match the source series {datasets[0].SeriesInstanceUID} "
            f"slice positions (max difference {np.abs(labels.affine - src_aff).max():.3g} mm); "
            "the mask would not overlay the images"
        )

    values = sorted(int(v) for v in label_info)
    seg_number = {v: i + 1 for i, v in enumerate(values)}
    frames = np.zeros((n_slices, rows, cols), np.uint16 if len(values) > 255 else np.uint8)
    kji = arr.transpose(2, 1, 0)  # (slices, rows, cols)
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
    seg = hd.seg.Segmentation(
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
        software_versions=algorithm_version or __version__,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=True,
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return seg_number
