"""Training plan for 2D networks: nnU-Net's 2D configuration, on 2D images or on slices.

A 2D dataset is either truly 2D (every image one slice thick: PNG, 2D NIfTI) or 3D
volumes trained slice by slice (``slices="axial"|"coronal"|"sagittal"``), as the Synapse
papers do. Either way the slices are planes of the *oriented* volume whose last axis is
the slice axis, so the plan's ``orientation`` says which planes: axial = RAS (slices along
S), coronal = RSA (along A), sagittal = ASR (along R). The bundle records it, and
inference reorients a study the same way before segmenting it slice by slice.

As nnU-Net's 2D plan: in-plane target spacing = the median in-plane spacing (the slice
axis keeps each case's own), patch = the median in-plane shape at that spacing, rounded
up to what the network divides (16 for ParaTransCNN/TransDAE, 32 for a U-Net) and capped
(``max_patch``, 256 px by default, a CPU budget); mirroring on the in-plane axes except
left-right when labels are sided. Normalisation as the 3D plan (CT: clip + dataset z-score).
"""

from __future__ import annotations

import math

import numpy as np

from medpipe.errors import InputError
from medpipe.training.fingerprint import Fingerprint
from medpipe.training.plan import Plan, mirror_axes, normalization_scheme

__all__ = ["SLICE_ORIENTATIONS", "make_plan_2d", "slice_axes"]

SLICE_ORIENTATIONS = {"axial": "RAS", "coronal": "RSA", "sagittal": "ASR"}
_RAS_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def slice_axes(orientation: str) -> list[int]:
    """The RAS axes (0 = R-L, 1 = A-P, 2 = S-I) that become the oriented array axes I, J, K."""
    return [_RAS_AXIS[c] for c in orientation.upper()]


def _orientation(fp: Fingerprint, slices: str | None) -> str:
    shapes = np.asarray(fp.shapes)
    if slices is not None:
        if slices not in SLICE_ORIENTATIONS:
            raise InputError(f"--slices must be one of {', '.join(SLICE_ORIENTATIONS)}, got {slices!r}")
        return SLICE_ORIENTATIONS[slices]
    flat = [a for a in range(3) if np.all(shapes[:, a] == 1)]
    if not flat:
        raise InputError(f"the dataset holds 3D volumes (median shape {np.median(shapes, 0).astype(int).tolist()}) "
                         "and the model is 2D; pass --slices axial (or coronal, sagittal) to train it on slices")
    return {2: "RAS", 1: "RSA", 0: "ASR"}[flat[-1]]


def make_plan_2d(fp: Fingerprint, *, divisor: int, slices: str | None = None, spacing: list[float] | None = None,
                 patch_size: list[int] | None = None, max_patch: int = 256,
                 label_names: dict[int, str] | None = None, mirror: list[int] | None = None) -> Plan:
    """The 2D plan for ``fp`` (``spacing``/``patch_size`` override the rules, in-plane)."""
    orientation = _orientation(fp, slices)
    a0, a1, _ = slice_axes(orientation)
    sp = np.asarray(fp.spacings, dtype=np.float64)[:, [a0, a1]]
    sz = np.asarray(fp.shapes, dtype=np.float64)[:, [a0, a1]]
    if spacing:
        tgt = [float(s) for s in spacing]
        if len(tgt) == 3:
            tgt = [tgt[a0], tgt[a1]]
        if len(tgt) != 2 or any(s <= 0 for s in tgt):
            raise InputError(f"a 2D plan's spacing is two positive in-plane millimetre values, got {spacing}")
    else:
        tgt = [float(v) for v in np.median(sp, axis=0)]
    median = [int(round(v)) for v in np.median(sz * sp / np.asarray(tgt), axis=0)]
    if patch_size:
        patch = [int(p) for p in patch_size]
        if len(patch) == 3:
            patch = patch[:2]
        bad = [p for p in patch if p < divisor or p % divisor]
        if len(patch) != 2 or bad:
            raise InputError(f"a 2D patch size must be two multiples of {divisor} (the network's divisor), "
                             f"got {patch_size}")
    else:
        cap = max(divisor, (max_patch // divisor) * divisor)
        patch = [min(cap, max(divisor, int(math.ceil(m / divisor)) * divisor)) for m in median]
    if mirror is not None:
        axes = [int(a) for a in mirror]
        if any(a not in (0, 1) for a in axes):
            raise InputError(f"a 2D model mirrors in-plane axes 0 and/or 1, got {axes}")
    else:  # left-right is RAS axis 0: keep it unmirrored when labels are sided
        keep_lr = mirror_axes(label_names) == [1, 2]
        axes = [i for i, a in enumerate((a0, a1)) if not (keep_lr and a == 0)]
    return Plan(tgt, patch, [], [], normalization_scheme(fp), median, tta_axes=axes, orientation=orientation)
