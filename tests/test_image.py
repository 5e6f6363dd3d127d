"""The Image type: geometry properties and lossless conversions to the field's libraries."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.errors import InputError
from medpipe.image import Image, ImageMeta


def oblique_affine(spacing=(0.8, 0.9, 2.5), angle_deg=17.0, flip_x=True) -> np.ndarray:
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    if flip_x:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing)
    aff[:3, 3] = [-101.5, 37.25, -12.0]
    return aff


@pytest.fixture
def img() -> Image:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(1, 6, 7, 8)).astype(np.float32)
    return Image(arr, oblique_affine(), ImageMeta(modality="CT", series_uid="1.2.3", description="test"))


def test_geometry_properties(img: Image) -> None:
    assert img.shape == (6, 7, 8)
    assert img.n_channels == 1
    np.testing.assert_allclose(img.spacing, (0.8, 0.9, 2.5), atol=1e-12)
    np.testing.assert_allclose(img.direction.T @ img.direction, np.eye(3), atol=1e-12)
    assert img.is_oblique()
    assert not Image(np.zeros((4, 4, 4)), np.diag([-1.0, -1.0, 2.0, 1.0])).is_oblique()
    assert Image(np.zeros((4, 4, 4)), np.diag([-1.0, -1.0, 2.0, 1.0])).orientation == "LPS"
    # voxel -> world is the affine
    np.testing.assert_allclose(img.world_coords(np.array([0, 0, 0])), img.affine[:3, 3])
    np.testing.assert_allclose(img.world_coords(np.array([1, 2, 3])), (img.affine @ np.array([1, 2, 3, 1.0]))[:3])


def test_3d_array_gets_channel_axis() -> None:
    im = Image(np.zeros((3, 4, 5)), np.eye(4))
    assert im.array.shape == (1, 3, 4, 5)


@pytest.mark.parametrize(
    "array, affine, message",
    [
        (np.zeros((2, 3)), np.eye(4), "channel-first"),
        (np.zeros((1, 2, 3, 4)), np.eye(3), "4x4"),
        (np.zeros((1, 2, 3, 4)), np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (np.zeros((1, 2, 3, 4)), np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_invalid_construction_is_refused(array, affine, message) -> None:
    with pytest.raises(InputError, match=message):
        Image(array, affine)


def test_with_array_refuses_a_changed_grid(img: Image) -> None:
    out = img.with_array(img.array * 2)
    np.testing.assert_array_equal(out.affine, img.affine)
    assert out.meta.series_uid == "1.2.3" and out.meta is not img.meta
    with pytest.raises(InputError, match="medpipe.transforms"):
        img.with_array(np.transpose(img.array, (0, 2, 1, 3)))


def test_nibabel_round_trip_is_exact(img: Image) -> None:
    nii = img.to_nibabel()
    back = Image.from_nibabel(nii)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-6)
    assert nii.header.get_zooms()[:3] == pytest.approx(img.spacing, abs=1e-5)


def test_sitk_round_trip_and_lps_physical_points(img: Image) -> None:
    s = img.to_sitk()
    back = Image.from_sitk(s)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-9)
    # ITK's physical space is LPS: the same voxel maps to (-x, -y, z) of our RAS world.
    ras = img.world_coords(np.array([2, 3, 4]))
    lps = np.array(s.TransformIndexToPhysicalPoint((2, 3, 4)))
    np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-9)
    # and the voxel value sits at the same index (ITK index order is x, y, z = I, J, K)
    assert s.GetPixel(2, 3, 4) == pytest.approx(float(img.array[0, 2, 3, 4]))


def test_multichannel_sitk_and_nibabel() -> None:
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    im = Image(arr, oblique_affine())
    np.testing.assert_array_equal(Image.from_sitk(im.to_sitk()).array, arr)
    np.testing.assert_array_equal(Image.from_nibabel(im.to_nibabel()).array, arr)


def test_metatensor_round_trip(img: Image) -> None:
    mt = img.to_metatensor()
    assert tuple(mt.shape) == (1, 6, 7, 8)
    back = Image.from_metatensor(mt)
    np.testing.assert_allclose(back.affine, img.affine)
    np.testing.assert_array_equal(back.array, img.array)
