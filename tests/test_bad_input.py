"""Bad input, as a user meets it: `pytest tests/hil ...` in a fresh process.

Each case must end with one line that names the cause and the fix (its HIL code), a non-zero exit, no
traceback, and no report in the output directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.transport import open_link

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def run_bench(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q",
           "--out", str(out), "--max-beats", "20", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_failure(proc: subprocess.CompletedProcess, tmp_path: Path, code: str, *words: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if code in line]
    assert lines, f"no line with {code}:\n{text}"
    assert any("fix:" in line for line in lines), f"the {code} line has no fix hint:\n{text}"
    for word in words:
        assert any(word in line for line in lines), f"{word!r} not in the {code} line:\n{text}"
    out = tmp_path / "out"
    assert not (out / "results.json").exists() and not (out / "junit.xml").exists(), "a report was written"


def test_no_such_device(tmp_path):
    proc = run_bench(tmp_path, "--device", "/dev/ttyNOPE0", "--skip-flash")
    assert_one_line_failure(proc, tmp_path, "HIL201", "/dev/ttyNOPE0")


def test_port_busy(tmp_path):
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        with open_link(path, 115200):
            proc = run_bench(tmp_path, "--device", path, "--skip-flash")
        assert_one_line_failure(proc, tmp_path, "HIL203", f"PID {os.getpid()}")
    finally:
        os.close(master)
        os.close(slave)


def test_garbage_on_the_line(tmp_path):
    """A board that only prints text (wrong baud, other firmware) is named as such, not a bare timeout."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            try:
                os.write(master, b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x13\r\n")
                while True:  # drain what the harness sends so the pty never fills up
                    import select
                    ready, _, _ = select.select([master], [], [], 0.05)
                    if not ready:
                        break
                    os.read(master, 4096)
            except OSError:
                return

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    try:
        proc = run_bench(tmp_path, "--device", path, "--skip-flash")
        assert_one_line_failure(proc, tmp_path, "HIL301", "baud")
    finally:
        stop.set()
        thread.join(2)
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("fixture,code,named", [
    ("float_io.tflite", "HIL111", "float32"),
    ("corrupt.tflite", "HIL112", "corrupt"),
    ("unsupported_op_int8.tflite", "HIL114", "LEAKY_RELU"),
])
def test_bad_model(tmp_path, fixture, code, named):
    proc = run_bench(tmp_path, "--model", str(FIXTURES / fixture))
    assert_one_line_failure(proc, tmp_path, code, named)


def test_model_too_large_for_profile(tmp_path):
    profile = (REPO / "device_profiles" / "virtual.yaml").read_text()
    small = tmp_path / "tiny.yaml"
    small.write_text(profile.replace("model_max_bytes: 2097152", "model_max_bytes: 1024")
                     .replace("name: virtual", "name: tiny"))
    proc = run_bench(tmp_path, "--target", str(small), "--model", str(FIXTURES / "conv_int8.tflite"))
    assert_one_line_failure(proc, tmp_path, "HIL113", "1024")


def test_missing_mitdb_dir(tmp_path):
    proc = run_bench(tmp_path, "--mitdb", str(tmp_path / "no-mitdb"))
    assert_one_line_failure(proc, tmp_path, "HIL121", "no-mitdb")


def test_missing_record(tmp_path):
    proc = run_bench(tmp_path, "--records", "100")  # not among the bundled records
    assert_one_line_failure(proc, tmp_path, "HIL122", "100")


def test_bad_profile_yaml(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text((REPO / "device_profiles" / "virtual.yaml").read_text().replace("cpu_mhz: 240", "cpu_mhz: fast"))
    proc = run_bench(tmp_path, "--target", str(bad))
    assert_one_line_failure(proc, tmp_path, "HIL101", "broken.yaml", "cpu_mhz")


def test_unknown_profile(tmp_path):
    proc = run_bench(tmp_path, "--target", "esp32p9")
    assert_one_line_failure(proc, tmp_path, "HIL102", "esp32p9")


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_bench(tmp_path, "--out", str(blocker / "out"))
    assert_one_line_failure(proc, tmp_path, "HIL601")
