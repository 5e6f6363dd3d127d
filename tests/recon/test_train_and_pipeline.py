"""train-recon end to end on tiny data, the recon bundle, the stages and the mri_recon pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from recon_helpers import small_kspace

from medpipe.cli import main
from medpipe.errors import BundleError, InputError
from medpipe.io.kspace import read_kspace, write_kspace
from medpipe.models.bundle import load_bundle
from medpipe.pipeline.stage import StageContext
from medpipe.pipeline.stages.load_kspace import LoadKSpace
from medpipe.pipeline.stages.recon import Recon, load_recon_model


def test_bundle_contents(tiny_bundle):
    b = load_bundle(tiny_bundle, expect_modality="MR")
    cfg = b.config
    assert cfg.task == "recon" and cfg.architecture == "cirim" and cfg.recon["coils"] == 4
    assert cfg.arch_config == {"hidden": 4, "cascades": 2, "steps": 2}
    assert set(cfg.evaluation["per_mask"]) == {"equispaced_4x", "equispaced_8x", "random_4x", "random_8x"}
    for name in ("training_log.csv", "learning_curve.png", "evaluation.json"):
        assert (tiny_bundle / name).is_file()
    log = (tiny_bundle / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("iteration") and "val_ssim_4x" in log[0] and len(log) == 3  # validated at 3 and 6


def test_resume_and_refusals(kspace_dir, tmp_path):
    from medpipe.training.recon import ReconTrainConfig, train_recon

    cfg = ReconTrainConfig(arch={"hidden": 2, "cascades": 1, "steps": 1}, iterations=2, batch_size=1, crop_rows=16,
                           val_every=1, threads=1, warmup=0)
    train_recon(kspace_dir / "train", None, cfg, work_dir=tmp_path / "w", progress=False)
    with pytest.raises(InputError, match="already holds a training run"):
        train_recon(kspace_dir / "train", None, cfg, work_dir=tmp_path / "w", progress=False)
    more = cfg.model_copy(update={"iterations": 3})
    res = train_recon(kspace_dir / "train", None, more, work_dir=tmp_path / "w", resume=True, progress=False)
    assert res.iterations == 3 and [r["iteration"] for r in res.log] == [1, 2, 3]
    with pytest.raises(InputError, match="is not a reconstruction model"):
        train_recon(kspace_dir / "train", None, cfg.model_copy(update={"model": "stunet_xs"}), work_dir=tmp_path / "x")
    under = tmp_path / "under"
    ks = small_kspace(slices=1)
    write_kspace(ks.undersample(np.tile([True, False], 32)[None]), under / "u.h5")
    with pytest.raises(InputError, match="is undersampled; training needs fully sampled k-space"):
        train_recon(under, None, cfg, work_dir=tmp_path / "y")


def _ctx(tmp_path, name="s"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return StageContext(stage=name, workdir=d, study="study")


def test_stages_geometry_and_bad_input(tiny_bundle, kspace_dir, tmp_path):
    study = kspace_dir / "test" / "phantom_4.h5"
    ks = LoadKSpace({"undersample": {"mask": "random", "acceleration": 4}}).run({"study": study}, _ctx(tmp_path))["kspace"]
    assert ks.is_undersampled and ks.reference is not None
    img = Recon({"method": "cirim", "bundle": str(tiny_bundle)}).run({"kspace": ks}, _ctx(tmp_path, "r"))["image"]
    assert img.shape == (64, 64, 3) and np.allclose(img.affine, ks.affine) and img.meta.modality == "MR"
    # the image's voxel (i, j, k) is column i, row j of slice k of the reconstruction
    rss = Recon({"method": "rss"}).run({"kspace": ks}, _ctx(tmp_path, "q"))["image"]
    from medpipe.recon.fft import ifft2c
    from medpipe.recon.sense import rss as rss_fn

    direct = rss_fn(ifft2c(ks.data[:, 1]), 0)
    assert np.allclose(rss.array[0, :, :, 1], direct.T, rtol=1e-5)
    with pytest.raises(InputError, match="but the pipeline expects 8x"):
        LoadKSpace({"expect_acceleration": 8}).run({"study": study}, _ctx(tmp_path))
    six = tmp_path / "six.h5"
    write_kspace(small_kspace(slices=1, coils=6), six)
    six_ks = read_kspace(six)
    with pytest.raises(BundleError, match="trained on 4-coil k-space, this k-space has 6 coils"):
        Recon({"method": "cirim", "bundle": str(tiny_bundle)}).run({"kspace": six_ks}, _ctx(tmp_path))
    with pytest.raises(BundleError, match="needs a bundle"):
        Recon({"method": "rim"}).run({"kspace": six_ks}, _ctx(tmp_path))
    with pytest.raises(BundleError, match="is for CT"):
        load_recon_model(str(Path(__file__).parents[2] / "medpipe" / "bundles" / "ct_organs_phantom"))


def test_mri_recon_pipeline_writes_nifti_dicom_preview_metrics(tiny_bundle, kspace_dir, tmp_path, capsys):
    import nibabel as nib
    import pydicom

    study = kspace_dir / "test" / "phantom_4.h5"
    pipe = yaml.safe_load((Path(__file__).parents[2] / "pipelines" / "mri_recon.yaml").read_text())
    pipe["stages"]["cs"]["params"]["cs_iterations"] = 5  # keep the test fast
    pipe["stages"]["cirim"]["params"]["bundle"] = str(tiny_bundle)
    pfile = tmp_path / "mri_recon.yaml"
    pfile.write_text(yaml.safe_dump(pipe))
    before = study.read_bytes()
    rc = main(["run", str(pfile), str(study), "-o", str(tmp_path / "runs")])
    assert rc == 0, capsys.readouterr().err
    assert study.read_bytes() == before  # input untouched
    art = tmp_path / "runs" / "phantom_4" / "artifacts"
    table = json.loads((art / "report" / "table.json").read_text())
    assert table["reference"] and set(table["methods"]) == {"zero_filled", "cs", "cirim"}
    assert all(0 < m["ssim"] <= 1 and m["nmse"] > 0 for m in table["methods"].values())
    files = art / "write" / "files.files"
    nii = nib.load(str(files / "cirim.nii.gz"))
    ks = read_kspace(study)
    assert nii.shape == (64, 64, 3) and np.allclose(nii.affine, ks.affine, atol=1e-4)
    dcm = sorted((files / "cirim_dicom").glob("*.dcm"))
    assert len(dcm) == 3 and pydicom.dcmread(dcm[0]).Modality == "MR"
    assert (art / "report" / "files.files" / "recon_preview.png").stat().st_size > 10_000


def test_cli_errors_are_one_line(tmp_path, capsys, kspace_dir):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["something"] = np.zeros(3)
    rc = main(["run", "mri_recon", str(bad), "-o", str(tmp_path / "runs")])
    out = capsys.readouterr()
    assert rc != 0 and "holds no k-space" in out.out + out.err
    assert main(["data", "kspace", str(tmp_path / "k"), "--source", "nope"]) == 2
    assert "unknown k-space source 'nope'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train-recon", str(tmp_path / "empty"), "-o", str(tmp_path / "b")]) == 2
    assert "holds no k-space files (*.h5)" in capsys.readouterr().err


def test_recon_bundle_in_cli_and_in_segmentation_stages(tiny_bundle, capsys, tmp_path):
    from medpipe.image import Image
    from medpipe.pipeline.stages.segment import Segment

    assert main(["models", "show", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "coils         4" in out and "held-out equispaced_4x: SSIM" in out
    img = Image(np.zeros((1, 8, 8, 8), np.float32), np.eye(4))
    img.meta.modality = "MR"
    with pytest.raises(BundleError, match="is a recon bundle; the segment stage needs a segmentation bundle"):
        Segment({"bundle": str(tiny_bundle)}).run({"image": img}, _ctx(tmp_path, "seg"))


def test_train_recon_cli_options_override_the_config(kspace_dir, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"training": {"model": "cirim", "arch": {"hidden": 4, "cascades": 1, "steps": 1},
                                                "iterations": 50, "threads": 2, "crop_rows": 16, "warmup": 0,
                                                "val_every": 100, "name": "cfg_cirim", "description": "a CIRIM"}}))
    out = tmp_path / "b"
    rc = main(["train-recon", str(kspace_dir / "train"), "-o", str(out), "--config", str(cfg),
               "--iterations", "2", "--threads", "1", "--model", "rim", "--name", "rim_x"])
    assert rc == 0, capsys.readouterr().err
    meta = yaml.safe_load((out / "model.yaml").read_text())
    training = meta["training"]
    assert training["threads"] == 1 and training["iterations"] == 2 and training["planned_iterations"] == 2
    # another model than the config's: its name/description are not carried over to this bundle
    assert meta["name"] == "rim_x" and "CIRIM" not in meta["description"] and meta["description"].startswith("rim")
    # the training data's pixel size, which the recon stage checks new k-space against
    ks = read_kspace(sorted((kspace_dir / "train").glob("*.h5"))[0])
    assert meta["recon"]["pixel_mm"] == pytest.approx(list(np.linalg.norm(ks.affine[:3, :2], axis=0)), abs=1e-3)
