"""Hold a labgrid place for the harness: acquire it, report its serial port, release it when told (or orphaned).

Runs in labgrid's own virtualenv (`.venv-labgrid`, `make labgrid`): labgrid depends on pyserial-labgrid,
which replaces pyserial's `serial` package and registers a pytest plugin, so it must not share the
harness's environment. This file therefore imports only the standard library and labgrid, and the
harness starts it as a child process (harness/boards/places.py):

    .venv-labgrid/bin/python harness/boards/lgplace.py --coordinator HOST:PORT --place NAME [--wait S]

On success it prints `URL rfc2217://HOST:PORT?ign_set_control`, `SPEED N`, `POWER CLASS|none`, then
`READY`, and holds the place until its stdin closes (the harness finished, failed or was killed), then
releases it. A `power-cycle` line on stdin cycles the place's power (answer `POWER-CYCLED` or
`POWER-FAILED why`). On failure it prints one `HILnnn cause -- fix: hint` line on stderr and exits 2, releasing what it
acquired. One coordinator session serves everything (a second one in the process would fail).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import sys
import time


def fail(code: str, message: str, hint: str) -> int:
    print(f"{code} {message} -- fix: {hint}", file=sys.stderr, flush=True)
    return 2


def _pump(session, seconds: float) -> None:
    """Let the session take the coordinator's place and resource updates for a while."""
    session.loop.run_until_complete(asyncio.sleep(seconds))


def _serial_resource(session, place):
    for (name, cls), resource in session.get_target_resources(place).items():
        if cls == "NetworkSerialPort":
            return name, resource
    return None, None


def _power_cycle(session, place: str) -> str:
    """Cycle the place's power through labgrid's own power driver (what `labgrid-client power cycle` does)."""
    session.args = argparse.Namespace(place=place, action="cycle", delay=1.0, name=None, state=None,
                                      initial_state=None, allow_unmatched=True, kick=False)
    try:
        session.power()
    except Exception as exc:  # noqa: BLE001 - reported to the harness, which decides
        return f"POWER-FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "POWER-CYCLED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--place", required=True)
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a place someone else holds")
    ap.add_argument("--avail-timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    try:
        from labgrid.remote.client import Error as LabgridError
        from labgrid.remote.client import start_session
    except ImportError as exc:
        return fail("HIL250", f"labgrid cannot be imported here ({exc})",
                    "make labgrid (installs labgrid into .venv-labgrid), or set HIL_LABGRID_PYTHON")

    place_args = argparse.Namespace(place=args.place, allow_unmatched=True, kick=False)
    try:
        session = start_session(args.coordinator, extra={"args": place_args})
    except Exception as exc:  # noqa: BLE001 - grpc and labgrid errors alike: the coordinator is not there
        return fail("HIL251", f"labgrid coordinator {args.coordinator} unreachable ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no answer'})",
                    "start labgrid-coordinator there, or give --lg-coordinator / LG_COORDINATOR the right "
                    "HOST:PORT")
    acquired = False
    try:
        try:
            place = session.get_place(args.place)
        except LabgridError:
            names = ", ".join(sorted(session.places)) or "none"
            return fail("HIL252", f"labgrid place '{args.place}' does not exist on {args.coordinator} "
                                  f"(places: {names})", "check the name with `labgrid-client places`")
        deadline = time.monotonic() + args.wait
        while place.acquired and time.monotonic() < deadline:
            _pump(session, 0.25)
            place = session.get_place(args.place)
        if place.acquired:
            waited = f" after waiting {args.wait:g} s" if args.wait else ""
            return fail("HIL255", f"place {args.place} held by {place.acquired}{waited}",
                        "wait for that run to finish (--lg-wait SECONDS waits for it), or ask its owner to "
                        f"`labgrid-client -p {args.place} release`")
        try:
            session.loop.run_until_complete(session.acquire())
        except LabgridError as exc:
            _pump(session, 0.2)
            place = session.get_place(args.place)
            if place.acquired:
                return fail("HIL255", f"place {args.place} held by {place.acquired} (taken while we asked)",
                            "retry, or use --lg-wait SECONDS")
            holders = sorted({r.acquired for groups in session.resources.values() for group in groups.values()
                              for r in group.values() if r.acquired and r.acquired not in (args.place, "<broken>")})
            if holders:
                return fail("HIL255", f"place {args.place}: its resources are held by place {', '.join(holders)}",
                            "release that place, or use --lg-wait SECONDS")
            # The exporter refused (it marks such a resource "<broken>"): for a serial port, ser2net did not start.
            return fail("HIL254", f"place {args.place} could not be acquired: its exporter could not start the "
                                  f"serial port's ser2net ({exc})",
                        "install ser2net on the exporter host (`apt-get install ser2net`) and check the "
                        "exporter's log")
        acquired = True
        place = session.get_place(args.place)
        name, resource = _serial_resource(session, place)
        if resource is None:
            classes = sorted({cls for (_, cls) in session.get_target_resources(place)}) or ["nothing"]
            return fail("HIL253", f"place {args.place} has no serial port (it holds: {', '.join(classes)})",
                        "export the board's port (a RawSerialPort or USBSerialPort in the exporter's YAML) and "
                        f"`labgrid-client -p {args.place} add-match EXPORTER/GROUP/NetworkSerialPort`")
        deadline = time.monotonic() + args.avail_timeout
        while not resource.avail and time.monotonic() < deadline:
            _pump(session, 0.1)
            name, resource = _serial_resource(session, session.get_place(args.place))
        if not resource.avail or not resource.args.get("port"):
            return fail("HIL254", f"the serial port of place {args.place} is not available: its exporter did not "
                                  f"start ser2net for it within {args.avail_timeout:g} s",
                        "install ser2net on the exporter host (`apt-get install ser2net`) and check the "
                        "exporter's log")
        host, port = resource.args.get("host"), resource.args["port"]
        # ser2net never answers RFC 2217's DTR request on a pty: labgrid's own serial driver ignores it too.
        print(f"URL rfc2217://{host}:{port}?ign_set_control", flush=True)
        print(f"SPEED {resource.args.get('speed', 115200)}", flush=True)
        powers = sorted(cls for (_, cls) in session.get_target_resources(place) if "Power" in cls)
        print(f"POWER {powers[0] if powers else 'none'}", flush=True)
        print("READY", flush=True)
        pending = b""
        while True:  # hold the place until the harness closes our stdin (or dies); obey its commands
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if ready:
                data = os.read(sys.stdin.fileno(), 4096)
                if not data:
                    break
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip() == b"power-cycle":
                        print(_power_cycle(session, args.place), flush=True)
            _pump(session, 0.01)
        return 0
    finally:
        if acquired:
            try:
                session.loop.run_until_complete(session.release())
            except Exception as exc:  # noqa: BLE001
                print(f"HIL256 releasing place {args.place} failed: {exc} -- fix: "
                      f"`labgrid-client -p {args.place} release`", file=sys.stderr, flush=True)
        try:
            session.loop.run_until_complete(session.stop())
            session.loop.run_until_complete(session.close())
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    raise SystemExit(main())
