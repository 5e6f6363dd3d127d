"""What a user may name as a model: a bundle folder, a shipped bundle, or an nnU-Net results folder.

People keep their trained nnU-Net models as results folders; making them run
``medpipe models import-nnunet`` first is one step too many for ``medpipe segment`` and
``--set segment.bundle=...``. An nnU-Net folder given where a bundle is expected is imported
once into ``$MEDPIPE_CACHE/imported/<key>`` (all folds, final checkpoint, native
orientation — nnU-Net's own defaults) and reused while its files are unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from medpipe.models.bundle import CONFIG_FILE, resolve_bundle_path

__all__ = ["resolve_model", "is_nnunet_results"]


def is_nnunet_results(path: Path) -> bool:
    """A trainer folder of nnU-Net v2 results (``plans.json``, ``dataset.json``, ``fold_*``)."""
    return (path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()
            and any(path.glob("fold_*")))


def _key(path: Path) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(str(path.resolve()).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in (".json", ".pth"))):
        st = f.stat()
        h.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def resolve_model(ref: str | Path) -> Path:
    """A bundle folder for ``ref`` (importing an nnU-Net results folder when given one)."""
    path = resolve_bundle_path(ref)
    if (path / CONFIG_FILE).is_file() or not is_nnunet_results(path):
        return path  # a bundle, or a missing/bad path that load_bundle names in its error
    from medpipe.io.atomic import locked
    from medpipe.models.nnunet_import import import_nnunet
    from medpipe.user_cache import user_cache

    target = user_cache("imported", f"{path.name}-{_key(path)}")
    if (target / CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f".{target.name}.lock"):
        if not (target / CONFIG_FILE).is_file():
            import_nnunet(path, target, name=path.parent.name.lower() if path.parent.name else None, overwrite=True)
    return target
