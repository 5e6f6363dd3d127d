"""Sliding-window inference with streamed (slab-by-slab) Gaussian stitching.

Why our own engine instead of MONAI's ``sliding_window_inference``: MONAI allocates a
float buffer of ``classes x voxels`` (plus a count map) for the whole volume, which for a
105-class model on a 512x512x400 CT is tens of gigabytes — the most common complaint
about large scans. Here tiles are processed in order of their position along the last
axis; logits are accumulated in a *ring* buffer only one patch deep along that axis,
and as soon as a range of slices can no longer be touched by a later tile it is
finalised (argmax → uint8 labels, or softmax → fp16 probabilities) and its slots are
reused. The stitching memory is ``classes x I x J x patch_k`` instead of
``classes x I x J x K``. When the network ends in a linear 1x1 head with fewer inputs
than classes (STU-Net: 8-96 features, 105 classes), the ring holds the *features* and the
head runs per finalised slab (``feature_stitching``: exact, the mean is linear). Tiles,
Gaussian weights and TTA follow nnU-Net (see ``tiling``/``gaussian``); precision follows
``precision.resolve_precision``.

Example:
    >>> result = predict(net, volume, (96, 96, 96), num_classes=105)
    >>> result.labels.shape == volume.shape[1:], result.facts["precision"]
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from medpipe.errors import InputError, ResourceError
from medpipe.inference.feature_stitching import FeatureExtractor, LinearHead, linear_head_of
from medpipe.inference.gaussian import gaussian_importance_map
from medpipe.inference.optimize import optimize_for_inference
from medpipe.inference.precision import MANY_CLASSES, PrecisionPlan, resolve_backend, resolve_precision
from medpipe.inference.slicewise import SliceWise, check_min_size, is_2d, slab_patch
from medpipe.inference.tiling import TilePlan, pad_amounts, plan_tiles
from medpipe.kernels import accumulate_patch

__all__ = ["Prediction", "predict", "tune_paths", "build_network", "mirror_combinations", "memory_plan", "resolve_accumulation",
           "DEFAULT_BATCH_SIZE", "FP16_ACCUMULATION_MIN_CLASSES", "STITCH_MODES"]

Output = Literal["labels", "probabilities", "both"]
STITCH_MODES = ("auto", "logits", "features")

# Patches per forward pass. Measured by benchmarks/sliding_window.py on the 2-core
# AVX512-BF16 machine: batching 2 patches did not beat 1 patch per pass reliably for
# STU-Net-S, and it doubles activation memory, so one patch at a time (as nnU-Net does).
DEFAULT_BATCH_SIZE = 1
_FINALISE_CHUNK = 4  # slices finalised at a time (bounds the softmax/argmax temporaries)
# accumulation="auto": from this many classes on, with labels-only output, the ring buffer
# is kept in fp16 (a running weighted mean; argmax agrees with fp32, tested) — it is then
# the largest allocation by far (105 classes, 256^3: 2.5 GiB fp32 vs 1.2 GiB fp16).
FP16_ACCUMULATION_MIN_CLASSES = MANY_CLASSES


@dataclass
class Prediction:
    """What ``predict`` returns: labels ``(I, J, K)``, optional fp16 probabilities
    ``(classes, I, J, K)``, and facts (precision, tiles, memory bound, timing)."""

    labels: np.ndarray | None
    probabilities: np.ndarray | None
    facts: dict[str, Any] = field(default_factory=dict)


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes, the identity first (nnU-Net: 8 passes for 3 axes)."""
    axes = tuple(sorted(set(int(a) for a in axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int16)


def memory_plan(shape: Sequence[int], patch: Sequence[int], *, num_classes: int, in_channels: int = 1,
                batch_size: int = 1, output: Output = "labels", accumulation: str = "fp32",
                stream: bool = True, tta_passes: int = 1, probability_bytes: int = 2,
                stitch_channels: int | None = None) -> dict[str, int]:
    """Theoretical peak of what the engine allocates (bytes), excluding the network's own
    activations and weights: input, stitching buffers, outputs, batch and temporaries.
    ``stitch_channels``: the feature channels stitched in front of a linear head (``None``:
    logits are stitched)."""
    n_vox = math.prod(shape)
    i, j, k = shape
    depth = min(patch[-1], k) if stream else k
    acc_bytes = 2 if accumulation == "fp16" else 4
    p_vox = math.prod(patch)
    channels = stitch_channels or num_classes
    slab = i * j * min(_FINALISE_CHUNK, depth)
    if output != "labels":
        temporaries = 2 * num_classes * slab * 4
    elif stitch_channels:  # mean features + labels + the head's bounded (voxels x classes) blocks
        temporaries = slab * (channels * 4 + 8) + 32 * 2**20
    else:
        temporaries = slab * 8
    parts = {
        "input": in_channels * n_vox * 4,
        "logit_buffer": channels * i * j * depth * acc_bytes,
        "weight_buffer": i * j * depth * 4,
        "labels": n_vox * _label_dtype(num_classes).itemsize if output in ("labels", "both") else 0,
        "probabilities": num_classes * n_vox * probability_bytes if output in ("probabilities", "both") else 0,
        "batch": batch_size * p_vox * (in_channels * 4 * 2 + channels * 4 * (2 if tta_passes > 1 else 1)),
        "finalise_temporaries": temporaries,
    }
    parts["total"] = sum(parts.values())
    parts["dense_logit_buffer"] = num_classes * n_vox * 4  # what a whole-volume float buffer takes
    return parts


def resolve_accumulation(accumulation: str, num_classes: int, output: str) -> str:
    """``auto`` → ``fp16`` for labels-only output with many stitched channels (``num_classes``:
    the logits, or the features in front of a linear head), else ``fp32``."""
    if accumulation not in ("auto", "fp32", "fp16"):
        raise InputError(f"accumulation must be 'auto', 'fp32' or 'fp16', got {accumulation!r}")
    if accumulation != "auto":
        return accumulation
    return "fp16" if output == "labels" and num_classes >= FP16_ACCUMULATION_MIN_CLASSES else "fp32"


def _check_memory(parts: dict[str, int], budget_gb: float | None, what: str) -> None:
    avail = psutil.virtual_memory().available if budget_gb is None else int(budget_gb * 2**30)
    need = parts["total"]
    if need > avail:
        gib = 2**30
        hint = []
        if parts["probabilities"]:
            hint.append("output=labels (no probability maps)")
        if parts["logit_buffer"] > parts["batch"]:
            hint.append("fp16 accumulation (--accumulation fp16)")
        hint.append("a smaller --patch or batch size")
        raise ResourceError(
            f"{what} needs about {need / gib:.1f} GiB for stitching and outputs but only "
            f"{avail / gib:.1f} GiB {'are available' if budget_gb is None else 'fit the memory budget'}; "
            f"try {' or '.join(hint)}")


def _as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(image)
    if t.dim() != 4:
        raise InputError(f"predict needs a channel-first (C, I, J, K) volume, got shape {tuple(t.shape)}")
    return t.float()


def _forward_batches(model: Callable[[torch.Tensor], Any], items: Iterable[tuple[Any, torch.Tensor]],
                     plan: PrecisionPlan, flips: list[tuple[int, ...]]) -> Iterator[tuple[Any, torch.Tensor]]:
    """``(tag, logits)`` per input batch, in input order: the mean over mirror combinations,
    fp32, ``(B, K, *patch)``. A network with ``imap`` (OpenVINO) keeps several passes in
    flight, so the next patch is computed while this one is stitched. A yielded tensor may
    be the backend's own output buffer: it is valid until the next item is requested."""

    def passes() -> Iterator[tuple[tuple[Any, int, list[int]], torch.Tensor]]:
        for tag, x in items:
            for i, axes in enumerate(flips):
                dims = [2 + a for a in axes]
                yield (tag, i, dims), plan.prepare_input(torch.flip(x, dims) if dims else x)

    def call(jobs: Iterable[tuple[Any, torch.Tensor]]) -> Iterator[tuple[Any, Any]]:
        for key, x in jobs:
            with plan.autocast():
                yield key, model(x)

    run = getattr(model, "imap", None) or call
    total: torch.Tensor | None = None
    for (tag, i, dims), y in run(passes()):
        if isinstance(y, (list, tuple)):  # deep supervision: full resolution first
            y = y[0]
        y = y.float()
        if dims:
            y = torch.flip(y, dims)  # a copy: safe from buffer reuse
        if i == 0:  # a backend that reuses its output buffer would overwrite it next pass
            total = y.clone() if len(flips) > 1 and not dims and getattr(model, "reuses_output", False) else y
        else:
            assert total is not None
            total.add_(y)
        if i == len(flips) - 1:
            assert total is not None
            if len(flips) > 1:
                total /= len(flips)
            yield tag, total.contiguous()
            total = None


def openvino_streams(passes: int, threads: int | None = None) -> int:
    """Parallel OpenVINO requests for a prediction of ``passes`` forward passes: 2 (throughput
    mode, one thread each) when there are 2+ threads and enough passes to keep both busy —
    in ad-hoc runs as fast on average as one 2-thread request and steadier (docs/inference.md);
    the stitching of one patch overlaps the next one's compute either way — else 1 (latency
    mode). More streams
    were not measured (they also multiply OpenVINO's activation memory)."""
    threads = int(threads or torch.get_num_threads())
    return 2 if threads >= 2 and passes >= 4 else 1


def _stitch_head(stitch: str, model: torch.nn.Module, num_classes: int, plan: PrecisionPlan) -> LinearHead | None:
    """The linear head to stitch features in front of, or None to stitch logits. ``auto``:
    when the model has one with fewer inputs than classes and the whole network runs in
    PyTorch or OpenVINO fp32 (a quantised int8 model is one opaque graph)."""
    if stitch not in STITCH_MODES:
        raise InputError(f"stitch must be one of {', '.join(STITCH_MODES)}, got {stitch!r}")
    if stitch == "logits":
        return None
    head = linear_head_of(model) if plan.name != "int8" else None
    if head is None:
        if stitch == "features":
            raise InputError(f"stitch='features' needs a network with forward_features() and a 1x1 'head' "
                             f"(run in fp32/bf16, not int8); {type(model).__name__} with precision {plan.name} "
                             "has none: use stitch='logits'")
        return None
    if head.num_classes != num_classes:
        raise InputError(f"the network's head has {head.num_classes} outputs, expected {num_classes} classes")
    return head if stitch == "features" or head.in_channels < num_classes else None


def _ring_pieces(z: int, length: int, depth: int) -> Iterator[tuple[int, int, int]]:
    """Split the absolute range [z, z+length) into (ring_start, source_start, size) pieces."""
    done = 0
    while done < length:
        r = (z + done) % depth
        size = min(length - done, depth - r)
        yield r, done, size
        done += size


class _Stitcher:
    """Ring buffer of accumulated logits (or features, with ``head``) along the last axis;
    finalises completed slices."""

    def __init__(self, plan: TilePlan, num_classes: int, depth: int, acc_dtype: torch.dtype,
                 device: torch.device, output: Output, gaussian: torch.Tensor, prob_dtype: type = np.float16,
                 head: LinearHead | None = None, sink: Any = None,
                 pads: Sequence[tuple[int, int]] = ((0, 0), (0, 0), (0, 0))):
        i, j, k = plan.shape
        self.depth = depth
        self.gaussian = gaussian
        self.output = output
        self.head = head
        self.sink = sink  # receives the stitched mean of each finalised slab (unpadded) instead
        self.pads = [tuple(p) for p in pads]
        if sink is not None:
            output = "probabilities"  # neither labels nor probabilities are kept here
        self.running_mean = acc_dtype == torch.float16  # fp16 sums would underflow at patch corners
        channels = head.in_channels if head is not None else num_classes
        self.logits = torch.zeros((channels, i, j, depth), dtype=acc_dtype, device=device)
        self.weights = torch.zeros((i, j, depth), dtype=torch.float32, device=device)
        self.labels = np.zeros((i, j, k), _label_dtype(num_classes)) if output != "probabilities" else None
        self.probs = (np.zeros((num_classes, i, j, k), prob_dtype)
                      if output in ("probabilities", "both") and sink is None else None)
        self.finalised = 0
        self.finalised_total = k  # padded length along the streamed axis

    def add(self, logits: torch.Tensor, origin: tuple[int, int, int]) -> None:
        x, y, z = origin
        pz = logits.shape[-1]
        for ring, src, size in _ring_pieces(z, pz, self.depth):
            accumulate_patch(self.logits, self.weights, logits[..., src:src + size],
                             self.gaussian[..., src:src + size], (x, y, ring), running_mean=self.running_mean)

    def finalise(self, upto: int) -> None:
        """Write labels/probabilities for slices [finalised, upto) and recycle their slots."""
        while self.finalised < upto:
            start = self.finalised
            for ring, src, size in _ring_pieces(start, min(_FINALISE_CHUNK, upto - start), self.depth):
                zs = slice(start + src, start + src + size)
                rs = slice(ring, ring + size)
                acc = self.logits[..., rs]
                if self.sink is not None:
                    self._to_sink(acc, zs, rs)
                elif self.head is not None:
                    self._finalise_features(acc, zs, rs)
                else:
                    self._finalise_logits(acc, zs, rs)
                self.logits[..., rs].zero_()
                self.weights[..., rs].zero_()
                self.finalised = start + src + size

    def _to_sink(self, acc: torch.Tensor, zs: slice, rs: slice) -> None:
        """The weighted mean of the slab, padding removed, to the sink (slices in order)."""
        (i0, i1), (j0, j1), (k0, _) = self.pads
        n_i, n_j = acc.shape[1] - i0 - i1, acc.shape[2] - j0 - j1
        k_orig = self.finalised_total - k0 - self.pads[2][1]
        lo, hi = max(zs.start - k0, 0), min(zs.stop - k0, k_orig)
        if hi <= lo:
            return
        mean = acc.float() if self.running_mean else acc / self.weights[..., rs]
        first = lo + k0 - zs.start
        self.sink.consume(mean[:, i0:i0 + n_i, j0:j0 + n_j, first:first + hi - lo], lo)

    def _finalise_logits(self, acc: torch.Tensor, zs: slice, rs: slice) -> None:
        if self.labels is not None:  # weights are positive: argmax of the sum = argmax of the mean
            # classes innermost first: torch's argmax over a strided leading dim is ~3x slower
            # than a contiguous copy + argmax over the last dim (same first-maximum ties)
            top = acc.permute(1, 2, 3, 0).contiguous().argmax(-1)
            self.labels[..., zs] = top.cpu().numpy().astype(self.labels.dtype, copy=False)
        if self.probs is not None:
            avg = acc.float() if self.running_mean else acc / self.weights[..., rs]
            self.probs[..., zs] = torch.softmax(avg, 0).cpu().numpy()

    def _finalise_features(self, acc: torch.Tensor, zs: slice, rs: slice) -> None:
        """Labels/probabilities of stitched features: the head on their weighted mean (the
        head is affine, so a weighted *sum* would scale its bias — divide first)."""
        assert self.head is not None
        mean = acc.float() if self.running_mean else acc / self.weights[..., rs]
        if self.labels is not None:
            self.labels[..., zs] = self.head.argmax(mean).cpu().numpy().astype(self.labels.dtype, copy=False)
        if self.probs is not None:
            self.probs[..., zs] = torch.softmax(self.head.logits(mean), 0).cpu().numpy()


def build_network(model: torch.nn.Module, plan: PrecisionPlan, backend_name: str, head: LinearHead | None,
                  input_shape: Sequence[int], *, streams: int = 1, int8_model: str | Path | None = None,
                  optimize: bool = True) -> tuple[Callable[[torch.Tensor], Any], dict[str, Any]]:
    """The callable that runs one batch for ``plan`` on ``backend_name`` (features when ``head``
    is stitched, else logits) and its facts."""
    if plan.name == "int8":
        from medpipe.inference.openvino_backend import load_openvino_ir

        network = load_openvino_ir(int8_model, tuple(input_shape), streams=streams)
        return network, {"openvino": network.facts}
    if backend_name == "openvino":  # the un-rewritten module: OpenVINO fuses on its own
        from medpipe.inference.openvino_backend import load_openvino_network

        network = load_openvino_network(FeatureExtractor(model) if head is not None else model, tuple(input_shape),
                                        streams=streams, precision=plan.name)
        return network, {"openvino": network.facts}
    network = plan.prepare_model(optimize_for_inference(model) if optimize else model)
    return (network.forward_features if head is not None else network), {}


def tune_paths(model: torch.nn.Module, image: np.ndarray | torch.Tensor, patch_size: Sequence[int], *,
               num_classes: int, overlap: float = 0.5, batch_size: int | None = None, device: str = "cpu",
               stitch: str = "auto", output: Output = "labels", int8_model: str | Path | None = None,
               use_cache: bool = True) -> Any:
    """What ``predict``'s measured ``auto`` decides for this model and volume
    (``autotune.TuneResult``); ``use_cache=False`` measures afresh (``medpipe doctor``)."""
    vol = _as_tensor(image)
    patch = tuple(int(p) for p in patch_size)
    pads = pad_amounts(tuple(vol.shape[1:]), patch)
    tiles = plan_tiles([s + a + b for s, (a, b) in zip(vol.shape[1:], pads, strict=True)], patch, overlap)
    if any(a or b for a, b in pads):
        vol = F.pad(vol, [v for a, b in reversed(pads) for v in (a, b)], mode="constant", value=0.0)
    dev = torch.device(device)
    return _autotune(model.eval().to(dev), vol.to(dev)[None], tiles, patch, int(batch_size or DEFAULT_BATCH_SIZE),
                     dev, num_classes, stitch, output, int8_model, use_cache=use_cache)


def _autotune(model: torch.nn.Module, vol: torch.Tensor, tiles: TilePlan, patch: tuple[int, ...], batch_size: int,
              dev: torch.device, num_classes: int, stitch: str, output: str, int8_model: str | Path | None,
              use_cache: bool = True) -> Any:
    """Measure the eligible paths on two tiles of this volume (``inference.autotune``)."""
    from medpipe.inference import autotune as at
    from medpipe.inference.openvino_backend import model_key

    origins = [o for _, group in tiles.groups() for o in group]
    picks = [origins[len(origins) // 2], origins[len(origins) // 3]] if len(origins) > 1 else origins * 2
    sample = torch.cat([vol[(slice(None), slice(None), *(slice(o, o + p) for o, p in zip(org, patch, strict=True)))]
                        for org in picks])
    many = output == "labels" and num_classes >= MANY_CLASSES

    def factory(cand: at.Candidate) -> Callable[[], Callable[[torch.Tensor], torch.Tensor]]:
        def make() -> Callable[[torch.Tensor], torch.Tensor]:
            plan = resolve_precision(cand.precision, dev, int8_available=int8_model is not None)
            if cand.backend == "openvino":
                plan = PrecisionPlan(plan.name, plan.device_type, False, "autotune")
            head = _stitch_head(stitch, model, num_classes, plan)
            net, _ = build_network(model, plan, cand.backend, head, (1, vol.shape[1], *patch),
                                   int8_model=int8_model)

            def run(x: torch.Tensor) -> torch.Tensor:
                with plan.autocast():
                    y = net(plan.prepare_input(x))
                y = (y[0] if isinstance(y, (list, tuple)) else y).float()
                return head.logits(y[0])[None] if head is not None else y
            return run
        return make

    fp32_head = _stitch_head(stitch, model, num_classes, resolve_precision("fp32", dev))
    stitched = fp32_head.in_channels if fp32_head is not None else num_classes
    cands = at.candidates(dev, int8_available=int8_model is not None and not many)
    if output == "labels" and stitched >= MANY_CLASSES:  # stitching dominates; OpenVINO only costs memory
        cands = [c for c in cands if c.backend == "torch"]
    if not getattr(model, "openvino_convertible", True):  # e.g. U-Mamba_Enc: PyTorch only (openvino_note)
        cands = [c for c in cands if c.backend == "torch"]
    shape = (batch_size, vol.shape[1], *patch)
    try:
        return at.tune({c: factory(c) for c in cands}, sample, num_classes,
                       weights_key=model_key(model, shape, "autotune-v1"), device=dev, int8_model=int8_model,
                       use_cache=use_cache)
    finally:
        model.to(memory_format=torch.contiguous_format)  # a channels-last candidate converts it in place


def _rich_track(enabled: bool) -> Callable[..., Iterable[Any]]:
    """A transient rich progress bar over the batches (or a plain loop when disabled)."""

    def track(items: list, total: int, description: str) -> Iterator[Any]:
        if not enabled:
            yield from items
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True) as prog:
            task = prog.add_task(description, total=total)
            for item in items:
                yield item
                prog.advance(task)

    return track


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


@torch.inference_mode()
def predict(model: torch.nn.Module, image: np.ndarray | torch.Tensor, patch_size: Sequence[int], *,
            num_classes: int, overlap: float = 0.5, tta_axes: Sequence[int] = (), precision: str = "auto",
            batch_size: int | None = None, output: Output = "labels", device: str | torch.device = "cpu",
            progress: bool | Callable[..., Iterable[Any]] = True, memory_budget_gb: float | None = None,
            accumulation: str = "auto", stream: bool = True, sigma_scale: float = 0.125,
            probability_dtype: str = "fp16", optimize: bool = True, backend: str = "auto",
            int8_model: str | Path | None = None, stitch: str = "auto", sink: Any = None,
            autotune: bool = True) -> Prediction:
    """Segment a ``(C, I, J, K)`` volume with ``model`` tile by tile.

    A 2D network (``model.spatial_dims == 2``) takes a 2D ``patch_size`` and runs slice by
    slice along K, ``batch_size`` slices per pass (``slicewise``); everything else is the same.

    ``tta_axes`` are spatial axes (0..2) to mirror (all combinations are averaged);
    ``accumulation="fp16"`` halves the stitching buffer (``"auto"``: fp16 for labels-only
    output with >= 32 classes, else fp32); ``backend`` is ``auto|torch|openvino`` (``auto``:
    OpenVINO on CPU in fp32 when installed, see ``resolve_backend``); ``stream=False`` keeps a
    whole-volume buffer (the dense reference behaviour, for comparison);
    ``probability_dtype="fp32"`` returns full-precision probabilities (twice the memory);
    ``progress`` is a bool (rich bar) or a ``track(items, total=, description=)`` callable
    such as ``StageContext.track``; ``optimize`` applies ``optimize_for_inference`` (1x1x1
    convs as GEMMs, fused InstanceNorm+LeakyReLU; same weights). ``int8_model`` is the
    OpenVINO IR (``.xml``) of the same network quantised by ``inference.quantize`` (a
    bundle's ``int8_path``): ``precision="int8"`` runs it, ``"auto"`` does on CPUs with
    VNNI/AMX unless the many-class rule (labels only, >= 32 classes) keeps it off (the
    quantised graph includes the head, so it would stitch all the logits).
    ``stitch`` is ``auto|logits|features``: ``features`` stitches the channels in front of the
    model's linear ``head`` and applies it per finalised slab (exact; ``auto`` does so when the
    head has fewer inputs than classes, see ``feature_stitching``).
    With ``precision`` and ``backend`` both ``auto`` (and ``autotune``) the path is the one
    ``inference.autotune`` measured fastest on this machine among those that pass the
    accuracy gate (decided once per weights/shape/machine, cached; see that module).
    ``sink`` (e.g. ``grid_export.GridExport``) receives the stitched mean slab by slab instead
    of the engine deciding labels on the network grid: ``sink.start(shape, head)``, then
    ``sink.consume(mean (C, I, J, n), k0)`` in order; ``Prediction.labels`` is
    ``sink.finish()``. Output must be ``labels``.
    """
    t0 = time.perf_counter()
    if output not in ("labels", "probabilities", "both"):
        raise InputError(f"output must be 'labels', 'probabilities' or 'both', got {output!r}")
    if probability_dtype not in ("fp16", "fp32"):
        raise InputError(f"probability_dtype must be 'fp16' or 'fp32', got {probability_dtype!r}")
    if sink is not None and output != "labels":
        raise InputError("a prediction with an export sink decides the labels itself: output must be 'labels'")
    vol = _as_tensor(image)
    two_d = is_2d(model)
    if two_d:  # slabs of k slices through the 2D network (slicewise): batch_size counts slices
        check_min_size(model, vol.shape[1:3])
        patch = slab_patch(patch_size, vol.shape[-1], batch_size)
        tta_axes = [a for a in tta_axes if a != 2]  # mirroring the slice order changes nothing
        batch_size = 1
    else:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 3 or any(p <= 0 for p in patch):
            raise InputError(f"patch_size must be three positive integers, got {tuple(patch_size)}")
        batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    dev = torch.device(device)
    many = output == "labels" and num_classes >= MANY_CLASSES
    if precision == "int8" and int8_model is None:
        raise InputError("precision 'int8' needs a quantised model; make one with "
                         "'medpipe models quantize BUNDLE OUT --calibration IMAGES'")
    model = model.eval().to(dev)
    flips = mirror_combinations(tta_axes)
    if any(not 0 <= a < 3 for a in tta_axes):
        raise InputError(f"tta_axes must be spatial axes 0, 1 or 2, got {tuple(tta_axes)}")

    orig_shape = tuple(vol.shape[1:])
    pads = pad_amounts(orig_shape, patch)
    tiles = plan_tiles([s + a + b for s, (a, b) in zip(orig_shape, pads, strict=True)], patch,
                       (overlap, overlap, 0.0) if two_d else overlap)
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        vol = F.pad(vol, flat, mode="constant", value=0.0)
    vol = vol.to(dev)[None]

    tuned = None
    if autotune and precision == "auto" and backend == "auto" and not two_d:  # 2D: the flag policy
        tuned = _autotune(model, vol, tiles, patch, batch_size, dev, num_classes, stitch, output,
                          int8_model if not many else None)
        precision, backend = tuned.choice.precision, tuned.choice.backend
    plan = resolve_precision(precision, dev, int8_available=int8_model is not None and not many
                             and backend != "torch")
    if backend == "openvino" and plan.name == "bf16":
        plan = PrecisionPlan("bf16", plan.device_type, False, plan.reason + "; OpenVINO bf16 inference hint")
    if tuned is not None:
        plan = PrecisionPlan(plan.name, plan.device_type, plan.channels_last,
                             f"auto (measured): {tuned.choice.name}, {tuned.reason}")
    head = _stitch_head(stitch, model, num_classes, plan)
    channels = head.in_channels if head is not None else num_classes
    backend_name, backend_reason = resolve_backend(backend, plan, channels if output == "labels" else 0)
    if backend_name == "openvino" and plan.name != "int8" and not getattr(model, "openvino_convertible", True):
        why = getattr(model, "openvino_note", "the network does not convert to OpenVINO")
        if backend == "openvino":
            raise InputError(f"backend='openvino': {why}; use backend='auto' or 'torch'")
        backend_name, backend_reason = "torch", f"auto: {why}"
    if tuned is not None:
        backend_reason = f"auto (measured{', cached' if tuned.cached else ''}): {tuned.choice.name}"
    accumulation = resolve_accumulation(accumulation, channels, output)
    depth = min(patch[-1], tiles.shape[-1]) if stream else tiles.shape[-1]
    mem = memory_plan(tiles.shape, patch, num_classes=num_classes, in_channels=vol.shape[1],
                      batch_size=batch_size, output=output, accumulation=accumulation, stream=stream,
                      tta_passes=len(flips), probability_bytes=2 if probability_dtype == "fp16" else 4,
                      stitch_channels=head.in_channels if head is not None else None)
    _check_memory(mem, memory_budget_gb, f"a {num_classes}-class prediction on a {orig_shape} volume")

    # (group index, tile origins, last batch of its group?) in processing order
    batches = [(gi, origins[b0:b0 + batch_size], b0 + batch_size >= len(origins))
               for gi, (_, origins) in enumerate(tiles.groups()) for b0 in range(0, len(origins), batch_size)]
    streams = openvino_streams(len(batches) * len(flips))
    # what the network itself is fed: (batch, C, *patch), or (k slices, C, P, P) for 2D
    net_input = (patch[2], vol.shape[1], *patch[:2]) if two_d else (batch_size, vol.shape[1], *patch)
    network, backend_facts = build_network(model, plan, backend_name, head, net_input,
                                           streams=streams, int8_model=int8_model, optimize=optimize)
    if tuned is not None:
        backend_facts["autotune"] = tuned.facts()
    if two_d:
        network = SliceWise(network)
        gaussian = gaussian_importance_map(patch[:2], sigma_scale, dev)[..., None].expand(patch).contiguous()
    else:
        gaussian = gaussian_importance_map(patch, sigma_scale, dev)
    acc_dtype = torch.float16 if accumulation == "fp16" else torch.float32
    try:
        stitcher = _Stitcher(tiles, num_classes, depth, acc_dtype, dev, output, gaussian,
                             np.float16 if probability_dtype == "fp16" else np.float32, head, sink, pads)
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or _is_oom(exc):
            raise ResourceError(f"cannot allocate the stitching buffer ({mem['logit_buffer'] / 2**30:.1f} GiB); "
                                "try fp16 accumulation or a smaller --patch") from exc
        raise

    track = progress if callable(progress) else _rich_track(bool(progress))
    if sink is not None:
        sink.start(orig_shape, head)

    def inputs() -> Iterator[tuple[tuple[int, list, bool], torch.Tensor]]:
        for gi, chunk, group_done in track(batches, total=len(batches),
                                           description=f"segmenting ({plan.name}, {len(flips)} TTA)"):
            yield (gi, chunk, group_done), torch.cat(
                [vol[(slice(None), slice(None), *(slice(o, o + p) for o, p in zip(org, patch, strict=True)))]
                 for org in chunk])

    try:
        for (gi, chunk, group_done), logits in _forward_batches(network, inputs(), plan, flips):
            if logits.shape[1] != channels or tuple(logits.shape[2:]) != patch:
                what = "features" if head is not None else "logits"
                raise InputError(f"the network returned {what} of shape {tuple(logits.shape[1:])}, "
                                 f"expected ({channels}, {', '.join(map(str, patch))})")
            for n, org in enumerate(chunk):
                stitcher.add(logits[n], org)
            del logits
            if stream and group_done:
                stitcher.finalise(tiles.completed_before(gi))
    except RuntimeError as exc:
        if _is_oom(exc):
            raise ResourceError(f"the network ran out of memory on a batch of {batch_size} patch(es) of "
                                f"{patch}; try a smaller --patch or batch size") from exc
        raise
    stitcher.finalise(tiles.shape[-1])

    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, orig_shape, strict=True))
    if sink is not None:
        labels = sink.finish()
    else:
        labels = np.ascontiguousarray(stitcher.labels[crop]) if stitcher.labels is not None else None
    probs = np.ascontiguousarray(stitcher.probs[(slice(None), *crop)]) if stitcher.probs is not None else None
    facts = {
        "precision": plan.name,
        "precision_reason": plan.reason,
        "channels_last": plan.channels_last,
        "backend": backend_name,
        "backend_reason": backend_reason,
        **backend_facts,
        "optimized": optimize and backend_name == "torch",
        "device": str(dev),
        "patch_size": list(patch),
        "overlap": overlap,
        "tiles": tiles.n_tiles,
        "tta_passes": len(flips),
        "forward_passes": tiles.n_tiles * len(flips),
        "batch_size": batch_size,
        "slicewise": two_d,
        "slices_per_pass": patch[2] if two_d else None,
        "padded_shape": list(tiles.shape),
        "streamed": stream,
        "slab_depth": depth,
        "stitched": "features" if head is not None else "logits",
        "stitched_channels": channels,
        "accumulation": accumulation,
        "peak_memory_bound_bytes": mem["total"],
        "stitching_buffer_bytes": mem["logit_buffer"] + mem["weight_buffer"],
        "dense_buffer_bytes": mem["dense_logit_buffer"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return Prediction(labels, probs, facts)
