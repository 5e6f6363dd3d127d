"""Tile planning for sliding-window inference, the nnU-Net way.

Why our own: MONAI's ``dense_patch_slices`` spaces tiles by a fixed interval and lets
the last one overlap arbitrarily; nnU-Net spreads the tiles evenly so the first starts
at 0 and the last ends exactly at the edge, which is what its reported accuracy assumes.
We also need tiles grouped by their position along the last axis, so the engine can
stream the stitching slab by slab (see ``sliding_window``).

Example:
    >>> tile_starts(160, 96, overlap=0.5)
    [0, 32, 64]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

__all__ = ["tile_starts", "TilePlan", "plan_tiles", "pad_amounts"]


def tile_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Start indices along one axis: step <= (1 - overlap) * patch, last tile touches the edge."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch ({patch}); pad it first")
    target_step = max(1.0, patch * (1.0 - overlap))
    n = int(math.ceil((size - patch) / target_step)) + 1
    if n == 1:
        return [0]
    actual = (size - patch) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def pad_amounts(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis so every axis is at least the patch (centred, like nnU-Net)."""
    out = []
    for s, p in zip(shape, patch, strict=True):
        total = max(0, p - s)
        out.append((total // 2, total - total // 2))
    return out


@dataclass(frozen=True)
class TilePlan:
    """All tiles of one (padded) volume, grouped by their start along the last axis."""

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]  # per axis

    @property
    def n_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def groups(self) -> list[tuple[int, list[tuple[int, ...]]]]:
        """``[(z_start, [tile origins with that z_start]), ...]`` in increasing ``z_start``."""
        *lead, last = self.starts
        return [(z, [(*xy, z) for xy in product(*lead)]) for z in last]

    def completed_before(self, group_index: int) -> int:
        """After processing group ``group_index``, every index below this along the last
        axis has received all its tiles (no later tile starts lower)."""
        last = self.starts[-1]
        return last[group_index + 1] if group_index + 1 < len(last) else self.shape[-1]


def plan_tiles(shape: Sequence[int], patch: Sequence[int], overlap: float | Sequence[float] = 0.5) -> TilePlan:
    """Plan tiles for a volume already padded to at least ``patch``; ``overlap`` is one
    fraction for every axis or one per axis (slice-wise 2D inference: 0 along the slices)."""
    if len(shape) != len(patch):
        raise ValueError(f"patch {tuple(patch)} and volume {tuple(shape)} differ in dimensions")
    overlaps = [float(overlap)] * len(shape) if isinstance(overlap, (int, float)) else [float(o) for o in overlap]
    if len(overlaps) != len(shape):
        raise ValueError(f"{len(overlaps)} overlaps for a {len(shape)}-D volume")
    starts = tuple(tuple(tile_starts(s, p, o)) for s, p, o in zip(shape, patch, overlaps, strict=True))
    return TilePlan(tuple(int(s) for s in shape), tuple(int(p) for p in patch), starts)
