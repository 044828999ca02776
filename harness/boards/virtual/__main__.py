"""Command line of the virtual board: `python -m harness.boards.virtual` (console script `hil-virtual-board`).

Prints `PORT /dev/pts/N` (and `URL socket://127.0.0.1:P` with --tcp) on stdout once the board has booted,
then serves until SIGTERM/SIGINT, or until stdin reaches EOF when started with --exit-on-stdin-eof (the
harness does that, so the board never outlives the process that started it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness.errors import HarnessError
from ..profiles import load_profile
from . import switches
from .platform import Fault, Platform


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hil-virtual-board",
        description="A virtual HIL board: the C device core with TFLM reference kernels on a pty.")
    parser.add_argument("--profile", default="virtual", help="device profile name or YAML path (default: virtual)")
    parser.add_argument("--store", type=Path, default=None,
                        help="model store directory; survives restarts (default: a temporary directory)")
    parser.add_argument("--throttle", type=int, default=None, metavar="BAUD",
                        help="pace both directions like a UART at BAUD (10 bits per byte)")
    parser.add_argument("--tcp", type=int, default=None, metavar="PORT",
                        help="also accept one TCP client on 127.0.0.1:PORT (0 = any free port)")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="inject a fault: flip-lsb:N or silent-after:N (N = 0-based distinct INFER); "
                             "reset-every:N[:BOOT_MS] or never-answer (harness/boards/virtual/switches.py)")
    parser.add_argument("--hello", action="append", default=[], metavar="KEY=VALUE",
                        help="report this in HELLO instead of the profile's value, as a third-party board or "
                             "firmware built with other settings would (only HELLO changes): chip=NAME, "
                             "kernels=reference|esp-nn, arena=BYTES, capacity=BYTES")
    parser.add_argument("--api", choices=("hil", "mlperf-tiny"), default="hil",
                        help="what answers on the link: our C device core (hil, default) or a virtual MLPerf Tiny "
                             "device (mlperf-tiny, needs --model: its model is compiled in)")
    parser.add_argument("--model", type=Path, default=None,
                        help="mlperf-tiny: the .tflite the device runs (as if compiled into its firmware)")
    parser.add_argument("--model-id", default=None,
                        help="mlperf-tiny: the id it prints as m-model-[ID] (default hb-<sha256 prefix>)")
    parser.add_argument("--cost-profile", default=None, metavar="PROFILE",
                        help="estimate cycles (RESULT and OP_PROFILE) with this profile's cost constants instead of "
                             "--profile's, e.g. esp32s3 for ESP-NN on an LX7 (kernels side by side); outputs are "
                             "still computed by TFLM's reference kernels")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="stop when stdin is closed (used when a harness starts the board)")
    return parser.parse_args(argv)


def parse_hello(specs: list[str]) -> dict:
    """`--hello KEY=VALUE` options → the device_info fields the core puts in HELLO_ACK."""
    from harness.link.protocol import KERNEL_MODES

    kernels = {name: code for code, name in KERNEL_MODES.items()}
    fields = {}
    for spec in specs:
        key, _, value = spec.partition("=")
        if key == "chip" and value:
            fields["chip"] = value
        elif key == "kernels" and value in kernels:
            fields["kernel_mode"] = kernels[value]
        elif key in ("arena", "capacity") and value.isdigit():
            fields["arena_size" if key == "arena" else "store_capacity"] = int(value)
        else:
            raise ValueError(f"bad --hello '{spec}': use chip=NAME, kernels={'|'.join(kernels)}, arena=BYTES "
                             "or capacity=BYTES")
    return fields


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mlperf = args.api == "mlperf-tiny"
    try:
        if mlperf:
            from .mlperf_device import parse_fault

            mlperf_faults = list(args.fault)
            for spec in mlperf_faults:
                parse_fault(spec)
            faults, board_switches = [], []
        else:
            faults = [Fault.parse(spec) for spec in args.fault if not switches.handles(spec)]
            board_switches = [switches.Switch.parse(spec) for spec in args.fault if switches.handles(spec)]
    except ValueError as exc:
        print(f"HIL104 {exc} -- fix: see hil-virtual-board --help", file=sys.stderr)
        return 2
    try:
        hello = parse_hello(args.hello)
    except ValueError as exc:
        print(f"HIL104 {exc} -- fix: see hil-virtual-board --help", file=sys.stderr)
        return 2
    if mlperf and (args.model is None or not args.model.is_file()):
        print(f"HIL104 --api mlperf-tiny needs --model PATH of an existing .tflite (got {args.model}) -- fix: "
              "give the model the device runs", file=sys.stderr)
        return 2
    if args.throttle is not None and args.throttle <= 0:
        print("HIL104 --throttle must be a positive baud rate -- fix: e.g. --throttle 115200", file=sys.stderr)
        return 2
    tmp = None
    try:
        profile = load_profile(args.profile)
        store = args.store
        if store is None:
            tmp = tempfile.TemporaryDirectory(prefix="hil-virtual-store-")
            store = Path(tmp.name)
        from .server import Server

        cost_profile = load_profile(args.cost_profile) if args.cost_profile else None
        platform = Platform(profile, store, faults, board_switches, hello=hello, cost_profile=cost_profile)
        core = None
        if mlperf:
            from .mlperf_device import MlperfDevice

            core = MlperfDevice(platform, args.model.read_bytes(), model_id=args.model_id, faults=mlperf_faults)
        server = Server(platform, throttle_baud=args.throttle, tcp_port=args.tcp,
                        watch_stdin=args.exit_on_stdin_eof, core=core)
    except HarnessError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        # Opening the pty or the TCP port is the only I/O here besides the model store directory.
        where = f"TCP port {args.tcp} or the pty" if args.tcp is not None else "a pty or its model store"
        print(f"HIL230 virtual board could not open {where}: {exc} -- fix: check that the TCP port is free "
              "and the --store directory is writable", file=sys.stderr)
        return 1
    try:
        server.install_signals()
        try:
            server.boot()
        except Exception as exc:  # noqa: BLE001 - the MLPerf device loads its compiled-in model at boot
            if not mlperf:
                raise
            print(f"HIL230 virtual MLPerf Tiny device could not load {args.model}: {exc} -- fix: check the "
                  "model with the HIL virtual board first (it names the problem)", file=sys.stderr)
            return 1
        print(f"PORT {server.port_path}", flush=True)
        if server.tcp_url:
            print(f"URL {server.tcp_url}", flush=True)
        server.serve()
    finally:
        server.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
