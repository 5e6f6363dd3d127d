"""``medpipe serve``: the HTTP server the Slicer module (and hospital scripts) talk to."""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app


@app.command("serve")
def serve_command(
    state: Path = typer.Option(Path("medpipe-server"), "--state", help="Folder for jobs, results and the token file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Jobs run at the same time (each in its own process)."),
    max_upload_mb: float = typer.Option(2048, "--max-upload-mb", min=0.001, help="Largest accepted upload, MiB."),
    pipeline: list[str] = typer.Option([], "--pipeline", help="Offer only these pipelines (repeatable; default: all shipped)."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help="PACS config naming the PACS jobs may use."),
    stage_module: list[str] = typer.Option([], "--stage-module", help="Import this module first (custom stage kinds; repeatable)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Serve pipelines over HTTP: POST /jobs, GET /jobs/{id}, GET /jobs/{id}/result (bearer token)."""
    try:
        import uvicorn
    except ImportError:
        from medpipe.errors import InputError

        raise InputError("medpipe serve needs the server extra: pip install 'medpipe[server]'") from None
    from medpipe.server.app import create_app
    from medpipe.server.config import ServerConfig, load_token

    config = ServerConfig(state_dir=state.resolve(), host=host, port=port, workers=workers,
                          max_upload_bytes=int(max_upload_mb * 2**20), pipelines=list(pipeline),
                          pacs_config=pacs_config, stage_modules=list(stage_module), device=device)
    token, where = load_token(config)
    application = create_app(config, token)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: other machines can reach this server; put TLS in front of it", err=True)
    typer.echo(f"medpipe server on http://{host}:{port} (state {config.state_dir}; bearer token in {where})", err=True)
    uvicorn.run(application, host=host, port=port, log_level="info", access_log=True, timeout_graceful_shutdown=30)
