"""``medpipe evaluate``: report files, values, label names, geometry and missing-case errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medpipe import metrics
from medpipe.cli import main
from medpipe.image import Image


def _write_case(folder, name, labels, affine=None):
    folder.mkdir(parents=True, exist_ok=True)
    aff = np.diag([1.5, 1.0, 3.0, 1.0]) if affine is None else affine
    Image(labels[None].astype(np.uint8), aff, is_label=True).save(folder / f"{name}.nii.gz")


def _gt(seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros((24, 20, 16), np.uint8)
    c = rng.integers(8, 12, 3)
    lab[c[0] - 5 : c[0] + 5, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 1
    lab[2:6, 2:6, 2:6] = 2
    return lab


@pytest.fixture()
def folders(tmp_path):
    root = tmp_path / "Dataset001_Toy"
    gt_dir, pred_dir = root / "labelsTr", tmp_path / "pred"
    (root).mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    for i in range(3):
        gt = _gt(i)
        _write_case(gt_dir, f"toy_{i:03d}", gt)
        _write_case(pred_dir, f"toy_{i:03d}", np.roll(gt, i, axis=0))
    return pred_dir, gt_dir


def test_cli_writes_report_with_metric_values(folders, tmp_path):
    pred_dir, gt_dir = folders
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert len(rows) == 6 and {r["name"] for r in rows} == {"liver", "spleen"}
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["n_cases"] == 3 and set(summary["per_label"]) == {"liver", "spleen"}
    assert (out / "evaluation_boxplot.png").stat().st_size > 1000
    # values equal the metric functions on the same arrays (spacing from the affine)
    gt, pred = _gt(2), np.roll(_gt(2), 2, axis=0)
    want = metrics.hausdorff_distance(pred == 1, gt == 1, (1.5, 1.0, 3.0))
    row = next(r for r in rows if r["case"] == "toy_002" and r["name"] == "liver")
    assert float(row["hd95"]) == pytest.approx(want, abs=1e-6)
    assert summary["cases"]["toy_000"]["liver"]["dice"] == 1.0
    assert summary["per_label"]["liver"]["dice"] < 1.0


def test_labels_option_limits_labels(folders, tmp_path):
    pred_dir, gt_dir = folders
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--labels", "2", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert {r["name"] for r in rows} == {"spleen"}


def test_geometry_mismatch_names_the_case(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    _write_case(pred_dir, "toy_001", _gt(1), affine=np.diag([1.5, 1.0, 3.0, 1.0]) @ np.diag([-1, 1, 1, 1.0]))
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "toy_001" in err and "affine" in err
    assert not out.exists()  # no half-written report
    _write_case(pred_dir, "toy_001", np.zeros((24, 20, 15), np.uint8))
    assert main(["evaluate", str(pred_dir), str(gt_dir), "-o", str(out)]) == 2
    assert "toy_001" in capsys.readouterr().err


def test_missing_prediction_is_an_error_unless_allowed(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    (pred_dir / "toy_002.nii.gz").unlink()
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "-o", str(out)]) == 2
    assert "toy_002" in capsys.readouterr().err
    assert main(["evaluate", str(pred_dir), str(gt_dir), "-o", str(out), "--allow-missing"]) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["missing_predictions"] == ["toy_002"] and summary["n_cases"] == 2
