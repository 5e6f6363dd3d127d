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
    "medpipe.cli.segment",
    "medpipe.cli.doctor",
    "medpipe.cli.registration",
    "medpipe.cli.stage",
    "medpipe.cli.pacs",
    "medpipe.cli.serve",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used by the console script).

    Typer runs in standalone mode, so usage errors (a missing argument, an unknown option, a
    bad value) get Typer's own usage message and exit code 2 whatever parser Typer bundles
    (0.29 vendors click as a private module; importing ``click`` here once broke every
    usage error). Commands report their status with ``typer.Exit(code)``.
    """
    from medpipe.errors import MedpipeError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="medpipe", standalone_mode=True)
    except MedpipeError as exc:
        if os.environ.get("MEDPIPE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # standalone mode always ends in sys.exit (usage errors: 2)
        return _exit_status(exc.code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _exit_status(code: object) -> int:
    """``SystemExit.code`` as a process status: None is success, a message is failure."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
