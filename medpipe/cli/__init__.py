"""The ``medpipe`` command.

Thin Typer commands, one module per command group; heavy imports happen inside the
commands so ``medpipe --help`` is instant. ``main(argv)`` is the entry point for the
console script and for tests: it turns a ``MedpipeError`` into one line on stderr and a
non-zero exit code, never a traceback (set ``MEDPIPE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from medpipe.cli.app import app

# Each module registers its commands on ``app`` when imported (explicit list, no discovery).
_COMMAND_MODULES = [
    "medpipe.cli.evaluate",
    "medpipe.cli.train",
    "medpipe.cli.pipeline",
    "medpipe.cli.ingest",
    "medpipe.cli.data",
    "medpipe.cli.models",
    "medpipe.cli.registration",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used by the console script)."""
    from medpipe.errors import MedpipeError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = app(args=args, prog_name="medpipe", standalone_mode=False)
    except MedpipeError as exc:
        if os.environ.get("MEDPIPE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # typer.Exit / --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors and anything unexpected
        import click

        if isinstance(exc, click.exceptions.Exit):
            return int(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    # With standalone_mode=False click returns typer.Exit codes (and a command's int return).
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
