"""Random training patches with nnU-Net's foreground oversampling.

A third of the patches (``fg_fraction``) are centred on a random voxel of a random
class present in the case — small organs would otherwise almost never be seen — the
rest are uniform over the case. Cases smaller than the patch are padded (image with its
per-channel minimum, label with background). The sampler owns its generator, so a seed
replays the same patches and its state goes into checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PatchSampler", "pad_to_patch"]


def pad_to_patch(image: np.ndarray, label: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad ``(C, I, J, K)`` / ``(I, J, K)`` symmetrically up to ``patch``; returns the offset too."""
    shape = np.asarray(label.shape)
    need = np.maximum(np.asarray(patch) - shape, 0)
    if not need.any():
        return image, label, np.zeros(3, dtype=np.int64)
    before = need // 2
    pads = [(int(b), int(n - b)) for b, n in zip(before, need, strict=True)]
    lo = image.reshape(image.shape[0], -1).min(axis=1)
    img = np.stack([np.pad(image[c], pads, constant_values=lo[c]) for c in range(image.shape[0])])
    lab = np.pad(label, pads, constant_values=0)
    return img, lab, before.astype(np.int64)


class PatchSampler:
    """Draws ``(image (C, *patch), label (*patch))`` patches from preprocessed cases."""

    def __init__(self, cases: Sequence[dict[str, Any]], patch_size: Sequence[int], fg_fraction: float = 1 / 3,
                 seed: int = 0):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.patch = np.asarray([int(p) for p in patch_size])
        self.fg_fraction = float(fg_fraction)
        self.rng = np.random.default_rng(seed)
        self.cases = []
        for c in cases:
            img, lab, offset = pad_to_patch(c["image"], c["label"], self.patch)
            locs = {k: v + offset for k, v in c.get("locations", {}).items() if len(v)}
            self.cases.append((img, lab, locs))
        self.forced_count = 0
        self.drawn = 0

    def sample(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """One patch; the flag says whether it was forced onto foreground."""
        img, lab, locs = self.cases[int(self.rng.integers(len(self.cases)))]
        shape = np.asarray(lab.shape)
        hi = shape - self.patch
        forced = bool(self.rng.random() < self.fg_fraction) and bool(locs)
        if forced:
            cls = list(locs)[int(self.rng.integers(len(locs)))]
            centre = locs[cls][int(self.rng.integers(len(locs[cls])))]
            start = np.clip(centre - self.patch // 2, 0, hi)
        else:
            start = np.array([int(self.rng.integers(h + 1)) for h in hi])
        sl = tuple(slice(int(s), int(s + p)) for s, p in zip(start, self.patch, strict=True))
        self.drawn += 1
        self.forced_count += forced
        return img[(slice(None), *sl)], lab[sl], forced

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patches stacked: image ``(n, C, *patch)`` float32, label ``(n, 1, *patch)`` int64."""
        imgs, labs = [], []
        for _ in range(n):
            i, lab, _ = self.sample()
            imgs.append(i)
            labs.append(lab[None])
        return np.stack(imgs).astype(np.float32), np.stack(labs).astype(np.int64)
