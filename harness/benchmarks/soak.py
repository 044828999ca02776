"""Soak benchmark (`make soak`): the full MIT-BIH through a damaged link and a board that resets; prints figures.

Not a test: it runs for minutes and prints goal against achieved, every number with its source.

1. Fault-free: every beat of the 48 records on the virtual board → the outputs (checked against the host
   reference, tflite-runtime BUILTIN_REF) and the host wall time.
2. Faulty: the same beats through the link relay (bit errors, frame loss both ways) to a virtual board
   that resets itself every N beats → beats lost (goal 0), beats counted twice (0), undetected corruptions
   (outputs differing from run 1; 0), wall-time ratio against run 1 (goal ≤ 1.3), resets seen by the host.
   Run 2 goes through one more process than run 1 (the relay); a fault-free run through the relay shows
   what that hop costs, so the price of the faults and of the recovery is told apart from the instrument's.
3. A board that stops answering mid-run (bench.run, as the pytest plugin runs it) → the typed failure,
   the beats verified, where it stopped, the silence before the failure against the profile's timeout, and
   that the Result is marked partial.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ..bench import run as bench, data
from ..boards.board import Board, StreamStats
from ..errors import BoardTimeout, HarnessError
from ..bench.model import load_registry
from ..boards.profiles import load_profile
from ..bench.reference import make_reference
from ..link.relay import Relay
from ..boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_MITDB = REPO.parent / "shared" / "mitdb"


def load_inputs(model, mitdb: Path, records, max_beats: int | None) -> np.ndarray:
    """Quantized input rows of every beat of `records`, in order (exactly the bytes the board receives)."""
    rows = []
    n = 0
    for name in records:
        windows = data.beat_windows(data.load_record(mitdb, name), model.window)
        x = data.quantize(windows.x, model.input.scale, model.input.zero_point).reshape(len(windows.beats), -1)
        rows.append(x)
        n += len(x)
        if max_beats is not None and n >= max_beats:
            break
    x = np.concatenate(rows)
    return x[:max_beats] if max_beats is not None else x


class Tally:
    """Per-beat delivery count and output, filled by infer_stream's on_result."""

    def __init__(self, n: int, out_bytes: int):
        self.count = np.zeros(n, dtype=np.int32)
        self.out = np.zeros((n, out_bytes), dtype=np.int8)
        self.last_at = 0.0

    def __call__(self, index: int, inference) -> None:
        self.count[index] += 1
        if self.count[index] == 1:
            self.out[index] = np.frombuffer(inference.output, dtype=np.int8)
        self.last_at = time.monotonic()


def stream(url: str, model, profile, x: np.ndarray) -> tuple[Tally, StreamStats, float]:
    tally = Tally(len(x), model.output.nbytes)
    with Board.open(url, profile.baud, timeout_s=profile.timeout_s, window=profile.window) as board:
        board.ensure_model(model.data)
        t0 = time.perf_counter()
        stats = board.infer_stream((row.tobytes() for row in x), total=len(x), on_result=tally)
        wall = time.perf_counter() - t0
    return tally, stats, wall


def stop_answering(model, profile, mitdb: Path, records, after: int) -> dict:
    """Run 3: bench.run on a board that goes silent after `after` beats; what the Result says."""

    class Timed(Board):
        last_result_at = 0.0
        failed_at = 0.0

        def infer_stream(self, inputs, *, total=None, on_result, **kwargs):
            def timed(i, inference):
                Timed.last_result_at = time.monotonic()
                on_result(i, inference)
            try:
                return super().infer_stream(inputs, total=total, on_result=timed, **kwargs)
            except BoardTimeout:
                Timed.failed_at = time.monotonic()
                raise

    ref = make_reference("tflite-ref", model.data)
    spec = bench.BenchSpec(mitdb_dir=mitdb, records=records)
    with VirtualBoard(profile.path, faults=[f"silent-after:{after}"]) as vb:
        board = Timed.open(vb.url, profile.baud, timeout_s=profile.timeout_s, window=profile.window)
        try:
            result = bench.run(board, model, profile, vb.url, spec, ref)
        finally:
            board.close()
    return {"result": result, "silence_s": Timed.failed_at - Timed.last_result_at}


def _row(what: str, goal: str, achieved: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("met" if ok else "NOT MET")
    return f"  {what:<44} {goal:>14} {achieved:>22}  {verdict}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.benchmarks.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--mitdb", type=Path, default=DEFAULT_MITDB, help=f"MIT-BIH directory (default {DEFAULT_MITDB})")
    ap.add_argument("--records", default="all", help="records (default all 48)")
    ap.add_argument("--model", default="cnn1d_beat")
    ap.add_argument("--max-beats", type=int, default=None, help="stop after this many beats (quick look)")
    ap.add_argument("--ber", type=float, default=1e-4)
    ap.add_argument("--frame-loss", type=float, default=0.01)
    ap.add_argument("--reset-every", type=int, default=10_000)
    ap.add_argument("--silent-after", type=int, default=5_000, help="run 3: beats before the board goes silent")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    try:
        profile = load_profile("virtual")
        model = load_registry(names=[args.model])[0]
        records = data.resolve_records(args.records)
        t = time.perf_counter()
        x = load_inputs(model, args.mitdb, records, args.max_beats)
        load_s = time.perf_counter() - t
    except HarnessError as err:
        print(err)
        return 2
    n = len(x)
    print(f"soak: {model.name} on the virtual board (profile {profile.name}, window {profile.window}, "
          f"timeout {profile.timeout_s:g} s), {n:,} beats of {len(records)} records from {args.mitdb} "
          f"(loaded in {load_s:.1f} s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    expected = make_reference("tflite-ref", model.data).run(x.reshape((n,) + tuple(model.input.shape[1:])))
    expected = expected.reshape(n, -1)

    # 1. Fault-free.
    with VirtualBoard(profile.path) as vb:
        clean, clean_stats, clean_s = stream(vb.url, model, profile, x)
    clean_exact = int(np.count_nonzero((clean.out != expected).any(axis=1)))
    print(f"\n1. fault-free: {n:,} beats in {clean_s:.1f} s host wall ({n / clean_s:,.0f} beats/s); "
          f"{clean_exact} beats differ from tflite-ref BUILTIN_REF; resent {clean_stats.resent}")

    # 1b. The same path as run 2 without faults: what the relay hop itself costs (an extra process per hop).
    with VirtualBoard(profile.path) as vb, Relay(vb.url, [], baud=profile.baud) as relay:
        hop, hop_stats, hop_s = stream(relay.url, model, profile, x)
    hop_differ = int(np.count_nonzero((hop.out != clean.out).any(axis=1)))
    print(f"   through the relay, no faults: {hop_s:.1f} s host wall ({n / hop_s:,.0f} beats/s); "
          f"{hop_differ} beats differ from the direct run; resent {hop_stats.resent}")

    # 2. Faulty link and a resetting board.
    faults = [f"ber:{args.ber:g}", f"drop-frames:{args.frame_loss:g}"]
    with VirtualBoard(profile.path, faults=[f"reset-every:{args.reset_every}"]) as vb, \
            Relay(vb.url, faults, seed=args.seed, baud=profile.baud) as relay:
        faulty, stats, faulty_s = stream(relay.url, model, profile, x)
        link = relay.stats
    lost = int(np.count_nonzero(faulty.count == 0))
    twice = int(np.count_nonzero(faulty.count > 1))
    corrupt = int(np.count_nonzero((faulty.out != clean.out).any(axis=1) & (faulty.count > 0)))
    ratio = faulty_s / clean_s
    board_resets = max(0, (n - 1) // args.reset_every)  # every N distinct INFERs; the last beat ends the run
    print(f"\n2. relay {' + '.join(faults)} (seed {args.seed}) to a board with reset-every:{args.reset_every}: "
          f"{faulty_s:.1f} s host wall")
    for direction in ("to-board", "to-host"):
        s = link[direction]
        print(f"   relay {direction:<8}: {s['bytes_in']:,} bytes, {s['frames']:,} frames, {s['bits_flipped']:,} bits "
              f"flipped, {s['frames_dropped']:,} frames dropped")
    print(f"   host stream: sent {stats.sent:,}, resent {stats.resent:,}, NAKs {stats.naks:,}, duplicates "
          f"{stats.duplicates:,} (dropped by seq), strays {stats.strays:,}, bad frames {stats.bad_frames:,}, garbage {stats.garbage_bytes:,} B, "
          f"resets {stats.resets}, re-uploads {stats.reuploads}, HELLO recoveries {stats.recoveries}")

    # 3. A board that stops answering.
    t = time.perf_counter()
    stopped = stop_answering(model, profile, args.mitdb, records, args.silent_after)
    stop_s = time.perf_counter() - t
    result = stopped["result"]
    failure = result.failure or {}
    print(f"\n3. board silent after {args.silent_after:,} beats (bench.run, {stop_s:.1f} s in all):")
    print(f"   {failure.get('message', 'no failure!')}")

    print("\ngoal vs achieved (host wall time; counts from the host's per-beat tally)")
    rows = [
        _row("1. beats bit-exact with tflite-ref", f"{n:,}", f"{n - clean_exact:,}", clean_exact == 0),
        _row("2. beats lost", "0", f"{lost}", lost == 0),
        _row("2. beats counted twice", "0", f"{twice}", twice == 0),
        _row("2. undetected corruptions (≠ fault-free run)", "0", f"{corrupt}", corrupt == 0),
        _row("2. wall-time ratio vs fault-free (direct)", "≤ 1.30", f"{ratio:.2f} ({faulty_s:.0f}/{clean_s:.0f} s)",
             ratio <= 1.3),
        _row("2. wall-time ratio vs fault-free relay path", "≤ 1.30",
             f"{faulty_s / hop_s:.2f} ({faulty_s:.0f}/{hop_s:.0f} s)", faulty_s / hop_s <= 1.3),
        _row("3. typed failure", "HIL312", failure.get("code", "-"), failure.get("code") == "HIL312"),
        _row("3. beats verified before the silence", f"{args.silent_after:,}",
             f"{result.beats.get('verified', 0):,}", result.beats.get("verified") == args.silent_after),
        _row("3. silence until the failure", f"≤ {profile.timeout_s * 1.1:.1f} s",
             f"{stopped['silence_s']:.2f} s", stopped["silence_s"] <= profile.timeout_s * 1.1),
        _row("3. result marked partial", "True", f"{result.partial}", result.partial is True),
    ]
    print("\n".join(rows))
    # Not a goal: a reset whose lost requests were simply resent (the model was reloaded from the store)
    # needs no HELLO, so the host's count is a lower bound of the board's; nothing is lost either way.
    print(f"\n(the board reset about {board_resets} times; the host probed with HELLO after {stats.resets} of "
          "them, the others were absorbed by ordinary resends)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
