"""The virtual board: the C device core (firmware/core) with TFLM reference kernels, behind a pty.

`VirtualBoard` starts `python -m harness.boards.virtual` as a child process (so a TFLM crash cannot take the
caller down, and inference runs on another core), waits for the port it prints, and stops it again:

    with VirtualBoard(store_dir=tmp) as vb:
        link = open_link(vb.url, baud)
        ...

The harness then talks to it through pyserial exactly as to an ESP32.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from harness.link import child
from harness.errors import LinkError

START_TIMEOUT_S = 30.0


class VirtualBoardError(LinkError):
    """The virtual board process did not come up (build, profile or port problem)."""

    code = "HIL230"


class VirtualBoard:
    def __init__(self, profile: str | os.PathLike = "virtual", *, store_dir: str | os.PathLike | None = None,
                 throttle_baud: int | None = None, tcp: bool = False, faults=(), hello=(), api: str = "hil",
                 model: str | os.PathLike | None = None, model_id: str | None = None,
                 cost_profile: str | None = None):
        self.profile = str(profile)
        self.cost_profile = cost_profile  # estimate cycles with another profile's cost constants
        self.api = api  # "hil": the C device core; "mlperf-tiny": a virtual MLPerf Tiny device running `model`
        self.model = Path(model) if model is not None else None
        self.model_id = model_id
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.throttle_baud = throttle_baud
        self.tcp = tcp
        self.faults = tuple(str(f) for f in faults)
        self.hello = tuple(str(h) for h in hello)  # --hello KEY=VALUE: what HELLO reports instead
        self.process: subprocess.Popen | None = None
        self.port: str | None = None
        self.url: str | None = None
        self._stderr = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "harness.boards.virtual", "--profile", self.profile, "--exit-on-stdin-eof"]
        if self.store_dir is not None:
            cmd += ["--store", str(self.store_dir)]
        if self.throttle_baud:
            cmd += ["--throttle", str(self.throttle_baud)]
        if self.tcp:
            cmd += ["--tcp", "0"]
        for fault in self.faults:
            cmd += ["--fault", fault]
        for field in self.hello:
            cmd += ["--hello", field]
        if self.cost_profile:
            cmd += ["--cost-profile", str(self.cost_profile)]
        if self.api != "hil":
            cmd += ["--api", self.api]
            if self.model is not None:
                cmd += ["--model", str(self.model)]
            if self.model_id:
                cmd += ["--model-id", self.model_id]
        return cmd

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the board; returns what to open: the pty path, or the socket:// URL when tcp=True."""
        if self.process is not None:
            raise VirtualBoardError("virtual board already started", "call stop() first")
        self.process, self._stderr = child.spawn(self.command())
        want = ("PORT", "URL") if self.tcp else ("PORT",)
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        buf = b""
        fd = self.process.stdout.fileno()
        while not all(key in found for key in want):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise VirtualBoardError(f"virtual board printed no port within {timeout_s:.0f} s",
                                        "run python -m harness.boards.virtual by hand to see what it does")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self._fail()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    key, _, value = line.decode(errors="replace").strip().partition(" ")
                    found[key] = value
            elif self.process.poll() is not None:
                self._fail()
        self.port = found["PORT"]
        self.url = found.get("URL", self.port)
        return self.url

    def _fail(self) -> None:
        self.process.wait(timeout=5)
        tail = self._stderr_tail()
        rc = self.process.returncode
        self.stop()
        # The board reports its own typed errors as one line, `HILnnn cause -- fix: hint`: keep its hint.
        cause, _, hint = tail.partition(" -- fix: ")
        raise VirtualBoardError(f"virtual board exited (code {rc}) before opening its port: {cause}",
                                hint or "run python -m harness.boards.virtual by hand to see its full output")

    def _stderr_tail(self) -> str:
        return child.last_stderr_line(self._stderr, "no output")

    def stop(self) -> None:
        child.stop(self.process, self._stderr)
        self.process = None
        self._stderr = None

    def __enter__(self) -> VirtualBoard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
