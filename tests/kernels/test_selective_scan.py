"""Selective scan: CPU path and plain loop against the published recurrence (values and all
gradients, odd lengths, several blocks), the Triton kernel under TRITON_INTERPRET=1, and the
causal conv1d reference and fused path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _interpret import run_interpreted

import medpipe.kernels.selective_scan as ss
from medpipe.kernels.causal_conv1d import causal_conv1d, causal_conv1d_reference
from medpipe.kernels.selective_scan import scan_states, selective_scan, selective_scan_reference


def _inputs(b=2, d=5, n=4, length=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).requires_grad_()  # noqa: E731
    a = (-torch.rand(d, n, generator=g) * 2 - 0.1).requires_grad_()
    return [t(b, d, length), t(b, d, length, scale=0.5), a, t(b, n, length), t(b, n, length), t(d), t(b, d, length),
            t(d)]


def _run(xs, backend):
    for x in xs:
        x.grad = None
    out, last = selective_scan(*xs[:7], delta_bias=xs[7], delta_softplus=True, return_last_state=True,
                               backend=backend)
    (out.sin().sum() + last.square().sum()).backward()
    return [out.detach(), last.detach()] + [x.grad.clone() for x in xs]


def _rel(got, ref):
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) for a, b in zip(got, ref, strict=True))


@pytest.mark.parametrize("length", [1, 5, 48, 49, 211])
def test_cpu_scan_and_loop_match_the_reference_values_and_gradients(length):
    xs = _inputs(length=length)
    ref = _run(xs, "reference")
    assert _rel(_run(xs, "cpu"), ref) < 2e-5
    assert _rel(_run(xs, "loop"), ref) < 2e-5


def test_cpu_scan_across_memory_blocks(monkeypatch):
    monkeypatch.setattr(ss, "BLOCK_BYTES", 2 * 5 * 4 * 4 * 13)  # 13 steps per block: 17 blocks, one short
    xs = _inputs(length=211, seed=1)
    assert _rel(_run(xs, "cpu"), _run(xs, "reference")) < 2e-5


def test_two_level_scan_equals_the_recurrence():
    torch.manual_seed(0)
    a, b, h0 = torch.rand(1000, 3, 4), torch.randn(1000, 3, 4), torch.randn(3, 4)
    expected, h = [], h0
    for t in range(1000):
        h = a[t] * h + b[t]
        expected.append(h)
    torch.testing.assert_close(scan_states(a.clone(), b.clone(), h0), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_reference_is_the_published_recurrence():
    u, delta = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.5, 0.25]]])
    a, b, c, d = torch.tensor([[-1.0]]), torch.tensor([[[2.0, 1.0]]]), torch.tensor([[[3.0, -1.0]]]), torch.tensor([0.5])
    h1 = 0.5 * 2.0 * 1.0
    h2 = torch.exp(torch.tensor(-0.25)) * h1 + 0.25 * 1.0 * 2.0
    expected = torch.tensor([[[3.0 * h1 + 0.5, -h2 + 1.0]]])
    torch.testing.assert_close(selective_scan_reference(u, delta, a, b, c, d), expected)


def test_bad_shapes_and_backend_are_refused():
    with pytest.raises(ValueError, match="backend"):
        selective_scan(*_inputs()[:5], backend="gpu")
    with pytest.raises(ValueError, match=r"u, delta \(B, D, L\)"):
        selective_scan(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(2, 4, 3),
                       torch.zeros(2, 4, 3))


def test_causal_conv1d_reference_is_causal_and_matches_the_formula():
    torch.manual_seed(0)
    x, w, bias = torch.randn(2, 3, 10), torch.randn(3, 4), torch.randn(3)
    y = causal_conv1d_reference(x, w, bias, None)
    xp = F.pad(x, (3, 0))
    expected = sum(w[None, :, j, None] * xp[:, :, j:j + 10] for j in range(4)) + bias[None, :, None]
    torch.testing.assert_close(y, expected)
    x2 = x.clone()
    x2[..., 6:] += 5  # the future never changes the past
    torch.testing.assert_close(causal_conv1d_reference(x2, w, bias)[..., :6], causal_conv1d(x, w, bias)[..., :6])


def test_triton_kernels_match_the_reference_under_interpreter():
    out = run_interpreted("""
        import json, torch
        from medpipe.kernels.selective_scan import selective_scan
        from medpipe.kernels.causal_conv1d import causal_conv1d
        torch.manual_seed(0)
        res = []
        for (b, d, n, L) in [(2, 5, 4, 37), (1, 3, 3, 70)]:  # odd widths and lengths, several chunks
            xs = [torch.randn(b, d, L), torch.randn(b, d, L) * 0.5, -torch.rand(d, n) * 2, torch.randn(b, n, L),
                  torch.randn(b, n, L), torch.randn(d), torch.randn(b, d, L), torch.randn(d)]
            for x in xs:
                x.requires_grad_()
            outs = {}
            for be in ("reference", "triton"):
                for x in xs:
                    x.grad = None
                o, last = selective_scan(*xs[:7], delta_bias=xs[7], delta_softplus=True, return_last_state=True,
                                         backend=be)
                (o.sin().sum() + last.sum()).backward()
                outs[be] = [o.detach(), last.detach()] + [x.grad.clone() for x in xs]
            res.append(max(float((a - r).abs().max() / r.abs().max()) for a, r in zip(outs["triton"], outs["reference"])))
        x, w, bb = torch.randn(2, 6, 45, requires_grad=True), torch.randn(6, 1, 4, requires_grad=True), torch.randn(6)
        y1 = causal_conv1d(x, w, bb, "silu", backend="triton")
        g1 = torch.autograd.grad(y1.square().sum(), [x, w])
        y2 = causal_conv1d(x, w, bb, "silu", backend="reference")
        g2 = torch.autograd.grad(y2.square().sum(), [x, w])
        conv = max(float((y1 - y2).abs().max()), *[float((a - c).abs().max()) for a, c in zip(g1, g2)])
        print(json.dumps({"scan": res, "conv": conv}))
    """)
    assert len(out["scan"]) == 2 and max(out["scan"]) < 2e-5
    assert out["conv"] < 1e-4


@pytest.mark.parametrize("length", [30, 1000])
def test_functional_scan_used_when_tracing_equals_the_in_place_one(length):
    torch.manual_seed(0)
    a, b, h0 = torch.rand(length, 2, 3), torch.randn(length, 2, 3), torch.randn(2, 3)
    expected = scan_states(a.clone(), b.clone(), h0)
    torch.testing.assert_close(ss._scan_states_functional(a, b, h0, False), expected, atol=1e-5, rtol=1e-5)


def test_reverse_scan():
    torch.manual_seed(0)
    a, b, h0 = torch.rand(300, 4), torch.randn(300, 4), torch.randn(4)
    flipped = scan_states(a.flip(0).clone(), b.flip(0).clone(), h0).flip(0)
    torch.testing.assert_close(scan_states(a.clone(), b.clone(), h0, reverse=True), flipped, atol=1e-5, rtol=1e-5)
