"""2D training augmentation with albumentations: the 2D counterpart of ``augment.Augmenter``.

albumentations is the 2D ecosystem's augmentation library (fast OpenCV kernels, masks
warped with nearest-neighbour automatically). The chain follows the 2D papers and
nnU-Net's 2D strengths: rotation +-20 deg (TransUNet/ParaTransCNN) with mild scaling,
flips on the allowed axes, light elastic deformation, then brightness/contrast, gamma and
Gaussian noise.

Intensity transforms in albumentations assume floats in [0, 1] (gamma of a negative
z-score is NaN), so they run on a per-patch min-max rescaled copy and the result is
mapped back to the original range. The Compose owns its generators (seeded); their
states go into checkpoints, so a resumed run replays the same augmentations.

Example:
    >>> aug = Augmenter2D(seed=0, mirror_axes=(1,))
    >>> img, lab = aug(image_cij, label_ij)          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medpipe.errors import InputError

__all__ = ["Augmenter2D"]


def _albumentations():
    try:
        import albumentations as A
        import cv2
    except ImportError as exc:
        raise InputError("2D training augmentation needs albumentations: pip install 'medpipe[2d]'") from exc
    return A, cv2


class Augmenter2D:
    """Augments one ``(C, I, J)`` float image and its ``(I, J)`` or ``(1, I, J)`` label map."""

    def __init__(self, seed: int = 0, *, rotation_deg: float = 20.0, scale: tuple[float, float] = (0.85, 1.25),
                 mirror_axes: tuple[int, ...] = (0, 1), elastic: bool = True, p_spatial: float = 0.5):
        A, cv2 = _albumentations()
        if any(a not in (0, 1) for a in mirror_axes):
            raise InputError(f"2D mirror axes must be 0 and/or 1, got {tuple(mirror_axes)}")
        spatial: list[Any] = [A.Affine(rotate=(-rotation_deg, rotation_deg), scale=scale, p=p_spatial,
                                       interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                       border_mode=cv2.BORDER_REFLECT_101)]
        if elastic:
            spatial.append(A.ElasticTransform(alpha=30, sigma=6, p=0.15, border_mode=cv2.BORDER_REFLECT_101))
        # axis 0 of (I, J) is the image's rows: a vertical flip; axis 1 a horizontal one
        spatial += [A.VerticalFlip(p=0.5) if a == 0 else A.HorizontalFlip(p=0.5) for a in mirror_axes]
        self.spatial = A.Compose(spatial, seed=seed)
        self.intensity = A.Compose([
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.2, p=0.3),
            A.RandomGamma(gamma_limit=(70, 150), p=0.3),
            A.GaussNoise(std_range=(0.0, 0.05), p=0.15),
        ], seed=seed + 1)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab2d = label[0] if label.ndim == 3 else label
        hwc = np.ascontiguousarray(np.moveaxis(image.astype(np.float32, copy=False), 0, -1))
        out = self.spatial(image=hwc, mask=np.ascontiguousarray(lab2d.astype(np.uint8)))
        img, lab = out["image"], out["mask"]
        lo, hi = float(img.min()), float(img.max())
        if hi > lo:
            unit = (img - lo) / (hi - lo)
            img = self.intensity(image=unit.astype(np.float32))["image"] * (hi - lo) + lo
        img = np.moveaxis(img.reshape(*img.shape[:2], -1), -1, 0).astype(np.float32)
        lab = lab.astype(np.int64)
        return img, (lab[None] if label.ndim == 3 else lab)

    def _owners(self) -> list[Any]:
        """Everything that holds a generator: each Compose and each of its transforms (they
        draw from their own generators, seeded from the Compose's)."""
        return [o for comp in (self.spatial, self.intensity) for o in (comp, *comp.transforms)]

    def get_state(self) -> list[dict[str, Any]]:
        return [{"np": o.random_generator.bit_generator.state, "py": o.py_random.getstate()} for o in self._owners()]

    def set_state(self, state: list[dict[str, Any]]) -> None:
        for o, s in zip(self._owners(), state, strict=True):
            o.random_generator.bit_generator.state = s["np"]
            o.py_random.setstate(s["py"])
