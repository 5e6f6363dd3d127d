"""What the trainer does for the issue-15 models: plan -> network wiring (U-Mamba_Enc gets the
plan's patch size), pinned fp32 for U-Mamba, deep supervision outputs the loss accepts."""

from __future__ import annotations

import torch

from medpipe.models.registry import accepts
from medpipe.training.config import TrainConfig
from medpipe.training.loss import DeepSupervisionLoss
from medpipe.training.plan import Plan
from medpipe.training.trainer import _build_model


def _plan(patch=(32, 32, 32)) -> Plan:
    pools = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]
    return Plan([2.0] * 3, list(patch), pools, [[3, 3, 3]] * 6, {"scheme": "zscore"}, list(patch))


def test_umamba_enc_is_built_for_the_plans_patch_and_pins_fp32():
    assert accepts("umamba_enc_xs", "patch_size") and not accepts("umamba_bot_xs", "patch_size")
    model, arch = _build_model(TrainConfig(model="umamba_enc_xs"), _plan((32, 32, 16)), 4, 4)
    assert arch["patch_size"] == [32, 32, 16] and model.input_size == [32, 32, 16]
    assert model.training_precision == "fp32"
    bot, arch = _build_model(TrainConfig(model="umamba_bot_xs"), _plan(), 4, 4)
    assert "patch_size" not in arch


def test_reversible_unet_trains_with_the_deep_supervision_loss():
    model, _ = _build_model(TrainConfig(model="revunet_xs"), _plan(), 2, 3)
    x, y = torch.randn(2, 2, 32, 32, 32), torch.randint(0, 3, (2, 1, 32, 32, 32))
    outs = model.train()(x)
    assert isinstance(outs, list) and tuple(outs[0].shape) == (2, 3, 32, 32, 32)
    loss = DeepSupervisionLoss()(outs, y)
    loss.backward()
    assert torch.isfinite(loss)
    # every parameter gets a gradient through the reversible stages, except the lowest-resolution
    # head, whose output the deep-supervision loss weights 0 (nnU-Net's rule)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == ["seg_outputs.0.weight", "seg_outputs.0.bias"]
