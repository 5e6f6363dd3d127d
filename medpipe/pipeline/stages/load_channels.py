"""``load_channels``: a multi-contrast study (one file per MR sequence) -> one multi-channel image.

Brain-tumour models take four co-registered contrasts (T1, T1c, T2, FLAIR), which arrive as
separate files: BraTS 2020 names them ``*_t1 / _t1ce / _t2 / _flair``, BraTS 2021+ ``-t1n /
-t1c / -t2w / -t2f``, nnU-Net ``CASE_0000 ... _0003``. The stage finds one file per channel
in the study folder (patterns per channel name, or the bundle's channel names with those
aliases), checks that all sit on the same voxel grid, and stacks them in the bundle's
channel order. A single 4D file with the right number of channels is accepted as is.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import GeometryError, InputError
from medpipe.pipeline.artifacts import ImageArtifact, StudyInputArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, register_stage

__all__ = ["LoadChannels", "CHANNEL_ALIASES", "find_channel_files"]

# file-name patterns (lower case) per channel name: nnU-Net index first, then BraTS 2020 and 2021+ names
CHANNEL_ALIASES: dict[str, list[str]] = {
    "t1": ["*_0000.*", "*[_-]t1.*", "*[_-]t1n.*", "*[_-]t1w.*"],
    "t1c": ["*_0001.*", "*[_-]t1ce.*", "*[_-]t1c.*", "*[_-]t1gd.*"],
    "t2": ["*_0002.*", "*[_-]t2.*", "*[_-]t2w.*"],
    "flair": ["*_0003.*", "*[_-]flair.*", "*[_-]t2f.*"],
}


def _volume_files(folder: Path) -> list[Path]:
    from medpipe.io.volumes import VOLUME_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and any(p.name.lower().endswith(s) for s in VOLUME_SUFFIXES))


def find_channel_files(folder: Path, channels: list[str], patterns: dict[str, list[str]] | None = None) -> list[Path]:
    """One file per channel (in ``channels`` order); an ``InputError`` naming what is missing or ambiguous."""
    files = _volume_files(folder)
    if not files:
        raise InputError(f"study folder {folder} holds no NIfTI/NRRD/MHA volumes")
    chosen = []
    for ch in channels:
        pats = (patterns or {}).get(ch) or CHANNEL_ALIASES.get(ch.lower())
        if not pats:
            raise InputError(f"no file-name pattern for channel {ch!r}; give one with params.patterns "
                             f"(e.g. {{{ch}: ['*{ch.lower()}.nii.gz']}})")
        hits = []
        for pat in pats:  # the first pattern that matches anything decides (nnU-Net index before names)
            hits = [f for f in files if fnmatch.fnmatch(f.name.lower(), pat.lower())]
            if hits:
                break
        if not hits:
            raise InputError(f"study folder {folder}: no file for channel {ch} (looked for {', '.join(pats)}; "
                             f"found {', '.join(f.name for f in files)})")
        if len(hits) > 1:
            raise InputError(f"study folder {folder}: {len(hits)} files match channel {ch} "
                             f"({', '.join(f.name for f in hits)}); give params.patterns to pick one")
        chosen.append(hits[0])
    if len(set(chosen)) != len(chosen):
        raise InputError(f"study folder {folder}: one file matches several channels ({', '.join(f.name for f in chosen)})")
    return chosen


@register_stage
class LoadChannels(Stage):
    kind = "load_channels"
    description = "read one volume per MR contrast (T1, T1c, T2, FLAIR ...) and stack them as channels"

    class Params(StageParams):
        channels: list[str] | None = None  # default: the bundle's channel names
        patterns: dict[str, list[str]] | None = None  # channel -> file-name patterns (case-insensitive)
        bundle: str | None = None

    inputs = {"study": StudyInputArtifact}
    outputs = {"image": ImageArtifact, "source": TableArtifact}

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.volumes import read_volume
        from medpipe.pipeline.stages.load_study import source_table

        p = self.params
        channels = p.channels
        if channels is None and p.bundle:
            from medpipe.models.bundle import load_bundle, resolve_bundle_path

            channels = list(load_bundle(resolve_bundle_path(p.bundle)).config.channels)
        if not channels:
            raise InputError(f"stage {ctx.stage!r} (load_channels) needs params.channels or params.bundle")
        path = Path(inputs["study"])
        if path.is_file():
            image = read_volume(path)
            if image.n_channels != len(channels):
                raise InputError(f"{path} holds {image.n_channels} channel(s) but {len(channels)} are needed "
                                 f"({', '.join(channels)}); pass a folder with one file per contrast")
            files = [path]
        else:
            files = find_channel_files(path, channels, p.patterns)
            vols = [read_volume(f) for f in files]
            first = vols[0]
            for f, v in zip(files[1:], vols[1:], strict=True):
                if v.n_channels != 1:
                    raise InputError(f"{f} holds {v.n_channels} channels; one contrast per file is expected")
                if not first.same_grid(v, atol=1e-3):
                    raise GeometryError(f"{f.name} ({'x'.join(map(str, v.shape))}) is not on the voxel grid of "
                                        f"{files[0].name} ({'x'.join(map(str, first.shape))}); co-register the "
                                        "contrasts first (BraTS data are)")
            image = first.with_array(np.concatenate([v.array.astype(np.float32, copy=False) for v in vols]))
        image.meta.modality = image.meta.modality or "MR"  # T1/T2/FLAIR contrasts are MR by definition
        image.meta.extra["channels"] = list(channels)
        ctx.facts["input"] = {"files": [f.name for f in files], "channels": list(channels), "shape": list(image.shape),
                              "spacing": [round(s, 4) for s in image.spacing], "orientation": image.orientation}
        source = source_table(image, files[0])
        source["files"] = [str(f) for f in files]
        return {"image": image, "source": source}
