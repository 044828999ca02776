"""Helper processes the harness starts (the virtual board, the link relay): start, last words, stop.

Both print `KEY value` lines on stdout once ready and exit when their stdin closes, so a crashed or killed
harness never leaves them running. stderr goes to a file: a pipe nobody reads would block the child once
it filled up, and its last line (our one-line `HILnnn cause -- fix: hint` errors) is what a failure shows.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def spawn(cmd: list[str]) -> tuple[subprocess.Popen, IO[bytes]]:
    """Start `cmd` from the repo root with the repo importable; returns the process and its stderr file."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            cwd=str(REPO_ROOT), env=env)
    return proc, stderr


def last_stderr_line(stderr: IO[bytes] | None, default: str = "") -> str:
    if stderr is None:
        return default
    stderr.seek(0)
    lines = [ln.strip() for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
    return (lines[-1] if lines else default)[:300]


def stop(proc: subprocess.Popen | None, stderr: IO[bytes] | None) -> None:
    """Close stdin (the child's signal to exit), then terminate, then kill; close every stream."""
    if proc is not None:
        if proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, OSError):
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
    if stderr is not None:
        stderr.close()
