"""A link relay that injects faults between the harness and a board: `python -m harness.link.relay --to URL`.

The relay is a separate process owning a pty pair. The harness opens the relay's pty exactly as it would
open a board; the relay forwards every byte to the board (a pty, /dev/tty*, or a socket:// URL, opened
with transport.open_link, so the board is locked as in a bench run) and back, and damages the traffic
on the way as it was told, per direction:

    ber:RATE              flip each bit with probability RATE (1e-4)
    drop-bytes:RATE       drop each byte with probability RATE
    drop-frames:RATE      drop whole frames (the bytes between two 0x00 delimiters)
    dup-frames:RATE       send whole frames twice
    stall:AFTER:SECONDS   after AFTER bytes, hold everything for SECONDS (once), then deliver it
    garbage:N             after every N frames, insert an ESP32 ROM boot banner as a UART at the host's
                          baud receives it from the ROM's 74880 baud (harness/link/bootlog.py)

A spec may start with `to-board:` or `to-host:`; without one it applies to both directions, except
`garbage`, which is what a resetting board sends and so defaults to `to-host`. Faults are drawn from a
seeded generator per direction and placed by stream position (bit, byte or frame count), so the same
seed and the same traffic give the same damage. The relay keeps counts of everything it did; ask with
`Relay.stats`, or type `stats` on its stdin.

Frame-aware faults hold the bytes of a frame until its closing 0x00 has arrived (a run longer than any
frame, or idle for 50 ms, is passed on as it is): that is the only delay the relay adds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from dataclasses import dataclass

from . import bootlog, child
from ..errors import ConfigError, HarnessError, LinkError
from .protocol import max_wire_bytes
from .transport import open_link

DIRECTIONS = ("to-board", "to-host")
KINDS = ("ber", "drop-bytes", "drop-frames", "dup-frames", "stall", "garbage")
START_TIMEOUT_S = 20.0
READ_CHUNK = 65536
MAX_BACKLOG = 1 << 20          # like a UART nobody reads: past this, bytes towards the host are lost
PARTIAL_FLUSH_S = 0.05         # a run without its closing zero this old is not a frame in transit
_MAX_RUN = max_wire_bytes()    # a longer run cannot be a frame

_USAGE = ("use [to-board:|to-host:]KIND:ARGS with KIND one of ber:RATE, drop-bytes:RATE, drop-frames:RATE, "
          "dup-frames:RATE, stall:AFTER_BYTES:SECONDS, garbage:EVERY_N_FRAMES")


# ---------------------------------------------------------------------------------------------------
# Fault specs

@dataclass(frozen=True)
class LinkFault:
    kind: str
    direction: str          # "to-board", "to-host" or "both"
    rate: float = 0.0       # ber, drop-bytes, drop-frames, dup-frames
    after: int = 0          # stall
    seconds: float = 0.0    # stall
    every: int = 0          # garbage

    @classmethod
    def parse(cls, spec: str) -> LinkFault:
        parts = spec.strip().split(":")
        direction = None
        if parts and parts[0] in DIRECTIONS:
            direction = parts.pop(0)
        kind, args = (parts[0], parts[1:]) if parts else ("", [])

        def bad(why: str) -> ConfigError:
            return ConfigError(f"bad link fault '{spec}': {why}", _USAGE, code="HIL104")

        if kind not in KINDS:
            raise bad(f"unknown kind '{kind}'")
        want = 2 if kind == "stall" else 1
        if len(args) != want:
            raise bad(f"{kind} takes {want} argument{'s' if want > 1 else ''}")
        try:
            if kind == "stall":
                after, seconds = int(args[0]), float(args[1])
                if after < 0 or not seconds > 0:
                    raise bad("AFTER_BYTES must be ≥ 0 and SECONDS > 0")
                return cls(kind, direction or "both", after=after, seconds=seconds)
            if kind == "garbage":
                every = int(args[0])
                if every < 1:
                    raise bad("EVERY_N_FRAMES must be ≥ 1")
                return cls(kind, direction or "to-host", every=every)
            rate = float(args[0])
        except ValueError:
            raise bad("arguments must be numbers") from None
        if not 0.0 <= rate <= 1.0:
            raise bad("RATE must be between 0 and 1")
        return cls(kind, direction or "both", rate=rate)

    def applies_to(self, direction: str) -> bool:
        return self.direction in ("both", direction)

    def __str__(self) -> str:
        prefix = "" if self.direction == ("to-host" if self.kind == "garbage" else "both") else f"{self.direction}:"
        if self.kind == "stall":
            return f"{prefix}stall:{self.after}:{self.seconds:g}"
        if self.kind == "garbage":
            return f"{prefix}garbage:{self.every}"
        return f"{prefix}{self.kind}:{self.rate:g}"


def _new_stats() -> dict:
    return {"bytes_in": 0, "bytes_out": 0, "frames": 0, "frames_dropped": 0, "frames_duplicated": 0,
            "bits_flipped": 0, "bytes_dropped": 0, "garbage_bursts": 0, "garbage_bytes": 0, "stalls": 0,
            "stalled_s": 0.0}


class Injector:
    """One direction's faults, applied to a byte stream arriving in pieces of any size (no I/O here).

    `push(data, now)` takes what arrived; `take(now)` returns what may be sent on now; `wait(now)` says how
    long until more may (a stall or a partial frame). Damage is placed by stream position with a seeded
    generator: the gaps between flipped bits and dropped bytes are geometric, one draw per event, so it
    does not depend on how the stream was cut into pieces.
    """

    def __init__(self, faults: list[LinkFault], seed: int, *, host_baud: int = 921600):
        self.faults = list(faults)
        self.rng = random.Random(seed)
        by_kind = {f.kind: f for f in faults}  # the last spec of a kind wins
        self.ber = by_kind["ber"].rate if "ber" in by_kind else 0.0
        self.drop_byte = by_kind["drop-bytes"].rate if "drop-bytes" in by_kind else 0.0
        self.drop_frame = by_kind["drop-frames"].rate if "drop-frames" in by_kind else 0.0
        self.dup_frame = by_kind["dup-frames"].rate if "dup-frames" in by_kind else 0.0
        self.garbage_every = by_kind["garbage"].every if "garbage" in by_kind else 0
        self.stall = by_kind.get("stall")
        self.garbage = bootlog.as_received(bootlog.ROM_TEXT, bootlog.ROM_BAUD, host_baud) if self.garbage_every else b""
        self.frame_aware = bool(self.drop_frame or self.dup_frame or self.garbage_every)
        self.stats = _new_stats()
        self._partial = bytearray()
        self._partial_at = 0.0   # when the unterminated run last grew
        self._frames_since_garbage = 0
        self._byte_pos = 0        # bytes past the byte stage so far (for drop-bytes)
        self._bit_pos = 0         # bits past the byte stage so far (for ber)
        self._next_drop = self._gap(self.drop_byte)
        self._next_flip = self._gap(self.ber)
        self._ready = bytearray()
        self._held = bytearray()
        self._hold_until = 0.0
        self._forwarded = 0       # bytes that left the fault stages (stall counts these)
        self._stalled = False

    # -- stages -----------------------------------------------------------------------------------------
    def _gap(self, p: float) -> float:
        """Events skipped before the next one for a per-item probability p (inf when p is 0)."""
        if p <= 0.0:
            return math.inf
        if p >= 1.0:
            return 0
        return int(math.log(1.0 - self.rng.random()) / math.log(1.0 - p))

    def _frames(self, data: bytes, now: float) -> bytes:
        if not self.frame_aware:
            return data
        out = bytearray()
        parts = data.split(b"\x00")
        for part in parts[:-1]:
            run = bytes(self._partial) + part if self._partial else part
            self._partial.clear()
            if not run:
                out += b"\x00"
                continue
            self.stats["frames"] += 1
            unit = run + b"\x00"
            # Fixed draw order per frame keeps the pattern a function of the seed and the frame count.
            dropped = self.drop_frame and self.rng.random() < self.drop_frame
            doubled = self.dup_frame and self.rng.random() < self.dup_frame
            if dropped:
                self.stats["frames_dropped"] += 1
            else:
                out += unit
                if doubled:
                    out += unit
                    self.stats["frames_duplicated"] += 1
            if self.garbage_every:
                self._frames_since_garbage += 1
                if self._frames_since_garbage >= self.garbage_every:
                    # After a delimiter, so the burst is its own candidate and never cuts a frame.
                    self._frames_since_garbage = 0
                    out += self.garbage
                    self.stats["garbage_bursts"] += 1
                    self.stats["garbage_bytes"] += len(self.garbage)
        if parts[-1]:
            self._partial_at = now
            self._partial += parts[-1]
            if len(self._partial) > _MAX_RUN:
                out += self._partial  # too long to be a frame: log text, pass it on as it is
                self._partial.clear()
        return bytes(out)

    def _bytes(self, data: bytes) -> bytes:
        if not data or (self.drop_byte <= 0 and self.ber <= 0):
            return data
        if self.drop_byte > 0:
            start, end = self._byte_pos, self._byte_pos + len(data)
            keep = bytearray()
            cut = 0
            while self._next_drop < end:
                i = int(self._next_drop) - start
                keep += data[cut:i]
                cut = i + 1
                self.stats["bytes_dropped"] += 1
                self._next_drop += 1 + self._gap(self.drop_byte)
            keep += data[cut:]
            self._byte_pos = end
            data = bytes(keep)
        if self.ber > 0 and data:
            start, end = self._bit_pos, self._bit_pos + 8 * len(data)
            if self._next_flip < end:
                buf = bytearray(data)
                while self._next_flip < end:
                    bit = int(self._next_flip) - start
                    buf[bit >> 3] ^= 1 << (bit & 7)
                    self.stats["bits_flipped"] += 1
                    self._next_flip += 1 + self._gap(self.ber)
                data = bytes(buf)
            self._bit_pos = end
        return data

    # -- queue ------------------------------------------------------------------------------------------
    def push(self, data: bytes, now: float) -> None:
        self.stats["bytes_in"] += len(data)
        self._queue(self._bytes(self._frames(data, now)), now)

    def _queue(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self._held:
            self._held += data
            return
        if self.stall is not None and not self._stalled and self._forwarded + len(data) > self.stall.after:
            n = self.stall.after - self._forwarded
            self._ready += data[:n]
            self._held += data[n:]
            self._forwarded += n
            self._stalled = True
            self._hold_until = now + self.stall.seconds
            self.stats["stalls"] += 1
            self.stats["stalled_s"] += self.stall.seconds
            return
        self._ready += data
        self._forwarded += len(data)

    def take(self, now: float) -> bytes:
        if self._partial and now - self._partial_at >= PARTIAL_FLUSH_S:
            # No closing zero came: not a frame in transit (log text, a stalled sender); pass it on.
            run = bytes(self._partial)
            self._partial.clear()
            self._queue(self._bytes(run), now)
        if self._held and now >= self._hold_until:
            self._ready += self._held
            self._forwarded += len(self._held)
            self._held.clear()
        out = bytes(self._ready)
        self._ready.clear()
        self.stats["bytes_out"] += len(out)
        return out

    def wait(self, now: float) -> float | None:
        waits = []
        if self._held:
            waits.append(self._hold_until - now)
        if self._partial:
            waits.append(self._partial_at + PARTIAL_FLUSH_S - now)
        return max(0.0, min(waits)) if waits else None


# ---------------------------------------------------------------------------------------------------
# The relay process

class RelayServer:
    """The pty the harness opens, the board link, and the two Injectors between them."""

    def __init__(self, to_url: str, faults: list[LinkFault], seed: int, *, baud: int = 921600,
                 watch_stdin: bool = False):
        self.to_url = to_url
        self.faults = list(faults)
        self.seed = seed
        self.board = open_link(to_url, baud, timeout=0.05)
        self.to_board = Injector([f for f in faults if f.applies_to("to-board")], seed * 2 + 1, host_baud=baud)
        self.to_host = Injector([f for f in faults if f.applies_to("to-host")], seed * 2 + 2, host_baud=baud)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)  # the slave stays open here, so reads never see EIO
        self.port_path = os.ttyname(self.slave)
        self.watch_stdin = watch_stdin
        self.stopping = False
        self.error: str | None = None
        self._host_out = bytearray()
        # A port or socket with a descriptor is read in the select loop itself (one wake-up per hop: the
        # pipeline is latency-bound). Other pyserial URLs are read by a thread through the Link's own read,
        # and the bytes cross to the loop through a pipe.
        self._board_fd = _descriptor(self.board)
        if self._board_fd is None:
            self._pipe_r, self._pipe_w = os.pipe()
            self._reader = threading.Thread(target=self._read_board, daemon=True)
        else:
            self._pipe_r, self._reader = self._board_fd, None

    def stats(self) -> dict:
        return {"to-board": dict(self.to_board.stats), "to-host": dict(self.to_host.stats),
                "faults": [str(f) for f in self.faults], "seed": self.seed}

    def _read_board(self) -> None:
        try:
            while not self.stopping:
                data = self.board.read(READ_CHUNK)
                if data:
                    os.write(self._pipe_w, data)
        except (HarnessError, OSError) as exc:
            self.error = str(exc)
        finally:
            os.close(self._pipe_w)

    def serve(self) -> None:
        if self._reader is not None:
            self._reader.start()
        stdin_fd = sys.stdin.fileno() if self.watch_stdin else None
        while not self.stopping:
            now = time.monotonic()
            waits = [w for w in (self.to_board.wait(now), self.to_host.wait(now)) if w is not None]
            rlist = [self.master, self._pipe_r] + ([stdin_fd] if stdin_fd is not None else [])
            wlist = [self.master] if self._host_out else []
            try:
                readable, writable, _ = select.select(rlist, wlist, [], min(waits + [0.5]))
            except InterruptedError:
                continue
            now = time.monotonic()
            if self.master in readable:
                try:
                    self.to_board.push(os.read(self.master, READ_CHUNK), now)
                except BlockingIOError:
                    pass
            if self._pipe_r in readable:
                try:
                    data = os.read(self._pipe_r, READ_CHUNK)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    self.error, data = str(exc), b""
                if data == b"":  # the board link failed
                    print(f"relay: board link lost: {self.error}", file=sys.stderr, flush=True)
                    return
                if data:
                    self.to_host.push(data, now)
            if stdin_fd is not None and stdin_fd in readable:
                self._command(os.read(stdin_fd, 4096))
            out = self.to_board.take(now)
            if out:
                self.board.write(out)
            self._host_out += self.to_host.take(now)
            if len(self._host_out) > MAX_BACKLOG:
                del self._host_out[:len(self._host_out) - MAX_BACKLOG]
            if self._host_out and (self.master in writable or not wlist):
                try:
                    del self._host_out[:os.write(self.master, self._host_out)]
                except BlockingIOError:
                    pass

    def _command(self, data: bytes) -> None:
        if not data:
            self.stopping = True
            return
        for line in data.decode(errors="replace").split():
            if line == "stats":
                print("STATS " + json.dumps(self.stats()), flush=True)

    def close(self) -> None:
        self.stopping = True
        if self._reader is not None:
            self._reader.join(timeout=1)
        self.board.close()
        for fd in (self.master, self.slave) + ((self._pipe_r,) if self._reader is not None else ()):
            try:
                os.close(fd)
            except OSError:
                pass


def _descriptor(link) -> int | None:
    """The file descriptor under a Link (posix serial port, socket), or None (other pyserial URLs)."""
    for obj in (link, getattr(link, "_port", None)):
        fileno = getattr(obj, "fileno", None)
        if fileno is not None:
            try:
                return int(fileno())
            except (OSError, ValueError, TypeError, AttributeError):
                continue
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m harness.link.relay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, metavar="URL", help="the board: /dev/ttyUSB0, /dev/pts/N or socket://h:p")
    ap.add_argument("--fault", action="append", default=[], metavar="SPEC", help="a fault to inject (repeatable)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault generators (default 0)")
    ap.add_argument("--baud", type=int, default=921600, help="baud of the board link and of the host's UART "
                    "for the garbage bursts (default 921600)")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin is closed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        faults = [LinkFault.parse(spec) for spec in args.fault]
        server = RelayServer(args.to, faults, args.seed, baud=args.baud, watch_stdin=args.exit_on_stdin_eof)
    except HarnessError as exc:
        print(str(exc), file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1

    def stop(_sig, _frame):
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        print(f"PORT {server.port_path}", flush=True)
        server.serve()
    finally:
        server.close()
    return 0


# ---------------------------------------------------------------------------------------------------
# The Python API: a relay process owned by the caller

class RelayError(LinkError):
    """The relay process did not come up (bad fault spec, board link refused)."""

    code = "HIL240"


class Relay:
    """`Relay(to_url, faults, seed).start()` → the pty to open instead of the board; `.stats`; `.stop()`.

        with Relay(vb.url, ["ber:1e-4", "drop-frames:0.01"], seed=1) as relay:
            board = Board.open(relay.url, baud)
    """

    def __init__(self, to_url: str, faults=(), seed: int = 0, *, baud: int = 921600):
        self.to_url = str(to_url)
        self.faults = tuple(str(f) for f in faults)
        for spec in self.faults:  # a bad spec is the caller's mistake: say so here, in one line
            LinkFault.parse(spec)
        self.seed = int(seed)
        self.baud = baud
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self._buf = b""
        self._stderr = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "harness.link.relay", "--to", self.to_url, "--seed", str(self.seed),
               "--baud", str(self.baud), "--exit-on-stdin-eof"]
        for spec in self.faults:
            cmd += ["--fault", spec]
        return cmd

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        if self.process is not None:
            raise RelayError("relay already started", "call stop() first")
        self.process, self._stderr = child.spawn(self.command())
        line = self._line("PORT", timeout_s)
        self.url = line
        return self.url

    def _line(self, key: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        fd = self.process.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                got, _, value = raw.decode(errors="replace").strip().partition(" ")
                if got == key:
                    return value
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"printed no {key} line within {timeout_s:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._fail("exited")
                self._buf += chunk
            elif self.process.poll() is not None:
                self._fail("exited")

    def _fail(self, what: str) -> None:
        tail = child.last_stderr_line(self._stderr)
        self.stop()
        cause, _, hint = tail.partition(" -- fix: ")
        raise RelayError(f"link relay to {self.to_url} {what}" + (f": {cause}" if cause else ""),
                         hint or "run python -m harness.link.relay --to URL by hand to see its output")

    @property
    def stats(self) -> dict:
        """The relay's counts per direction (`to-board`, `to-host`): bytes, frames dropped/duplicated,
        bits flipped, bytes dropped, garbage bursts, stalls."""
        if self.process is None or self.process.poll() is not None:
            raise RelayError("link relay is not running", "start() it first")
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        return json.loads(self._line("STATS", 5.0))

    def stop(self) -> None:
        child.stop(self.process, self._stderr)
        self.process = None
        self._stderr = None

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
