"""Runs whose study lives in a PACS: pull it, run the pipeline, send the DICOM SEG back.

``medpipe run PIPELINE pacs://NAME/studies/UID``, the server's PACS jobs and ``medpipe
pacs watch`` all go through here, so they cache, name and report alike:

- the study is pulled once into ``OUT/.pacs/<StudyInstanceUID>/`` (atomic; a later run of
  the same study reuses it), and the run directory is ``OUT/<StudyInstanceUID>/``;
- after a successful run, the DICOM SEG files the pipeline's ``write`` stages produced are
  stored back into the same PACS, and ``OUT/<study>/pacs.json`` records what was sent
  where (a re-run that changed nothing does not send again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medpipe.io.atomic import atomic_path
from medpipe.io.pacs import PacsError, StudyRef, pull_study, push_files
from medpipe.pipeline.runner import RunResult, output_files_of

__all__ = ["fetch_study", "seg_files", "send_back", "PACS_RECORD"]

PACS_RECORD = "pacs.json"


def fetch_study(ref: StudyRef, out_dir: str | Path) -> tuple[str, Path]:
    """(study name, local folder) of ``ref``, pulled into ``out_dir/.pacs/<uid>/`` unless there."""
    folder = Path(out_dir) / ".pacs" / ref.study_uid
    if not (folder.is_dir() and any(folder.rglob("*.dcm"))):
        pull_study(ref, folder, overwrite=True)
    return ref.study_uid, folder


def seg_files(result: RunResult) -> list[Path]:
    """The DICOM SEG files among the run's result files."""
    files = [f for paths in result.outputs.values() for f in output_files_of(result.run_dir, paths)]
    return sorted(f for f in files if f.suffix.lower() == ".dcm")


def _hash(paths: list[Path]) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def send_back(ref: StudyRef, result: RunResult) -> dict[str, Any]:
    """Store the run's DICOM SEG in ``ref``'s PACS (once per distinct content); the record."""
    from medpipe.pipeline.provenance import now_iso

    if not result.ok:
        raise PacsError(f"study {ref.study_uid} failed, so nothing is sent to {ref.server.label}")
    files = seg_files(result)
    if not files:
        raise PacsError(f"the run of study {ref.study_uid} wrote no DICOM SEG to send to {ref.server.label} "
                        "(does the pipeline's write stage list dicom_seg?)")
    record_path = result.run_dir / PACS_RECORD
    content = _hash(files)
    try:
        previous = json.loads(record_path.read_text())
    except (OSError, ValueError):
        previous = {}
    if previous.get("content_hash") == content and previous.get("server") == ref.server.name:
        return {**previous, "already_sent": True}
    stored = push_files(ref.server, files)
    record = {"server": ref.server.name, "study_uid": ref.study_uid, "sent": now_iso(),
              "files": [str(p.relative_to(result.run_dir)) for p in files], "sop_instance_uids": stored,
              "content_hash": content}
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record
