"""Dataset loading and validation: every problem is one sentence naming the case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.training.dataset import load_case, open_dataset, validate_dataset


def test_nnunet_folder_loads(tiny_dataset):
    ds = validate_dataset(open_dataset(tiny_dataset))
    assert [c.name for c in ds.cases] == [f"phantom_{i:03d}" for i in range(4)]
    assert ds.channels == ["CT"] and ds.modality == "CT"
    assert ds.labels[1] == "liver" and ds.num_classes == 9
    image, label = load_case(ds.cases[0])
    assert image.shape == label.shape == (32, 32, 32) and image.same_grid(label)


def test_missing_label_names_case(tiny_dataset):
    (tiny_dataset / "labelsTr" / "phantom_002.nii.gz").unlink()
    with pytest.raises(InputError, match="phantom_002.*no label map"):
        open_dataset(tiny_dataset)


def test_missing_channel_file_names_case(tiny_dataset):
    (tiny_dataset / "imagesTr" / "phantom_001_0000.nii.gz").rename(tiny_dataset / "phantom_001_0000.nii.gz")
    with pytest.raises(InputError, match="phantom_001.*channel 0 image file .* is missing"):
        validate_dataset(open_dataset(tiny_dataset))


def test_shape_and_affine_mismatch_name_case(tiny_dataset):
    lab_path = tiny_dataset / "labelsTr" / "phantom_003.nii.gz"
    lab = Image.load(lab_path, is_label=True)
    shifted = Image(lab.array, lab.affine @ np.diag([1, 1, 1.0, 1]) + np.array([[0, 0, 0, 5.0]] * 3 + [[0] * 4]),
                    is_label=True)
    shifted.save(lab_path)
    with pytest.raises(GeometryError, match="phantom_003.*different affines"):
        validate_dataset(open_dataset(tiny_dataset))
    Image(lab.array[:, :, :, :30], lab.affine, is_label=True).save(lab_path)
    with pytest.raises(GeometryError, match=r"phantom_003.*shape \(32, 32, 32\).*\(32, 32, 30\)"):
        validate_dataset(open_dataset(tiny_dataset))


def test_undeclared_label_value(tiny_dataset):
    dj = tiny_dataset / "dataset.json"
    meta = json.loads(dj.read_text())
    meta["labels"] = {k: v for k, v in meta["labels"].items() if v <= 7}
    dj.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"holds values \[8\] that dataset.json does not declare"):
        validate_dataset(open_dataset(tiny_dataset))


def test_csv_pair_list(tiny_dataset, tmp_path):
    rows = ["image,label"] + [
        f"{tiny_dataset}/imagesTr/phantom_{i:03d}_0000.nii.gz,{tiny_dataset}/labelsTr/phantom_{i:03d}.nii.gz"
        for i in range(3)
    ]
    lst = tmp_path / "pairs.csv"
    lst.write_text("\n".join(rows))
    ds = validate_dataset(open_dataset(lst))
    assert [c.name for c in ds.cases] == ["phantom_000", "phantom_001", "phantom_002"]
    assert ds.labels[8] == "label_8" and ds.num_classes == 9
    lst.write_text("image,label\nmissing.nii.gz,also_missing.nii.gz\n")
    with pytest.raises(InputError, match="also_missing"):
        validate_dataset(open_dataset(lst))
