"""One command from nothing to the shipped brain registration bundle.

    python -m medpipe.registration.recipe configs/train_brain_micdir.yaml -o medpipe/bundles/brain_micdir

The YAML's ``dataset:`` section builds the training folder from data that installs offline
(``generator: brains`` — the MNI152 2009a template and its GM/WM labels from nilearn's
wheel, resampled to ``spacing``; ``generator: phantoms`` — MR brain phantoms), its
``training:`` section is a :class:`RegTrainConfig`. Work files go to ``<out>.work``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medpipe.errors import InputError
from medpipe.training.recipe import read_recipe, recipe_main

__all__ = ["build_dataset", "run_recipe", "main"]


def build_dataset(spec: dict[str, Any], folder: Path) -> Path:
    """Write the training images (and ``labels/``) described by ``spec`` into ``folder``."""
    spec = dict(spec)
    kind = spec.pop("generator", "brains")
    if (folder / ".complete").exists():
        return folder
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    if kind == "brains":
        from medpipe.data.brains import mni152

        t1, tissue = mni152(spacing=float(spec.pop("spacing", 2.0)))
        t1.save(folder / "mni152.nii.gz")
        tissue.save(folder / "labels" / "mni152.nii.gz")
    elif kind == "phantoms":
        from medpipe.data.phantoms import mr_brain_phantom

        shape = tuple(spec.pop("shape", (48, 48, 40)))
        for k in range(int(spec.pop("cases", 4))):
            img, lab = mr_brain_phantom(shape, (2.0, 2.0, 2.0), seed=int(spec.get("seed", 0)) + k, vary=True)
            img.save(folder / f"phantom_{k:02d}.nii.gz")
            lab.save(folder / "labels" / f"phantom_{k:02d}.nii.gz")
        spec.pop("seed", None)
    else:
        raise InputError(f"recipe dataset.generator must be 'brains' or 'phantoms', got {kind!r}")
    if spec:
        raise InputError(f"recipe dataset section has unknown keys: {', '.join(spec)}")
    (folder / ".complete").write_text("")
    return folder


def run_recipe(config: str | Path, out: str | Path, overrides: dict[str, Any] | None = None, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    from medpipe.registration.training import RegTrainConfig, train_registration

    config, out = Path(config), Path(out)
    doc = read_recipe(config)
    train = dict(doc.get("training") or {})
    train.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        cfg = RegTrainConfig.model_validate(train)
    except Exception as exc:
        raise InputError(f"recipe {config}: training section: {str(exc).splitlines()[0:3]}") from exc
    work = Path(f"{out}.work")
    t0 = time.perf_counter()
    ds = build_dataset(doc.get("dataset") or {}, work / "dataset")
    result = train_registration(ds, out, cfg, work_dir=work, resume=resume, overwrite=overwrite or resume,
                                progress=progress)
    return {"bundle": str(result.bundle), "total_seconds": round(time.perf_counter() - t0, 1),
            "evaluation": result.evaluation}


def main(argv: list[str] | None = None) -> int:
    return recipe_main(argv, "python -m medpipe.registration.recipe", __doc__.splitlines()[0], run_recipe,
                       lambda info: f"bundle {info['bundle']}: {info['total_seconds']:.0f} s total; "
                                    f"validation {info['evaluation']}")


if __name__ == "__main__":
    raise SystemExit(main())
