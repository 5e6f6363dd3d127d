"""The MRI job's own stages: lesion volume per atlas region, and the one-page report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.pipeline.stages.mri_report import render_mri_report
from medpipe.pipeline.stages.region_volumes import region_volumes

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])  # 12 mm^3 = 0.012 ml per voxel


def _labels() -> tuple[Image, Image]:
    seg = np.zeros((10, 10, 6), np.uint8)
    seg[:, :, :3] = 2  # white matter below
    seg[2:5, 2:5, 1:4] = 3  # a 27-voxel lesion: 9 in region 1, 18 in region 2
    reg = np.zeros((10, 10, 6), np.uint8)
    reg[:, :, :2] = 1
    reg[:, :, 2:] = 2
    labels = Image(seg[None], AFFINE, is_label=True)
    labels.meta.extra["labels"] = {1: "grey_matter", 2: "white_matter", 3: "lesion"}
    regions = Image(reg[None], AFFINE, is_label=True)
    regions.meta.extra["labels"] = {1: "frontal_left", 2: "parietal_left", 3: "occipital_left"}
    return labels, regions


def test_region_volumes_splits_the_lesion_by_region() -> None:
    labels, regions = _labels()
    t = region_volumes(labels, regions)
    lesion = t["structures"]["lesion"]
    assert lesion["volume_ml"] == pytest.approx(27 * 0.012)
    assert [(w["region"], w["volume_ml"]) for w in lesion["where"]] == [("parietal_left", pytest.approx(0.216)),
                                                                         ("frontal_left", pytest.approx(0.108))]
    assert lesion["where"][0]["fraction"] == pytest.approx(2 / 3, abs=1e-4)
    assert t["regions"]["occipital_left"] == {"value": 3, "volume_ml": 0.0, "grey_matter_ml": 0.0,
                                              "white_matter_ml": 0.0, "lesion_ml": 0.0}
    assert t["structures"]["grey_matter"]["where"] == []
    assert t["regions"]["frontal_left"]["white_matter_ml"] == pytest.approx((200 - 9) * 0.012)


def test_region_volumes_refuses_maps_on_different_grids() -> None:
    labels, regions = _labels()
    moved = regions.with_geometry(regions.array, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(GeometryError, match="not on the same grid"):
        region_volumes(labels, moved)


def test_the_report_is_one_png_and_one_pdf_with_the_same_bytes_every_time(tmp_path: Path) -> None:
    labels, regions = _labels()
    recon = Image(np.random.default_rng(0).random((1, 10, 10, 6)).astype(np.float32), AFFINE)
    recon.meta.extra["recon"] = {"method": "cirim"}
    stats = {"structures": {"white_matter": {"volume_ml": 2.3}, "lesion": {"volume_ml": 0.216}}}
    metrics = {"acceleration": 4.0, "methods": {"cirim": {"ssim": 0.9, "psnr": 30.0}}}
    kw = dict(zero_filled=recon, recon_table=metrics, title="case")
    a = render_mri_report(tmp_path / "a", recon, labels, regions, stats, region_volumes(labels, regions), **kw)
    b = render_mri_report(tmp_path / "b", recon, labels, regions, stats, region_volumes(labels, regions), **kw)
    assert sorted(a) == ["pdf", "png"] and a["pdf"].read_bytes()[:5] == b"%PDF-"
    assert a["png"].read_bytes() == b["png"].read_bytes() and a["pdf"].read_bytes() == b["pdf"].read_bytes()
    with pytest.raises(GeometryError, match="atlas regions"):
        render_mri_report(tmp_path / "c", recon, labels, regions.with_geometry(regions.array, np.eye(4)), stats)


@pytest.mark.slow
def test_the_mri_job_resumes_without_recomputing_and_keeps_its_bytes(tmp_path: Path) -> None:
    """A second run of a finished study recomputes nothing; the published files stay the same."""
    import json

    from medpipe.data.mri_brain_studies import write_mri_brain_study
    from medpipe.pipeline.provenance import published_hashes
    from medpipe.pipeline.runner import run_pipeline

    study = write_mri_brain_study(tmp_path / "in", "scan", seed=5, matrix=48, pixel_mm=4.0, slices=12,
                                  slice_mm=8.0)["file"]
    first = run_pipeline("mri_brain", study, tmp_path / "runs")
    assert first.ok, first.error
    before = published_hashes(tmp_path / "runs" / "scan")
    again = run_pipeline("mri_brain", study, tmp_path / "runs")
    rec = json.loads((tmp_path / "runs" / "scan" / "run.json").read_text())
    assert again.ok and set(again.stages.values()) == {"cached"} and len(again.stages) == 13
    assert published_hashes(tmp_path / "runs" / "scan") == before
    assert any("trained on 1 mm pixels; this k-space has 4 x 4 mm pixels" in w for w in first.warnings)
    assert rec["status"] == "done"
