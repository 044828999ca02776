"""Flashing through esptool's Python API against esp32-mock-bootloader, a boot-ROM emulator on a pty.

The mock speaks the ROM/stub serial protocol (sync, chip detection, stub upload, compressed writes, MD5
verify, read-flash) and keeps an in-memory flash, so every byte here really goes through esptool. The
images flashed are a small test image set (a few KB of deterministic bytes), not firmware.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
from pathlib import Path

import pytest

from esp32_mock_bootloader.advanced import process as mock_process
from harness.boards.build import Build, load_build_dir
from harness.errors import FlashError
from harness.boards.flash import NoBoardFound, autodetect_port, detect, flash, needs_flash, read_back

TEST_IMAGES = {"0x1000": "bootloader.bin", "0x8000": "partition-table.bin", "0x10000": "app.bin"}
ERASED = 0xFF


def _deterministic_bytes(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture
def test_image_set(tmp_path: Path) -> Build:
    """A fake ESP-IDF build dir for esp32s3 whose flasher_args.json points at a test image set."""
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    for index, name in enumerate(TEST_IMAGES.values()):
        (build_dir / name).write_bytes(_deterministic_bytes(name, 2048 + 1024 * index))
    flasher_args = {
        "flash_settings": {"flash_mode": "dio", "flash_freq": "80m", "flash_size": "4MB"},
        "flash_files": TEST_IMAGES,
        "app": {"offset": "0x10000", "file": "app.bin"},
        "extra_esptool_args": {"chip": "esp32s3", "before": "default_reset", "after": "hard_reset"},
    }
    (build_dir / "flasher_args.json").write_text(json.dumps(flasher_args))
    return load_build_dir(build_dir, "esp32s3")


@pytest.fixture
def mock_board():
    """Start esp32-mock-bootloader for a chip on a fresh pty; returns the pty path esptool opens."""
    started = []

    def start(chip: str) -> str:
        proc, pty_path = mock_process.start_pty(timeout=60, chip=chip)
        started.append(proc)
        return pty_path

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


def test_flash_writes_verifies_and_reads_back_the_test_images(mock_board, test_image_set):
    port = mock_board("esp32s3")
    lines: list[str] = []
    flash(port, test_image_set, chip="esp32s3", log=lines.append)

    for offset, path in test_image_set.flash_files():
        expected = path.read_bytes()
        assert read_back(port, offset, len(expected), chip="esp32s3") == expected
    # The bytes right after an image were never written.
    offset, path = test_image_set.flash_files()[-1]
    assert read_back(port, offset + path.stat().st_size, 64) == bytes([ERASED]) * 64
    assert any("Hash of data verified" in line for line in lines)  # esptool's output reached our log
    assert "flashed 3 files" in lines[-1] and "verified" in lines[-1]


def test_chip_mismatch_is_refused_before_anything_is_written(mock_board, test_image_set):
    port = mock_board("esp32c3")
    with pytest.raises(FlashError) as caught:
        flash(port, test_image_set, chip="esp32s3")
    err = caught.value
    assert err.code == "HIL711"
    assert f"board on {port} is an ESP32-C3, the profile says esp32s3" in str(err)
    assert "--target esp32c3" in str(err)
    for offset, path in test_image_set.flash_files():
        assert read_back(port, offset, 256) == bytes([ERASED]) * 256


def test_detect_and_autodetect(mock_board):
    port = mock_board("esp32c3")
    assert detect(port) == "esp32c3"
    assert autodetect_port("esp32c3", ports=[port]) == port
    with pytest.raises(FlashError) as caught:
        autodetect_port("esp32s3", ports=[port])
    assert caught.value.code == "HIL711"
    assert f"{port} is an ESP32-C3" in str(caught.value)


def test_autodetect_without_any_board_raises_no_board_found():
    master, slave = pty.openpty()  # a port where nothing answers, like a board not in download mode
    try:
        with pytest.raises(NoBoardFound) as caught:
            autodetect_port("esp32s3", ports=[os.ttyname(slave)], connect_attempts=1)
    finally:
        os.close(master)
        os.close(slave)
    assert caught.value.code == "HIL712"
    assert "no ESP32-S3 board answered" in str(caught.value)
    with pytest.raises(NoBoardFound, match=r"tried: no port given"):
        autodetect_port("esp32s3", ports=[])


def test_build_for_another_chip_is_refused_without_touching_the_port(test_image_set):
    with pytest.raises(FlashError) as caught:
        flash("/dev/does-not-matter", test_image_set, chip="esp32c3")
    assert caught.value.code == "HIL713"
    assert "built for esp32s3, the profile says esp32c3" in str(caught.value)


def test_missing_port_is_one_line_error(test_image_set):
    with pytest.raises(FlashError) as caught:
        flash("/dev/ttyHILNOPE0", test_image_set, chip="esp32s3")
    message = str(caught.value)
    assert caught.value.code == "HIL710"
    assert "\n" not in message
    assert message.startswith("HIL710 cannot open /dev/ttyHILNOPE0: no such port")


def test_silent_port_says_how_to_enter_download_mode(test_image_set):
    master, slave = pty.openpty()
    try:
        with pytest.raises(FlashError) as caught:
            flash(os.ttyname(slave), test_image_set, chip="esp32s3", connect_attempts=1)
    finally:
        os.close(master)
        os.close(slave)
    message = str(caught.value)
    assert "\n" not in message
    assert "failed to connect to ESP32-S3" in message and "hold BOOT and press EN" in message


def _build_with_hash(build: Build, build_hash: str | None) -> Build:
    return Build(dir=build.dir, target=build.target, build_hash=build_hash, flasher_args=build.flasher_args,
                 app_bin=build.app_bin)


@pytest.mark.parametrize("board_hash, build_hash, expected", [
    ("0123456789abcdef", "0123456789abcdef", False),  # board already runs this build
    ("0123456789abcdef", "fedcba9876543210", True),   # other sources
    (None, "0123456789abcdef", True),                 # board did not answer HELLO (other firmware)
    ("", "0123456789abcdef", True),                   # firmware without a build hash
    ("0123456789abcdef", None, True),                 # prebuilt of unknown origin
])
def test_needs_flash(test_image_set, board_hash, build_hash, expected):
    assert needs_flash(board_hash, _build_with_hash(test_image_set, build_hash)) is expected


def test_opening_the_link_leaves_the_boot_rom_session_alone(mock_board):
    # The mock's pty has no control lines, like an RFC2217 or socket link: opening our link must work
    # without them (the pre-open line states are skipped), must not disturb the ROM (esptool still syncs
    # after us), and an explicit reset says that it could not happen rather than pretending.
    from harness.errors import LinkError
    from harness.link.transport import open_link

    port = mock_board("esp32c3")
    assert detect(port) == "esp32c3"
    with open_link(port, 115200) as link:
        with pytest.raises(LinkError) as caught:
            link.pulse_reset("usb-jtag")
    assert caught.value.code == "HIL205" and "reset: none" in caught.value.hint
    assert detect(port, before="no-reset") == "esp32c3"
