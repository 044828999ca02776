"""Builds and runs the C device core's unit tests (firmware/core/test/test_core.c) with the system compiler.

The core is the same code on the ESP32 and in the virtual board, so it must compile warning-free under
strict C99, run clean under AddressSanitizer/UBSan, parse as C++ (the ESP-IDF app is C++), and build as the
shared library the virtual board loads through ctypes.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "firmware" / "core"
CORE_SOURCES = ["firmware/core/hil_frame.c", "firmware/core/hil_sha256.c", "firmware/core/hil_core.c"]
TEST_SOURCE = "firmware/core/test/test_core.c"
GOLDEN = ROOT / "tests" / "golden" / "frames.txt"

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wstrict-prototypes", "-Wconversion"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]

CC = shutil.which("cc")
CXX = shutil.which("c++") or shutil.which("g++")

pytestmark = pytest.mark.skipif(CC is None, reason="no system C compiler `cc` on PATH")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


def _build_and_run_unit_tests(exe: Path, extra: list[str]) -> subprocess.CompletedProcess:
    build = _run([CC, *STRICT, *extra, "-o", str(exe), *CORE_SOURCES, TEST_SOURCE])
    assert build.returncode == 0, f"compile failed:\n{build.stderr}"
    assert build.stderr == "", f"compiler printed diagnostics:\n{build.stderr}"
    return _run([str(exe), str(GOLDEN)])


def _sanitizers_work(tmp_path: Path) -> bool:
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "probe"
    if _run([CC, *SANITIZE, "-o", str(exe), str(probe)]).returncode != 0:
        return False
    return _run([str(exe)]).returncode == 0


def test_unit_tests_pass_with_strict_warnings(tmp_path):
    result = _build_and_run_unit_tests(tmp_path / "test_core", ["-O2"])
    assert result.returncode == 0, f"C unit tests failed:\n{result.stdout}\n{result.stderr}"
    assert "0 failures" in result.stdout


def test_unit_tests_pass_under_address_and_ub_sanitizers(tmp_path):
    if not _sanitizers_work(tmp_path):
        pytest.skip("this cc cannot link -fsanitize=address,undefined (install libasan8 and libubsan1)")
    result = _build_and_run_unit_tests(tmp_path / "test_core_asan", ["-O1", "-g", *SANITIZE])
    assert result.returncode == 0, f"C unit tests failed under sanitizers:\n{result.stdout}\n{result.stderr}"


def test_unit_tests_fail_on_a_broken_golden_file(tmp_path):
    # The C test must judge the core against the golden file, not pass whatever it is given.
    broken = tmp_path / "frames.txt"
    lines = GOLDEN.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("chunk_ack "))
    name, ftype, seq, payload, wire = lines[index].split()
    last = int(wire[-4:-2], 16)  # last byte of the COBS data (part of the CRC); must stay non-zero
    flipped = f"{last ^ 0x01 if last != 0x01 else 0x02:02x}"
    lines[index] = " ".join([name, ftype, seq, payload, wire[:-4] + flipped + "00"])
    broken.write_text("\n".join(lines) + "\n")
    (tmp_path / "rejects.txt").write_text((GOLDEN.parent / "rejects.txt").read_text())
    exe = tmp_path / "test_core"
    assert _build_and_run_unit_tests(exe, ["-O0"]).returncode == 0
    result = _run([str(exe), str(broken)])
    assert result.returncode != 0
    assert "chunk_ack" in result.stderr


def test_unit_tests_fail_on_a_broken_reject(tmp_path):
    # The rejects file is judged too: a NAK reason that the core does not give fails the run.
    (tmp_path / "frames.txt").write_text(GOLDEN.read_text())
    lines = (GOLDEN.parent / "rejects.txt").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("bad_crc "))
    name, _reason, wire = lines[index].split()
    lines[index] = f"{name} 3 {wire}"
    (tmp_path / "rejects.txt").write_text("\n".join(lines) + "\n")
    exe = tmp_path / "test_core"
    assert _build_and_run_unit_tests(exe, ["-O0"]).returncode == 0
    result = _run([str(exe), str(tmp_path / "frames.txt")])
    assert result.returncode != 0
    assert "bad_crc" in result.stderr


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
def test_core_parses_as_cxx():
    for source in CORE_SOURCES:
        result = _run([CXX, "-x", "c++", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-pedantic", source])
        assert result.returncode == 0, f"{source} is not valid C++:\n{result.stderr}"


def test_shared_library_builds_as_the_virtual_board_does(tmp_path):
    lib_path = tmp_path / "libhilcore.so"
    cmd = [CC, "-std=c99", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-o", str(lib_path), *CORE_SOURCES]
    build = _run(cmd)
    assert build.returncode == 0, f"shared library build failed:\n{build.stderr}"

    lib = ctypes.CDLL(str(lib_path))
    lib.hil_core_sizeof.restype = ctypes.c_size_t
    lib.hil_core_sizeof.argtypes = []
    lib.hil_crc32.restype = ctypes.c_uint32
    lib.hil_crc32.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

    # The core holds two receive and two transmit buffers of full frame size, at least.
    assert lib.hil_core_sizeof() >= 2 * 4123 + 2 * 4104
    assert lib.hil_crc32(b"123456789", 9) == 0xCBF43926
    data = bytes(range(256)) * 5
    assert lib.hil_crc32(data, len(data)) == zlib.crc32(data)
