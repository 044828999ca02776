"""The virtual board's I/O loop: a pseudo-terminal (and optionally one TCP client) wired to the C core.

The harness opens the pty's slave path, or a `socket://` URL, with pyserial exactly as it opens a board's
serial port. Bytes read from the link are fed to the core; what the core writes goes back out on the link
the last request came from. With a throttle, both directions are paced to a UART's line rate (10 bits a
byte: start, 8 data, stop) on a cumulative schedule, so the harness sees the same time per beat a board at
that baud would give it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time
import tty

from .core import Core
from .platform import Platform

READ_CHUNK = 65536
# A UART with nobody listening loses its bytes; past this backlog the virtual board does the same.
MAX_BACKLOG = 1 << 20


class Pacer:
    """A line of `rate` bytes/s: how many queued bytes have finished crossing it by now.

    `start` is when the first queued byte began to cross; a byte can only begin once the previous one
    finished, so the schedule is cumulative and never runs ahead of the line rate.
    """

    def __init__(self, rate: float | None):
        self.rate = rate
        self.start = 0.0

    def queued(self, now: float, was_empty: bool) -> None:
        if self.rate and was_empty:
            self.start = max(self.start, now)

    def allowed(self, now: float, pending: int) -> int:
        if not self.rate:
            return pending
        return max(0, min(pending, int((now - self.start) * self.rate)))

    def sent(self, n: int) -> None:
        if self.rate:
            self.start += n / self.rate

    def wait(self, pending: int) -> float:
        """Seconds until a useful piece (about 2 ms of line time, or all that is queued) has crossed."""
        if not self.rate or not pending:
            return 0.0
        piece = min(pending, max(1, int(self.rate * 0.002)))
        return max(0.0, self.start + piece / self.rate - time.monotonic())


class Server:
    def __init__(self, platform: Platform, *, throttle_baud: int | None = None, tcp_port: int | None = None,
                 watch_stdin: bool = False, core=None):
        self.platform = platform
        # `core`: anything with init() and feed(bytes) writing to platform.outbox; default the C device core.
        # The virtual MLPerf Tiny device (mlperf_device.py) takes its place on the same link and throttle.
        self.core = core if core is not None else Core(platform.device_info(), platform.hooks())
        rate = throttle_baud / 10.0 if throttle_baud else None
        self.rx_pace = Pacer(rate)
        self.tx_pace = Pacer(rate)
        self.rx = bytearray()
        self.tx = bytearray()
        self.watch_stdin = watch_stdin
        self.stopping = False

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        # Holding the slave open keeps the pty alive between clients: without it the master reads EIO
        # whenever no harness has the port open.
        os.set_blocking(self.master, False)
        self.port_path = os.ttyname(self.slave)

        self.listener = None
        self.client = None
        self.tcp_url = None
        if tcp_port is not None:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", tcp_port))
            self.listener.listen(1)
            self.listener.setblocking(False)
            self.tcp_url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.out_fd = self.master
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- lifecycle ------------------------------------------------------------------------------------
    def boot(self) -> None:
        """Power on: the core looks for a committed model in the store and loads it."""
        self.platform.outbox.clear()
        self.core.init()
        self._collect()

    def install_signals(self) -> None:
        def stop(_sig, _frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def close(self) -> None:
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        for sock in (self.client, self.listener):
            if sock is not None:
                sock.close()

    # -- loop -----------------------------------------------------------------------------------------
    def serve(self) -> None:
        while not self.stopping:
            self.step()

    def step(self) -> None:
        rlist = [self.master, self._wake_r]
        if self.listener is not None:
            rlist.append(self.listener)
        if self.client is not None:
            rlist.append(self.client)
        if self.watch_stdin:
            rlist.append(sys.stdin.fileno())
        timeouts = []
        if self.rx:
            timeouts.append(self.rx_pace.wait(len(self.rx)))
        wlist = []
        if self.tx:
            wait = self.tx_pace.wait(len(self.tx))
            if wait <= 0:
                wlist.append(self.out_fd)
            else:
                timeouts.append(wait)
        timeout = min(timeouts) if timeouts else 1.0
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd is self.listener:
                self._accept()
            elif fd is self.client:
                self._read_link(self.client.fileno(), is_client=True)
            elif fd == self.master:
                self._read_link(self.master)
            elif fd == self._wake_r:
                _drain(self._wake_r)
            elif self.watch_stdin and fd == sys.stdin.fileno():
                if not os.read(fd, 4096):
                    self.stopping = True
        self._feed_due()
        if self.tx:
            self._flush()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # One serial line, one client: a new connection replaces the old one (a reopened port).
        if self.client is not None:
            self.client.close()
        self.client = conn
        self.out_fd = conn.fileno()
        self.tx.clear()

    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.out_fd = self.master
        self.tx.clear()

    def _read_link(self, fd: int, is_client: bool = False) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if is_client:
                self._drop_client()
            elif exc.errno != errno.EIO:
                raise
            else:
                time.sleep(0.05)  # pty without any reader: nothing to do until a client opens it
            return
        if not data:
            if is_client:
                self._drop_client()
            return
        if fd != self.out_fd:
            self.out_fd = fd
            self.tx.clear()
        self.rx_pace.queued(time.monotonic(), not self.rx)
        self.rx += data

    def _feed_due(self) -> None:
        if not self.rx:
            return
        n = self.rx_pace.allowed(time.monotonic(), len(self.rx))
        if n <= 0:
            return
        chunk = bytes(self.rx[:n])
        del self.rx[:n]
        self.rx_pace.sent(n)
        switches = getattr(self.platform, "switches", None)
        if switches is not None and switches.booting():
            return  # restarting (reset-every switch): bytes that arrive during the boot are lost, as on a chip
        self.core.feed(chunk)
        if self.platform.reset_requested:
            # RESET: the board restarts; the bytes it had not read yet are lost, the store is kept.
            self.platform.reset_requested = False
            self.rx.clear()
            self._collect()
            self.core.init()
        self._collect()

    def _collect(self) -> None:
        outbox = self.platform.outbox
        if outbox:
            self.tx_pace.queued(time.monotonic(), not self.tx)
            self.tx += b"".join(outbox)
            outbox.clear()
            if len(self.tx) > MAX_BACKLOG:
                del self.tx[:len(self.tx) - MAX_BACKLOG]

    def _flush(self) -> None:
        n = self.tx_pace.allowed(time.monotonic(), len(self.tx))
        if n <= 0:
            return
        try:
            written = os.write(self.out_fd, self.tx[:n])
        except BlockingIOError:
            return
        except OSError:
            if self.client is not None and self.out_fd == self.client.fileno():
                self._drop_client()
            else:
                self.tx.clear()
            return
        del self.tx[:written]
        self.tx_pace.sent(written)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
