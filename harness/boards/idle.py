"""Leave a board idle after a CI job, whatever the job did: `python -m harness.boards.idle --device D --target T`.

A job that was cancelled or timed out can leave the board mid-stream (INFER frames queued) or held by a
process that is still exiting. This opens the port (a holder is named, with its PID, and the step fails),
restarts the board through the profile's reset lines (esptool's hard reset) so nothing is in flight, asks
HELLO to see it came back to its idle loop, and closes the port. CI runs it in an `if: always()` step.
"""

from __future__ import annotations

import argparse
import sys

from .board import Board
from ..errors import HarnessError
from .profiles import load_profile
from ..link.transport import open_link


def leave_idle(device: str, target: str, *, baud: int | None = None) -> str:
    profile = load_profile(target)
    with open_link(device, baud or profile.baud) as link:
        link.reset_input()
        link.pulse_reset(profile.reset)
        hello = Board(link, timeout_s=profile.timeout_s, name=device).hello()
    return f"{device}: idle ({hello.chip}, firmware {hello.fw_version}, build {hello.build_hash or 'unknown'})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.boards.idle", description=__doc__.splitlines()[0])
    ap.add_argument("--device", required=True, help="the board's port or URL")
    ap.add_argument("--target", required=True, help="its device profile (for the reset method and baud)")
    ap.add_argument("--baud", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        print(leave_idle(args.device, args.target, baud=args.baud))
    except HarnessError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
