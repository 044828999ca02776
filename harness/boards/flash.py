"""Flash a firmware `Build` onto a board with esptool's Python API, and find which port holds which chip.

The sequence mirrors `esptool write-flash`: connect through the boot ROM (reset into download mode with
the DTR/RTS lines, `before`), detect the chip and refuse a board of another chip than the profile's, run
the flasher stub, raise the baud rate, attach the SPI flash, write every (offset, file) of
`flasher_args.json` with the build's flash settings, verify the flash contents against the files, and
hard-reset into the new app.

esptool's own console output goes to `log` (a callable taking one line) or nowhere; its exceptions become
one-line `FlashError`s with a fix hint. esptool's chip names ("ESP32-S3") are turned into the profile
spelling ("esp32s3") through esptool's own chip table.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import serial
import serial.tools.list_ports
from esp_pylib.logger import EspLog, EspLogBase
from esptool import cmds
from esptool.targets import CHIP_DEFS
from esp_pylib.errors import FatalError  # base of every esptool error

from ..link import transport  # noqa: F401 - registers the harness rfc2217:// client esptool opens
from .build import Build
from ..errors import FlashError

ROM_BAUD = 115200  # the boot ROM listens at this rate; the stub switches to the faster one afterwards
DEFAULT_CONNECT_ATTEMPTS = 7  # esptool's default

Log = Callable[[str], None]


class NoBoardFound(FlashError):
    """No serial port answered as an Espressif boot ROM."""

    code = "HIL712"


# Chip names -----------------------------------------------------------------------------------------
_NAME_TO_CHIP = {cls.CHIP_NAME: chip for chip, cls in CHIP_DEFS.items()}


def chip_from_esptool(chip_name: str) -> str:
    """esptool's CHIP_NAME ("ESP32-S3") → profile chip ("esp32s3")."""
    return _NAME_TO_CHIP.get(chip_name, chip_name.lower().replace("-", ""))


def chip_display(chip: str) -> str:
    """Profile chip ("esp32c3") → the name on the board ("ESP32-C3")."""
    cls = CHIP_DEFS.get(chip)
    return cls.CHIP_NAME if cls is not None else chip


def _check_chip(chip: str) -> None:
    if chip not in CHIP_DEFS:
        raise FlashError(f"chip '{chip}' is not an Espressif chip esptool can flash",
                         "flash only boards with an esp32* profile; the virtual board needs no flashing",
                         code="HIL714")


# esptool output and errors --------------------------------------------------------------------------
class _ForwardLog(EspLogBase):
    """esptool logger that hands whole lines to a callable (or drops them) instead of printing."""

    def __init__(self, sink: Log | None):
        self._sink = sink
        self._partial = ""

    def _emit(self, text: str) -> None:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.strip() and self._sink is not None:
                self._sink(line.rstrip())

    def flush(self) -> None:
        if self._partial.strip() and self._sink is not None:
            self._sink(self._partial.rstrip())
        self._partial = ""

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._emit(kwargs.get("sep", " ").join(str(a) for a in args) + kwargs.get("end", "\n"))

    def note(self, *args: Any) -> None:
        self.print("Note:", *args)

    def hint(self, *args: Any) -> None:
        self.print("Hint:", *args)

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self.print("Warning:", *args)

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self.print("Error:", *args)

    warning = warn
    error = err

    def debug(self, *args: Any) -> None:
        pass

    def set_verbosity(self, mode: int | str) -> None:
        pass

    def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                     bar_length: int = 30) -> None:
        pass


@contextlib.contextmanager
def _esptool_output(sink: Log | None) -> Iterator[None]:
    previous = EspLog.instance
    forward = _ForwardLog(sink)
    EspLog.set_logger(forward)
    try:
        yield
    finally:
        forward.flush()
        EspLog.instance = previous


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _flash_error(exc: BaseException, port: str, chip: str | None) -> FlashError:
    """An esptool or pyserial failure as one line with the usual fix."""
    text = str(exc)
    board = chip_display(chip) if chip else "the board"
    if "Could not open" in text or isinstance(exc, serial.SerialException):
        if "Permission denied" in text:
            return FlashError(f"cannot open {port}: permission denied",
                              "add your user to the dialout (or uucp) group and log in again")
        if "No such file" in text or "Errno 2" in text:
            return FlashError(f"cannot open {port}: no such port",
                              "check the cable and the port name (ls /dev/ttyUSB* /dev/ttyACM*)")
        if "busy" in text or "Errno 16" in text or "lock" in text.lower():
            return FlashError(f"cannot open {port}: the port is busy",
                              "close the serial monitor or other program using it")
        return FlashError(f"cannot open {port}: {_one_line(text)}", "check the cable and the port name")
    if "Failed to connect" in text or "No serial data received" in text or "Invalid head of packet" in text:
        return FlashError(f"failed to connect to {board} on {port}: the boot ROM does not answer",
                          "hold BOOT and press EN, check the cable (a data cable, not a charge-only one)")
    if "Timed out" in text or "timed out" in text:
        return FlashError(f"{board} on {port} stopped answering during flashing ({_one_line(text)})",
                          "check the cable and USB power, lower --baud, then retry")
    return FlashError(f"esptool failed on {port}: {_one_line(text)}", "check the cable and retry")


_ESPTOOL_ERRORS = (FatalError, serial.SerialException, OSError)


@contextlib.contextmanager
def _connected(port: str, *, chip: str | None, before: str, connect_attempts: int,
               log: Log | None) -> Iterator[Any]:
    """An esptool loader connected to the boot ROM on `port`; the port is closed on exit."""
    with _esptool_output(log):
        try:
            esp = cmds.detect_chip(port, ROM_BAUD, connect_mode=before, connect_attempts=connect_attempts)
        except _ESPTOOL_ERRORS as exc:
            raise _flash_error(exc, port, chip) from None
        try:
            yield esp
        except _ESPTOOL_ERRORS as exc:
            raise _flash_error(exc, port, chip) from None
        finally:
            with contextlib.suppress(Exception):
                esp._port.close()  # esptool's CLI closes it the same way; no public close()


def _require_chip(esp: Any, port: str, chip: str) -> None:
    found = chip_from_esptool(esp.CHIP_NAME)
    if found != chip:
        raise FlashError(f"board on {port} is an {esp.CHIP_NAME}, the profile says {chip}",
                         f"use --target {found} or another port", code="HIL711")


def _fast_stub(esp: Any, baud: int) -> Any:
    esp = cmds.run_stub(esp)
    if baud > ROM_BAUD:
        esp.change_baud(baud)
    cmds.attach_flash(esp)
    return esp


# Public API -----------------------------------------------------------------------------------------
def detect(port: str, baud: int = ROM_BAUD, *, before: str = "default-reset",
           connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS, log: Log | None = None) -> str:
    """The chip on `port` ("esp32s3"), asked from its boot ROM."""
    with _esptool_output(log):
        try:
            esp = cmds.detect_chip(port, baud, connect_mode=before, connect_attempts=connect_attempts)
        except _ESPTOOL_ERRORS as exc:
            raise _flash_error(exc, port, None) from None
        with contextlib.suppress(Exception):
            esp._port.close()
    return chip_from_esptool(esp.CHIP_NAME)


def usb_serial_ports() -> list[str]:
    """Serial ports that are USB devices: every ESP32 devkit enumerates as one (bridge or USB-Serial-JTAG),
    while legacy /dev/ttyS* ports without hardware would only cost a connect timeout each."""
    return sorted(p.device for p in serial.tools.list_ports.comports() if p.vid is not None)


def autodetect_port(expected_chip: str, *, ports: list[str] | None = None, before: str = "default-reset",
                    connect_attempts: int = 3, log: Log | None = None) -> str:
    """The first port whose board is an `expected_chip`; boards of other chips are named and refused."""
    _check_chip(expected_chip)
    candidates = usb_serial_ports() if ports is None else list(ports)
    others: list[str] = []
    for port in candidates:
        try:
            found = detect(port, before=before, connect_attempts=connect_attempts, log=log)
        except FlashError as exc:
            if log:
                log(f"autodetect: {port}: {exc.message}")
            continue
        if found == expected_chip:
            return port
        others.append(f"{port} is an {chip_display(found)}")
    want = chip_display(expected_chip)
    if others:
        raise FlashError(f"no {want} board found: {', '.join(others)}",
                         f"plug in an {want}, or use --target with the chip found", code="HIL711")
    tried = ", ".join(candidates) or ("no USB serial port present" if ports is None else "no port given")
    raise NoBoardFound(f"no {want} board answered (tried: {tried})",
                       "plug the board in with a data cable, hold BOOT and press EN, or pass --device")


def autodetect_ports(expected_chip: str, *, ports: list[str] | None = None, before: str = "default-reset",
                     connect_attempts: int = 3, log: Log | None = None) -> list[str]:
    """Every port whose board is an `expected_chip` (`--device auto` with several boards)."""
    _check_chip(expected_chip)
    candidates = usb_serial_ports() if ports is None else list(ports)
    found = []
    for port in candidates:
        try:
            if detect(port, before=before, connect_attempts=connect_attempts, log=log) == expected_chip:
                found.append(port)
        except FlashError as exc:
            if log:
                log(f"autodetect: {port}: {exc.message}")
    if not found:
        autodetect_port(expected_chip, ports=candidates, before=before, connect_attempts=connect_attempts,
                        log=log)  # raises the error that names what was found instead
    return found


def needs_flash(hello_build_hash: str | None, build: Build) -> bool:
    """False only when the board reports the very build we would flash."""
    if not hello_build_hash or not build.build_hash:
        return True
    return hello_build_hash != build.build_hash


def flash(port: str, build: Build, *, baud: int = 460800, chip: str, verify: bool = True,
          before: str = "default-reset", after: str = "hard-reset",
          connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS, log: Log | None = None) -> None:
    """Write `build` to the board on `port`, verify it, and reset into the app (`after`)."""
    _check_chip(chip)
    if build.target != chip:
        raise FlashError(f"firmware in {build.dir} was built for {build.target}, the profile says {chip}",
                         f"build the firmware for {chip} (or use --target {build.target})", code="HIL713")
    files = [(offset, Path(path).read_bytes()) for offset, path in build.flash_files()]
    if not files:
        raise FlashError(f"flasher_args.json in {build.dir} lists no files to flash",
                         "rebuild the firmware with `idf.py build`", code="HIL713")
    settings = build.flash_settings
    started = time.monotonic()
    with _connected(port, chip=chip, before=before, connect_attempts=connect_attempts, log=log) as esp:
        _require_chip(esp, port, chip)
        esp = _fast_stub(esp, baud)
        cmds.write_flash(esp, files, no_progress=True, **settings)
        if verify:
            cmds.verify_flash(esp, files, **settings)
        cmds.reset_chip(esp, after)
    if log:
        total = sum(len(data) for _, data in files)
        log(f"flashed {len(files)} files ({total} bytes) to {chip_display(chip)} on {port} in "
            f"{time.monotonic() - started:.1f} s (host wall time){', verified' if verify else ''}")


def read_back(port: str, offset: int, size: int, *, baud: int = 460800, chip: str | None = None,
              before: str = "default-reset", after: str = "hard-reset",
              connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS, log: Log | None = None) -> bytes:
    """`size` bytes of the board's flash from `offset` (esptool read_flash), for tests and diagnostics."""
    if chip is not None:
        _check_chip(chip)
    with _connected(port, chip=chip, before=before, connect_attempts=connect_attempts, log=log) as esp:
        if chip is not None:
            _require_chip(esp, port, chip)
        esp = _fast_stub(esp, baud)
        data = cmds.read_flash(esp, offset, size, no_progress=True)
        cmds.reset_chip(esp, after)
    return bytes(data)
