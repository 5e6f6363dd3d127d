"""Training plan from a fingerprint, by nnU-Net v2's rules (see REFERENCES.md).

- target spacing: per-axis median; if the coarsest axis is > 3x the finest other axis
  *and* has < 1/3 of their voxels, it takes that axis' 10th percentile instead
  (nnU-Net ``determine_fullres_target_spacing``);
- patch size: starts from the median shape at target spacing and shrinks the axis that
  is largest in mm until it fits the voxel budget (our CPU stand-in for nnU-Net's VRAM
  estimate), then rounds to what the network's pooling divides;
- pooling: per level, pool an axis while its feature map stays >= 8 voxels and its
  spacing is within 2x of the finest (nnU-Net ``get_pool_and_conv_props``); kernels are
  3 on an axis once its spacing is within 2x of the finest, else 1. STU-Net has a fixed
  number of levels, so axes that must not be pooled get 1s;
- mirroring (augmentation and TTA): every axis, except left-right (RAS axis 0) when
  labels come in left/right pairs — a mirrored right kidney is a left kidney, so the
  network could not learn which is which (TotalSegmentator disables mirroring for this);
- normalisation: CT -> clip to foreground 0.5/99.5 percentiles + dataset mean/std;
  other modalities -> per-image z-score.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medpipe.errors import InputError
from medpipe.training.fingerprint import Fingerprint

__all__ = ["Plan", "target_spacing", "pooling", "make_plan", "mirror_axes", "normalization_scheme", "STUNET_LEVELS"]

STUNET_LEVELS = 5  # STU-Net: 6 stages = 5 downsamplings
ANISO_THRESHOLD = 3.0
MIN_FEATURE = 4


@dataclass
class Plan:
    """Everything training and inference need to agree on."""

    spacing: list[float]
    patch_size: list[int]
    pool_op_kernel_sizes: list[list[int]]
    conv_kernel_sizes: list[list[int]]
    normalization: dict[str, Any]
    median_shape: list[int]
    tta_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    crop_foreground: bool = False
    orientation: str = "RAS"  # 2D plans: which planes are the slices (see plan2d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_spacing(spacings: list[list[float]], shapes: list[list[int]]) -> list[float]:
    """nnU-Net's full-resolution target spacing (median, anisotropic axis -> 10th pct)."""
    sp = np.asarray(spacings, dtype=np.float64)
    sz = np.asarray(shapes, dtype=np.float64)
    target = np.percentile(sp, 50, axis=0)
    target_size = np.percentile(sz, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[others])
    aniso_voxels = target_size[worst] * ANISO_THRESHOLD < min(target_size[others])
    if aniso_spacing and aniso_voxels:
        t = float(np.percentile(sp[:, worst], 10))
        if t < max(target[others]):
            t = max(max(target[others]), t) + 1e-5
        target[worst] = t
    return [float(v) for v in target]


def pooling(spacing: list[float], patch: list[int], levels: int = STUNET_LEVELS) -> tuple[list[list[int]], list[list[int]]]:
    """Pool kernels (one per level) and conv kernels (one per stage) for ``patch``."""
    cur_sp = list(spacing)
    cur_sz = list(patch)
    pools, convs = [], []
    for _ in range(levels + 1):
        min_sp = min(cur_sp)
        convs.append([3 if s / min_sp < 2 else 1 for s in cur_sp])
        if len(pools) == levels:
            break
        pool = [2 if (cur_sz[a] >= 2 * MIN_FEATURE and cur_sp[a] / min_sp < 2) else 1 for a in range(3)]
        pools.append(pool)
        cur_sp = [s * p for s, p in zip(cur_sp, pool, strict=True)]
        cur_sz = [z // p for z, p in zip(cur_sz, pool, strict=True)]
    return pools, convs


def mirror_axes(label_names: dict[int, str] | None) -> list[int]:
    """Axes safe to mirror: not left-right (axis 0 in RAS) when any label is sided."""
    sided = re.compile(r"(^|[_\s-])(left|right|l|r)($|[_\s-])", re.IGNORECASE)
    if label_names and any(sided.search(n) for n in label_names.values()):
        return [1, 2]
    return [0, 1, 2]


def normalization_scheme(fp: Fingerprint) -> dict[str, Any]:
    """CT: clip to the foreground 0.5/99.5 percentiles + dataset z-score; else per-image z-score."""
    if fp.modality.upper() == "CT":
        it = fp.intensity
        return {"scheme": "ct", "clip": [it["percentile_00_5"], it["percentile_99_5"]],
                "mean": it["mean"], "std": max(it["std"], 1e-3)}  # nnU-Net: unclipped fg stats
    return {"scheme": "zscore"}


def _divisor(pools: list[list[int]]) -> list[int]:
    return [math.prod(p[a] for p in pools) for a in range(3)]


def make_plan(
    fp: Fingerprint,
    *,
    spacing: list[float] | None = None,
    patch_size: list[int] | None = None,
    max_patch_voxels: int = 64**3,
    label_names: dict[int, str] | None = None,
    mirror: list[int] | None = None,
) -> Plan:
    """The plan for ``fp``; ``spacing`` / ``patch_size`` override the rules (recorded as given)."""
    tgt = [float(s) for s in spacing] if spacing else target_spacing(fp.spacings, fp.shapes)
    if len(tgt) != 3 or any(s <= 0 for s in tgt):
        raise InputError(f"target spacing must be three positive numbers of mm, got {tgt}")
    sp = np.asarray(fp.spacings, dtype=np.float64)
    sz = np.asarray(fp.shapes, dtype=np.float64)
    median_shape = [int(round(v)) for v in np.median(sz * sp / np.asarray(tgt), axis=0)]
    if patch_size:
        patch = [int(p) for p in patch_size]
        if len(patch) != 3 or any(p < 8 for p in patch):
            raise InputError(f"patch size must be three integers >= 8, got {patch_size}")
        pools, convs = pooling(tgt, patch)
        div = _divisor(pools)
        bad = [a for a in range(3) if patch[a] % div[a]]
        if bad:
            raise InputError(f"patch size {patch} is not divisible by the network's pooling {div} "
                             f"on axis {bad[0]}; use multiples of {div}")
    else:
        patch = [max(8, m) for m in median_shape]
        while math.prod(patch) > max_patch_voxels:
            mm = [p * s for p, s in zip(patch, tgt, strict=True)]
            a = int(np.argmax(mm))
            patch[a] = max(8, int(patch[a] * 0.9))
        pools, convs = pooling(tgt, patch)
        div = _divisor(pools)
        patch = [max(d, int(p // d) * d) for p, d in zip(patch, div, strict=True)]
        pools, convs = pooling(tgt, patch)
    norm = normalization_scheme(fp)
    axes = list(mirror) if mirror is not None else mirror_axes(label_names)
    if any(a not in (0, 1, 2) for a in axes):
        raise InputError(f"mirror axes must be among 0, 1, 2, got {axes}")
    return Plan(tgt, patch, pools, convs, norm, median_shape, tta_axes=axes)
