"""Fused InstanceNorm + LeakyReLU: reference against first principles, Triton against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _interpret import run_interpreted

from medpipe.kernels import instance_norm_leaky_relu, instance_norm_leaky_relu_reference


def numpy_in_lrelu(x, w, b, eps=1e-5, slope=0.01):
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)
    return np.where(y >= 0, y, slope * y)


@pytest.mark.parametrize("shape", [(1, 3, 5, 7, 9), (2, 4, 8, 8, 8), (1, 2, 6, 10)])
def test_reference_matches_the_formula(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape)
    w, b = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    got = instance_norm_leaky_relu_reference(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))
    np.testing.assert_allclose(got.numpy(), numpy_in_lrelu(x, w, b), atol=1e-10)


def test_cpu_dispatch_is_the_reference_and_equals_the_stunet_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7, 8)
    norm, act = torch.nn.InstanceNorm3d(5, affine=True), torch.nn.LeakyReLU(0.01)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        expected = act(norm(x))
        got = instance_norm_leaky_relu(x, norm.weight, norm.bias)
    torch.testing.assert_close(got, expected)


def test_triton_kernel_matches_reference_under_interpreter():
    out = run_interpreted("""
        import json, torch
        from medpipe.kernels import instance_norm_leaky_relu
        torch.manual_seed(0)
        errs = []
        for shape in [(1, 3, 5, 7, 9), (2, 2, 4, 4, 4), (1, 1, 3, 4, 5), (1, 2, 40, 31)]:
            x = torch.randn(shape) * 3 + 1
            w, b = torch.randn(shape[1]), torch.randn(shape[1])
            for affine in (True, False):
                ww, bb = (w, b) if affine else (None, None)
                got = instance_norm_leaky_relu(x, ww, bb, negative_slope=0.2, backend="triton")
                ref = instance_norm_leaky_relu(x, ww, bb, negative_slope=0.2, backend="reference")
                errs.append(float((got - ref).abs().max()))
        xcl = torch.randn(1, 3, 5, 7, 9).contiguous(memory_format=torch.channels_last_3d)
        w, b = torch.randn(3), torch.randn(3)
        got = instance_norm_leaky_relu(xcl, w, b, backend="triton")
        errs.append(float((got - instance_norm_leaky_relu(xcl, w, b, backend="reference")).abs().max()))
        print(json.dumps({"errs": errs, "cl": got.is_contiguous(memory_format=torch.channels_last_3d)}))
    """)
    assert len(out["errs"]) == 9
    assert max(out["errs"]) < 1e-5
    assert out["cl"]


def test_missing_triton_names_the_extra():
    out = run_interpreted("""
        import json, sys
        sys.modules["triton"] = None  # as if the package were not installed
        import torch
        from medpipe.errors import ResourceError
        from medpipe.kernels import instance_norm_leaky_relu, triton_available
        x = torch.randn(1, 2, 3, 3, 3)
        cpu = instance_norm_leaky_relu(x)  # CPU path never needs triton
        try:
            instance_norm_leaky_relu(x, backend="triton")
            msg = ""
        except ResourceError as exc:
            msg = str(exc)
        print(json.dumps({"available": triton_available(), "msg": msg, "shape": list(cpu.shape)}))
    """)
    assert out["available"] is False
    assert "pip install 'medpipe[triton]'" in out["msg"]
    assert out["shape"] == [1, 2, 3, 3, 3]
