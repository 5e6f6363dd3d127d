"""World-coordinate fields: the file form ITK reads, warping across different grids, labels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.registration.field import DisplacementField, warp_image
from medpipe.transforms import reorient


def _affine(spacing=(2.0, 2.0, 2.0), origin=(-40.0, -50.0, -30.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def test_identity_warp_across_grids_reproduces_the_fixed_image(brain_pair):
    fixed = brain_pair[0]
    lps = reorient(fixed, "LPI").image  # same voxels, other storage order and affine
    out = warp_image(lps, DisplacementField.identity(fixed))
    assert out.same_grid(fixed)
    assert np.allclose(out.array, fixed.array, atol=1e-3)
    labels = warp_image(reorient(brain_pair[1], "LPI").image, DisplacementField.identity(fixed))
    assert np.array_equal(labels.array, brain_pair[1].array) and labels.is_label


def test_translation_field_shifts_in_world_millimetres():
    arr = np.zeros((1, 20, 20, 20), np.float32)
    arr[0, 8:12, 8:12, 8:12] = 1.0
    fixed = Image(arr, _affine())
    moving = Image(arr.copy(), _affine())
    # fixed point x takes the moving value at x + (4 mm, 0, 0) = 2 voxels along I
    field = DisplacementField.from_affine(fixed, np.array([[1, 0, 0, 4.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    out = warp_image(moving, field, fill=0.0)
    assert np.allclose(out.array[0, 6:10, 8:12, 8:12], 1.0) and out.array[0, 10:12].max() < 1e-6


def test_file_form_is_an_itk_displacement_field(tmp_path):
    fixed = Image(np.zeros((1, 10, 12, 8), np.float32), _affine((2.0, 1.5, 3.0)))
    rng = np.random.default_rng(0)
    field = DisplacementField(rng.normal(0, 2, (3, 10, 12, 8)).astype(np.float32), fixed.affine)
    path = field.save(tmp_path / "f.nii.gz")
    back = DisplacementField.load(path)
    assert np.allclose(back.array, field.array, atol=1e-6) and np.allclose(back.affine, field.affine)
    # ITK reads it as a transform: the point of voxel (3, 4, 5) maps to x + u(x), in LPS
    tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    x_ras = fixed.world_coords(np.array([3.0, 4.0, 5.0]))
    y_lps = np.array(tx.TransformPoint(tuple(float(v) for v in x_ras * [-1, -1, 1])))
    assert np.allclose(y_lps * [-1, -1, 1], x_ras + field.array[:, 3, 4, 5], atol=1e-4)


def test_onehot_label_warp_keeps_labels_and_bad_fields_are_refused(tmp_path):
    lab = np.zeros((1, 16, 16, 16), np.uint8)
    lab[0, 4:12, 4:12, 4:8], lab[0, 4:12, 4:12, 8:12] = 1, 2
    img = Image(lab, _affine(), is_label=True)
    field = DisplacementField.from_affine(img, np.eye(4) + np.array([[0, 0, 0, 1.0], [0] * 4, [0] * 4, [0] * 4]))
    out = warp_image(img, field)
    assert set(np.unique(out.array)) == {0, 1, 2} and out.array.dtype == np.uint8
    with pytest.raises(InputError, match="NaN"):
        DisplacementField(np.full((3, 4, 4, 4), np.nan), np.eye(4))
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="not a readable NIfTI displacement field"):
        DisplacementField.load(tmp_path / "bad.nii.gz")


def test_sample_world_is_trilinear_inside_with_the_edge_value_in_the_half_voxel_slack():
    """Against scipy: map_coordinates (order 1) with the coordinates clamped to the grid is what
    a point inside the grid or within half a voxel of its border gets; farther out, the fill."""
    from scipy.ndimage import map_coordinates

    from medpipe.registration.field import sample_world

    rng = np.random.default_rng(3)
    vol = rng.random((1, 6, 7, 5)).astype(np.float32)
    aff = np.diag([2.0, 1.0, 1.5, 1.0])
    aff[:3, 3] = [-4.0, 3.0, 1.0]
    vox = rng.uniform(-1.2, 7.5, size=(400, 3))
    pts = vox @ aff[:3, :3].T + aff[:3, 3]
    got = sample_world(vol, aff, pts, order=1, fill=-7.0)[0]
    n = np.asarray(vol.shape[1:])
    inside = np.all((vox >= -0.5) & (vox <= n - 0.5), axis=-1)
    clamped = np.clip(vox, 0, n - 1)
    want = map_coordinates(vol[0].astype(np.float64), clamped.T, order=1)
    assert inside.sum() > 100 and (~inside).sum() > 50
    np.testing.assert_allclose(got[inside], want[inside], atol=1e-5)
    assert np.all(got[~inside] == -7.0)
