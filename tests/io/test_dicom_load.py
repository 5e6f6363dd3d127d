"""DICOM -> Image: every series variant loads onto the exact grid and values it was written from."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.errors import DicomError
from medpipe.image import Image, ImageMeta
from medpipe.io.dicom import load_series, scan_study
from medpipe.io.volumes import read_volume, write_volume

SHAPE = (20, 16, 12)


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def _affine(direction: np.ndarray, spacing=(1.5, 1.2, 2.0), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _ramp_image(affine: np.ndarray, modality: str = "CT", shape=SHAPE) -> Image:
    """Integer values that differ per voxel, so any flip or shift shows."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    arr = (i * 3 + j * 50 + k * 900 - 500).astype(np.float32)
    return Image(arr, affine, ImageMeta(modality=modality, description="ramp"))


def assert_same_world(out: Image, ref: Image, atol: float = 1e-4) -> None:
    """Same voxels at the same world positions, allowing axis flips/permutations.

    DICOM stacks are ordered along the slice normal (row x column cosine), as ITK and
    dcm2niix do, so a left-handed input comes back with its slice axis reversed.
    """
    import nibabel as nib

    a = nib.as_closest_canonical(out.to_nibabel())
    b = nib.as_closest_canonical(ref.to_nibabel())
    np.testing.assert_allclose(a.affine, b.affine, atol=atol)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj).astype(out.array.dtype))


GEOMETRIES = {
    "axial_ras": np.eye(3),
    "axial_lps": np.diag([-1.0, -1.0, 1.0]),
    "flipped_k": np.diag([-1.0, -1.0, -1.0]),
    "sagittal": np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]),
    "oblique": _rotation(25, 30),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_geometry_and_values_exact(tmp_path, name):
    img = _ramp_image(_affine(GEOMETRIES[name]))
    write_dicom_series(img, tmp_path / "s", modality="CT", series_description=name, series_number=4)
    scan = scan_study(tmp_path / "s")
    assert len(scan.series) == 1
    info = scan.series[0]
    assert info.size == SHAPE and info.n_slices == SHAPE[2] and not info.problems
    assert info.series_number == 4 and info.description == name and info.modality == "CT"
    expected = {"sagittal": "sagittal", "coronal": "coronal", "oblique": "oblique"}.get(name, "axial")
    assert info.orientation == expected
    out = load_series(info)
    assert out.array.dtype == np.int16  # CT stored with intercept -1024, slope 1: exact integers
    assert_same_world(out, img)
    assert np.linalg.det(out.affine[:3, :3]) > 0  # stacked along row x column cosine, like ITK
    if np.linalg.det(img.affine[:3, :3]) > 0:  # right-handed input: identical grid, not just world
        np.testing.assert_allclose(out.affine, img.affine, atol=1e-4)
        np.testing.assert_array_equal(out.array, img.array.astype(np.int16))
    assert out.meta.extra["SOPInstanceUIDs"] and len(out.meta.extra["SOPInstanceUIDs"]) == SHAPE[2]
    assert out.meta.extra["StudyInstanceUID"] and out.meta.extra["FrameOfReferenceUID"]


@pytest.mark.parametrize(
    "variant",
    [
        dict(shuffle=True),
        dict(naming="noext"),
        dict(naming="uid"),
        dict(multiframe=True),
        dict(multiframe=True, transfer_syntax="1.2.840.10008.1.2.5"),
        dict(monochrome1=True),
        dict(transfer_syntax="1.2.840.10008.1.2.5"),  # RLE
        dict(transfer_syntax="1.2.840.10008.1.2.4.70"),  # JPEG lossless
        dict(transfer_syntax="1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        dict(transfer_syntax="1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ],
    ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()),
)
def test_file_variants_load_identically(tmp_path, variant):
    img = _ramp_image(_affine(_rotation(10, 0)), modality="MR", shape=(32, 32, 6))  # J2K needs >= 32x32
    img = img.with_array(img.array - img.array.min())  # MR: unsigned stored values
    try:
        write_dicom_series(img, tmp_path / "s", modality="MR", **variant)
    except Exception as exc:  # an encoder missing on this machine is not our reader's fault
        if "encod" in str(exc).lower():
            pytest.skip(f"phantom writer cannot encode: {exc}")
        raise
    out = load_series(scan_study(tmp_path / "s").series[0])
    np.testing.assert_allclose(out.affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(out.array.astype(np.float64), img.array.astype(np.float64))
    assert np.issubdtype(out.array.dtype, np.integer)


def test_float_rescale_gives_float32(tmp_path):
    img = _ramp_image(np.diag([1.0, 1.0, 2.0, 1.0]), modality="MR")
    img = img.with_array(img.array * 0.37 + 0.1)
    write_dicom_series(img, tmp_path / "s", modality="MR")
    out = load_series(scan_study(tmp_path / "s").series[0])
    assert out.array.dtype == np.float32
    slope = float(pydicom.dcmread(next((tmp_path / "s").iterdir())).RescaleSlope)
    assert np.abs(out.array - img.array).max() <= slope / 2 + 1e-3


def test_monochrome1_without_rescale_is_inverted(tmp_path):
    """A CR-style MONOCHROME1 file without a modality LUT: higher means brighter after loading."""
    img = _ramp_image(np.eye(4), modality="MR")
    img = img.with_array(img.array - img.array.min())
    write_dicom_series(img, tmp_path / "s", modality="MR", rescale="none")
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        ds.PhotometricInterpretation = "MONOCHROME1"
        for tag in ("RescaleSlope", "RescaleIntercept"):
            if tag in ds:
                delattr(ds, tag)
        ds.save_as(f)
    out = load_series(scan_study(tmp_path / "s").series[0])
    ds = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    top = (1 << int(ds.BitsStored)) - 1 if ds.PixelRepresentation == 0 else -1
    expected = (top - img.array) if ds.PixelRepresentation == 0 else (-1 - img.array)
    np.testing.assert_array_equal(out.array.astype(np.int64), expected.astype(np.int64))


def test_nifti_round_trip_exact(tmp_path):
    img = _ramp_image(_affine(_rotation(20, 35)))
    write_dicom_series(img, tmp_path / "s", modality="CT")
    out = load_series(scan_study(tmp_path / "s").series[0])
    write_volume(out, tmp_path / "ct.nii.gz")
    back = read_volume(tmp_path / "ct.nii.gz")
    assert back.same_grid(out, atol=1e-5)
    np.testing.assert_array_equal(back.array, out.array)
    assert back.array.dtype == out.array.dtype


def test_gantry_tilt_refused_then_desheared(tmp_path):
    img = _ramp_image(np.diag([1.0, 1.0, 2.0, 1.0]))
    write_dicom_series(img, tmp_path / "s", modality="CT", gantry_tilt_deg=15.0, series_description="tilted")
    info = scan_study(tmp_path / "s").series[0]
    assert any("gantry tilt" in p for p in info.problems)
    with pytest.raises(DicomError, match=r"series #1 'tilted'.*gantry tilt.*--resample-irregular"):
        load_series(info)
    out = load_series(info, resample_irregular=True)
    assert any("de-sheared" in w for w in out.meta.extra["warnings"])
    # The output grid is orthogonal: slice axis along the normal at the written spacing.
    assert not out.is_oblique() and np.allclose(out.spacing, img.spacing, atol=1e-4)
    # World-space check: each output voxel holds the value of the sheared source at the
    # same world point (source geometry taken straight from the files' IPP/IOP).
    files = sorted((tmp_path / "s").iterdir())
    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    iop = np.array(dss[0].ImageOrientationPatient, float)
    ipps = np.array([d.ImagePositionPatient for d in dss], float)
    dr, dc = (float(v) for v in dss[0].PixelSpacing)
    src = np.eye(4)
    src[:3, 0], src[:3, 1] = iop[:3] * dc, iop[3:] * dr
    src[:3, 2] = (ipps[-1] - ipps[0]) / (len(ipps) - 1)
    src[:3, 3] = ipps[0]
    src_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ src
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in out.shape), indexing="ij"), -1).reshape(-1, 3)
    world = out.world_coords(ijk)
    src_ijk = (np.linalg.inv(src_ras) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    inside = np.all((src_ijk > 0.01) & (src_ijk < np.array(SHAPE) - 1.01), axis=1)
    expected = src_ijk[:, 0] * 3 + src_ijk[:, 1] * 50 + src_ijk[:, 2] * 900 - 500
    got = out.array[0].reshape(-1).astype(np.float64)
    assert inside.sum() > 0.5 * len(inside)
    assert np.abs(got[inside] - expected[inside]).max() <= 0.51  # linear interpolation of a ramp, rounded


def test_missing_slices_refused_then_interpolated(tmp_path):
    img = _ramp_image(np.diag([1.0, 1.0, 2.0, 1.0]))
    write_dicom_series(img, tmp_path / "s", modality="CT", drop_slices=(4, 5), series_description="gappy")
    info = scan_study(tmp_path / "s").series[0]
    assert info.n_slices == SHAPE[2] - 2
    with pytest.raises(DicomError, match=r"'gappy'.*2 missing slice"):
        load_series(info)
    out = load_series(info, resample_irregular=True)
    assert out.shape == SHAPE and np.allclose(out.affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(out.array, img.array.astype(np.int16))  # linear ramp along k: exact
    assert any("missing" in w for w in out.meta.extra["warnings"])


def test_non_uniform_spacing_detected_and_resampled(tmp_path):
    img = _ramp_image(np.diag([1.0, 1.0, 2.0, 1.0]))
    write_dicom_series(img, tmp_path / "s", modality="CT")
    # Move slice 6 by 0.5 mm along the normal (z): steps 2.5 and 1.5 around it.
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        if int(ds.InstanceNumber) == 7:
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.5]
            ds.save_as(f)
    info = scan_study(tmp_path / "s").series[0]
    assert any("non-uniform" in p for p in info.problems)
    with pytest.raises(DicomError, match="non-uniform slice spacing"):
        load_series(info)
    out = load_series(info, resample_irregular=True)
    assert out.shape == SHAPE and np.allclose(out.affine, img.affine, atol=1e-4)


def test_tiny_position_jitter_is_tolerated(tmp_path):
    img = _ramp_image(np.diag([1.0, 1.0, 2.0, 1.0]))
    write_dicom_series(img, tmp_path / "s", modality="CT")
    for f in (tmp_path / "s").iterdir():  # scanners write positions with ~1e-3 mm noise
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], round(ipp[2] + 0.004 * (int(ds.InstanceNumber) % 2), 4)]
        ds.save_as(f)
    info = scan_study(tmp_path / "s").series[0]
    assert not info.problems
    np.testing.assert_array_equal(load_series(info).array, img.array.astype(np.int16))


def test_pydicom_reference_files_load():
    """Real scanner files shipped with pydicom: CT_small and MR_small (and compressed twins)."""
    from pathlib import Path

    base = Path(pydicom.__file__).parent / "data" / "test_files"
    ref = pydicom.dcmread(base / "MR_small.dcm")
    expected = ref.pixel_array.astype(np.int64)
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"):
        info = scan_study(base / name).series[0]
        out = load_series(info)
        np.testing.assert_array_equal(out.array[0, :, :, 0].T, expected)
        assert out.spacing[:2] == pytest.approx((0.3125, 0.3125))
    ct = load_series(scan_study(base / "CT_small.dcm").series[0])
    ds = pydicom.dcmread(base / "CT_small.dcm")
    hu = ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    np.testing.assert_array_equal(ct.array[0, :, :, 0].T, hu)
    assert ct.array.dtype == np.int16


def test_siemens_mosaic_is_refused_not_misread():
    """nibabel's test data: two Siemens mosaics; stacking them as 2 slices would be wrong."""
    from pathlib import Path

    import nibabel.testing

    base = Path(nibabel.testing.data_path)
    scan = scan_study(base / "0.dcm")
    assert scan.series == [] and "Siemens MOSAIC" in scan.errors[0][1]
    with pytest.raises(DicomError, match=r"no DICOM image series .*0\.dcm is a Siemens MOSAIC"):
        scan.require_images()
