"""``difference``: the aligned follow-up minus the baseline, on the baseline's grid, with a picture.

Both images are z-scored inside the baseline's foreground first (scanner gain and bias differ
between dates), so the map shows change in standard deviations; a PNG shows baseline,
aligned follow-up and difference through the centre in three planes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Difference", "difference_map"]


def difference_map(baseline: Image, followup: Image) -> Image:
    """``z(followup) - z(baseline)`` with both z-scores taken inside the baseline foreground."""
    if not baseline.same_grid(followup):
        raise GeometryError(f"difference: the follow-up (shape {followup.shape}) is not on the baseline's grid "
                            f"(shape {baseline.shape}); register it first")
    b, f = baseline.array[0].astype(np.float64), followup.array[0].astype(np.float64)
    fg = b > np.percentile(b, 60) if float(b.min()) >= 0 else np.ones_like(b, bool)

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x[fg].mean()) / max(float(x[fg].std()), 1e-6)

    out = baseline.with_array((z(f) - z(b)).astype(np.float32)[None], is_label=False)
    out.meta.description = "follow-up minus baseline (z-scores in the baseline foreground)"
    return out


def _png(baseline: Image, followup: Image, diff: Image, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpipe.io.atomic import atomic_path
    from medpipe.transforms import reorient

    vols = [reorient(v, "RAS").image.array[0] for v in (baseline, followup, diff)]
    c = [n // 2 for n in vols[0].shape]
    cuts = [lambda a: a[:, :, c[2]].T, lambda a: a[:, c[1], :].T, lambda a: a[c[0], :, :].T]
    lo, hi = np.percentile(vols[0], [1, 99])
    lim = float(np.percentile(np.abs(vols[2]), 99.5)) or 1.0
    fig, axes = plt.subplots(3, 3, figsize=(9, 9), facecolor="black")
    for r, (vol, title) in enumerate(zip(vols, ("baseline", "follow-up (aligned)", "difference"), strict=True)):
        for k, cut in enumerate(cuts):
            ax = axes[r, k]
            if r < 2:
                ax.imshow(cut(vol)[::1, ::-1] if k < 2 else cut(vol), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            else:
                ax.imshow(cut(vol)[::1, ::-1] if k < 2 else cut(vol), cmap="coolwarm", vmin=-lim, vmax=lim,
                          origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, color="white")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black", format="png")
    plt.close(fig)
    return path


@register_stage
class Difference(Stage):
    kind = "difference"
    description = "follow-up minus baseline on the baseline grid (z-scored), plus a PNG"

    class Params(StageParams):
        file: str = "difference.png"

    inputs = {"baseline": ImageArtifact, "followup": ImageArtifact}
    outputs = {"image": ImageArtifact, "files": FilesArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        diff = difference_map(inputs["baseline"], inputs["followup"])
        png = _png(inputs["baseline"], inputs["followup"], diff, ctx.workdir / Path(self.params.file).name)
        return {"image": diff, "files": {"preview": png}}
