"""`make demo` end to end: example DICOM study -> shipped ct_organs pipeline -> results.

This is the main job a newcomer runs, with the shipped CT bundle, so it checks what a
radiologist would: the label map sits on the CT series' exact grid, the organs are where
the ground truth says (Dice), the DICOM SEG reads back as the same masks, and the
statistics agree with the label map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medpipe.data.phantoms import CT_LABELS
from medpipe.demo import _result_files, run_demo
from medpipe.io.dicom import load_series, scan_study
from medpipe.io.volumes import read_volume
from medpipe.metrics import dice


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("demo")
    assert run_demo(out) == 0
    run_dir = out / "runs" / "example_study"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    return out, run_dir, _result_files(run_dir, record)


def test_label_map_is_on_the_ct_series_grid_and_matches_ground_truth(demo_run) -> None:
    out, _run_dir, files = demo_run
    scan = scan_study(out / "example_study")
    axial = [s for s in scan.series if s.orientation == "axial"]
    ct = load_series(axial[0])
    labels = read_volume(files["nifti"], is_label=True)
    assert labels.shape == ct.shape
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-4)
    truth = read_volume(out / "example_study" / "ground_truth" / "ct_labels.nii.gz", is_label=True)
    assert truth.same_grid(labels)
    scores = {k: dice(labels.array[0] == k, truth.array[0] == k) for k in CT_LABELS}
    # The shipped bundle reaches >= 0.90 mean Dice on held-out phantoms (its evaluation.json);
    # on the example study every organ must be found and the large ones well delineated.
    assert min(scores.values()) > 0.5, scores
    assert np.mean(list(scores.values())) > 0.85, scores
    assert scores[1] > 0.9 and scores[7] > 0.9, scores  # liver, vertebrae


def test_dicom_seg_reads_back_as_the_nifti_masks(demo_run) -> None:
    import highdicom as hd

    _out, _run_dir, files = demo_run
    seg = hd.seg.segread(files["dicom_seg"])
    labels = read_volume(files["nifti"], is_label=True).array[0]
    names = {d.SegmentLabel: int(d.SegmentNumber) for d in seg.SegmentSequence}
    assert set(names) == {CT_LABELS[v] for v in np.unique(labels) if v}
    uids = [u for _, _, u in seg.get_source_image_uids()]
    assert len(uids) == labels.shape[2]


def test_statistics_and_preview(demo_run) -> None:
    _out, _run_dir, files = demo_run
    stats = json.loads(files["table"].read_text())
    labels = read_volume(files["nifti"], is_label=True).array[0]
    voxel_ml = stats["voxel_volume_ml"]
    for name, row in stats["structures"].items():
        value = row["value"]
        assert CT_LABELS[value] == name
        assert row["voxels"] == int((labels == value).sum())
        assert row["volume_ml"] == pytest.approx(row["voxels"] * voxel_ml, abs=1e-3)  # reported to 4 decimals
    from PIL import Image as PILImage

    with PILImage.open(files["preview"]) as im:
        assert im.size[0] > 500 and im.size[1] > 200


def test_segment_ran_the_path_measured_fastest_here(demo_run) -> None:
    from medpipe.inference.precision import cpu_has_int8_dot
    from medpipe.models.bundle import load_bundle

    _out, run_dir, _files = demo_run
    record = json.loads((run_dir / "run.json").read_text())
    facts = record["stages"]["segment"]["facts"]["segment"]
    bundle = load_bundle(Path(__file__).resolve().parents[1] / "medpipe" / "bundles" / "ct_organs_phantom")
    assert bundle.config.quantization is not None  # the shipped bundle carries a gated int8 model
    tuned = facts["autotune"]  # auto = measured on this machine (cached after the first run)
    assert tuned["choice"] == f"{facts['backend']} {facts['precision']}"
    measured = {c["candidate"]: c for c in tuned["candidates"]}
    assert ("openvino int8" in measured) == cpu_has_int8_dot()
    chosen = measured[tuned["choice"]]
    assert chosen["agreement"] >= 0.995 and chosen["worst_class_dice"] >= 0.95
