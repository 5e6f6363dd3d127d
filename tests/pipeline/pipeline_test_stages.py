"""Stage kinds that exist only for the pipeline-engine tests (registered by conftest, never shipped).

They are small but real: they load NIfTI studies, transform voxels, threshold, count,
and fail or kill their own process on demand, so the runner is exercised end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.pipeline.artifacts import (
    Artifact,
    FilesArtifact,
    ImageArtifact,
    LabelArtifact,
    StudyInputArtifact,
    TableArtifact,
)
from medpipe.pipeline.stage import Stage, StageParams, register_stage

CRASH_MARKER_ENV = "MEDPIPE_TEST_CRASH_MARKER"


def make_volume(seed: int, shape=(32, 32, 32), zero: bool = False) -> np.ndarray:
    """A small NIfTI-ready volume with a bright box (all zeros when ``zero``: t_threshold_segment refuses it)."""
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0, 40, size=shape).astype(np.float32)
    arr[8:20, 10:22, 6:18] += 60.0
    return np.zeros(shape, np.float32) if zero else arr


def write_nifti(path: Path, arr: np.ndarray, spacing=(1.5, 1.0, 2.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(arr, np.diag([*spacing, 1.0])).to_filename(str(path))
    return path


@register_stage
class LoadNifti(Stage):
    kind = "t_load_nifti"
    description = "test: load a NIfTI study (a file, or a folder holding one .nii.gz)"
    inputs = {"study": StudyInputArtifact}
    outputs = {"image": ImageArtifact}

    def run(self, inputs, ctx):
        path = Path(inputs["study"])
        if path.is_dir():
            files = sorted(path.glob("*.nii*"))
            if len(files) != 1:
                raise InputError(f"study folder {path} must hold exactly one NIfTI file, found {len(files)}")
            path = files[0]
        img = nib.load(str(path))
        return {"image": Image.from_nibabel(img).with_array(np.asarray(img.dataobj, dtype=np.float32)[None])}


@register_stage
class Scale(Stage):
    kind = "t_scale"
    description = "test: multiply intensities by a factor"

    class Params(StageParams):
        factor: float = 1.0
        note: str = ""  # does not change the result: for content-addressed caching tests

    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}

    def run(self, inputs, ctx):
        img = inputs["image"]
        out = np.zeros_like(img.array)
        for k in ctx.track(range(img.shape[2]), description="slices"):
            out[..., k] = img.array[..., k] * self.params.factor
        return {"image": img.with_array(out)}


@register_stage
class ThresholdSegment(Stage):
    kind = "t_threshold_segment"
    description = "test: label voxels above a threshold; refuses an empty image"

    class Params(StageParams):
        threshold: float

    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}

    def run(self, inputs, ctx):
        img = inputs["image"]
        if not np.any(img.array):
            raise ValueError("image is all zeros")
        labels = (img.array > self.params.threshold).astype(np.uint8)
        ctx.facts["foreground_voxels"] = int(labels.sum())
        if labels.sum() == 0:
            ctx.warn("no voxel above the threshold")
        return {"labels": img.with_array(labels, is_label=True)}


@register_stage
class CountLabels(Stage):
    kind = "t_count"
    description = "test: count labelled voxels (optionally the mean intensity inside)"
    inputs = {"labels": LabelArtifact, "image": ImageArtifact}
    optional_inputs = frozenset({"image"})
    outputs = {"table": TableArtifact}

    def run(self, inputs, ctx):
        lab = inputs["labels"].array
        table = {"voxels": int((lab > 0).sum())}
        if "image" in inputs:
            table["mean_inside"] = float(inputs["image"].array[lab > 0].mean()) if lab.any() else 0.0
        return {"table": table}


@register_stage
class CrashOnMarker(Stage):
    kind = "t_crash_on_marker"
    description = "test: kill its own process (os._exit) while the marker file named by an env var exists"
    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}

    def run(self, inputs, ctx):
        (ctx.workdir / "partial.bin").write_bytes(b"half-written")
        marker = os.environ.get(CRASH_MARKER_ENV)
        if marker and Path(marker).exists():
            os._exit(1)
        return {"image": inputs["image"]}


@register_stage
class Raise(Stage):
    kind = "t_raise"
    description = "test: raise InputError with a message (or a plain exception)"

    class Params(StageParams):
        message: str = "boom"
        medpipe_error: bool = True

    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}

    def run(self, inputs, ctx):
        (ctx.workdir / "scratch.txt").write_text("scratch")
        if self.params.medpipe_error:
            raise InputError(self.params.message)
        raise RuntimeError(self.params.message)


@register_stage
class Snapshot(Stage):
    kind = "t_snapshot"
    description = "test: write a text file into the workdir and return it as a files artifact"
    inputs = {"table": TableArtifact}
    outputs = {"files": FilesArtifact}

    def run(self, inputs, ctx):
        p = ctx.workdir / "report.txt"
        p.write_text(f"voxels={inputs['table']['voxels']}\n")
        return {"files": {"report": p}}


BLOCK_MARKER_ENV = "MEDPIPE_TEST_BLOCK_MARKER"


@register_stage
class BlockOnMarker(Stage):
    kind = "t_block_on_marker"
    description = "test: wait (at most 120 s) while the marker file named by an env var exists, then pass the image on"
    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}

    def run(self, inputs, ctx):
        import time

        (ctx.workdir / "partial.bin").write_bytes(b"half-written")
        marker = os.environ.get(BLOCK_MARKER_ENV)
        deadline = time.monotonic() + 120
        while marker and Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return {"image": inputs["image"]}


class InMemoryArtifact(Artifact):
    """test: an artifact type without a file form (engines must refuse to schedule it)."""

    name = "in_memory"

    @classmethod
    def check(cls, value, where):
        return None


@register_stage
class MemoryOnly(Stage):
    kind = "t_memory_only"
    description = "test: outputs an artifact that has no file form"
    inputs = {"image": ImageArtifact}
    outputs = {"blob": InMemoryArtifact}

    def run(self, inputs, ctx):
        return {"blob": object()}
