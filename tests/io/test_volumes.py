"""Volume file I/O: geometry, dtype, channels and metadata survive every format both ways."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from medpipe.errors import InputError
from medpipe.image import Image, ImageMeta
from medpipe.io.volumes import read_volume, write_volume

FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"]
# NIfTI stores its sform in float32; the text headers of NRRD/MetaImage keep doubles.
ATOL = {".nii.gz": 1e-4, ".nii": 1e-4}


def _rot(ax: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    r = np.eye(3)
    i, j = [a for a in range(3) if a != ax]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affines() -> dict[str, np.ndarray]:
    lps = np.diag([-0.7, -0.7, 2.5, 1.0])
    lps[:3, 3] = [180.3, 201.7, -512.25]
    oblique = np.eye(4)
    oblique[:3, :3] = _rot(0, 17.0) @ _rot(2, -23.0) @ np.diag([0.8, 1.1, 3.0])
    oblique[:3, 3] = [-12.345678, 40.5, 7.0]
    flipped = np.diag([1.2, -1.3, -2.0, 1.0])  # J and K flipped, left-handed
    flipped[:3, 3] = [-90.0, 120.0, 30.0]
    permuted = np.array([[0, 0, -1.5, 60], [1.0, 0, 0, -80], [0, -1.25, 0, 40], [0, 0, 0, 1]])
    return {"lps": lps, "oblique": oblique, "flipped": flipped, "permuted": permuted}


@pytest.fixture
def ct_image() -> Image:
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, size=(1, 7, 6, 5)).astype(np.float32)
    meta = ImageMeta(modality="CT", series_uid="1.2.3", description="test series")
    return Image(arr, _affines()["oblique"], meta)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", list(_affines()))
def test_round_trip_keeps_geometry_and_values(tmp_path, suffix, name):
    aff = _affines()[name]
    arr = (np.arange(7 * 6 * 5, dtype=np.float32).reshape(1, 7, 6, 5) - 100.5) * 1.25
    img = Image(arr, aff, ImageMeta(modality="MR", description="round trip"))
    out = write_volume(img, tmp_path / f"vol{suffix}")
    assert out.exists()
    back = read_volume(out)
    assert back.shape == (7, 6, 5)
    np.testing.assert_allclose(back.affine, aff, atol=ATOL.get(suffix, 1e-9), rtol=0)
    np.testing.assert_array_equal(back.array, arr)
    assert back.array.dtype == np.float32
    assert back.orientation == img.orientation
    assert back.meta.modality == "MR"
    assert back.meta.description == "round trip"
    assert back.meta.source_files == [str(out)]


@pytest.mark.parametrize("suffix", FORMATS)
def test_label_maps_keep_integer_dtype_and_names(tmp_path, suffix):
    lab = np.zeros((1, 6, 5, 4), np.uint8)
    lab[0, 1:4, 1:3, 1:3] = 3
    lab[0, 4, 4, 3] = 7
    img = Image(lab, _affines()["lps"], ImageMeta(extra={"labels": {3: "kidney", 7: "aorta"}}), is_label=True)
    back = read_volume(write_volume(img, tmp_path / f"seg{suffix}"))
    assert back.is_label
    assert np.issubdtype(back.array.dtype, np.integer)
    np.testing.assert_array_equal(back.array, lab)
    assert back.meta.extra["labels"] == {3: "kidney", 7: "aorta"}


def test_int64_labels_are_written_compactly(tmp_path):
    lab = np.zeros((1, 4, 4, 4), np.int64)
    lab[0, 1, 1, 1] = 300
    img = Image(lab, np.eye(4), is_label=True)
    back = read_volume(write_volume(img, tmp_path / "seg.nii.gz"))
    assert back.array.dtype == np.uint16
    assert int(back.array.max()) == 300


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_multichannel_round_trip(tmp_path, suffix, ct_image):
    arr = np.stack([ct_image.array[0], -ct_image.array[0], ct_image.array[0] * 2])
    img = ct_image.with_array(arr)
    back = read_volume(write_volume(img, tmp_path / f"mc{suffix}"))
    assert back.n_channels == 3
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, img.affine, atol=ATOL.get(suffix, 1e-9))


def test_nrrd_on_disk_is_lps(tmp_path, ct_image):
    path = write_volume(ct_image, tmp_path / "ct.nrrd")
    _, hdr = nrrd.read(str(path))
    assert hdr["space"] == "left-posterior-superior"
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(hdr["space origin"], lps @ ct_image.affine[:3, 3], atol=1e-12)
    np.testing.assert_allclose(hdr["space directions"], (lps @ ct_image.affine[:3, :3]).T, atol=1e-12)


def test_metaimage_matches_simpleitk_lps(tmp_path, ct_image):
    path = write_volume(ct_image, tmp_path / "ct.mha")
    s = sitk.ReadImage(str(path))
    np.testing.assert_allclose(s.GetOrigin(), [-1, -1, 1] * ct_image.affine[:3, 3], atol=1e-12)
    np.testing.assert_allclose(s.GetSpacing(), ct_image.spacing, atol=1e-12)
    # voxel (i, j, k) of our array is ITK index (i, j, k)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s)[4, 3, 2], ct_image.array[0, 2, 3, 4])


def test_nifti_matches_nibabel(tmp_path, ct_image):
    path = write_volume(ct_image, tmp_path / "ct.nii.gz")
    nii = nib.load(str(path))
    np.testing.assert_allclose(nii.affine, ct_image.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(nii.dataobj), ct_image.array[0])


def test_reads_foreign_nrrd_in_ras_space(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    hdr = {"space": "right-anterior-superior", "space directions": np.diag([2.0, 3.0, 4.0]),
           "space origin": np.array([1.0, 2.0, 3.0]), "kinds": ["domain"] * 3}  # fmt: skip
    nrrd.write(str(tmp_path / "ras.nrrd"), data, hdr)
    img = read_volume(tmp_path / "ras.nrrd")
    expected = np.diag([2.0, 3.0, 4.0, 1.0])
    expected[:3, 3] = [1, 2, 3]
    np.testing.assert_array_equal(img.affine, expected)
    np.testing.assert_array_equal(img.array[0], data)


def test_scaled_nifti_reads_as_float32(tmp_path):
    values = (np.arange(8, dtype=np.float32) * 0.5 - 1024).reshape(2, 2, 2)
    nii = nib.Nifti1Image(values, np.eye(4))
    nii.header.set_data_dtype(np.int16)  # nibabel stores int16 + scl_slope/scl_inter
    nib.save(nii, str(tmp_path / "scaled.nii"))
    img = read_volume(tmp_path / "scaled.nii")
    assert img.array.dtype == np.float32
    assert nib.load(str(tmp_path / "scaled.nii")).get_data_dtype() == np.int16
    np.testing.assert_allclose(img.array[0], values, atol=0.05)


def test_write_is_atomic_and_respects_overwrite(tmp_path, ct_image):
    path = write_volume(ct_image, tmp_path / "ct.nii.gz")
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        write_volume(ct_image.with_array(ct_image.array + 1), path, overwrite=False)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ct.nii.gz"]  # no temporaries left behind


def test_detached_metaimage_leaves_only_its_two_files(tmp_path, ct_image):
    write_volume(ct_image, tmp_path / "ct.mhd")
    assert sorted(os.listdir(tmp_path)) == ["ct.mhd", "ct.zraw"]


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unsupported_extension_is_refused(tmp_path):
    (tmp_path / "scan.gif").write_bytes(b"x")
    with pytest.raises(InputError, match=r"scan\.gif has an unsupported extension"):
        read_volume(tmp_path / "scan.gif")
    with pytest.raises(InputError, match="unsupported extension"):
        write_volume(Image(np.zeros((1, 2, 2, 2)), np.eye(4)), tmp_path / "out.webp")
    (tmp_path / "scan.png").write_bytes(b"x")  # pictures are read (medpipe.io.image2d), a corrupt one is refused
    with pytest.raises(InputError, match=r"scan\.png could not be read as picture"):
        read_volume(tmp_path / "scan.png")
    with pytest.raises(InputError, match="has 2 slices and a picture holds one"):
        write_volume(Image(np.zeros((1, 2, 2, 2), np.uint8), np.eye(4)), tmp_path / "out.png")


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nii", "bad.nrrd", "bad.mha"])
def test_corrupt_file_gives_one_sentence(tmp_path, name):
    path = tmp_path / name
    payload = b"this is not an image at all" * 10
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    with pytest.raises(InputError) as info:
        read_volume(path)
    msg = str(info.value)
    assert str(path) in msg and "could not be read" in msg
    assert "\n" not in msg


def test_folder_is_refused(tmp_path):
    (tmp_path / "series.nii").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_volume(tmp_path / "series.nii")


def test_real_valued_file_cannot_be_a_label_map(tmp_path, ct_image):
    path = write_volume(ct_image, tmp_path / "ct.nrrd")
    with pytest.raises(InputError, match="non-integer values"):
        read_volume(path, is_label=True)


def test_image_load_save_delegate(tmp_path, ct_image):
    ct_image.save(tmp_path / "a.mha")
    back = Image.load(tmp_path / "a.mha")
    assert back.same_grid(ct_image, atol=1e-9)


def test_pictures_round_trip_as_one_slice_images(tmp_path):
    from PIL import Image as P

    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    P.fromarray(rgb).save(tmp_path / "photo.png")
    P.fromarray(np.dstack([rgb, np.full((30, 40), 255, np.uint8)])).save(tmp_path / "alpha.png")
    P.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "deep.tif")
    photo = read_volume(tmp_path / "photo.png")
    assert photo.shape == (30, 40, 1) and photo.n_channels == 3 and np.allclose(photo.affine, np.eye(4))
    assert np.array_equal(photo.array[..., 0], np.moveaxis(rgb, -1, 0))
    alpha = read_volume(tmp_path / "alpha.png")
    assert alpha.n_channels == 3 and "alpha channel was dropped" in alpha.meta.extra["warnings"][0]
    deep = read_volume(tmp_path / "deep.tif")
    assert deep.n_channels == 1 and deep.array.dtype == np.uint16 and deep.array.max() > 255
    labels = photo.with_array((photo.array[:1] > 128).astype(np.uint8), is_label=True)
    labels.meta.extra["labels"] = {1: "polyp"}
    write_volume(labels, tmp_path / "mask.png")
    back = read_volume(tmp_path / "mask.png")
    assert back.is_label and back.meta.extra["labels"] == {1: "polyp"} and np.array_equal(back.array, labels.array)
    with pytest.raises(InputError, match="JPEG is lossy"):
        write_volume(labels, tmp_path / "mask.jpg")
    with pytest.raises(InputError, match="holds float32 values; write it as NIfTI"):
        write_volume(photo.with_array(photo.array.astype(np.float32)), tmp_path / "f.png")
