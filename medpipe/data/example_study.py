"""The built-in example study: what ``medpipe data example DIR`` writes.

A realistic study folder to try ``medpipe inspect`` / ``medpipe run`` on without patient
data: an axial CT abdomen series, a thick-slab coronal reformat of it (RLE compressed,
UID-named files), a Basic Text SR (a non-image object readers must skip), a README.txt
(a non-DICOM file readers must skip), and the ground-truth organ labels as NIfTI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.dicom_writer import _base_dataset, _study_datetime, _uid, write_dicom_series
from medpipe.data.phantoms import CT_LABELS, ct_phantom
from medpipe.image import Image
from medpipe.io.atomic import atomic_dir, atomic_path

__all__ = ["write_example_study", "EXAMPLE_CT_SHAPE", "EXAMPLE_CT_SPACING", "coronal_reformat"]

# A whole adult abdomen (384 x 384 x 312 mm) at 3 mm voxels keeps the demo small and fast.
EXAMPLE_CT_SHAPE = (128, 128, 104)
EXAMPLE_CT_SPACING = (3.0, 3.0, 3.0)
PATIENT_ID = "PHANTOM001"
PATIENT_NAME = "Phantom^Abdomen"

_README = """medpipe example study (synthetic, no patient data)

DICOM/series_002_ct_axial     CT abdomen, axial, {shape} voxels at {spacing} mm, uncompressed
DICOM/series_003_ct_coronal   thick-slab coronal reformat of series 2, RLE Lossless, UID file names
DICOM/series_100_report       Basic Text SR (a non-image object)
ground_truth/ct_labels.nii.gz organ labels for series 2: {labels}

This file is not DICOM: readers must skip it.
"""


def coronal_reformat(ct: Image, slab: int = 5) -> Image:
    """Average ``slab`` coronal planes into one; rows run head to feet as scanners write them."""
    arr = ct.array[0]
    n = arr.shape[1] // slab
    thick = arr[:, : n * slab, :].reshape(arr.shape[0], n, slab, arr.shape[2]).mean(axis=2)
    # (I, Jslab, K) -> (I, K reversed, Jslab): columns along I, rows from superior to inferior.
    out = np.round(thick[:, :, ::-1].transpose(0, 2, 1)).astype(np.float32)
    a = ct.affine
    aff = np.eye(4)
    aff[:3, 0] = a[:3, 0]
    aff[:3, 1] = -a[:3, 2]
    aff[:3, 2] = a[:3, 1] * slab
    aff[:3, 3] = a[:3, :3] @ np.array([0.0, (slab - 1) / 2.0, arr.shape[2] - 1.0]) + a[:3, 3]
    meta = ct.meta.copy()
    meta.description = f"CT COR {slab * ct.spacing[1]:.0f}mm reformat"
    return Image(out[None], aff, meta)


def _text_sr(path: Path, study_uid: str, seed: int, text: str) -> str:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    series_uid = _uid("series", study_uid, 100, "report", seed)
    date, study_time, series_time = _study_datetime(seed, 100)
    info = dict(
        patient_id=PATIENT_ID, patient_name=PATIENT_NAME, study_uid=study_uid, series_uid=series_uid,
        date=date, study_time=study_time, series_time=series_time, seed=seed,
        series_description="Phantom report", series_number=100, modality="SR",
    )  # fmt: skip
    ds = _base_dataset(info, BasicTextSRStorage, _uid("instance", series_uid, 0), ExplicitVRLittleEndian)
    ds.InstanceNumber = 1

    def code(value: str, scheme: str, meaning: str) -> Sequence:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return Sequence([c])

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = code("18748-4", "LN", "Diagnostic Imaging Report")
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = code("121071", "DCM", "Finding")
    item.TextValue = text
    ds.ContentSequence = Sequence([item])
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return series_uid


def write_example_study(folder: str | Path, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Write the example study into ``folder`` (atomically); returns what was written where."""
    from pydicom.uid import RLELossless

    from medpipe.io.volumes import write_volume

    folder = Path(folder)
    ct, labels = ct_phantom(EXAMPLE_CT_SHAPE, EXAMPLE_CT_SPACING, seed=seed)
    ct = ct.with_array(np.round(ct.array))  # scanners store integer HU
    ct.meta.description = "CT ABDOMEN 3.0mm"
    coronal = coronal_reformat(ct)
    study_uid = _uid("study", PATIENT_ID, seed)
    for_uid = _uid("frame-of-reference", study_uid, seed)
    common = dict(patient_id=PATIENT_ID, patient_name=PATIENT_NAME, study_uid=study_uid,
                  frame_of_reference_uid=for_uid, seed=seed, modality="CT")  # fmt: skip
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        axial_files = write_dicom_series(
            ct, tmp / "DICOM" / "series_002_ct_axial", series_number=2, series_description=ct.meta.description, **common
        )
        cor_files = write_dicom_series(
            coronal, tmp / "DICOM" / "series_003_ct_coronal", series_number=3,
            series_description=coronal.meta.description, naming="uid", transfer_syntax=RLELossless, **common,
        )  # fmt: skip
        sr_path = tmp / "DICOM" / "series_100_report" / "SR00001.dcm"
        sr_uid = _text_sr(sr_path, study_uid, seed, "Synthetic abdomen phantom generated by medpipe; no findings.")
        write_volume(labels, tmp / "ground_truth" / "ct_labels.nii.gz")
        names = ", ".join(f"{k} {v}" for k, v in CT_LABELS.items())
        (tmp / "README.txt").write_text(
            _README.format(shape="x".join(map(str, ct.shape)), spacing="x".join(map(str, ct.spacing)), labels=names)
        )

        axial_uid, cor_uid = _series_uid_of(axial_files), _series_uid_of(cor_files)

    def moved(paths: list[Path]) -> list[Path]:
        return [folder / p.relative_to(tmp) for p in paths]

    return {
        "folder": folder,
        "study_uid": study_uid,
        "frame_of_reference_uid": for_uid,
        "series": [
            {"number": 2, "description": ct.meta.description, "modality": "CT", "role": "axial",
             "series_uid": axial_uid, "files": moved(axial_files)},
            {"number": 3, "description": coronal.meta.description, "modality": "CT", "role": "coronal",
             "series_uid": cor_uid, "files": moved(cor_files)},
            {"number": 100, "description": "Phantom report", "modality": "SR", "role": "report",
             "series_uid": sr_uid, "files": moved([sr_path])},
        ],  # fmt: skip
        "labels_file": folder / "ground_truth" / "ct_labels.nii.gz",
        "readme": folder / "README.txt",
    }


def _series_uid_of(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
