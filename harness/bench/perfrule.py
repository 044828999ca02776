"""Latency under MLPerf Tiny's performance rules, for a board on either protocol (`--latency-rule mlperf-tiny`).

MLPerf Tiny's performance mode, as its runner scripts it (`loop 5 { download; infer N W }`): each of 5
windows loads a different input, runs W warm-up inferences (10, the API's default), then N timed ones,
N chosen so the window lasts at least 10 s on the device's timer; the figure reported is the median
window's throughput (inferences/s), and its inverse the latency. `windows()` applies that rule to any
`run(window, n) -> seconds`; `measure()` builds `run` for an MLPerf Tiny device (`infer N W` between two
m-lap-us laps) or for our board (N INFERs of one input after W warm-up INFERs; the window's time is the sum
of the device's per-inference cycles, so the link time between beats, which is not inference, is left out).

The block lands in Result.latency["mlperf_tiny"], with `rule` and `source` saying what produced it; the
per-beat statistics in Result.latency stay what they were (`rule: per-beat`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import data
from ..errors import ProtocolError

RULE = "mlperf-tiny-performance"
DESCRIPTION = ("MLPerf Tiny performance mode: per window a new input, W warm-up inferences, then N timed "
               "ones with N sized so the window spans ≥ min_window_s on the device's clock; 5 windows; "
               "median throughput")
WINDOWS = 5
MIN_WINDOW_S = 10.0
WARMUP = 10
_GROW = 1.05        # size N 5 % past the minimum, so timer jitter does not make a window fall short
_ATTEMPTS = 4


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def windows(run: Callable[[int, int], float], *, min_window_s: float = MIN_WINDOW_S, windows: int = WINDOWS,
            warmup: int = WARMUP, source: str, protocol: str) -> dict:
    """Apply the rule to `run(window_index, n)` → device seconds of n timed inferences."""
    per = run(0, 1)  # calibration window (not counted): sizes N
    if per <= 0:
        raise ProtocolError("the device's clock did not advance over an inference",
                            "check the firmware's timer (th_timestamp / cycle counter)", code="HIL333")
    n = max(1, math.ceil(min_window_s / per * _GROW))
    out = []
    for i in range(windows):
        for _ in range(_ATTEMPTS):
            elapsed = run(i, n)
            if elapsed >= min_window_s or elapsed <= 0:
                break
            n = max(n + 1, math.ceil(n * min_window_s / elapsed * _GROW))
        if elapsed <= 0:
            raise ProtocolError("the device's clock did not advance over a window",
                                "check the firmware's timer (th_timestamp / cycle counter)", code="HIL333")
        out.append({"input": i, "inferences": n, "elapsed_s": elapsed, "throughput_inf_per_s": n / elapsed,
                    "latency_us": elapsed / n * 1e6})
    throughput = median([w["throughput_inf_per_s"] for w in out])
    return {
        "rule": RULE, "description": DESCRIPTION, "protocol": protocol, "source": source,
        "min_window_s": min_window_s, "warmup": warmup, "windows": out,
        "median_throughput_inf_per_s": throughput, "median_latency_us": 1e6 / throughput,
        # Only a run with MLPerf's own window length compares with published MLPerf Tiny figures.
        "mlperf_compliant": min_window_s >= MIN_WINDOW_S and windows == WINDOWS
                            and all(w["elapsed_s"] >= MIN_WINDOW_S for w in out),
    }


def lines(results) -> list[str]:
    """Terminal lines for the results that carry latency.mlperf_tiny: the figure, its source and the rule."""
    out = []
    for result in results:
        perf = (result.latency or {}).get("mlperf_tiny")
        if not perf:
            continue
        shortest = min(w["elapsed_s"] for w in perf["windows"])
        verdict = ("MLPerf-compliant" if perf["mlperf_compliant"] else
                   f"not MLPerf-compliant: windows of ≥ {perf['min_window_s']:g} s, the rule asks ≥ {MIN_WINDOW_S:g} s")
        out.append(f"{result.name}: MLPerf Tiny performance rule ({perf['protocol']}): median "
                   f"{perf['median_latency_us']:,.0f} µs ({perf['source']}), {perf['median_throughput_inf_per_s']:,.1f} "
                   f"inf/s over {len(perf['windows'])} windows (shortest {shortest:.2f} s); {verdict}")
    return out


def inputs(model, spec, count: int = WINDOWS) -> list[bytes]:
    """`count` different beats' input tensors (the run's first record), one per window."""
    if model.window is None:  # a kernel conformance model: its own seeded inputs
        seeded = model.seeded_inputs().reshape(-1, model.input.elements)
        return [seeded[i % len(seeded)].tobytes() for i in range(count)]
    windows_ = data.beat_windows(data.load_record(spec.mitdb_dir, spec.records[0]), model.window)
    x = data.quantize(windows_.x[:count], model.input.scale, model.input.zero_point)
    rows = x.reshape(len(x), -1)
    return [rows[i % len(rows)].astype(np.int8).tobytes() for i in range(count)]


def measure(board, model, spec, *, min_window_s: float = MIN_WINDOW_S, warmup: int = WARMUP) -> dict:
    """The rule on `board` (an MlperfBoard, or our Board after ensure_model) for `model`."""
    xs = inputs(model, spec)
    if getattr(board, "protocol", "hil") == "mlperf-tiny":
        return board.performance(xs, min_window_s=min_window_s, warmup=warmup)
    hello = board.last_hello or board.hello()
    if not hello.cpu_mhz:
        raise ProtocolError(f"{board.name} reports no CPU clock, so its cycles cannot be timed",
                            "use the default --latency-rule per-beat with this firmware", code="HIL333")
    hz = hello.cpu_mhz * 1e6

    def run(i: int, n: int) -> float:
        x = xs[i % len(xs)]
        cycles: list[int] = []

        def keep(k: int, inference) -> None:
            if k >= warmup:
                cycles.append(inference.cycles)

        board.infer_stream((x for _ in range(warmup + n)), total=warmup + n, on_result=keep)
        return sum(cycles) / hz

    return windows(run, min_window_s=min_window_s, warmup=warmup, source=hello.timing_source,
                   protocol=hello.protocol)
