"""Where the server's bearer token comes from, and what is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medpipe.errors import InputError
from medpipe.server.config import TOKEN_ENV, ServerConfig, load_token


def test_token_file_is_created_once_with_mode_0600(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = ServerConfig(state_dir=tmp_path / "state")
    token, where = load_token(cfg)
    assert where == str(cfg.token_file) and len(token) >= 40
    assert stat.S_IMODE(cfg.token_file.stat().st_mode) == 0o600
    assert load_token(cfg) == (token, where)  # the same token on the next start


def test_a_token_file_others_can_read_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = ServerConfig(state_dir=tmp_path)
    load_token(cfg)
    os.chmod(cfg.token_file, 0o644)
    with pytest.raises(InputError, match="is readable by other users; chmod 600 it or delete it"):
        load_token(cfg)


def test_the_env_var_wins_and_must_be_long(tmp_path: Path, monkeypatch) -> None:
    cfg = ServerConfig(state_dir=tmp_path)
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(InputError, match="shorter than 16 characters"):
        load_token(cfg)
    monkeypatch.setenv(TOKEN_ENV, "a-long-enough-token-0123456789")
    assert load_token(cfg) == ("a-long-enough-token-0123456789", f"${TOKEN_ENV}")
    assert not cfg.token_file.exists()
