"""Bad input, as a user meets it: `pytest tests/hil ...` in a fresh process.

Each case must end with one line that names the cause and the fix (its HIL code), a non-zero exit, no
traceback, and no report in the output directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.link.transport import open_link

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def run_bench(tmp_path: Path, *args: str, timeout: float = 120, env_extra: dict | None = None
              ) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    models = () if "--model" in args else ("--models", "cnn1d_beat")  # one registry model keeps it short
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q",
           "--out", str(out), "--max-beats", "20", *models, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(env_extra or {})
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


# --- the rest of the catalogue (docs/errors.md) ------------------------------------------------------------
# Cases that are not about the model run one small fixture model, so they do not depend on the registry.
CONV = str(FIXTURES / "conv_int8.tflite")
BUNDLED = REPO / "data" / "mitdb"


def test_permission_denied_names_the_group_to_join(tmp_path):
    """Root is never denied, so a plugin makes pyserial's open fail with EACCES as it does for a user
    outside the device's group; everything else is the real command line path."""
    from harness.link.transport import device_group

    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        group = device_group(path)
        proc = run_bench(tmp_path, "--device", path, "--skip-flash", "--model", CONV, "-p", "deny_serial",
                         env_extra={"PYTHONPATH": str(FIXTURES)})
    finally:
        os.close(master)
        os.close(slave)
    assert group
    assert_one_line_failure(proc, tmp_path, "HIL202", "permission denied", path, f"group '{group}'",
                            f"usermod -aG {group} $USER")


def _pty_peer(answer) -> tuple[str, threading.Event, threading.Thread, int, int]:
    """A pty whose other end answers whatever the harness sends with `answer(data)`."""
    import select

    master, slave = os.openpty()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if ready:
                    os.write(master, answer(os.read(master, 4096)))
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return os.ttyname(slave), stop, thread, master, slave


def test_board_running_micropython(tmp_path):
    """Other firmware on the board (a MicroPython REPL echoing a prompt) is named, not a bare timeout."""
    path, stop, thread, master, slave = _pty_peer(lambda data: b"\r\nTraceback (most recent call last):\r\n"
                                                  b"SyntaxError: invalid syntax\r\n>>> ")
    try:
        proc = run_bench(tmp_path, "--device", path, "--skip-flash", "--model", CONV)
    finally:
        stop.set()
        thread.join(2)
        os.close(master)
        os.close(slave)
    assert_one_line_failure(proc, tmp_path, "HIL301", "no HIL frame", "other firmware")


def test_arena_too_small_for_the_model(tmp_path):
    profile = (REPO / "device_profiles" / "virtual.yaml").read_text()
    assert "arena_bytes: 131072" in profile
    small = tmp_path / "small_arena.yaml"
    small.write_text(profile.replace("arena_bytes: 131072", "arena_bytes: 1024").replace("name: virtual", "name: small"))
    proc = run_bench(tmp_path, "--target", str(small), "--model", CONV)
    assert_one_line_failure(proc, tmp_path, "HIL119", "conv_int8", "1024", "arena")


def test_arena_check_is_the_measured_need(tmp_path):
    """The refusal is TFLM's measured figure, compared exactly: one byte short fails, the need passes."""
    import dataclasses

    from harness.errors import ModelError
    from harness.bench.model import check_model, load_user_model, measure_arena
    from harness.boards.profiles import load_profile

    model = load_user_model(CONV)
    need = measure_arena(model.data)
    assert need is not None and 256 < need < 131072
    profile = load_profile("virtual")
    check_model(model, dataclasses.replace(profile, arena_bytes=need))
    with pytest.raises(ModelError) as err:
        check_model(model, dataclasses.replace(profile, arena_bytes=need - 1))
    assert err.value.code == "HIL119"
    assert f"needs {need} bytes" in str(err.value) and f"reserves {need - 1}" in str(err.value)


def test_flatbuffer_pointing_outside_its_tensor_table(tmp_path):
    """A well-formed flatbuffer whose op reads tensor 999 of 12 (TFLM would read out of bounds)."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = (FIXTURES / "conv_int8.tflite").read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    op = model.subgraphs[0].operators[0]
    op.inputs = [int(op.inputs[0]), 999]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "oob_tensor.tflite"
    bad.write_bytes(bytes(builder.Output()))
    (tmp_path / "oob_tensor.yaml").write_text((FIXTURES / "conv_int8.yaml").read_text())
    proc = run_bench(tmp_path, "--model", str(bad))
    assert_one_line_failure(proc, tmp_path, "HIL112", "oob_tensor.tflite", "tensor 999")


def _mitdb_copy(tmp_path: Path, record: str, *, skip: str = "") -> Path:
    import shutil

    folder = tmp_path / "mitdb"
    folder.mkdir()
    for ext in ("hea", "dat", "atr"):
        if ext != skip:
            shutil.copy(BUNDLED / f"{record}.{ext}", folder / f"{record}.{ext}")
    return folder


def test_truncated_record(tmp_path):
    folder = _mitdb_copy(tmp_path, "213")
    dat = folder / "213.dat"
    dat.write_bytes(dat.read_bytes()[:dat.stat().st_size // 2])
    proc = run_bench(tmp_path, "--mitdb", str(folder), "--records", "213", "--model", CONV)
    assert_one_line_failure(proc, tmp_path, "HIL124", "213", "truncated")


def test_annotation_file_missing(tmp_path):
    folder = _mitdb_copy(tmp_path, "213", skip="atr")
    proc = run_bench(tmp_path, "--mitdb", str(folder), "--records", "213", "--model", CONV)
    assert_one_line_failure(proc, tmp_path, "HIL123", "213.atr")


def test_malformed_baseline(tmp_path):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    (baselines / "virtual.json").write_text('{"schema": 1, "entries": [')
    proc = run_bench(tmp_path, "--baseline-dir", str(baselines), "--model", CONV)
    assert_one_line_failure(proc, tmp_path, "HIL611", "virtual.json")


def test_reference_package_missing(tmp_path):
    """`--reference litert` without ai-edge-litert: one line at start-up, not a traceback holding the model's
    bytes from inside the first case. A plugin hides the package where it is installed (Python ≥ 3.12)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "no_litert.py").write_text("import sys\nsys.modules['ai_edge_litert'] = None\n")
    proc = run_bench(tmp_path, "--reference", "litert", "-p", "no_litert",
                     env_extra={"PYTHONPATH": os.pathsep.join([str(plugins), str(REPO)])})
    assert_one_line_failure(proc, tmp_path, "HIL100", "ai-edge-litert", "--reference tflite-ref")
    assert len((proc.stdout + proc.stderr).strip().splitlines()) <= 3, proc.stdout + proc.stderr


# --- a board that is not what the profile says (--skip-flash, third-party boards) ---------------------------

@pytest.mark.parametrize("hello,code,words", [
    # The reported case: a board calling itself "rogue", with reference kernels, under the esp32 profile.
    (("chip=rogue", "kernels=reference"), "HIL140", ("chip 'rogue'", "profile esp32 says 'esp32'", "--target")),
    (("chip=esp32", "kernels=reference"), "HIL141", ("reference kernels", "esp-nn", "--skip-flash")),
])
def test_skip_flash_board_is_checked_against_the_profile(tmp_path, hello, code, words):
    from harness.boards.virtual import VirtualBoard

    with VirtualBoard(store_dir=tmp_path / "store", hello=hello) as vb:
        proc = run_bench(tmp_path, "--device", vb.url, "--skip-flash", "--target", "esp32", "--model", CONV)
    assert_one_line_failure(proc, tmp_path, code, *words)


def test_hello_fields_against_the_profile():
    import dataclasses

    from harness.errors import ProfileError
    from harness.boards.profiles import check_board, load_profile
    from harness.link.protocol import Hello

    profile = load_profile("esp32")
    good = Hello(proto_version=1, kernel_mode="esp-nn", timing_source="device_cycles", model_state=0,
                 cpu_mhz=240, max_payload=4096, arena_size=profile.arena_bytes,
                 store_capacity=profile.model_max_bytes, model_size=0, model_sha256="0" * 64, arena_used=0,
                 fw_version="1", chip="ESP32", build_hash="abc")
    check_board(profile, good, "/dev/ttyUSB0")  # the chip name's case and dashes do not matter
    check_board(profile, dataclasses.replace(good, arena_size=1 << 20, store_capacity=1 << 22), "/dev/ttyUSB0")
    check_board(profile, dataclasses.replace(good, kernel_mode="reference"), "p", kernels="reference")
    for change, code, text in [
        ({"chip": "esp32s3"}, "HIL140", "reports chip 'esp32s3'"),
        ({"kernel_mode": "unknown"}, "HIL141", "runs unknown kernels"),
        ({"arena_size": profile.arena_bytes - 1}, "HIL142", f"promises {profile.arena_bytes}"),
        ({"store_capacity": 65536}, "HIL143", "65536-byte model store"),
    ]:
        with pytest.raises(ProfileError) as err:
            check_board(profile, dataclasses.replace(good, **change), "/dev/ttyUSB0")
        assert err.value.code == code and text in err.value.message and err.value.hint, str(err.value)


# --- the catalogue itself ------------------------------------------------------------------------------------

def _catalogue() -> dict[str, tuple[str, str]]:
    """docs/errors.md table rows: code → (cause, fix)."""
    import re

    rows = {}
    for line in (REPO / "docs" / "errors.md").read_text().splitlines():
        match = re.match(r"^\|\s*(HIL\d{3})\s*\|([^|]*)\|([^|]*)\|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return rows


def test_every_code_the_harness_raises_is_in_docs_errors_md():
    import re

    used = set()
    for source in (REPO / "harness").rglob("*.py"):
        used |= set(re.findall(r"HIL\d{3}", source.read_text()))
    catalogue = _catalogue()
    # A code put together at run time (f"HIL4{n:02d}") is invisible to this test: codes are written out.
    built = sorted({f"{source.relative_to(REPO)}: {m}" for source in (REPO / "harness").rglob("*.py")
                    for m in re.findall(r"HIL\d{0,2}\{|[\"']HIL[\"']\s*[+%]", source.read_text())})
    assert not built, f"HIL codes built at run time instead of written out: {built}"
    missing = sorted(used - set(catalogue))
    assert not missing, f"HIL codes used in harness/ but not in docs/errors.md: {missing}"
    empty = sorted(code for code, (cause, fix) in catalogue.items() if not cause or not fix)
    assert not empty, f"docs/errors.md rows without cause or fix: {empty}"


def test_every_device_error_code_has_its_own_documented_hil_code():
    from harness.boards.board import _BOARD_ERROR_CODES
    from harness.link.protocol import DeviceErrorCode

    assert set(_BOARD_ERROR_CODES) == set(DeviceErrorCode)
    assert all(code == f"HIL4{int(dev):02d}" for dev, code in _BOARD_ERROR_CODES.items())
    catalogue = _catalogue()
    for dev, code in _BOARD_ERROR_CODES.items():
        assert dev.name in catalogue[code][0], (code, dev.name, catalogue[code])
    assert "HIL499" in catalogue
    assert "sha256" in catalogue["HIL305"][0]
