"""Bytes to and from a board: a local serial port, the virtual board's pty, or a pyserial URL (socket://,
rfc2217:// for a board behind an RFC 2217 server such as esptool's esp_rfc2217_server or ser2net).

`open_link` opens the port with pyserial, exclusively: pyserial's own `exclusive=True` (flock on the
device) plus a lock file keyed by the device's real path that holds our PID, so a second run on the same
board fails at once and names the process that has it. Every failure to open is a one-line LinkError
(HIL2xx) with a fix, never a traceback.

Opening a port never resets the board. On ESP devkits RTS drives EN and DTR drives IO0 (through two
transistors on a USB-UART bridge, inside the chip for USB-Serial-JTAG), and the OS asserts both lines when
a port opens. Both asserted is harmless; what resets the chip is RTS asserted while DTR is not, which is
what pyserial's open would pass through if DTR were released first. So, as esp-idf-monitor does, both lines
are set asserted before the port opens (matching what the OS does, no transition), then released RTS
first. A reset happens only when the harness asks for one (`Link.pulse_reset`, esptool's hard-reset
sequence for the profile's `reset` method).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import tempfile
from pathlib import Path

import serial
from esp_pylib.serial_reset import set_dtr, set_rts
from esptool.reset import HardReset

from ..errors import BoardBusyError, LinkError

# Our rfc2217:// client (harness/link/urlhandler) first: it is pyserial's, negotiating line settings only when
# they change; esptool opens its ports through serial_for_url too, so flashing over the network gains as well.
if "harness.link.urlhandler" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.insert(0, "harness.link.urlhandler")

RESET_METHODS = ("none", "rts-dtr", "usb-jtag")

_NO_DEVICE_HINT = "check the cable and `ls /dev/ttyUSB* /dev/ttyACM*`, or use --device virtual"


def lock_path(device: str) -> Path:
    """The lock file of a local device, keyed by its real path (/dev/serial/by-id links share one)."""
    real = os.path.realpath(device)
    return Path(tempfile.gettempdir()) / f"hil-board-{real.strip('/').replace('/', '_')}.lock"


def device_group(path: str) -> str | None:
    """Name of the group owning a device node (dialout on Debian/Ubuntu, uucp on Arch), None if unknown."""
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe_pid(pid: int) -> str:
    """`PID 1234 (python -m pytest ...)`, with the command line when /proc lets us read it."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"PID {pid}"
    cmd = raw.replace(b"\x00", b" ").decode("utf-8", "replace").strip()
    if len(cmd) > 120:
        cmd = cmd[:117] + "..."
    return f"PID {pid} ({cmd})" if cmd else f"PID {pid}"


def _holders(device: str) -> list[int]:
    """PIDs with the device open (scans /proc/*/fd; processes of other users are invisible unless root)."""
    real = os.path.realpath(device)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == real:
                    found.append(int(proc.name))
                    break
        except OSError:
            continue
    return found


def _busy(device: str, pid: int | None) -> BoardBusyError:
    who = describe_pid(pid) if pid else "another process"
    kill = f"kill {pid}" if pid else f"`fuser {device}` shows who"
    return BoardBusyError(f"board busy: {device} is held by {who}",
                          f"wait for that run to finish or stop it ({kill}); one run per board at a time")


class _PortLock:
    """flock on the board's lock file for the life of a Link; the file names the holder's PID."""

    def __init__(self, device: str):
        self.device = device
        self.path = lock_path(device)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            writable = True
        except PermissionError:
            # Left by another user: locking works on a read-only descriptor too, we just cannot sign it.
            fd = os.open(self.path, os.O_RDONLY)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                pid = int(text) if text.isdigit() else None
            finally:
                os.close(fd)
            raise _busy(self.device, pid) from None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Link:
    """An open byte link. `read` returns what has arrived, waiting at most `timeout` for the first byte."""

    def __init__(self, port: serial.SerialBase, url: str, baud: int, timeout: float, lock: _PortLock | None):
        self._port = port
        self._lock = lock
        self.url = url
        self.baud = baud
        self.timeout = timeout

    @property
    def is_local(self) -> bool:
        return self._lock is not None

    def read(self, max_bytes: int = 4096) -> bytes:
        try:
            data = self._port.read(1)
            if data and max_bytes > 1:
                waiting = self._port.in_waiting
                if waiting:
                    data += self._port.read(min(waiting, max_bytes - 1))
            return data
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def reset_input(self) -> None:
        """Drop bytes received but not yet read (stale answers, boot text)."""
        try:
            self._port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def pulse_reset(self, method: str) -> None:
        """Restart the board into its app through the control lines: esptool's own hard-reset sequence.

        `rts-dtr` (USB-UART bridge with the two-transistor auto-reset circuit) and `usb-jtag` (the chip's
        USB-Serial-JTAG peripheral, which drops off the bus during reset and needs longer holds) are
        esptool's `HardReset(uses_usb=False/True)`: EN held low by RTS, DTR (IO0) left released so the chip
        boots the app, not the ROM loader. `none`: nothing to do (virtual board).
        """
        if method not in RESET_METHODS:
            raise LinkError(f"unknown reset method '{method}'", f"use one of: {', '.join(RESET_METHODS)}",
                            code="HIL205")
        if method == "none":
            return
        try:
            # reset(), not __call__(): esptool's wrapper only warns when the port has no control lines,
            # and the user should hear that the board was not reset.
            HardReset(self._port, uses_usb=method == "usb-jtag").reset()
        except (serial.SerialException, OSError) as exc:
            if getattr(exc, "errno", None) in (errno.ENOTTY, errno.EINVAL):
                raise LinkError(f"{self.url} has no RTS/DTR lines to reset the board ({method})",
                                "set `reset: none` in the device profile, or press the board's reset button",
                                code="HIL205") from None
            raise self._lost(exc) from None

    def close(self) -> None:
        try:
            self._port.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Link({self.url!r}, baud={self.baud})"

    def _lost(self, exc: Exception) -> LinkError:
        return LinkError(f"link to {self.url} failed: {exc}",
                         "check the cable; the board may have been unplugged or re-enumerated under another "
                         "name", code="HIL204")


def open_link(url: str, baud: int, *, timeout: float = 0.05, exclusive: bool = True) -> Link:
    """Open a local device path (/dev/ttyUSB0, /dev/pts/N) or a pyserial URL (socket://host:port, rfc2217://)."""
    is_url = "://" in url
    if is_url:
        return _open_url(url, baud, timeout)
    if not os.path.exists(url):
        raise LinkError(f"no serial device at {url}", _NO_DEVICE_HINT, code="HIL201")
    lock = _PortLock(url) if exclusive else None
    if lock is not None:
        lock.acquire()
    try:
        port = _open_quietly(serial.serial_for_url(url, baudrate=baud, timeout=timeout, write_timeout=None,
                                                   exclusive=exclusive, do_not_open=True))
    except serial.SerialException as exc:
        if lock is not None:
            lock.release()
        raise _open_error(url, exc) from None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Link(port, url, baud, timeout, lock)


def _open_quietly(port: serial.SerialBase) -> serial.SerialBase:
    """Open a configured, unopened port without moving EN (see the module docstring); returns it open.

    Before open: DTR and RTS asserted, the state the OS gives an opening port anyway. After: RTS released
    first (EN stays high), then DTR, leaving both lines idle as esptool's hard reset expects to find them.
    A port without control lines (a pty, a TCP socket) ignores all of it.
    """
    port.dtr = True
    port.rts = True
    port.open()
    try:
        set_rts(port, False)  # re-writes DTR too: adapters that only send the line state on a DTR write
        set_dtr(port, False)
    except (serial.SerialException, OSError) as exc:
        if getattr(exc, "errno", None) not in (errno.ENOTTY, errno.EINVAL, None):
            port.close()
            raise
    return port


def _open_url(url: str, baud: int, timeout: float) -> Link:
    try:
        port = _open_quietly(serial.serial_for_url(url, baudrate=baud, timeout=timeout, do_not_open=True))
    except ValueError as exc:
        raise LinkError(f"cannot use {url}: {exc}",
                        "give a device path (/dev/ttyUSB0) or a pyserial URL such as socket://host:port",
                        code="HIL200") from None
    except (serial.SerialException, OSError) as exc:
        cause = _cause(exc)
        if url.startswith("rfc2217://"):
            if "does not accept" in cause or "not seem to support" in cause or "timeout while waiting" in cause:
                # The TCP port answered but not as an RFC 2217 server (a raw TCP bridge, a busy server).
                raise LinkError(f"{url} does not answer as an RFC 2217 server: {cause}",
                                "use socket:// for a raw TCP bridge, or check that no other run holds the "
                                "server (it serves one client at a time)", code="HIL207") from None
            raise LinkError(f"cannot connect to {url}: {cause}",
                            "start the RFC 2217 server on that host (e.g. `esp_rfc2217_server -p PORT "
                            "/dev/ttyUSB0`) and check host and port", code="HIL206") from None
        raise LinkError(f"cannot connect to {url}: {cause}",
                        "check that the virtual board or the network bridge is running on that host and port",
                        code="HIL206") from None
    return Link(port, url, baud, timeout, None)


def _cause(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _open_error(device: str, exc: serial.SerialException) -> LinkError:
    code = exc.errno if isinstance(exc.errno, int) else None
    if code == errno.ENOENT or code == errno.ENODEV or code == errno.ENXIO:
        return LinkError(f"no serial device at {device} ({os.strerror(code)})", _NO_DEVICE_HINT, code="HIL201")
    if code in (errno.EACCES, errno.EPERM):
        group = device_group(device)
        if group:
            return LinkError(f"permission denied opening {device} (the node belongs to group '{group}')",
                             f"`sudo usermod -aG {group} $USER`, then log out and back in", code="HIL202")
        return LinkError(f"permission denied opening {device}",
                         "add yourself to the group that owns the device (`ls -l` it), then log in again",
                         code="HIL202")
    if code in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in str(exc):
        holders = _holders(device)
        return _busy(device, holders[0] if holders else None)
    return LinkError(f"cannot open {device}: {_cause(exc)}", _NO_DEVICE_HINT, code="HIL200")
