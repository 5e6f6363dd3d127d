"""Study discovery: folders, zip, DICOMDIR, non-image objects, splitting, selection, bad input."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.errors import DicomError, InputError
from medpipe.image import Image, ImageMeta
from medpipe.io.dicom import SeriesSelector, load_series, load_study, read_image, scan_study

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _image(shape=(16, 14, 8), spacing=(1.0, 1.0, 2.0), modality="CT", direction=None, offset=0) -> Image:
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    aff = np.eye(4)
    aff[:3, :3] = (np.eye(3) if direction is None else direction) @ np.diag(spacing)
    return Image((i + 20 * j + 300 * k + offset).astype(np.float32), aff, ImageMeta(modality=modality))


def _study(root: Path) -> Path:
    """CT (#2, 8 slices), MR (#5, 12 slices), an SR, an RTSTRUCT and a README."""
    write_dicom_series(_image(), root / "a", modality="CT", series_description="CT abdomen venous", series_number=2)
    write_dicom_series(
        _image(shape=(12, 12, 12), modality="MR"), root / "b", modality="MR", series_description="T1 axial", series_number=5
    )
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", root / "report.dcm")
    shutil.copy(PYDICOM_FILES / "rtstruct.dcm", root / "b" / "rtss")
    (root / "README.txt").write_text("not dicom\n")
    return root


def test_scan_finds_series_non_image_and_skipped(tmp_path):
    scan = scan_study(_study(tmp_path))
    assert [(s.series_number, s.modality, s.n_slices) for s in scan.series] == [(2, "CT", 8), (5, "MR", 12)]
    assert sorted(o.modality for o in scan.non_image) == ["RTSTRUCT", "SR"]
    assert all(o.sop_class_name for o in scan.non_image)
    assert scan.skipped == 1 and scan.errors == []
    d = scan.to_dict()
    assert d["series"][0]["size"] == [16, 14, 8] and d["skipped"] == 1


def test_zip_is_read_in_memory(tmp_path):
    study = _study(tmp_path / "study")
    archive = tmp_path / "upload" / "study.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(study.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(study).as_posix())
    before = sorted(os.listdir(archive.parent))
    scan = scan_study(archive)
    assert [s.n_slices for s in scan.series] == [8, 12] and len(scan.non_image) == 2 and scan.skipped == 1
    from_zip = load_series(scan.series[0])
    from_dir = load_series(scan_study(study).series[0])
    np.testing.assert_array_equal(from_zip.array, from_dir.array)
    np.testing.assert_allclose(from_zip.affine, from_dir.affine)
    assert sorted(os.listdir(archive.parent)) == before  # nothing extracted next to the archive


def test_dicomdir_references_are_followed(tmp_path):
    from pydicom.fileset import FileSet

    src = tmp_path / "src"
    write_dicom_series(_image(), src, modality="CT", series_description="via dicomdir")
    fs = FileSet()
    for f in sorted(src.iterdir()):
        fs.add(pydicom.dcmread(f))
    media = tmp_path / "media"
    fs.write(media)
    assert (media / "DICOMDIR").exists()
    via_dir = scan_study(media / "DICOMDIR")
    via_folder = scan_study(media)
    for scan in (via_dir, via_folder):
        assert [s.n_slices for s in scan.series] == [8] and scan.non_image == [] and scan.skipped == 0
    np.testing.assert_array_equal(load_series(via_dir.series[0]).array, load_series(scan_study(src).series[0]).array)


def test_series_with_two_orientations_is_split(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1"
    sag = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
    write_dicom_series(_image(), tmp_path / "ax", modality="MR", series_uid=uid, series_description="loc")
    write_dicom_series(_image(direction=sag), tmp_path / "sag", modality="MR", series_uid=uid, series_description="loc", seed=3)
    # Different SOP instances per part (the writer derives them from the series UID).
    for i, f in enumerate(sorted((tmp_path / "sag").iterdir())):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = f"{uid}.9.{i}"
        ds.save_as(f)
    scan = scan_study(tmp_path)
    assert sorted(s.orientation for s in scan.series) == ["axial", "sagittal"]
    assert sorted(s.id for s in scan.series) == [f"{uid}.1", f"{uid}.2"]
    assert all(s.series_uid == uid and s.n_slices == 8 and not s.problems for s in scan.series)


def _retag(folder: Path, uid_suffix: str, **tags) -> None:
    """New SOP instance UIDs (so parts written separately do not look like copies) + tags."""
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)


def test_time_points_and_echoes_are_split(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.2"
    for t in range(3):
        write_dicom_series(_image(offset=t * 1000), tmp_path / f"t{t}", modality="MR", series_uid=uid, series_description="dyn")
        _retag(tmp_path / f"t{t}", f".{t}", TemporalPositionIdentifier=t + 1)
    scan = scan_study(tmp_path)
    assert len(scan.series) == 3 and all(s.n_slices == 8 and not s.problems for s in scan.series)
    loaded = [load_series(s) for s in scan.series]
    assert [int(im.array.min()) for im in loaded] == [0, 1000, 2000]  # time order kept

    # Same without TemporalPositionIdentifier: positions repeat, AcquisitionTime orders them.
    shutil.rmtree(tmp_path)
    for t in range(2):
        write_dicom_series(_image(offset=t * 1000), tmp_path / f"t{t}", modality="MR", series_uid=uid)
        _retag(tmp_path / f"t{t}", f".{t}", AcquisitionTime=f"1000{t}0")
    scan = scan_study(tmp_path)
    assert [int(load_series(s).array.min()) for s in scan.series] == [0, 1000]
    assert "time point" in scan.series[1].split_reason

    shutil.rmtree(tmp_path)
    for e, te in enumerate((10.0, 40.0)):
        write_dicom_series(_image(offset=e * 1000), tmp_path / f"e{e}", modality="MR", series_uid=uid)
        _retag(tmp_path / f"e{e}", f".{e}", EchoNumbers=e + 1, EchoTime=te)
    scan = scan_study(tmp_path)
    assert [s.tags.get("EchoTime") for s in scan.series] == [10.0, 40.0]
    assert all("echo" in s.split_reason for s in scan.series)


def test_selector(tmp_path):
    scan = scan_study(_study(tmp_path))
    assert [s.modality for s in SeriesSelector(modality="ct").select(scan)] == ["CT"]
    assert [s.series_number for s in SeriesSelector(description="VENOUS").select(scan)] == [2]
    assert [s.series_number for s in SeriesSelector(min_slices=10).select(scan)] == [5]
    assert [s.series_number for s in SeriesSelector(largest=True).select(scan)] == [2]  # 16*14*8 > 12^3
    assert [s.series_number for s in SeriesSelector(first=True).select(scan)] == [2]
    uid = scan.series[1].series_uid
    assert [s.series_number for s in SeriesSelector(uid=uid[-6:]).select(scan)] == [5]
    assert len(SeriesSelector(orientation="axial").select(scan)) == 2
    with pytest.raises(DicomError, match=r"no series in .* matches modality='PT'.*found: #2 CT 'CT abdomen venous'"):
        SeriesSelector(modality="PT").select(scan)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        SeriesSelector(description="(unclosed")
    with pytest.raises(ValueError):
        SeriesSelector(colour="red")
    images = load_study(tmp_path, SeriesSelector(modality="MR"))
    assert len(images) == 1 and images[0].shape == (12, 12, 12)


def test_read_image_takes_files_and_folders(tmp_path):
    write_dicom_series(_image(), tmp_path / "one", modality="CT")
    img = read_image(tmp_path / "one")
    img.save(tmp_path / "one.nii.gz")
    back = read_image(tmp_path / "one.nii.gz")
    assert back.same_grid(img) and np.array_equal(back.array, img.array)
    _study(tmp_path / "two")
    with pytest.raises(DicomError, match="holds 2 image series"):
        read_image(tmp_path / "two")
    assert read_image(tmp_path / "two", SeriesSelector(modality="MR")).shape == (12, 12, 12)


# --------------------------------------------------------------------------- bad input
def test_empty_and_non_dicom_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match=r"no DICOM image series found in .*empty \(0 non-DICOM"):
        load_study(tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"f{i}").write_bytes(os.urandom(300))
    with pytest.raises(DicomError, match=r"3 non-DICOM file\(s\) skipped"):
        load_study(junk)
    with pytest.raises(InputError, match="does not exist"):
        scan_study(tmp_path / "nope")


def test_truncated_pixel_data_names_file_and_series(tmp_path):
    files = write_dicom_series(_image(), tmp_path / "s", modality="CT", series_description="cut")
    victim = sorted(files)[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    scan = scan_study(tmp_path / "s")
    assert scan.errors and scan.errors[0][0].endswith(victim.name) and "truncated" in scan.errors[0][1]
    with pytest.raises(DicomError, match=rf"series #1 'cut'.*{victim.name} has truncated pixel data"):
        load_series(scan.series[0])


def test_dangling_link_is_reported_and_blocks_nothing_else(tmp_path):
    write_dicom_series(_image(), tmp_path / "s", modality="CT")
    (tmp_path / "s" / "gone").symlink_to(tmp_path / "missing-target")
    scan = scan_study(tmp_path / "s")
    assert len(scan.orphan_errors) == 1 and "cannot be read" in scan.orphan_errors[0][1]
    assert scan.series[0].n_slices == 8


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_is_reported(tmp_path):
    files = write_dicom_series(_image(), tmp_path / "s", modality="CT")
    victim = sorted(files)[2]
    victim.chmod(0)
    try:
        scan = scan_study(tmp_path / "s")
        assert (str(victim), "permission denied") in scan.orphan_errors
    finally:
        victim.chmod(0o644)


def test_inconsistent_slice_sizes_refused(tmp_path):
    files = sorted(write_dicom_series(_image(), tmp_path / "s", modality="CT", series_description="odd"))
    ds = pydicom.dcmread(files[4])
    arr = ds.pixel_array[:10, :10].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.save_as(files[4])
    scan = scan_study(tmp_path / "s")
    with pytest.raises(DicomError, match=r"'odd'.*different sizes in one stack: 16x14 in 7 file\(s\), 10x10 in 1 file\(s\) \(e\.g\. .*IM00005"):
        load_series(max(scan.series, key=lambda s: s.n_slices))


def test_undecodable_transfer_syntax_names_package(tmp_path):
    files = write_dicom_series(_image(), tmp_path / "s", modality="CT", transfer_syntax="1.2.840.10008.1.2.5")
    for f in files:  # relabel as MPEG-2 video, which no pydicom plugin decodes
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.save_as(f)
    scan = scan_study(tmp_path / "s")
    with pytest.raises(DicomError, match=r"uses transfer syntax MPEG2.*no installed decoder handles; install"):
        load_series(scan.series[0])


def test_duplicate_positions_refused(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.3"
    write_dicom_series(_image(), tmp_path / "a", modality="CT", series_uid=uid)
    write_dicom_series(_image(shape=(16, 14, 3)), tmp_path / "b", modality="CT", series_uid=uid)
    _retag(tmp_path / "b", ".dup")
    info = scan_study(tmp_path).series[0]
    with pytest.raises(DicomError, match="duplicate positions"):
        load_series(info)
    out = load_series(info, resample_irregular=True)
    assert out.shape == (16, 14, 8) and any("duplicate" in w for w in out.meta.extra["warnings"])
