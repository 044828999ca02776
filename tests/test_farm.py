"""Many boards in one run (harness/boards/farm.py through the plugin): sharded figures equal a single-board run,
models spread over boards, quarantine of a board that stops, and the bad-input lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.boards.farm import split
from harness.boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, out: str, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(tmp_path / out),
           "--reference-cache", str(tmp_path / "refcache"), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    path = tmp_path / out / "results.json"
    return proc, json.loads(path.read_text()) if path.exists() else None


def test_split_into_contiguous_ranges():
    assert split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split(2, 4) == [(0, 1), (1, 2)]  # never an empty shard
    assert split(0, 3) == [(0, 0)]


def test_sharded_run_equals_one_board(tmp_path):
    common = ("--models", "cnn1d_beat", "--records", "213,232", "--max-beats", "420")
    one, single = run_bench(tmp_path, "one", "--device", "virtual", *common)
    assert one.returncode == 0, one.stdout + one.stderr
    three, sharded = run_bench(tmp_path, "three", "--device", "virtual", "--device", "virtual", "--device",
                               "virtual", "--spread", "beats", *common)
    assert three.returncode == 0, three.stdout + three.stderr
    a, b = single["results"][0], sharded["results"][0]
    assert b["device"] == "virtual#1+virtual#2+virtual#3"
    # Shards 0-140, 140-280, 280-420: record 213 ends inside the second, so a shard spans two records.
    assert [s["beats"] for s in b["provenance"]["shards"]] == [[0, 140], [140, 280], [280, 420]]
    assert [s["board"]["label"] for s in b["provenance"]["shards"]] == ["virtual#1", "virtual#2", "virtual#3"]
    assert a["beats"] == b["beats"] and b["beats"]["verified"] == 420
    assert a["accuracy"]["confusion"] == b["accuracy"]["confusion"]  # the merged confusion matrix
    assert sum(map(sum, b["accuracy"]["confusion"])) > 400 and len({c for row in b["accuracy"]["confusion"]
                                                                     for c in row}) > 2
    assert a["accuracy"] == b["accuracy"]
    for key in ("exact", "mismatching_beats", "max_abs_diff", "first_mismatch", "cross_check"):
        assert a["bit_exact"][key] == b["bit_exact"][key], key
    assert a["latency"]["cycles"] == b["latency"]["cycles"]  # per-beat lists joined in beat order
    assert a["provenance"]["beat_set"] == b["provenance"]["beat_set"]  # the same beats, same fingerprint
    assert a["per_beat"] == b["per_beat"] and a["per_beat"]  # per-beat labels, for the gate's paired tests
    assert b["provenance"]["board"]["chip"] == "virtual" and b["provenance"]["board"]["firmware_build"]
    session = sharded["session"]
    assert session["spread"] == "beats" and session["quarantined"] == []


def test_models_spread_and_a_board_quarantined_mid_run(tmp_path):
    """Two models over a healthy board and one that goes silent after 25 beats: the silent board fails its
    model, fails HELLO on the retry, is quarantined, and its model runs on the healthy board."""
    with VirtualBoard("virtual", store_dir=tmp_path / "store", faults=["silent-after:25"]) as bad:
        proc, results = run_bench(tmp_path, "out", "--device", bad.port, "--device", "virtual", "--target",
                                  "virtual", "--skip-flash", "--spread", "models", "--models",
                                  "cnn1d_beat,bwn_beat", "--records", "213", "--max-beats", "60")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert {r["model"]: r["status"] for r in results["results"]} == {"cnn1d_beat": "pass", "bwn_beat": "pass"}
    assert {r["device"] for r in results["results"]} == {"virtual"}  # both ended up on the healthy board
    assert all(r["beats"]["verified"] == 60 for r in results["results"])
    [q] = results["session"]["quarantined"]
    assert q["device"] == bad.port and "HIL31" in q["reason"]
    assert f"quarantined: {bad.port}" in text and "the run went on without it" in text
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"**Quarantined board:** {bad.port}" in summary  # what CI appends to the job page


def test_every_board_unusable_is_one_line_without_report(tmp_path):
    proc, results = run_bench(tmp_path, "out", "--device", "/dev/ttyHILNOPE1", "--device", "/dev/ttyHILNOPE2",
                              "--skip-flash", "--spread", "models", "--models", "cnn1d_beat", "--max-beats", "20")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and results is None and "Traceback" not in text
    lines = [ln for ln in text.splitlines() if "HIL260" in ln]
    assert lines and "/dev/ttyHILNOPE1" in lines[0] and "/dev/ttyHILNOPE2" in lines[0] and "fix:" in lines[0]


@pytest.mark.parametrize("how", ["alias", "url"])
def test_the_same_board_named_twice(tmp_path, how):
    if how == "alias":
        master, slave = os.openpty()
        port = os.ttyname(slave)
        alias = tmp_path / "by-id-link"
        alias.symlink_to(port)
        devices = [port, str(alias)]
    else:
        devices = ["rfc2217://127.0.0.1:4000", "RFC2217://127.0.0.1:4000?ign_set_control"]
    try:
        proc, results = run_bench(tmp_path, "out", "--device", devices[0], "--device", devices[1],
                                  "--target", "virtual", "--skip-flash", "--models", "cnn1d_beat")
    finally:
        if how == "alias":
            os.close(master)
            os.close(slave)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and results is None and "Traceback" not in text
    lines = [ln for ln in text.splitlines() if "HIL133" in ln]
    assert lines and "same board twice" in lines[0] and "fix:" in lines[0], text


def test_spread_beats_needs_one_profile(tmp_path):
    proc, results = run_bench(tmp_path, "out", "--device", "virtual", "--device", "/dev/ttyHILNOPE1",
                              "--spread", "beats", "--models", "cnn1d_beat")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and results is None
    assert any("HIL134" in ln and "one profile" in ln for ln in text.splitlines()), text


def test_auto_finds_every_board_of_the_chip():
    """`--device auto` with several boards: every port whose boot ROM answers as the profile's chip."""
    from esp32_mock_bootloader.advanced import process as mock_process

    from harness.boards.flash import autodetect_ports

    started = [mock_process.start_pty(timeout=60, chip=chip) for chip in ("esp32s3", "esp32c3", "esp32s3")]
    try:
        ports = [pty for _, pty in started]
        assert autodetect_ports("esp32s3", ports=ports, connect_attempts=1) == [ports[0], ports[2]]
        assert autodetect_ports("esp32c3", ports=ports, connect_attempts=1) == [ports[1]]
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait(timeout=5)
