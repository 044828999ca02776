"""Fuzzing the protocol on both sides.

C: the device core under libFuzzer (firmware/core/fuzz/fuzz_core.c, `make fuzz` for the long run): a short
smoke run of both targets, the kept regression inputs and the seed corpus replayed under AddressSanitizer
and UBSan (with any C compiler, so they run where clang is missing), and a check that the fuzz oracles do
catch a core that drops a reply. Python: every payload parser on arbitrary bytes either parses or raises
ProtocolError, never anything else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.link import protocol
from harness.errors import ProtocolError

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "firmware" / "core"
FUZZ = CORE / "fuzz"
CORE_SOURCES = [CORE / "hil_frame.c", CORE / "hil_sha256.c", CORE / "hil_core.c"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
TARGETS = {"raw": 0, "frames": 1}
CC = shutil.which("cc")
CLANG = shutil.which("clang")
MAKE = shutil.which("make")


def _run(cmd: list[str], timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def _libfuzzer_works(tmp_path: Path) -> bool:
    if CLANG is None:
        return False
    probe = tmp_path / "probe.c"
    probe.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                     "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
    return _run([CLANG, "-fsanitize=fuzzer,address,undefined", "-o", tmp_path / "probe", probe]).returncode == 0


def _sanitizers_work(tmp_path: Path) -> bool:
    probe = tmp_path / "san.c"
    probe.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "san"
    return _run([CC, *SANITIZE, "-o", exe, probe]).returncode == 0 and _run([exe]).returncode == 0


def _replayer(tmp_path: Path, target: str, sources: list[Path] = CORE_SOURCES) -> Path:
    """fuzz_core.c with its own main(): replays input files without libFuzzer."""
    exe = tmp_path / f"replay_{target}"
    flags = ["-g", "-O0", *(SANITIZE if _sanitizers_work(tmp_path) else [])]
    build = _run([CC, "-std=c99", *flags, f"-DHIL_FUZZ_FRAMES={TARGETS[target]}", "-DHIL_FUZZ_STANDALONE",
                  "-I", CORE, "-o", exe, FUZZ / "fuzz_core.c", *sources])
    assert build.returncode == 0, build.stderr
    return exe


def _seeds(tmp_path: Path) -> Path:
    out = tmp_path / "seeds"
    made = _run([sys.executable, FUZZ / "make_seeds.py", out])
    assert made.returncode == 0, made.stderr
    return out


@pytest.mark.skipif(CC is None, reason="no system C compiler `cc` on PATH")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_regressions_and_seeds_replay_clean(tmp_path, target):
    exe = _replayer(tmp_path, target)
    files = sorted((FUZZ / "regressions" / target).glob("*")) + sorted((_seeds(tmp_path) / target).glob("*"))
    assert len(files) >= 20, files  # the golden vectors alone give more seeds than that
    result = _run([exe, *files])
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert result.stdout.count("ok ") == len(files)


@pytest.mark.skipif(CC is None, reason="no system C compiler `cc` on PATH")
def test_oracles_catch_a_core_that_stays_silent(tmp_path):
    """A core that drops its NAK for a bad candidate must make the replay abort, naming the broken promise."""
    broken = tmp_path / "core"
    broken.mkdir()
    for source in [*CORE_SOURCES, CORE / "hil_core.h"]:
        shutil.copy(source, broken / source.name)
    text = (broken / "hil_core.c").read_text()
    assert "        send_nak(core, reason);\n" in text
    (broken / "hil_core.c").write_text(text.replace("        send_nak(core, reason);\n", "        (void)reason;\n"))
    exe = _replayer(tmp_path, "raw", [broken / s.name for s in CORE_SOURCES])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00" + b"ets Jun  8 2016 00:22:57\r\n\x00")
    result = _run([exe, garbage])
    assert result.returncode != 0
    assert "oracle" in result.stderr and "NAK" in result.stderr, result.stderr


@pytest.mark.skipif(MAKE is None, reason="no make on PATH")
def test_libfuzzer_smoke_run(tmp_path):
    """Both targets for a few seconds from the golden seeds plus the kept regressions: no crash."""
    if not _libfuzzer_works(tmp_path):
        pytest.skip("needs clang with libFuzzer (apt-get install clang)")
    out = tmp_path / "fuzz"
    result = _run([MAKE, "-C", FUZZ, "smoke", f"OUT={out}", "FUZZ_SMOKE_TIME=6", "FUZZ_SMOKE_RUNS=100000"],
                  timeout=600)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-6000:]
    runs = [int(n) for n in re.findall(r"stat::number_of_executed_units: (\d+)", text)]
    assert len(runs) == 2 and all(n > 500 for n in runs), runs
    assert not list((out / "artifacts").glob("*")), "libFuzzer left a crash input"


# --- Python payload parsers ---------------------------------------------------------------------------------

PARSERS = {
    "Hello": protocol.Hello.parse,
    "ModelInfo": protocol.ModelInfo.parse,
    "Inference": protocol.Inference.parse,
    "DeviceError": protocol.DeviceError.parse,
    "DumpChunk": protocol.DumpChunk.parse,
    "parse_dump_end": protocol.parse_dump_end,
    "parse_chunk_ack": protocol.parse_chunk_ack,
    "parse_nak": protocol.parse_nak,
}


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(PARSERS)), payload=st.binary(max_size=300))
def test_payload_parsers_raise_only_protocol_error(name, payload):
    try:
        PARSERS[name](payload)
    except ProtocolError as err:
        assert err.code.startswith("HIL3") and "\n" not in str(err)
