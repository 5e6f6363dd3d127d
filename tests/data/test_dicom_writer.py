"""DICOM series writer: geometry read back by SimpleITK equals the Image, pixels exact, variants real."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_rescale
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from medpipe.data.dicom_writer import dicom_rescale, write_dicom_series, write_dicom_study
from medpipe.data.example_study import EXAMPLE_CT_SHAPE, EXAMPLE_CT_SPACING
from medpipe.data.phantoms import ct_phantom, mr_brain_phantom
from medpipe.errors import GeometryError, InputError
from medpipe.image import Image

SHAPE = (24, 20, 8)


def _rot(ax: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    r = np.eye(3)
    i, j = [a for a in range(3) if a != ax]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(kind: str) -> np.ndarray:
    aff = np.eye(4)
    sp = np.diag([0.8, 0.9, 2.5])
    if kind == "lps":  # axial, stored like a scanner writes it
        aff[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ sp
    elif kind == "ras":
        aff[:3, :3] = sp
    elif kind == "oblique":
        aff[:3, :3] = _rot(0, 20.0) @ _rot(1, -12.0) @ np.diag([-1.0, -1.0, 1.0]) @ sp
    elif kind == "feet_first":  # slices run superior -> inferior
        aff[:3, :3] = np.diag([1.0, -1.0, -1.0]) @ sp
    aff[:3, 3] = [31.7, -12.25, -140.0]
    return aff


def _ct(kind: str = "lps") -> Image:
    img, _ = ct_phantom(shape=SHAPE, spacing=(0.8, 0.9, 2.5), affine=_affine(kind))
    return img.with_array(np.round(img.array))


def _read_sitk(folder) -> Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return Image.from_sitk(reader.Execute())


def _pydicom_volume(files) -> tuple[np.ndarray, list]:
    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    vol = np.stack([apply_rescale(d.pixel_array, d) for d in dss], axis=-1)  # (rows=J, cols=I, K)
    return vol.transpose(1, 0, 2), dss


@pytest.mark.parametrize("kind", ["lps", "ras", "oblique", "feet_first"])
def test_simpleitk_geometry_equals_image(tmp_path, kind):
    img = _ct(kind)
    files = write_dicom_series(img, tmp_path / kind)
    assert len(files) == SHAPE[2]
    back = _read_sitk(tmp_path / kind)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, img.array)


def test_tags_and_pixel_spacing_order(tmp_path):
    img = _ct("lps")
    files = write_dicom_series(img, tmp_path / "s", series_description="CT ABD", series_number=7)
    ds = pydicom.dcmread(files[3])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
    assert ds.Manufacturer == "medpipe phantom" and ds.SeriesNumber == 7 and ds.SeriesDescription == "CT ABD"
    assert ds.Rows == SHAPE[1] and ds.Columns == SHAPE[0]
    assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.8]  # row spacing (along J) first
    assert float(ds.SliceThickness) == 2.5 and float(ds.SpacingBetweenSlices) == 2.5
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    expected_ipp = np.diag([-1.0, -1.0, 1.0]) @ img.world_coords(np.array([0, 0, 3]))
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected_ipp, atol=1e-6)
    assert ds.InstanceNumber == 4
    assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
    assert ds.PixelRepresentation == 1
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    vol, dss = _pydicom_volume(files)
    np.testing.assert_array_equal(vol, img.array[0])
    assert len({d.SeriesInstanceUID for d in dss}) == 1 and len({d.SOPInstanceUID for d in dss}) == SHAPE[2]


def test_uids_are_deterministic_in_the_seed(tmp_path):
    img = _ct()
    a = pydicom.dcmread(write_dicom_series(img, tmp_path / "a", seed=3)[0])
    b = pydicom.dcmread(write_dicom_series(img, tmp_path / "b", seed=3)[0])
    c = pydicom.dcmread(write_dicom_series(img, tmp_path / "c", seed=4)[0])
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID != c.SeriesInstanceUID
    assert pydicom.uid.UID(a.SOPInstanceUID).is_valid


def test_real_valued_mr_gets_a_slope(tmp_path):
    mr, _ = mr_brain_phantom(shape=(20, 20, 8))
    files = write_dicom_series(mr, tmp_path / "mr")
    vol, dss = _pydicom_volume(files)
    assert dss[0].SOPClassUID == pydicom.uid.MRImageStorage and dss[0].Modality == "MR"
    slope = float(dss[0].RescaleSlope)
    assert slope != 1.0
    assert np.abs(vol - mr.array[0]).max() <= slope / 2 + 1e-6


@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_series_decode_to_identical_pixels(tmp_path, ts):
    img, _ = ct_phantom(shape=(40, 36, 8), spacing=(0.8, 0.9, 2.5), affine=_affine("oblique"))
    img = img.with_array(np.round(img.array))
    files = write_dicom_series(img, tmp_path / "c", transfer_syntax=ts)
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == ts
    vol, _ = _pydicom_volume(files)
    np.testing.assert_array_equal(vol, img.array[0])
    np.testing.assert_array_equal(_read_sitk(tmp_path / "c").array, img.array)


def test_multiframe_enhanced_ct(tmp_path):
    img = _ct("oblique")
    files = write_dicom_series(img, tmp_path / "mf", multiframe=True)
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage
    assert int(ds.NumberOfFrames) == SHAPE[2]
    frames = ds.pixel_array  # (frames, rows, cols)
    assert frames.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    shared = ds.SharedFunctionalGroupsSequence[0]
    slope = float(shared.PixelValueTransformationSequence[0].RescaleSlope)
    inter = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    np.testing.assert_array_equal(frames.transpose(2, 1, 0) * slope + inter, img.array[0])
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    lps = np.diag([-1.0, -1.0, 1.0]) @ img.direction
    np.testing.assert_allclose(iop, np.concatenate([lps[:, 0], lps[:, 1]]), atol=1e-6)
    last = ds.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0].ImagePositionPatient
    expected = np.diag([-1.0, -1.0, 1.0]) @ img.world_coords(np.array([0, 0, SHAPE[2] - 1]))
    np.testing.assert_allclose([float(v) for v in last], expected, atol=1e-5)


def test_gantry_tilt_shears_positions(tmp_path):
    img = _ct()
    files = write_dicom_series(img, tmp_path / "t", gantry_tilt_deg=15.0)
    dss = [pydicom.dcmread(f) for f in files[:2]]
    assert float(dss[0].GantryDetectorTilt) == 15.0
    assert [float(v) for v in dss[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    step = np.array([float(v) for v in dss[1].ImagePositionPatient]) - [float(v) for v in dss[0].ImagePositionPatient]
    np.testing.assert_allclose(step, [0.0, 2.5 * np.tan(np.radians(15.0)), 2.5], atol=1e-6)


def test_dropped_slices_and_shuffled_names(tmp_path):
    img = _ct()
    files = write_dicom_series(img, tmp_path / "d", drop_slices=(2, 5), shuffle=True, naming="noext", seed=1)
    assert len(files) == SHAPE[2] - 2
    assert all(f.suffix == "" for f in files)
    numbers = [int(pydicom.dcmread(f).InstanceNumber) for f in files]
    assert sorted(numbers) == [1, 2, 4, 5, 7, 8]
    assert numbers != sorted(numbers)  # written out of order
    assert len({f.name for f in files}) == len(files)
    assert not any(f.name.startswith("IM") for f in files)


def test_uid_naming(tmp_path):
    files = write_dicom_series(_ct(), tmp_path / "u", naming="uid")
    ds = pydicom.dcmread(files[0])
    assert files[0].name == f"{ds.SOPInstanceUID}.dcm"


def test_monochrome1_keeps_modality_values(tmp_path):
    img = _ct()
    files = write_dicom_series(img, tmp_path / "m1", monochrome1=True)
    vol, dss = _pydicom_volume(files)
    assert dss[0].PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(vol, img.array[0])
    plain, _ = _pydicom_volume(write_dicom_series(img, tmp_path / "m2"))
    raw1 = pydicom.dcmread(files[0]).pixel_array.astype(int)
    raw2 = pydicom.dcmread(tmp_path / "m2" / "IM00001.dcm").pixel_array.astype(int)
    np.testing.assert_array_equal(raw1, -1 - raw2)  # stored values inverted


def test_rescale_choices():
    ints = np.array([-1024.0, 0.0, 3071.0])
    stored, slope, inter = dicom_rescale(ints, "CT")
    assert (slope, inter) == (1.0, -1024.0) and stored.dtype == np.int16
    reals = np.array([0.0, 0.33, 1000.7])
    stored, slope, inter = dicom_rescale(reals, "MR")
    assert slope != 1.0 and np.abs(stored * slope + inter - reals).max() <= slope / 2
    with pytest.raises(InputError, match="integer pixel values"):
        dicom_rescale(reals, "MR", "none")
    with pytest.raises(InputError, match="NaN"):
        dicom_rescale(np.array([np.nan]), "CT")


def test_bad_requests_are_refused(tmp_path):
    img = _ct()
    with pytest.raises(InputError, match="one channel"):
        write_dicom_series(img.with_array(np.concatenate([img.array, img.array])), tmp_path / "x")
    with pytest.raises(InputError, match="drop_slices"):
        write_dicom_series(img, tmp_path / "x", drop_slices=(99,))
    sheared = img.affine.copy()
    sheared[:3, 1] += 0.3 * sheared[:3, 0]
    with pytest.raises(GeometryError, match="not perpendicular"):
        write_dicom_series(Image(img.array, sheared), tmp_path / "x", modality="CT")
    with pytest.raises(InputError, match="at least 32x32"):
        write_dicom_series(img, tmp_path / "x", transfer_syntax=JPEG2000Lossless)
    with pytest.raises(InputError, match="no DICOM encoder"):
        write_dicom_series(img, tmp_path / "x", transfer_syntax=pydicom.uid.JPEGExtended12Bit)


def test_example_study(tmp_path):
    info = write_dicom_study(tmp_path / "study", seed=0)
    root = tmp_path / "study"
    assert (root / "README.txt").is_file()
    assert {s["role"] for s in info["series"]} == {"axial", "coronal", "report"}
    axial = next(s for s in info["series"] if s["role"] == "axial")
    assert len(axial["files"]) == EXAMPLE_CT_SHAPE[2] and all(f.exists() for f in axial["files"])
    ct, _ = ct_phantom(EXAMPLE_CT_SHAPE, EXAMPLE_CT_SPACING, seed=0)
    back = _read_sitk(axial["files"][0].parent)
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, np.round(ct.array))
    coronal = next(s for s in info["series"] if s["role"] == "coronal")
    cds = pydicom.dcmread(coronal["files"][0])
    assert cds.file_meta.TransferSyntaxUID == RLELossless
    assert cds.StudyInstanceUID == info["study_uid"] and cds.FrameOfReferenceUID == info["frame_of_reference_uid"]
    assert [float(v) for v in cds.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    sr = pydicom.dcmread(next(s for s in info["series"] if s["role"] == "report")["files"][0])
    assert sr.SOPClassUID == pydicom.uid.BasicTextSRStorage and sr.StudyInstanceUID == info["study_uid"]
    with pytest.raises(InputError, match="already exists"):
        write_dicom_study(root)
