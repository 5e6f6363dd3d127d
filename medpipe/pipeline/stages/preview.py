"""``preview``: a PNG of three orthogonal slices with the label overlay and a legend.

Slices go through the centroid of the labels (the image centre when there are none) and
are shown the radiological way: axial and coronal with the patient's right on the
viewer's left, anterior / superior at the top, sagittal with anterior on the left; pixel
aspect from the voxel spacing. The volume is first reoriented (exactly, no
interpolation) to RAS so this holds for any storage order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages._labels import label_colors, label_names, present_labels

__all__ = ["Preview", "render_preview"]


def _display_range(image: Image | None, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        return window[0] - window[1] / 2, window[0] + window[1] / 2
    if image is None:
        return 0.0, 1.0
    if image.meta.modality.upper() == "CT" and float(image.array.min()) < -200:
        return -160.0, 240.0  # soft-tissue window (40 / 400)
    lo, hi = np.percentile(image.array[0], [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def render_preview(
    labels: Image,
    image: Image | None,
    path: str | Path,
    *,
    size_px: tuple[int, int] = (1500, 560),
    window: tuple[float, float] | None = None,
    alpha: float = 0.45,
    title: str = "",
) -> Path:
    """Write the preview PNG to ``path`` (exactly ``size_px`` = (width, height) pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from medpipe.io.atomic import atomic_path
    from medpipe.transforms import reorient

    if image is not None and not labels.same_grid(image):
        raise GeometryError(
            f"preview: the label map (shape {labels.shape}) and the image (shape {image.shape}) are not on "
            "the same grid; restore the labels' geometry first"
        )
    lab = reorient(labels, "RAS").image
    img = reorient(image, "RAS").image if image is not None else None
    arr = lab.array[0]
    values = present_labels(labels)
    if values:
        centre = np.round(np.argwhere(arr > 0).mean(axis=0)).astype(int)
    else:
        centre = (np.array(lab.shape) - 1) // 2
    i, j, k = (int(c) for c in centre)
    si, sj, sk = lab.spacing
    # (label slice, image slice, aspect = row spacing / column spacing, axis letters L,R,T,B)
    views = [
        ("axial", (lambda a: a[::-1, :, k].T), sj / si, ("R", "L", "A", "P")),
        ("coronal", (lambda a: a[::-1, j, :].T), sk / si, ("R", "L", "S", "I")),
        ("sagittal", (lambda a: a[i, ::-1, :].T), sk / sj, ("A", "P", "S", "I")),
    ]
    colors = label_colors(labels, values)
    names = label_names(labels, values)
    vmax = max(values, default=1)
    table = np.zeros((vmax + 1, 4))
    for v in values:
        table[v, :3] = np.asarray(colors[v]) / 255.0
        table[v, 3] = 1.0
    cmap = ListedColormap(table)
    lo, hi = _display_range(image, window)

    dpi = 100
    fig = plt.figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, facecolor="black")
    legend_w = 0.2
    for n, (name, take, aspect, letters) in enumerate(views):
        ax = fig.add_axes([n * (1 - legend_w) / 3, 0.02, (1 - legend_w) / 3 - 0.01, 0.88])
        ax.set_facecolor("black")
        if img is not None:
            ax.imshow(take(img.array[0]), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                      interpolation="nearest")
        sl = take(arr)
        overlay = np.where(sl > 0, sl, 0)
        ax.imshow(np.ma.masked_equal(overlay, 0), cmap=cmap, vmin=0, vmax=vmax, origin="lower",
                  aspect=aspect, alpha=alpha if img is not None else 1.0, interpolation="nearest")
        ax.set_title(f"{name}", color="white", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        kw = {"color": "yellow", "fontsize": 10, "transform": ax.transAxes, "fontweight": "bold"}
        ax.text(0.01, 0.5, letters[0], ha="left", va="center", **kw)
        ax.text(0.99, 0.5, letters[1], ha="right", va="center", **kw)
        ax.text(0.5, 0.99, letters[2], ha="center", va="top", **kw)
        ax.text(0.5, 0.01, letters[3], ha="center", va="bottom", **kw)
    handles = [Patch(facecolor=np.asarray(colors[v]) / 255.0, label=f"{v} {names[v]}") for v in values]
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False, labelcolor="white",
                   bbox_to_anchor=(0.995, 0.5))
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor="black", format="png")
    plt.close(fig)
    return Path(path)


@register_stage
class Preview(Stage):
    kind = "preview"
    description = "PNG of three orthogonal slices with the label overlay and a legend"

    class Params(StageParams):
        file: str = "preview.png"
        width: int = 1500
        height: int = 560
        window: tuple[float, float] | None = None  # (centre, width); default: CT soft tissue / percentiles
        alpha: float = 0.45

    inputs = {"labels": LabelArtifact, "image": ImageArtifact}
    optional_inputs = frozenset({"image"})
    outputs = {"files": FilesArtifact}
    resources = StageResources(threads=1, mem_mb=2000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        p = self.params
        out = render_preview(
            inputs["labels"],
            inputs.get("image"),
            ctx.workdir / Path(p.file).name,
            size_px=(p.width, p.height),
            window=p.window,
            alpha=p.alpha,
            title=ctx.study,
        )
        return {"files": {"preview": out}}
