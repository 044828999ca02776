"""The virtual board end to end: a child process running the C device core with TFLM reference kernels on a
pty (or TCP), driven through pyserial and harness.boards.board exactly as a real board is.

Every output is checked bit for bit against tflite-runtime's BUILTIN_REF interpreter run here in the test,
and every cycle count against the static cost model, so a broken core, hook or kernel shows up as a
mismatch rather than a timeout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tflite_runtime.interpreter as tfl
import yaml

from harness.link import protocol
from harness.boards.board import Board
from harness.bench.costmodel import estimate
from harness.errors import BoardError, BoardTimeout
from harness.boards.profiles import PROFILES_DIR, load_profile
from harness.boards.virtual import VirtualBoard, VirtualBoardError

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE = load_profile("virtual")
CONV = (FIXTURES / "conv_int8.tflite").read_bytes()


class Reference:
    """tflite-runtime with the reference op resolver: bit-exact with TFLM on these INT8 models."""

    def __init__(self, data: bytes):
        self.interp = tfl.Interpreter(model_content=data,
                                      experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_REF)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def run(self, tensor: bytes) -> bytes:
        self.interp.set_tensor(self.inp["index"], np.frombuffer(tensor, np.int8).reshape(self.inp["shape"]))
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"]).tobytes()


@pytest.fixture(scope="module")
def conv_ref() -> Reference:
    return Reference(CONV)


def random_inputs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, 187, dtype=np.int8).tobytes() for _ in range(n)]


def stream(board: Board, inputs: list[bytes]) -> dict[int, protocol.Inference]:
    results: dict[int, protocol.Inference] = {}

    def keep(index: int, inference: protocol.Inference) -> None:
        assert index not in results
        results[index] = inference

    board.infer_stream(inputs, total=len(inputs), on_result=keep)
    return results


def open_board(url: str, baud: int = PROFILE.baud, timeout_s: float = PROFILE.timeout_s) -> Board:
    return Board.open(url, baud, timeout_s=timeout_s, window=PROFILE.window)


def test_hello_over_the_pty(tmp_path):
    with VirtualBoard(store_dir=tmp_path) as vb, open_board(vb.url) as board:
        assert vb.url.startswith("/dev/pts/")
        hello = board.hello()
    assert hello.chip == "virtual"
    assert hello.timing_source == "static_estimate"
    assert hello.kernel_mode == "reference"
    assert hello.fw_version.endswith("-virtual")
    assert (hello.protocol, hello.rx_buffer, hello.reset_ms) == ("hil/1.1", 16384, 1000)
    assert re.fullmatch(r"[0-9a-f]{16}", hello.build_hash)
    assert (hello.cpu_mhz, hello.arena_size, hello.store_capacity) == (
        PROFILE.cpu_mhz, PROFILE.arena_bytes, PROFILE.model_max_bytes)
    assert not hello.model_loaded


def test_upload_stream_matches_reference_and_store_survives_restart(tmp_path, conv_ref):
    inputs = random_inputs(300)
    cycles = round(estimate(CONV, PROFILE).cycles)
    with VirtualBoard(store_dir=tmp_path) as vb, open_board(vb.url) as board:
        info, uploaded = board.ensure_model(CONV)
        assert uploaded
        assert (info.input_bytes, info.output_bytes, info.model_size) == (187, 5, len(CONV))
        assert 0 < info.arena_used <= PROFILE.arena_bytes

        results = stream(board, inputs)
        assert sorted(results) == list(range(len(inputs)))
        for index, tensor in enumerate(inputs):
            assert results[index].output == conv_ref.run(tensor), f"beat {index}"
            assert results[index].cycles == cycles
            assert results[index].wall_ns > 0

        _, uploaded_again = board.ensure_model(CONV)
        assert not uploaded_again  # same sha256 already loaded

        board.reset()  # the core restarts in place and reloads the committed model
        assert board.hello().model_loaded

    with VirtualBoard(store_dir=tmp_path) as vb, open_board(vb.url) as board:
        hello = board.hello()
        assert hello.model_loaded
        assert hello.model_sha256 == info.sha256
        assert hello.arena_used == info.arena_used
        tensor = inputs[7]
        assert stream(board, [tensor])[0].output == conv_ref.run(tensor)


def test_unsupported_op_is_named(tmp_path):
    data = (FIXTURES / "unsupported_op_int8.tflite").read_bytes()
    with VirtualBoard(store_dir=tmp_path) as vb, open_board(vb.url) as board:
        with pytest.raises(BoardError) as err:
            board.ensure_model(data)
        assert err.value.device_code == protocol.DeviceErrorCode.LOAD_FAILED
        assert "LEAKY_RELU" in str(err.value)
        assert "resolver" in str(err.value)
        assert board.hello().model_state == protocol.ModelState.LOAD_FAILED
        # A truncated flatbuffer crashes the C++ interpreters; the board must answer, not die.
        with pytest.raises(BoardError) as err:
            board.ensure_model((FIXTURES / "corrupt.tflite").read_bytes())
        assert "truncated or corrupt" in str(err.value)
        assert board.hello().chip == "virtual"
        # A constant buffer shorter than its tensor's shape: refused before TFLM reads past it (§5.9).
        from tests.test_model import short_constant_buffer_model

        with pytest.raises(BoardError) as err:
            board.ensure_model(short_constant_buffer_model(tmp_path / "short.tflite").read_bytes())
        assert err.value.device_code == protocol.DeviceErrorCode.LOAD_FAILED
        assert "12-byte constant buffer, its shape needs 16 bytes" in str(err.value)


def test_tiny_arena_reports_both_sizes(tmp_path):
    raw = yaml.safe_load((PROFILES_DIR / "virtual.yaml").read_text())
    raw["arena_bytes"] = 1024
    profile_path = tmp_path / "tiny.yaml"
    profile_path.write_text(yaml.safe_dump(raw))
    with VirtualBoard(profile_path, store_dir=tmp_path / "store") as vb, open_board(vb.url) as board:
        assert board.hello().arena_size == 1024
        with pytest.raises(BoardError) as err:
            board.ensure_model(CONV)
    assert err.value.device_code == protocol.DeviceErrorCode.ARENA_TOO_SMALL
    match = re.search(r"needs (\d+) bytes of tensor arena, the firmware has (\d+)", str(err.value))
    assert match, str(err.value)
    need, have = int(match.group(1)), int(match.group(2))
    assert have == 1024 and need > have
    # The fix names the measured need (virtual board: the profile's arena is the board's arena).
    assert err.value.code == "HIL411"
    assert f"raise arena_bytes in the device profile to at least {need}" in err.value.hint


def test_arena_hint_for_a_real_board_names_the_kconfig_option():
    from harness.boards.board import _arena_hint

    msg = ("model needs 140304 bytes of tensor arena, this firmware reserves 131072: raise CONFIG_HIL_ARENA_SIZE "
           "to 140304 and the profile's arena_bytes")
    hint = _arena_hint(msg, 131072, "esp32s3")
    assert "CONFIG_HIL_ARENA_SIZE to at least 140304 in firmware/sdkconfig.defaults.esp32s3" in hint
    # A firmware message without a figure (no free block to probe with) still gets the generic fix.
    assert "CONFIG_HIL_ARENA_SIZE" in _arena_hint("AllocateTensors failed with a 98304-byte arena", 98304, "esp32")


def test_flip_lsb_fault_hits_exactly_that_beat(tmp_path, conv_ref):
    inputs = random_inputs(12, seed=1)
    with VirtualBoard(store_dir=tmp_path, faults=["flip-lsb:5"]) as vb, open_board(vb.url) as board:
        board.ensure_model(CONV)
        results = stream(board, inputs)
    differing = [i for i, t in enumerate(inputs) if results[i].output != conv_ref.run(t)]
    assert differing == [5]
    got, want = results[5].output, conv_ref.run(inputs[5])
    assert got[1:] == want[1:]
    assert got[0] == want[0] ^ 1


def test_silent_after_fault_times_out_with_progress(tmp_path):
    with VirtualBoard(store_dir=tmp_path, faults=["silent-after:3"]) as vb, \
            open_board(vb.url, timeout_s=1.0) as board:
        board.ensure_model(CONV)
        with pytest.raises(BoardTimeout) as err:
            stream(board, random_inputs(10, seed=2))
    assert err.value.verified == 3


def test_socket_url(tmp_path, conv_ref):
    inputs = random_inputs(5, seed=3)
    with VirtualBoard(store_dir=tmp_path, tcp=True) as vb:
        assert vb.url.startswith("socket://127.0.0.1:")
        with open_board(vb.url) as board:
            assert board.hello().chip == "virtual"
            board.ensure_model(CONV)
            results = stream(board, inputs)
    assert [results[i].output for i in range(5)] == [conv_ref.run(t) for t in inputs]


def test_throttle_holds_the_line_rate(tmp_path):
    baud = 115200
    inputs = random_inputs(40, seed=4)
    with VirtualBoard(store_dir=tmp_path, throttle_baud=baud) as vb, open_board(vb.url, baud=baud) as board:
        board.ensure_model(CONV)
        board.hello()
        seqs = {}
        stats = board.infer_stream(inputs, on_result=lambda i, r: seqs.setdefault(i, r))
    assert len(seqs) == len(inputs)
    sent = sum(len(protocol.encode_frame(protocol.MsgType.INFER, seqs[i].seq, t)) for i, t in enumerate(inputs))
    received = sum(len(protocol.encode_frame(protocol.MsgType.RESULT, r.seq, r.pack())) for r in seqs.values())
    bound_s = max(sent, received) / (baud / 10)
    print(f"throttled stream: {stats.wall_s:.3f} s, line-rate bound {bound_s:.3f} s")
    assert stats.wall_s >= bound_s, (stats.wall_s, bound_s)


def test_start_failure_is_one_typed_line(tmp_path):
    with pytest.raises(VirtualBoardError) as err:
        VirtualBoard(tmp_path / "missing.yaml").start()
    text = str(err.value)
    assert "\n" not in text
    assert "missing.yaml" in text and err.value.code == "HIL230"


def test_core_library_build_and_binding(tmp_path, monkeypatch):
    from harness.errors import BuildError
    from harness.boards.virtual import core as hil
    from harness.boards.virtual.platform import Platform

    lib_path = tmp_path / "libhilcore.so"
    monkeypatch.setattr(hil, "library_path", lambda: lib_path)
    assert hil.ensure_library() == lib_path
    os.utime(lib_path, ns=(0, 0))  # older than the sources: rebuilt
    hil.ensure_library()
    assert lib_path.stat().st_mtime_ns > 0

    platform = Platform(PROFILE, tmp_path / "store")
    core = hil.Core(platform.device_info(), platform.hooks())
    assert core.crc32(b"123456789") == 0xCBF43926
    payload = bytes(range(256)) * 2
    assert core.frame_encode(protocol.MsgType.INFER, 513, payload) == protocol.encode_frame(
        protocol.MsgType.INFER, 513, payload)
    core.init()
    core.feed(b"boot log text\r\n" + protocol.encode_frame(protocol.MsgType.HELLO, 9))
    frames = protocol.FrameDecoder().feed(b"".join(platform.outbox))
    assert [(f.type, f.seq) for f in frames] == [(protocol.MsgType.NAK, protocol.NAK_SEQ),
                                                (protocol.MsgType.HELLO_ACK, 9)]
    assert protocol.Hello.parse(frames[1].payload).chip == "virtual"

    lib_path.unlink()
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(BuildError) as err:
        hil.ensure_library()
    assert "install gcc" in str(err.value)
