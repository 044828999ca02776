"""The INFER stream state machine (harness/link/stream.py), one transition at a time.

A real Board on a link that only records what is written (nothing is ever read), so every event is fed by
hand with explicit clock values relative to the stream's start: no threads, no sleeping.
"""

from __future__ import annotations

import time

import pytest

from harness.boards.board import Board
from harness.errors import BoardError, BoardTimeout, ProtocolError
from harness.link.protocol import (
    DeviceError,
    DeviceErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Inference,
    MsgType,
    NAK_SEQ,
    nak,
)
from harness.link.stream import STRAY_LIMIT, Action, InferStream, RECOVER_ASK, RECOVER_RESTARTED, StreamStats

OUT = 3


class RecordingLink:
    url = "fake://link"
    baud = 0

    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def read(self, _n: int) -> bytes:
        return b""

    def sent_seqs(self) -> list[int]:
        frames = FrameDecoder().feed(b"".join(self.writes))
        return [f.seq for f in frames]


def make(n: int = 10, *, window: int = 4, seq0: int = 100, rx_buffer: int | None = None, output_bytes=OUT,
         model: bytes | None = None):
    board = Board(RecordingLink(), timeout_s=1.0, window=window, resend_after_s=0.1, name="fake")
    board._seq = seq0
    board._model_data = model
    if rx_buffer is not None:
        board.last_hello = Hello(1, "reference", "device_cycles", 1, 240, 4096, 1, 1, 0, "00" * 32, 0, "", "x", "",
                                 proto_minor=1, rx_buffer=rx_buffer, reset_ms=0)
    drawn: list[int] = []
    got: list[tuple[int, Inference]] = []

    def inputs():
        for i in range(n):
            drawn.append(i)
            yield bytes([i]) * 8

    stream = InferStream(board, inputs(), total=n, on_result=lambda i, r: got.append((i, r)),
                         stats=StreamStats(), output_bytes=output_bytes, now=time.monotonic())
    return board, stream, drawn, got


def result(seq: int, *, flags: int = 0, out: bytes = b"\x01\x02\x03") -> Frame:
    return Frame(MsgType.RESULT, seq, Inference(seq, flags, 10, 20, out).pack())


def error(seq: int, code: int) -> Frame:
    return Frame(MsgType.ERROR, seq, DeviceError(code, MsgType.INFER, "no").pack())


def test_fill_keeps_window_requests_in_flight_with_consecutive_seqs_drawn_lazily():
    board, s, drawn, _ = make(window=4)
    T0 = s.started
    batch = s.fill(T0)
    assert len(batch) == 4 and drawn == [0, 1, 2, 3] and s.stats.sent == 4
    assert list(s.outstanding) == [100, 101, 102, 103]
    assert s.fill(T0) == []  # full: nothing more is drawn


def test_fill_respects_the_devices_receive_buffer():
    # §6.6: a v1.1 board that holds two frames gets two, the third waits (drawn, held) for an answer.
    frame_bytes = len(make()[1].fill(time.monotonic())[0])
    board, s, drawn, _ = make(window=8, rx_buffer=2 * frame_bytes)
    T0 = s.started
    assert len(s.fill(T0)) == 2 and drawn == [0, 1, 2] and s.held is not None
    s.on_frame(result(100), T0 + 0.01)
    assert len(s.fill(T0 + 0.01)) == 1 and list(s.outstanding) == [101, 102]


def test_fill_stays_within_span_of_the_oldest_unanswered_beat():
    board, s, drawn, _ = make(n=100, window=4)
    T0 = s.started
    board.span = 6
    s.fill(T0)
    for seq in (101, 102, 103, 104, 105):  # beat 0 (seq 100) stays unanswered
        s.on_frame(result(seq), T0)
        s.fill(T0)
    assert max(p.index for p in s.outstanding.values()) - s.oldest.index < 6


def test_result_of_an_outstanding_seq_is_delivered_once_with_its_index():
    _, s, _, got = make()
    T0 = s.started
    s.fill(T0)
    assert s.on_frame(result(102), T0 + 0.01) is None
    assert [i for i, _ in got] == [2] and 102 not in s.outstanding and s.delivered == 1


def test_result_overtaking_earlier_requests_resends_them_at_once():
    board, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    board.link.writes.clear()
    s.on_frame(result(102), T0 + 0.01)  # 100 and 101 were sent before 102: their answers were lost
    assert board.link.sent_seqs() == [100, 101] and s.stats.resent == 2


def test_result_of_a_retired_seq_is_a_duplicate():
    _, s, _, got = make()
    T0 = s.started
    s.fill(T0)
    s.on_frame(result(100), T0)
    s.on_frame(result(100), T0)
    assert s.stats.duplicates == 1 and len(got) == 1 and s.stats.strays == 0


def test_result_of_a_seq_never_sent_is_a_stray_and_fatal_past_the_limit():
    board, s, _, got = make()
    T0 = s.started
    s.fill(T0)
    for k in range(STRAY_LIMIT):
        s.on_frame(result(40000 + k), T0)
    assert s.stats.strays == STRAY_LIMIT and board.strays == STRAY_LIMIT and got == []
    with pytest.raises(ProtocolError) as info:
        s.on_frame(result(50000), T0)
    assert info.value.code == "HIL308" and "RESULT seq 50000" in info.value.message


def test_result_of_the_wrong_length_is_hil307_and_not_delivered():
    _, s, _, got = make()
    T0 = s.started
    s.fill(T0)
    with pytest.raises(ProtocolError) as info:
        s.on_frame(result(100, out=b"\x01\x02"), T0)
    assert info.value.code == "HIL307" and got == []


def test_nak_waits_for_a_result_to_settle_then_resends_everything_without_a_probe():
    board, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    s.on_frame(result(100), T0)
    s.on_frame(Frame(MsgType.NAK, NAK_SEQ, nak(4)), T0 + 0.001)
    assert s.stats.naks == 1 and s.nak_pending
    assert s.on_quiet(T0 + 0.002) == Action.WAIT  # a result may still show what was lost
    assert s.on_quiet(T0 + 0.05) == Action.RESEND_ALL
    board.link.writes.clear()
    s.resend_all(T0 + 0.05)
    assert board.link.sent_seqs() == [101, 102, 103] and not s.nak_pending and s.rounds == 1


def test_quiet_spell_resends_everything_with_a_restart_probe():
    board, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    s.on_frame(result(100), T0)
    assert s.on_quiet(T0 + 0.05) == Action.WAIT
    assert s.on_quiet(T0 + 0.2) == Action.RESEND_ALL
    board.link.writes.clear()
    s.resend_all(T0 + 0.2)
    assert board.link.sent_seqs() == [101, 102, 103, 100]  # seq 100 again: the probe
    assert 100 in s.probes


def test_silent_through_a_resend_round_asks_the_board():
    _, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    assert s.on_quiet(T0 + 0.2) == Action.RESEND_ALL
    s.resend_all(T0 + 0.2)
    assert s.on_quiet(T0 + 0.5) == Action.RECOVER


def test_probe_answered_without_the_repeat_flag_means_a_restart():
    _, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    s.on_frame(result(100), T0)
    s.on_quiet(T0 + 0.2)
    s.resend_all(T0 + 0.2)
    assert s.on_frame(result(100, flags=0), T0 + 0.3) is RECOVER_RESTARTED
    s.probes[100] = s.next_index
    assert s.on_frame(result(100, flags=1), T0 + 0.3) is None  # remembered: no restart


def test_bad_state_for_a_beat_asks_the_board_when_a_model_can_be_uploaded_again():
    _, s, _, _ = make(model=b"model")
    T0 = s.started
    s.fill(T0)
    assert s.on_frame(error(101, DeviceErrorCode.BAD_STATE), T0) is RECOVER_ASK


def test_other_errors_for_a_beat_are_the_devices_refusal():
    _, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    with pytest.raises(BoardError) as info:
        s.on_frame(error(101, DeviceErrorCode.BAD_INPUT_SIZE), T0)
    assert info.value.code == "HIL406" and "at beat 1" in info.value.message


def test_no_result_for_the_timeout_is_hil312_with_progress():
    _, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    s.on_frame(result(100), T0 + 0.01)
    with pytest.raises(BoardTimeout) as info:
        s.on_quiet(T0 + 1.5)
    assert info.value.code == "HIL312" and info.value.verified == 1 and "beat 1 (seq 101)" in str(info.value)


def test_done_when_every_input_is_answered():
    _, s, _, got = make(n=3)
    T0 = s.started
    s.fill(T0)
    assert not s.done
    for seq in (100, 101, 102):
        s.on_frame(result(seq), T0)
    s.fill(T0)
    assert s.done and [i for i, _ in got] == [0, 1, 2] and s.on_quiet(T0 + 5) == Action.WAIT


def test_a_late_answer_to_a_beat_stays_a_duplicate_whatever_was_sent_since():
    board, s, _, _ = make()
    T0 = s.started
    s.fill(T0)
    s.on_frame(result(100), T0)
    board.note_sent(100, MsgType.HELLO)  # the board's memory of seq 100 now says HELLO
    s.on_frame(result(100), T0)
    assert (s.stats.duplicates, s.stats.strays) == (1, 0)


def test_recovery_uses_seqs_the_stream_will_not_reach_soon(monkeypatch):
    board, s, _, _ = make(seq0=0xFFF0)
    T0 = s.started
    s.fill(T0)
    used = []

    def fake_recover(stats, *, restarted, probe, probes, budget_s):
        used.append(board._next_seq())
        return False

    monkeypatch.setattr(board, "_recover", fake_recover)
    s.recover(RECOVER_ASK, T0)
    in_flight = set(s.outstanding)
    assert used and used[0] not in in_flight
    assert (used[0] - 0xFFF0) & 0xFFFF >= 64 + s.next_index  # past the span, across the wrap
    assert s.rounds == 1 and s.recoveries == 1
