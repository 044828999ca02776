"""Remote boards: the bench and esptool flashing through `rfc2217://` (pyserial's RFC 2217 server side,
harness/link/rfc2217_server.py, in front of a virtual board or a boot-ROM emulator) and through `socket://`."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from esp32_mock_bootloader.advanced import process as mock_process
from harness.boards.board import Board
from harness.boards.build import load_build_dir
from harness.errors import LinkError
from harness.boards.flash import flash, read_back
from harness.link.rfc2217_server import RFC2217Server
from harness.link.transport import open_link
from harness.boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--models", "cnn1d_beat",
           "--records", "213", "--max-beats", "30", "--out", str(tmp_path / "out"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def virtual_board(tmp_path):
    with VirtualBoard("virtual", store_dir=tmp_path / "store", tcp=True) as vb:
        yield vb


def test_board_commands_over_rfc2217(virtual_board):
    with RFC2217Server(virtual_board.port) as server:
        assert server.url.startswith("rfc2217://127.0.0.1:")
        with open_link(server.url, 921600) as link:
            assert not link.is_local
            board = Board(link, timeout_s=5)
            assert board.hello().chip == "virtual"
            link.pulse_reset("rts-dtr")  # the control lines travel to the server (a pty there: no-ops)
            assert board.hello().fw_version.endswith("virtual")
        # The server serves the next client after the first left (one board, one run at a time).
        with open_link(server.url, 921600) as link:
            assert Board(link, timeout_s=5).hello().chip == "virtual"


@pytest.mark.parametrize("scheme", ["rfc2217", "socket"])
def test_bench_end_to_end_through_a_network_url(tmp_path, virtual_board, scheme):
    if scheme == "socket":
        url, server = virtual_board.url, None
    else:
        server = RFC2217Server(virtual_board.port)
        url = server.start()
    try:
        proc = run_bench(tmp_path, "--device", url, "--target", "virtual", "--skip-flash")
    finally:
        if server:
            server.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert result["device"] == url and result["status"] == "pass"
    assert result["beats"]["verified"] == 30 and result["bit_exact"]["exact"]


def _image_set(tmp_path: Path):
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    files = {"0x1000": "bootloader.bin", "0x8000": "partition-table.bin", "0x10000": "app.bin"}
    for index, name in enumerate(files.values()):
        (build_dir / name).write_bytes(hashlib.sha256(name.encode()).digest() * (64 + 32 * index))
    (build_dir / "flasher_args.json").write_text(json.dumps({
        "flash_settings": {"flash_mode": "dio", "flash_freq": "80m", "flash_size": "4MB"},
        "flash_files": files, "app": {"offset": "0x10000", "file": "app.bin"},
        "extra_esptool_args": {"chip": "esp32s3", "before": "default_reset", "after": "hard_reset"}}))
    return load_build_dir(build_dir, "esp32s3")


def test_esptool_flashes_and_reads_back_over_rfc2217(tmp_path):
    build = _image_set(tmp_path)
    rom, pty_path = mock_process.start_pty(timeout=60, chip="esp32s3")
    try:
        with RFC2217Server(pty_path) as server:
            lines: list[str] = []
            flash(server.url, build, chip="esp32s3", log=lines.append)
            assert any("Hash of data verified" in line for line in lines)
            for offset, path in build.flash_files():
                assert read_back(server.url, offset, path.stat().st_size, chip="esp32s3") == path.read_bytes()
    finally:
        rom.terminate()
        rom.wait(timeout=5)


def test_rfc2217_urls_use_the_harness_client():
    # It negotiates line settings only when they change; pyserial's renegotiates on every esptool timeout
    # change (50 ms polls), which made this file's 9 KB flash take ~20 s instead of ~2 s on 127.0.0.1.
    import serial

    from harness.link.urlhandler.protocol_rfc2217 import Serial as HarnessRFC2217

    port = serial.serial_for_url("rfc2217://127.0.0.1:1", do_not_open=True)
    assert type(port) is HarnessRFC2217


def test_rfc2217_nobody_listening_is_one_line(tmp_path):
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(LinkError) as info:
        open_link(f"rfc2217://127.0.0.1:{port}", 115200)
    assert info.value.code == "HIL206" and "esp_rfc2217_server" in info.value.hint
    proc = run_bench(tmp_path, "--device", f"rfc2217://127.0.0.1:{port}", "--target", "virtual", "--skip-flash")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert any("HIL206" in line and "fix:" in line for line in text.splitlines()), text
    assert not (tmp_path / "out" / "results.json").exists()


def test_rfc2217_server_refusing_is_one_line(tmp_path):
    """A TCP port that accepts but never speaks RFC 2217 (a raw bridge, or a server busy with another run)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = []

    def accept_and_ignore():
        try:
            while True:
                conn, _ = server.accept()
                held.append(conn)
        except OSError:
            pass

    threading.Thread(target=accept_and_ignore, daemon=True).start()
    try:
        proc = run_bench(tmp_path, "--device", f"rfc2217://127.0.0.1:{port}", "--target", "virtual",
                         "--skip-flash")
    finally:
        server.close()
        for conn in held:
            conn.close()
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "HIL207" in line]
    assert lines and "does not answer as an RFC 2217 server" in lines[0] and "fix:" in lines[0], text
    assert not (tmp_path / "out" / "results.json").exists()
