"""labgrid places as boards: `--device labgrid:PLACE` acquires the place, reaches its serial port over RFC 2217
and releases the place when the run ends, fails, or is interrupted.

labgrid lives in its own virtualenv (`make labgrid` → `.venv-labgrid`; or `HIL_LABGRID_PYTHON`): it depends on
pyserial-labgrid, which replaces pyserial's `serial` package and registers an auto-loading pytest plugin,
so importing it here would change the harness's own serial stack. `LabgridPlace` runs harness/boards/lgplace.py
with that interpreter as a child process; the child holds the coordinator session and the place, prints
the port's `rfc2217://` URL and whether the place has a power switch, cycles that switch when asked
(`power_cycle`, labgrid's own power driver), and releases the place once its stdin closes, which also
happens when this process dies.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from ..link import child
from ..errors import ConfigError, LinkError

REPO = Path(__file__).resolve().parent.parent.parent
PREFIX = "labgrid:"
START_TIMEOUT_S = 60.0


class LabgridError(LinkError):
    code = "HIL250"


def labgrid_python() -> str:
    """The interpreter that has labgrid: $HIL_LABGRID_PYTHON, else the repo's .venv-labgrid."""
    path = os.environ.get("HIL_LABGRID_PYTHON") or str(REPO / ".venv-labgrid" / "bin" / "python")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"labgrid is not installed (no interpreter at {path})",
                          "run `make labgrid` (labgrid in .venv-labgrid, apart from the harness's pyserial), or "
                          "set HIL_LABGRID_PYTHON to a Python that has labgrid", code="HIL250")
    return path


def coordinator(option: str | None) -> str:
    address = option or os.environ.get("LG_COORDINATOR")
    if not address:
        raise ConfigError("--device labgrid:PLACE needs the labgrid coordinator's address",
                          "pass --lg-coordinator HOST:PORT or set LG_COORDINATOR", code="HIL257")
    return address


class LabgridPlace:
    def __init__(self, place: str, coordinator_address: str, *, wait_s: float = 0.0, python: str | None = None):
        self.place = place
        self.coordinator = coordinator_address
        self.wait_s = wait_s
        self.python = python or labgrid_python()
        self.url: str | None = None
        self.speed: int | None = None
        self.power: str | None = None  # the place's power resource class, when it has one
        self.power_cycles = 0
        self._proc = self._stderr = None

    def start(self) -> str:
        """Acquire the place (waiting up to wait_s if someone holds it); returns its rfc2217:// URL."""
        # -I: labgrid's venv alone; the harness directory (its module names) must not shadow labgrid's imports.
        self._proc, self._stderr = child.spawn([
            self.python, "-I", str(REPO / "harness" / "boards" / "lgplace.py"), "--coordinator", self.coordinator,
            "--place", self.place, "--wait", str(self.wait_s)])
        deadline = time.monotonic() + START_TIMEOUT_S + self.wait_s
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline().decode(errors="replace")
            if not line:
                break  # the child exited: its stderr says why
            key, _, value = line.strip().partition(" ")
            if key == "URL":
                self.url = value
            elif key == "SPEED":
                self.speed = int(value)
            elif key == "POWER":
                self.power = None if value == "none" else value
            elif key == "READY" and self.url:
                return self.url
        self._proc.wait(timeout=10) if self._proc.poll() is None and time.monotonic() >= deadline else None
        raise self._failure()

    def _failure(self) -> LabgridError:
        last = child.last_stderr_line(self._stderr, "")
        self.stop()
        found = re.match(r"(HIL\d{3}) (.*?)(?: -- fix: (.*))?$", last)
        if found:
            return LabgridError(found.group(2), found.group(3) or "", code=found.group(1))
        return LabgridError(f"labgrid place {self.place}: the place helper stopped ({last or 'no output'})",
                            "run harness/boards/lgplace.py with .venv-labgrid/bin/python by hand to see why")

    def power_cycle(self, timeout_s: float = 60.0) -> None:
        """Cycle the board's power through the place's power driver (labgrid), e.g. to revive a wedged board."""
        if self.power is None or self._proc is None:
            raise LabgridError(f"place {self.place} has no power port to cycle",
                               "add the board's power switch to the place (a NetworkPowerPort match)", code="HIL258")
        self._proc.stdin.write(b"power-cycle\n")
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline().decode(errors="replace").strip()
            if line == "POWER-CYCLED":
                self.power_cycles += 1
                return
            if line.startswith("POWER-FAILED") or not line:
                raise LabgridError(f"power-cycling place {self.place} failed: {line[13:] or 'helper stopped'}",
                                   f"check the power switch: `labgrid-client -p {self.place} power cycle`",
                                   code="HIL258")
        raise LabgridError(f"power-cycling place {self.place} took over {timeout_s:.0f} s",
                           f"check the power switch: `labgrid-client -p {self.place} power cycle`", code="HIL258")

    def stop(self) -> None:
        """Release the place (the child releases it when its stdin closes)."""
        child.stop(self._proc, self._stderr)
        self._proc = self._stderr = None
