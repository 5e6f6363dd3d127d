"""MICDIR and the VoxelMorph baseline: structure, counts, the training outputs."""

from __future__ import annotations

import pytest
import torch

from medpipe.models import count_parameters, create_model, model_info


def test_micdir_structure_and_multiscale_outputs():
    net = create_model("micdir", in_channels=2, num_classes=3)
    widths = [blk[0].out_channels for blk in net.encoder]
    assert widths == [16, 32, 32, 32, 32, 32]
    assert [blk[0].stride[0] for blk in net.encoder] == [1, 2, 2, 2, 2, 2]
    assert net.scg.n_nodes == 64 and len(net.gcn) == 2
    assert count_parameters(net) == 421_379
    x = torch.rand(1, 2, 64, 64, 64)
    out = net.train().forward_train(x)
    assert out["velocity"].shape == (1, 3, 64, 64, 64)
    assert out["velocity_half"].shape == (1, 3, 32, 32, 32)
    assert out["graph_loss"].ndim == 0 and torch.isfinite(out["graph_loss"])
    # the velocity heads start near zero: training begins at the identity
    assert float(out["velocity"].detach().abs().max()) < 1e-2
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # eval: no sampling in the graph, no dropout
    with pytest.raises(ValueError, match="3D network"):
        create_model("micdir", spatial_dims=2)


def test_micdir_without_pool_has_one_node_per_bottleneck_voxel_at_any_size():
    pooled = create_model("micdir", in_channels=2, num_classes=3)
    net = create_model("micdir", in_channels=2, num_classes=3, nodes=None)
    assert count_parameters(net) == count_parameters(pooled)  # same weights: they act per node
    net.load_state_dict(pooled.state_dict(), strict=True)
    seen = []
    net.scg.register_forward_hook(lambda mod, inp, out: seen.append(out[0].shape[-1]))
    net.eval()
    with torch.no_grad():
        for size, nodes in ((64, 8), (96, 27)):  # bottleneck = size / 32 per axis
            assert net(torch.rand(1, 2, size, size, size)).shape == (1, 3, size, size, size)
            assert seen[-1] == nodes
    out = net.train().forward_train(torch.rand(1, 2, 64, 64, 64))
    assert torch.isfinite(out["graph_loss"])


def test_micdir_graph_norm_keeps_no_running_statistics():
    """Inference must not depend on averages gathered on training crops (the shipped recipe)."""
    torch.manual_seed(0)
    net = create_model("micdir", in_channels=2, num_classes=3, nodes=None, graph_norm=True)
    assert count_parameters(net) == 421_379
    assert all(layer.norm.running_mean is None for layer in net.gcn)
    x = torch.rand(1, 2, 64, 64, 64)
    net.eval()
    with torch.no_grad():
        before = net.forward_train(x)["velocity"]
        net.train()
        for _ in range(3):  # training steps on other data would move BatchNorm's running averages
            net.forward_train(torch.rand(1, 2, 64, 64, 64) * 3)
        net.eval()
        assert torch.equal(net.forward_train(x)["velocity"], before)


def test_voxelmorph_matches_the_pypi_package_parameter_count():
    assert model_info("voxelmorph", in_channels=2, num_classes=3).params == 105_017
    vxm = pytest.importorskip("voxelmorph")
    ref = vxm.nn.models.VxmPairwise(ndim=3, source_channels=1, target_channels=1)
    ours = create_model("voxelmorph", in_channels=2, num_classes=3)
    assert count_parameters(ours) == sum(p.numel() for p in ref.parameters())
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in ref.parameters())


def test_voxelmorph_runs_on_sizes_that_are_not_a_multiple_of_32():
    net = create_model("voxelmorph").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 40, 48, 36)).shape == (1, 3, 40, 48, 36)
