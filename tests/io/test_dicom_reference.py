"""Our DICOM reader against the references people trust: SimpleITK (GDCM) and dcm2niix.

Compared in world space: voxel values and the RAS affine after putting both images into
the same closest-canonical orientation (dcm2niix flips rows into its own convention).
"""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.data.phantoms import ct_phantom, mr_brain_phantom
from medpipe.image import Image
from medpipe.io.dicom import load_series, scan_study

DCM2NIIX = shutil.which("dcm2niix") or ("/usr/bin/dcm2niix" if shutil.os.path.exists("/usr/bin/dcm2niix") else None)


def _oblique_affine(spacing, origin) -> np.ndarray:
    a, b = np.radians(12.0), np.radians(-20.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    ct, _ = ct_phantom((40, 36, 24), (1.1, 1.1, 2.5), seed=1)
    ct = ct.with_array(np.round(ct.array))  # integer HU: stored exactly
    mr, _ = mr_brain_phantom((32, 36, 20), (1.0, 1.2, 1.5), seed=2, affine=_oblique_affine((1.0, 1.2, 1.5), (-20, 15, 40)))
    write_dicom_series(ct, root / "ct", modality="CT", series_description="ct axial", shuffle=True)
    write_dicom_series(mr, root / "mr", modality="MR", series_description="mr oblique")
    return {"ct": (root / "ct", ct), "mr": (root / "mr", mr)}


def _canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    c = nib.as_closest_canonical(img)
    return c.affine, np.asarray(c.get_fdata(dtype=np.float64))


@pytest.mark.parametrize("name", ["ct", "mr"])
def test_matches_simpleitk(studies, name):
    import SimpleITK as sitk

    folder, _ = studies[name]
    ours = load_series(scan_study(folder).series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    ref = Image.from_sitk(reader.Execute())
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(ours.array.astype(np.float64), ref.array.astype(np.float64), atol=1e-3)


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")
@pytest.mark.parametrize("name", ["ct", "mr"])
def test_matches_dcm2niix(studies, name, tmp_path):
    folder, _ = studies[name]
    copy = tmp_path / "in"
    shutil.copytree(folder, copy)  # dcm2niix only reads, but never point tools at the only copy
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([DCM2NIIX, "-z", "n", "-b", "n", "-f", "vol", "-o", str(out), str(copy)], check=True, capture_output=True)
    niis = sorted(out.glob("*.nii"))
    assert len(niis) == 1, [p.name for p in out.iterdir()]
    ref_aff, ref_data = _canonical(nib.load(niis[0]))
    ours = load_series(scan_study(folder).series[0])
    our_aff, our_data = _canonical(ours.to_nibabel())
    np.testing.assert_allclose(our_aff, ref_aff, atol=1e-4)
    np.testing.assert_allclose(our_data, ref_data, atol=1e-3 * max(1.0, float(np.abs(ref_data).max())) * 1e-2)


def test_world_coordinates_match_written_phantom(studies):
    """The CT comes back on the phantom's own grid, values exact (integer HU)."""
    folder, ct = studies["ct"]
    ours = load_series(scan_study(folder).series[0])
    assert ours.same_grid(ct, atol=1e-4)
    np.testing.assert_array_equal(ours.array, ct.array.astype(ours.array.dtype))
