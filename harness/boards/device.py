"""The real-board path: find the port, build the firmware, flash it when the board runs something else.

Sits beside the bench, below the plugin: it returns the port to open, and the plugin opens it like any
other link. The order keeps a board's time cheap: the firmware is built (or taken from --build-dir) first,
then the board is asked for its build hash over our own protocol, and esptool only runs when that hash
differs, which is what makes a self-hosted runner with many boards fast after the first run.
"""

from __future__ import annotations

from pathlib import Path

from .board import Board
from .build import ensure_build
from ..errors import HarnessError
from .flash import autodetect_port, flash, needs_flash
from .profiles import Profile
from ..link.transport import open_link

REPO = Path(__file__).resolve().parent.parent.parent


# esptool's `before` for each profile reset method: how it puts the chip into its ROM loader to flash.
ESPTOOL_BEFORE = {"rts-dtr": "default-reset", "usb-jtag": "usb-reset", "none": "no-reset"}


def running_build_hash(port: str, baud: int, timeout_s: float, reset: str = "none", log=print) -> str | None:
    """The build hash our firmware reports in HELLO, or None when the board does not speak our protocol.

    Opening the port does not reset the board (harness/link/transport.py). A board that stays silent is reset
    once through the profile's `reset` lines (esptool's hard reset) and asked again: a firmware that hung
    in an earlier run answers after a restart, and then needs no reflashing.
    """
    try:
        with open_link(port, baud) as link:
            board = Board(link, timeout_s=timeout_s)
            try:
                return board.hello(attempts=2).build_hash
            except HarnessError as err:
                if err.kind != "timeout" or reset == "none":
                    raise
                try:
                    link.pulse_reset(reset)
                except HarnessError as lines_err:
                    if lines_err.code != "HIL205":
                        raise
                    log(f"{port}: no answer to HELLO, and {lines_err.message}")
                    return None
                log(f"{port}: no answer to HELLO; reset the board ({reset}, esptool's hard reset), asking again")
                return board.hello(attempts=3).build_hash
    except HarnessError as err:
        if err.kind in ("protocol", "timeout"):
            return None  # other firmware, a boot loop or nothing: flashing is the cure
        raise


def prepare_board(device: str, profile: Profile, *, baud: int, build_dir: str | None = None,
                  skip_flash: bool = False, log=print, kernels: str | None = None) -> str:
    """Return the port of a board that runs our current firmware (build and flash as needed).

    `kernels` picks the firmware build: None or the profile's kernels for the default one, "reference" for
    the reference-kernels build (`--kernels both` flashes the two in turn; each has its own build hash, so a
    board already running the wanted one is not flashed again)."""
    port = autodetect_port(profile.chip) if device == "auto" else device
    # Open and close once first: a wrong path, a busy port or a permission problem is named now,
    # before minutes of building.
    open_link(port, baud).close()
    if skip_flash:
        return port
    build = ensure_build(profile.chip, firmware_dir=REPO / "firmware", build_root=REPO / "build",
                         build_dir=build_dir, log=log, kernels=kernels)
    current = running_build_hash(port, baud, min(profile.timeout_s, 2.0), profile.reset, log=log)
    if needs_flash(current, build):
        log(f"flashing {port} ({profile.chip}) with build {build.build_hash or 'unknown'} "
            f"(board reports {current or 'no HIL firmware'})")
        flash(port, build, chip=profile.chip, before=ESPTOOL_BEFORE[profile.reset], log=log)
    return port
