"""The HIL suite's verdicts end to end: `pytest tests/hil ...` in a fresh process on the virtual board.

A flipped output bit must be caught and named by beat and record; a worse figure than the baseline must
fail with one line naming metric, old, new and limit; a board that stops answering must end with a typed
failure and a report clearly marked partial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    # One registry model keeps these runs short; a --model run brings its own.
    models = () if "--model" in args else ("--models", "cnn1d_beat")
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "baselines"), *models, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    return proc, out


def results(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def test_flipped_lsb_is_caught_with_beat_and_record(tmp_path):
    proc, out = run_bench(tmp_path, "--records", "213", "--max-beats", "60", "--virtual-fault", "flip-lsb:5")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL501" in line)
    assert "1 of 60 beats" in line and "beat 5 " in line and "record 213" in line, line
    assert "Traceback" not in text
    (result,) = results(out)
    assert result["status"] == "fail"
    assert result["bit_exact"]["mismatching_beats"] == 1
    assert result["bit_exact"]["max_abs_diff"] == 1
    first = result["bit_exact"]["first_mismatch"]
    assert (first["beat"], first["record"], first["output_index"]) == (5, "213", 0)
    # The host interpreters agree with each other, so the verdict blames the device side.
    assert "tflm == tflite-ref" in result["bit_exact"]["cross_check"]["verdict"]


def test_clean_run_reports_every_figure_with_provenance(tmp_path):
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "200", "--update-baseline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cnn1d_beat" in proc.stdout and "(est.)" in proc.stdout  # the session table, estimates marked
    (result,) = results(out)
    assert result["bit_exact"]["exact"] is True and result["beats"]["verified"] == 200
    assert result["latency"]["source"] == "static_estimate"
    assert result["host_time"]["source"] == "host_wall"
    prov = result["provenance"]
    assert len(prov["model_sha256"]) == 64 and prov["firmware"]["chip"] == "virtual"
    assert prov["reference"]["name"] == "tflite-ref" and prov["reference"]["version"]
    assert prov["records"] == ["232"]
    junit = (out / "junit.xml").read_text()
    assert 'name="latency_p50_us_static_estimate"' in junit and 'name="model_sha256"' in junit
    baseline = json.loads((tmp_path / "baselines" / "virtual.json").read_text())
    assert baseline["models"]["cnn1d_beat"]["dataset"] == "232[:200]"


def test_regression_against_baseline_fails_with_one_line(tmp_path):
    proc, _ = run_bench(tmp_path, "--records", "232", "--max-beats", "100", "--update-baseline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = tmp_path / "baselines" / "virtual.json"
    doc = json.loads(path.read_text())
    entry = doc["models"]["cnn1d_beat"]
    entry["arena_used_bytes"] = entry["arena_used_bytes"] - 512  # as if the model used to need less arena
    path.write_text(json.dumps(doc))
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "100")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL510" in line)
    old = entry["arena_used_bytes"]
    assert f"arena_used_bytes {old} → {old + 512} (limit ≤ {old})" in line, line
    (result,) = results(out)
    assert result["status"] == "fail" and result["regressions"]


def test_board_that_stops_answering_gives_a_partial_typed_result(tmp_path):
    proc, out = run_bench(tmp_path, "--records", "213", "--max-beats", "100", "--virtual-fault", "silent-after:30",
                          "--target", str(_fast_timeout_profile(tmp_path)))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL312" in line)
    assert "30" in line and "beat 30" in line, line
    (result,) = results(out)
    assert result["status"] == "error" and result["partial"] is True
    assert result["beats"]["verified"] == 30 and result["failure"]["kind"] == "timeout"


def test_user_model_with_flags(tmp_path):
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "50",
                          "--model", str(FIXTURES / "fc_int8.tflite"),
                          "--model-window", "374:374:4:beat_zscore", "--model-labels", "N,S,V,F,Q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = results(out)
    assert result["model"] == "fc_int8" and result["bit_exact"]["exact"] is True


def _fast_timeout_profile(tmp_path: Path) -> Path:
    text = (REPO / "device_profiles" / "virtual.yaml").read_text().replace("timeout_s: 5.0", "timeout_s: 1.0")
    path = tmp_path / "virtual.yaml"
    path.write_text(text)
    return path
