"""Faults end to end through `pytest tests/hil` in fresh processes: a board that resets itself mid-run, and
two runs pointed at the same board.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent


def bench_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--models", "cnn1d_beat", "--out",
            str(out), "--baseline-dir", str(out / "baselines"), *args]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def test_resetting_board_passes_with_every_beat_verified(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(bench_cmd(out, "--records", "213", "--max-beats", "120",
                                    "--virtual-fault", "reset-every:50"),
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert result["status"] == "pass" and result["partial"] is False
    assert result["beats"]["verified"] == 120 and result["bit_exact"]["exact"] is True
    assert result["link"]["resets"] == 2  # after the 50th and the 100th distinct INFER
    assert result["link"]["reuploads"] == 0


def test_second_run_on_a_busy_board_fails_at_once_and_the_first_is_undisturbed(tmp_path):
    # Throttled like a UART at 115200 baud: the first run streams for at least 600 × 17 ms, long after the
    # second has started up and tried the port.
    with VirtualBoard(store_dir=tmp_path / "store", throttle_baud=115200) as vb:
        first_out, second_out = tmp_path / "first", tmp_path / "second"
        device = ["--device", vb.url, "--skip-flash", "--target", "virtual", "--records", "213", "--baud", "115200"]
        first = subprocess.Popen(bench_cmd(first_out, *device, "--max-beats", "600"), cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
        try:
            lock = Path(f"/tmp/hil-board-{os.path.realpath(vb.url).strip('/').replace('/', '_')}.lock")
            deadline = time.monotonic() + 60
            # Wait until the first run holds the board (its PID is in the lock file).
            while time.monotonic() < deadline:
                if lock.exists() and lock.read_text().strip() == str(first.pid):
                    break
                assert first.poll() is None, first.stdout.read()
                time.sleep(0.05)
            t0 = time.monotonic()
            second = subprocess.run(bench_cmd(second_out, *device, "--max-beats", "10"), cwd=REPO,
                                    capture_output=True, text=True, timeout=120, env=env())
            second_s = time.monotonic() - t0
            first_text, _ = first.communicate(timeout=240)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    text = second.stdout + second.stderr
    assert second.returncode != 0, text
    assert "board busy" in text and f"held by PID {first.pid}" in text, text
    assert "Traceback" not in text
    assert second_s < 30, second_s  # pytest start-up only: no waiting for the board
    assert first.returncode == 0, first_text
    (result,) = json.loads((first_out / "results.json").read_text())["results"]
    assert result["beats"]["verified"] == 600 and result["bit_exact"]["exact"] is True
    # Had the second run opened the port, it would have taken bytes of the first run's frames.
    assert result["link"]["bad_frames"] == 0 and result["link"]["naks"] == 0
