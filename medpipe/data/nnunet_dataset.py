"""Write a synthetic phantom training set in nnU-Net v2's folder format.

Training, fine-tuning and the benchmark scripts need a labelled dataset that exists on
every machine without downloads. nnU-Net's layout is what people already have on disk
(``dataset.json``, ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``), so our
trainer reads that format and this module writes it from the phantoms, with cases that
differ the way real ones do: anatomy, noise, voxel spacing, and storage orientation
(some cases stored LPS like DICOM conversions, some RAS like resampled NIfTI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.brain_study import BRAIN_LABELS, brain_t1_training_case
from medpipe.data.brain_tumour import BRATS_CHANNELS, BRATS_COLORS, BRATS_LABELS, brain_tumour_phantom
from medpipe.data.phantoms import CT_LABELS, MR_LABELS, ct_phantom, mr_brain_phantom
from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.io.atomic import atomic_dir

__all__ = ["write_phantom_dataset", "flip_axes", "PHANTOM_MODALITIES"]

PHANTOM_MODALITIES = {
    "ct": {"make": ct_phantom, "labels": CT_LABELS, "channel": "CT", "shape": (136, 112, 104), "spacing": (3.0, 3.0, 3.0)},
    "mr": {"make": mr_brain_phantom, "labels": MR_LABELS, "channel": "T1", "shape": (64, 64, 48), "spacing": (1.0, 1.0, 1.5)},
    # BraTS-like glioma: four co-registered contrasts, labels 1 NCR / 2 ED / 3 ET
    "brats": {"make": brain_tumour_phantom, "labels": BRATS_LABELS, "channels": BRATS_CHANNELS, "shape": (64, 64, 48),
              "spacing": (2.0, 2.0, 2.0)},
    # real T1 brains (MNI152, Colin27) warped, with a lesion: labels 1 GM / 2 WM / 3 lesion (the MRI job's bundle)
    "brain_t1": {"make": brain_t1_training_case, "labels": BRAIN_LABELS, "channel": "T1", "shape": (80, 96, 80),
                 "spacing": (2.0, 2.0, 2.0)},
}  # fmt: skip


def flip_axes(image: Image, axes: tuple[int, ...]) -> Image:
    """Same voxels in the same world positions, stored with ``axes`` reversed."""
    arr = image.array
    aff = image.affine.copy()
    for ax in axes:
        arr = np.flip(arr, axis=ax + 1)
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (image.shape[ax] - 1)
        aff[:3, ax] = -aff[:3, ax]
    return image.with_geometry(np.ascontiguousarray(arr), aff)


def _case(modality: str, index: int, seed: int, shape: tuple[int, int, int] | None,
          spacing: tuple[float, float, float] | None = None) -> tuple[Image, Image]:
    spec = PHANTOM_MODALITIES[modality]
    rng = np.random.default_rng([seed, index, 5])
    spacing = tuple(float(f"{s * rng.uniform(0.9, 1.1):.3f}") for s in (spacing or spec["spacing"]))
    img, seg = spec["make"](shape or spec["shape"], spacing, seed=seed * 100_003 + index, vary=True)
    if index % 2 == 1:  # every other case stored RAS instead of LPS
        img, seg = flip_axes(img, (0, 1)), flip_axes(seg, (0, 1))
    return img, seg


def write_phantom_dataset(
    folder: str | Path,
    cases: int = 10,
    *,
    seed: int = 0,
    modality: str = "ct",
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    preview: bool = True,
    labels: str = "phantom",
) -> dict[str, Any]:
    """Write ``cases`` varied phantom cases + dataset.json into ``folder`` (atomically).

    ``shape`` and ``spacing`` (mm, jittered +-10 % per case) default to the modality's; the CT
    anatomy has physical sizes, so their product is the field of view. ``labels="synapse"``
    (CT only) renumbers the organs as the Synapse 2D benchmarks do (``medpipe.data.synapse``)."""
    from medpipe.io.volumes import write_volume

    modality = modality.lower()
    if modality not in PHANTOM_MODALITIES:
        raise InputError(f"phantom modality must be one of {', '.join(PHANTOM_MODALITIES)}, got {modality!r}")
    if cases < 1:
        raise InputError(f"a phantom dataset needs at least one case, got --cases {cases}")
    spec = PHANTOM_MODALITIES[modality]
    names = spec["labels"]
    if labels == "synapse":
        from medpipe.data.synapse import SYNAPSE_LABELS

        if modality != "ct":
            raise InputError("Synapse label numbering is for CT phantoms")
        names = SYNAPSE_LABELS
    elif labels != "phantom":
        raise InputError(f"phantom labels must be 'phantom' or 'synapse', got {labels!r}")
    folder = Path(folder)
    case_ids = [f"phantom_{i:03d}" for i in range(cases)]
    dataset_json = {
        "name": f"medpipe {modality.upper()} phantoms",
        "description": "Synthetic phantoms written by `medpipe data phantoms` (no patient data).",
        "channel_names": {str(c): name for c, name in enumerate(spec.get("channels", [spec.get("channel")]))},
        "labels": {"background": 0, **{name: int(k) for k, name in names.items()}},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "licence": "CC0 (synthetic)",
        "medpipe": {"generator": f"medpipe.data.phantoms.{spec['make'].__name__}", "seed": seed},
    }
    with atomic_dir(folder, overwrite=overwrite) as tmp, _progress(progress) as bar:
        task = bar.add_task(f"writing {cases} {modality.upper()} phantom cases", total=cases) if bar else None
        first: list[tuple[Image, Image]] = []
        for i, case_id in enumerate(case_ids):
            img, seg = _case(modality, i, seed, shape, spacing)
            if names is not spec["labels"]:
                from medpipe.data.synapse import relabel_by_name

                seg = relabel_by_name(seg, spec["labels"], names)
            for c in range(img.n_channels):  # nnU-Net: one file per channel, CASE_XXXX
                write_volume(img.with_array(img.array[c:c + 1]), tmp / "imagesTr" / f"{case_id}_{c:04d}.nii.gz")
            write_volume(seg, tmp / "labelsTr" / f"{case_id}.nii.gz")
            if len(first) < 4:
                first.append((img, seg))
            if bar:
                bar.advance(task)
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        if preview:
            _write_preview(first, names, modality, tmp / "preview.png")
    return {"folder": folder, "cases": case_ids, "dataset_json": dataset_json}


class _progress:
    """A rich progress bar when asked for, else nothing (context manager yielding the bar or None)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self.bar

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()


def _write_preview(pairs: list[tuple[Image, Image]], labels: dict[int, str], modality: str, path: Path) -> None:
    """Mid-axial slice of the first cases with label contours, displayed radiologically (patient right on the left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpipe.data.phantoms import CT_COLORS, MR_COLORS

    tables = ((CT_COLORS, CT_LABELS), (MR_COLORS, MR_LABELS), (BRATS_COLORS, BRATS_LABELS))
    by_name = {n: c for table, lab in tables for k, n in lab.items() for c in [table[k]]}
    colors = {k: by_name.get(n, (120, 200, 255)) for k, n in labels.items()}
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3.4), squeeze=False)
    for ax, (img, seg) in zip(axes[0], pairs, strict=True):
        stored = img.orientation
        # Show in LPS storage so every case looks the same regardless of how it is stored.
        if stored[:2] == "RA":
            img, seg = flip_axes(img, (0, 1)), flip_axes(seg, (0, 1))
        k = img.shape[2] // 2
        if modality == "brats":  # the slice through the lesion, on FLAIR (the last channel)
            k = int(np.argwhere(seg.array[0] > 0)[:, 2].mean()) if seg.array.any() else k
        ch = img.n_channels - 1
        lo, hi = (-200, 300) if modality == "ct" else np.percentile(img.array[ch], [1, 99.5])
        ax.imshow(img.array[ch, :, :, k].T, cmap="gray", vmin=lo, vmax=hi)
        for lab in labels:
            mask = seg.array[0, :, :, k].T == lab
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[np.array(colors[lab]) / 255.0], linewidths=0.8)
        ax.set_title(f"{stored}-stored, {'x'.join(f'{s:.2f}' for s in img.spacing)} mm", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
