"""2D networks through the sliding-window engine: slice-wise, batched, exact, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.errors import InputError
from medpipe.inference import predict
from medpipe.inference.tiling import plan_tiles
from medpipe.models import create_model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("paratranscnn_tiny", in_channels=1, num_classes=4).eval()


def _vol(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def test_slab_equals_the_network_on_each_slice(net):
    vol = _vol((32, 48, 5))
    r = predict(net, vol, (32, 48), num_classes=4, backend="torch", batch_size=2, progress=False, output="both")
    with torch.no_grad():
        logits = net(torch.from_numpy(vol[0]).permute(2, 0, 1)[:, None])  # the 5 slices as one batch
    assert np.array_equal(r.labels, logits.argmax(1).permute(1, 2, 0).numpy())
    np.testing.assert_allclose(r.probabilities.astype(np.float32),
                               torch.softmax(logits, 1).permute(1, 2, 3, 0).numpy(), atol=2e-3)
    facts = r.facts
    assert facts["slicewise"] and facts["slices_per_pass"] == 2 and facts["tiles"] == 3  # K: 0, 2, 3
    assert facts["patch_size"] == [32, 48, 2]


def test_in_plane_tiling_and_batching_do_not_change_a_slice(net):
    vol = _vol((70, 50, 9), seed=1)
    whole = predict(net, vol, (32, 32), num_classes=4, backend="torch", batch_size=4, progress=False)
    one_by_one = np.concatenate([predict(net, vol[..., k:k + 1], (32, 32), num_classes=4, backend="torch",
                                         progress=False).labels for k in range(9)], axis=-1)
    assert np.array_equal(whole.labels, one_by_one)
    assert whole.facts["tiles"] == 4 * 3 * 3  # in-plane overlap 0.5, none along the 9 slices
    assert plan_tiles((70, 50, 9), (32, 32, 4), (0.5, 0.5, 0.0)).starts[2] == (0, 2, 5)  # 2-4 repeat: exact


def test_openvino_backend_agrees_with_torch(net):
    vol = _vol((40, 40, 6), seed=2)
    kw = dict(num_classes=4, progress=False, tta_axes=[1, 2], output="probabilities", probability_dtype="fp32")
    ref = predict(net, vol, (32, 32), backend="torch", **kw)
    ov = predict(net, vol, (32, 32), backend="openvino", **kw)
    assert ov.facts["backend"] == "openvino" and ov.facts["tta_passes"] == 2  # axis 2 dropped for 2D
    # an untrained net's classes are near ties, so compare probabilities, not arg-maxes
    diff = np.abs(ov.probabilities - ref.probabilities)  # fp32 kernels differ ~1e-4, a rare voxel ~2e-3
    assert diff.mean() < 3e-4 and diff.max() < 5e-3


def test_two_d_errors_are_one_sentence(net):
    with pytest.raises(InputError, match="is 12x40 pixels in-plane, smaller than the 16x16 minimum of ParaTransCNN"):
        predict(net, _vol((12, 40, 3)), (32, 32), num_classes=4, progress=False)
    with pytest.raises(InputError, match="needs a 2D patch size"):
        predict(net, _vol((32, 32, 3)), (32, 32, 32), num_classes=4, progress=False)
