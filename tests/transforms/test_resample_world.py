"""Resampling keeps the physical centre, spacing and the world position of features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medpipe.image import Image
from medpipe.transforms import resample_to_spacing
from medpipe.transforms.interpolation import axis_taps, resample_separable


def _blob_image(affine: np.ndarray, shape=(40, 44, 36), centre=(17.3, 22.6, 15.8), sigma=3.0) -> Image:
    g = np.indices(shape).astype(np.float64)
    r2 = sum((g[i] - centre[i]) ** 2 for i in range(3))
    return Image(np.exp(-r2 / (2 * sigma**2)).astype(np.float32)[None], affine)


def _world_centroid(img: Image) -> np.ndarray:
    return img.world_coords(np.array(ndimage.center_of_mass(img.array[0])))


AFFINES = {
    "ras": np.diag([1.0, 1.2, 1.5, 1.0]),
    "lps_shifted": np.array([[-0.9, 0, 0, 40.0], [0, -0.9, 0, 12.0], [0, 0, 2.0, -300.0], [0, 0, 0, 1]]),
    "oblique": np.array(
        [[0.94, -0.34, 0.0, 5.0], [0.34, 0.94, 0.0, -7.0], [0.0, 0.0, 1.8, 33.0], [0, 0, 0, 1.0]]
    ),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("spacing", [1.5, 0.7, (2.0, None, 1.0)])
def test_centre_spacing_direction_and_features_preserved(name: str, spacing) -> None:
    img = _blob_image(AFFINES[name])
    out, rec = resample_to_spacing(img, spacing)
    want = np.array([img.spacing[i] if s is None else s for i, s in enumerate(np.broadcast_to(
        np.array(spacing, dtype=object), (3,)))], dtype=float)
    np.testing.assert_allclose(out.spacing, want, rtol=1e-9)
    np.testing.assert_allclose(out.direction, img.direction, atol=1e-9)
    centre_in = img.world_coords((np.array(img.shape) - 1) / 2)
    centre_out = out.world_coords((np.array(out.shape) - 1) / 2)
    np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)
    # Extent changes by less than one output voxel per axis.
    ext_in = np.array(img.shape) * np.array(img.spacing)
    ext_out = np.array(out.shape) * np.array(out.spacing)
    assert np.all(np.abs(ext_out - ext_in) <= np.array(out.spacing) / 2 + 1e-9)
    # A smooth blob stays where it is in the world (sub-0.1 mm).
    np.testing.assert_allclose(_world_centroid(out), _world_centroid(img), atol=0.1)
    assert rec["from"]["shape"] == list(img.shape) and rec["to"]["shape"] == list(out.shape)


def test_same_spacing_is_identity_for_every_order() -> None:
    img = _blob_image(AFFINES["oblique"])
    for order in (0, 1, 3):
        out, _ = resample_to_spacing(img, img.spacing, order=order)
        np.testing.assert_allclose(out.affine, img.affine, atol=1e-12)  # up to float rounding
        np.testing.assert_array_equal(out.array, img.array)


def test_linear_interpolation_is_exact_on_linear_ramps() -> None:
    # Linear and Catmull-Rom cubic both reproduce linear functions exactly (interior).
    shape = (20, 24, 18)
    g = np.indices(shape).astype(np.float32)
    ramp = 2.0 * g[0] - 1.5 * g[1] + 0.25 * g[2]
    img = Image(ramp[None], np.diag([1.0, 1.0, 1.0, 1.0]))
    for order in (1, 3):
        out, _ = resample_to_spacing(img, (0.7, 1.3, 0.9), order=order, anisotropic=False)
        ijk = np.indices(out.shape).reshape(3, -1).T
        src = np.linalg.solve(img.affine, np.c_[out.world_coords(ijk), np.ones(len(ijk))].T)[:3].T
        expected = (2.0 * src[:, 0] - 1.5 * src[:, 1] + 0.25 * src[:, 2]).reshape(out.shape)
        interior = tuple(slice(3, -3) for _ in range(3))
        np.testing.assert_allclose(out.array[0][interior], expected[interior], atol=1e-3)


def test_axis_taps_fill_outside_extent_and_clamp_at_edges() -> None:
    t = axis_taps(4, 6, 1.0, -1.0, 1)  # src = dst - 1: first sample is outside the extent
    assert not t.inside[0] and t.inside[1:5].all() and not t.inside[5]
    x = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    ident = axis_taps(2, 2, 1.0, 0.0, 1)
    out = resample_separable(x, (t, ident, ident), fill=-7.0)
    np.testing.assert_array_equal(out[:, 0, 0], [-7.0, 0.0, 1.0, 2.0, 3.0, -7.0])


def test_label_dtype_kept_and_labels_stay_in_the_label_set() -> None:
    lab = np.zeros((30, 30, 30), np.uint16)
    lab[5:20, 5:20, 5:20] = 300
    lab[12:25, 12:25, 12:25] = 7
    img = Image(lab[None], np.eye(4), is_label=True)
    for mode in ("onehot", "nearest"):
        out, _ = resample_to_spacing(img, 1.7, label_mode=mode)
        assert out.array.dtype == np.uint16
        assert set(np.unique(out.array)) == {0, 7, 300}
