"""The HIL suite's verdicts end to end: `pytest tests/hil ...` in a fresh process on the virtual board.

A flipped output bit must be caught and named by beat and record; a worse figure than the baseline must
fail with one line naming metric, old, new and limit; a board that stops answering must end with a typed
failure and a report clearly marked partial, never bit-exact. The gate's strict mode and the candidate
workflow (a deliberately worse copy of the shipped model, made at test time) run here end to end.
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
    models = () if "--model" in args or "--models" in args else ("--models", "cnn1d_beat")
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
    assert prov["input_causality"] == []   # cnn1d_beat's window uses nothing a device would not have
    junit = (out / "junit.xml").read_text()
    assert 'name="latency_p50_us_static_estimate"' in junit and 'name="model_sha256"' in junit
    assert prov["beat_set"]["beats"] == 200 and len(prov["beat_set"]["fingerprint"]) == 64
    assert len(result["per_beat"]["pred"]) == 200
    baseline = json.loads((tmp_path / "baselines" / "virtual.json").read_text())
    entry = baseline["models"]["cnn1d_beat"]
    assert entry["beat_set"]["fingerprint"] == prov["beat_set"]["fingerprint"]
    assert entry["provenance"]["model_sha256"] == prov["model_sha256"]
    assert "--update-baseline" in proc.stdout and "cnn1d_beat: new entry" in proc.stdout

    # The unchanged model, run again over the same beats, passes every figure, even in strict mode.
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "200", "--gate", "strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = results(out)
    assert result["gate"] and {g["outcome"] for g in result["gate"]} == {"pass"}
    assert 'name="gate_outcome_accuracy"' in (out / "junit.xml").read_text()

    # --max-beats changes the beat set: strict mode fails with the fix, the default mode warns.
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "150", "--gate", "strict")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL512" in line)
    assert "other beat set" in line and "150 beats" in line and "200 beats" in line, line
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "150")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not compared: other beat set" in proc.stdout


def test_strict_gate_without_a_baseline_for_the_profile_fails_with_the_fix(tmp_path):
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "20", "--gate", "strict")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL512" in line)
    assert "no baseline for profile virtual" in line and "fix: run with --update-baseline" in line, line


def test_regression_against_baseline_fails_with_one_line(tmp_path):
    proc, _ = run_bench(tmp_path, "--records", "232", "--max-beats", "100", "--update-baseline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = tmp_path / "baselines" / "virtual.json"
    doc = json.loads(path.read_text())
    figures = doc["models"]["cnn1d_beat"]["figures"]
    figures["arena_used_bytes"] -= 512  # as if the model used to need less arena
    path.write_text(json.dumps(doc))
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "100")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL510" in line)
    old = figures["arena_used_bytes"]
    assert f"arena_used_bytes {old} → {old + 512} (Δ +512; limit ≤ {old}): regressed" in line, line
    (result,) = results(out)
    assert result["status"] == "fail" and result["regressions"]
    assert [g["metric"] for g in result["gate"] if g["outcome"] == "regressed"] == ["arena_used_bytes"]


def test_board_that_stops_answering_gives_a_partial_typed_result(tmp_path):
    proc, out = run_bench(tmp_path, "--records", "213", "--max-beats", "100", "--virtual-fault", "silent-after:30",
                          "--target", str(_fast_timeout_profile(tmp_path)), "--update-baseline")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL312" in line)
    assert "30" in line and "beat 30" in line, line
    (result,) = results(out)
    assert result["status"] == "error" and result["partial"] is True
    assert result["beats"]["verified"] == 30 and result["failure"]["kind"] == "timeout"
    # A run that stopped part-way is never bit-exact: not in results.json, JUnit or the table.
    assert result["bit_exact"]["exact"] is False
    assert result["bit_exact"]["summary"] == "bit-exact on 30 of 100 beats, incomplete"
    assert any(g["metric"] == "bit_exact" and g["outcome"] == "regressed" for g in result["gate"])
    junit = (out / "junit.xml").read_text()
    assert '<property name="bit_exact" value="false"' in junit
    assert "bit-exact on 30 of 100 beats, incomplete" in junit
    row = next(line for line in proc.stdout.splitlines() if line.startswith("cnn1d_beat "))
    assert "30/100 part" in row and "✓" not in row, row
    # The link counters are the real ones of the run that stopped, not zeros (issue 9, bug 4).
    assert result["link"]["sent"] >= 30 and result["link"]["resent"] > 0, result["link"]
    assert result["provenance"]["protocol"] == "hil/1.1"
    # ... and never becomes a baseline.
    assert "cnn1d_beat@virtual: refused: the run is incomplete (bit-exact on 30 of 100 beats" in proc.stdout
    assert not (tmp_path / "baselines" / "virtual.json").exists()


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


def test_candidate_whose_s_output_never_wins_is_a_regression(tmp_path):
    sys.path.insert(0, str(FIXTURES))
    from worse_model import shift_bias

    candidate = shift_bias(REPO / "models" / "cnn1d" / "cnn1d_beat_int8.tflite", tmp_path / "never_s.tflite",
                           {1: None})  # class 1 = S
    proc, out = run_bench(tmp_path, "--records", "232", "--max-beats", "300", "--candidate", str(candidate))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL511" in line)
    assert "cnn1d_beat+candidate@virtual" in line and "regressed" in line, line
    committed, cand = results(out)
    assert committed["status"] == "pass" and cand["status"] == "fail"
    assert committed["provenance"]["beat_set"] == cand["provenance"]["beat_set"]  # the same beats, paired
    outcome = {g["metric"]: g for g in cand["gate"]}
    assert outcome["se_S"]["outcome"] == "regressed" and outcome["se_S"]["new"] == 0.0
    assert outcome["accuracy"]["outcome"] == "regressed" and outcome["accuracy"]["p_value"] < 1e-6
    assert "verdict: REGRESSED" in proc.stdout and "McNemar p" in proc.stdout
    md = (out / "compare.md").read_text()
    assert "**Verdict: REGRESSED" in md and "| se_S | 0." in md and "| accuracy |" in md


def test_candidate_autoencoder_with_a_collapsed_threshold_is_a_regression(tmp_path):
    import yaml

    candidate = tmp_path / "ae_collapsed.tflite"
    candidate.write_bytes((REPO / "models" / "autoencoder" / "ae_beat_int8.tflite").read_bytes())
    candidate.with_suffix(".yaml").write_text(yaml.safe_dump({
        "task": "autoencoder", "label_map": "aami",
        "window": {"before": 96, "after": 160, "channel": 0, "decimate": 4, "normalize": "beat_zscore"},
        "anomaly": {"error": "mse", "threshold": 1e30, "normal_labels": ["N"]},  # threshold → +inf
    }))
    proc, out = run_bench(tmp_path, "--models", "ae_beat", "--records", "232", "--max-beats", "300",
                          "--candidate", str(candidate))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    _, cand = results(out)
    outcome = {g["metric"]: g for g in cand["gate"]}
    assert outcome["se"]["outcome"] == "regressed" and outcome["se"]["new"] == 0.0
    assert outcome["f1"]["outcome"] == "regressed"


def test_candidate_and_gate_options_are_checked_before_anything_runs(tmp_path):
    proc, out = run_bench(tmp_path, "--models", "cnn1d_beat,ae_beat", "--candidate", str(tmp_path / "x.tflite"))
    assert proc.returncode == 4 and "HIL131" in proc.stderr and "needs exactly one model" in proc.stderr
    proc, _ = run_bench(tmp_path, "--gate-alpha", "5")
    assert proc.returncode == 4 and "HIL132 --gate-alpha 5 is not a significance level" in proc.stderr
    assert not (out / "results.json").exists()
