"""The live progress line: its first line used to read "1/N beats, 0 beats/s" (one beat, and the time of
the model upload and the first record's host references counted as streaming)."""

from __future__ import annotations

from harness.bench.run import LiveRate


def test_no_line_for_the_first_beat_and_the_rate_counts_from_it():
    rate = LiveRate(every_s=0.5)
    # The first result arrives 3 s after the clock the old line divided by (upload + host references).
    assert rate.due(1, now=3.0) is None
    assert rate.due(40, now=3.4) is None  # not yet 0.5 s of streaming
    assert rate.due(101, now=4.0) == 100 / 1.0  # 100 beats since the first, in 1 s
    assert rate.due(120, now=4.2) is None
    assert rate.due(301, now=5.0) == 300 / 2.0
