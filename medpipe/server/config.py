"""How a medpipe server is set up, and where its bearer token comes from.

The token is the one secret: it comes from ``$MEDPIPE_SERVER_TOKEN`` or from
``STATE/token``, created on first start with ``secrets.token_urlsafe(32)`` and mode 0600
(``O_EXCL``, so two servers starting at once cannot both write one). A token file that
others can read is refused, as ssh refuses a readable key. The token is never printed or
logged; ``medpipe serve`` prints only where it is.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from medpipe.errors import InputError

__all__ = ["ServerConfig", "load_token", "TOKEN_ENV", "DEFAULT_MAX_UPLOAD"]

TOKEN_ENV = "MEDPIPE_SERVER_TOKEN"
DEFAULT_MAX_UPLOAD = 2 * 1024**3  # 2 GiB: a 1,000-slice CT series zipped is ~0.5 GiB
_MIN_TOKEN = 16


@dataclass
class ServerConfig:
    """Everything ``create_app`` needs; ``medpipe serve`` fills it from its options."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    # unpacked size a zipped DICOM upload may claim (zip bombs); 4x the upload limit by default
    max_unzipped_bytes: int | None = None
    pipelines: list[str] = field(default_factory=list)  # allowed pipeline names; empty = all shipped
    pacs_config: Path | None = None
    stage_modules: list[str] = field(default_factory=list)  # extra modules registering stage kinds
    device: str = "cpu"

    @property
    def unzipped_limit(self) -> int:
        return self.max_unzipped_bytes or 4 * self.max_upload_bytes

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"


def load_token(config: ServerConfig) -> tuple[str, str]:
    """(token, where it came from); creates ``STATE/token`` (0600) when neither exists."""
    env = os.environ.get(TOKEN_ENV)
    if env is not None:
        if len(env.strip()) < _MIN_TOKEN:
            raise InputError(f"${TOKEN_ENV} is shorter than {_MIN_TOKEN} characters; use a long random token")
        return env.strip(), f"${TOKEN_ENV}"
    path = config.token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"token file {path} is readable by other users; chmod 600 it or delete it") from None
        token = path.read_text().strip()
        if len(token) < _MIN_TOKEN:
            raise InputError(f"token file {path} holds fewer than {_MIN_TOKEN} characters; delete it to get a new one") from None
        return token, str(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), str(path)
