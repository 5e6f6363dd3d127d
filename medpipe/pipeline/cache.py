"""Content hashes that decide whether a stage must run again.

A stage's cache key is a hash of everything its result depends on: its kind, its
resolved parameters (canonical JSON), the hashes of its input artifacts' files, the
medpipe version and the stage class's optional ``version`` attribute. Artifacts are
hashed by content (blake2b, streamed), so a stage whose upstream re-ran but produced
byte-identical files stays cached. Study inputs are hashed by content too: a DICOM
folder that changed in any byte gets a new hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["hash_file", "hash_files", "hash_study", "hash_external", "stage_key"]

_CHUNK = 1 << 20


def _new() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def _update_file(h: hashlib.blake2b, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def hash_file(path: str | Path) -> str:
    h = _new()
    _update_file(h, Path(path))
    return h.hexdigest()


def _all_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def hash_files(paths: Iterable[str | Path], root: str | Path) -> str:
    """One hash over files (and folders, recursively) named relative to ``root``."""
    root = Path(root)
    h = _new()
    files: list[Path] = []
    for p in paths:
        files.extend(_all_files(Path(p)))
    for f in sorted(set(files)):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        _update_file(h, f)
        h.update(b"\0")
    return h.hexdigest()


def hash_study(path: str | Path) -> str:
    """Content hash of a study: a file's bytes, or every file of a folder with its relative path.

    Hidden files (``.DS_Store``, ``._*``) are left out so copying a study between
    machines does not change its hash.
    """
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    files = [f for f in _all_files(path) if not any(part.startswith(".") for part in f.relative_to(path).parts)]
    return hash_files(files, path)


_EXTERNAL: dict[tuple, str] = {}


def hash_external(path: str | Path) -> str:
    """Content hash of a file or folder outside the run (a bundle), memoised per process on
    every file's (path, size, mtime): several stages name the same bundle, and a large one
    should be read once per run, not once per stage."""
    root = Path(path)
    files = _all_files(root)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _EXTERNAL:
        _EXTERNAL[stamp] = hash_files(files, root if root.is_dir() else root.parent)
    return _EXTERNAL[stamp]


def stage_key(
    kind: str,
    params: dict[str, Any],
    input_hashes: dict[str, str],
    medpipe_version: str,
    stage_version: str | None = None,
    external_hashes: Sequence[str] | None = None,
) -> str:
    """The cache key of one stage run (``external_hashes``: content hashes of files outside
    the run it depends on, such as a model bundle — never their paths, so the same bundle
    installed at another place keys the same)."""
    doc = {
        "kind": kind,
        "params": params,
        "inputs": input_hashes,
        "medpipe": medpipe_version,
        "stage_version": stage_version,
        "external": list(external_hashes or []),
    }
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canon.encode(), digest_size=16).hexdigest()
