"""A server in its own process: started with `python -m`, ready once it answers over HTTP."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_module(module: str, *args: str, ready_path: str) -> tuple[subprocess.Popen[str], str]:
    """Run `python -m module args` (one thread, from the repo root), which prints its base URL
    as its first line; return the process and that URL once GET `ready_path` answers 2xx.
    A process that prints no URL within 60 s, or whose app does not answer within 30 s
    more, is killed and the test fails with its stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline().strip() if ready else ""
    if not line.startswith("http://127.0.0.1:"):
        process.kill()
        raise AssertionError(f"{module} did not start: {line!r} {process.communicate()[1][-500:]}")
    deadline = time.monotonic() + 30
    while True:  # the port is bound before the URL is printed; wait for the app to answer
        try:
            httpx.get(f"{line}{ready_path}", timeout=5).raise_for_status()
            return process, line
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
