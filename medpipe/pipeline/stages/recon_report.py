"""``recon_report``: side-by-side preview (zero-filled | CS | learned | reference) and, when the
k-space carries a fully sampled reference, SSIM/PSNR/NMSE of every reconstruction (fastMRI's
definitions, ``medpipe.metrics``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact, KSpaceArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, register_stage

__all__ = ["ReconReport", "render_recon_preview"]

_ORDER = ("zero_filled", "cs", "reconstruction")


def _slices(image) -> np.ndarray:
    """(slices, rows, cols) magnitude of an Image built by ``recon.to_image``."""
    return np.transpose(image.array[0], (2, 1, 0))


def render_recon_preview(panels: dict[str, np.ndarray], reference: np.ndarray | None, path, title: str = "",
                         scores: dict[str, dict[str, float]] | None = None):
    """PNG of the middle slice of every panel (and the reference), errors x5 below when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpipe.io.atomic import atomic_path

    names = list(panels) + (["reference"] if reference is not None else [])
    vols = {**panels, **({"reference": reference} if reference is not None else {})}
    k = next(iter(vols.values())).shape[0] // 2
    vmax = float(np.percentile((reference if reference is not None else next(iter(vols.values())))[k], 99.5))
    rows = 2 if reference is not None else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(3.2 * len(names), 3.4 * rows), facecolor="black",
                             squeeze=False)
    for j, n in enumerate(names):
        ax = axes[0, j]
        ax.imshow(vols[n][k], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        label = n if not scores or n not in scores else f"{n}\nSSIM {scores[n]['ssim']:.3f}  PSNR {scores[n]['psnr']:.1f}"
        ax.set_title(label, color="white", fontsize=9)
        if reference is not None:
            err = axes[1, j]
            err.imshow(np.abs(vols[n][k] - reference[k]), cmap="gray", vmin=0, vmax=vmax / 5, interpolation="nearest")
            err.set_title("|error| x5", color="white", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("black")
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, facecolor="black", format="png")
    plt.close(fig)
    return path


@register_stage
class ReconReport(Stage):
    kind = "recon_report"
    description = "preview PNG (zero-filled | CS | learned | reference) and SSIM/PSNR/NMSE against the reference"

    class Params(StageParams):
        file: str = "recon_preview.png"

    inputs = {"kspace": KSpaceArtifact, "reconstruction": ImageArtifact, "zero_filled": ImageArtifact,
              "cs": ImageArtifact}
    optional_inputs = frozenset({"zero_filled", "cs"})
    outputs = {"files": FilesArtifact, "table": TableArtifact}

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.metrics import nmse, psnr, ssim

        ks = inputs["kspace"]
        panels = {}
        for name in _ORDER:
            img = inputs.get(name)
            if img is None:
                continue
            vol = _slices(img)
            if vol.shape != (ks.n_slices, *ks.image_shape):
                raise GeometryError(f"stage {ctx.stage!r}: the {name} image {vol.shape} is not on the k-space's image "
                                    f"grid {(ks.n_slices, *ks.image_shape)}")
            method = img.meta.extra.get("recon", {}).get("method", name)
            panels[method if name == "reconstruction" else name] = vol
        ref = ks.reference
        table: dict[str, Any] = {"reference": ref is not None, "acceleration": round(float(ks.acceleration), 3),
                                 "methods": {}}
        if ref is not None:
            for n, v in panels.items():
                table["methods"][n] = {"ssim": ssim(ref, v), "psnr": psnr(ref, v), "nmse": nmse(ref, v)}
        out = render_recon_preview(panels, ref, ctx.workdir / self.params.file,
                                   title=f"{ctx.study}  {ks.acceleration:.1f}x", scores=table["methods"] or None)
        return {"files": {"preview": out}, "table": table}
