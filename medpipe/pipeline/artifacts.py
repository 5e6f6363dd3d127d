"""Artifact types: what flows between stages, and its file form.

Every artifact has a file form (NIfTI + JSON sidecar for images, JSON for tables, a
manifest for produced files) so any stage can run in its own process: that is what lets
Snakemake and Airflow schedule stages on other machines. A stage declares its inputs
and outputs with these types; the graph checks that connected ports agree.

The file form is exact: ``load(save(x))`` is what every consumer sees, whether it runs
in the same process (``medpipe run`` keeps ``canonical(x)``, the same value without
re-reading the files) or in another one (``medpipe stage``). That is what makes a run
directory byte-identical under every engine. NIfTI keeps the affine as float32, so
the image sidecar carries the exact float64 affine too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medpipe.errors import PipelineError
from medpipe.image import Image, ImageMeta

__all__ = [
    "Artifact",
    "ImageArtifact",
    "LabelArtifact",
    "TableArtifact",
    "FilesArtifact",
    "StudyInputArtifact",
    "FieldArtifact",
    "KSpaceArtifact",
    "ARTIFACT_TYPES",
]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_default_lenient(o: Any) -> Any:
    """For records (run.json): numpy values stay numbers, anything else unknown becomes text."""
    try:
        return _json_default(o)
    except TypeError:
        return str(o)


def dump_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, sort_keys=False) + "\n")


class Artifact:
    """An artifact type: a name, how to check a value, how to save/load it under a stem."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        raise NotImplementedError

    @classmethod
    def save(cls, value: Any, stem: Path) -> list[Path]:
        """Write ``value`` to files named ``stem.*``; return the files written."""
        raise NotImplementedError

    @classmethod
    def load(cls, stem: Path) -> Any:
        raise NotImplementedError

    @classmethod
    def canonical(cls, value: Any) -> Any | None:
        """What ``load(save(value))`` returns, computed without the files, or None when the
        only exact way is to read them back (the runner then does)."""
        return None

    @classmethod
    def has_file_form(cls) -> bool:
        """True when the type can be saved and loaded (engines need it: every stage of theirs
        runs in its own process)."""
        return cls.save.__func__ is not Artifact.save.__func__ and cls.load.__func__ is not Artifact.load.__func__

    @classmethod
    def accepts(cls, other: type[Artifact]) -> bool:
        """May an output of type ``other`` feed an input of this type?"""
        return issubclass(other, cls)


class ImageArtifact(Artifact):
    name = "image"
    description = "an Image (NIfTI + JSON sidecar with metadata)"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        if not isinstance(value, Image):
            raise PipelineError(f"{where} must be an Image, got {type(value).__name__}")

    @classmethod
    def save(cls, value: Image, stem: Path) -> list[Path]:
        nii = stem.with_name(stem.name + ".nii.gz")
        meta = stem.with_name(stem.name + ".meta.json")
        value.to_nibabel().to_filename(str(nii))
        dump_json(
            {"meta": value.meta.to_dict(), "is_label": value.is_label, "dtype": str(value.array.dtype),
             "affine": np.asarray(value.affine, dtype=np.float64).tolist()},
            meta,
        )
        return [nii, meta]

    @classmethod
    def load(cls, stem: Path) -> Image:
        import nibabel as nib

        nii = stem.with_name(stem.name + ".nii.gz")
        side = json.loads(stem.with_name(stem.name + ".meta.json").read_text())
        img = nib.load(str(nii))
        out = Image.from_nibabel(img, ImageMeta.from_dict(side["meta"]), bool(side["is_label"]))
        if str(out.array.dtype) != side["dtype"]:
            out = out.with_array(out.array.astype(side["dtype"]))
        exact = np.asarray(side.get("affine", out.affine), dtype=np.float64)
        # the sidecar's exact affine, unless the NIfTI was changed since (then the file wins)
        if exact.shape == (4, 4) and np.allclose(exact, out.affine, rtol=1e-6, atol=1e-4):
            out.affine = exact
        return out

    @classmethod
    def canonical(cls, value: Image) -> Image:
        meta = ImageMeta.from_dict(json.loads(json.dumps(value.meta.to_dict(), default=_json_default)))
        return Image(value.array, np.array(value.affine, dtype=np.float64), meta, value.is_label)


class LabelArtifact(ImageArtifact):
    name = "labels"
    description = "an integer label map Image"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        super().check(value, where)
        if not value.is_label:
            raise PipelineError(f"{where} must be a label map (Image with is_label=True)")


class TableArtifact(Artifact):
    name = "table"
    description = "a JSON-serialisable dict (statistics, DICOM references, reports)"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise PipelineError(f"{where} must be a dict, got {type(value).__name__}")

    @classmethod
    def save(cls, value: dict, stem: Path) -> list[Path]:
        p = stem.with_name(stem.name + ".json")
        dump_json(value, p)
        return [p]

    @classmethod
    def load(cls, stem: Path) -> dict:
        return json.loads(stem.with_name(stem.name + ".json").read_text())

    @classmethod
    def canonical(cls, value: dict) -> dict:
        return json.loads(json.dumps(value, default=_json_default))


class FilesArtifact(Artifact):
    """Files a stage produced in its work folder (PNG, DICOM SEG, exported NIfTI...).

    The value is a ``dict[str, Path]`` (role -> file). Saving copies the files into the
    artifact folder ``stem/`` so the run directory owns them.
    """

    name = "files"
    description = "named files produced by a stage"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        if not isinstance(value, dict) or not all(isinstance(v, (str, Path)) for v in value.values()):
            raise PipelineError(f"{where} must be a dict of role -> file path")
        for role, p in value.items():
            if not Path(p).exists():
                raise PipelineError(f"{where}: file for {role!r} does not exist: {p}")

    @classmethod
    def save(cls, value: dict, stem: Path) -> list[Path]:
        folder = stem.with_name(stem.name + ".files")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {}
        written = []
        for role, p in value.items():
            p = Path(p)
            dst = folder / p.name
            if p.resolve() != dst.resolve():
                if p.is_dir():
                    shutil.copytree(p, dst, dirs_exist_ok=True)
                else:
                    shutil.copy2(p, dst)
            manifest[role] = dst.name
            written.append(dst)
        m = folder / "manifest.json"
        dump_json(manifest, m)
        return [*written, m]

    @classmethod
    def load(cls, stem: Path) -> dict[str, Path]:
        folder = stem.with_name(stem.name + ".files")
        manifest = json.loads((folder / "manifest.json").read_text())
        return {role: folder / name for role, name in manifest.items()}


class StudyInputArtifact(Artifact):
    """The study a run was started on (a DICOM folder, a zip or a NIfTI file).

    The runner provides it as the pseudo-output ``input.study``; a pipeline feeds it to
    its ingestion stage with ``inputs: {study: input.study}``. The value is the study's
    ``Path``; stages read from it and never write to it.
    """

    name = "study"
    description = "the path of the study the run was started on (read-only)"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        if not isinstance(value, (str, Path)):
            raise PipelineError(f"{where} must be a path, got {type(value).__name__}")
        if not Path(value).exists():
            raise PipelineError(f"{where}: study {value} does not exist")

    @classmethod
    def save(cls, value: str | Path, stem: Path) -> list[Path]:
        p = stem.with_name(stem.name + ".json")
        dump_json({"path": str(Path(value).resolve())}, p)
        return [p]

    @classmethod
    def load(cls, stem: Path) -> Path:
        return Path(json.loads(stem.with_name(stem.name + ".json").read_text())["path"])


class FieldArtifact(Artifact):
    """A dense displacement field (``medpipe.registration.DisplacementField``): a NIfTI vector
    image in LPS mm, the form ITK, ANTs and 3D Slicer read as a displacement transform, plus
    a JSON sidecar (method, affine pre-alignment)."""

    name = "field"
    description = "a displacement field on the fixed grid (NIfTI vector image, LPS mm + JSON sidecar)"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        from medpipe.registration.field import DisplacementField

        if not isinstance(value, DisplacementField):
            raise PipelineError(f"{where} must be a DisplacementField, got {type(value).__name__}")

    @classmethod
    def save(cls, value: Any, stem: Path) -> list[Path]:
        nii = stem.with_name(stem.name + ".nii.gz")
        meta = stem.with_name(stem.name + ".meta.json")
        value.save(nii)
        dump_json(value.meta, meta)
        return [nii, meta]

    @classmethod
    def load(cls, stem: Path) -> Any:
        from medpipe.registration.field import DisplacementField

        out = DisplacementField.load(stem.with_name(stem.name + ".nii.gz"))
        out.meta = json.loads(stem.with_name(stem.name + ".meta.json").read_text())
        return out



class KSpaceArtifact(Artifact):
    """Multi-coil k-space with mask and geometry (``medpipe.io.kspace.KSpace``), as medpipe HDF5."""

    name = "kspace"
    description = "multi-coil k-space + sampling mask + acquisition geometry (HDF5)"

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        from medpipe.io.kspace import KSpace

        if not isinstance(value, KSpace):
            raise PipelineError(f"{where} must be KSpace, got {type(value).__name__}")

    @classmethod
    def save(cls, value: Any, stem: Path) -> list[Path]:
        from medpipe.io.kspace import write_kspace

        return [write_kspace(value, stem.with_name(stem.name + ".h5"))]

    @classmethod
    def load(cls, stem: Path) -> Any:
        from medpipe.io.kspace import read_kspace

        return read_kspace(stem.with_name(stem.name + ".h5"))



ARTIFACT_TYPES: dict[str, type[Artifact]] = {
    t.name: t for t in (ImageArtifact, LabelArtifact, TableArtifact, FilesArtifact, StudyInputArtifact, FieldArtifact,
                        KSpaceArtifact)
}
