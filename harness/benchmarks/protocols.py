"""`make bench-protocols`: beats/s of our framed protocol and of MLPerf Tiny's text API on the same link.

Same model, same beats, same simulated UART (the virtual board's Server throttles both directions to
baud / 10 bytes/s), one run per baud rate: our virtual board (C device core, INFER stream with `window`
requests in flight) and the virtual MLPerf Tiny device (`db load`, `db` lines of 31 bytes, `infer 1 0`,
each command after the previous `m-ready`, as MLPerf's runner drives it), both on TFLM's reference kernels.
Every output of both is checked against the host reference (the MLPerf side within its printed decimals),
so a fast wrong answer cannot count. Figures are host wall time of the stream (model upload excluded),
printed, never asserted. What this link does not model: a USB-UART bridge's latency per turn-around
(e.g. an FTDI chip's 16 ms latency timer), which costs the stop-and-wait protocol once per command and a
pipelined one almost nothing, so a real link widens the gap (docs/mlperf.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..bench import data
from ..link import protocol
from ..boards.board import Board
from ..boards.mlperf import MlperfBoard, exchange_bytes
from ..bench.model import load_registry
from ..bench.reference import make_reference
from ..link.transport import open_link
from ..boards.virtual import VirtualBoard

GOAL = 25.0  # the claim under test: ours ≥ 25× MLPerf Tiny's beats/s at 115200 baud


class _Counting:
    """A Link that counts the bytes each way."""

    def __init__(self, link):
        self._link = link
        self.tx = self.rx = 0

    def write(self, payload: bytes) -> None:
        self.tx += len(payload)
        self._link.write(payload)

    def read(self, max_bytes: int = 4096) -> bytes:
        got = self._link.read(max_bytes)
        self.rx += len(got)
        return got

    def __getattr__(self, name):
        return getattr(self._link, name)


def _inputs(model, record: str, beats: int) -> np.ndarray:
    windows = data.beat_windows(data.load_record(data.BUNDLED_DIR, record), model.window)
    x = data.quantize(windows.x[:beats], model.input.scale, model.input.zero_point)
    return x.reshape(len(x), -1)


def _run(board, link: _Counting, x: np.ndarray, expected: np.ndarray, exact: bool) -> dict:
    wrong = []

    def check(i: int, inference) -> None:
        if exact:
            ok = np.array_equal(np.frombuffer(inference.output, np.int8), expected[i])
        else:
            lo, hi = inference.bounds
            ok = bool(np.all((expected[i] >= lo) & (expected[i] <= hi)))
        if not ok:
            wrong.append(i)

    tx0, rx0 = link.tx, link.rx
    t0 = time.perf_counter()
    board.infer_stream((row.tobytes() for row in x), total=len(x), on_result=check)
    wall = time.perf_counter() - t0
    n = len(x)
    return {"beats": n, "wall_s": wall, "beats_per_s": n / wall, "wrong": len(wrong),
            "tx_bytes_per_beat": (link.tx - tx0) / n, "rx_bytes_per_beat": (link.rx - rx0) / n}


def ours(model, x, expected, baud: int, window: int) -> dict:
    with VirtualBoard("virtual", throttle_baud=baud) as vb:
        link = _Counting(open_link(vb.url, baud))
        board = Board(link, timeout_s=10, window=window, name="virtual board")
        try:
            board.ensure_model(model.data)
            return _run(board, link, x, expected, exact=True)
        finally:
            board.close()


def mlperf(model, x, expected, baud: int) -> dict:
    with VirtualBoard("virtual", api="mlperf-tiny", model=model.path, throttle_baud=baud) as vb:
        link = _Counting(open_link(vb.url, baud))
        board = MlperfBoard(link, timeout_s=10, name="virtual MLPerf Tiny device", baud=baud)
        try:
            board.hello()
            board.ensure_model(model.data)
            return _run(board, link, x, expected, exact=False)
        finally:
            board.close()


def bounds(model, baud: int, window: int) -> tuple[float, float]:
    """Line-rate bounds (beats/s) of each protocol on a UART at `baud`, from the bytes a beat costs.

    Ours: full duplex and pipelined, so the larger of the INFER and RESULT frames. MLPerf Tiny: one
    command at a time, so every byte of every command and of its answer, one after the other."""
    rate = baud / 10
    n_in, n_out = model.input.nbytes, model.output.elements
    infer = len(protocol.encode_frame(protocol.MsgType.INFER, 1, bytes(n_in)))
    result = len(protocol.encode_frame(protocol.MsgType.RESULT, 1, bytes(20 + model.output.nbytes)))
    return rate / max(infer, result), rate / sum(exchange_bytes(n_in, n_out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.benchmarks.protocols", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn1d_beat", help="registry model (default cnn1d_beat)")
    ap.add_argument("--record", default="213")
    ap.add_argument("--beats", type=int, default=200)
    ap.add_argument("--baud", type=int, action="append", default=None, help="default: 115200 and 921600")
    ap.add_argument("--window", type=int, default=8, help="our INFER requests in flight (the profile's 8)")
    args = ap.parse_args(argv)
    model = load_registry(names=[args.model])[0]
    x = _inputs(model, args.record, args.beats)
    expected = make_reference("tflite-ref", model.data).run(
        x.reshape((len(x),) + tuple(model.input.shape[1:]))).reshape(len(x), -1)
    print(f"model {model.name} (input {model.input.nbytes} B, {model.output.elements} outputs), "
          f"record {args.record}, {len(x)} beats, the same for both; beats/s = host wall time of the stream")
    print(f"{'baud':>8}  {'ours beats/s':>12}  {'MLPerf beats/s':>14}  {'ratio':>6}  "
          f"{'ours B/beat out+in':>18}  {'MLPerf B/beat out+in':>20}  {'bounds ours/MLPerf':>18}")
    ratios = {}
    for baud in args.baud or [115200, 921600]:
        a = ours(model, x, expected, baud, args.window)
        b = mlperf(model, x, expected, baud)
        bound_a, bound_b = bounds(model, baud, args.window)
        ratio = a["beats_per_s"] / b["beats_per_s"]
        ratios[baud] = ratio
        print(f"{baud:>8}  {a['beats_per_s']:>12.1f}  {b['beats_per_s']:>14.1f}  {ratio:>5.1f}×  "
              f"{a['tx_bytes_per_beat']:>8.0f}+{a['rx_bytes_per_beat']:<9.0f}  "
              f"{b['tx_bytes_per_beat']:>9.0f}+{b['rx_bytes_per_beat']:<10.0f}  "
              f"{bound_a:>7.1f}/{bound_b:<10.1f}")
        for name, r in (("ours", a), ("MLPerf Tiny", b)):
            if r["wrong"]:
                print(f"          WARNING {name}: {r['wrong']} of {r['beats']} beats disagree with the reference")
    if 115200 in ratios:
        met = ratios[115200] >= GOAL
        print(f"goal: ours ≥ {GOAL:.0f}× MLPerf Tiny at 115200 baud: {'met' if met else 'NOT met'} "
              f"(measured {ratios[115200]:.1f}×; the ratio is set by bytes per beat and stop-and-wait, see "
              "docs/mlperf.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
