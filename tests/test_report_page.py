"""The run's human-facing reports: report.html (plots inline), summary.md, the manifest and the history.

The page is checked in a real browser (headless Chromium through Playwright): no console errors, every
image decodes to a non-zero size, and a screenshot is kept in out/ for people to look at.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import history, html as htmlreport, manifest, outputs as report
from harness.bench import metrics
from harness.bench.data import BUNDLED_DIR
from harness.bench.results import Result
from test_report import make_result

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


# -- fixtures of results -----------------------------------------------------------------------------------
def measured(model="cnn1d_beat", **overrides) -> Result:
    """A result as a real board gives it: device cycles with their histogram, per-record tallies."""
    result = make_result(model=model, device="/dev/ttyUSB0", profile="esp32s3", **overrides)
    cycles = [190_000 + (i * 7919) % 9000 for i in range(400)]
    result.latency = {"source": "device_cycles", "cpu_mhz": 240,
                      "cycles": metrics.latency(cycles, 10), "us": metrics.latency([c / 240 for c in cycles], 10),
                      "histogram_cycles": metrics.histogram(cycles, 10)}
    result.memory.update(arena_limit_bytes=131072, model_max_bytes=1 << 20)
    result.per_record = {"213": {"beats": 300, "mismatching": 0, "classified": 300, "correct": 280},
                         "232": {"beats": 100, "mismatching": 0, "classified": 100, "correct": 97}}
    result.provenance["data_dir"] = str(BUNDLED_DIR)
    return result


def mismatching(model="bwn_beat") -> Result:
    result = measured(model=model, exact=False, mismatching=2)
    result.status, result.failure = "fail", {"kind": "mismatch", "code": "HIL501", "message": "HIL501 2 beats differ"}
    result.bit_exact["first_mismatch"] = {"beat": 5, "record": "213", "sample": 1864, "symbol": "N",
                                          "output_index": 0, "device": 12, "reference": 11,
                                          "window": {"start": 1864 - 374, "end": 1864 + 374, "channel": 0}}
    result.bit_exact["localisation"] = {"summary": "first diverging op #3 FULLY_CONNECTED (in [1,64] out [1,5])"}
    return result


def with_gate(result: Result, entries: list[dict]) -> Result:
    result.gate = entries  # Result.gate belongs to helper "gate"; the reports read it defensively
    return result


# -- small pieces ------------------------------------------------------------------------------------------
def test_histogram_drops_warmup_and_counts_every_beat():
    hist = metrics.histogram([999.0] * 3 + [100.0, 101.0, 150.0, 200.0], warmup=3, bins=4)
    assert hist["edges"] == [100.0, 125.0, 150.0, 175.0, 200.0]
    assert hist["counts"] == [2, 0, 1, 1] and hist["n"] == 4 and hist["warmup"] == 3
    same = metrics.histogram([7.0] * 5, warmup=0)
    assert same["edges"] == [6.5, 7.5] and same["counts"] == [5]
    assert metrics.histogram([1.0], warmup=5)["counts"] == []


def test_pareto_front_keeps_what_nothing_beats():
    points = [(10, 0.80), (20, 0.90), (15, 0.70), (30, 0.90), (5, 0.60)]
    assert htmlreport.pareto_front(points) == [4, 0, 1]


# -- summary.md ------------------------------------------------------------------------------------------
def test_markdown_summary_has_the_table_gate_lines_and_links(tmp_path):
    ok = with_gate(make_result(), [
        {"metric": "accuracy", "outcome": "pass", "line": "cnn1d_beat@virtual: accuracy 0.6667 → 0.6667"},
        {"metric": "latency_p50", "outcome": "within_noise", "line": "cnn1d_beat@virtual: latency p50 within noise"},
    ])
    regressed = make_result(model="bwn_beat")
    regressed.regressions = ["bwn_beat@virtual: arena_used_bytes 19968 → 20480 (limit ≤ 19968)"]
    regressed.status = "fail"
    broken = make_result(model="tcn_beat", partial=True)
    broken.status, broken.failure = "error", {"kind": "timeout", "code": "HIL310", "message": "HIL310 stopped | cable"}
    path = report.write_summary_md(tmp_path / "summary.md", [ok, regressed, broken],
                                   links={"report.html": "report.html", "results.json": "results.json"})
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "### ❌ hil-bench: 3 model × board runs — 1 pass, 1 fail, 1 error (partial run)"
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | device | bit-exact"))
    rows = lines[header + 2: header + 5]
    assert rows[0].startswith("| cnn1d_beat | virtual | ✓ | 0.6667 |") and "812 µs" in rows[0]
    assert rows[2].endswith("| ERROR timeout* |")
    gate = lines[lines.index("**Gate**") + 2:]
    assert gate[0] == "- cnn1d_beat@virtual: 1 of 2 figures pass"
    assert gate[1] == "  - ≈ cnn1d_beat@virtual: latency p50 within noise"
    assert gate[2] == "- ❌ bwn_beat@virtual: arena_used_bytes 19968 → 20480 (limit ≤ 19968)"
    assert gate[3].startswith("- tcn_beat@virtual: not gated") and "HIL310 stopped \\| cable" in gate[3]
    assert lines[-1] == "[report.html](report.html) · [results.json](results.json)"
    assert len(lines) < 40  # fits a CI job summary / PR comment


# -- manifest ----------------------------------------------------------------------------------------------
def test_manifest_names_code_firmware_models_references_and_host():
    result = make_result()
    result.provenance["beat_set"] = {"fingerprint": "f" * 64, "beats": 6, "records": ["100", "101"]}
    facts = manifest.build([result, make_result(model="bwn_beat")])
    assert facts["harness"]["version"] == "0.1.0"
    assert re.fullmatch(r"[0-9a-f]{40}", facts["harness"]["git_commit"])
    assert isinstance(facts["harness"]["git_dirty"], bool)
    (board,) = facts["boards"]
    assert board["build_hash"] == "deadbeef" and board["kernels"] == "reference" and board["cpu_mhz"] == 240
    assert board["esp_idf"].startswith("not used")  # the virtual board has no ESP-IDF build
    assert facts["models"]["cnn1d_beat"]["sha256"] == "ab" * 32
    assert facts["beat_sets"]["cnn1d_beat@virtual"]["fingerprint"] == "f" * 64
    assert facts["references"]["tflite-ref"] == {"version": "2.14.0", "kernels": "BUILTIN_REF"}
    assert facts["packages"]["numpy"] and facts["python"] and facts["host"]["name"]
    json.dumps(facts, allow_nan=False)


def test_manifest_trusts_a_build_directory_only_for_the_build_the_board_runs(tmp_path):
    (tmp_path / "hil-stamp.json").write_text(json.dumps({"build_hash": "abc123", "idf_version": "v5.2.1"}))
    (tmp_path / "sdkconfig").write_text("CONFIG_IDF_TARGET=\"esp32s3\"\n")
    facts = manifest.build_facts(tmp_path, "abc123")
    assert facts["esp_idf"] == "v5.2.1" and len(facts["sdkconfig_sha256"]) == 64
    other = manifest.build_facts(tmp_path, "fff000")
    assert other["esp_idf"] is None and other["sdkconfig_sha256"] is None and "fff000" in other["build_note"]
    assert manifest.build_facts(None, "abc123")["esp_idf"] is None


def test_results_json_carries_the_manifest(tmp_path):
    facts = manifest.build([make_result()])
    report.write_results_json(tmp_path / "results.json", [make_result()], session={}, manifest=facts)
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["manifest"]["harness"]["git_commit"] == facts["harness"]["git_commit"]


# -- history -----------------------------------------------------------------------------------------------
def test_two_runs_make_two_history_rows_and_a_trend_plot(tmp_path):
    db = tmp_path / "history.sqlite"
    first = measured()
    second = measured()
    second.accuracy["accuracy"] = 0.5
    history.append(db, [first], manifest=manifest.build([first]))
    history.append(db, [second], manifest=manifest.build([second]))
    rows = history.load(db)
    assert [(r["model"], r["profile"]) for r in rows] == [("cnn1d_beat", "esp32s3")] * 2
    assert [r["accuracy"] for r in rows] == [pytest.approx(4 / 6), 0.5]
    assert rows[0]["latency_source"] == "device_cycles" and rows[0]["bit_exact"] == 1
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    page = htmlreport.render([second], history_rows=rows)
    assert "alt='trends of cnn1d_beat on esp32s3'" in page
    assert "alt='trends" not in htmlreport.render([second], history_rows=rows[:1])  # one run: no trend yet


def _append_many(args):
    path, worker = args
    for i in range(5):
        history.append(path, [make_result(model=f"m{worker}")], manifest={"harness": {"version": str(i)}})


def test_concurrent_runs_all_land_in_the_history(tmp_path):
    db = tmp_path / "history.sqlite"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(db, worker) for worker in range(4)])
    rows = history.load(db)
    assert len(rows) == 20 and len({r["run_id"] for r in rows}) == 20
    assert sorted({r["model"] for r in rows}) == ["m0", "m1", "m2", "m3"]


def test_corrupt_history_gives_one_warning_and_the_reports_are_written(tmp_path):
    db = tmp_path / "history.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    notes = htmlreport.finish_run(tmp_path, [make_result()], manifest=None, session={}, history_path=db)
    assert len(notes) == 1 and notes[0].startswith("WARNING: HIL620 history") and "fix:" in notes[0]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "summary.md").is_file()
    assert "HIL620" in (tmp_path / "report.html").read_text()  # the page says its trends are missing


def test_locked_history_gives_one_warning(tmp_path, monkeypatch):
    db = tmp_path / "history.sqlite"
    history.append(db, [make_result()])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(history, "BUSY_TIMEOUT_S", 0.2)
    try:
        notes = htmlreport.finish_run(tmp_path, [make_result()], manifest=None, session={}, history_path=db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(notes) == 1 and "HIL621" in notes[0] and "locked" in notes[0]
    assert (tmp_path / "report.html").is_file()
    assert len(history.load(db)) == 1  # the locked run added nothing, not half a run


# -- the page --------------------------------------------------------------------------------------------
def test_page_shows_measured_latency_spread_and_the_first_differing_beat():
    page = htmlreport.render([measured(), mismatching()], manifest=manifest.build([measured()]))
    assert "alt='latency histogram of cnn1d_beat@/dev/ttyUSB0'" in page
    assert "alt='ECG window of the first differing beat of bwn_beat@/dev/ttyUSB0'" in page
    assert "record 213, sample 1864" in page and "FULLY_CONNECTED" in page
    assert "alt='confusion matrix of cnn1d_beat@/dev/ttyUSB0'" in page
    assert "Pareto front" in page and "alt='accuracy per record'" in page
    assert "20,480 B (20.0 KiB) of 131,072 B allowed by the profile (16%)" in page
    assert "Partial run" not in page


def test_a_static_estimate_gets_a_sentence_not_a_histogram():
    estimated = make_result(source="static_estimate")
    page = htmlreport.render([estimated])
    assert "static cost-model estimate, not measured: 812 µs per beat (no histogram" in page
    assert "latency histogram" not in page
    assert "host wall time of the invoke p50 60.0 µs (this machine, not device latency)" in page


def test_partial_run_is_marked():
    stopped = make_result(partial=True)
    stopped.status, stopped.failure = "error", {"kind": "timeout", "code": "HIL310", "message": "HIL310 stopped"}
    page = htmlreport.render([stopped], partial_note="the session was interrupted after 1 of 3 runs")
    assert "Partial run: the session was interrupted after 1 of 3 runs" in page
    assert "ERROR (partial*)" in page


def test_gate_outcomes_are_shown_when_the_gate_records_them():
    result = with_gate(make_result(), [{"metric": "accuracy", "outcome": "regressed", "old": 0.9, "new": 0.8,
                                        "limit": 0.895, "p_value": 0.001, "ci95": [-0.12, -0.08],
                                        "reason": None, "line": "accuracy 0.9 → 0.8"}])
    page = htmlreport.render([result])
    assert "<td class='bad'>regressed</td>" in page and "[-0.12, -0.08]" in page and "0.001" in page
    assert "<span class='bad'>accuracy 0.9 → 0.8</span>" in page  # the run's line of non-pass outcomes


def test_a_noise_sweep_is_drawn_as_curves_against_snr():
    swept = make_result()
    point = {"beats": 100, "mismatching_beats": 0, "per_class": {}}
    swept.noise = {"sweep": {"metric": "macro_f1", "snr_db": [12.0, -6.0], "clean": {"macro_f1": 0.8, "accuracy": 0.9},
                             "curves": {"ma": {"snr90_db": 9.5, "points": [
                                 {**point, "snr_db": 12.0, "macro_f1": 0.75, "accuracy": 0.88},
                                 {**point, "snr_db": -6.0, "macro_f1": 0.3, "accuracy": 0.5}]}}}}
    assert "alt='accuracy against noise of " in htmlreport.render([swept])
    assert "accuracy against noise" not in htmlreport.render([make_result()])  # no sweep, no plot


def test_page_for_five_models_stays_under_2_mb():
    results = [mismatching(model=f"model_{i}") for i in range(5)]
    page = htmlreport.render(results, manifest=manifest.build(results), history_rows=[])
    assert len(page.encode()) < 2_000_000
    assert page.count("<img ") >= 5 * 4 + 2


# -- end to end, in a browser ------------------------------------------------------------------------------
def _chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _bench(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(out.parent / "baselines"), "--models", "cnn1d_beat", "--records", "213",
           "--max-beats", "120", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_a_run_leaves_a_page_chromium_renders_cleanly(tmp_path, request):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install -e '.[test]')")
    out = tmp_path / "out"
    # Two runs with the default history (the second with a flipped output bit): two rows per model.
    proc = _bench(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _bench(out, "--virtual-fault", "flip-lsb:5")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the flipped bit fails the model
    assert "report: " in proc.stdout and "WARNING" not in proc.stdout
    assert all((out / name).is_file() for name in ("results.json", "junit.xml", "report.html", "summary.md"))
    assert len(history.load(out / "history.sqlite")) == 2
    assert json.loads((out / "results.json").read_text())["manifest"]["boards"][0]["chip"] == "virtual"
    # make report: a corrupt history costs one warning and the page is still written ...
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 500)
    cli = subprocess.run([sys.executable, "-m", "harness.report.html", str(out), "--history", str(bad)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and cli.stderr.count("HIL620") == 1, cli.stderr
    assert "alt='trends" not in (out / "report.html").read_text()
    # ... and with the run's own history it draws the trends.
    cli = subprocess.run([sys.executable, "-m", "harness.report.html", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    page = (out / "report.html").read_text()
    assert "alt='trends of cnn1d_beat on virtual'" in page
    assert "alt='ECG window of the first differing beat of cnn1d_beat@virtual'" in page

    # Kept with the session's reports (make test: out/test/) for people to look at.
    shot = Path(request.config.getoption("out", default="out")) / "report-screenshot.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    messages, errors = [], []
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium,
                                                       headless=True, args=CHROMIUM_ARGS)
        try:
            page_ = context.new_page()
            page_.on("console", lambda m: messages.append((m.type, m.text)))
            page_.on("pageerror", lambda e: errors.append(str(e)))
            page_.goto((out / "report.html").as_uri(), wait_until="load")
            sizes = page_.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
            page_.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert not errors and not [m for m in messages if m[0] in ("error", "warning")], (errors, messages)
    assert len(sizes) >= 4 and all(w > 0 and h > 0 for _, w, h in sizes), sizes
    assert shot.stat().st_size > 10_000
