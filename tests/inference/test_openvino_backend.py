"""The OpenVINO backend against the PyTorch fp32 path; its on-disk IR cache; backend/accumulation policy."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_sliding_window import tiny_net, volume

from medpipe.errors import InputError, ResourceError
from medpipe.inference import openvino_backend as ovb
from medpipe.inference import predict, resolve_precision
from medpipe.inference.precision import PrecisionPlan, resolve_backend
from medpipe.inference.sliding_window import resolve_accumulation

pytest.importorskip("openvino")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ovb, "_COMPILED", {})  # each test starts without compiled models in memory
    return tmp_path / "cache" / "openvino"


def confident_net(seed: int = 0) -> torch.nn.Module:
    """A tiny net fitted for a few steps to segment bright blobs: decided, not random, predictions."""
    net = tiny_net(k=3, seed=seed).train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(40):
        v = rng.normal(size=(2, 1, 16, 16, 16)).astype(np.float32)
        y = np.zeros((2, 16, 16, 16), np.int64)
        v[:, :, 3:9, 4:12, 2:10] += 3.0
        y[:, 3:9, 4:12, 2:10] = 1
        v[:, :, 10:14, 2:6, 9:15] -= 3.0
        y[:, 10:14, 2:6, 9:15] = 2
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(v)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_openvino_logits_and_labels_match_the_torch_fp32_path():
    net, patch = confident_net(), (16, 16, 16)
    vol = volume((36, 32, 40))
    kw = dict(num_classes=3, precision="fp32", output="both", progress=False, probability_dtype="fp32")
    ref = predict(net, vol, patch, backend="torch", **kw)
    ov = predict(net, vol, patch, backend="openvino", **kw)
    assert ov.facts["backend"] == "openvino" and ref.facts["backend"] == "torch"
    assert ov.facts["openvino"]["cache"] == "converted" and ov.facts["openvino"]["convert_seconds"] > 0
    np.testing.assert_allclose(ov.probabilities, ref.probabilities, atol=1e-2)
    assert (ov.labels == ref.labels).mean() >= 0.999
    # the network itself: logits of one patch within 1e-2
    x = torch.from_numpy(vol[None, :, :16, :16, :16].copy())
    ov_net = ovb.load_openvino_network(net, (1, 1, 16, 16, 16))
    with torch.no_grad():
        np.testing.assert_allclose(ov_net(x).numpy(), net(x).numpy(), atol=1e-2)


def test_ir_is_cached_on_disk_and_a_corrupt_entry_is_rebuilt(cache):
    net, shape = tiny_net(seed=5), (1, 1, 16, 16, 16)
    first = ovb.load_openvino_network(net, shape)
    folder = cache / first.facts["cache_key"]
    assert first.facts["cache"] == "converted"
    assert (folder / "model.xml").is_file() and (folder / "model.bin").stat().st_size > 0
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporaries left behind
    ovb._COMPILED.clear()
    again = ovb.load_openvino_network(net, shape)
    assert again.facts["cache"] == "disk" and again.facts["convert_seconds"] == 0.0
    assert ovb.load_openvino_network(net, shape).facts["cache"] == "memory"
    ovb._COMPILED.clear()
    (folder / "model.xml").write_text("<not a model")
    rebuilt = ovb.load_openvino_network(net, shape)
    assert rebuilt.facts["cache"] == "rebuilt"
    x = torch.randn(shape)
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(x).numpy(), net(x).numpy(), atol=1e-3)


def test_cache_key_depends_on_weights_and_input_shape():
    a, b = tiny_net(seed=1), tiny_net(seed=2)
    shape = (1, 1, 16, 16, 16)
    assert ovb.model_key(a, shape, "v") == ovb.model_key(tiny_net(seed=1), shape, "v")
    assert ovb.model_key(a, shape, "v") != ovb.model_key(b, shape, "v")
    assert ovb.model_key(a, shape, "v") != ovb.model_key(a, (2, 1, 16, 16, 16), "v")
    assert ovb.model_key(a, shape, "v") != ovb.model_key(a, shape, "w")


def test_batches_with_a_short_last_batch_match_single_patches():
    net, vol, patch = tiny_net(), volume((32, 32, 24)), (16, 16, 16)
    kw = dict(num_classes=4, output="probabilities", progress=False, probability_dtype="fp32", backend="openvino")
    one = predict(net, vol, patch, batch_size=1, **kw)
    two = predict(net, vol, patch, batch_size=2, **kw)  # 3 tiles per group: the last batch is short
    np.testing.assert_allclose(two.probabilities, one.probabilities, atol=1e-5)


def test_tta_through_openvino_matches_torch():
    net, vol, patch = tiny_net(seed=3), volume((20, 20, 28)), (16, 16, 16)
    kw = dict(num_classes=4, precision="fp32", tta_axes=(0, 2), output="probabilities", progress=False,
              probability_dtype="fp32")
    ov = predict(net, vol, patch, backend="openvino", **kw)
    ref = predict(net, vol, patch, backend="torch", **kw)
    assert ov.facts["tta_passes"] == 4
    np.testing.assert_allclose(ov.probabilities, ref.probabilities, atol=1e-4)


def test_backend_policy():
    cpu32 = resolve_precision("fp32", "cpu")
    assert resolve_backend("auto", cpu32)[0] == "openvino"
    assert resolve_backend("auto", resolve_precision("bf16", "cpu"))[0] == "torch"
    assert resolve_backend("torch", cpu32)[0] == "torch"
    # many logits stitched, labels only: stitching-bound, torch keeps the lower peak memory
    assert resolve_backend("auto", cpu32, stitched_channels=8)[0] == "openvino"
    backend, reason = resolve_backend("auto", cpu32, stitched_channels=105)
    assert backend == "torch" and "105 logits stitched" in reason
    assert resolve_backend("openvino", cpu32, stitched_channels=105)[0] == "openvino"  # an explicit request wins
    with pytest.raises(InputError, match="backend must be"):
        resolve_backend("tensorrt", cpu32)
    # OpenVINO runs bf16 through its inference-precision hint; fp16 on a GPU it cannot run
    assert resolve_backend("openvino", resolve_precision("bf16", "cpu"))[0] == "openvino"
    with pytest.raises(InputError, match="fp32 or bf16 on the CPU"):
        resolve_backend("openvino", PrecisionPlan("fp16", "cuda", False, "test"))


def test_missing_openvino_is_a_resource_error_naming_pip(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    cpu32 = resolve_precision("fp32", "cpu")
    assert resolve_backend("auto", cpu32)[0] == "torch"
    with pytest.raises(ResourceError, match="pip install openvino"):
        predict(tiny_net(), volume((16, 16, 16)), (16, 16, 16), num_classes=4, backend="openvino", progress=False)


def test_auto_accumulation_is_fp16_for_many_classes_and_labels_only():
    assert resolve_accumulation("auto", 105, "labels") == "fp16"
    assert resolve_accumulation("auto", 105, "both") == "fp32"
    assert resolve_accumulation("auto", 8, "labels") == "fp32"
    assert resolve_accumulation("fp32", 105, "labels") == "fp32"
    with pytest.raises(InputError, match="accumulation"):
        resolve_accumulation("int8", 4, "labels")


def test_fp16_accumulation_argmax_agrees_with_fp32_for_many_classes():
    net, vol, patch = tiny_net(k=40, seed=4), volume((32, 28, 40)), (16, 16, 16)
    kw = dict(num_classes=40, precision="fp32", progress=False, backend="torch")
    auto = predict(net, vol, patch, **kw)
    fp32 = predict(net, vol, patch, accumulation="fp32", **kw)
    assert auto.facts["accumulation"] == "fp16" and fp32.facts["accumulation"] == "fp32"
    assert auto.facts["stitching_buffer_bytes"] < fp32.facts["stitching_buffer_bytes"]
    assert (auto.labels == fp32.labels).mean() >= 0.995
