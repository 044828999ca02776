"""Whole-board fault switches of the virtual board: `reset-every:N[:BOOT_MS]` and `never-answer`.

These act on the board, not on single frames (those are `flip-lsb` / `silent-after` in platform.py):

- `reset-every:N[:BOOT_MS]` — after every N distinct INFERs (counted by their RESULT's seq since the last
  boot) the board restarts by itself, as after a watchdog or brownout reset: the RESULT of the N-th goes
  out, then the core is initialised again (its model store is kept and the committed model is loaded
  from it, as on a real boot), the ROM's boot banner goes out as the host's UART receives it
  (harness/link/bootlog.py), and for BOOT_MS (default 300, an ESP32 app's boot time) whatever arrives is lost,
  so every request in flight is lost (the requests queued behind the N-th go with the restart).
- `never-answer` — the board boots but never sends a byte (HELLO included), like a board whose firmware
  hangs before its UART is set up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from harness.link import bootlog
from harness.link.protocol import FrameDecoder, MsgType

KINDS = ("reset-every", "never-answer")
DEFAULT_BOOT_MS = 300


@dataclass(frozen=True)
class Switch:
    kind: str
    n: int = 0
    boot_ms: int = DEFAULT_BOOT_MS

    @classmethod
    def parse(cls, spec: str) -> Switch:
        kind, _, rest = spec.partition(":")
        args = rest.split(":") if rest else []
        if kind == "never-answer" and not args:
            return cls(kind)
        if kind == "reset-every" and 1 <= len(args) <= 2 and all(a.isdigit() for a in args) and int(args[0]) > 0:
            return cls(kind, int(args[0]), int(args[1]) if len(args) > 1 else DEFAULT_BOOT_MS)
        raise ValueError(f"bad fault '{spec}': use reset-every:N[:BOOT_MS] (N ≥ 1 distinct INFERs) or "
                         "never-answer")

    def __str__(self) -> str:
        return self.kind if self.kind == "never-answer" else f"{self.kind}:{self.n}:{self.boot_ms}"


def handles(spec: str) -> bool:
    """True when `spec` names one of these switches (the CLI routes it here instead of to Fault.parse)."""
    return spec.partition(":")[0] in KINDS


class BoardSwitches:
    """Filters what the core writes; asks the server for a restart through `request_reset`.

    `resets` counts the restarts it caused, for tests and the soak report.
    """

    def __init__(self, switches: list[Switch], request_reset: Callable[[], None], *, host_baud: int = 921600):
        self.never_answer = any(s.kind == "never-answer" for s in switches)
        every = [s for s in switches if s.kind == "reset-every"]
        self.every = every[0].n if every else None
        self.boot_s = every[0].boot_ms / 1000.0 if every else 0.0
        self.request_reset = request_reset
        self.banner = bootlog.as_received(bootlog.ROM_TEXT, bootlog.ROM_BAUD, host_baud)
        self.resets = 0
        self._seen: set[int] = set()
        self._booting_until = 0.0
        self._decoder = FrameDecoder()

    def booting(self) -> bool:
        """True while the board restarts: the server drops what arrives, as a chip in its boot ROM would."""
        return self._booting_until > 0.0 and time.monotonic() < self._booting_until

    def __call__(self, wire: bytes) -> bytes:
        if self.never_answer:
            return b""
        if self.every is None:
            return wire
        if self.booting():
            return b""  # the rest of the feed in which the restart began: lost with the restart
        out = bytearray()
        for frame in self._decoder.feed(wire):
            if frame.type == MsgType.RESULT and frame.seq not in self._seen:
                self._seen.add(frame.seq)
                if len(self._seen) >= self.every:
                    out += _encode(frame)
                    self._restart(out)
                    return bytes(out)
            out += _encode(frame)
        return bytes(out)

    def _restart(self, out: bytearray) -> None:
        self.resets += 1
        self._seen.clear()
        self._booting_until = time.monotonic() + self.boot_s
        out += self.banner
        self.request_reset()


def _encode(frame) -> bytes:
    from harness.link.protocol import encode_frame

    return encode_frame(frame.type, frame.seq, frame.payload)
