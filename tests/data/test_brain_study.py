"""Brain cases from the real offline brains, their k-space studies, and the lobar atlas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medpipe.data.brain_study import BRAIN_LABELS, brain_lesion_volume, brain_t1_training_case
from medpipe.data.brains import LOBE_LABELS, brain_lobes
from medpipe.errors import BundleError, InputError

pytest.importorskip("nilearn", reason="the MNI152 template ships in nilearn's wheel")
if not Path("/usr/share/mricron/templates/ch2bet.nii.gz").is_file():
    pytest.skip("Colin27 and AAL come with Debian's mricron-data (make setup installs it)", allow_module_level=True)


def test_a_case_is_a_warped_brain_with_a_lesion_in_white_matter() -> None:
    img, lab = brain_lesion_volume((48, 56, 48), (3.0, 3.0, 3.0), seed=1, lesion=True)
    assert img.shape == lab.shape == (48, 56, 48) and np.allclose(img.affine, lab.affine)
    assert lab.meta.extra["labels"] == BRAIN_LABELS and img.meta.extra["source_brain"] == "colin27"
    a, t1 = lab.array[0], img.array[0]
    counts = np.bincount(a.ravel(), minlength=4)
    assert counts[1] > 1000 and counts[2] > 1000 and 20 < counts[3] < counts[2]  # GM, WM, a lesion of some ml
    assert (t1 == 0).mean() > 0.3 and not a[t1 == 0].any()  # skull-stripped: no tissue label outside the brain
    # the lesion is darker than the white matter around it, on T1
    assert np.median(t1[a == 3]) < 0.75 * np.median(t1[a == 2])
    again, _ = brain_lesion_volume((48, 56, 48), (3.0, 3.0, 3.0), seed=1, lesion=True)
    other, other_lab = brain_lesion_volume((48, 56, 48), (3.0, 3.0, 3.0), seed=3, lesion=True)
    assert np.array_equal(again.array, img.array)  # a seed is a case
    assert not np.array_equal(other_lab.array, lab.array)  # another seed, another subject


def test_training_cases_add_noise_and_blur_like_a_reconstruction() -> None:
    clean, lab = brain_lesion_volume((32, 40, 32), (4.0, 4.0, 4.0), seed=2)
    noisy, lab2 = brain_t1_training_case((32, 40, 32), (4.0, 4.0, 4.0), seed=2)
    assert np.array_equal(lab.array, lab2.array)
    background = lab.array[0] == 0
    assert noisy.array[0][background].std() > clean.array[0][background].std()
    assert 0.01 <= noisy.meta.extra["noise_sigma"] <= 0.06


def test_lobes_cover_the_brain_and_put_left_on_the_left() -> None:
    from medpipe.io.volumes import read_volume
    from medpipe.models.bundle import resolve_bundle_path

    atlas = read_volume(resolve_bundle_path("brain_micdir") / "atlas" / "image.nii.gz")
    lobes = brain_lobes(atlas)
    a = lobes.array[0]
    assert lobes.meta.extra["labels"] == LOBE_LABELS and set(np.unique(a)) == {0, *LOBE_LABELS}
    assert np.array_equal(a > 0, atlas.array[0] > 0)  # every brain voxel (white matter too) has a lobe
    ijk = np.argwhere(a == 1)  # frontal_left
    x = (atlas.affine[:3, :3] @ ijk.T + atlas.affine[:3, 3:4])[0]
    assert np.median(x) < -10  # RAS: the patient's left is -x
    shipped = read_volume(resolve_bundle_path("brain_micdir") / "atlas" / "regions.nii.gz", is_label=True)
    assert np.array_equal(shipped.array[0], a)  # the bundle ships exactly what the code makes


def test_a_kspace_study_has_the_truth_on_its_own_grid(tmp_path: Path) -> None:
    from medpipe.data.mri_brain_studies import write_mri_brain_studies
    from medpipe.io.kspace import read_kspace
    from medpipe.io.volumes import read_volume
    from medpipe.pipeline.stages.recon import load_recon_model

    rows = write_mri_brain_studies(tmp_path / "k", 3, broken=2, broken_kind="truncated", progress=False,
                                   matrix=40, pixel_mm=5.0, slices=6, slice_mm=10.0)
    ks = read_kspace(rows[0]["file"])
    assert (ks.n_coils, ks.n_slices, ks.matrix) == (8, 6, (40, 40)) and not ks.is_undersampled
    truth = read_volume(rows[0]["truth"], is_label=True)
    assert truth.shape == (40, 40, 6) and np.allclose(truth.affine, ks.affine)
    assert ks.reference.shape == (6, 40, 40) and ks.reference.max() > 0
    assert rows[1]["broken"] == "truncated" and rows[1]["truth"] is None
    with pytest.raises(InputError, match=r"mri_1\.h5 is an HDF5 file that cannot be read: it is truncated"):
        read_kspace(rows[1]["file"])
    coils = write_mri_brain_studies(tmp_path / "c", 1, broken=1, broken_kind="coils", progress=False,
                                    matrix=40, pixel_mm=5.0, slices=4, slice_mm=10.0)
    wrong = read_kspace(coils[0]["file"])
    with pytest.raises(BundleError, match="trained on 8-coil k-space, this k-space has 12 coils"):
        load_recon_model("mri_brain_cirim", wrong.n_coils)
