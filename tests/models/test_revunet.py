"""Reversible MBConv U-Net: exact inverse, gradients and an optimiser step equal to the
non-reversible twin, RNG replay for dropout, one BatchNorm update, saved-activation bytes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from medpipe.models import create_model
from medpipe.models.revunet import ReversibleBlock, ReversibleStage, RevUNet


def _tiny(**kw) -> RevUNet:
    torch.manual_seed(0)
    return RevUNet(2, 3, widths=(8, 16, 16), depth=2, **kw)


def test_inverse_reconstructs_the_input():
    torch.manual_seed(0)
    stage = ReversibleStage(8, depth=3).eval()
    x = torch.randn(2, 8, 9, 10, 11)
    with torch.no_grad():
        y = stage(x)
        assert (y - x).abs().max() > 0.1  # the blocks do something
        torch.testing.assert_close(stage.inverse(y), x, atol=1e-5, rtol=0)


def _loss(net: RevUNet, x: torch.Tensor, target: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # same dropout masks in both networks
    outs = net(x)
    total = 0.0
    for o in outs:
        t = F.interpolate(target[:, None].double(), size=o.shape[2:], mode="nearest").long()[:, 0]
        total = total + F.cross_entropy(o, t)
    return total


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_gradients_and_one_sgd_step_equal_the_twin(norm):
    net = _tiny(norm=norm, dropout=0.2, deep_supervision=True).double().train()
    twin = copy.deepcopy(net).set_reversible(False)
    x = torch.randn(2, 2, 16, 16, 16, dtype=torch.float64, requires_grad=True)
    xt = x.detach().clone().requires_grad_(True)
    target = torch.randint(0, 3, (2, 16, 16, 16))
    opt_a = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    la, lb = _loss(net, x, target, 7), _loss(twin, xt, target, 7)
    torch.testing.assert_close(la, lb, atol=1e-10, rtol=0)
    la.backward()
    lb.backward()
    torch.testing.assert_close(x.grad, xt.grad, atol=1e-5, rtol=0)
    for (name, pa), pb in zip(net.named_parameters(), twin.parameters(), strict=True):
        assert pa.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=0, msg=name)
    opt_a.step()
    opt_b.step()
    for pa, pb in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0)
    # BatchNorm running statistics were updated exactly once per forward (no second update on recompute)
    for ba, bb in zip(net.buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, atol=1e-12, rtol=0)


def test_dropout_masks_are_replayed_in_backward():
    torch.manual_seed(0)
    stage = ReversibleStage(8, depth=2, dropout=0.5).double().train()
    twin = copy.deepcopy(stage)
    twin.reversible = False
    x = torch.randn(1, 8, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.manual_seed(3)
    stage(x).square().sum().backward()
    torch.manual_seed(3)
    twin(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-8, rtol=0)
    # and the global RNG stream is not disturbed by the replay
    torch.manual_seed(3)
    stage(x).sum().backward()
    after = torch.rand(1)
    torch.manual_seed(3)
    with torch.no_grad():
        stage(x)
    assert torch.equal(after, torch.rand(1))


def _saved_bytes(net: RevUNet, x: torch.Tensor) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum()
    return total


def test_reversible_path_saves_a_fraction_of_the_twins_activations():
    net = create_model("revunet_xs", in_channels=1, num_classes=2).train()
    x = torch.randn(1, 1, 64, 64, 64)
    rev = _saved_bytes(net, x)
    plain = _saved_bytes(net.set_reversible(False), x)
    assert rev * 4 < plain, (rev, plain)


def test_shapes_deep_supervision_and_features():
    net = _tiny(deep_supervision=True)
    x = torch.randn(1, 2, 16, 16, 16)
    outs = net.train()(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 16, 16), (8, 8, 8)]
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.head(net.forward_features(x)), net(x))


def test_odd_channels_and_bad_plans_are_refused():
    with pytest.raises(ValueError, match="odd"):
        ReversibleBlock(7)
    with pytest.raises(ValueError, match="pool_op_kernel_sizes"):
        RevUNet(1, 2, widths=(8, 16), depth=1, pool_op_kernel_sizes=[[2, 2, 2], [2, 2, 2]])
