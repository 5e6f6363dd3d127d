"""RIM / CIRIM: published parameter counts, separate recurrent states, identity start, k-space IO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.models import count_parameters, create_model, list_models, model_info, model_task
from medpipe.models.rim import ConvGRUCell, ConvMGUCell, IndRNNCell, RecurrentInferenceMachine
from medpipe.recon import SenseOp, make_mask


def _problem(b=1, coils=3, rows=24, cols=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(b, coils, rows, cols, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    x = torch.randn(b, rows, cols, dtype=torch.complex64, generator=g)
    mask = torch.from_numpy(make_mask("equispaced", (rows, cols), 4, center_fraction=0.16, seed=1))[None, None]
    y = SenseOp(maps, mask).forward(x)
    return y, mask, maps, x


def test_published_parameter_counts():
    assert model_info("cirim").params == 264_960  # 5 IndRNN cascades, h 64 (52,992 each)
    assert model_info("rim").params == 94_080  # 1 cascade, ConvGRU, h 64
    assert model_info("rim_indrnn").params == 52_992
    assert {"rim", "rim_mgu", "rim_indrnn", "cirim", "cirim_8"} <= set(list_models("*rim*"))
    assert all(model_task(n) == "recon" for n in list_models("*rim*"))


@pytest.mark.parametrize("cell", [ConvGRUCell, ConvMGUCell, IndRNNCell])
def test_cells_keep_shape(cell):
    c = cell(4, 6)
    h = c(torch.randn(2, 4, 5, 7), torch.zeros(2, 6, 5, 7))
    assert h.shape == (2, 6, 5, 7) and torch.isfinite(h).all()


def test_untrained_model_returns_the_zero_filled_sense_image_and_learns():
    torch.manual_seed(0)
    y, mask, maps, _ = _problem(b=2)
    net = create_model("cirim", hidden=4, cascades=2, steps=2)
    op = SenseOp(maps, mask)
    zf = op.zero_filled(op.to_data_domain(y))
    with torch.no_grad():
        out = net(y, mask, maps)
    assert out.shape == (2, 24, 32) and out.dtype == torch.complex64
    assert torch.allclose(out, zf, atol=1e-5 * zf.abs().max())  # zero-initialised last conv: identity start
    est, scale = net.estimates(y, mask, maps)
    assert len(est) == 2 and all(len(s) == 2 for s in est) and scale.shape == (2, 1, 1)
    est[-1][-1].abs().mean().backward()
    assert net.cascades[0].conv3.weight.grad.abs().sum() > 0  # the gradient reaches the first cascade


def test_scale_invariance_and_states_are_separate_contiguous_tensors():
    torch.manual_seed(1)
    y, mask, maps, _ = _problem()
    net = create_model("rim", hidden=4, steps=3)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    seen = []
    block = net.cascades[0]
    hook = block.rnn2.register_forward_hook(lambda m, a, o: seen.append((a[1].is_contiguous(), a[1].shape)))
    with torch.no_grad():
        a = net(y, mask, maps)
        b = net(1000.0 * y, mask, maps)
    hook.remove()
    assert torch.allclose(b, 1000.0 * a, rtol=1e-4, atol=1e-3)  # the model normalises its own input scale
    assert all(c and s == (1, 4, 24, 32) for c, s in seen)


def test_model_refuses_segmentation_io():
    with pytest.raises(ValueError, match="2 real channels in and out"):
        RecurrentInferenceMachine(in_channels=1, num_classes=3)
    with torch.device("meta"):
        net = create_model("cirim_8")
    assert len(net.cascades) == 8 and count_parameters(net) == 8 * 52_992


def test_learns_on_a_tiny_problem():
    torch.manual_seed(2)
    y, mask, maps, x = _problem(b=2, seed=3)
    net = create_model("rim_indrnn", hidden=8, steps=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        est, scale = net.estimates(y, mask, maps)
        loss = (est[-1][-1].abs() - x.abs() / scale).abs().mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.8 * first
    assert np.isfinite(float(loss))
