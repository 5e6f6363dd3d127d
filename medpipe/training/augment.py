"""Training augmentation: MONAI's dictionary transforms in nnU-Net's order and strengths.

Spatial (rotation +-30 deg, scale 0.7-1.4 as nnU-Net; optional light elastic, slow on
CPU) then intensity (multiplicative brightness, additive shift, gamma contrast) then
mirroring on every axis. Every transform owns its own seeded generator (MONAI's
``set_random_state``), so a seed replays the same augmentations and the generator
states can be checkpointed and restored.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["Augmenter"]


class Augmenter:
    """Applies the augmentation chain to one ``(C, *patch)`` image and its ``(1, *patch)`` label."""

    def __init__(self, seed: int = 0, elastic: bool = False, rotation_deg: float = 30.0,
                 scale: tuple[float, float] = (0.7, 1.4), mirror_axes: tuple[int, ...] = (0, 1, 2),
                 p_spatial: float = 0.2):
        from monai.transforms import (
            Rand3DElasticd,
            RandAdjustContrastd,
            RandAffined,
            RandFlipd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        keys = ("image", "label")
        rot = math.radians(rotation_deg)
        self.transforms: list[Any] = [
            RandAffined(keys, prob=p_spatial, rotate_range=(rot, rot, rot),
                        scale_range=[(scale[0] - 1, scale[1] - 1)] * 3,
                        mode=("bilinear", "nearest"), padding_mode="border", cache_grid=False),
        ]
        if elastic:
            self.transforms.append(Rand3DElasticd(keys, sigma_range=(9, 13), magnitude_range=(0, 200), prob=0.1,
                                                  mode=("bilinear", "nearest"), padding_mode="border"))
        self.transforms += [
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandShiftIntensityd("image", offsets=0.1, prob=0.15),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        ]
        self.transforms += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in mirror_axes]
        for i, t in enumerate(self.transforms):
            t.set_random_state(seed=(seed * 7919 + i) % (2**32))

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image)),
                             "label": torch.from_numpy(np.ascontiguousarray(label)).float()}
        for t in self.transforms:
            d = t(d)
        img = torch.as_tensor(d["image"]).detach().cpu().numpy().astype(np.float32, copy=False)
        lab = torch.as_tensor(d["label"]).detach().cpu().numpy()
        return img, np.rint(lab).astype(np.int64)

    def get_state(self) -> list[Any]:
        return [t.R.get_state() for t in self.transforms]

    def set_state(self, states: list[Any]) -> None:
        for t, s in zip(self.transforms, states, strict=True):
            t.R.set_state(s)
