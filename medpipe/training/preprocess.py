"""Preprocess cases once per plan and cache them, so epochs only read arrays.

One function, ``preprocess_image``, does what a bundle's ``preprocessing`` block says —
reorient, (crop foreground), resample, normalise — with ``medpipe.transforms``; training
uses it on every case and validation on full images, so train-time and inference-time
preprocessing cannot drift apart. The cache is ``<work>/preprocessed/<plan hash>/CASE.npz``
(image float32 (C,I,J,K), label uint8, and up to 10k sampled voxel coordinates per
foreground class for oversampling); a different plan gets a different folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.image import Image
from medpipe.io.atomic import atomic_path
from medpipe.training.dataset import Case, load_case
from medpipe.training.plan import Plan

__all__ = ["preprocess_image", "preprocess_dataset", "load_preprocessed", "plan_hash"]

MAX_LOCATIONS = 10_000


def plan_hash(plan: Plan) -> str:
    keys = ("spacing", "normalization", "crop_foreground")
    doc = {k: plan.to_dict()[k] for k in keys}
    if plan.orientation != "RAS":  # 2D plans on coronal/sagittal slices
        doc["orientation"] = plan.orientation
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:10]


def preprocess_image(image: Image, preprocessing: dict[str, Any], label: Image | None = None):
    """Reorient -> (crop) -> resample -> normalise, per a bundle ``preprocessing`` block.

    The returned image carries its geometry history, so ``restore_geometry`` maps a
    prediction back onto ``image``'s grid. With ``label`` the same geometric steps are
    applied to it (one-hot resampling) and ``(image, label)`` is returned.
    """
    from medpipe.errors import GeometryError
    from medpipe.transforms import crop_to_bbox, foreground_bbox, normalize, reorient, resample_to_spacing

    codes = preprocessing.get("orientation", "RAS")
    if codes == "native":  # the stored voxel order (imported nnU-Net models)
        out, lab = image, label
    else:
        out, _ = reorient(image, codes)
        lab = reorient(label, codes)[0] if label is not None else None
    if preprocessing.get("crop_foreground"):
        box = foreground_bbox(out, None, 0) or [[0, s] for s in out.shape]
        out, _ = crop_to_bbox(out, box)
        lab = crop_to_bbox(lab, box)[0] if lab is not None else None
    spacing = list(preprocessing["spacing"])
    if len(spacing) == 2:  # a 2D bundle: in-plane spacing; the slice axis (K) keeps its own
        spacing = [*spacing, None]
    out, _ = resample_to_spacing(out, spacing)
    norm = dict(preprocessing["normalization"])
    scheme = norm.pop("scheme")
    norm["foreground_only"] = bool(norm.pop("use_mask", False))
    out, _ = normalize(out, scheme, **{k: v for k, v in norm.items() if v is not None})
    if lab is None:
        return out
    lab, _ = resample_to_spacing(lab, spacing)
    if lab.shape != out.shape:
        raise GeometryError(f"label resampled to {lab.shape} but image to {out.shape}; check their grids")
    return out, lab


def _locations(label: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for c in np.unique(label):
        if c == 0:
            continue
        idx = np.argwhere(label == c)
        if len(idx) > MAX_LOCATIONS:
            idx = idx[rng.choice(len(idx), MAX_LOCATIONS, replace=False)]
        out[f"loc_{int(c)}"] = idx.astype(np.int16)
    return out


def _preprocess_case(case: Case, preprocessing: dict[str, Any], path: Path, seed: int) -> None:
    image, label = load_case(case)
    pimg, plab = preprocess_image(image, preprocessing, label)
    arr_lab = plab.array[0].astype(np.uint8)
    locs = _locations(arr_lab, np.random.default_rng(seed))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, image=pimg.array.astype(np.float32), label=arr_lab, affine=pimg.affine, **locs)


def preprocess_dataset(cases: list[Case], plan: Plan, work_dir: str | Path, progress: bool = True) -> dict[str, Path]:
    """Preprocess every case not yet cached for this plan; returns case name -> .npz path."""
    from rich.progress import Progress

    folder = Path(work_dir) / "preprocessed" / plan_hash(plan)
    folder.mkdir(parents=True, exist_ok=True)
    prep = preprocessing_block(plan)
    (folder / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    out = {c.name: folder / f"{c.name}.npz" for c in cases}
    todo = [c for c in cases if not out[c.name].exists()]
    with Progress(transient=True, disable=not progress or not todo) as bar:
        task = bar.add_task("preprocessing", total=len(todo))
        for i, case in enumerate(todo):
            _preprocess_case(case, prep, out[case.name], seed=i)
            bar.advance(task)
    return out


def preprocessing_block(plan: Plan) -> dict[str, Any]:
    """The bundle ``preprocessing`` section for ``plan``."""
    return {
        "orientation": plan.orientation,
        "spacing": list(plan.spacing),
        "normalization": dict(plan.normalization),
        "patch_size": list(plan.patch_size),
        "tta_axes": list(plan.tta_axes),
        "crop_foreground": plan.crop_foreground,
    }


def load_preprocessed(path: str | Path) -> dict[str, Any]:
    """A cached case: image, label, affine and ``locations`` {class: (N, 3) indices}."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    locs = {int(k[4:]): data.pop(k).astype(np.int64) for k in list(data) if k.startswith("loc_")}
    data["locations"] = locs
    return data
