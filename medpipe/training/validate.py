"""Evaluate a trained network on whole cases, on their ORIGINAL grids.

What a user of the bundle will get: each case goes through the bundle's preprocessing,
the sliding-window engine, and ``restore_geometry`` back onto the input grid, and is
then scored against the untouched ground truth. Evaluating on the resampled grid
would hide resampling and orientation errors.
"""

from __future__ import annotations

import numpy as np
import torch

from medpipe.evaluation import EvaluationReport, evaluate_images
from medpipe.image import Image
from medpipe.training.config import TrainConfig
from medpipe.training.dataset import TrainingDataset, load_case
from medpipe.training.plan import Plan
from medpipe.training.preprocess import preprocess_image, preprocessing_block

__all__ = ["predict_case", "evaluate_original_grid"]


def predict_case(model: torch.nn.Module, image: Image, preprocessing: dict, num_classes: int,
                 precision: str = "auto", tta: bool = False) -> Image:
    """Label map for ``image`` on its own grid (preprocess -> sliding window -> restore)."""
    from medpipe.inference.sliding_window import predict
    from medpipe.transforms import restore_geometry

    pre = preprocess_image(image, preprocessing)
    labels = predict(model, pre.array, preprocessing["patch_size"], num_classes=num_classes, precision=precision,
                     tta_axes=preprocessing.get("tta_axes", []) if tta else (), progress=False).labels
    out = restore_geometry(pre.with_array(labels[None], is_label=True), image)
    return out


def evaluate_original_grid(model: torch.nn.Module, ds: TrainingDataset, names: list[str], plan: Plan,
                           cfg: TrainConfig, progress: bool = True) -> EvaluationReport:
    from rich.progress import Progress

    prep = preprocessing_block(plan)
    by_name = {c.name: c for c in ds.cases}
    labels = [k for k in sorted(ds.labels) if k]
    rows = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("evaluating validation cases", total=len(names))
        for name in names:
            image, gt = load_case(by_name[name])
            pred = predict_case(model, image, prep, ds.num_classes, cfg.precision, cfg.val_tta)
            pred = pred.with_array(pred.array.astype(np.uint8), is_label=True)
            rows += evaluate_images(name, pred, gt, labels, ds.labels, cfg.nsd_tolerance_mm)
            bar.advance(task)
    model.train()
    return EvaluationReport(rows, labels, dict(ds.labels), [], cfg.nsd_tolerance_mm)
