"""Dice+CE with nnU-Net's deep-supervision weighting."""

from __future__ import annotations

import pytest
import torch

from medpipe.models import create_model
from medpipe.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights


def test_deep_supervision_weights():
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_loss_values_are_sane():
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    target[..., 2:6, 2:6, 2:6] = 1
    perfect = torch.cat([(target == 0).float(), (target == 1).float()], 1) * 50
    assert DiceCELoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    uniform = torch.zeros(1, 2, 8, 8, 8)
    value = DiceCELoss()(uniform, target).item()
    # CE of a uniform 2-class guess is ln 2; soft Dice of p=0.5 vs 1/8 foreground
    dice = 2 * 0.5 * 64 / (0.5 * 512 + 64)
    assert value == pytest.approx(0.6931 + 1 - dice, abs=1e-3)


def test_loss_decreases_on_a_learnable_case():
    torch.manual_seed(0)
    net = create_model("stunet_xs", in_channels=1, num_classes=2, deep_supervision=True,
                       pool_op_kernel_sizes=[[2, 2, 2]] * 3 + [[1, 1, 1]] * 2)
    x = torch.zeros(2, 1, 16, 16, 16)
    y = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    x[:, :, 4:12, 4:12, 4:12] = 1.0  # the label is the bright cube
    y[:, :, 4:12, 4:12, 4:12] = 1
    loss_fn = DeepSupervisionLoss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(v >= 0 for v in losses)


def test_batch_dice_pools_the_batch():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[0, 0, 2:6, 2:6] = 1  # the organ is only in the first slice
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 1] = -3.0  # a confident "background everywhere"
    per_sample = DiceCELoss(0.0, 1.0)(logits, target).item()
    pooled = DiceCELoss(0.0, 1.0, batch_dice=True)(logits, target).item()
    # per sample the empty second slice scores a near-perfect Dice for predicting nothing
    p = torch.sigmoid(torch.tensor(-3.0)).item()
    dice0 = 2 * p * 16 / (p * 64 + 16)
    dice1 = (0 + 1e-5) / (p * 64 + 1e-5)
    assert per_sample == pytest.approx(1 - (dice0 + dice1) / 2, abs=1e-4)
    assert pooled == pytest.approx(1 - 2 * p * 16 / (p * 128 + 16), abs=1e-4)
