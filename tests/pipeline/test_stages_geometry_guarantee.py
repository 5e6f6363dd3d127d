"""The geometry guarantee, end to end through the runner on phantom DICOM series.

Whatever a pipeline does in between (reorient, resample, crop), the written label map has
exactly the input series' shape and affine, overlays the original DICOM voxel for voxel,
and the DICOM SEG read back with highdicom equals the NIfTI output in the source slice
order, with its frames at the source slices' positions.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.data.phantoms import ct_phantom
from medpipe.image import Image
from medpipe.io.dicom import read_image
from medpipe.io.volumes import read_volume
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.runner import run_pipeline
from medpipe.pipeline.spec import parse_pipeline
from medpipe.pipeline.stage import Stage, StageParams, register_stage

BONE_HU = 250.0


@register_stage
class BoneThreshold(Stage):
    """Test-only stand-in for a segmenter: bone = HU above a threshold, on the processed grid."""

    kind = "t_bone_threshold"
    description = "test: label voxels above a HU threshold as bone"

    class Params(StageParams):
        threshold: float = BONE_HU

    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}

    def run(self, inputs, ctx):
        img = inputs["image"]
        out = img.with_array((img.array > self.params.threshold).astype(np.uint8), is_label=True)
        out.meta.extra["labels"] = {1: "bone"}
        out.meta.extra["colors"] = {1: [241, 214, 145]}
        return {"labels": out}


def _pipeline(resample: float | None) -> str:
    resample_stage = (
        f"""
  resample:
    kind: resample
    params: {{spacing: {resample}}}
    inputs: {{image: crop.image}}"""
        if resample
        else ""
    )
    seg_input = "resample.image" if resample else "crop.image"
    return f"""
name: geometry-guarantee
description: load, reorient, crop, (resample), threshold, restore, write
stages:
  load:
    kind: load_study
    inputs: {{study: input.study}}
  reorient:
    kind: reorient
    params: {{codes: RAS}}
    inputs: {{image: load.image}}
  crop:
    kind: crop_foreground
    params: {{margin: 2}}
    inputs: {{image: reorient.image}}{resample_stage}
  seg:
    kind: t_bone_threshold
    inputs: {{image: {seg_input}}}
  restore:
    kind: restore_geometry
    inputs: {{labels: seg.labels, reference: load.image}}
  write:
    kind: write
    params: {{formats: [nifti, nrrd, dicom_seg], name: bone}}
    inputs: {{labels: restore.labels, source: load.source, reference: load.image}}
"""


def _rot(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.radians(deg_x), np.radians(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


VARIANTS = {
    # name: (shape, spacing, 3x3 direction); coarse voxels so the small grids hold the whole
    # (adult-sized) phantom abdomen
    "lps": ((40, 40, 24), (9.5, 9.5, 13.0), np.diag([-1.0, -1.0, 1.0])),
    "ras": ((40, 40, 24), (9.5, 9.5, 13.0), np.eye(3)),
    "oblique": ((40, 40, 24), (9.5, 9.5, 13.0), _rot(14.0, -8.0) @ np.diag([-1.0, -1.0, 1.0])),
    "anisotropic": ((48, 48, 12), (8.0, 8.0, 26.0), np.diag([-1.0, -1.0, 1.0])),
}
FINER_MM = 5.7  # the resampling variant's spacing (1.7x finer in-plane)


def _study(tmp_path: Path, variant: str) -> tuple[Path, Image]:
    shape, spacing, direction = VARIANTS[variant]
    aff = np.eye(4)
    aff[:3, :3] = direction * np.asarray(spacing)[None, :]
    aff[:3, 3] = [18.0, -25.5, -120.0]
    ct, _ = ct_phantom(shape, spacing, seed=4, affine=aff)
    folder = tmp_path / f"study_{variant}"
    write_dicom_series(ct, folder, shuffle=True, seed=4)
    return folder, read_image(folder)


def _run(tmp_path: Path, study: Path, resample: float | None):
    spec = parse_pipeline(_pipeline(resample))
    res = run_pipeline(spec, study, tmp_path / "runs")
    assert res.ok, res.error
    return res.run_dir / "artifacts" / "write" / "files.files"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _check_outputs(out: Path, dicom_img: Image, study: Path) -> np.ndarray:
    nifti = read_volume(out / "bone.nii.gz", is_label=True)
    nrrd = read_volume(out / "bone.nrrd", is_label=True)
    for written in (nifti, nrrd):
        assert written.shape == dicom_img.shape
        np.testing.assert_allclose(written.affine, dicom_img.affine, atol=1e-5)
    assert np.array_equal(nifti.array, nrrd.array)
    # DICOM SEG: read back with highdicom, in the source series' slice order.
    seg = hd.seg.segread(out / "bone.dcm")
    uids = dicom_img.meta.extra["SOPInstanceUIDs"]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    assert np.array_equal(frames, nifti.array[0].transpose(2, 1, 0))
    # Each SEG frame sits at its source slice's ImagePositionPatient.
    ipp = {}
    for f in study.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ipp[ds.SOPInstanceUID] = np.asarray(ds.ImagePositionPatient, float)
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(pos, ipp[ref], atol=1e-3)
    assert seg.SegmentSequence[0].SegmentLabel == "bone"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Bone"
    return nifti.array[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reorient_crop_pipeline_output_overlays_the_dicom_exactly(tmp_path: Path, variant: str) -> None:
    study, dicom_img = _study(tmp_path, variant)
    out = _run(tmp_path, study, resample=None)
    mask = _check_outputs(out, dicom_img, study)
    # Exact steps only: the mask is the threshold of the original DICOM voxels, voxel for voxel.
    assert np.array_equal(mask, (dicom_img.array[0] > BONE_HU).astype(np.uint8))


@pytest.mark.parametrize("variant", ["oblique", "anisotropic", "ras"])
def test_resampling_pipeline_output_is_on_the_dicom_grid(tmp_path: Path, variant: str) -> None:
    study, dicom_img = _study(tmp_path, variant)
    out = _run(tmp_path, study, resample=FINER_MM)
    mask = _check_outputs(out, dicom_img, study)
    truth = dicom_img.array[0] > BONE_HU
    # Thresholding an interpolated image is not the same as thresholding the original,
    # but a shifted or flipped mask would score far lower.
    assert _dice(mask > 0, truth) >= 0.85
    # (The spine is posterior: an anterior/posterior flip or a 2-voxel shift would not match.)
    assert _dice(np.flip(mask, axis=1) > 0, truth) < 0.2
    assert _dice(np.roll(mask, 2, axis=1) > 0, truth) < _dice(mask > 0, truth) - 0.1


def test_write_refuses_labels_off_the_input_grid(tmp_path: Path) -> None:
    study, _ = _study(tmp_path, "lps")
    text = _pipeline(FINER_MM * 2).replace("labels: restore.labels, source", "labels: seg.labels, source")
    res = run_pipeline(parse_pipeline(text), study, tmp_path / "runs")
    assert not res.ok and res.failed_stage == "write"
    assert "restore_geometry" in (res.error or "")
