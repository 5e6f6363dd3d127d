"""Normalisation values and foreground cropping."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.data.phantoms import ct_phantom
from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.transforms import crop_foreground, crop_to_bbox, normalize, uncrop


def _img(a: np.ndarray) -> Image:
    return Image(a.astype(np.float32)[None], np.eye(4))


def test_ct_scheme_clips_then_uses_the_given_dataset_statistics() -> None:
    a = np.array([-2000.0, -1000.0, 0.0, 100.0, 3000.0]).reshape(5, 1, 1)
    out, rec = normalize(_img(a), "ct", clip=(-1000, 1000), mean=50.0, std=200.0)
    np.testing.assert_allclose(out.array.ravel(), (np.array([-1000, -1000, 0, 100, 1000]) - 50) / 200, rtol=1e-6)
    assert rec["stats_source"] == "given" and out.meta.extra["intensity_history"][-1] == rec


def test_ct_scheme_without_dataset_statistics_uses_image_foreground() -> None:
    ct, _ = ct_phantom((32, 32, 24), (1.5, 1.5, 2.0), seed=0)
    out, rec = normalize(ct, "ct")
    fg = ct.array[ct.array > -500]
    lo, hi = np.percentile(fg, [0.5, 99.5])
    np.testing.assert_allclose(rec["clip"], [lo, hi], rtol=1e-5)
    z = out.array[ct.array > -500]
    clipped = np.clip(fg, lo, hi)
    np.testing.assert_allclose(z.mean(), 0.0, atol=1e-3 + abs(clipped.mean() - rec["mean"]))
    assert out.array.min() >= (lo - rec["mean"]) / rec["std"] - 1e-5


def test_zscore_per_image_and_foreground_only() -> None:
    rng = np.random.default_rng(0)
    a = np.zeros((20, 20, 20))
    a[5:15, 5:15, 5:15] = rng.normal(300.0, 40.0, (10, 10, 10))
    out, _ = normalize(_img(a), "zscore")
    assert abs(out.array.mean()) < 1e-4 and abs(out.array.std() - 1.0) < 1e-4
    out, rec = normalize(_img(a), "zscore", foreground_only=True)
    inside = out.array[0, 5:15, 5:15, 5:15]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1.0) < 1e-3
    assert np.all(out.array[0][a == 0] == 0.0)
    assert abs(rec["mean"] - 300.0) < 5.0


def test_window_scales_to_unit_interval() -> None:
    a = np.array([-500.0, -160.0, 40.0, 240.0, 900.0]).reshape(5, 1, 1)
    out, _ = normalize(_img(a), "window", window=(40, 400))
    np.testing.assert_allclose(out.array.ravel(), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_bad_normalisation_requests_are_input_errors() -> None:
    img = _img(np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="unknown normalisation scheme"):
        normalize(img, "minmax")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="low < high"):
        normalize(img, "ct", clip=(100, -100))
    with pytest.raises(InputError, match="label map"):
        normalize(Image(np.zeros((1, 4, 4, 4), np.uint8), np.eye(4), is_label=True), "zscore")


def test_crop_foreground_box_margin_and_affine() -> None:
    a = np.full((30, 30, 30), -1000.0)
    a[10:20, 8:12, 3:25] = 40.0
    aff = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2.5, -50], [0, 0, 0, 1.0]])
    img = Image(a.astype(np.float32)[None], aff)
    c, rec = crop_foreground(img, threshold=-500, margin=2)
    assert rec["bbox"] == [[8, 22], [6, 14], [1, 27]]
    assert c.shape == (14, 8, 26)
    # Voxel (0,0,0) of the crop is voxel (8,6,1) of the input, in the world too.
    np.testing.assert_allclose(c.world_coords(np.zeros(3)), img.world_coords(np.array([8, 6, 1])))
    back = uncrop(c, rec["bbox"], img.shape, img.affine, fill=-1000.0)
    np.testing.assert_array_equal(back.array, img.array)


def test_crop_of_an_empty_image_keeps_it_whole_and_bad_boxes_fail() -> None:
    img = _img(np.zeros((6, 7, 8)))
    c, rec = crop_foreground(img)
    assert c.shape == img.shape and rec["bbox"] == [[0, 6], [0, 7], [0, 8]]
    with pytest.raises(GeometryError, match="does not fit"):
        crop_to_bbox(img, [[0, 9], [0, 7], [0, 8]])
