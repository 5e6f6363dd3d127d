"""`medpipe data phantoms` / `medpipe data example` through the real CLI entry point."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom

from medpipe.cli import main
from medpipe.data.example_study import EXAMPLE_CT_SHAPE
from medpipe.data.nnunet_dataset import flip_axes
from medpipe.data.phantoms import CT_LABELS, ct_phantom
from medpipe.io.volumes import read_volume


def test_phantoms_command_writes_nnunet_v2_layout(tmp_path, capsys):
    out = tmp_path / "Dataset900_Phantoms"
    assert main(["data", "phantoms", str(out), "--cases", "3", "--seed", "1"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, **{v: k for k, v in CT_LABELS.items()}}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert images == [f"phantom_{i:03d}_0000.nii.gz" for i in range(3)]
    assert labels == [f"phantom_{i:03d}.nii.gz" for i in range(3)]
    assert (out / "preview.png").stat().st_size > 1000
    orientations, spacings = set(), set()
    for i in range(3):
        img = read_volume(out / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz")
        seg = read_volume(out / "labelsTr" / f"phantom_{i:03d}.nii.gz", is_label=True)
        assert img.same_grid(seg)
        assert np.issubdtype(seg.array.dtype, np.integer)
        assert set(np.unique(seg.array)) <= {0, *CT_LABELS} and len(np.unique(seg.array)) >= 8
        assert nib.load(out / "labelsTr" / f"phantom_{i:03d}.nii.gz").get_data_dtype() == np.uint8
        orientations.add(img.orientation)
        spacings.add(tuple(round(s, 3) for s in img.spacing))
    assert orientations == {"LPS", "RAS"}  # cases stored both ways
    assert len(spacings) == 3  # spacing varies per case
    assert "wrote 3 cases" in capsys.readouterr().out


def test_phantoms_are_reproducible_and_refuse_to_clobber(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["data", "phantoms", str(a), "--cases", "1", "--modality", "mr"]) == 0
    assert main(["data", "phantoms", str(b), "--cases", "1", "--modality", "mr"]) == 0
    ia, ib = (read_volume(p / "imagesTr" / "phantom_000_0000.nii.gz") for p in (a, b))
    np.testing.assert_array_equal(ia.array, ib.array)
    assert json.loads((a / "dataset.json").read_text())["labels"]["white_matter"] == 1
    assert main(["data", "phantoms", str(a), "--cases", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "phantoms", str(a), "--cases", "1", "--overwrite"]) == 0


def test_bad_options_exit_nonzero_without_output(tmp_path, capsys):
    assert main(["data", "phantoms", str(tmp_path / "x"), "--modality", "pet"]) == 2
    assert "modality" in capsys.readouterr().err
    assert main(["data", "phantoms", str(tmp_path / "y"), "--cases", "0"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_flip_axes_keeps_world_positions():
    img, _ = ct_phantom(shape=(16, 12, 10))
    flipped = flip_axes(img, (0, 1))
    assert flipped.orientation == "RAS"
    ijk = np.array([3, 4, 5])
    flipped_ijk = np.array([16 - 1 - 3, 12 - 1 - 4, 5])
    np.testing.assert_allclose(img.world_coords(ijk), flipped.world_coords(flipped_ijk))
    assert img.array[0, 3, 4, 5] == flipped.array[0, 12, 7, 5]


def test_example_command(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["data", "example", str(out)]) == 0
    text = capsys.readouterr().out
    assert "series   2" in text and "SR" in text
    dcm = [p for p in out.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    assert len(dcm) == EXAMPLE_CT_SHAPE[2] + 25 + 1  # axial slices, coronal reformat, SR
    uids = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in dcm}
    assert len(uids) == 1
    assert (out / "README.txt").is_file() and (out / "ground_truth" / "ct_labels.nii.gz").is_file()
