"""Measured ``auto``: the decision on injected timings, the cache key, the accuracy gate.

No timing is asserted: the tests inject measurements, or make one path disagree with the
reference so the gate must refuse it whatever its speed.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from medpipe.inference import autotune as at
from medpipe.inference.autotune import Candidate, Measurement

OV32, T32, OVBF, TBF, I8 = (Candidate("fp32", "openvino"), Candidate("fp32", "torch"), Candidate("bf16", "openvino"),
                            Candidate("bf16", "torch"), Candidate("int8", "openvino"))


def test_fastest_path_that_passes_the_gate_wins():
    ms = [Measurement(OV32, 1.0), Measurement(T32, 4.0), Measurement(OVBF, 0.6, 0.999, 0.99),
          Measurement(I8, 0.3, 0.97, 0.80), Measurement(TBF, None, error="RuntimeError: no bf16")]
    choice, why = at.choose(ms)
    assert choice == OVBF
    assert "openvino int8" in why and "refused" in why  # faster, but the gate said no
    assert at.choose([Measurement(T32, 2.0), Measurement(TBF, 1.0, 0.9, 0.5)])[0] == T32
    assert at.choose([Measurement(T32, None, error="x")])[0] == T32  # nothing measured: fp32


def test_candidates_follow_the_hardware():
    no_bf16 = at.candidates("cpu", openvino=True, flags=frozenset({"avx2"}))
    assert OV32 in no_bf16 and T32 in no_bf16 and OVBF not in no_bf16 and I8 not in no_bf16
    zen4 = at.candidates("cpu", openvino=True, int8_available=True, flags=frozenset({"avx512_bf16", "avx512_vnni"}))
    assert {OV32, T32, OVBF, TBF, I8} == set(zen4) and zen4[0] == OV32
    assert at.candidates("cpu", openvino=False, flags=frozenset({"avx512_bf16"})) == [T32, TBF]


def test_the_key_changes_with_the_cpu_threads_weights_and_shape():
    machine = {"cpu": "AMD EPYC", "flags": ["avx512_bf16"], "threads": 2, "torch": "2.14.1"}
    base = at.decision_key("w1", (1, 1, 48, 48, 48), machine)
    assert at.decision_key("w1", (1, 1, 48, 48, 48), dict(machine)) == base
    assert at.decision_key("w2", (1, 1, 48, 48, 48), machine) != base  # retrained bundle
    assert at.decision_key("w1", (1, 1, 64, 48, 48), machine) != base  # another patch
    assert at.decision_key("w1", (1, 1, 48, 48, 48), {**machine, "cpu": "Intel Xeon"}) != base
    assert at.decision_key("w1", (1, 1, 48, 48, 48), {**machine, "threads": 4}) != base


def _runner(logits_fn):
    def make():
        return lambda x: logits_fn(x)
    return make


def test_a_path_that_disagrees_is_refused_and_the_decision_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPIPE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    tiles = torch.randn(2, 1, 8, 8, 8)
    good = lambda x: torch.cat([x, -x], dim=1)  # noqa: E731  label 0 where x > 0
    wrong = lambda x: torch.cat([-x, x], dim=1)  # noqa: E731  every label flipped
    calls = []

    def counted(fn):
        def make():
            calls.append(fn)
            return fn
        return make

    runners = {OV32: counted(good), T32: counted(good), I8: counted(wrong)}
    first = at.tune(runners, tiles, 2, weights_key="w", device="cpu")
    assert not first.cached and first.choice in (OV32, T32)
    by = {m.candidate: m for m in first.measurements}
    assert by[I8].agreement < 0.5 and not by[I8].passes()
    cache = next((tmp_path / "autotune").glob("*.json"))
    rec = json.loads(cache.read_text())
    assert rec["choice"] == {"precision": first.choice.precision, "backend": first.choice.backend}
    n = len(calls)
    again = at.tune(runners, tiles, 2, weights_key="w", device="cpu")
    assert again.cached and again.choice == first.choice and len(calls) == n  # nothing re-measured
    other = at.tune(runners, tiles, 2, weights_key="retrained", device="cpu")
    assert not other.cached  # another set of weights decides again


def test_predict_records_the_measured_choice(tmp_path, monkeypatch):
    from medpipe.inference import predict
    from medpipe.models import create_model

    monkeypatch.setenv("MEDPIPE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = create_model("stunet_xs", in_channels=1, num_classes=3,
                       pool_op_kernel_sizes=[[2, 2, 2]] * 3 + [[1, 1, 1]] * 2)
    vol = np.random.default_rng(0).normal(size=(1, 40, 40, 40)).astype(np.float32)
    res = predict(net, vol, (32, 32, 32), num_classes=3, progress=False)
    tuned = res.facts["autotune"]
    assert tuned["choice"] == f"{res.facts['backend']} {res.facts['precision']}"
    assert {c["candidate"] for c in tuned["candidates"]} >= {"torch fp32"}
    forced = predict(net, vol, (32, 32, 32), num_classes=3, progress=False, precision="fp32", backend="torch")
    assert "autotune" not in forced.facts and forced.facts["backend"] == "torch"
    agree = np.mean(forced.labels == res.labels)
    assert agree >= at.MIN_AGREEMENT - 0.01  # the chosen path passed the gate on its tiles


def test_autotune_off_keeps_the_flag_policy(tmp_path, monkeypatch):
    from medpipe.inference import predict
    from medpipe.models import create_model

    monkeypatch.setenv("MEDPIPE_CACHE", str(tmp_path))
    net = create_model("stunet_xs", in_channels=1, num_classes=3,
                       pool_op_kernel_sizes=[[2, 2, 2]] * 3 + [[1, 1, 1]] * 2)
    vol = np.zeros((1, 32, 32, 32), np.float32)
    res = predict(net, vol, (32, 32, 32), num_classes=3, progress=False, autotune=False)
    assert "autotune" not in res.facts and not list(tmp_path.glob("autotune/*.json"))
