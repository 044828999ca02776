"""Serve a local serial port over RFC 2217 (telnet with COM-port control), so `rfc2217://host:port` reaches it.

    python -m harness.link.rfc2217_server --port /dev/pts/5 --listen 127.0.0.1:0

prints `URL rfc2217://127.0.0.1:PORT` once it listens and serves one client at a time until its stdin
closes (`--exit-on-stdin-eof`) or it is stopped. Bytes go through unchanged; baud, framing and modem-line
requests are pyserial's `serial.rfc2217.PortManager`, the same server side pyserial's own example uses.

For a real board on another machine use esptool's `esp_rfc2217_server` (it also times the DTR/RTS reset
esptool asks for); this one exists for ports without modem lines: a pty (the virtual board) answers the
DTR/RTS/break and modem-status ioctls with ENOTTY, which would end PortManager's session, so here they are
no-ops that report the lines idle.
"""

from __future__ import annotations

import argparse
import errno
import select
import socket
import sys
import threading

import serial
import serial.rfc2217

from . import child
from ..errors import LinkError


class NoModemLinesSerial(serial.Serial):
    """A pyserial port whose control-line calls are no-ops where the device has no such lines (a pty)."""

    def _quiet(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                return False
            raise

    def _update_dtr_state(self):
        self._quiet(super()._update_dtr_state)

    def _update_rts_state(self):
        self._quiet(super()._update_rts_state)

    def _update_break_state(self):
        self._quiet(super()._update_break_state)

    @property
    def cts(self):
        return self._quiet(lambda: serial.Serial.cts.fget(self))

    @property
    def dsr(self):
        return self._quiet(lambda: serial.Serial.dsr.fget(self))

    @property
    def ri(self):
        return self._quiet(lambda: serial.Serial.ri.fget(self))

    @property
    def cd(self):
        return self._quiet(lambda: serial.Serial.cd.fget(self))


class Bridge:
    """One RFC 2217 client at a time ↔ one serial port (the port stays open between clients)."""

    def __init__(self, port: str, listen: tuple[str, int], baud: int = 115200):
        self.serial = NoModemLinesSerial(port, baud, timeout=0.05)
        self.listener = socket.create_server(listen)
        self.url = f"rfc2217://{listen[0]}:{self.listener.getsockname()[1]}"
        self.stopping = threading.Event()

    def serve(self, watch_stdin: bool = False) -> None:
        while not self.stopping.is_set():
            rlist = [self.listener] + ([sys.stdin] if watch_stdin else [])
            ready, _, _ = select.select(rlist, [], [], 0.5)
            if watch_stdin and sys.stdin in ready and not sys.stdin.buffer.read1(4096):
                return
            if self.listener in ready:
                conn, _ = self.listener.accept()
                self._session(conn, watch_stdin)

    def _session(self, conn: socket.socket, watch_stdin: bool) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        manager = serial.rfc2217.PortManager(self.serial, _Writer(conn))
        done = threading.Event()

        def from_port() -> None:
            while not done.is_set():
                try:
                    data = self.serial.read(self.serial.in_waiting or 1)
                    if data:
                        conn.sendall(b"".join(manager.escape(data)))
                    manager.check_modem_lines()
                except (OSError, serial.SerialException):
                    break
            done.set()

        reader = threading.Thread(target=from_port, daemon=True)
        reader.start()
        try:
            while not done.is_set():
                rlist = [conn] + ([sys.stdin] if watch_stdin else [])
                ready, _, _ = select.select(rlist, [], [], 0.5)
                if watch_stdin and sys.stdin in ready and not sys.stdin.buffer.read1(4096):
                    self.stopping.set()
                    break
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    self.serial.write(b"".join(manager.filter(data)))
        except (OSError, serial.SerialException):
            pass
        finally:
            done.set()
            reader.join(timeout=2)
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.serial.close()


class _Writer:
    """PortManager writes its telnet answers through `.write`; a socket has `sendall`."""

    def __init__(self, conn: socket.socket):
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


class RFC2217Server:
    """This server as a child process in front of `port` (a pty or device): `url` once started."""

    def __init__(self, port: str, listen: str = "127.0.0.1:0"):
        self.port, self.listen = port, listen
        self.url: str | None = None
        self._proc = self._stderr = None

    def start(self) -> str:
        self._proc, self._stderr = child.spawn([sys.executable, "-m", "harness.link.rfc2217_server", "--port",
                                                self.port, "--listen", self.listen, "--exit-on-stdin-eof"])
        line = self._proc.stdout.readline().decode(errors="replace").split()
        if len(line) != 2 or line[0] != "URL":
            why = child.last_stderr_line(self._stderr, "it printed no URL")
            self.stop()
            raise LinkError(f"the RFC 2217 server for {self.port} did not start: {why}",
                            "check the port path and that the listen address is free", code="HIL207")
        self.url = line[1]
        return self.url

    def stop(self) -> None:
        child.stop(self._proc, self._stderr)
        self._proc = self._stderr = None

    def __enter__(self) -> "RFC2217Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.link.rfc2217_server", description=__doc__.splitlines()[0])
    ap.add_argument("--port", required=True, help="local serial port or pty to serve")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any free one)")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (harness child)")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        bridge = Bridge(args.port, (host or "127.0.0.1", int(port)))
    except (OSError, serial.SerialException, ValueError) as exc:
        print(f"HIL207 cannot serve {args.port} on {args.listen}: {exc} -- fix: check the port and that the "
              f"address is free", file=sys.stderr)
        return 2
    print(f"URL {bridge.url}", flush=True)
    try:
        bridge.serve(watch_stdin=args.exit_on_stdin_eof)
    except KeyboardInterrupt:
        pass
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
