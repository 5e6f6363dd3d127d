"""Precision policy: which dtype and memory format the network runs in.

``auto`` picks the fastest exact-enough path for the hardware *as measured*, not as
advertised. On CUDA that is bf16 (fp16 where bf16 is unsupported) autocast with
channels-last. On CPUs with AMX-BF16 tiles oneDNN's bf16 convolutions are several times
faster than fp32, so bf16 + channels-last is chosen there. On CPUs that only have
AVX512-BF16 (``vdpbf16ps``, no AMX — e.g. this project's benchmark machine, where the
hypervisor hides AMX) we measured oneDNN's bf16 3D convolutions to be *slower* than fp32
and a whole STU-Net-S patch no faster than fp32 with the ``optimize`` rewrites
(docs/inference.md, benchmarks/RESULTS.md), so ``auto`` runs fp32 there; channels-last
was faster in one run and slower in another on this shared machine, so it keeps the
contiguous layout. bf16 stays available on request. Logits are always accumulated in fp32 (or fp16 when the
caller asks, to halve the stitching buffer).

Backend (``resolve_backend``): on CPU in fp32 the network runs through OpenVINO when it is
installed — measured 3.5x faster than PyTorch eager fp32 per STU-Net-S patch on the
benchmark machine, at argmax agreement 0.99995 — else through PyTorch. OpenVINO's bf16
mode was slower and less accurate there, so reduced precision stays on PyTorch.

int8: a bundle can carry an int8 OpenVINO model made by ``medpipe models quantize``
(``inference.quantize``), which is accepted only when it agreed with the fp32 network on
>= 99.5 % of voxels. ``auto`` runs it on CPUs with int8 dot-product units (VNNI or
AMX-INT8): ~2.3x faster than OpenVINO fp32 per STU-Net-S patch on the benchmark machine
(benchmarks/RESULTS.md, "Sliding-window inference").
int8 always runs through OpenVINO.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from medpipe.errors import InputError, ResourceError

__all__ = ["PrecisionPlan", "resolve_precision", "resolve_backend", "cpu_flags", "cpu_has_int8_dot", "PRECISIONS", "BACKENDS", "MANY_CLASSES"]

PRECISIONS = ("auto", "bf16", "fp32", "fp16", "int8")
BACKENDS = ("auto", "torch", "openvino")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "int8": None}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_has_amx() -> bool:
    return "amx_bf16" in cpu_flags() or torch.backends.cpu.get_cpu_capability() == "AVX512_AMX"


def _cpu_has_avx512_bf16() -> bool:
    return "avx512_bf16" in cpu_flags()


def cpu_has_int8_dot() -> bool:
    """VNNI (AVX512 or AVX) or AMX-INT8: the instructions that make int8 convolutions pay."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


@dataclass(frozen=True)
class PrecisionPlan:
    """The resolved policy, plus the reason (it goes into the run's facts)."""

    name: str  # "bf16" | "fp16" | "fp32" | "int8" (int8: a quantised OpenVINO model)
    device_type: str
    channels_last: bool
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for the forward pass (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.channels_last:  # 2D networks (spatial_dims 2) get the 2D channels-last layout
            two_d = int(getattr(model, "spatial_dims", 3)) == 2
            model = model.to(memory_format=torch.channels_last if two_d else torch.channels_last_3d)
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() in (4, 5):
            return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
        return x


def resolve_precision(precision: str, device: str | torch.device = "cpu", *,
                      int8_available: bool = False) -> PrecisionPlan:
    """Turn ``auto|bf16|fp32|fp16|int8`` into a concrete plan for ``device``.

    ``int8_available``: the caller holds a validated int8 model (a quantised bundle) that
    ``auto`` may pick; ``int8`` itself needs one (checked by the caller, who knows where
    it would come from)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device).type
    if precision == "int8":
        if dev != "cpu":
            raise InputError(f"precision 'int8' runs on the CPU through OpenVINO, not on {dev}")
        return PrecisionPlan("int8", dev, False, "requested int8 (quantised OpenVINO model)")
    if dev == "cuda":
        if precision == "auto":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            return PrecisionPlan(name, dev, True, f"auto: CUDA device, {name} autocast + channels-last")
        return PrecisionPlan(precision, dev, precision != "fp32", f"requested {precision}")
    if precision == "auto":
        if int8_available and cpu_has_int8_dot():
            from medpipe.inference.openvino_backend import openvino_available

            if openvino_available():
                return PrecisionPlan("int8", dev, False, "auto: validated int8 model and a CPU with int8 dot "
                                                         "products (VNNI/AMX), run by OpenVINO")
        if _cpu_has_amx():
            return PrecisionPlan("bf16", dev, True, "auto: CPU has AMX-BF16, bf16 autocast + channels-last")
        why = ("CPU has AVX512-BF16 but no AMX; bf16 3D convs measured slower than fp32 there"
               if _cpu_has_avx512_bf16() else "CPU has no bf16 units")
        return PrecisionPlan("fp32", dev, False, f"auto: fp32 ({why})")
    if precision == "bf16":
        return PrecisionPlan("bf16", dev, True, "requested bf16 (autocast + channels-last)")
    if precision == "fp16":
        return PrecisionPlan("fp16", dev, True, "requested fp16 (autocast + channels-last)")
    return PrecisionPlan("fp32", dev, False, "requested fp32")


# With this many channels stitched per voxel (the logits of a many-class model without a
# linear head, labels output) stitching, not the network, dominates a volume and OpenVINO's
# activation arena costs memory for no speed: measured with a 105-class STU-Net-XS on 256^3
# stitching logits: torch 2.56 GiB in 102 s vs OpenVINO 3.37 GiB in 104 s (MONAI fp32:
# 8.80 GiB, 152 s). Models with a linear head stitch their few features instead
# (``feature_stitching``), so the network dominates again and OpenVINO is chosen.
MANY_CLASSES = 32


def resolve_backend(backend: str, plan: PrecisionPlan, stitched_channels: int = 0) -> tuple[str, str]:
    """``auto|torch|openvino`` → (``"torch"``/``"openvino"``, reason). ``auto`` is OpenVINO
    when it is importable, the device is the CPU, the precision resolved to fp32 and fewer
    than ``MANY_CLASSES`` channels are stitched per voxel (the classes, or the features in
    front of a linear head; pass 0 when the output is not labels only)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from medpipe.inference.openvino_backend import openvino_available

    if plan.name == "int8":
        if backend == "torch":
            raise InputError("precision 'int8' runs a quantised OpenVINO model; backend='torch' cannot run it "
                             "(use backend 'auto' or 'openvino', or precision 'fp32')")
        if not openvino_available():
            raise ResourceError("precision 'int8' needs the 'openvino' package, which is not installed: "
                                "pip install openvino")
        return "openvino", f"{'requested' if backend == 'openvino' else 'auto'}: int8 runs on OpenVINO"
    if backend == "torch":
        return "torch", "requested torch"

    if backend == "openvino":
        if plan.device_type != "cpu" or plan.name not in ("fp32", "bf16"):
            raise InputError(f"backend='openvino' runs fp32 or bf16 on the CPU; got precision {plan.name} on "
                             f"{plan.device_type} (use backend='torch' or 'auto')")
        if not openvino_available():
            raise ResourceError("backend='openvino' needs the 'openvino' package, which is not installed: "
                                "pip install openvino")
        return "openvino", "requested openvino"
    if plan.device_type != "cpu":
        return "torch", f"auto: {plan.device_type} device"
    if plan.name != "fp32":
        return "torch", f"auto: precision {plan.name} runs on PyTorch"
    if stitched_channels >= MANY_CLASSES:
        return "torch", (f"auto: {stitched_channels} logits stitched per voxel - stitching dominates; PyTorch "
                         "keeps peak memory lower at the same speed")
    if not openvino_available():
        return "torch", "auto: openvino is not installed (pip install openvino for ~3x faster CPU inference)"
    return "openvino", "auto: CPU fp32 with openvino installed"
