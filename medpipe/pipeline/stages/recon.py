"""``recon``: KSpace -> Image (magnitude; ``output: complex`` adds real and imaginary channels).

``method`` picks the reconstruction (``medpipe.recon.reconstruct``); ``rim``/``cirim`` read a
bundle (``task: recon``) and check, before any work, that the k-space has the coil count the
bundle was trained for. The image carries the acquisition's affine, so segmentation and DICOM
export handle it like any loaded series.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from medpipe.errors import BundleError
from medpipe.io.kspace import pixel_size_mm
from medpipe.pipeline.artifacts import ImageArtifact, KSpaceArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Recon", "load_recon_model"]


def load_recon_model(bundle_name: str, n_coils: int | None = None):
    """(network in eval mode, bundle) for a recon bundle; refuses segmentation bundles and a coil
    count the bundle was not trained for."""
    from medpipe.models.bundle import load_bundle, resolve_bundle_path

    bundle = load_bundle(resolve_bundle_path(bundle_name), expect_modality="MR")
    cfg = bundle.config
    if cfg.task != "recon":
        raise BundleError(f"bundle {cfg.name} is a {cfg.task} bundle, not a reconstruction bundle")
    coils = int((cfg.recon or {}).get("coils", 0))
    if n_coils is not None and coils and n_coils != coils:
        raise BundleError(f"bundle {cfg.name} was trained on {coils}-coil k-space, this k-space has {n_coils} coils; "
                          "use a bundle trained for this coil array (or compress the coils first)")
    return bundle.build_model(), bundle


@register_stage
class Recon(Stage):
    kind = "recon"
    description = "reconstruct k-space into an image (cirim, rim, cs, bart, sense, zero_filled, rss)"

    class Params(StageParams):
        method: Literal["cirim", "rim", "cs", "bart", "sense", "zero_filled", "rss"] = "cirim"
        bundle: str | None = None
        coil_maps: Literal["auto", "acs", "espirit", "file"] = "auto"
        cs_lambda: float | None = Field(None, gt=0)
        cs_iterations: int = Field(100, ge=1)
        output: Literal["magnitude", "complex"] = "magnitude"
        threads: int | None = Field(None, ge=1)

    inputs = {"kspace": KSpaceArtifact}
    outputs = {"image": ImageArtifact}
    resources = StageResources(threads=4, mem_mb=6000, gpu=True)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.recon.reconstruct import reconstruct, to_image

        p = self.params
        ks = inputs["kspace"]
        model, info = None, {"method": p.method}
        if p.method in ("rim", "cirim"):
            if not p.bundle:
                raise BundleError(f"stage {ctx.stage!r}: method {p.method} needs a bundle (e.g. mri_brain_cirim)")
            model, bundle = load_recon_model(p.bundle, ks.n_coils)
            info.update(bundle=bundle.config.name, architecture=bundle.config.architecture)
            trained = (bundle.config.recon or {}).get("pixel_mm")
            if trained:
                pixel = pixel_size_mm(ks.affine)
                if np.any(np.abs(pixel - np.asarray(trained, float)) > 0.25 * np.asarray(trained, float)):
                    # docs/mri_brain.md: an earlier CIRIM's image lost 0.20 Dice downstream at 2 mm pixels, 0.08 at 1 mm
                    ctx.warn(f"bundle {bundle.config.name} was trained on {trained[0]:g} mm pixels; this k-space has "
                             f"{pixel[0]:.2g} x {pixel[1]:.2g} mm pixels: expect a poorer reconstruction")
        if p.threads:
            import torch

            torch.set_num_threads(p.threads)
        res = reconstruct(ks, p.method, model=model, lam=p.cs_lambda, cs_iterations=p.cs_iterations,
                          coil_maps=p.coil_maps, track=ctx.track)
        # the timing is a fact of this run, not of the image: kept out of its metadata, which is
        # hashed (a cache key downstream) and must be the same on every run and engine
        ctx.facts["recon"] = {**info, "seconds_per_slice": round(float(np.mean(res.seconds)), 4)}
        vol = res.magnitude
        if p.output == "complex":
            if res.complex_image is None:
                raise BundleError(f"stage {ctx.stage!r}: method {p.method} has no phase; use output magnitude")
            vol = np.stack([res.magnitude, res.complex_image.real, res.complex_image.imag])
            image = to_image(ks, vol[0], f"medpipe {p.method} reconstruction", info)
            chans = [np.transpose(np.moveaxis(v, 0, -1), (1, 0, 2)) for v in vol]
            return {"image": image.with_array(np.stack(chans).astype(np.float32))}
        return {"image": to_image(ks, vol, f"medpipe {p.method} reconstruction", info)}
