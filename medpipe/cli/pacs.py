"""``medpipe pacs find|pull|push|watch``: a PACS (DICOMweb, Orthanc REST, DIMSE) as source and sink."""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app

pacs_app = typer.Typer(help="Find, pull and push studies in a PACS; watch it for new studies.", no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")

_SERVER_HELP = ("A PACS named in the PACS config, or a URL (a DICOMweb root such as http://host:8042/dicom-web; "
                "with --api orthanc, Orthanc's REST root). Passwords come from the config or $MEDPIPE_PACS_PASSWORD.")
_CONFIG_HELP = "PACS config file (default $MEDPIPE_PACS_CONFIG or ~/.config/medpipe/pacs.yaml)."


def resolve_server(server: str, config: Path | None, api: str | None = None, user: str | None = None):
    """A configured server by name, or an ad-hoc one from a URL."""
    import os
    from urllib.parse import urlsplit

    from medpipe.io.pacs import PacsError, PacsServer, load_pacs_config

    servers = load_pacs_config(config)
    if server in servers:
        return servers[server]
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        known = ", ".join(sorted(servers)) or "none configured"
        raise PacsError(f"--server {server!r} is neither a configured PACS ({known}) nor an http(s) URL")
    if parts.username or parts.password:
        raise PacsError("--server: put credentials in a PACS config file or --user/$MEDPIPE_PACS_PASSWORD, not in the URL")
    return PacsServer(name=parts.netloc, api=api or "dicomweb", url=server.rstrip("/"),
                      username=user or os.environ.get("MEDPIPE_PACS_USERNAME"),
                      password=os.environ.get("MEDPIPE_PACS_PASSWORD"))


@pacs_app.command("find")
def find_command(
    server: str = typer.Option(..., "--server", "-s", help=_SERVER_HELP),
    patient_id: str = typer.Option("", "--patient-id", help="PatientID to match."),
    study_date: str = typer.Option("", "--study-date", help="StudyDate or range (YYYYMMDD-YYYYMMDD)."),
    modality: str = typer.Option("", "--modality", help="ModalitiesInStudy to match (CT, MR...)."),
    config: Path | None = typer.Option(None, "--pacs-config", help=_CONFIG_HELP),
    api: str | None = typer.Option(None, "--api", help="dicomweb (default) or orthanc, for a URL --server."),
    user: str | None = typer.Option(None, "--user", help="Username for a URL --server."),
) -> None:
    """List the studies matching the filters (QIDO-RS, Orthanc /tools/find or C-FIND)."""
    from rich.console import Console
    from rich.table import Table

    from medpipe.io.pacs import open_client

    srv = resolve_server(server, config, api, user)
    filters = {k: v for k, v in (("PatientID", patient_id), ("StudyDate", study_date),
                                 ("ModalitiesInStudy", modality)) if v}
    rows = open_client(srv).find_studies(filters)
    table = Table(title=f"{len(rows)} studies in {srv.label}")
    for col in ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription")))
    Console().print(table)


@pacs_app.command("pull")
def pull_command(
    out: Path = typer.Argument(..., help="Folder to create with the study's DICOM files (<series>/<sop>.dcm)."),
    server: str = typer.Option(..., "--server", "-s", help=_SERVER_HELP),
    study: str = typer.Option(..., "--study", help="StudyInstanceUID."),
    config: Path | None = typer.Option(None, "--pacs-config", help=_CONFIG_HELP),
    api: str | None = typer.Option(None, "--api", help="dicomweb (default) or orthanc, for a URL --server."),
    user: str | None = typer.Option(None, "--user", help="Username for a URL --server."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Download one study (WADO-RS, Orthanc REST or C-MOVE) into OUT, atomically."""
    from medpipe.io.pacs import StudyRef, pull_study, uid_file_name

    srv = resolve_server(server, config, api, user)
    folder, n = pull_study(StudyRef(srv, uid_file_name(study)), out, overwrite=overwrite)
    typer.echo(f"pulled {n} instances of study {study} from {srv.label} into {folder}")


@pacs_app.command("push")
def push_command(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (searched for *.dcm)."),
    server: str = typer.Option(..., "--server", "-s", help=_SERVER_HELP),
    config: Path | None = typer.Option(None, "--pacs-config", help=_CONFIG_HELP),
    api: str | None = typer.Option(None, "--api", help="dicomweb (default) or orthanc, for a URL --server."),
    user: str | None = typer.Option(None, "--user", help="Username for a URL --server."),
) -> None:
    """Store DICOM files in the PACS (STOW-RS, Orthanc REST or C-STORE)."""
    from medpipe.io.pacs import push_files

    srv = resolve_server(server, config, api, user)
    stored = push_files(srv, files)
    typer.echo(f"stored {len(stored)} instances in {srv.label}")


@pacs_app.command("watch")
def watch_command(
    pipeline: str = typer.Argument(..., help="Pipeline file or shipped pipeline name."),
    server: str = typer.Option(..., "--server", "-s", help="A configured Orthanc (api: orthanc) to follow."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (also holds the watch state)."),
    config: Path | None = typer.Option(None, "--pacs-config", help=_CONFIG_HELP),
    poll: float = typer.Option(5.0, "--poll", min=0.1, help="Seconds between polls of the change feed."),
    max_polls: int | None = typer.Option(None, "--max-polls", min=1, help="Stop after this many polls (default: never)."),
    set_: list[str] = typer.Option([], "--set", help="Override a parameter: --set stage.param=value (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    from_now: bool = typer.Option(False, "--from-now", help="On a first start, skip the studies already in the PACS."),
) -> None:
    """Run PIPELINE on every new stable study, at most once per study, and send each DICOM SEG back."""
    from medpipe.pipeline.pacs_watch import watch
    from medpipe.pipeline.spec import load_pipeline

    spec = load_pipeline(pipeline, set_)
    srv = resolve_server(server, config)

    def show(event: dict) -> None:
        if event["event"] == "watch_error":
            typer.echo(f"warning: {event['message']}; retrying", err=True)
        elif event.get("status") != "running":
            detail = f": {event.get('error')}" if event.get("error") else f" (sent {event.get('sent', 0)} SEG)"
            typer.echo(f"{event['study']} {event['status']}{detail}")
        else:
            typer.echo(f"{event['study']} running")

    state = watch(srv, spec, out, poll_s=poll, max_polls=max_polls, device=device, on_event=show, from_now=from_now)
    done = sum(1 for s in state["studies"].values() if s.get("status") == "done")
    typer.echo(f"watched {srv.label}: {done}/{len(state['studies'])} studies done (state in {out})")
