"""Built-in stages one at a time: postprocess, statistics, preview, normalize/resample with a
bundle, load_study on NIfTI/DICOM/zip, restore_geometry with a `processed` history."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.data.phantoms import CT_LABELS, ct_phantom
from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.io.volumes import write_volume
from medpipe.pipeline.stage import StageContext, get_stage


def _ctx(tmp_path: Path, name: str = "s") -> StageContext:
    wd = tmp_path / name
    wd.mkdir(parents=True, exist_ok=True)
    return StageContext(stage=name, workdir=wd, study="case")


def _run(kind: str, params: dict, inputs: dict, tmp_path: Path) -> tuple[dict, StageContext]:
    ctx = _ctx(tmp_path, kind)
    return get_stage(kind)(params).run(inputs, ctx), ctx


# -- postprocess ----------------------------------------------------------------------


def _blobs() -> Image:
    a = np.zeros((40, 40, 40), np.uint8)
    a[5:25, 5:25, 5:25] = 1  # 8000 voxels, with a hole
    a[12:16, 12:16, 12:16] = 0
    a[30:33, 30:33, 30:33] = 1  # 27-voxel island of class 1
    a[30:38, 2:10, 2:10] = 2  # 512 voxels
    a[2:4, 34:36, 34:36] = 2  # 8-voxel island of class 2
    img = Image(a[None], np.diag([1.0, 1.0, 2.0, 1.0]), is_label=True)
    img.meta.extra["labels"] = {"1": "liver", "2": "spleen"}
    return img


def test_postprocess_largest_component_fill_holes_and_islands(tmp_path: Path) -> None:
    lab = _blobs()
    out, ctx = _run("postprocess", {"keep_largest": ["liver"], "fill_holes": "all"}, {"labels": lab}, tmp_path)
    a = out["labels"].array[0]
    assert a[31, 31, 31] == 0  # liver island gone (largest component kept)
    assert a[13, 13, 13] == 1  # hole filled
    assert a[3, 35, 35] == 2  # spleen untouched by keep_largest (not selected)
    assert ctx.facts["postprocess"]["liver"] == {"largest_component_removed": 27, "holes_filled": 64}
    # Islands below 0.02 ml (= 10 voxels of 2 mm^3) go, bigger ones stay.
    out, _ = _run("postprocess", {"min_volume_ml": 0.02}, {"labels": lab}, tmp_path)
    a = out["labels"].array[0]
    assert a[3, 35, 35] == 0 and a[31, 31, 31] == 1 and (a == 2).sum() == 512
    assert np.array_equal(lab.array, _blobs().array)  # input not modified


# -- statistics -----------------------------------------------------------------------


def test_statistics_volumes_and_intensities_match_the_phantom(tmp_path: Path) -> None:
    ct, lab = ct_phantom((40, 36, 24), (0.8, 0.9, 2.5), seed=3)
    out, _ = _run("statistics", {}, {"labels": lab, "image": ct}, tmp_path)
    table = out["table"]
    voxel_ml = 0.8 * 0.9 * 2.5 / 1000
    assert table["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert set(table["structures"]) == set(CT_LABELS.values())
    for value, name in CT_LABELS.items():
        row = table["structures"][name]
        m = lab.array[0] == value
        assert row["voxels"] == int(m.sum())
        assert row["volume_ml"] == pytest.approx(m.sum() * voxel_ml, abs=1e-4)
        if m.any():
            assert row["mean"] == pytest.approx(float(ct.array[0][m].mean()), rel=1e-5)
            assert row["std"] == pytest.approx(float(ct.array[0][m].std()), rel=1e-4)
    with pytest.raises(GeometryError, match="not on the same grid"):
        _run("statistics", {}, {"labels": lab, "image": Image(ct.array[:, :-1], ct.affine)}, tmp_path)


# -- preview --------------------------------------------------------------------------


def test_preview_png_has_the_requested_size_and_shows_the_labels(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    ct, lab = ct_phantom((48, 48, 32), (1.0, 1.0, 2.0), seed=0)
    out, _ = _run("preview", {"width": 1200, "height": 450}, {"labels": lab, "image": ct}, tmp_path)
    png = Path(out["files"]["preview"])
    assert png.exists() and png.suffix == ".png"
    rgba = mpimg.imread(png)
    assert rgba.shape[:2] == (450, 1200)
    # The liver colour (from the labels' colours) appears in the overlay.
    r, g, b = (np.asarray(lab.meta.extra["colors"][1]) / 255.0)
    rgb = rgba[..., :3]
    blend_dist = np.abs(rgb - (0.45 * np.array([r, g, b]) + 0.55 * rgb.mean(axis=-1, keepdims=True)))
    assert (blend_dist.max(axis=-1) < 0.12).sum() > 100
    # Without an image and with no labels it still renders (image centre, empty legend).
    empty = lab.with_array(np.zeros_like(lab.array))
    out, _ = _run("preview", {"file": "e.png", "width": 600, "height": 240}, {"labels": empty}, tmp_path)
    assert mpimg.imread(out["files"]["preview"]).shape[:2] == (240, 600)


# -- bundle-driven preprocessing ------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from medpipe.models import create_model
    from medpipe.models.bundle import save_bundle

    torch.manual_seed(0)
    cfg = {
        "name": "tiny", "architecture": "stunet-xs", "arch_config": {"in_channels": 1, "num_classes": 2},
        "modality": "CT", "channels": ["CT"],
        "labels": {0: {"name": "background"}, 1: {"name": "liver", "color": [220, 20, 60]}},
        "preprocessing": {"orientation": "LPS", "spacing": [2.0, 2.0, 3.0],
                          "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 50.0, "std": 80.0},
                          "patch_size": [32, 32, 32]},
    }  # fmt: skip
    path = tmp_path_factory.mktemp("bundles") / "tiny"
    save_bundle(path, create_model("stunet_xs", in_channels=1, num_classes=2), cfg)
    return path


def test_preprocessing_stages_read_settings_from_the_bundle(tmp_path: Path, bundle_dir: Path) -> None:
    ct, _ = ct_phantom((32, 32, 24), (1.0, 1.0, 1.5), seed=0, affine=np.diag([1.0, 1.0, 1.5, 1.0]))
    out, _ = _run("reorient", {"bundle": str(bundle_dir)}, {"image": ct}, tmp_path)
    assert out["image"].orientation == "LPS"
    out, _ = _run("resample", {"bundle": str(bundle_dir)}, {"image": out["image"]}, tmp_path)
    np.testing.assert_allclose(out["image"].spacing, (2.0, 2.0, 3.0))
    out2, _ = _run("resample", {"bundle": str(bundle_dir), "spacing": 4.0}, {"image": ct}, tmp_path)
    np.testing.assert_allclose(out2["image"].spacing, (4.0, 4.0, 4.0))  # explicit param wins
    norm, ctx = _run("normalize", {"bundle": str(bundle_dir)}, {"image": ct}, tmp_path)
    expect = (np.clip(ct.array, -200, 300) - 50.0) / 80.0
    np.testing.assert_allclose(norm["image"].array, expect, rtol=1e-5, atol=1e-5)
    assert not ctx.warnings


def test_normalize_without_dataset_stats_warns(tmp_path: Path) -> None:
    ct, _ = ct_phantom((32, 32, 24), (1.0, 1.0, 1.5), seed=0)
    _, ctx = _run("normalize", {"scheme": "ct"}, {"image": ct}, tmp_path)
    assert any("own statistics" in w for w in ctx.warnings)


# -- load_study -----------------------------------------------------------------------


def test_load_study_reads_nifti_dicom_folder_and_zip(tmp_path: Path) -> None:
    ct, _ = ct_phantom((32, 32, 12), (1.0, 1.0, 2.5), seed=2)
    nii = write_volume(ct, tmp_path / "ct.nii.gz")
    out, _ = _run("load_study", {}, {"study": nii}, tmp_path)
    assert out["image"].same_grid(ct) and out["source"]["kind"] == "volume"
    folder = tmp_path / "dcm"
    write_dicom_series(ct, folder, seed=2)
    out, ctx = _run("load_study", {"modality": "CT"}, {"study": folder}, tmp_path)
    src = out["source"]
    assert src["kind"] == "dicom" and len(src["sop_instance_uids"]) == 12 and len(src["files"]) == 12
    assert src["study_uid"] and src["frame_of_reference_uid"] and src["series_uid"]
    np.testing.assert_allclose(out["image"].affine, ct.affine, atol=1e-4)
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"in/{f.name}")
    out_z, _ = _run("load_study", {}, {"study": zpath}, tmp_path)
    assert np.array_equal(out_z["image"].array, out["image"].array)
    assert out_z["source"]["sop_instance_uids"] == src["sop_instance_uids"]
    assert all("!" in f for f in out_z["source"]["files"])


def test_dicom_seg_from_a_zipped_study(tmp_path: Path) -> None:
    import highdicom as hd

    ct, lab = ct_phantom((32, 32, 10), (12.0, 12.0, 30.0), seed=2)  # the whole abdomen: every organ
    folder = tmp_path / "dcm"
    write_dicom_series(ct, folder, seed=2)
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    loaded, _ = _run("load_study", {}, {"study": zpath}, tmp_path)
    labels = Image(lab.array, loaded["image"].affine, lab.meta.copy(), is_label=True)
    out, ctx = _run(
        "write", {"formats": ["dicom_seg", "nifti"], "seg_type": "labelmap"},
        {"labels": labels, "source": loaded["source"], "reference": loaded["image"]}, tmp_path,
    )  # fmt: skip
    seg = hd.seg.segread(out["files"]["dicom_seg"])
    assert seg.SegmentationType == "LABELMAP"
    px = seg.get_pixels_by_source_instance(loaded["source"]["sop_instance_uids"], combine_segments=True)
    seg_to_value = {s: v for v, s in ((v, s) for v, s in zip(sorted(CT_LABELS), range(1, 9), strict=True))}
    back = np.zeros_like(px)
    for s, v in seg_to_value.items():
        back[px == s] = v
    present = sorted(int(v) for v in np.unique(lab.array) if v)
    assert present == sorted(CT_LABELS)  # every organ present, so segment s <-> value s
    assert np.array_equal(back, lab.array[0].transpose(2, 1, 0))
    assert ctx.facts["dicom_seg_segments"]["liver"] == 1


# -- restore_geometry stage -----------------------------------------------------------


def test_restore_stage_uses_the_processed_image_history(tmp_path: Path) -> None:
    from medpipe.transforms import crop_foreground, reorient

    ct, lab = ct_phantom((32, 32, 20), (1.0, 1.0, 2.0), seed=1)
    proc = crop_foreground(reorient(ct, "RAS").image, threshold=-500, margin=1).image
    # A segmenter that drops the metadata: labels on the processed grid, no history.
    seg = Image((proc.array > 250).astype(np.uint8), proc.affine, is_label=True)
    out, ctx = _run("restore_geometry", {}, {"labels": seg, "reference": ct, "processed": proc}, tmp_path)
    restored = out["labels"]
    assert restored.shape == ct.shape and np.array_equal(restored.affine, ct.affine)
    assert np.array_equal(restored.array[0], (ct.array[0] > 250).astype(np.uint8))
    assert not ctx.warnings


def test_dicom_seg_for_a_multiframe_source_and_geometry_refusal(tmp_path: Path) -> None:
    import highdicom as hd

    from medpipe.io.dicom_seg import write_dicom_seg

    ct, lab = ct_phantom((32, 28, 10), (12.0, 13.5, 30.0), seed=5)  # the whole abdomen: every organ
    folder = tmp_path / "mf"
    write_dicom_series(ct, folder, multiframe=True, seed=5)
    loaded, _ = _run("load_study", {}, {"study": folder}, tmp_path)
    src = loaded["source"]
    assert len(src["files"]) == 1 and len(src["frame_numbers"]) == 10
    labels = Image(lab.array, loaded["image"].affine, lab.meta.copy(), is_label=True)
    out, _ = _run("write", {"formats": ["dicom_seg"]}, {"labels": labels, "source": src}, tmp_path)
    seg = hd.seg.segread(out["files"]["dicom_seg"])
    sop = src["sop_instance_uids"][0]
    px = seg.get_pixels_by_source_frame(
        sop, source_frame_numbers=[f + 1 for f in src["frame_numbers"]], combine_segments=True
    )
    assert np.array_equal(px, lab.array[0].transpose(2, 1, 0))  # all 8 organs present: segment == value
    # A label map one slice off the source grid is refused.
    moved = lab.affine.copy()
    moved[:3, 3] += moved[:3, 2]
    shifted = Image(lab.array, loaded["image"].affine @ np.linalg.inv(lab.affine) @ moved, is_label=True)
    with pytest.raises(GeometryError, match="would not overlay"):
        write_dicom_seg(shifted, src["files"], {1: ("liver", (1, 2, 3))}, tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()
