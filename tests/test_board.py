"""Board commands (harness/boards/board.py) over a real pty against a scripted test peer.

The peer below is a TEST PEER: a small Python stand-in for the device side of the protocol, written with
harness/link/protocol.py, that can drop, corrupt and duplicate frames on cue. It is not the device core: that
is C (firmware/core) and is tested against the same protocol through the virtual board tests.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time

import pytest

from harness.link import protocol
from harness.boards.board import Board, StreamStats
from harness.errors import BoardError, BoardTimeout, ProtocolError
from harness.link.protocol import DeviceError, DeviceErrorCode, FrameDecoder, Hello, Inference, ModelInfo, MsgType
from harness.link.transport import open_link

INPUT_BYTES = 24
OUTPUT_BYTES = 5
BOOT_TEXT = b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\nI (312) cpu_start: Starting\r\n"


def expected_output(tensor: bytes) -> bytes:
    return hashlib.sha256(tensor).digest()[:OUTPUT_BYTES]


def beat_input(index: int) -> bytes:
    return index.to_bytes(4, "little") * (INPUT_BYTES // 4)


class PeerDevice(threading.Thread):
    """Test peer (see module docstring): answers on the master side of a pty.

    Fault knobs: `drop_infer` (nth INFER received, 1-based, ignored), `corrupt_rx_every` (flip one received
    byte every N bytes: the frame is lost and the peer answers NAK as the device does), `corrupt_result`
    and `duplicate_result` (nth RESULT sent damaged / twice), `silent_after` results, `garbage_only`
    (answers every read with log text), `drop_chunk_ack_at` (first CHUNK_ACK for that offset is lost),
    `proto_version`, `chatty` (log text before HELLO_ACK), `result_len_delta` (every RESULT's output that
    many bytes longer/shorter), `stray_every` (after every Nth RESULT a RESULT with a seq never sent),
    `wrong_seq` (control replies carry seq + 1000).
    """

    def __init__(self, fd: int, *, capacity: int = 65536, **faults):
        super().__init__(daemon=True)
        self.fd = fd
        self.capacity = capacity
        self.decoder = FrameDecoder()
        self.faults = faults
        self.stop = threading.Event()
        self.store = bytearray()
        self.upload_size = 0
        self.upload_sha = b""
        self.model_sha = b""
        self.model_state = 0
        self.begins = 0
        self.chunk_offsets: list[int] = []
        self.infers = 0
        self.results = 0
        self.rx_bytes = 0
        self.naks = 0
        self._dropped_acks: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.02)
            if not ready:
                continue
            try:
                data = bytearray(os.read(self.fd, 65536))
            except OSError:
                return
            if self.faults.get("garbage_only"):
                self._send_raw(BOOT_TEXT)
                continue
            every = self.faults.get("corrupt_rx_every")
            if every:
                for i in range(len(data)):
                    if (self.rx_bytes + i) % every == every - 1:
                        data[i] ^= 0x04
            self.rx_bytes += len(data)
            bad_before = self.decoder.bad_frames
            frames = self.decoder.feed(bytes(data))
            for _ in range(self.decoder.bad_frames - bad_before):
                self.naks += 1
                self._send(MsgType.NAK, protocol.NAK_SEQ, protocol.nak(protocol.NakReason.BAD_CRC))
            for frame in frames:
                self._handle(frame)

    def _send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def _send(self, ftype: int, seq: int, payload: bytes = b"") -> None:
        if self.faults.get("wrong_seq") and ftype != MsgType.NAK:
            seq = (seq + 1000) & 0xFFFF
        self._send_raw(protocol.encode_frame(ftype, seq, payload))

    def _error(self, seq: int, code: int, request: int, message: str) -> None:
        self._send(MsgType.ERROR, seq, DeviceError(code, request, message).pack())

    def _handle(self, frame) -> None:
        silent_after = self.faults.get("silent_after")
        if silent_after is not None and self.results >= silent_after:
            return
        t, seq, p = frame.type, frame.seq, frame.payload
        if t == MsgType.HELLO:
            if self.faults.get("chatty"):
                self._send_raw(BOOT_TEXT)  # log lines around our frames, as IDF prints them
            hello = Hello(self.faults.get("proto_version", 1), "esp-nn", "device_cycles", self.model_state, 240,
                          protocol.MAX_PAYLOAD, 131072, self.capacity, len(self.store) if self.model_state else 0,
                          (self.model_sha if self.model_state else bytes(32)).hex(), 4096 if self.model_state else 0,
                          "0.1.0", "esp32s3", "testpeer")
            self._send(MsgType.HELLO_ACK, seq, hello.pack())
        elif t == MsgType.MODEL_BEGIN:
            size = int.from_bytes(p[:4], "little")
            if size == 0 or size > self.capacity:
                self._error(seq, DeviceErrorCode.TOO_LARGE, t, f"model of {size} bytes exceeds the store "
                                                               f"({self.capacity} bytes)")
                return
            self.begins += 1
            self.store = bytearray()
            self.model_state = 0
            self.upload_size, self.upload_sha = size, p[4:36]
            self._send(MsgType.MODEL_BEGIN_ACK, seq)
        elif t == MsgType.MODEL_CHUNK:
            offset = int.from_bytes(p[:4], "little")
            self.chunk_offsets.append(offset)
            if offset == len(self.store):
                self.store += p[4:]
            drop_at = self.faults.get("drop_chunk_ack_at")
            if offset == drop_at and offset not in self._dropped_acks:
                self._dropped_acks.add(offset)
                return
            self._send(MsgType.CHUNK_ACK, seq, protocol.chunk_ack(len(self.store)))
        elif t == MsgType.MODEL_END:
            if hashlib.sha256(self.store).digest() != self.upload_sha:
                self._error(seq, DeviceErrorCode.SHA_MISMATCH, t, "stored bytes do not match the sha256")
                return
            self.model_sha, self.model_state = self.upload_sha, 1
            info = ModelInfo(4096, INPUT_BYTES, OUTPUT_BYTES, len(self.store), self.model_sha.hex())
            self._send(MsgType.MODEL_INFO, seq, info.pack())
        elif t == MsgType.INFER:
            self.infers += 1
            if self.infers in self.faults.get("drop_infer", ()):
                return
            if not self.model_state:
                self._error(seq, DeviceErrorCode.BAD_STATE, t, "no model loaded")
                return
            if len(p) != INPUT_BYTES:
                self._error(seq, DeviceErrorCode.BAD_INPUT_SIZE, t,
                            f"input is {len(p)} bytes, the model takes {INPUT_BYTES}")
                return
            self.results += 1
            output = expected_output(p)
            delta = self.faults.get("result_len_delta", 0)
            output = output + b"\x7a" * delta if delta >= 0 else output[:delta]
            wire = protocol.encode_frame(MsgType.RESULT, seq,
                                         Inference(seq, 0, 1000 + self.results, 5000, output).pack())
            stray_every = self.faults.get("stray_every")
            if stray_every and self.results % stray_every == 0:
                stray = (seq + 30000) & 0xFFFF  # a seq the host never sent
                self._send(MsgType.RESULT, stray, Inference(stray, 0, 1, 1, output).pack())
            if self.results in self.faults.get("corrupt_result", ()):
                damaged = bytearray(wire)
                damaged[len(wire) // 2] ^= 0x40
                self._send_raw(bytes(damaged))
                return
            self._send_raw(wire * (2 if self.results in self.faults.get("duplicate_result", ()) else 1))
        elif t == MsgType.RESET:
            self._send(MsgType.RESET_ACK, seq)
        else:
            self._error(seq, DeviceErrorCode.UNKNOWN_TYPE, t, f"unknown request type 0x{t:02x}")


@pytest.fixture
def rig():
    """Yields make(**faults) → (board, peer); everything is closed after the test."""
    made = []

    def make(*, timeout_s: float = 1.0, window: int = 8, resend_after_s: float | None = 0.05, **faults):
        master, slave = os.openpty()
        peer = PeerDevice(master, **faults)
        peer.start()
        link = open_link(os.ttyname(slave), 921600, timeout=0.01)
        board = Board(link, timeout_s=timeout_s, window=window, resend_after_s=resend_after_s, name="peer")
        made.append((board, peer, master, slave))
        return board, peer

    yield make
    for board, peer, master, slave in made:
        board.close()
        peer.stop.set()
        peer.join(timeout=2)
        os.close(slave)
        os.close(master)


def test_hello(rig):
    board, _ = rig()
    hello = board.hello()
    assert (hello.proto_version, hello.chip, hello.kernel_mode, hello.timing_source) == (1, "esp32s3", "esp-nn",
                                                                                        "device_cycles")
    assert hello.model_state == 0 and board.last_hello is hello


def test_v1_board_keeps_working_and_is_recorded_as_v1(rig):
    # The peer answers the v1 HELLO_ACK layout whatever the host offers: a v1 board.
    board, peer = rig()
    hello = board.hello()
    assert (hello.protocol, hello.proto_minor, hello.rx_buffer) == ("hil/1", 0, 0)
    info, uploaded = board.ensure_model(b"m" * 300)
    assert uploaded and info.model_size == 300
    got, _stats, _ = _stream(board, 20)
    assert sorted(got) == list(range(20))


def test_hello_through_boot_log_noise(rig):
    board, peer = rig(chatty=True)
    assert board.hello().fw_version == "0.1.0"
    assert board.decoder.garbage_bytes == len(BOOT_TEXT) and board.decoder.frames_ok == 1


def test_upload_then_skip_when_same_sha(rig):
    board, peer = rig()
    model = os.urandom(10_000)
    progress = []
    info, uploaded = board.ensure_model(model, on_progress=lambda done, total: progress.append((done, total)))
    assert uploaded and bytes(peer.store) == model
    assert (info.input_bytes, info.output_bytes, info.model_size) == (INPUT_BYTES, OUTPUT_BYTES, len(model))
    assert info.sha256 == hashlib.sha256(model).hexdigest()
    assert progress[-1] == (len(model), len(model)) and len(progress) == 3  # 4092-byte chunks
    assert peer.chunk_offsets == [0, 4092, 8184]

    again, uploaded = board.ensure_model(model)
    assert not uploaded and peer.begins == 1
    assert again.sha256 == info.sha256 and again.model_size == len(model) and again.input_bytes is None

    _, uploaded = board.ensure_model(model, force=True)
    assert uploaded and peer.begins == 2
    _, uploaded = board.ensure_model(model[::-1])
    assert uploaded and peer.begins == 3 and bytes(peer.store) == model[::-1]


def test_upload_resumes_after_a_dropped_chunk_ack(rig):
    board, peer = rig(drop_chunk_ack_at=2 * 4092)
    model = os.urandom(20_000)
    info, uploaded = board.ensure_model(model)
    assert uploaded and bytes(peer.store) == model
    # The chunk at 8184 was stored but its ack lost: it was sent again, not stored twice, and the upload
    # went on from the device's next_offset.
    assert peer.chunk_offsets.count(8184) == 2
    assert peer.chunk_offsets == sorted(peer.chunk_offsets)
    assert board.resends >= 1 and info.model_size == len(model)


def test_model_too_large_is_board_error_with_sizes(rig):
    board, _ = rig()
    with pytest.raises(BoardError) as info:
        board.ensure_model(bytes(70_000))
    err = info.value
    assert err.code == "HIL402" and err.device_code == DeviceErrorCode.TOO_LARGE
    assert "exceeds the store" in err.message  # the device's own words
    assert "model is 70000 bytes, the board's model store holds 65536" in err.hint
    assert "\n" not in str(err)


def _stream(board, n, **kwargs):
    got: dict[int, list[Inference]] = {}
    consumed = []

    def inputs():
        for i in range(n):
            consumed.append(i)
            yield beat_input(i)

    def on_result(index, inference):
        got.setdefault(index, []).append(inference)
        # Lazy: never more than a window ahead of what has been answered.
        assert len(consumed) <= index + board.span + 1

    stats = board.infer_stream(inputs(), total=n, on_result=on_result, **kwargs)
    return got, stats, consumed


def test_stream_clean(rig):
    board, peer = rig(resend_after_s=0.5)  # generous, so a loaded CI machine cannot cause a resend
    board.ensure_model(b"model")
    got, stats, _ = _stream(board, 300)
    assert sorted(got) == list(range(300))
    assert all(len(v) == 1 and v[0].output == expected_output(beat_input(i)) for i, v in got.items())
    assert (stats.sent, stats.resent, stats.naks, stats.duplicates) == (300, 0, 0, 0)
    assert peer.infers == 300 and stats.wall_s > 0


def test_stream_500_beats_with_drops_corruption_and_duplicates(rig):
    board, peer = rig(drop_infer={5, 77, 78, 200, 333, 499},
                      corrupt_rx_every=3001,
                      corrupt_result={10, 150, 151, 420},
                      duplicate_result={3, 40, 41, 250, 480})
    board.ensure_model(b"model")
    got, stats, consumed = _stream(board, 500)
    assert sorted(got) == list(range(500)), "every beat index exactly once"
    for index, results in got.items():
        assert len(results) == 1
        assert results[0].output == expected_output(beat_input(index))
    assert len(consumed) == 500
    assert stats.sent == 500
    assert stats.resent > 0 and stats.naks > 0 and stats.duplicates > 0
    assert stats.bad_frames >= 4  # the damaged RESULTs
    assert peer.naks == stats.naks


def test_stream_seq_wraps_around(rig):
    board, _ = rig()
    board.ensure_model(b"model")
    board._seq = 0xFFFF - 20  # as after a long session
    got, _, _ = _stream(board, 60)
    assert sorted(got) == list(range(60))
    assert {r[0].seq for r in got.values()} >= {0xFFFF, 0, 1}


def test_silent_board_mid_stream_is_board_timeout_with_progress(rig):
    board, _ = rig(silent_after=120, timeout_s=0.6)
    board.ensure_model(b"model")
    start = time.monotonic()
    with pytest.raises(BoardTimeout) as info:
        _stream(board, 500)
    err = info.value
    assert err.verified == 120 and err.total == 500
    assert err.stopped_at.startswith("beat 120 (seq ")
    assert "120 of 500 beats verified" in str(err) and "beat 120" in str(err)
    assert err.code == "HIL312" and "\n" not in str(err)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("delta", [-1, 1])
def test_result_one_byte_short_or_long_is_a_length_error(rig, delta):
    # Bug 2: not HIL501 with a self-contradicting line, but the length error that it is (§6.4).
    board, _ = rig(result_len_delta=delta)
    board.ensure_model(b"model")
    with pytest.raises(ProtocolError) as info:
        _stream(board, 5)
    err = info.value
    assert err.code == "HIL307"
    assert f"with {OUTPUT_BYTES + delta} output bytes; the model's output tensor has {OUTPUT_BYTES}" in err.message
    assert "beat 0" in err.message and "\n" not in str(err)


def test_stray_results_are_counted_and_fail_past_the_limit(rig):
    # Bug 3: a RESULT whose seq was never sent is neither a duplicate nor silently absorbed (§11.2).
    board, _ = rig(stray_every=50)
    board.ensure_model(b"model")
    got, stats, _ = _stream(board, 400)
    assert sorted(got) == list(range(400))
    assert (stats.strays, stats.duplicates) == (8, 0) and board.strays == 8
    board2, _ = rig(stray_every=1)
    board2.ensure_model(b"model")
    with pytest.raises(ProtocolError) as info:
        _stream(board2, 100)
    assert info.value.code == "HIL308" and "seqs we never sent" in info.value.message
    assert "RESULT seq" in info.value.message


def test_control_replies_with_wrong_seq_fail_fast_not_after_the_timeout(rig):
    board, _ = rig(wrong_seq=True, timeout_s=5.0)
    start = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        board.hello()
    assert info.value.code == "HIL308"
    assert "HELLO_ACK seq 1000" in info.value.message and "§11.2" in info.value.message
    assert time.monotonic() - start < 1.5  # three strays, not the 5 s budget
    assert board.strays == 3


def test_stats_given_to_a_stream_keep_the_real_counters_when_it_fails(rig):
    # Bug 4: a run that stopped part-way reports what the link really did, not zeros.
    board, _ = rig(silent_after=30, timeout_s=0.5)
    board.ensure_model(b"model")
    stats = StreamStats()
    with pytest.raises(BoardTimeout):
        board.infer_stream((beat_input(i) for i in range(100)), total=100, on_result=lambda i, r: None,
                           stats=stats)
    assert stats.sent >= 30 and stats.resent > 0 and stats.wall_s > 0


def test_garbage_only_is_wrong_baud_or_other_firmware(rig):
    board, _ = rig(garbage_only=True, timeout_s=0.5)
    with pytest.raises(ProtocolError) as info:
        board.hello()
    err = info.value
    assert err.code == "HIL301"
    assert "but no HIL frame" in err.message and board.link.url in err.message
    assert "--baud 115200/921600" in err.hint and "other firmware" in err.hint


def test_no_answer_at_all_is_hil311(rig):
    board, peer = rig(timeout_s=0.4)
    peer.stop.set()
    peer.join()
    with pytest.raises(BoardTimeout) as info:
        board.hello()
    assert info.value.code == "HIL311"
    assert f"no answer from {board.link.url} within" in str(info.value)
    assert "press reset" in info.value.hint


def test_protocol_version_mismatch(rig):
    board, _ = rig(proto_version=2)
    with pytest.raises(ProtocolError) as info:
        board.hello()
    assert info.value.code == "HIL302"
    assert "version 2" in str(info.value) and "speaks 1" in str(info.value)


def test_error_reply_to_infer_is_board_error_with_device_message(rig):
    board, _ = rig()
    board.ensure_model(b"model")
    with pytest.raises(BoardError) as info:
        board.infer_stream([beat_input(0), bytes(INPUT_BYTES + 3)], on_result=lambda i, r: None)
    err = info.value
    assert err.code == "HIL406" and err.device_code == DeviceErrorCode.BAD_INPUT_SIZE
    assert "at beat 1" in err.message and "input is 27 bytes, the model takes 24" in err.message


def test_infer_without_model_is_bad_state(rig):
    board, _ = rig()
    board.hello()
    with pytest.raises(BoardError) as info:
        board.infer_stream(iter([beat_input(0)]), on_result=lambda i, r: None)
    assert info.value.code == "HIL401" and "no model loaded" in info.value.message


def test_reset(rig):
    board, _ = rig()
    board.hello()
    board.reset()
    assert board.last_hello is None
    assert board.hello().chip == "esp32s3"


def test_every_request_type_has_its_replies_known_for_telling_late_answers_from_strays():
    from harness.boards.board import _REPLIES

    requests = {t for t in MsgType if t < 0x80}
    assert set(_REPLIES) == requests  # a new request type must say what answers it (docs/protocol.md §11.2)
