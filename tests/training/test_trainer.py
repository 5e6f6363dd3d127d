"""End to end on 4 tiny cases: bundle written and loadable, resume reproduces the run exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medpipe.errors import InputError
from medpipe.models.bundle import load_bundle
from medpipe.training.config import TrainConfig
from medpipe.training.trainer import CHECKPOINT, poly_lr, train


def _cfg(**kw):
    base = dict(epochs=2, iters_per_epoch=2, batch_size=1, patch_size=[16, 16, 16], spacing=[12.0, 12.0, 12.0],
                fold=0, n_folds=4, val_every=1, checkpoint_every=1, precision="fp32", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_bundle_is_produced_and_loadable(tiny_dataset, tmp_path):
    out = tmp_path / "bundle"
    result = train(tiny_dataset, out, _cfg(), progress=False)
    bundle = load_bundle(out, expect_modality="CT")
    cfg = bundle.config
    assert cfg.architecture == "stunet_xs" and cfg.num_classes == 9
    assert cfg.labels[1].name == "liver" and cfg.labels[1].color == (221, 130, 101)
    assert cfg.preprocessing.spacing == [12.0, 12.0, 12.0] and cfg.preprocessing.patch_size == [16, 16, 16]
    assert cfg.preprocessing.normalization.scheme == "ct"
    assert cfg.evaluation["cases"] == 1 and 0.0 <= cfg.evaluation["mean_dice"] <= 1.0
    for name in ("evaluation.json", "evaluation.csv", "evaluation_boxplot.png", "training_log.csv",
                 "learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and all(float(r["train_loss"]) > 0 for r in rows)
    summary = json.loads((out / "evaluation.json").read_text())
    assert list(summary["cases"]) == result.val_cases
    net = bundle.build_model()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 16, 16, 16))
    assert y.shape == (1, 9, 16, 16, 16)
    # the trained weights are what went into the bundle
    state = torch.load(result.work_dir / CHECKPOINT, weights_only=False)["model"]
    assert torch.equal(net.state_dict()["seg_outputs.2.weight"], state["seg_outputs.2.weight"])


def test_resume_reproduces_the_uninterrupted_run(tiny_dataset, tmp_path):
    cfg = _cfg(epochs=3, val_every=2)
    straight = train(tiny_dataset, None, cfg, work_dir=tmp_path / "a", progress=False)
    work = tmp_path / "b"
    stopped = train(tiny_dataset, None, cfg, work_dir=work, progress=False, stop_after_epoch=0)
    assert len(stopped.log) == 1 and torch.load(work / CHECKPOINT, weights_only=False)["epoch"] == 0
    with pytest.raises(InputError, match="already holds a training run"):
        train(tiny_dataset, None, cfg, work_dir=work, progress=False)
    resumed = train(tiny_dataset, None, cfg, work_dir=work, resume=True, progress=False)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    b = torch.load(work / CHECKPOINT, weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["train_loss"] for r in straight.log] == [r["train_loss"] for r in resumed.log]
    assert straight.log[-1]["val_dice"] == resumed.log[-1]["val_dice"]


def test_poly_lr():
    assert poly_lr(0.01, 0, 10) == 0.01
    assert poly_lr(0.01, 5, 10) == pytest.approx(0.01 * 0.5**0.9)
    assert np.isclose(poly_lr(0.01, 9, 10), 0.01 * 0.1**0.9)


def test_cli_refuses_bad_options_before_writing(tiny_dataset, tmp_path, capsys):
    from medpipe.cli import main

    out = tmp_path / "b"
    assert main(["train", str(tiny_dataset), "-o", str(out), "--fold", "7"]) == 2
    assert "fold must be 0..4" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "-o", str(out), "--patch", "18,16,16", "--spacing", "12"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "-o", str(out), "--patch", "16,16,16", "--spacing", "12"]) == 2
    assert "4 cases cannot be split into 5 folds" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "b.work").exists()
