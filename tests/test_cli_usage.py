"""Usage errors of every command, through the installed ``medpipe`` entry point.

The cases are generated from the Typer application itself (every command and subcommand,
its arguments and its numeric options), so a command added later is covered the moment it
is registered. They run the console script in a subprocess: a broken import in the error
path or an exit status lost between ``main`` and the shell shows up only there.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.models import ArgumentInfo, OptionInfo

from medpipe.cli import app

ENTRY_POINT = Path(sys.executable).with_name("medpipe")


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    arguments: tuple[tuple[str, type], ...]  # required positional arguments: (name, type)
    required_options: tuple[tuple[str, type], ...]  # (flag, type)
    numeric_options: tuple[tuple[str, type], ...]  # (flag, int|float)
    runs_without_arguments: bool


def _flag(name: str, info: OptionInfo) -> str:
    decls = [d for d in (info.param_decls or ()) if d.startswith("--")]
    return decls[0] if decls else "--" + name.replace("_", "-")


def _describe(path: tuple[str, ...], callback, invoke_without_command: bool = False) -> Command:
    hints = typing.get_type_hints(callback)
    arguments, required, numeric = [], [], []
    for name, param in inspect.signature(callback).parameters.items():
        info, kind = param.default, hints.get(name)
        if isinstance(info, ArgumentInfo) and info.default is ...:
            arguments.append((name, kind))
        elif isinstance(info, OptionInfo):
            if info.default is ...:
                required.append((_flag(name, info), kind))
            if kind in (int, float):
                numeric.append((_flag(name, info), kind))
    return Command(path, tuple(arguments), tuple(required), tuple(numeric),
                   runs_without_arguments=invoke_without_command and not arguments and not required)


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[Command]:
    found = []
    for info in group.registered_commands:
        found.append(_describe(prefix + (info.name or info.callback.__name__,), info.callback))
    for sub in group.registered_groups:
        inner = sub.typer_instance
        path = prefix + (sub.name or inner.info.name,)
        if inner.registered_callback is not None:
            found.append(_describe(path, inner.registered_callback.callback,
                                   bool(inner.info.invoke_without_command)))
        found.extend(_commands(inner, path))
    return found


COMMANDS = _commands(app)


def _medpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1", TERM="dumb")
    env.pop("MEDPIPE_DEBUG", None)
    return subprocess.run([str(ENTRY_POINT), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=60)


def _assert_usage_error(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert proc.returncode == 2, (proc.returncode, text)
    assert "Usage: medpipe" in text, text
    assert expected in text, text


def _placeholder(kind: type, tmp_path: Path) -> str:
    """A value that passes the argument's own type check, so the case under test is the one reported."""
    return str(tmp_path) if kind is Path else ("1" if kind in (int, float) else "x")


def test_the_installed_entry_point_is_tested() -> None:
    assert ENTRY_POINT.is_file(), f"{ENTRY_POINT} missing: install the project (make setup) before testing"
    assert {c.path for c in COMMANDS} >= {("run",), ("inspect",), ("models", "import-nnunet")}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.path))
def test_unknown_option(command: Command, tmp_path: Path) -> None:
    _assert_usage_error(_medpipe(*command.path, "--no-such-option", "x", cwd=tmp_path),
                        "No such option: --no-such-option")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.arguments], ids=lambda c: " ".join(c.path))
def test_missing_argument(command: Command, tmp_path: Path) -> None:
    _assert_usage_error(_medpipe(*command.path, cwd=tmp_path), "Missing argument")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.numeric_options], ids=lambda c: " ".join(c.path))
def test_bad_numeric_value(command: Command, tmp_path: Path) -> None:
    flag, kind = command.numeric_options[0]
    args = [_placeholder(k, tmp_path) for _, k in command.arguments]
    for other, k in command.required_options:
        if other != flag:
            args += [other, _placeholder(k, tmp_path)]
    proc = _medpipe(*command.path, *args, flag, "not-a-number", cwd=tmp_path)
    _assert_usage_error(proc, f"Invalid value for '{flag}'")


def test_a_command_failure_is_one_sentence_and_its_status(tmp_path: Path) -> None:
    proc = _medpipe("inspect", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "nowhere" in proc.stderr


def test_help_is_success(tmp_path: Path) -> None:
    proc = _medpipe("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "Usage: medpipe run" in proc.stdout
