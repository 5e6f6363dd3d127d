"""``auto`` precision and backend, decided by measuring on this machine, not by a flag table.

A table written on one CPU is wrong on the next: on the Intel Xeon this project started on
(AVX512-BF16, no AMX) bf16 convolutions ran slower than fp32; on the AMD EPYC Zen 4 it runs
on now (the same flags) MONAI's bf16 + channels-last was 1.65x faster than its fp32. So the
first time a network runs with a given (weights, patch, batch, device) on a given machine,
``tune`` times a few tiles of the prediction through every eligible path — PyTorch fp32 and
bf16 + channels-last, OpenVINO fp32 and bf16, the bundle's int8 model; CUDA autocast paths
on a GPU — and keeps the fastest one whose labels pass the same accuracy gate the int8
models pass at quantisation (label agreement and worst-structure Dice against fp32 on
those tiles). The decision is cached under ``$MEDPIPE_CACHE/autotune``, keyed by the
weights, the shapes, the CPU model, its flags, the thread count and the library versions,
so another CPU or a retrained bundle decides again; ``precision=``/``backend=`` still
force a path. The choice and every measurement go into the run's facts.

The decision (``choose``) is a pure function of the measurements, tested on injected
timings; only ``measure`` touches the hardware.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Candidate", "Measurement", "TuneResult", "candidates", "choose", "tune", "machine_description",
           "decision_key", "MIN_AGREEMENT", "MIN_CLASS_DICE"]

MIN_AGREEMENT = 0.995  # the int8 gate's defaults (medpipe models quantize)
MIN_CLASS_DICE = 0.95
_SLOWER_THAN_BEST = 2.5  # a candidate whose first pass is this much slower than the best is not timed again


@dataclass(frozen=True)
class Candidate:
    precision: str  # fp32 | bf16 | fp16 | int8
    backend: str  # torch | openvino

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


@dataclass
class Measurement:
    candidate: Candidate
    seconds_per_tile: float | None  # None: could not run
    agreement: float = 1.0  # worst tile: voxels whose label equals the reference's
    worst_class_dice: float = 1.0
    error: str | None = None

    def passes(self, min_agreement: float = MIN_AGREEMENT, min_class_dice: float = MIN_CLASS_DICE) -> bool:
        return (self.error is None and self.seconds_per_tile is not None and self.agreement >= min_agreement
                and self.worst_class_dice >= min_class_dice)

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.name, "seconds_per_tile": self.seconds_per_tile,
                "agreement": round(self.agreement, 6), "worst_class_dice": round(self.worst_class_dice, 6),
                **({"error": self.error} if self.error else {})}


@dataclass
class TuneResult:
    choice: Candidate
    measurements: list[Measurement]
    key: str
    cached: bool
    seconds: float
    reason: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        return {"choice": self.choice.name, "reason": self.reason, "cached": self.cached, "key": self.key,
                "tuning_seconds": round(self.seconds, 3), "candidates": [m.as_dict() for m in self.measurements]}


# -- the machine and the key ------------------------------------------------------------------
def machine_description(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What decides which path is fastest: CPU model and relevant flags, threads, GPU, versions."""
    from medpipe.inference.openvino_backend import openvino_available
    from medpipe.inference.precision import cpu_flags

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    relevant = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx_vnni", "avx2", "fma")))
    desc: dict[str, Any] = {"cpu": model or platform.machine(), "flags": relevant, "threads": torch.get_num_threads(),
                            "cores": os.cpu_count(), "torch": torch.__version__}
    if openvino_available():
        import openvino

        desc["openvino"] = openvino.__version__
    dev = torch.device(device)
    if dev.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(dev)
    return desc


def decision_key(weights_key: str, input_shape: Sequence[int], machine: dict[str, Any],
                 int8_model: str | Path | None = None) -> str:
    """Another CPU, thread count, library version, patch, batch or set of weights decides again."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"weights": weights_key, "shape": [int(s) for s in input_shape], "machine": machine,
                         "int8": _file_stamp(int8_model)}, sort_keys=True).encode())
    return h.hexdigest()


def _file_stamp(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _cache_file(key: str) -> Path:
    from medpipe.user_cache import user_cache

    return user_cache("autotune", f"{key}.json")


# -- what may run ---------------------------------------------------------------------------------
def candidates(device: str | torch.device = "cpu", *, int8_available: bool = False, openvino: bool | None = None,
               flags: frozenset[str] | None = None) -> list[Candidate]:
    """Every path worth timing on ``device`` (the reference, fp32, first)."""
    from medpipe.inference.openvino_backend import openvino_available
    from medpipe.inference.precision import cpu_flags

    dev = torch.device(device).type
    if dev == "cuda":
        out = [Candidate("fp32", "torch"), Candidate("fp16", "torch")]
        if torch.cuda.is_bf16_supported():
            out.append(Candidate("bf16", "torch"))
        return out
    flags = cpu_flags() if flags is None else flags
    ov = openvino_available() if openvino is None else openvino
    bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    out = [Candidate("fp32", "openvino")] if ov else []
    out.append(Candidate("fp32", "torch"))
    if bf16:
        if ov:
            out.append(Candidate("bf16", "openvino"))
        out.append(Candidate("bf16", "torch"))
    if ov and int8_available:
        out.append(Candidate("int8", "openvino"))
    return out


def choose(measurements: Sequence[Measurement], *, min_agreement: float = MIN_AGREEMENT,
           min_class_dice: float = MIN_CLASS_DICE) -> tuple[Candidate, str]:
    """The fastest candidate that passes the accuracy gate, and why (fp32 when nothing else does)."""
    ok = [m for m in measurements if m.passes(min_agreement, min_class_dice)]
    if not ok:
        fallback = next((m.candidate for m in measurements if m.candidate.precision == "fp32" and m.error is None),
                        Candidate("fp32", "torch"))
        return fallback, "no candidate could be measured; fp32"
    best = min(ok, key=lambda m: m.seconds_per_tile)
    refused = [m.candidate.name for m in measurements if m.seconds_per_tile is not None
               and m.seconds_per_tile < best.seconds_per_tile and not m.passes(min_agreement, min_class_dice)]
    why = f"fastest that passes the accuracy gate: {best.seconds_per_tile:.3f} s/tile"
    if refused:
        why += f" (faster but refused by the gate: {', '.join(refused)})"
    return best.candidate, why


# -- measuring ---------------------------------------------------------------------------------------
Runner = Callable[[torch.Tensor], torch.Tensor]


def _labels(logits: torch.Tensor) -> np.ndarray:
    return logits.float().argmax(1).cpu().numpy().astype(np.int16)


def measure(runners: dict[Candidate, Callable[[], Runner]], tiles: torch.Tensor, num_classes: int,
            reference: Candidate) -> list[Measurement]:
    """Time every candidate on ``tiles`` (``(n, C, *patch)``, one pass each after a warm-up,
    the fastest counts) and score its labels against ``reference``'s."""
    from medpipe.inference.quantize import worst_structure_dice

    ref_labels: list[np.ndarray] | None = None
    out: list[Measurement] = []
    best = float("inf")
    order = [reference] + [c for c in runners if c != reference]
    for cand in order:
        try:
            run = runners[cand]()
            times, labels = [], []
            for i in range(tiles.shape[0]):
                x = tiles[i:i + 1]
                t0 = time.perf_counter()
                y = run(x)
                y = y[0] if isinstance(y, (list, tuple)) else y
                labels.append(_labels(y))
                times.append(time.perf_counter() - t0)
                if i == 0 and times[0] > _SLOWER_THAN_BEST * best and cand != reference:
                    break  # clearly not the winner: do not spend more on it
            if tiles.shape[0] > 1 and len(times) > 1:
                times = times[1:]  # the first pass pays one-time set-up (oneDNN primitives, OpenVINO warm-up)
            seconds = min(times)
        except Exception as exc:  # noqa: BLE001 - a path that cannot run here is simply not chosen
            out.append(Measurement(cand, None, 0.0, 0.0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            continue
        if cand == reference:
            ref_labels = labels
        assert ref_labels is not None
        pairs = list(zip(ref_labels, labels, strict=False))
        agreement = min(float((r == g).mean()) for r, g in pairs)
        out.append(Measurement(cand, round(seconds, 4), agreement, worst_structure_dice(pairs, num_classes)))
        best = min(best, seconds)
    return out


def tune(runners: dict[Candidate, Callable[[], Runner]], tiles: torch.Tensor, num_classes: int, *,
         weights_key: str, device: str | torch.device = "cpu", int8_model: str | Path | None = None,
         use_cache: bool = True) -> TuneResult:
    """The cached decision for this (weights, tile shape, machine), else measure and cache it.

    ``runners`` maps each candidate to a factory of the callable that runs one batch of tiles
    (built lazily: a conversion is only paid for the candidates actually measured)."""
    t0 = time.perf_counter()
    machine = machine_description(device)
    key = decision_key(weights_key, tuple(tiles.shape[1:]), machine, int8_model)
    cache = _cache_file(key)
    if use_cache and cache.is_file():
        try:
            rec = json.loads(cache.read_text())
            choice = Candidate(**rec["choice"])
            if choice in runners:
                ms = [Measurement(Candidate(**m["candidate"]), m["seconds_per_tile"], m["agreement"],
                                  m["worst_class_dice"], m.get("error")) for m in rec["measurements"]]
                return TuneResult(choice, ms, key, True, time.perf_counter() - t0, rec.get("reason", ""), machine)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or stale: measure again
    reference = next(c for c in runners if c.precision == "fp32")
    ms = measure(runners, tiles, num_classes, reference)
    choice, why = choose(ms)
    result = TuneResult(choice, ms, key, False, time.perf_counter() - t0, why, machine)
    if use_cache:
        from medpipe.io.atomic import atomic_path

        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                tmp.write_text(json.dumps({"choice": asdict(choice), "reason": why, "machine": machine,
                                           "measurements": [{**asdict(m), "candidate": asdict(m.candidate)}
                                                            for m in ms]}, indent=2))
        except OSError:
            pass  # an unwritable cache only costs the next run the measurement again
    return result
