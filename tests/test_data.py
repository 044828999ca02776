"""harness.bench.data: AAMI map and DS1/DS2 pinned, bundled records read right, windows, quantization, bad inputs."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import wfdb

from harness.bench import data
from harness.errors import DataError

SPEC = data.WindowSpec(before=374, after=374, channel=0, decimate=4, normalize="beat_zscore")


@pytest.fixture(scope="module")
def rec213():
    return data.load_record(data.BUNDLED_DIR, "213")


@pytest.fixture
def copy213(tmp_path):
    for ext in ("hea", "dat", "atr"):
        shutil.copy(data.BUNDLED_DIR / f"213.{ext}", tmp_path / f"213.{ext}")
        (tmp_path / f"213.{ext}").chmod(0o644)
    return tmp_path


def _code(excinfo) -> str:
    return excinfo.value.code


# --- pinned lists ------------------------------------------------------------------------------------

def test_aami_map_is_the_ec57_grouping():
    groups = {c: sorted(s for s, a in data.AAMI_MAP.items() if a == c) for c in data.AAMI_CLASSES}
    assert groups == {"N": sorted("NLRej"), "S": sorted("AaJS"), "V": ["E", "V"], "F": ["F"],
                      "Q": sorted("/fQ")}
    for non_beat in ("+", "~", "|", "x", "!", '"', "[", "]"):
        assert non_beat not in data.AAMI_MAP


def test_de_chazal_split_is_pinned():
    assert len(data.DS1) == len(data.DS2) == 22
    assert not set(data.DS1) & set(data.DS2)
    assert not set(data.PACED) & (set(data.DS1) | set(data.DS2))
    assert set(data.PACED) == {"102", "104", "107", "217"}
    assert len(data.ALL_RECORDS) == 48 and all(isinstance(n, str) for n in data.ALL_RECORDS)
    assert {"101", "230"} <= set(data.DS1) and {"100", "234"} <= set(data.DS2)
    assert set(data.BUNDLED_RECORDS) <= set(data.DS2)


def test_resolve_records():
    assert data.resolve_records("DS1") == data.DS1
    assert data.resolve_records("ds2") == data.DS2
    assert len(data.resolve_records("all")) == 48
    assert data.resolve_records("bundled") == ("213", "232", "233")
    assert data.resolve_records(" 213, 232 ,213") == ("213", "232")
    assert data.resolve_records(["233"]) == ("233",)
    with pytest.raises(DataError) as e:
        data.resolve_records("213,999")
    assert _code(e) == "HIL125" and "999" in str(e.value)


# --- bundled records ---------------------------------------------------------------------------------

def test_record_213_matches_wfdb(rec213):
    raw = wfdb.rdrecord(str(data.BUNDLED_DIR / "213"))
    ann = wfdb.rdann(str(data.BUNDLED_DIR / "213"), "atr")
    assert rec213.fs == 360
    assert rec213.signal.dtype == np.float32 and rec213.signal.shape == raw.p_signal.shape
    np.testing.assert_allclose(rec213.signal, raw.p_signal, atol=1e-6)
    assert rec213.channels == ("MLII", "V1")
    assert rec213.r_peaks.dtype == np.int64

    # AAMI counts computed here straight from wfdb's annotations, independent of the module's filtering
    expected = Counter(data.AAMI_MAP[s] for s in ann.symbol if s in data.AAMI_MAP)
    assert Counter(data.AAMI_MAP[s] for s in rec213.symbols) == expected
    assert expected["F"] > 0 and expected["V"] > 0 and expected["S"] > 0
    beat_samples = [s for s, sym in zip(ann.sample, ann.symbol) if sym in data.AAMI_MAP]
    assert rec213.r_peaks.tolist() == beat_samples
    assert len(ann.symbol) > len(rec213.symbols)  # 213 has rhythm ('+') annotations, dropped


def test_iter_bundled_records():
    names = [r.name for r in data.iter_records(data.BUNDLED_DIR, "bundled")]
    assert names == list(data.BUNDLED_RECORDS)


def test_beat_windows_shape_and_beats(rec213):
    w = data.beat_windows(rec213, SPEC)
    assert SPEC.length == 187
    assert w.x.shape == (len(w.beats), 187) and w.x.dtype == np.float32
    assert len(w.beats) + w.skipped == len(rec213.r_peaks)
    first, last = rec213.r_peaks[0], rec213.r_peaks[-1]
    expected_skips = int((rec213.r_peaks < SPEC.before).sum() + (rec213.r_peaks + SPEC.after > rec213.n_samples).sum())
    assert w.skipped == expected_skips and (first < SPEC.before or last + SPEC.after > rec213.n_samples)
    b = w.beats[10]
    assert b.record == "213" and b.sample == rec213.r_peaks[b.index]
    assert b.symbol == rec213.symbols[b.index] and b.aami == data.AAMI_MAP[b.symbol]
    assert [bb.index for bb in w.beats] == sorted({bb.index for bb in w.beats})
    assert w.labels().tolist() == [data.AAMI_CLASSES.index(bb.aami) for bb in w.beats]


def test_window_is_block_mean_of_the_raw_samples(rec213):
    spec = data.WindowSpec(before=8, after=12, channel=1, decimate=4, normalize="none")
    w = data.beat_windows(rec213, spec)
    b = w.beats[5]
    raw = rec213.signal[b.sample - 8:b.sample + 12, 1].astype(np.float64)
    np.testing.assert_allclose(w.x[5], raw.reshape(5, 4).mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("how", ["beat_zscore", "record_zscore", "beat_minmax"])
def test_normalizations(rec213, how):
    w = data.beat_windows(rec213, data.WindowSpec(374, 374, 0, 4, how))
    raw = data.beat_windows(rec213, data.WindowSpec(374, 374, 0, 4, "none")).x.astype(np.float64)
    if how == "beat_zscore":
        np.testing.assert_allclose(w.x.mean(axis=1), 0, atol=1e-4)
        np.testing.assert_allclose(w.x.std(axis=1), 1, atol=1e-3)
    elif how == "beat_minmax":
        np.testing.assert_allclose(w.x.min(axis=1), 0, atol=1e-6)
        np.testing.assert_allclose(w.x.max(axis=1), 1, atol=1e-5)
    else:
        channel = rec213.signal[:, 0].astype(np.float64)
        np.testing.assert_allclose(w.x, (raw - channel.mean()) / channel.std(), rtol=1e-4, atol=1e-4)


def test_windows_fast(rec213):
    import time

    start = time.perf_counter()
    data.beat_windows(rec213, SPEC)
    assert time.perf_counter() - start < 1.0


def test_bad_window_spec(rec213):
    with pytest.raises(DataError):
        data.beat_windows(rec213, data.WindowSpec(10, 10, normalize="zscore"))
    with pytest.raises(DataError):
        data.beat_windows(rec213, data.WindowSpec(10, 10, channel=2))


# --- quantization ------------------------------------------------------------------------------------

def test_quantize_rounds_half_away_from_zero_and_clips():
    scale, zp = 0.5, -3
    x = np.array([0.0, 0.25, -0.25, 0.75, -0.75, 0.2, -0.2, 1000.0, -1000.0, 0.124], dtype=np.float32)
    q = data.quantize(x, scale, zp)
    assert q.dtype == np.int8
    # x / scale = 0, 0.5, -0.5, 1.5, -1.5, 0.4, -0.4, 2000, -2000, 0.248
    assert q.tolist() == [-3, -2, -4, -1, -5, -3, -3, 127, -128, -3]
    # numpy's half-to-even would give 0 and 2 for the ties 0.5 and 1.5; TFLite's std::round gives 1 and 2
    assert np.round(0.5) == 0 and data.quantize(np.float32(0.25), 0.5, 0) == 1


def test_quantize_matches_definition_on_random_values():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, size=5000).astype(np.float32)
    scale, zp = 0.046, -35
    q = data.quantize(x, scale, zp).astype(int)
    ratio = (x / np.float32(scale)).astype(np.float64)  # float32 division, as in the kernel
    ref = np.clip(np.trunc(ratio + np.copysign(0.5, ratio)) + zp, -128, 127)
    assert (q == ref).all()
    assert q.min() >= -128 and q.max() <= 127


# --- bad inputs --------------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_record(tmp_path / "nowhere", "213")
    assert _code(e) == "HIL121"
    assert "--mitdb" in str(e.value) and "dl_database" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_record(copy213):
    with pytest.raises(DataError) as e:
        data.load_record(copy213, "2133")
    assert _code(e) == "HIL125" and "2133" in str(e.value)


def test_record_not_in_directory(copy213):
    with pytest.raises(DataError) as e:
        data.load_record(copy213, "100")  # a real MIT-BIH name, but not copied here
    assert _code(e) == "HIL122" and "100.hea" in str(e.value)


def test_missing_dat(copy213):
    (copy213 / "213.dat").unlink()
    with pytest.raises(DataError) as e:
        data.load_record(copy213, "213")
    assert _code(e) == "HIL122" and "213.dat" in str(e.value)


def test_missing_atr(copy213):
    (copy213 / "213.atr").unlink()
    with pytest.raises(DataError) as e:
        data.load_record(copy213, "213")
    assert _code(e) == "HIL123" and "213.atr" in str(e.value)


@pytest.mark.parametrize("keep", [1_000_000, 1_000_001, 1_949_999])
def test_truncated_dat(copy213, keep):
    with open(copy213 / "213.dat", "r+b") as f:
        f.truncate(keep)
    with pytest.raises(DataError) as e:
        data.load_record(copy213, "213")
    assert _code(e) == "HIL124" and "truncated" in str(e.value)


def test_truncated_dat_caught_after_reading_too(copy213, monkeypatch):
    # A format the size pre-check does not know: the short read itself must still be caught.
    monkeypatch.setattr(data, "_BYTES_PER_SAMPLE", {})
    with open(copy213 / "213.dat", "r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(DataError) as e:
        data.load_record(copy213, "213")
    assert _code(e) == "HIL124"


def test_errors_are_one_line_with_a_fix(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_record(tmp_path / "nowhere", "213")
    text = str(e.value)
    assert text.startswith("HIL121 ") and " -- fix: " in text and "\n" not in text


# --- half-RR mask (the beat-image family's window) ---------------------------------------------------

def _toy_record(r_peaks, n_samples=200):
    signal = np.ones((n_samples, 1), dtype=np.float32)
    return data.Record(name="toy", fs=360.0, signal=signal, channels=("MLII",),
                       r_peaks=np.asarray(r_peaks, dtype=np.int64), symbols=("N",) * len(r_peaks))


def test_mask_defaults_to_none():
    assert data.WindowSpec(374, 374).mask == "none"
    assert data.MASKS == ("none", "half_rr")


def test_half_rr_mask_by_hand():
    # Beats at 100, 120, 150: beat 120 owns [110, 135). With decimate 2 a block counts by its centre
    # (start + 2j + 0.5); the edge beats have no neighbour on one side and keep that side.
    rec = _toy_record([100, 120, 150])
    w = data.beat_windows(rec, data.WindowSpec(before=20, after=20, decimate=2, mask="half_rr"))
    assert [b.sample for b in w.beats] == [100, 120, 150] and w.x.shape == (3, 20)
    kept = [np.flatnonzero(row).tolist() for row in w.x]
    assert kept[0] == list(range(0, 15))    # window starts at 80: centres 80.5 .. 108.5 < 110
    assert kept[1] == list(range(5, 18))    # window starts at 100: centres 110.5 .. 134.5
    assert kept[2] == list(range(3, 20))    # window starts at 130: centres 136.5 .. 168.5 >= 135
    np.testing.assert_array_equal(w.x[w.x != 0], 1.0)


def test_half_rr_mask_on_record_213(rec213):
    # 3.6 s of z-scored MLII per beat, the beat-image window: masked = unmasked where the sample lies
    # halfway between the neighbouring R peaks, else 0 (checked here one beat at a time).
    plain = data.WindowSpec(before=648, after=648, normalize="record_zscore")
    masked = data.beat_windows(rec213, data.WindowSpec(648, 648, normalize="record_zscore", mask="half_rr"))
    unmasked = data.beat_windows(rec213, plain)
    assert [b.index for b in masked.beats] == [b.index for b in unmasked.beats]
    r = rec213.r_peaks
    for row, beat in list(enumerate(masked.beats))[::97]:
        i = beat.index
        lo = (r[i - 1] + r[i]) / 2 if i > 0 else -np.inf
        hi = (r[i] + r[i + 1]) / 2 if i + 1 < len(r) else np.inf
        pos = beat.sample - 648 + np.arange(1296)
        inside = (pos >= lo) & (pos < hi)
        assert inside[648] and not inside.all()
        np.testing.assert_array_equal(masked.x[row], np.where(inside, unmasked.x[row], 0))


def test_unknown_mask_is_hil127(rec213):
    with pytest.raises(DataError) as e:
        data.beat_windows(rec213, data.WindowSpec(10, 10, mask="rr"))
    assert _code(e) == "HIL127" and "half_rr" in str(e.value)


def test_registry_window_reads_the_mask():
    from harness.bench import model
    from harness.errors import ModelError

    raw = {"before": 648, "after": 648, "normalize": "record_zscore", "mask": "half_rr"}
    assert model._window(raw, "entry") == data.WindowSpec(648, 648, 0, 1, "record_zscore", "half_rr")
    assert model._window({"before": 4, "after": 4}, "entry").mask == "none"
    with pytest.raises(ModelError) as e:
        model._window(dict(raw, mask="rr"), "entry")
    assert e.value.code == "HIL118" and "window.mask" in str(e.value)
