"""``segment`` / ``segment_probabilities``: run a model bundle over a preprocessed image.

The input is the image the reorient/resample/normalize stages produced from the same
bundle; the label map comes out on exactly that grid, carrying the image's
``geometry_history`` so ``restore_geometry`` can put it back on the study's grid. Patch
size, mirror axes and label names come from the bundle, never from the user's memory.

Two kinds because the runner requires every declared output: ``segment`` yields
``labels``; ``segment_probabilities`` also yields ``probabilities`` (float32, one
channel per class), which costs ``classes x voxels x 4`` bytes on disk and in memory.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from medpipe.errors import BundleError
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Segment", "SegmentProbabilities"]


class _SegmentParams(StageParams):
    bundle: str
    # auto: the bundle's validated int8 model on VNNI/AMX CPUs when it has one, else fp32/bf16 by hardware
    precision: Literal["auto", "bf16", "fp32", "fp16", "int8"] = "auto"
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    tta: bool | list[int] = False  # True: the bundle's mirror axes; a list: those axes
    batch_size: int | None = Field(None, ge=1)
    accumulation: Literal["auto", "fp32", "fp16"] = "auto"  # auto: fp16 for >= 32 classes (labels only)
    backend: Literal["auto", "torch", "openvino"] = "auto"  # auto: OpenVINO on CPU in fp32 when installed
    # auto: stitch the features in front of a linear head when it has fewer inputs than classes (exact)
    stitch: Literal["auto", "logits", "features"] = "auto"
    memory_budget_gb: float | None = Field(None, gt=0)


@register_stage
class Segment(Stage):
    kind = "segment"
    description = "segment a preprocessed image with a model bundle (sliding window, Gaussian blending, TTA)"
    Params = _SegmentParams
    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}
    resources = StageResources(threads=4, mem_mb=8000, gpu=True)
    _with_probabilities = False

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.inference import predict
        from medpipe.models.bundle import load_bundle, resolve_bundle_path

        p = self.params
        image = inputs["image"]
        modality = (image.meta.modality or "").upper()
        if not modality:
            ctx.warn(f"stage {ctx.stage!r}: the image has no modality; cannot check it against the bundle")
        bundle = load_bundle(resolve_bundle_path(p.bundle), expect_modality=modality or None)
        cfg = bundle.config
        if cfg.task != "segmentation":
            raise BundleError(f"bundle {cfg.name} is a {cfg.task} model; use it with the register or "
                              "propagate_labels stage, not segment")
        if image.n_channels != len(cfg.channels):
            raise BundleError(f"bundle {cfg.name} expects {len(cfg.channels)} channel(s) ({', '.join(cfg.channels)}), "
                              f"the image has {image.n_channels}")
        pre = cfg.preprocessing
        if len(pre.patch_size) != 3:
            raise BundleError(f"bundle {cfg.name} is a {len(pre.patch_size)}D model; the segment stage needs 3D")
        tta_axes = list(pre.tta_axes) if p.tta is True else ([] if p.tta is False else list(p.tta))
        model = bundle.build_model(ctx.device)
        result = predict(model, image.array, pre.patch_size, num_classes=cfg.num_classes, overlap=p.overlap,
                         tta_axes=tta_axes, precision=p.precision, batch_size=p.batch_size,
                         output="both" if self._with_probabilities else "labels", device=ctx.device,
                         progress=ctx.track, memory_budget_gb=p.memory_budget_gb, accumulation=p.accumulation,
                         backend=p.backend, int8_model=bundle.int8_path, stitch=p.stitch)
        labels = image.with_array(result.labels[None], is_label=True)
        labels.meta.extra["labels"] = {int(k): v.name for k, v in cfg.labels.items()}
        labels.meta.extra["colors"] = {int(k): list(v.color) for k, v in cfg.labels.items()}
        labels.meta.extra["bundle"] = {"name": cfg.name, "version": cfg.version, "architecture": cfg.architecture}
        ctx.facts["segment"] = {"bundle": cfg.name, **result.facts}
        if result.facts["precision"] == "int8" and cfg.quantization is not None:
            ctx.facts["segment"]["int8_agreement_at_quantization"] = cfg.quantization.agreement
        out: dict[str, Any] = {"labels": labels}
        if self._with_probabilities:
            probs = image.with_array(result.probabilities.astype(np.float32), is_label=False)
            probs.meta.extra["channels"] = [cfg.labels[k].name for k in sorted(cfg.labels)]
            out["probabilities"] = probs
        return out


@register_stage
class SegmentProbabilities(Segment):
    kind = "segment_probabilities"
    description = "like segment, and also output per-class probabilities (float32, one channel per class)"
    outputs = {"labels": LabelArtifact, "probabilities": ImageArtifact}
    _with_probabilities = True
