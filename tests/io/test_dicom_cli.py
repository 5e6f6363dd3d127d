"""``medpipe inspect`` / ``medpipe convert``: output, exit codes, messages, no clobbering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medpipe.cli import main
from medpipe.data.dicom_writer import write_dicom_series
from medpipe.image import Image, ImageMeta
from medpipe.io.volumes import read_volume

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _image(shape=(16, 14, 8)) -> Image:
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return Image((i + 20 * j + 300 * k).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), ImageMeta(modality="CT"))


@pytest.fixture()
def study(tmp_path) -> Path:
    root = tmp_path / "study"
    write_dicom_series(_image(), root / "ct", modality="CT", series_description="CT abdomen/venous", series_number=2)
    write_dicom_series(_image((12, 12, 6)), root / "mr", modality="MR", series_description="T1 ax", series_number=7)
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", root / "sr.dcm")
    (root / "notes.txt").write_text("hello")
    return root


def test_inspect_table_and_json(study, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps cells to the terminal width
    assert main(["inspect", str(study)]) == 0
    out = capsys.readouterr().out
    for text in ("CT abdomen/venous", "T1 ax", "ax ", "16x14x8", "non-image objects", "SR", "1 non-DICOM file(s) skipped"):
        assert text in out, text
    assert main(["inspect", str(study), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["series_number"] for s in data["series"]] == [2, 7]
    assert data["series"][0]["size"] == [16, 14, 8] and data["skipped"] == 1
    assert data["non_image"][0]["modality"] == "SR"


def test_inspect_fits_an_80_column_terminal(study):
    """One line per series at 80 columns (cells used to wrap into tall columns)."""
    from rich.console import Console

    from medpipe.cli.ingest import _print_scan
    from medpipe.io.dicom import scan_study

    long = study / "long"
    write_dicom_series(_image((8, 8, 3)), long, modality="CT", series_number=11,
                       series_description="ABDOMEN PORTAL VENOUS PHASE 1.25mm SOFT TISSUE KERNEL B30f iDose 4")
    console = Console(width=80, record=True, force_terminal=False)
    _print_scan(scan_study(study), console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 3  # one line per series, none wrapped
    assert any("ABDOMEN PORTAL" in r and "…" in r for r in rows)


def test_convert_writes_volumes_and_sidecars(study, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(study), str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["2_CT_abdomen_venous.json", "2_CT_abdomen_venous.nii.gz", "7_T1_ax.json", "7_T1_ax.nii.gz"]
    ct = read_volume(out / "2_CT_abdomen_venous.nii.gz")
    np.testing.assert_array_equal(ct.array, _image().array.astype(ct.array.dtype))
    np.testing.assert_allclose(ct.affine, _image().affine, atol=1e-5)
    side = json.loads((out / "2_CT_abdomen_venous.json").read_text())
    assert side["geometry"]["shape"] == [16, 14, 8] and side["geometry"]["orientation"] == "RAS"
    assert side["geometry"]["spacing"] == [1.0, 1.0, 2.0]
    assert side["dicom"]["SeriesNumber"] == 2 and side["dicom"]["Modality"] == "CT"
    assert len(side["SOPInstanceUIDs"]) == 8 and side["warnings"] == []


def test_convert_filters_and_nrrd(study, tmp_path):
    out = tmp_path / "out"
    assert main(["convert", str(study), str(out), "--modality", "MR", "--format", "nrrd"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["7_T1_ax.json", "7_T1_ax.nrrd"]
    assert read_volume(out / "7_T1_ax.nrrd").shape == (12, 12, 6)
    assert main(["convert", str(study), str(tmp_path / "o2"), "--description", "venous", "--min-slices", "5"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir())[1] == "2_CT_abdomen_venous.nii.gz"


def test_convert_refuses_to_clobber(study, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(study), str(out), "--modality", "CT"]) == 0
    target = out / "2_CT_abdomen_venous.nii.gz"
    before = target.read_bytes()
    capsys.readouterr()
    assert main(["convert", str(study), str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert target.read_bytes() == before and not (out / "7_T1_ax.nii.gz").exists()  # nothing written
    assert main(["convert", str(study), str(out), "--overwrite"]) == 0
    assert (out / "7_T1_ax.nii.gz").exists()


def test_convert_all_or_nothing_on_irregular_series(study, tmp_path, capsys):
    write_dicom_series(_image(), study / "gap", modality="CT", series_description="gappy", series_number=9, drop_slices=(3,))
    out = tmp_path / "out"
    assert main(["convert", str(study), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: series #9 'gappy'") and "missing slice" in err and "--resample-irregular" in err
    assert not out.exists() or list(out.iterdir()) == []
    assert main(["convert", str(study), str(out), "--resample-irregular"]) == 0
    side = json.loads((out / "9_gappy.json").read_text())
    assert any("interpolated 1 missing" in w for w in side["warnings"])
    assert side["SOPInstanceUIDs"] == []  # resampled slices no longer match the source instances


def test_convert_nifti_input(tmp_path):
    src = tmp_path / "vol.nii.gz"
    _image().save(src)
    assert main(["convert", str(src), str(tmp_path / "out"), "--format", "nrrd"]) == 0
    back = read_volume(tmp_path / "out" / "vol.nrrd")
    assert back.same_grid(_image()) and np.array_equal(back.array, _image().array)


@pytest.mark.parametrize(
    "setup, message",
    [
        ("empty", "no DICOM image series found"),
        ("junk", "2 non-DICOM file(s) skipped"),
        ("missing", "does not exist"),
        ("nomatch", "no series in"),
        ("badregex", "invalid series filter: description"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, setup, message):
    study = tmp_path / "in"
    study.mkdir()
    args = []
    if setup == "junk":
        (study / "a").write_text("x")
        (study / "b.txt").write_text("y")
    elif setup == "missing":
        study = tmp_path / "nothing-here"
    elif setup in ("nomatch", "badregex"):
        write_dicom_series(_image(), study, modality="CT")
        args = ["--modality", "PT"] if setup == "nomatch" else ["--description", "(oops"]
    for cmd in (["inspect", str(study)], ["convert", str(study), str(tmp_path / "out"), *args]):
        if cmd[0] == "inspect" and setup in ("nomatch", "badregex"):
            continue
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_convert_refuses_when_a_file_is_unreadable(study, tmp_path, capsys):
    (study / "ct" / "broken").symlink_to(tmp_path / "missing-target")
    assert main(["convert", str(study), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "broken cannot be read" in err and "fix or remove it" in err
