"""``propagate_labels``: atlas-based segmentation — register the bundle's atlas to the subject
and carry the atlas labels onto the subject's own grid.

The atlas image and labels come from the registration bundle (``atlas/``), so the labels
land on exactly the input's grid (shape and affine), ready for ``statistics``, ``preview``
and ``write`` (NIfTI, DICOM SEG) like any segmentation. ``atlas_set: regions`` carries the
bundle's second label set instead (the brain atlas's lobar territories), for reporting where
a lesion lies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from medpipe.errors import BundleError
from medpipe.pipeline.artifacts import FieldArtifact, ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages.register import RegisterParams, registration_bundle_inputs

__all__ = ["PropagateLabels"]


class _Params(RegisterParams):
    atlas_bundle: str = "brain_micdir"  # the bundle whose atlas/ is propagated
    label_mode: str = "onehot"
    atlas_set: Literal["labels", "regions"] = "labels"  # which of the atlas's label sets to carry


@register_stage
class PropagateLabels(Stage):
    kind = "propagate_labels"
    description = "atlas segmentation: register the bundle's atlas to the image, warp its labels onto the image grid"
    Params = _Params
    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact, "field": FieldArtifact, "atlas": ImageArtifact}
    resources = StageResources(threads=4, mem_mb=6000, gpu=True)

    @classmethod
    def external_inputs(cls, params: StageParams) -> list[Path]:
        from medpipe.models.bundle import resolve_bundle_path

        extra = resolve_bundle_path(params.atlas_bundle)
        return [*registration_bundle_inputs(params), *([extra] if extra.exists() else [])]

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.volumes import read_volume
        from medpipe.registration.bundle import load_registration_bundle
        from medpipe.registration.field import warp_image
        from medpipe.registration.register import register

        p = self.params
        bundle, settings = load_registration_bundle(p.atlas_bundle)
        if not settings.atlas_image or not settings.atlas_labels:
            raise BundleError(f"bundle {bundle.config.name} has no atlas (atlas/image.nii.gz + atlas/labels.nii.gz) "
                              "to propagate")
        chosen = settings.atlas_labels if p.atlas_set == "labels" else settings.atlas_regions
        if not chosen:
            raise BundleError(f"bundle {bundle.config.name} has no atlas regions (atlas/regions.nii.gz); use "
                              "atlas_set: labels")
        atlas = read_volume(bundle.path / settings.atlas_image)
        atlas.meta.modality = atlas.meta.modality or bundle.config.modality
        atlas_labels = read_volume(bundle.path / chosen, is_label=True)
        subject = inputs["image"]
        method_bundle = p.bundle or (p.atlas_bundle if p.method == bundle.config.architecture else None)
        res = register(subject, atlas, p.method, bundle=method_bundle, affine=p.affine,
                       refine_iterations=p.refine_iterations, device=ctx.device, min_overlap=p.min_overlap,
                       engine=p.engine, precision=p.precision)
        labels = warp_image(atlas_labels, res.field, label_mode=p.label_mode)
        labels.meta.modality = "SEG"
        labels.meta.description = f"{bundle.config.name} atlas labels propagated by {p.method}"
        for key in ("labels", "colors"):
            if key in atlas_labels.meta.extra:
                labels.meta.extra[key] = atlas_labels.meta.extra[key]
        labels.meta.extra.pop("geometry_history", None)
        ctx.facts["propagate_labels"] = {"atlas": bundle.config.name, **res.facts, "seconds": res.seconds}
        return {"labels": labels, "field": res.field, "atlas": res.warped}
