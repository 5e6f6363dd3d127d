"""Evaluate predicted label maps against ground truth: per case, per label, and means.

Used by ``medpipe evaluate PRED_DIR GT_DIR`` and by the trainer for its validation
report. The metrics come from ``medpipe.metrics`` (MONAI's definitions, in mm); this
module pairs files by case name, refuses pairs that do not share a voxel grid (a silent
resample would hide exactly the flipped/shifted-mask bugs evaluation exists to catch),
and writes the report: a CSV (one row per case and label), a JSON summary (means, per
case), and a box plot PNG per label.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.io.atomic import atomic_dir
from medpipe.io.volumes import VOLUME_SUFFIXES
from medpipe.metrics import evaluate_case

__all__ = [
    "METRIC_NAMES",
    "EvaluationReport",
    "case_name",
    "find_cases",
    "read_label_names",
    "evaluate_images",
    "evaluate_folders",
    "write_report",
]

METRIC_NAMES = ("dice", "hd95", "nsd", "volume_pred_ml", "volume_gt_ml", "volume_diff_ml", "volume_diff_pct")
CSV_FILE, JSON_FILE, PLOT_FILE = "evaluation.csv", "evaluation.json", "evaluation_boxplot.png"


def case_name(path: Path) -> str:
    """File name without its volume extension (``liver_003.nii.gz`` -> ``liver_003``)."""
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_cases(folder: str | Path) -> dict[str, Path]:
    """Volume files in ``folder`` by case name (hidden files and other extensions ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of label maps")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if not any(p.name.lower().endswith(s) for s in VOLUME_SUFFIXES):
            continue
        name = case_name(p)
        if name in out:
            raise InputError(f"{folder} holds two files for case {name!r}: {out[name].name} and {p.name}")
        out[name] = p
    return out


def read_label_names(dataset_json: str | Path) -> dict[int, str]:
    """Label names from an nnU-Net ``dataset.json`` (v2 ``{name: value}`` or v1 ``{"1": name}``)."""
    path = Path(dataset_json)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} could not be read as JSON: {exc}") from exc
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise InputError(f"{path} has no 'labels' mapping")
    out: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, int) and not isinstance(value, bool):  # v2: name -> value
            out[value] = str(key)
        elif isinstance(key, str) and key.lstrip("-").isdigit():  # v1: "value" -> name
            out[int(key)] = str(value)
        else:
            raise InputError(f"{path}: label {key!r}: {value!r} is neither 'name: int' nor '\"int\": name'")
    return out


@dataclass
class EvaluationReport:
    """Rows (one per case and label) plus the summary that goes to JSON."""

    rows: list[dict[str, Any]]
    labels: list[int]
    label_names: dict[int, str]
    missing: list[str] = field(default_factory=list)
    nsd_tolerance_mm: float = 2.0

    def mean(self, metric: str = "dice", label: int | None = None) -> float:
        """Mean over cases (and labels unless one is given), NaNs left out."""
        vals = [r[metric] for r in self.rows if label is None or r["label"] == label]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        per_label = {}
        for lab in self.labels:
            per_label[self.label_names.get(lab, str(lab))] = {
                "label": lab,
                **{m: _json_float(self.mean(m, lab)) for m in METRIC_NAMES},
            }
        cases: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            cases.setdefault(r["case"], {})[r["name"]] = {m: _json_float(r[m]) for m in METRIC_NAMES}
        return {
            "n_cases": len(cases),
            "labels": {str(k): v for k, v in self.label_names.items() if k in self.labels},
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
            "mean": {m: _json_float(self.mean(m)) for m in ("dice", "hd95", "nsd", "volume_diff_pct")},
            "per_label": per_label,
            "missing_predictions": self.missing,
            "cases": cases,
        }


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def evaluate_images(
    case: str,
    pred: Image,
    gt: Image,
    labels: Sequence[int],
    label_names: dict[int, str] | None = None,
    nsd_tolerance_mm: float = 2.0,
) -> list[dict[str, Any]]:
    """Metric rows for one case; a grid mismatch is a ``GeometryError`` naming the case."""
    if pred.shape != gt.shape:
        raise GeometryError(
            f"case {case!r}: prediction shape {pred.shape} differs from ground truth {gt.shape}; "
            "predictions must be written on the ground truth's grid"
        )
    if not np.allclose(pred.affine, gt.affine, atol=1e-3):
        diff = float(np.abs(pred.affine - gt.affine).max())
        raise GeometryError(
            f"case {case!r}: prediction affine differs from the ground truth's (max difference {diff:.4g} mm); "
            "predictions must be written on the ground truth's grid"
        )
    if pred.n_channels != 1 or gt.n_channels != 1:
        raise InputError(f"case {case!r}: label maps must have one channel")
    names = label_names or {}
    rows = []
    for m in evaluate_case(pred.array[0], gt.array[0], labels, gt.spacing, nsd_tolerance_mm):
        rows.append({"case": case, "label": m.label, "name": names.get(m.label, str(m.label)),
                     **{k: getattr(m, k) for k in METRIC_NAMES}})
    return rows


def _labels_present(paths: Iterable[Path]) -> list[int]:
    found: set[int] = set()
    for p in paths:
        found.update(int(v) for v in np.unique(Image.load(p, is_label=True).array) if v != 0)
    return sorted(found)


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    labels: Sequence[int] | None = None,
    nsd_tolerance_mm: float = 2.0,
    allow_missing: bool = False,
    progress: bool = True,
) -> EvaluationReport:
    """Pair ``pred_dir`` and ``gt_dir`` files by case name and evaluate every pair.

    Labels default to those of ``dataset.json`` next to ``gt_dir`` (nnU-Net layout), else
    to every non-zero value found in the ground truth. A GT case without a prediction is
    an error unless ``allow_missing`` (then it is listed in the report).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gts, preds = find_cases(gt_dir), find_cases(pred_dir)
    if not gts:
        raise InputError(f"{gt_dir} holds no label maps (.nii.gz, .nii, .nrrd, .mha)")
    missing = [c for c in gts if c not in preds]
    if missing and not allow_missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(
            f"no prediction in {pred_dir} for case {missing[0]!r}{more}; pass --allow-missing to report them instead"
        )
    names: dict[int, str] = {}
    dataset_json = gt_dir.parent / "dataset.json"
    if dataset_json.exists():
        names = read_label_names(dataset_json)
    cases = [c for c in gts if c in preds]
    if not cases:
        raise InputError(f"no file in {pred_dir} matches a case name in {gt_dir}")
    if labels is None:
        labels = sorted(k for k in names if k != 0) or _labels_present(gts[c] for c in cases)
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("evaluating", total=len(cases))
        for case in cases:
            gt = Image.load(gts[case], is_label=True)
            pred = Image.load(preds[case], is_label=True)
            rows += evaluate_images(case, pred, gt, labels, names, nsd_tolerance_mm)
            bar.advance(task)
    return EvaluationReport(rows, list(labels), names, missing, nsd_tolerance_mm)


def _write_csv(report: EvaluationReport, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "label", "name", *METRIC_NAMES])
        writer.writeheader()
        for r in report.rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})


def _write_boxplot(report: EvaluationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [report.label_names.get(lab, str(lab)) for lab in report.labels]
    fig, axes = plt.subplots(1, 3, figsize=(max(9.0, 1.2 * len(names) * 3), 4.2))
    for ax, metric, title in zip(
        axes, ("dice", "nsd", "hd95"),
        ("Dice", f"NSD @ {report.nsd_tolerance_mm:g} mm", "HD95 (mm)"), strict=True,
    ):
        data = []
        for lab in report.labels:
            vals = [r[metric] for r in report.rows if r["label"] == lab]
            data.append([v for v in vals if v is not None and math.isfinite(v)])
        ax.boxplot([d if d else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if metric != "hd95":
            ax.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{len({r['case'] for r in report.rows})} cases, mean Dice {report.mean('dice'):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: EvaluationReport, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``evaluation.csv``, ``evaluation.json`` and ``evaluation_boxplot.png`` atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_report_files(report, tmp)
    return out_dir


def write_report_files(report: EvaluationReport, folder: Path) -> None:
    """The three report files into an existing folder (for callers that own the atomic write)."""
    _write_csv(report, folder / CSV_FILE)
    (folder / JSON_FILE).write_text(json.dumps(report.summary(), indent=2))
    _write_boxplot(report, folder / PLOT_FILE)
