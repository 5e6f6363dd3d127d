"""A PACS as a study source and a result sink: DICOMweb, Orthanc's REST API, or DIMSE.

Three ways hospitals expose their archive, one interface (:class:`PacsClient`):

- ``dicomweb`` — QIDO-RS search, WADO-RS retrieve, STOW-RS store (``dicomweb-client``);
  what most modern PACS (Orthanc with its DICOMweb plugin, dcm4chee, Google/Azure) speak.
- ``orthanc`` — Orthanc's own REST API (``/tools/find``, ``/studies/{id}/archive``,
  ``POST /instances``), also the only one with a change feed (``/changes``, used by
  ``medpipe pacs watch``).
- ``dimse`` — classic C-FIND / C-MOVE / C-STORE (pynetdicom) for PACS without DICOMweb;
  see :mod:`medpipe.io.dimse`.

Servers are named in a small YAML file (``--pacs-config``, ``$MEDPIPE_PACS_CONFIG`` or
``~/.config/medpipe/pacs.yaml``) so credentials never appear on a command line or in a
study reference; a study is referred to as ``pacs://NAME/studies/STUDY_UID``. Passwords
come from an environment variable or a file readable by the owner only.

Pulled files are named by their UIDs (``<SeriesInstanceUID>/<SOPInstanceUID>.dcm``),
never by names a server sent, and a pull is atomic: the folder appears complete or not
at all.

Example:
    >>> servers = load_pacs_config("pacs.yaml")                     # doctest: +SKIP
    >>> ref = parse_study_ref("pacs://orthanc/studies/1.2.3", servers)  # doctest: +SKIP
    >>> pull_study(ref, "study_dir")                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from medpipe.errors import InputError

__all__ = [
    "PACS_SCHEME",
    "PacsError",
    "PacsServer",
    "StudyRef",
    "PacsClient",
    "is_pacs_ref",
    "load_pacs_config",
    "parse_study_ref",
    "open_client",
    "pull_study",
    "push_files",
    "uid_file_name",
]

PACS_SCHEME = "pacs://"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_CONFIG = Path("~/.config/medpipe/pacs.yaml")


class PacsError(InputError):
    """The PACS could not be reached, refused us, or does not hold what was asked for."""


class _ServerFields(BaseModel):
    """One entry of the ``servers:`` mapping of a PACS config file."""

    model_config = ConfigDict(extra="forbid")

    api: Literal["dicomweb", "orthanc", "dimse"] = "dicomweb"
    url: str = ""  # dicomweb: the DICOMweb root; orthanc: the REST root
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    timeout_s: float = 60.0
    # dimse
    host: str = ""
    port: int = 104
    ae_title: str = "ANY-SCP"  # the PACS's (called) AE title
    calling_ae: str = "MEDPIPE"  # ours; for C-MOVE the PACS must know it as a destination
    move_listen: str = "127.0.0.1:11113"  # where our storage SCP listens during a C-MOVE


@dataclass(frozen=True)
class PacsServer:
    """A configured PACS (credentials resolved; the password never printed)."""

    name: str
    api: str = "dicomweb"
    url: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    host: str = ""
    port: int = 104
    ae_title: str = "ANY-SCP"
    calling_ae: str = "MEDPIPE"
    move_listen: str = "127.0.0.1:11113"

    @property
    def label(self) -> str:
        """How the server is named in messages (no credentials)."""
        where = self.url or f"{self.ae_title}@{self.host}:{self.port}"
        return f"PACS {self.name!r} ({where})"


@dataclass(frozen=True)
class StudyRef:
    """A study in a PACS: ``pacs://NAME/studies/UID``."""

    server: PacsServer
    study_uid: str

    def __str__(self) -> str:
        return f"{PACS_SCHEME}{self.server.name}/studies/{self.study_uid}"


def is_pacs_ref(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.lower().startswith(PACS_SCHEME)


def uid_file_name(uid: str) -> str:
    """A UID as a file name; anything that is not a well-formed UID is refused."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
        raise PacsError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


# --------------------------------------------------------------------------- configuration
def _password(name: str, fields: _ServerFields, source: Path) -> str | None:
    if fields.password_env:
        value = os.environ.get(fields.password_env)
        if value is None:
            raise PacsError(f"{source}: PACS {name!r} takes its password from ${fields.password_env}, which is not set")
        return value
    if fields.password_file:
        path = Path(fields.password_file).expanduser()
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise PacsError(f"{source}: PACS {name!r}: password file {path} cannot be read ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PacsError(f"{source}: PACS {name!r}: password file {path} is readable by others; chmod 600 it")
        return path.read_text().strip()
    return None


def load_pacs_config(path: str | Path | None = None) -> dict[str, PacsServer]:
    """Named servers from ``path``, ``$MEDPIPE_PACS_CONFIG`` or ``~/.config/medpipe/pacs.yaml``
    (an empty mapping when none of them exists and none was asked for)."""
    import yaml

    explicit = path is not None or bool(os.environ.get("MEDPIPE_PACS_CONFIG"))
    source = Path(path or os.environ.get("MEDPIPE_PACS_CONFIG") or DEFAULT_CONFIG).expanduser()
    if not source.is_file():
        if explicit:
            raise PacsError(f"PACS config {source} does not exist")
        return {}
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PacsError(f"PACS config {source} cannot be read ({type(exc).__name__}: {exc})") from None
    entries = raw.get("servers") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise PacsError(f"PACS config {source} must hold a 'servers:' mapping of name -> settings")
    servers: dict[str, PacsServer] = {}
    for name, body in entries.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise PacsError(f"PACS config {source}: server name {name!r} must be letters, digits, '_' or '-'")
        try:
            f = _ServerFields(**(body or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise PacsError(f"PACS config {source}: server {name!r}: {loc}: {err['msg']}") from None
        if f.api in ("dicomweb", "orthanc") and urlsplit(f.url).scheme not in ("http", "https"):
            raise PacsError(f"PACS config {source}: server {name!r} needs an http(s) url for api {f.api}")
        if f.api == "dimse" and not f.host:
            raise PacsError(f"PACS config {source}: server {name!r} (dimse) needs a host")
        servers[name] = PacsServer(
            name=name, api=f.api, url=f.url.rstrip("/"), username=f.username, password=_password(name, f, source),
            timeout_s=f.timeout_s, host=f.host, port=f.port, ae_title=f.ae_title, calling_ae=f.calling_ae,
            move_listen=f.move_listen,
        )
    return servers


def parse_study_ref(text: str, servers: dict[str, PacsServer], *, allow_adhoc: bool = True) -> StudyRef:
    """``pacs://NAME/studies/UID`` (a configured server) or, when ``allow_adhoc``,
    ``pacs://HOST:PORT/PATH/studies/UID`` (a DICOMweb root at http://HOST:PORT/PATH, with
    ``$MEDPIPE_PACS_USERNAME``/``$MEDPIPE_PACS_PASSWORD`` as credentials)."""
    if not is_pacs_ref(text):
        raise PacsError(f"{text!r} is not a PACS study reference (pacs://SERVER/studies/STUDY_UID)")
    rest = text[len(PACS_SCHEME):]
    where, sep, uid = rest.rpartition("/studies/")
    uid = uid.strip("/")
    if not sep or not where or not uid:
        raise PacsError(f"{text!r}: expected pacs://SERVER/studies/STUDY_UID")
    uid_file_name(uid)
    if where in servers:
        return StudyRef(servers[where], uid)
    if "/" not in where and ":" not in where:
        known = ", ".join(sorted(servers)) or "none configured"
        raise PacsError(f"{text!r}: no PACS named {where!r} in the PACS config (known: {known})")
    if not allow_adhoc:
        raise PacsError(f"{text!r}: only configured PACS names are accepted here ({', '.join(sorted(servers)) or 'none'})")
    host = where.split("/", 1)[0]
    if "@" in host:
        raise PacsError(f"{text!r}: credentials do not belong in a study reference; use a PACS config file")
    server = PacsServer(name=where, api="dicomweb", url=f"http://{where}",
                        username=os.environ.get("MEDPIPE_PACS_USERNAME"),
                        password=os.environ.get("MEDPIPE_PACS_PASSWORD"))
    return StudyRef(server, uid)


# --------------------------------------------------------------------------- clients
class PacsClient(Protocol):
    server: PacsServer

    def find_studies(self, filters: dict[str, str]) -> list[dict[str, Any]]: ...

    def iter_study(self, study_uid: str) -> Iterator[Any]: ...  # pydicom Datasets

    def store(self, files: list[Path]) -> list[str]: ...  # SOP Instance UIDs stored


def _http_error(server: PacsServer, exc: Exception, what: str) -> PacsError:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return PacsError(f"{server.label} refused the credentials while {what} (HTTP {code}); "
                             "check username and password_env in the PACS config")
        return PacsError(f"{server.label} answered HTTP {code} while {what}")
    if isinstance(exc, requests.ConnectionError):
        return PacsError(f"{server.label} cannot be reached while {what}; is it running?")
    if isinstance(exc, requests.Timeout):
        return PacsError(f"{server.label} did not answer within {server.timeout_s:g} s while {what}")
    return PacsError(f"{server.label}: {what} failed ({type(exc).__name__}: {str(exc)[:200]})")


def _session(server: PacsServer) -> Any:
    import requests

    s = requests.Session()
    if server.username is not None:
        s.auth = (server.username, server.password or "")
    return s


_STUDY_TAGS = {
    "0020000D": "StudyInstanceUID", "00100020": "PatientID", "00080020": "StudyDate",
    "00081030": "StudyDescription", "00080061": "ModalitiesInStudy", "00201208": "NumberOfStudyRelatedInstances",
    "00080050": "AccessionNumber",
}  # fmt: skip


class DicomWebClient:
    """QIDO-RS / WADO-RS / STOW-RS through ``dicomweb-client``."""

    def __init__(self, server: PacsServer) -> None:
        from dicomweb_client import DICOMwebClient

        self.server = server
        self._client = DICOMwebClient(server.url, session=_session(server), timeout=server.timeout_s)

    def find_studies(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        try:
            found = self._client.search_for_studies(search_filters=filters or None, get_remaining=True,
                                                    fields=list(_STUDY_TAGS.values()))
        except Exception as exc:
            raise _http_error(self.server, exc, "searching studies (QIDO-RS)") from None
        out = []
        for item in found:
            row = {}
            for tag, name in _STUDY_TAGS.items():
                value = (item.get(tag) or {}).get("Value")
                if value:
                    row[name] = value if name == "ModalitiesInStudy" else value[0]
            out.append(row)
        return out

    def iter_study(self, study_uid: str) -> Iterator[Any]:
        try:
            yield from self._client.iter_study(study_uid)
        except Exception as exc:
            raise _http_error(self.server, exc, f"retrieving study {study_uid} (WADO-RS)") from None

    def store(self, files: list[Path]) -> list[str]:
        import pydicom

        stored: list[str] = []
        for start in range(0, len(files), 32):  # bounded memory: 32 instances per request
            batch = [pydicom.dcmread(str(f)) for f in files[start:start + 32]]
            try:
                reply = self._client.store_instances(batch)
            except Exception as exc:
                raise _http_error(self.server, exc, "storing instances (STOW-RS)") from None
            failed = [str(item.get("ReferencedSOPInstanceUID", "?")) for item in reply.get("FailedSOPSequence", [])]
            if failed:
                raise PacsError(f"{self.server.label} refused {len(failed)} instance(s) on STOW-RS: {', '.join(failed[:3])}")
            stored.extend(str(ds.SOPInstanceUID) for ds in batch)
        return stored


class OrthancClient:
    """Orthanc's REST API (also the change feed the watch mode follows)."""

    def __init__(self, server: PacsServer) -> None:
        self.server = server
        self._s = _session(server)

    def _call(self, method: str, path: str, what: str, **kw: Any) -> Any:
        try:
            r = self._s.request(method, f"{self.server.url}{path}", timeout=self.server.timeout_s, **kw)
            r.raise_for_status()
        except Exception as exc:
            raise _http_error(self.server, exc, what) from None
        return r

    def find_studies(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        body = {"Level": "Study", "Expand": True, "Query": dict(filters)}
        found = self._call("POST", "/tools/find", "searching studies", json=body).json()
        rows = []
        for study in found:
            tags = {**study.get("PatientMainDicomTags", {}), **study.get("MainDicomTags", {})}
            rows.append({k: tags[k] for k in ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription",
                                              "AccessionNumber") if k in tags}
                        | {"OrthancID": study.get("ID")})
        return rows

    def orthanc_id(self, study_uid: str) -> str:
        hits = self._call("POST", "/tools/lookup", f"looking up study {study_uid}", data=study_uid).json()
        ids = [h["ID"] for h in hits if h.get("Type") == "Study"]
        if not ids:
            raise PacsError(f"{self.server.label} holds no study {study_uid}")
        return ids[0]

    def study_uid(self, orthanc_id: str) -> str:
        info = self._call("GET", f"/studies/{orthanc_id}", f"reading study {orthanc_id}").json()
        return str(info.get("MainDicomTags", {}).get("StudyInstanceUID", ""))

    def iter_study(self, study_uid: str) -> Iterator[Any]:
        import io

        import pydicom

        oid = self.orthanc_id(study_uid)
        instances = self._call("GET", f"/studies/{oid}/instances", f"listing study {study_uid}").json()
        for inst in instances:
            data = self._call("GET", f"/instances/{inst['ID']}/file", f"retrieving study {study_uid}").content
            yield pydicom.dcmread(io.BytesIO(data))

    def store(self, files: list[Path]) -> list[str]:
        import pydicom

        stored = []
        for f in files:
            reply = self._call("POST", "/instances", f"storing {Path(f).name}", data=Path(f).read_bytes(),
                               headers={"Content-Type": "application/dicom"}).json()
            if reply.get("Status") not in ("Success", "AlreadyStored"):
                raise PacsError(f"{self.server.label} did not store {f}: {reply.get('Status')}")
            stored.append(str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID))
        return stored

    def changes(self, since: int, limit: int = 100) -> tuple[list[dict[str, Any]], int, bool]:
        """(changes, last sequence number, done) of Orthanc's ``/changes`` feed after ``since``."""
        reply = self._call("GET", "/changes", "reading the change feed", params={"since": since, "limit": limit}).json()
        return list(reply.get("Changes", [])), int(reply.get("Last", since)), bool(reply.get("Done", True))


def open_client(server: PacsServer) -> PacsClient:
    if server.api == "dicomweb":
        return DicomWebClient(server)
    if server.api == "orthanc":
        return OrthancClient(server)
    from medpipe.io.dimse import DimseClient

    return DimseClient(server)


# --------------------------------------------------------------------------- pull / push
def write_instances(datasets: Iterable[Any], folder: Path) -> int:
    """Write datasets as ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` under ``folder``."""
    n = 0
    for ds in datasets:
        series = uid_file_name(str(ds.get("SeriesInstanceUID", "")))
        sop = uid_file_name(str(ds.get("SOPInstanceUID", "")))
        (folder / series).mkdir(parents=True, exist_ok=True)
        ds.save_as(str(folder / series / f"{sop}.dcm"), enforce_file_format=True)
        n += 1
    return n


def pull_study(ref: StudyRef, out_dir: str | Path, overwrite: bool = False) -> tuple[Path, int]:
    """Download ``ref`` into ``out_dir`` (atomic); returns (folder, number of instances)."""
    from medpipe.io.atomic import atomic_dir

    out = Path(out_dir)
    client = open_client(ref.server)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        n = write_instances(client.iter_study(ref.study_uid), tmp)
        if n == 0:
            raise PacsError(f"{ref.server.label} returned no instances for study {ref.study_uid}")
    return out, n


def push_files(server: PacsServer, files: Iterable[str | Path]) -> list[str]:
    """Store DICOM files (folders are searched for ``*.dcm``); returns the SOP Instance UIDs stored."""
    paths: list[Path] = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*.dcm") if q.is_file()))
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"{p} does not exist")
    if not paths:
        raise InputError("no DICOM files to send")
    return open_client(server).store(paths)
