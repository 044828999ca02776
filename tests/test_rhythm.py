"""Rhythm features of a window (harness.bench.data.WindowSpec rhythm: rr): RR intervals appended to the
morphology samples, causal except the stated one beat of latency (post-RR)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.bench import data, model
from harness.errors import DataError


def test_rr_features_by_hand():
    fs = 100.0
    r = np.array([0, 100, 180, 300, 380], dtype=np.int64)   # RR 1.0, 0.8, 1.2, 0.8 s
    f = data.rhythm_features(r, fs) / data.RR_GAIN
    # beat 2: pre 0.8, post 1.2, local mean(1.0, 0.8) = 0.9, running mean 0.9
    assert np.allclose(f[2], [0.8, 1.2, 0.9, 0.8 / 0.9, 1.2 / 0.9, 1.0])
    # beat 3: pre 1.2, post 0.8, local = running = mean(1.0, 0.8, 1.2) = 1.0
    assert np.allclose(f[3], [1.2, 0.8, 1.0, 1.2, 0.8, 1.0])


def test_rr_features_use_at_most_the_next_r_peak_and_no_whole_record_statistic():
    rng = np.random.default_rng(0)
    r = np.cumsum(rng.integers(200, 400, size=60)).astype(np.int64)
    base = data.rhythm_features(r, 360.0)
    for i in (1, 10, 30):
        later = r.copy()
        later[i + 2:] += rng.integers(-50, 50, size=len(r) - i - 2).cumsum().clip(-150, 150) + 400
        assert np.array_equal(data.rhythm_features(later, 360.0)[: i + 1], base[: i + 1])
    # the local mean covers the last RR_LOCAL_BEATS intervals only
    rr = np.diff(r) / 360.0
    assert np.isclose(base[30, 2] / data.RR_GAIN, rr[30 - data.RR_LOCAL_BEATS:30].mean())
    assert np.isclose(base[30, 3], base[30, 0] / (rr[:30].mean() * data.RR_GAIN) * data.RR_GAIN)


def test_rr_features_are_clipped():
    r = np.array([0, 360, 360 * 7, 360 * 8], dtype=np.int64)   # a 6 s pause
    assert data.rhythm_features(r, 360.0).max() == data.RR_CLIP


def test_windows_with_rhythm_append_the_features_and_skip_the_first_and_last_beat():
    rec = data.load_record(data.BUNDLED_DIR, "213")
    plain_spec = data.WindowSpec(before=90, after=110, decimate=2, normalize="beat_zscore")
    spec = data.WindowSpec(before=90, after=110, decimate=2, normalize="beat_zscore", rhythm="rr")
    assert spec.length == plain_spec.length + 6 and spec.morphology_length == plain_spec.length
    plain, w = data.beat_windows(rec, plain_spec), data.beat_windows(rec, spec)
    assert w.x.shape == (len(w.beats), spec.length)
    index = [b.index for b in w.beats]
    assert 0 not in index and len(rec.r_peaks) - 1 not in index
    assert w.skipped == len(rec.r_peaks) - len(w.beats)
    feats = data.rhythm_features(rec.r_peaks, rec.fs)
    assert np.allclose(w.x[:, -6:], feats[index].astype(np.float32))
    by_index = {b.index: row for b, row in zip(plain.beats, plain.x)}
    assert np.array_equal(w.x[5, :-6], by_index[index[5]])
    assert spec.causality() and not plain_spec.causality()


def test_unknown_rhythm_is_a_data_error_and_the_registry_reads_rhythm():
    rec = data.load_record(data.BUNDLED_DIR, "213")
    with pytest.raises(DataError, match="rhythm"):
        data.beat_windows(rec, data.WindowSpec(10, 10, rhythm="hrv"))
    raw = {"before": 90, "after": 110, "decimate": 2, "normalize": "beat_zscore", "rhythm": "rr"}
    assert model._window(raw, "entry") == data.WindowSpec(90, 110, 0, 2, "beat_zscore", "none", "rr")
    with pytest.raises(Exception, match="window.rhythm"):
        model._window({**raw, "rhythm": "hrv"}, "entry")


def test_causality_names_whole_record_statistics_and_annotated_neighbours():
    spec = data.WindowSpec(648, 648, normalize="record_zscore", mask="half_rr")
    notes = spec.causality()
    assert len(notes) == 2 and "whole record" in notes[0] and "annotated" in notes[1]
    registry = {m.name: m for m in model.load_registry()}
    assert registry["beatimage_mobilenet"].window.causality() == notes
    assert registry["cnn1d_beat"].window.causality() == []
    assert "one beat of latency" in registry["rr_beat"].window.causality()[0]
