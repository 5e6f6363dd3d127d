"""``normalize``: intensity normalisation as the model was trained (CT clip + z-score, MR z-score)."""

from __future__ import annotations

from typing import Any, Literal

from medpipe.pipeline.artifacts import ImageArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Normalize"]


@register_stage
class Normalize(Stage):
    kind = "normalize"
    description = "normalise intensities: ct (clip + dataset z-score), zscore (per image), window, none"

    class Params(StageParams):
        scheme: Literal["ct", "zscore", "window", "none"] | None = None  # default: bundle's, else zscore
        clip: tuple[float, float] | None = None
        percentiles: tuple[float, float] = (0.5, 99.5)
        mean: float | None = None
        std: float | None = None
        window: tuple[float, float] | None = None  # (centre, width)
        foreground_only: bool = False
        foreground_threshold: float | None = None
        bundle: str | None = None

    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.pipeline.stages._bundle import bundle_preprocessing
        from medpipe.transforms import normalize

        p = self.params
        scheme, clip, mean, std = p.scheme, p.clip, p.mean, p.std
        if p.bundle:
            norm = bundle_preprocessing(p.bundle).normalization
            scheme = scheme or norm.scheme
            clip = clip if clip is not None else norm.clip
            mean = mean if mean is not None else norm.mean
            std = std if std is not None else norm.std
        out, rec = normalize(
            inputs["image"],
            scheme or "zscore",
            clip=clip,
            percentiles=p.percentiles,
            mean=mean,
            std=std,
            window=p.window,
            foreground_only=p.foreground_only,
            foreground_threshold=p.foreground_threshold,
        )
        if rec.get("stats_source") == "image foreground" or "clip_source" in rec and rec["clip_source"] != "given":
            ctx.warn(
                f"stage {ctx.stage!r}: CT normalisation used this image's own statistics "
                "(no dataset clip/mean/std given); pass them or a bundle to match training"
            )
        ctx.facts["normalize"] = rec
        return {"image": out}
