"""``mri_report``: the MRI job's one-page report, as PNG and PDF.

What a reader checks first, on one page: the reconstruction beside the zero-filled image it
improved on (with SSIM/PSNR against the fully sampled reference when there is one), the
segmentation and the atlas regions over the reconstruction on the slice through the lesion
(the middle slice when there is none), and the numbers: tissue and lesion volumes, and
where the lesion lies (ml per atlas region, largest first). Both files are written without
creation dates, so the same study gives the same bytes under every engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact, LabelArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages._labels import label_colors, present_labels

__all__ = ["MriReport", "render_mri_report"]


def _axial(image: Image) -> tuple[np.ndarray, float]:
    """(volume reoriented to RAS, row/column aspect of an axial slice)."""
    from medpipe.transforms import reorient

    ras = reorient(image, "RAS").image
    return ras.array[0], ras.spacing[1] / ras.spacing[0]


def _overlay_rgba(labels: np.ndarray, image: Image) -> np.ndarray:
    values = present_labels(image)
    colors = label_colors(image, values)
    table = np.zeros((max([int(labels.max(initial=0)), *values]) + 1, 4), np.float32)
    for v in values:
        table[v, :3] = np.asarray(colors[v]) / 255.0
        table[v, 3] = 0.5
    return table[labels]


def _lesion_slice(arr: np.ndarray, lesion_value: int | None) -> int:
    """The axial slice (of the RAS label volume ``arr``) holding the most lesion, else the middle one."""
    hits = np.argwhere(arr == lesion_value) if lesion_value is not None else np.empty((0, 3))
    if len(hits):
        return int(np.bincount(hits[:, 2]).argmax())  # the slice holding the most lesion
    return arr.shape[2] // 2


def _table_lines(statistics: dict[str, Any], regions: dict[str, Any] | None, recon: dict[str, Any] | None) -> list[str]:
    lines = ["Volumes (segmentation of the reconstruction)"]
    for name, row in statistics.get("structures", {}).items():
        lines.append(f"  {name:<22}{row['volume_ml']:>10.2f} ml")
    if regions:
        for name, row in regions.get("structures", {}).items():
            if name != "lesion" or not row["volume_ml"]:
                continue
            lines.append("")
            lines.append(f"Lesion by atlas region ({row['volume_ml']:.2f} ml)")
            for part in row["where"][:6]:
                lines.append(f"  {part['region']:<22}{part['volume_ml']:>10.2f} ml {100 * part['fraction']:5.1f} %")
            if row.get("outside_regions_ml"):
                lines.append(f"  {'outside the atlas':<22}{row['outside_regions_ml']:>10.2f} ml")
    if recon and recon.get("methods"):
        lines.append("")
        lines.append(f"Reconstruction vs fully sampled ({recon.get('acceleration', 0):.1f}x)")
        for method, m in recon["methods"].items():
            lines.append(f"  {method:<14}SSIM {m['ssim']:.3f}  PSNR {m['psnr']:5.1f} dB")
    return lines


def render_mri_report(out_dir: Path, reconstruction: Image, labels: Image, regions: Image | None,
                      statistics: dict[str, Any], region_table: dict[str, Any] | None = None,
                      zero_filled: Image | None = None, recon_table: dict[str, Any] | None = None,
                      title: str = "", stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (one A4 landscape page) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpipe.io.atomic import atomic_path

    for name, other in (("segmentation", labels), ("atlas regions", regions), ("zero-filled image", zero_filled)):
        if other is not None and not other.same_grid(reconstruction):
            raise GeometryError(f"mri_report: the {name} (shape {other.shape}) is not on the reconstruction's grid "
                                f"(shape {reconstruction.shape})")
    names = {int(k): v for k, v in (labels.meta.extra.get("labels") or {}).items()}
    lesion = next((k for k, v in names.items() if v == "lesion"), None)
    seg_ras = _axial(labels)[0]
    k = _lesion_slice(seg_ras, lesion)
    recon, aspect = _axial(reconstruction)
    hi = float(np.percentile(recon, 99.5)) or 1.0

    def view(a: np.ndarray) -> np.ndarray:  # radiological: the patient's right on the viewer's left
        return a[::-1, :, k].T

    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    methods = (recon_table or {}).get("methods", {})

    def caption(what: str, method: str) -> str:
        m = methods.get(method)
        return f"{what}\nSSIM {m['ssim']:.3f}  PSNR {m['psnr']:.1f}" if m else what

    if zero_filled is not None:
        panels.append((caption("zero-filled", "zero_filled"), view(_axial(zero_filled)[0]), None))
    method = reconstruction.meta.extra.get("recon", {}).get("method", "reconstruction")
    panels.append((caption(method.upper() if method == "cirim" else method, method), view(recon), None))
    seg_view = view(seg_ras)
    panels.append(("segmentation", view(recon), seg_view.astype(np.int64)))
    if regions is not None:
        panels.append(("atlas regions", view(recon), view(_axial(regions)[0]).astype(np.int64)))
    # crop every panel to the brain on this slice (its labels, a margin of 6 % of the field of view)
    if seg_view.any():
        rows, cols = np.nonzero(seg_view)
        pad = int(0.06 * max(seg_view.shape))
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, seg_view.shape[0])
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, seg_view.shape[1])
        panels = [(cap, img[r0:r1, c0:c1], None if lab is None else lab[r0:r1, c0:c1]) for cap, img, lab in panels]
    fig = plt.figure(figsize=(11.69, 8.27), dpi=100, facecolor="white")
    fig.suptitle(title or "medpipe MRI brain report", fontsize=13, x=0.02, ha="left")
    width = 0.96 / len(panels)
    for n, (cap, img, lab) in enumerate(panels):
        ax = fig.add_axes([0.02 + n * width, 0.47, width - 0.01, 0.44])
        ax.imshow(img, cmap="gray", vmin=0, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        if lab is not None:
            ax.imshow(_overlay_rgba(lab, labels if cap == "segmentation" else regions), origin="lower",
                      aspect=aspect, interpolation="nearest")
        ax.set_title(cap, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="yellow", fontsize=9, va="center")
        ax.text(0.98, 0.5, "L", transform=ax.transAxes, color="yellow", fontsize=9, va="center", ha="right")
    lines = _table_lines(statistics, region_table, recon_table)
    half = (len(lines) + 1) // 2 if len(lines) > 22 else len(lines)
    for col, chunk in enumerate((lines[:half], lines[half:])):
        if chunk:
            fig.text(0.03 + 0.48 * col, 0.42, "\n".join(chunk), family="monospace", fontsize=8.5, va="top")
    fig.text(0.02, 0.015, f"axial slice {k} (RAS), radiological view; synthetic-data bundles, not for clinical use",
             fontsize=7, color="gray")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"png": out_dir / f"{stem}.png", "pdf": out_dir / f"{stem}.pdf"}
    with atomic_path(files["png"]) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    with atomic_path(files["pdf"]) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return files


@register_stage
class MriReport(Stage):
    kind = "mri_report"
    description = "one-page PNG + PDF: reconstruction vs zero-filled, segmentation and atlas overlays, volume table"

    class Params(StageParams):
        name: str = "report"

    inputs = {"reconstruction": ImageArtifact, "labels": LabelArtifact, "regions": LabelArtifact,
              "statistics": TableArtifact, "region_volumes": TableArtifact, "zero_filled": ImageArtifact,
              "recon_metrics": TableArtifact}
    optional_inputs = frozenset({"regions", "region_volumes", "zero_filled", "recon_metrics"})
    outputs = {"files": FilesArtifact}
    resources = StageResources(threads=1, mem_mb=2000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        files = render_mri_report(ctx.workdir, inputs["reconstruction"], inputs["labels"], inputs.get("regions"),
                                  inputs["statistics"], inputs.get("region_volumes"), inputs.get("zero_filled"),
                                  inputs.get("recon_metrics"), title=f"medpipe MRI brain report: {ctx.study}",
                                  stem=Path(self.params.name).name)
        return {"files": files}
