"""Comma-separated numbers on the command line (``--patch 64,64,64``, ``--spacing 1.5``)."""

from __future__ import annotations

__all__ = ["ints", "floats"]


def ints(text: str | None, what: str, n: int = 3, also: int | None = None) -> list[int] | None:
    """``n`` integers from ``a,b,c`` (one value is repeated ``n`` times; ``also`` is another
    accepted count, e.g. 2 for the in-plane patch of a 2D network); None for empty text."""
    from medpipe.errors import InputError

    if not text:
        return None
    try:
        vals = [int(t) for t in text.split(",")]
    except ValueError as exc:
        raise InputError(f"{what} must be {n} comma-separated integers such as 64,64,64, got {text!r}") from exc
    if len(vals) == 1:
        vals = vals * n
    if len(vals) not in (n, also):
        extra = f" ({also} for a 2D network)" if also == 2 else (f" or {also}" if also else "")
        raise InputError(f"{what} must have {n} values{extra}, got {text!r}")
    return vals


def floats(text: str | None, what: str, n: int | None = None) -> list[float] | None:
    """Numbers from ``a,b,c`` (one value is repeated, to ``n`` or 3); ``n`` checks the count."""
    from medpipe.errors import InputError

    if not text:
        return None
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError as exc:
        raise InputError(f"{what} must be comma-separated numbers such as 2.5,2.5,2.5, got {text!r}") from exc
    if len(vals) == 1:
        vals = vals * (n or 3)
    if n is not None and len(vals) != n:
        raise InputError(f"{what} must have {n} values, got {text!r}")
    return vals
