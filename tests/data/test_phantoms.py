"""Synthetic phantoms: deterministic, anatomically plausible, labels consistent with the image."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.data.phantoms import CT_COLORS, CT_LABELS, MR_LABELS, ct_phantom, mr_brain_phantom
from medpipe.errors import InputError

SMALL_CT = dict(shape=(96, 84, 80), spacing=(4.0, 4.0, 4.0))  # the whole abdomen at 4 mm voxels


@pytest.fixture(scope="module")
def ct_pair():
    return ct_phantom(**SMALL_CT, seed=0)


def test_same_seed_gives_identical_arrays():
    a_img, a_seg = ct_phantom(**SMALL_CT, seed=4, vary=True)
    b_img, b_seg = ct_phantom(**SMALL_CT, seed=4, vary=True)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_seg.array, b_seg.array)


def test_seed_changes_noise_but_not_anatomy_without_vary():
    a_img, a_seg = ct_phantom(**SMALL_CT, seed=1)
    b_img, b_seg = ct_phantom(**SMALL_CT, seed=2)
    np.testing.assert_array_equal(a_seg.array, b_seg.array)
    assert not np.array_equal(a_img.array, b_img.array)


def test_vary_changes_anatomy():
    _, a = ct_phantom(**SMALL_CT, seed=1, vary=True)
    _, b = ct_phantom(**SMALL_CT, seed=2, vary=True)
    changed = np.mean(a.array != b.array)
    assert changed > 0.01
    vol_a = np.bincount(a.array.ravel(), minlength=9)
    vol_b = np.bincount(b.array.ravel(), minlength=9)
    assert not np.array_equal(vol_a, vol_b)


def test_types_meta_and_default_affine(ct_pair):
    img, seg = ct_pair
    assert img.array.dtype == np.float32 and img.meta.modality == "CT"
    assert seg.array.dtype == np.uint8 and seg.is_label
    assert seg.meta.extra["labels"] == CT_LABELS
    assert set(CT_COLORS) == set(CT_LABELS)
    assert img.same_grid(seg)
    assert img.orientation == "LPS"  # stored like an axial DICOM series
    np.testing.assert_allclose(img.spacing, SMALL_CT["spacing"])


def test_all_organs_present_with_plausible_volumes(ct_pair):
    _, seg = ct_pair
    voxel_ml = np.prod(SMALL_CT["spacing"]) / 1000.0
    counts = np.bincount(seg.array.ravel(), minlength=9)
    vols = {CT_LABELS[k]: counts[k] * voxel_ml for k in CT_LABELS}
    assert all(v > 0.5 for v in vols.values()), vols
    assert max(vols, key=vols.get) == "liver"
    assert vols["liver"] > 3 * vols["spleen"]
    assert 0.5 < vols["kidney_right"] / vols["kidney_left"] < 2.0
    assert set(np.unique(seg.array)) == {0, *CT_LABELS}


# Adult reference ranges (CT volumetry and anatomy texts): the phantom must stay inside them
# whatever grid samples it, because its anatomy has physical sizes.
ADULT_ML = {"liver": (1000, 2500), "spleen": (100, 400), "kidney_right": (90, 250), "kidney_left": (90, 250),
            "stomach": (100, 1000), "pancreas": (40, 120)}


@pytest.mark.parametrize("grid", [((128, 112, 104), (3.0, 3.0, 3.0)), ((80, 72, 64), (5.0, 4.5, 5.0))],
                         ids=["3mm", "5mm"])
def test_organs_have_adult_sizes_at_any_grid(grid):
    shape, spacing = grid
    for seed in (0, 3, 7):
        img, seg = ct_phantom(shape, spacing, seed=seed, vary=seed > 0)
        lab = seg.array[0]
        ml = np.bincount(lab.ravel(), minlength=9) * np.prod(spacing) / 1000.0
        for k, name in CT_LABELS.items():
            if name in ADULT_ML:
                lo, hi = ADULT_ML[name]
                assert lo <= ml[k] <= hi, (grid, seed, name, ml[k])
        body = img.array[0, :, :, shape[2] // 2] > -500
        width = np.ptp(np.flatnonzero(body.any(axis=1))) * spacing[0]
        depth = np.ptp(np.flatnonzero(body.any(axis=0))) * spacing[1]
        assert 290 <= width <= 380 and 210 <= depth <= 300, (width, depth)  # an adult abdomen, about 335 x 260 mm
        aorta_mm2 = (lab == 6).sum(axis=(0, 1)).max() * spacing[0] * spacing[1]
        assert 15 <= 2 * np.sqrt(aorta_mm2 / np.pi) <= 30  # abdominal aorta diameter


def test_same_anatomy_at_two_grids():
    """Volumes agree across grids (within partial-volume error), unlike an array-relative layout."""
    fine = ct_phantom((128, 112, 104), (3.0, 3.0, 3.0), seed=2, vary=True)[1].array[0]
    coarse = ct_phantom((64, 56, 52), (6.0, 6.0, 6.0), seed=2, vary=True)[1].array[0]
    ml_fine = np.bincount(fine.ravel(), minlength=9)[1:] * 0.027
    ml_coarse = np.bincount(coarse.ravel(), minlength=9)[1:] * 0.216
    np.testing.assert_allclose(ml_coarse[[0, 1, 2, 3, 4]], ml_fine[[0, 1, 2, 3, 4]], rtol=0.12)


def test_labels_lie_inside_the_body(ct_pair):
    img, seg = ct_pair
    # Air outside the body is around -1000 HU: no labelled voxel may sit in air outside.
    body = img.array[0] > -500
    from scipy import ndimage

    body = np.stack([ndimage.binary_fill_holes(body[:, :, k]) for k in range(body.shape[2])], axis=-1)
    assert not np.any((seg.array[0] > 0) & ~body)


def test_liver_is_on_the_patient_right(ct_pair):
    img, seg = ct_pair
    ijk = np.argwhere(seg.array[0] == 1).mean(axis=0)
    centre = (np.array(img.shape) - 1) / 2
    world_liver = img.world_coords(ijk)
    world_centre = img.world_coords(centre)
    assert world_liver[0] > world_centre[0]  # RAS: +x is the patient's right


def test_hounsfield_units_are_realistic(ct_pair):
    img, seg = ct_pair
    hu, lab = img.array[0], seg.array[0]
    med = {name: float(np.median(hu[lab == k])) for k, name in CT_LABELS.items()}
    assert 45 < med["liver"] < 75
    assert 35 < med["spleen"] < 65
    assert 80 < med["kidney_left"] < 180
    assert 150 < med["aorta"] < 250
    assert med["vertebrae"] > 400
    assert hu.min() >= -1024
    assert abs(float(np.median(hu[0:3, 0:3, :])) + 1000) < 30  # air in the corner
    # Noise: the deep liver interior has a standard deviation in the 5-25 HU range.
    from scipy import ndimage

    core = ndimage.binary_erosion(lab == 1, iterations=3)
    assert 5 < float(hu[core].std()) < 25


def test_stomach_holds_gas(ct_pair):
    img, seg = ct_pair
    assert np.sum((seg.array[0] == 5) & (img.array[0] < -500)) > 10


def test_mr_brain_phantom():
    img, seg = mr_brain_phantom(shape=(48, 48, 40), seed=0)
    assert img.meta.modality == "MR" and seg.meta.extra["labels"] == MR_LABELS
    assert img.array.dtype == np.float32 and seg.array.dtype == np.uint8
    lab, t1 = seg.array[0], img.array[0]
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    wm, gm, csf = (float(np.median(t1[lab == k])) for k in (1, 2, 3))
    assert wm > gm > csf  # T1 contrast
    assert np.all(t1 >= 0)  # Rician magnitude is non-negative
    img2, _ = mr_brain_phantom(shape=(48, 48, 40), seed=0)
    np.testing.assert_array_equal(img.array, img2.array)
    _, seg3 = mr_brain_phantom(shape=(48, 48, 40), seed=5, vary=True)
    assert not np.array_equal(seg3.array, seg.array)


def test_custom_affine_is_used():
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    img, seg = ct_phantom(shape=(32, 32, 24), affine=aff)
    np.testing.assert_array_equal(img.affine, aff)
    np.testing.assert_array_equal(seg.affine, aff)


def test_bad_shape_is_refused():
    with pytest.raises(InputError, match="phantom shape"):
        ct_phantom(shape=(4, 64, 64))
    with pytest.raises(InputError, match="spacing"):
        mr_brain_phantom(spacing=(1.0, 0.0, 1.0))
