"""Link and throughput figures of the bench (`make bench-speed`): measured, printed, never asserted in tests.

1. Line rate: the virtual board throttled like a UART at 921600 baud. The bound is the UART's byte rate
   (baud / 10 bits per byte) over the larger of the two frames a beat costs (INFER in, RESULT out; the
   UART is full duplex). Goal: achieved ≥ 0.9 × bound.
2. Unthrottled: achieved beats/s against the TFLM-invoke bound, 1 / mean invoke time as the virtual board
   measured it (host wall time) in the same run. Goal: achieved ≥ 0.8 × bound.
3. Harness memory: peak Python allocations of a stream of N and 10 × N beats (tracemalloc). Goal: flat.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from ..bench import data
from ..link import protocol
from ..boards.board import Board
from ..bench.model import load_registry
from ..link.transport import open_link
from ..boards.virtual import VirtualBoard


def _inputs(model, record: str) -> np.ndarray:
    windows = data.beat_windows(data.load_record(data.BUNDLED_DIR, record), model.window)
    return data.quantize(windows.x, model.input.scale, model.input.zero_point).reshape(len(windows.beats), -1)


def _stream(board: Board, rows, total: int) -> tuple[float, list[int]]:
    wall_ns: list[int] = []
    t0 = time.perf_counter()
    board.infer_stream(rows, total=total, on_result=lambda i, inf: wall_ns.append(inf.wall_ns))
    return time.perf_counter() - t0, wall_ns


def _board(vb: VirtualBoard, model, baud: int, window: int) -> Board:
    board = Board(open_link(vb.url, baud), timeout_s=10, window=window)
    board.ensure_model(model.data)
    return board


def line_rate(model, x: np.ndarray, baud: int, beats: int, window: int) -> dict:
    infer = len(protocol.encode_frame(protocol.MsgType.INFER, 1, x[0].tobytes()))
    result = len(protocol.encode_frame(protocol.MsgType.RESULT, 1, bytes(20 + model.output.nbytes)))
    bound = (baud / 10) / max(infer, result)
    with VirtualBoard("virtual", throttle_baud=baud) as vb:
        board = _board(vb, model, baud, window)
        try:
            wall, _ = _stream(board, (x[i % len(x)].tobytes() for i in range(beats)), beats)
        finally:
            board.close()
    achieved = beats / wall
    return {"infer_frame_bytes": infer, "result_frame_bytes": result, "bound": bound, "achieved": achieved,
            "ratio": achieved / bound}


def unthrottled(model, x: np.ndarray, beats: int, window: int) -> dict:
    with VirtualBoard("virtual") as vb:
        board = _board(vb, model, 921600, window)
        try:
            wall, wall_ns = _stream(board, (x[i % len(x)].tobytes() for i in range(beats)), beats)
        finally:
            board.close()
    invoke_us = float(np.mean(wall_ns)) / 1e3
    bound = 1e6 / invoke_us
    achieved = beats / wall
    return {"invoke_us_host_wall": invoke_us, "bound": bound, "achieved": achieved, "ratio": achieved / bound}


def memory(model, x: np.ndarray, beats: int, window: int) -> dict:
    peaks = {}
    with VirtualBoard("virtual") as vb:
        board = _board(vb, model, 921600, window)
        try:
            for n in (beats, 10 * beats):
                rows = (x[i % len(x)].tobytes() for i in range(n))  # no itertools.cycle: it keeps copies
                tracemalloc.start()
                board.infer_stream(rows, total=n, on_result=lambda i, inf: None)
                peaks[n] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        finally:
            board.close()
    return peaks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.benchmarks.speed", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry model (default: the first)")
    ap.add_argument("--record", default="213")
    ap.add_argument("--beats", type=int, default=3000)
    ap.add_argument("--baud", type=int, default=921600)
    ap.add_argument("--window", type=int, default=8)
    args = ap.parse_args(argv)
    model = load_registry(names=[args.model] if args.model else None)[0]
    x = _inputs(model, args.record)
    print(f"model {model.name} ({model.size_bytes} B), record {args.record}, window {args.window}")

    lr = line_rate(model, x, args.baud, min(args.beats, 1500), args.window)
    print(f"\n1. line rate at {args.baud} baud (virtual board throttled like a UART)")
    print(f"   frame bytes per beat: INFER {lr['infer_frame_bytes']}, RESULT {lr['result_frame_bytes']}")
    print(f"   bound {lr['bound']:.1f} beats/s, achieved {lr['achieved']:.1f} beats/s (host wall), "
          f"ratio {lr['ratio']:.3f}  goal ≥ 0.9: {'met' if lr['ratio'] >= 0.9 else 'NOT met'}")

    un = unthrottled(model, x, args.beats, args.window)
    print("\n2. unthrottled")
    print(f"   TFLM invoke {un['invoke_us_host_wall']:.1f} µs mean (host wall, on the virtual board) "
          f"→ bound {un['bound']:.0f} beats/s")
    print(f"   achieved {un['achieved']:.0f} beats/s (host wall), ratio {un['ratio']:.3f}  "
          f"goal ≥ 0.8: {'met' if un['ratio'] >= 0.8 else 'NOT met'}")

    peaks = memory(model, x, 2000, args.window)
    (n1, p1), (n2, p2) = sorted(peaks.items())
    print("\n3. harness memory (tracemalloc peak while streaming)")
    print(f"   {n1} beats: {p1 / 1024:.0f} KiB; {n2} beats: {p2 / 1024:.0f} KiB; ratio {p2 / p1:.2f}  "
          f"goal flat (≤ 1.2): {'met' if p2 / p1 <= 1.2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
