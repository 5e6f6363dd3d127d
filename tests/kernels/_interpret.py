"""Run a snippet in a fresh interpreter with TRITON_INTERPRET=1 (set before triton is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def run_interpreted(code: str) -> dict:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
