"""harness/boards/device.prepare_board end to end, with stand-ins for the two things this machine lacks.

- ESP-IDF: tests/fixtures/fake_idf.py plays idf.py (put on PATH as `idf.py`, as export.sh does). It writes
  an ESP-IDF build directory with small placeholder images, not firmware.
- An ESP32-S3 on a USB port: esp32-mock-bootloader plays its boot ROM on a pty. It speaks esptool's SLIP
  protocol only, so our HELLO gets no HIL frame back, exactly like a board running other firmware.

What is real: the build cache logic, the HELLO probe over pyserial, and esptool writing and verifying the
images through its Python API. prepare_board must build, find no HIL firmware, flash, and return the port.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from esp32_mock_bootloader.advanced import process as mock_process
from harness.boards import device
from harness.boards.flash import read_back
from harness.boards.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
FAKE_IDF = REPO / "tests" / "fixtures" / "fake_idf.py"


@pytest.fixture
def fake_idf_on_path(tmp_path, monkeypatch) -> None:
    bin_dir = tmp_path / "idf-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "idf.py"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_IDF}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_IDF_ARGV_LOG", str(tmp_path / "idf_argv.jsonl"))
    for name in ("FAKE_IDF_FAIL", "FAKE_IDF_VERSION", "IDF_TARGET", "IDF_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo_copy(tmp_path, monkeypatch) -> Path:
    """prepare_board builds REPO/firmware into REPO/build: point it at a copy, so the fake build never lands
    in the real build cache (where a real run would take it for firmware)."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "firmware", root / "firmware", ignore=shutil.ignore_patterns("build*", "managed_components"))
    monkeypatch.setattr(device, "REPO", root)
    return root


@pytest.fixture
def mock_s3():
    proc, port = mock_process.start_pty(timeout=60, chip="esp32s3")
    yield port
    proc.terminate()
    proc.wait(timeout=5)
    if proc.stderr:
        proc.stderr.close()


def test_prepare_board_builds_finds_no_hil_firmware_flashes_and_returns_the_port(
        fake_idf_on_path, repo_copy, mock_s3, tmp_path):
    text = (REPO / "device_profiles" / "esp32s3.yaml").read_text().replace("timeout_s: 5.0", "timeout_s: 0.5")
    (tmp_path / "esp32s3.yaml").write_text(text)
    profile = load_profile(str(tmp_path / "esp32s3.yaml"))
    lines: list[str] = []

    port = device.prepare_board(mock_s3, profile, baud=115200, log=lines.append)

    assert port == mock_s3
    out_dir = repo_copy / "build" / "esp32s3"
    assert (out_dir / "flasher_args.json").is_file()  # built by the stand-in idf.py
    flashing = [line for line in lines if line.startswith("flashing ")]
    assert len(flashing) == 1 and "board reports no HIL firmware" in flashing[0], lines
    # Every image of the build is on the mock's flash now, read back through esptool.
    app = (out_dir / "hil_bench.bin").read_bytes()
    assert read_back(port, 0x10000, len(app), chip="esp32s3") == app
