"""Record a benchmark's figures in benchmarks/RESULTS.md.

Each benchmark owns one section, delimited by HTML comments, and replaces only that
section, so several benchmarks can record into the same file. Every section states the
machine, the date and the exact command, as RESULTS.md promises.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is written by the script it names; re-run the command to refresh it.\n"


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        tv = torch.__version__
        threads = torch.get_num_threads()
    except Exception:  # torch is optional for some benchmarks
        tv, threads = "n/a", 0
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, "
        f"torch {tv} ({threads} threads)"
    )


def record(name: str, title: str, body: str, command: str | None = None) -> Path:
    """Replace (or append) the section ``name`` in RESULTS.md."""
    cmd = command or "python " + " ".join(shlex.quote(a) for a in sys.argv)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n"
        f"- machine: {machine_line()}\n- date: {now}\n- command: `{cmd}`\n\n{body.strip()}\n"
        f"<!-- END {name} -->\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    return RESULTS


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def load_phrase(before: float, after: float) -> str:
    """The 1-minute load average around a run, and what it means for the timings on this machine."""
    cores = os.cpu_count() or 1
    shared = max(before, after) > cores
    return (f"load average (1 min) {before:.1f} before / {after:.1f} after on {cores} cores"
            + (" (other jobs shared the cores: timings are upper bounds, ratios between interleaved methods hold)"
               if shared else ""))
