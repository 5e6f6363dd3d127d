"""``segment_bundles``: run several bundles on one image and merge their labels by name.

TotalSegmentator's 104+ structures are five nnU-Net models, each trained on a subset;
users with those weights on disk (imported as bundles) need them run one after another
and the results merged into one label map with the structures' names. Bundles are run in
the order given; a voxel keeps the label of the first bundle that claims it (list the
bundles in priority order). Merged values are renumbered 1..N in that order, so the names
travel with the map (``meta.extra["labels"]``) into NIfTI sidecars, NRRD and DICOM SEG.
``labels`` keeps only the named structures — and a bundle holding none of them is not run
at all (TotalSegmentator's ``--roi_subset``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, field_validator

from medpipe.errors import BundleError, PipelineError
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages.segment_image import InferenceParams, check_bundle_modality

__all__ = ["SegmentBundles", "merge_label_maps"]


def merge_label_maps(maps: list[tuple[np.ndarray, dict[int, str], dict[int, list[int]]]],
                     keep: set[str] | None = None) -> tuple[np.ndarray, dict[int, str], dict[int, list[int]]]:
    """One label map from ``(labels, {value: name}, {value: rgb})`` triples, first claim wins.

    Structures are renumbered 1..N in order of appearance; a name already taken by an
    earlier map is merged into that structure (two models labelling the same organ)."""
    if not maps:
        raise PipelineError("no label maps to merge")
    out = np.zeros(maps[0][0].shape, np.uint8)
    names: dict[int, str] = {}
    colors: dict[int, list[int]] = {}
    by_name: dict[str, int] = {}
    for labels, label_names, label_colors in maps:
        if labels.shape != out.shape:
            raise PipelineError(f"label maps to merge have different shapes {out.shape} and {labels.shape}")
        for value, name in sorted(label_names.items()):
            if value == 0 or (keep is not None and name not in keep):
                continue
            if name not in by_name:
                by_name[name] = len(by_name) + 1
                names[by_name[name]] = name
                if value in label_colors:
                    colors[by_name[name]] = list(label_colors[value])
            new = by_name[name]
            if new > 255 and out.dtype == np.uint8:
                out = out.astype(np.uint16)
            claim = (labels == value) & (out == 0)
            out[claim] = new
    return out, names, colors


@register_stage
class SegmentBundles(Stage):
    kind = "segment_bundles"
    description = "run several bundles (e.g. TotalSegmentator's parts) and merge their labels by name"

    class Params(InferenceParams):
        bundles: list[str] = Field(min_length=1)
        labels: list[str] | None = None  # keep only these structures (and skip bundles without any)

        @field_validator("bundles")
        @classmethod
        def _distinct(cls, v: list[str]) -> list[str]:
            if len(set(v)) != len(v):
                raise ValueError("bundles are listed more than once")
            return v

    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}
    resources = StageResources(threads=4, mem_mb=8000, gpu=True)

    @classmethod
    def external_inputs(cls, params: StageParams) -> list[Any]:
        from medpipe.models.bundle import resolve_bundle_path

        paths = [resolve_bundle_path(b) for b in params.bundles]
        return [p for p in paths if p.exists()]

    @classmethod
    def _bundles(cls, params: StageParams) -> list[Any]:
        from medpipe.models.bundle import load_bundle
        from medpipe.models.model_ref import resolve_model

        bundles = [load_bundle(resolve_model(b)) for b in params.bundles]
        if params.labels is not None:
            known = {lab.name for b in bundles for v, lab in b.config.labels.items() if v}
            unknown = [n for n in params.labels if n not in known]
            if unknown:
                raise BundleError(f"structures {unknown} are in none of the bundles {params.bundles}; they label: "
                                  f"{', '.join(sorted(known))}")
        return bundles

    @classmethod
    def preflight(cls, params: StageParams, ctx: Any) -> None:
        for b in cls._bundles(params):
            check_bundle_modality(b, (ctx.learned("image") or {}).get("modality"), ctx.study)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.inference.bundle_segment import check_image_for_bundle, segment_image

        p = self.params
        image = inputs["image"]
        keep = set(p.labels) if p.labels is not None else None
        bundles = self._bundles(p)
        for b in bundles:  # every check before the first model runs
            check_image_for_bundle(image, b)
            check_bundle_modality(b, image.meta.modality, ctx.study)
        maps, runs = [], {}
        for b in bundles:
            names = {v: lab.name for v, lab in b.config.labels.items()}
            if keep is not None and not keep & set(names.values()):
                runs[b.config.name] = "skipped (none of the requested structures)"
                continue
            result = segment_image(image, b, device=ctx.device, progress=ctx.track, **p.engine_options())
            colors = {v: list(lab.color) for v, lab in b.config.labels.items()}
            maps.append((result.labels.array[0], names, colors))
            runs[b.config.name] = {k: result.facts[k] for k in ("precision", "backend", "seconds_total") if k in
                                   result.facts}
        merged, names, colors = merge_label_maps(maps, keep)
        out = image.with_array(merged[None], is_label=True)
        out.meta.extra["labels"] = names
        out.meta.extra["colors"] = colors
        out.meta.extra["bundles"] = list(runs)
        ctx.facts["segment"] = {"bundles": runs, "structures": len(names)}
        return {"labels": out}
