"""The sliding-window engine against a straightforward dense implementation of the same blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from medpipe.errors import InputError, ResourceError
from medpipe.inference import gaussian_importance_map, memory_plan, predict
from medpipe.inference.tiling import pad_amounts, tile_starts


def tiny_net(in_ch: int = 1, k: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(in_ch, 6, 3, padding=1), nn.InstanceNorm3d(6, affine=True), nn.LeakyReLU(0.01),
                         nn.Conv3d(6, 6, 3, padding=1), nn.InstanceNorm3d(6, affine=True), nn.LeakyReLU(0.01),
                         nn.Conv3d(6, k, 1)).eval()


def volume(shape=(40, 36, 50), ch=1, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(ch, *shape)).astype(np.float32)
    v[:, 10:25, 8:20, 12:40] += 2.0
    return v


def dense_reference(model, vol, patch, overlap=0.5, flips=((),)):
    """Whole-volume fp64 buffers, every tile, Gaussian weights; returns averaged logits."""
    pads = pad_amounts(vol.shape[1:], patch)
    v = np.pad(vol, [(0, 0), *pads])
    g = gaussian_importance_map(patch).double().numpy()
    starts = [tile_starts(s, p, overlap) for s, p in zip(v.shape[1:], patch, strict=True)]
    acc = w = None
    for o in itertools.product(*starts):
        sl = tuple(slice(a, a + p) for a, p in zip(o, patch, strict=True))
        x = torch.from_numpy(np.ascontiguousarray(v[(slice(None), *sl)]))[None]
        outs = []
        with torch.no_grad():
            for axes in flips:
                dims = [2 + a for a in axes]
                y = model(torch.flip(x, dims) if dims else x)
                outs.append(torch.flip(y, dims) if dims else y)
        y = torch.stack(outs).mean(0)[0].double().numpy()
        if acc is None:
            acc = np.zeros((y.shape[0], *v.shape[1:]))
            w = np.zeros(v.shape[1:])
        acc[(slice(None), *sl)] += g * y
        w[sl] += g
    avg = acc / w
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, vol.shape[1:], strict=True))
    return avg[(slice(None), *crop)]


def softmax(x):
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def test_fp32_path_equals_dense_reference():
    net, vol, patch = tiny_net(), volume(), (24, 20, 32)
    ref = dense_reference(net, vol, patch)
    res = predict(net, vol, patch, num_classes=4, precision="fp32", output="both", progress=False,
                  probability_dtype="fp32", backend="torch")
    assert res.labels.shape == vol.shape[1:] and res.labels.dtype == np.uint8
    np.testing.assert_allclose(res.probabilities, softmax(ref), atol=1e-5)
    # labels are the argmax of the blended logits (ignore voxels where the top two are tied to 1e-5)
    top2 = np.sort(ref, 0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-5
    assert np.array_equal(res.labels[clear], ref.argmax(0)[clear])
    assert res.facts["precision"] == "fp32" and res.facts["tiles"] == 3 * 3 * 3


def test_streamed_slab_path_equals_dense_buffer_path():
    net, vol, patch = tiny_net(k=5), volume((30, 28, 70)), (16, 16, 24)
    kw = dict(num_classes=5, precision="fp32", output="both", progress=False, probability_dtype="fp32",
              backend="torch")
    streamed = predict(net, vol, patch, stream=True, **kw)
    dense = predict(net, vol, patch, stream=False, **kw)
    assert streamed.facts["slab_depth"] == 24 and dense.facts["slab_depth"] == 70
    np.testing.assert_allclose(streamed.probabilities, dense.probabilities, atol=1e-6)
    assert np.array_equal(streamed.labels, dense.labels)
    assert streamed.facts["stitching_buffer_bytes"] < dense.facts["stitching_buffer_bytes"]


def test_image_smaller_than_patch_is_padded_and_cropped_back():
    net, vol, patch = tiny_net(), volume((12, 30, 9)), (16, 16, 16)
    res = predict(net, vol, patch, num_classes=4, precision="fp32", output="both", progress=False,
                  probability_dtype="fp32", backend="torch")
    assert res.labels.shape == (12, 30, 9) and res.probabilities.shape == (4, 12, 30, 9)
    assert res.facts["padded_shape"] == [16, 30, 16]
    np.testing.assert_allclose(res.probabilities, softmax(dense_reference(net, vol, patch)), atol=1e-5)


def mirror_symmetric_net() -> nn.Module:
    """Convolutions whose kernels are symmetric under every flip: the net commutes with mirroring."""
    net = tiny_net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                w = m.weight
                sym = sum(torch.flip(w, [2 + a for a in ax]) for r in range(4)
                          for ax in itertools.combinations(range(3), r)) / 8
                w.copy_(sym)
    return net


def test_tta_on_a_mirror_equivariant_model_changes_nothing():
    net, vol, patch = mirror_symmetric_net(), volume((24, 24, 24)), (16, 16, 16)
    kw = dict(num_classes=4, precision="fp32", output="probabilities", progress=False, probability_dtype="fp32",
              backend="torch")
    plain = predict(net, vol, patch, **kw)
    tta = predict(net, vol, patch, tta_axes=(0, 1, 2), **kw)
    assert tta.facts["tta_passes"] == 8 and tta.facts["forward_passes"] == 8 * plain.facts["tiles"]
    np.testing.assert_allclose(tta.probabilities, plain.probabilities, atol=1e-5)


def test_tta_matches_dense_reference_with_mirroring():
    net, vol, patch = tiny_net(seed=3), volume((20, 20, 28)), (16, 16, 16)
    flips = [(), (0,), (2,), (0, 2)]
    ref = dense_reference(net, vol, patch, flips=flips)
    res = predict(net, vol, patch, num_classes=4, precision="fp32", tta_axes=(2, 0), output="probabilities",
                  progress=False, probability_dtype="fp32", backend="torch")
    np.testing.assert_allclose(res.probabilities, softmax(ref), atol=1e-5)


def test_batching_and_fp16_accumulation_agree_with_defaults():
    net, vol, patch = tiny_net(), volume((32, 32, 40)), (16, 16, 16)
    kw = dict(num_classes=4, precision="fp32", output="probabilities", progress=False, probability_dtype="fp32")
    one = predict(net, vol, patch, batch_size=1, **kw)
    three = predict(net, vol, patch, batch_size=3, **kw)
    half = predict(net, vol, patch, accumulation="fp16", **kw)
    np.testing.assert_allclose(three.probabilities, one.probabilities, atol=1e-5)
    np.testing.assert_allclose(half.probabilities, one.probabilities, atol=5e-3)


def test_bf16_policy_mostly_agrees_with_fp32():
    net, vol, patch = tiny_net(), volume((32, 32, 32)), (16, 16, 16)
    fp32 = predict(net, vol, patch, num_classes=4, precision="fp32", progress=False)
    bf16 = predict(net, vol, patch, num_classes=4, precision="bf16", progress=False)
    assert bf16.facts["precision"] == "bf16" and bf16.facts["channels_last"]
    assert (bf16.labels == fp32.labels).mean() > 0.95


def test_many_classes_use_int16_labels_and_a_slab_buffer():
    net, vol, patch = tiny_net(k=300), volume((16, 16, 40)), (16, 16, 16)
    res = predict(net, vol, patch, num_classes=300, precision="fp32", progress=False, accumulation="fp32")
    assert res.labels.dtype == np.int16 and res.labels.shape == (16, 16, 40)
    assert res.facts["stitching_buffer_bytes"] == 300 * 16 * 16 * 16 * 4 + 16 * 16 * 16 * 4
    assert res.facts["dense_buffer_bytes"] == 300 * 16 * 16 * 40 * 4


def test_memory_bound_is_much_smaller_than_a_dense_buffer_for_many_classes():
    m = memory_plan((256, 256, 256), (96, 96, 96), num_classes=105)
    assert m["logit_buffer"] == 105 * 256 * 256 * 96 * 4
    assert m["logit_buffer"] == m["dense_logit_buffer"] * 96 // 256  # one patch deep along the last axis
    assert m["total"] < 0.45 * m["dense_logit_buffer"]  # + one patch of 105-class logits, input, labels
    half = memory_plan((256, 256, 256), (96, 96, 96), num_classes=105, accumulation="fp16")
    assert half["logit_buffer"] == m["logit_buffer"] // 2
    assert half["total"] < 0.26 * m["dense_logit_buffer"]


def test_too_little_memory_is_a_resource_error_naming_the_fix():
    net, vol = tiny_net(), volume((16, 16, 16))
    with pytest.raises(ResourceError, match="output=labels"):
        predict(net, vol, (16, 16, 16), num_classes=4, output="probabilities", memory_budget_gb=1e-6,
                progress=False)
    with pytest.raises(ResourceError, match="smaller --patch"):
        predict(net, vol, (16, 16, 16), num_classes=4, memory_budget_gb=1e-6, progress=False)


def test_bad_arguments_are_input_errors():
    net, vol = tiny_net(), volume((16, 16, 16))
    with pytest.raises(InputError, match="channel-first"):
        predict(net, vol[0, 0], (16, 16, 16), num_classes=4, progress=False)
    with pytest.raises(InputError, match="expected \\(3, 16, 16, 16\\)"):
        predict(net, vol, (16, 16, 16), num_classes=3, progress=False)
    with pytest.raises(InputError, match="precision"):
        predict(net, vol, (16, 16, 16), num_classes=4, precision="int8", progress=False)


class HeadNet(nn.Module):
    """A trunk with 6 features and a 1x1 head to ``k`` classes, exposing both like STU-Net."""

    def __init__(self, k: int = 12, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = tiny_net(k=6, seed=seed)
        self.out = nn.Conv3d(6, k, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(self.trunk(x), 0.01)

    @property
    def head(self) -> nn.Module:
        return self.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def test_feature_stitching_equals_logit_stitching_and_the_dense_reference():
    net, vol, patch = HeadNet(k=12).eval(), volume((30, 28, 44)), (16, 16, 24)
    flips = [(), (1,)]
    ref = dense_reference(net, vol, patch, flips=flips)
    kw = dict(num_classes=12, precision="fp32", output="both", progress=False, probability_dtype="fp32",
              backend="torch", tta_axes=(1,))
    feats = predict(net, vol, patch, **kw)
    logits = predict(net, vol, patch, stitch="logits", **kw)
    assert feats.facts["stitched"] == "features" and feats.facts["stitched_channels"] == 6
    assert logits.facts["stitched"] == "logits" and logits.facts["stitched_channels"] == 12
    np.testing.assert_allclose(feats.probabilities, softmax(ref), atol=1e-5)
    np.testing.assert_allclose(feats.probabilities, logits.probabilities, atol=1e-5)
    top2 = np.sort(ref, 0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-5
    assert np.array_equal(feats.labels[clear], ref.argmax(0)[clear])
    # the ring holds 6 feature channels instead of 12 logits
    ring = 30 * 28 * 24
    assert feats.facts["stitching_buffer_bytes"] == 6 * ring * 4 + ring * 4
    assert logits.facts["stitching_buffer_bytes"] == 12 * ring * 4 + ring * 4


def test_feature_stitching_is_chosen_only_when_it_saves_memory():
    vol, patch = volume((16, 16, 16)), (16, 16, 16)
    few = predict(HeadNet(k=4).eval(), vol, patch, num_classes=4, progress=False, backend="torch")
    many = predict(HeadNet(k=40).eval(), vol, patch, num_classes=40, progress=False, backend="torch")
    assert few.facts["stitched"] == "logits"  # 6 features > 4 classes
    assert many.facts["stitched"] == "features" and many.facts["accumulation"] == "fp32"  # 6 channels: fp32
    forced = predict(HeadNet(k=4).eval(), vol, patch, num_classes=4, progress=False, backend="torch",
                     stitch="features", output="probabilities", probability_dtype="fp32")
    plain = predict(HeadNet(k=4).eval(), vol, patch, num_classes=4, progress=False, backend="torch",
                    output="probabilities", probability_dtype="fp32")
    np.testing.assert_allclose(forced.probabilities, plain.probabilities, atol=1e-5)


def test_feature_stitching_errors_name_the_problem():
    vol, patch = volume((16, 16, 16)), (16, 16, 16)
    with pytest.raises(InputError, match="stitch='features' needs a network with forward_features"):
        predict(tiny_net(), vol, patch, num_classes=4, progress=False, stitch="features")
    with pytest.raises(InputError, match="head has 12 outputs, expected 5 classes"):
        predict(HeadNet(k=12).eval(), vol, patch, num_classes=5, progress=False)
    with pytest.raises(InputError, match="stitch must be one of"):
        predict(tiny_net(), vol, patch, num_classes=4, progress=False, stitch="everything")


def test_memory_plan_with_feature_stitching_for_a_105_class_stunet():
    logits = memory_plan((256, 256, 256), (96, 96, 96), num_classes=105, accumulation="fp16")
    feats = memory_plan((256, 256, 256), (96, 96, 96), num_classes=105, stitch_channels=16)
    assert feats["logit_buffer"] == 16 * 256 * 256 * 96 * 4  # fp32 features, STU-Net-S width
    assert feats["total"] < 0.5 * logits["total"]
    assert feats["total"] < 0.1 * feats["dense_logit_buffer"]
