"""harness.bench.noise: NSTDB noise at the requested SNR (nst's definition), repeatable, and bad options in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb

from harness.bench import run as bench, data, noise
from harness.errors import DataError

REPO = Path(__file__).resolve().parent.parent
SPEC = data.WindowSpec(before=374, after=374, channel=0, decimate=4, normalize="beat_zscore")


@pytest.fixture(scope="module")
def rec213():
    return data.load_record(data.BUNDLED_DIR, "213")


@pytest.fixture(scope="module")
def bundled():
    return noise.NoiseSource(noise.BUNDLED_DIR, bundled=True)


def _mix(source, spec: str, seed: int = 0) -> noise.NoiseMix:
    return noise.NoiseMix(terms=noise.parse_spec(spec), source=source, seed=seed)


# --- nst's SNR, measured independently -------------------------------------------------------------------

def _sigamp_qrs(signal: np.ndarray, r_peaks, symbols) -> float:
    """sigamp -a, written out plainly: p-p within 18 samples of the first 300 non-V/E/F beats, 5 % trimmed."""
    amps = []
    for r, sym in zip(r_peaks, symbols):
        if sym in "VEF" or r < 18 or r + 18 >= len(signal):
            continue
        window = signal[r - 18:r + 19]
        amps.append(window.max() - window.min())
        if len(amps) == 300:
            break
    amps.sort()
    k = len(amps) // 20
    return float(np.mean(amps[k:len(amps) - k]))


def _sigamp_rms(x: np.ndarray) -> float:
    """sigamp -r, plainly: RMS about the mean of each of the first 300 one-second windows, 5 % trimmed."""
    rms = []
    for i in range(min(len(x) // 360, 300)):
        w = x[i * 360:(i + 1) * 360]
        rms.append(np.sqrt(np.mean((w - w.mean()) ** 2)))
    rms.sort()
    k = len(rms) // 20
    return float(np.mean(rms[k:len(rms) - k]))


@pytest.mark.parametrize("name", ["bw", "ma"])
@pytest.mark.parametrize("snr", [24.0, 6.0, -6.0])
def test_added_noise_has_the_requested_snr(rec213, bundled, name, snr):
    noisy = _mix(bundled, f"{name}:{snr:g}").apply(rec213)
    for ch in (0, 1):
        clean = rec213.signal[:, ch].astype(np.float64)
        added = noisy.signal[:, ch].astype(np.float64) - clean
        assert np.abs(added).max() > 0
        a = _sigamp_qrs(clean, rec213.r_peaks, rec213.symbols)
        measured = 10 * np.log10((a * a / 8) / _sigamp_rms(added) ** 2)
        assert abs(measured - snr) < 0.5, (name, ch, measured)


def test_snr_steps_scale_the_noise_by_the_db_ratio(rec213, bundled):
    a = _mix(bundled, "ma:12").apply(rec213).signal.astype(np.float64) - rec213.signal
    b = _mix(bundled, "ma:6").apply(rec213).signal.astype(np.float64) - rec213.signal
    ratio = np.sqrt(np.mean(b[:, 0] ** 2) / np.mean(a[:, 0] ** 2))
    assert ratio == pytest.approx(10 ** (6 / 20), rel=1e-4)


def test_two_terms_add_up(rec213, bundled):
    both = _mix(bundled, "bw:12,ma:6").apply(rec213).signal.astype(np.float64)
    bw = _mix(bundled, "bw:12").apply(rec213).signal.astype(np.float64)
    ma = _mix(bundled, "ma:6").apply(rec213).signal.astype(np.float64)
    np.testing.assert_allclose(both - rec213.signal, (bw - rec213.signal) + (ma - rec213.signal), atol=2e-5)


def test_nst_formula():
    # nst: nsr = 10^(-snr/20) * sqrt(2)/4, gain = nsr * A / R; so at 0 dB the noise RMS is A / (2 sqrt 2)
    assert noise.nst_gain(0.0, 2.0, 1.0) == pytest.approx(2.0 / (2 * np.sqrt(2)))
    assert noise.nst_snr_db(2.0, noise.nst_gain(7.5, 2.0, 1.0)) == pytest.approx(7.5)
    assert noise.trimmed_mean(np.arange(40.0)) == pytest.approx(np.mean(np.arange(2.0, 38.0)))


# --- repeatable ----------------------------------------------------------------------------------------

def _beat_bytes(record, mix) -> bytes:
    windows = data.beat_windows(mix.apply(record), SPEC)
    return data.quantize(windows.x, 0.05, 0).tobytes()


def test_same_seed_same_beat_bytes(rec213):
    first = _beat_bytes(rec213, _mix(noise.NoiseSource(noise.BUNDLED_DIR, bundled=True), "bw:6,ma:6", seed=7))
    again = _beat_bytes(rec213, _mix(noise.NoiseSource(noise.BUNDLED_DIR, bundled=True), "bw:6,ma:6", seed=7))
    other = _beat_bytes(rec213, _mix(noise.NoiseSource(noise.BUNDLED_DIR, bundled=True), "bw:6,ma:6", seed=8))
    clean = data.quantize(data.beat_windows(rec213, SPEC).x, 0.05, 0).tobytes()
    assert first == again
    assert first != other and first != clean


def test_offsets_are_recorded_and_depend_on_seed_and_record(bundled, rec213):
    mix = _mix(bundled, "ma:6", seed=3)
    mix.apply(rec213)
    prov = mix.provenance()
    assert prov["spec"] == "ma:6" and prov["seed"] == 3 and "bundled" in prov["source"]
    assert prov["offset"] == {"213": noise.record_offset(3, "213", 108000)}
    assert prov["records"]["213"]["terms"]["ma"]["gain"][0] > 0
    offsets = {noise.record_offset(s, r, 108000) for s in range(3) for r in ("213", "232", "233")}
    assert len(offsets) == 9 and all(0 <= o < 108000 for o in offsets)


def test_noise_longer_than_its_source_is_mirrored_without_jumps():
    ramp = np.arange(10.0)
    seg = noise.noise_segment(ramp, 7, 25)
    assert seg.tolist() == [7, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8]
    assert np.abs(np.diff(seg)).max() <= 1


def test_bundled_segment_is_the_start_of_the_nstdb_records():
    for name in ("bw", "ma"):
        head = wfdb.rdheader(str(noise.BUNDLED_DIR / name))
        assert head.fs == 360 and head.sig_len == 300 * 360 and head.n_sig == 2
        assert (noise.BUNDLED_DIR / f"{name}.dat").stat().st_size < 400_000
    assert "Moody GB, Muldrow WE, Mark RG" in (noise.BUNDLED_DIR / "README.md").read_text()


@pytest.mark.skipif(not (noise.SHARED_DIR / "bw.hea").is_file(),
                    reason="../shared/nstdb is not beside this checkout (CI lays it out; a worktree may not)")
def test_bundled_segment_matches_shared_nstdb():
    for name in ("bw", "ma"):
        full = wfdb.rdrecord(str(noise.SHARED_DIR / name), sampto=108000, physical=False).d_signal
        cut = wfdb.rdrecord(str(noise.BUNDLED_DIR / name), physical=False).d_signal
        np.testing.assert_array_equal(full, cut)


def test_default_source_prefers_shared_then_bundled():
    source = noise.resolve_source(None)
    if (noise.SHARED_DIR / "bw.hea").is_file():
        assert source.directory == noise.SHARED_DIR and not source.bundled
    else:
        assert source.directory == noise.BUNDLED_DIR and source.bundled


# --- options and bad input -----------------------------------------------------------------------------

def test_parse_spec():
    assert noise.parse_spec("bw:12,ma:6") == (noise.NoiseTerm("bw", 12.0), noise.NoiseTerm("ma", 6.0))
    assert noise.parse_spec(" MA:-6 ") == (noise.NoiseTerm("ma", -6.0),)
    assert noise.parse_sweep("bw, ma,bw") == ("bw", "ma")
    assert noise.parse_snrs("0,24,-6") == (24.0, 0.0, -6.0)


@pytest.mark.parametrize("text, code", [
    ("bw", "HIL150"), ("bw:loud", "HIL150"), ("bw:12,bw:6", "HIL150"), (":6", "HIL150"), ("", "HIL150"),
    ("bw:nan", "HIL150"), ("xx:6", "HIL151"),
])
def test_bad_noise_spec(text, code):
    with pytest.raises(DataError) as e:
        noise.parse_spec(text)
    assert e.value.code == code and "fix:" in str(e.value) and "\n" not in str(e.value)


def test_em_is_not_available_and_says_where_to_get_it(bundled):
    with pytest.raises(DataError) as e:
        bundled.load("em")
    assert e.value.code == "HIL151" and "electrode motion" in str(e.value) and "dl_database" in str(e.value)


def test_missing_nstdb_directory(tmp_path):
    with pytest.raises(DataError) as e:
        noise.from_options("bw:6", None, None, None, str(tmp_path / "nowhere"))
    assert e.value.code == "HIL152" and "nowhere" in str(e.value) and "--nstdb" in str(e.value)


def test_noise_record_missing_in_given_directory(tmp_path):
    shutil.copy(noise.BUNDLED_DIR / "bw.hea", tmp_path / "bw.hea")
    shutil.copy(noise.BUNDLED_DIR / "bw.dat", tmp_path / "bw.dat")
    with pytest.raises(DataError) as e:
        noise.from_options(None, "bw,ma", None, None, str(tmp_path))
    assert e.value.code == "HIL153" and "ma.hea" in str(e.value)


def test_noise_and_sweep_exclude_each_other():
    with pytest.raises(DataError) as e:
        noise.from_options("bw:6", "ma", None, None, None)
    assert e.value.code == "HIL150"
    with pytest.raises(DataError):
        noise.from_options(None, None, "12,0", None, None)


def _run_hil(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "-p", "no:cacheprovider",
           "--out", str(tmp_path / "out"), "--models", "cnn1d_beat", "--reference-cache", "off", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, code, word", [
    (("--noise", "bw=12"), "HIL150", "bw=12"),
    (("--noise", "em:6"), "HIL151", "em"),
    (("--noise-sweep", "bw", "--nstdb", "/nonexistent/nstdb"), "HIL152", "/nonexistent/nstdb"),
])
def test_bad_noise_option_ends_the_run_in_one_line(tmp_path, args, code, word):
    proc = _run_hil(tmp_path, "--max-beats", "5", *args)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if code in line]
    assert len(lines) == 1 and "fix:" in lines[0] and word in lines[0], text
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "junit.xml").exists()


# --- the sweep, end to end on the virtual board ----------------------------------------------------------

def test_short_sweep_on_the_virtual_board(tmp_path):
    proc = _run_hil(tmp_path, "--max-beats", "150", "--noise-sweep", "ma", "--noise-snr", "12,-6",
                    "--noise-seed", "5")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    sweep = result["noise"]["sweep"]
    assert sweep["snr_db"] == [12.0, -6.0] and sweep["metric"] == "macro_f1" and sweep["seed"] == 5
    points = sweep["curves"]["ma"]["points"]
    assert [p["snr_db"] for p in points] == [12.0, -6.0]
    assert all(p["beats"] == 150 and p["mismatching_beats"] == 0 for p in points)  # bit-exact under noise
    assert all(set(p["per_class"]["N"]) >= {"se", "ppv"} for p in points)
    assert sweep["clean"]["macro_f1"] == result["accuracy"]["macro_f1"]
    # noisier input changes what the model sees: the -6 dB pass is not the clean pass
    assert points[1]["accuracy"] != sweep["clean"]["accuracy"] or points[1]["macro_f1"] != sweep["clean"]["macro_f1"]
    assert result["provenance"]["noise"]["seed"] == 5 and result["provenance"]["noise"]["offset"]
    assert result["provenance"]["model_uploaded"] in (True, False)
    assert sweep["link"]["sent"] == 300  # the sweep's two passes streamed again without another upload
    assert sweep["link"]["reuploads"] == 0 and result["link"]["reuploads"] == 0
    assert result["realtime"]["source"] == "static_estimate"
    lines = [line for line in text.splitlines() if line.startswith("cnn1d_beat@virtual  clean")]
    assert len(lines) == 1 and " ma " in lines[0] and "90%@" in lines[0], text


def test_sweep_threshold_interpolates_between_grid_points():
    points = [{"snr_db": 24.0, "macro_f1": 0.80}, {"snr_db": 18.0, "macro_f1": 0.78},
              {"snr_db": 12.0, "macro_f1": 0.62}, {"snr_db": 6.0, "macro_f1": 0.3}]
    out = bench._threshold(points, 0.8, "macro_f1")  # line at 0.72: between 18 dB (0.78) and 12 dB (0.62)
    assert out["snr90_at_grid_db"] == 12.0
    assert out["snr90_db"] == pytest.approx(18.0 - 6.0 * (0.78 - 0.72) / (0.78 - 0.62))
    never = bench._threshold(points[:2], 0.8, "macro_f1")
    assert never["snr90_db"] is None and "down to 18 dB" in never["snr90_note"]
    first = bench._threshold(points[2:], 0.8, "macro_f1")
    assert first["snr90_db"] is None and first["snr90_at_grid_db"] == 12.0 and "already below" in first["snr90_note"]


def test_sweep_lines_are_compact():
    from harness.report import outputs as report
    from harness.bench.results import Result

    def swept(model, task, metric, values):
        r = Result(model=model, device="/dev/ttyUSB0", profile="esp32s3", task=task)
        points = [{"snr_db": s, metric: v} for s, v in zip(noise.SWEEP_SNRS_DB, values)]
        curve = {"points": points, **bench._threshold(points, 0.9, metric)}
        r.noise = {"sweep": {"snr_db": list(noise.SWEEP_SNRS_DB), "metric": metric, "clean": {metric: 0.9},
                             "curves": {"bw": curve, "ma": dict(curve)}}}
        return r

    lines = report.format_noise([swept("beatimage_mobilenet_long_name", "classifier", "macro_f1",
                                       [0.9, 0.85, 0.8, 0.6, 0.4, 0.2]),
                                 swept("ae_beat", "autoencoder", "f1", [0.9, 0.9, 0.9, 0.9, 0.9, 0.88])])
    assert all(len(line) <= report.TABLE_WIDTH for line in lines), lines
    assert "autoencoders: anomaly F1" in lines[1]
    first = next(line for line in lines if line.startswith("beatimage"))
    assert "bw .90 .85 .80 .60 .40 .20 90%@13.2dB" in first  # the 0.81 line between .85 @18 and .80 @12 dB
    assert "90%@<-6dB" in next(line for line in lines if line.startswith("ae_beat"))


def test_noise_run_on_the_virtual_board(tmp_path):
    proc = _run_hil(tmp_path, "--max-beats", "100", "--noise", "bw:6,ma:12", "--noise-seed", "11")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    prov = result["provenance"]["noise"]
    assert prov["spec"] == "bw:6,ma:12" and prov["seed"] == 11
    length = 108000 if "bundled" in prov["source"] else 650000  # samples of the noise records used
    assert prov["offset"]["213"] == noise.record_offset(11, "213", length)
    assert prov["records"]["213"]["terms"]["bw"]["snr_db"] == 6.0
    assert result["bit_exact"]["exact"] is True and result["beats"]["verified"] == 100
    # Noisy beats are not the baseline's beats: accuracy is not compared (other beat-set fingerprint)
    accuracy = [g for g in result.get("gate") or [] if g["metric"].startswith("accuracy")]
    assert accuracy and all(g["outcome"] == "not_compared" for g in accuracy), result.get("gate")
    assert not result.get("regressions")
    assert "ran with --noise bw:6,ma:12" in text


def test_noise_changes_the_beat_set_fingerprint(tmp_path):
    from harness.bench.model import load_registry

    model = load_registry(names=["cnn1d_beat"])[0]

    def fingerprint(mix) -> str:
        spec = bench.BenchSpec(mitdb_dir=data.BUNDLED_DIR, records=("232",), max_beats=50, noise=mix)
        return bench._plan(model, spec)[1].fingerprint

    clean = fingerprint(None)
    bundled = noise.NoiseSource(noise.BUNDLED_DIR, bundled=True)
    noisy = fingerprint(_mix(bundled, "ma:6", seed=1))
    assert len({clean, noisy, fingerprint(_mix(bundled, "ma:6", seed=2)), fingerprint(_mix(bundled, "ma:0", seed=1))}) == 4
    assert fingerprint(_mix(noise.NoiseSource(noise.BUNDLED_DIR, bundled=True), "ma:6", seed=1)) == noisy
    other = tmp_path / "nstdb"  # other noise files, same spec and seed: other beats
    other.mkdir()
    for ext in ("hea", "dat"):
        (other / f"ma.{ext}").write_bytes((noise.BUNDLED_DIR / f"ma.{ext}").read_bytes())
    with open(other / "ma.dat", "r+b") as fh:
        fh.write(b"\x01\x02\x03")
    assert fingerprint(_mix(noise.NoiseSource(other, bundled=False), "ma:6", seed=1)) != noisy
