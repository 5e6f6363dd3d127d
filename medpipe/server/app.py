"""The HTTP API (FastAPI): what the Slicer module and hospital scripts talk to.

Shaped after MONAI Label's (``/info``, then jobs): ::

    GET    /health                 no token: {"status": "ok"}
    GET    /info                   pipelines (stages), models, version, PACS names, limits
    POST   /jobs                   form: pipeline + file (.nii/.nii.gz/.nrrd/.zip of DICOM)
                                   or study (pacs://NAME/studies/UID) -> 202 + the job record
    GET    /jobs                   every job (id, pipeline, state, progress)
    GET    /jobs/{id}              state, per-stage progress, warnings, error sentence
    DELETE /jobs/{id}              cancel a queued/running job; remove a finished one
    GET    /jobs/{id}/result       ?format=seg.nrrd (default) | nifti | dicom_seg | image (the reconstruction)

Security (a hospital network is not a friendly place): a bearer token on every endpoint
but ``/health``, checked before the body is read (:class:`TokenAuth`); bodies over the
upload limit refused before parsing; no CORS headers (browsers on other origins cannot
call it); no interactive docs; uploaded names never become paths (``uploads``); clients
choose pipelines by name only and PACS by configured name only, never a path or a URL.

FastAPI is imported at module level (its annotations are resolved from this module), so
import this module only where the ``server`` extra is installed (``medpipe serve`` does).
"""

from __future__ import annotations

import hmac
import importlib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from medpipe.server.config import ServerConfig

__all__ = ["create_app", "TokenAuth"]

_PUBLIC_PATHS = ("/health",)
_MEDIA = {"seg.nrrd": "application/octet-stream", "nifti": "application/gzip", "dicom_seg": "application/dicom",
          "image": "application/gzip"}


class TokenAuth:
    """ASGI middleware: ``Authorization: Bearer <token>`` on every path but the public ones."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in _PUBLIC_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                from medpipe.server.uploads import _reply

                why = "no bearer token was sent" if not header else "the bearer token is wrong"
                await _reply(send, 401, f"{why}; send 'Authorization: Bearer <token>' (the token is in the "
                                        "server's token file or $MEDPIPE_SERVER_TOKEN)",
                             extra=[(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


def _pipelines(config: ServerConfig) -> dict[str, dict[str, Any]]:
    """Allowed pipeline name -> what /info says about it (invalid files are left out)."""
    from medpipe.errors import MedpipeError
    from medpipe.pipeline.graph import PipelineGraph
    from medpipe.pipeline.spec import load_pipeline, shipped_pipelines

    names = config.pipelines or sorted(shipped_pipelines())
    out = {}
    for name in names:
        try:
            spec = load_pipeline(name)
        except MedpipeError as exc:
            if config.pipelines:  # asked for by name: a broken one is an error at start
                raise
            print(f"medpipe serve: pipeline {name!r} left out: {exc}")
            continue
        graph = PipelineGraph(spec)
        if spec.outputs:
            graph = graph.subgraph(list(spec.outputs))
        bundles = sorted({str(st.params["bundle"]) for st in spec.stages.values() if st.params.get("bundle")})
        out[name] = {"name": name, "description": spec.description, "stages": list(graph.order), "models": bundles}
    return out


def _models() -> list[dict[str, Any]]:
    """The shipped bundles (model.yaml only, no weights loaded)."""
    import yaml

    import medpipe

    out = []
    for cfg in sorted((Path(medpipe.__file__).parent / "bundles").glob("*/model.yaml")):
        try:
            raw = yaml.safe_load(cfg.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        labels = {int(k): (v or {}).get("name") for k, v in (raw.get("labels") or {}).items() if int(k) != 0}
        out.append({"name": cfg.parent.name, "architecture": raw.get("architecture"), "modality": raw.get("modality"),
                    "task": raw.get("task", "segmentation"), "labels": labels,
                    "description": " ".join(str(raw.get("description", "")).split())})
    return out


def create_app(config: ServerConfig, token: str) -> Any:
    """The ASGI application (FastAPI wrapped in the token and body-size guards)."""
    import medpipe
    from medpipe.errors import MedpipeError
    from medpipe.server.jobs import ACTIVE_STATES, JobManager, JobNotFound, is_job_id
    from medpipe.server.results import RESULT_FORMATS, result_file
    from medpipe.server.uploads import BodyLimit, UploadRejected

    for module in config.stage_modules:
        importlib.import_module(module)
    pipelines = _pipelines(config)
    models = _models()
    manager = JobManager(config)

    @asynccontextmanager
    async def lifespan(app: Any):
        manager.start()
        try:
            yield
        finally:
            manager.stop()

    api = FastAPI(title="medpipe", version=medpipe.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    api.state.manager = manager

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
        what = "is missing" if err.get("type") == "missing" else f"is invalid ({err.get('msg', '')})"
        return JSONResponse({"detail": f"field {field!r} {what}"}, status_code=422)

    def _job(job_id: str) -> dict[str, Any]:
        if not is_job_id(job_id):
            raise HTTPException(404, f"no job {job_id[:40]!r} (job ids are 32 hexadecimal characters)")
        try:
            return manager.get(job_id)
        except JobNotFound:
            raise HTTPException(404, f"no job {job_id}") from None

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/info")
    def info() -> dict[str, Any]:
        return {
            "name": "medpipe", "version": medpipe.__version__, "pipelines": list(pipelines.values()),
            "models": models, "result_formats": list(RESULT_FORMATS), "workers": config.workers,
            "queued": manager.queue_length, "max_upload_bytes": config.max_upload_bytes,
            "pacs": _pacs_names(config), "upload_kinds": [".nii", ".nii.gz", ".nrrd", ".zip (DICOM)"],
        }

    @api.post("/jobs", status_code=202)
    def create_job(
        pipeline: str = Form(..., description="a pipeline name from /info"),
        file: UploadFile | None = File(None, description="NIfTI/NRRD volume or zipped DICOM series"),
        study: str | None = Form(None, description="pacs://NAME/studies/STUDY_UID"),
        send_back: bool = Form(True, description="store the DICOM SEG of a PACS study in that PACS"),
    ) -> JSONResponse:
        if pipeline not in pipelines:
            raise HTTPException(422, f"unknown pipeline {pipeline[:80]!r} (available: {', '.join(pipelines) or 'none'})")
        stages = pipelines[pipeline]["stages"]
        if (file is None) == (not study):
            raise HTTPException(422, "send either a file (NIfTI, NRRD or zipped DICOM) or a study (pacs://NAME/studies/UID)")
        try:
            if file is not None:
                record = manager.submit_upload(pipeline, stages, file.file, file.filename)
            else:
                from medpipe.io.pacs import load_pacs_config, parse_study_ref

                servers = load_pacs_config(config.pacs_config) if config.pacs_config else {}
                ref = parse_study_ref(study or "", servers, allow_adhoc=False)
                record = manager.submit_pacs(pipeline, stages, ref, send_back)
        except UploadRejected as exc:
            raise HTTPException(exc.status, exc.message) from None
        except MedpipeError as exc:
            raise HTTPException(422, str(exc)) from None
        return JSONResponse(record, status_code=202, headers={"Location": f"/jobs/{record['id']}"})

    @api.get("/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return manager.list()

    @api.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return _job(job_id)

    @api.delete("/jobs/{job_id}")
    def delete_job(job_id: str) -> JSONResponse:
        record = _job(job_id)
        if record["state"] in ACTIVE_STATES:
            return JSONResponse(manager.cancel(job_id), status_code=202)
        try:
            manager.delete(job_id)
        except ValueError as exc:  # it became active again in between (a restart requeue)
            raise HTTPException(409, str(exc)) from None
        return JSONResponse({"id": job_id, "deleted": True})

    @api.get("/jobs/{job_id}/result")
    def get_result(job_id: str, format: str = Query("seg.nrrd", description="seg.nrrd, nifti, dicom_seg or image")) -> FileResponse:
        record = _job(job_id)
        if format not in RESULT_FORMATS:
            raise HTTPException(422, f"unknown result format {format[:40]!r} (formats: {', '.join(RESULT_FORMATS)})")
        if record["state"] != "done":
            why = f": {record['error']}" if record.get("error") else ""
            raise HTTPException(409, f"job {job_id} is {record['state']}{why}; results exist once it is done")
        if format not in record.get("results", []):
            offered = ", ".join(record.get("results", [])) or "none"
            raise HTTPException(404, f"job {job_id} has no {format} result (it has: {offered})")
        try:
            path = result_file(manager.run_dir(job_id), format, manager.result_cache(job_id))
        except MedpipeError as exc:
            raise HTTPException(500, f"the {format} result could not be made: {exc}") from None
        if path is None:
            raise HTTPException(404, f"job {job_id} has no {format} result")
        name = path.name if format != "seg.nrrd" else f"{path.name.split('.')[0]}.seg.nrrd"
        return FileResponse(path, media_type=_MEDIA[format], filename=name)

    return TokenAuth(BodyLimit(api, config.max_upload_bytes), token)


def _pacs_names(config: ServerConfig) -> list[str]:
    if not config.pacs_config:
        return []
    from medpipe.io.pacs import load_pacs_config

    return sorted(load_pacs_config(config.pacs_config))
