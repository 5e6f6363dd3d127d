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

__all__ = ["Segment", "SegmentProbabilities", "check_channels"]


def check_channels(cfg: Any, image: Any) -> None:
    """One sentence when the image's channels are not the bundle's, saying which mix-up it
    looks like (an RGB picture for a grey-scale model, a grey image for an RGB one)."""
    want, got = len(cfg.channels), image.n_channels
    if want == got:
        return
    names = ", ".join(cfg.channels)
    rgb = [c.upper() for c in cfg.channels] == ["R", "G", "B"]
    if got == 3 and want == 1:
        hint = "; it looks like an RGB image: convert it to grey-scale first"
    elif rgb and got == 1:
        hint = "; the bundle was trained on RGB images and this one is grey-scale"
    elif got > want:
        hint = "; the study has more channels (sequences) than the model was trained on"
    else:
        hint = ""
    raise BundleError(f"bundle {cfg.name} expects {want} channel(s) ({names}), the image has {got}{hint}")


class _SegmentParams(StageParams):
    bundle: str
    # auto: the bundle's validated int8 model on VNNI/AMX CPUs when it has one, else fp32/bf16 by hardware
    precision: Literal["auto", "bf16", "fp32", "fp16", "int8"] = "auto"
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    tta: bool | list[int] = False  # True: the bundle's mirror axes; a list: those axes
    batch_size: int | None = Field(None, ge=1)  # patches per pass; for a 2D bundle, slices per pass (default 4)
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
        from medpipe.inference.slicewise import check_min_size, is_2d
        from medpipe.models.bundle import load_bundle, resolve_bundle_path

        p = self.params
        image = inputs["image"]
        modality = (image.meta.modality or "").upper()
        if not modality:
            ctx.warn(f"stage {ctx.stage!r}: the image has no modality; cannot check it against the bundle")
        bundle = load_bundle(resolve_bundle_path(p.bundle), expect_modality=modality or None)
        cfg = bundle.config
        if cfg.task != "segmentation":
            use = {"registration": "the register or propagate_labels stage", "recon": "the recon stage"}
            raise BundleError(f"bundle {cfg.name} is a {cfg.task} bundle; the segment stage needs a segmentation "
                              f"bundle (use {use.get(cfg.task, 'another stage')})")
        check_channels(cfg, image)
        pre = cfg.preprocessing
        tta_axes = list(pre.tta_axes) if p.tta is True else ([] if p.tta is False else list(p.tta))
        model = bundle.build_model(ctx.device)
        if (len(pre.patch_size) == 2) != is_2d(model):
            raise BundleError(f"bundle {cfg.name}: its {len(pre.patch_size)}D patch size does not fit "
                              f"{cfg.architecture}, a {2 if is_2d(model) else 3}D network")
        if is_2d(model):  # slice by slice along K; the stage's batch_size counts slices per pass
            check_min_size(model, image.shape[:2], f"the image (after {cfg.name}'s preprocessing)")
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
