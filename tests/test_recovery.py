"""Nothing lost, nothing silent: Board.infer_stream through a damaging link relay and across board resets.

Every test streams real inputs to the virtual board (the C core with TFLM) and checks that every beat was
delivered exactly once and is bit-exact with tflite-runtime's BUILTIN_REF interpreter, that the faults
really happened (relay and stream counters), and that a board which stops answering ends in one typed
line within the profile's timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from harness.boards.board import Board, StreamStats
from harness.errors import BoardTimeout
from harness.boards.profiles import load_profile
from harness.bench.reference import make_reference
from harness.link.relay import Relay
from harness.boards.virtual import VirtualBoard

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE = load_profile("virtual")
CONV = (FIXTURES / "conv_int8.tflite").read_bytes()


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(7).integers(-128, 128, (400, 187), dtype=np.int8)


@pytest.fixture(scope="module")
def expected(inputs) -> np.ndarray:
    return make_reference("tflite-ref", CONV).run(inputs.reshape(len(inputs), 187, 1)).reshape(len(inputs), -1)


def stream_all(board: Board, x: np.ndarray, expected: np.ndarray, on_beat=None) -> StreamStats:
    """Stream every row; assert each beat arrives exactly once and bit-exact."""
    seen = np.zeros(len(x), dtype=np.int32)
    wrong = []

    def keep(index: int, inference) -> None:
        seen[index] += 1
        if inference.output != expected[index].tobytes():
            wrong.append(index)
        if on_beat is not None:
            on_beat(index)

    stats = board.infer_stream((row.tobytes() for row in x), total=len(x), on_result=keep)
    assert (seen == 1).all(), f"lost {np.flatnonzero(seen == 0)[:10]}, twice {np.flatnonzero(seen > 1)[:10]}"
    assert wrong == [], f"undetected corruption at beats {wrong[:10]}"
    return stats


def test_stream_through_bit_errors_frame_loss_and_duplicates(tmp_path, inputs, expected):
    faults = ["ber:1e-4", "drop-frames:0.02", "dup-frames:0.02", "garbage:100"]
    with VirtualBoard(store_dir=tmp_path) as vb, Relay(vb.url, faults, seed=3) as relay:
        with Board.open(relay.url, PROFILE.baud, timeout_s=PROFILE.timeout_s, window=PROFILE.window) as board:
            _, uploaded = board.ensure_model(CONV)  # 4 KB chunks rarely pass at 1e-4: the upload adapts
            assert uploaded
            stats = stream_all(board, inputs, expected)
        link = relay.stats
    for direction in ("to-board", "to-host"):
        assert link[direction]["frames_dropped"] > 0 and link[direction]["frames_duplicated"] > 0
        assert link[direction]["bits_flipped"] > 0
    assert link["to-host"]["garbage_bursts"] > 0
    assert stats.resent > 0 and stats.duplicates > 0 and stats.bad_frames > 0
    assert stats.resets == 0 and stats.reuploads == 0


def test_board_resets_mid_stream_are_survived_and_counted(tmp_path, inputs, expected):
    with VirtualBoard(store_dir=tmp_path, faults=["reset-every:120:100"]) as vb, \
            Board.open(vb.url, PROFILE.baud, timeout_s=PROFILE.timeout_s, window=PROFILE.window) as board:
        board.ensure_model(CONV)
        stats = stream_all(board, inputs[:300], expected[:300])
    assert stats.resets == 2  # after the 120th and the 240th distinct INFER
    assert stats.reuploads == 0  # the board reloaded its model from the store
    assert stats.garbage_bytes > 0  # the ROM banner of each boot


def test_resets_and_losses_across_the_seq_wrap(tmp_path, inputs, expected):
    # docs/protocol.md §6.2/§6.3: the stream runs through 65535 → 0 while frames are lost and the board
    # restarts; no beat is lost or doubled and no answer is mistaken for a stray.
    faults = ["drop-frames:0.02", "dup-frames:0.02"]
    with VirtualBoard(store_dir=tmp_path, faults=["reset-every:150:100"]) as vb, Relay(vb.url, faults, seed=5) as relay:
        with Board.open(relay.url, PROFILE.baud, timeout_s=PROFILE.timeout_s, window=PROFILE.window) as board:
            board.ensure_model(CONV)
            board._seq = 0xFFFF - 120  # the wrap falls between the two restarts
            stats = stream_all(board, inputs[:300], expected[:300])
    assert stats.resets >= 1 and stats.resent > 0 and stats.strays == 0


def test_board_that_lost_its_model_gets_it_again(tmp_path, inputs, expected):
    def lose_store(index: int) -> None:
        if index == 50:  # as if the model partition were erased behind the harness's back
            (tmp_path / "committed.json").unlink(missing_ok=True)

    with VirtualBoard(store_dir=tmp_path, faults=["reset-every:100:50"]) as vb, \
            Board.open(vb.url, PROFILE.baud, timeout_s=PROFILE.timeout_s, window=PROFILE.window) as board:
        board.ensure_model(CONV)
        stats = stream_all(board, inputs[:160], expected[:160], on_beat=lose_store)
    assert stats.reuploads == 1 and stats.resets == 1


def test_board_that_never_answers_fails_in_one_line_within_the_timeout(tmp_path):
    with VirtualBoard(store_dir=tmp_path, faults=["never-answer"]) as vb, \
            Board.open(vb.url, PROFILE.baud, timeout_s=1.0) as board:
        t0 = time.monotonic()
        with pytest.raises(BoardTimeout) as err:
            board.hello()
        took = time.monotonic() - t0
    text = str(err.value)
    assert text.startswith("HIL311 ") and "\n" not in text and "no answer" in text
    assert 0.9 <= took <= 1.5, took


def test_stall_longer_than_the_timeout_ends_with_progress(tmp_path, inputs, expected):
    # The INFER frames of cnn-sized inputs are ~200 bytes: the link stalls for good after ~60 of them.
    with VirtualBoard(store_dir=tmp_path) as vb:
        with Board.open(vb.url, PROFILE.baud, timeout_s=PROFILE.timeout_s) as board:
            board.ensure_model(CONV)
        with Relay(vb.url, ["to-board:stall:12000:30"]) as relay, \
                Board.open(relay.url, PROFILE.baud, timeout_s=1.0, window=PROFILE.window) as board:
            delivered = []
            t0 = time.monotonic()
            with pytest.raises(BoardTimeout) as err:
                board.infer_stream((row.tobytes() for row in inputs), total=len(inputs),
                                   on_result=lambda i, inf: delivered.append((time.monotonic(), i)))
            failed_at = time.monotonic()
            assert relay.stats["to-board"]["stalls"] == 1
    assert sorted(i for _, i in delivered) == list(range(len(delivered)))
    verified = err.value.verified
    assert verified == len(delivered) and 40 < verified < 70
    assert f"{verified} of {len(inputs)} beats verified" in str(err.value)
    assert err.value.stopped_at.startswith(f"beat {verified} ")
    silence = failed_at - (delivered[-1][0] if delivered else t0)
    assert 0.9 <= silence <= 1.6, silence
