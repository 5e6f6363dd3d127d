"""A client for ``medpipe serve`` using only the standard library.

Slicer's Python cannot be assumed to have ``requests`` or ``httpx`` at the right version, so
this speaks HTTP with ``urllib``: a multipart upload streamed from disk (a CT series zip
can be hundreds of MB), JSON for everything else, and one :class:`ServerError` carrying the
server's one-sentence ``detail`` for every failure.

Example:
    >>> c = MedPipeClient("http://127.0.0.1:8000", token)          # doctest: +SKIP
    >>> job = c.submit("ct_organs", "ct.nrrd")                       # doctest: +SKIP
    >>> c.wait(job["id"], on_progress=print)                         # doctest: +SKIP
    >>> c.download(job["id"], "organs.seg.nrrd")                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["MedPipeClient", "ServerError", "zip_dicom_files", "FINAL_STATES"]

FINAL_STATES = ("done", "failed", "cancelled")
_CHUNK = 1 << 20


class ServerError(Exception):
    """A request that failed: ``status`` (0 when the server was not reached) and its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message if status == 0 else f"{message} (HTTP {status})")
        self.status = status
        self.message = message


class _Body:
    """A multipart/form-data body read chunk by chunk, with a known length."""

    def __init__(self, fields: dict[str, str], file_field: str | None, path: Path | None) -> None:
        self.boundary = f"medpipe-{uuid.uuid4().hex}"
        parts: list[bytes | Path] = []
        for name, value in fields.items():
            parts.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                         f"{value}\r\n".encode())
        if file_field and path is not None:
            safe = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
            parts.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                         f'filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
            parts.append(path)
            parts.append(b"\r\n")
        parts.append(f"--{self.boundary}--\r\n".encode())
        self.parts = parts
        self.length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in parts)

    def __iter__(self) -> Iterator[bytes]:
        for p in self.parts:
            if isinstance(p, Path):
                with open(p, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        yield chunk
            else:
                yield p


class MedPipeClient:
    """One medpipe server (``url``, bearer ``token``)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ServerError(0, f"server address {url!r} must look like http://127.0.0.1:8000")
        self.url = url.strip().rstrip("/")
        self.token = token.strip()
        self.timeout = timeout

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, path: str, data: Any = None, headers: dict[str, str] | None = None,
                 auth: bool = True) -> Any:
        hdrs = dict(headers or {})
        if auth:
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=hdrs)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 (http/https checked above)
        except urllib.error.HTTPError as exc:
            raise ServerError(exc.code, _detail(exc)) from None
        except urllib.error.URLError as exc:
            raise ServerError(0, f"cannot reach the medpipe server at {self.url} ({exc.reason})") from None
        except (TimeoutError, ConnectionError) as exc:
            raise ServerError(0, f"the medpipe server at {self.url} did not answer ({exc})") from None

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        with self._request(method, path, **kw) as r:
            return json.loads(r.read().decode() or "null")

    # -- API --------------------------------------------------------------------------------
    def health(self) -> bool:
        try:
            return self._json("GET", "/health", auth=False).get("status") == "ok"
        except ServerError:
            return False

    def info(self) -> dict[str, Any]:
        return self._json("GET", "/info")

    def pipelines(self) -> list[str]:
        return [p["name"] for p in self.info().get("pipelines", [])]

    def submit(self, pipeline: str, path: str | Path | None = None, *, study: str | None = None,
               send_back: bool = True) -> dict[str, Any]:
        """Queue a job on an uploaded file (NIfTI/NRRD/zip of DICOM) or a PACS study reference."""
        if (path is None) == (study is None):
            raise ServerError(0, "give either a file to upload or a pacs:// study reference")
        fields = {"pipeline": pipeline, "send_back": "true" if send_back else "false"}
        if study is not None:
            fields["study"] = study
        file = Path(path) if path is not None else None
        if file is not None and not file.is_file():
            raise ServerError(0, f"{file} does not exist")
        body = _Body(fields, "file" if file else None, file)
        headers = {"Content-Type": f"multipart/form-data; boundary={body.boundary}", "Content-Length": str(body.length)}
        with self._request("POST", "/jobs", data=iter(body), headers=headers) as r:
            return json.loads(r.read().decode())

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{urllib.parse.quote(job_id)}")

    def jobs(self) -> list[dict[str, Any]]:
        return self._json("GET", "/jobs")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued/running job (a finished one is deleted instead)."""
        return self._json("DELETE", f"/jobs/{urllib.parse.quote(job_id)}")

    def wait(self, job_id: str, *, poll_s: float = 1.0, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             should_cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Poll until the job is done/failed/cancelled; ``should_cancel`` True cancels it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cancelled = False
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in FINAL_STATES:
                return job
            if should_cancel is not None and not cancelled and should_cancel():
                self.cancel(job_id)
                cancelled = True
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(0, f"job {job_id} did not finish within {timeout:g} s (state {job['state']})")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: str | Path, fmt: str = "seg.nrrd") -> Path:
        """Save a done job's result to ``dest`` (written to a temporary file, then renamed)."""
        dest = Path(dest)
        query = urllib.parse.urlencode({"format": fmt})
        with self._request("GET", f"/jobs/{urllib.parse.quote(job_id)}/result?{query}") as r:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := r.read(_CHUNK):
                        out.write(chunk)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return dest


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode() or "{}")
    except (ValueError, OSError):
        return exc.reason if isinstance(exc.reason, str) else "the server refused the request"
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else json.dumps(detail)


def zip_dicom_files(files: Iterable[str | Path], dest: str | Path) -> Path:
    """Zip a series' DICOM files (as Slicer's DICOM database lists them) for upload."""
    dest = Path(dest)
    paths = [Path(f) for f in files]
    if not paths:
        raise ServerError(0, "the volume has no DICOM files to send")
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, p in enumerate(paths):
            zf.write(p, arcname=f"{i:05d}.dcm")
    return dest
