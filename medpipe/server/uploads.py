"""Uploaded studies: size-limited, checked, and stored under names the server chooses.

What a client sends is untrusted. So:

- the body size is limited before anything is parsed (:class:`BodyLimit`, an ASGI
  middleware: ``Content-Length`` over the limit is refused at once, a chunked body is
  counted and cut off);
- the uploaded file name only decides the *kind* (``.nii``/``.nii.gz``/``.nrrd``/``.zip``, or
  ``.h5``/``.hdf5`` raw k-space); the file is stored as ``input.<suffix>`` in a fresh folder,
  so ``../`` or absolute names never become paths; the name is kept, sanitised, for display
  and as the study's name (``study_name``: what ``medpipe run`` would call the same file);
- the content must match the kind (magic bytes, then a real read of the header / the zip's
  directory and its DICOM series), a zip may not claim more unpacked bytes than the limit
  (a zip bomb), and it is never extracted (medpipe reads zip members in memory);
- anything refused is deleted before the 4xx answer: nothing is left behind.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["UploadRejected", "BodyLimit", "store_upload", "display_name", "study_name", "UPLOAD_KINDS"]

# upload suffix -> stored file name
UPLOAD_KINDS = {".nii.gz": "input.nii.gz", ".nii": "input.nii", ".nrrd": "input.nrrd", ".zip": "input.zip",
                ".h5": "input.h5", ".hdf5": "input.hdf5"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CHUNK = 1 << 20


class UploadRejected(Exception):
    """An upload the server refuses: HTTP ``status`` and one sentence for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def display_name(name: str | None) -> str:
    """The upload's base name with anything odd replaced; for messages and job records only."""
    base = re.split(r"[\\/]", name or "")[-1]
    return (re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .") or "upload")[:120]


def study_name(name: str | None) -> str:
    """The study name a job's run folder gets: the upload's base name without its suffix, as
    ``medpipe run`` names the same file (so both publish the same artifacts), ``study`` when
    nothing usable is left."""
    base = display_name(name)
    low = base.lower()
    for suffix in UPLOAD_KINDS:
        if low.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).strip("._")
    return base[:80] or "study"


def _kind(name: str) -> str:
    low = name.lower()
    for suffix in UPLOAD_KINDS:
        if low.endswith(suffix):
            return suffix
    raise UploadRejected(415, f"upload {display_name(name)!r}: expected a NIfTI (.nii, .nii.gz), NRRD (.nrrd), "
                              "zipped DICOM series (.zip) or k-space HDF5 (.h5, .hdf5) file")


def _check_magic(path: Path, kind: str, shown: str) -> None:
    head = path.read_bytes()[:352] if path.stat().st_size < 352 else _head(path, 352)
    ok = {
        ".nii.gz": head[:2] == b"\x1f\x8b",
        ".nii": len(head) >= 348 and (head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00")
                                      or head[4:8] in (b"n+2\x00",)),
        ".nrrd": head[:4] == b"NRRD",
        ".zip": head[:4] == b"PK\x03\x04",
        ".h5": head[:8] == _HDF5_MAGIC,
        ".hdf5": head[:8] == _HDF5_MAGIC,
    }[kind]
    if not ok:
        raise UploadRejected(422, f"upload {shown!r} is not a {kind} file (its first bytes do not match)")


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _check_zip(path: Path, shown: str, unzipped_limit: int) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadRejected(422, f"upload {shown!r} is not a readable zip archive ({exc})") from None
    total = sum(i.file_size for i in infos)
    if total > unzipped_limit:
        raise UploadRejected(413, f"upload {shown!r} unpacks to {total / 2**20:.0f} MiB, over the server's limit "
                                  f"of {unzipped_limit / 2**20:.0f} MiB")
    from medpipe.errors import MedpipeError
    from medpipe.io.dicom import scan_study

    try:
        scan = scan_study(path)
        scan.require_images()
    except MedpipeError as exc:
        raise UploadRejected(422, f"upload {shown!r}: {str(exc).replace(str(path), 'the archive')}") from None
    return {"kind": "dicom", "series": len(scan.series), "members": len(infos)}


def _check_volume(path: Path, shown: str) -> dict[str, Any]:
    from medpipe.errors import MedpipeError
    from medpipe.io.volumes import read_volume

    try:
        img = read_volume(path)
    except MedpipeError as exc:
        raise UploadRejected(422, f"upload {shown!r}: {str(exc).replace(str(path), 'the file')}") from None
    if img.array.ndim != 4 or min(img.shape) < 2:
        raise UploadRejected(422, f"upload {shown!r} holds an image of shape {img.shape}, not a 3D volume")
    return {"kind": "volume", "shape": list(img.shape)}


def _check_kspace(path: Path, shown: str) -> dict[str, Any]:
    from medpipe.errors import MedpipeError
    from medpipe.io.kspace import read_kspace

    try:
        ks = read_kspace(path)
    except MedpipeError as exc:
        raise UploadRejected(422, f"upload {shown!r}: {str(exc).replace(str(path), 'the file')}") from None
    return {"kind": "kspace", "coils": ks.n_coils, "slices": ks.n_slices, "matrix": list(ks.matrix)}


def store_upload(stream: BinaryIO, name: str | None, dest: Path, *, max_bytes: int, unzipped_limit: int) -> dict[str, Any]:
    """Copy ``stream`` into the new folder ``dest`` as ``input.<kind>`` and check it.

    Returns what the job record keeps about the input; on refusal ``dest`` is removed and
    :class:`UploadRejected` raised."""
    shown = display_name(name)
    kind = _kind(name or "")
    dest.mkdir(parents=True, exist_ok=False)
    target = dest / UPLOAD_KINDS[kind]
    try:
        size = 0
        with open(target, "wb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRejected(413, f"upload {shown!r} is larger than the server's limit of "
                                              f"{max_bytes / 2**20:.0f} MiB")
                out.write(chunk)
        if size == 0:
            raise UploadRejected(422, f"upload {shown!r} is empty")
        _check_magic(target, kind, shown)
        if kind == ".zip":
            facts = _check_zip(target, shown, unzipped_limit)
        elif kind in (".h5", ".hdf5"):
            facts = _check_kspace(target, shown)
        else:
            facts = _check_volume(target, shown)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return {"source": "upload", "name": shown, "file": target.name, "bytes": size, "study": study_name(name), **facts}


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (plus ``slack`` for the
    multipart framing and form fields) before they are parsed."""

    def __init__(self, app: Any, max_bytes: int, slack: int = 1 << 20) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.cutoff = max_bytes + slack

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _reply(send, 400, "the Content-Length header is not a number")
                return
            if declared > self.cutoff:
                await _drain_and_reply(receive, send, 413, self._too_big())
                return
        seen = 0
        too_big = False
        answered = False

        async def limited() -> dict[str, Any]:
            nonlocal seen, too_big
            if too_big:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.cutoff:  # the app sees a disconnect; its answer is replaced below
                    too_big = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal answered
            if too_big:
                if not answered:
                    answered = True
                    await _reply(send, 413, self._too_big())
                return
            await send(message)

        await self.app(scope, limited, guarded_send)
        if too_big and not answered:
            await _reply(send, 413, self._too_big())

    def _too_big(self) -> str:
        return f"the request body is larger than the server's upload limit of {self.max_bytes / 2**20:.0f} MiB"


async def _drain_and_reply(receive: Any, send: Any, status: int, message: str, cap: int = 64 << 20) -> None:
    """Read (and drop) up to ``cap`` bytes of the body first, so the client is not cut off
    mid-send and sees the answer; a bigger body just gets the answer and a closed connection."""
    drained = 0
    while drained <= cap:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        drained += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    await _reply(send, status, message)


async def _reply(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON ``{"detail": message}`` answer, as FastAPI gives, from plain ASGI middleware."""
    import json

    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
