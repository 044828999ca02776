"""Per-op timing (OP_PROFILE) and device health (STATS), docs/protocol.md §12-13: the C core's requests, the
virtual board's answers (its own figures, labelled), the host's per-op table and health block in results.
On the virtual board per-op cycles are the cost model's estimates: the tests check that they are labelled
so and that they are the estimates, not that they are device latency.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.link import protocol
from harness.boards.board import Board
from harness.bench.costmodel import estimate
from harness.errors import BoardError
from harness.bench.model import load_registry
from harness.bench.perop import op_shapes
from harness.boards.profiles import load_profile
from harness.link.protocol import FrameDecoder, MsgType, encode_frame
from harness.link.transport import open_link
from harness.boards.virtual import VirtualBoard
from harness.boards.virtual import core as hil

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cnn():
    return load_registry(names=["cnn1d_beat"])[0]


@pytest.fixture
def board(tmp_path):
    with VirtualBoard(store_dir=tmp_path) as vb, open_link(vb.url, 921600) as link:
        yield Board(link, timeout_s=5.0)


def test_op_profile_gives_every_op_in_order_with_the_cost_models_cycles(board, cnn):
    board.ensure_model(cnn.data)
    x = np.zeros(cnn.input.shape, dtype=np.int8).tobytes()
    times = board.op_profile(x)
    ops = op_shapes(cnn.data)
    assert [op.index for op in times.ops] == [op["index"] for op in ops]
    est = estimate(cnn.data, load_profile("virtual"))
    assert [op.cycles for op in times.ops] == [c.cycles for c in est.per_op]
    assert times.invoke_cycles == est.cycles  # as RESULT's cycles: the same estimate
    assert board.hello().timing_source == "static_estimate"


def test_op_profile_and_stats_refuse_like_infer(board, cnn):
    with pytest.raises(BoardError) as err:
        board.op_profile(b"\x00" * cnn.input.nbytes)
    assert err.value.device_code == protocol.DeviceErrorCode.BAD_STATE
    board.ensure_model(cnn.data)
    with pytest.raises(BoardError) as err:
        board.op_profile(b"\x00" * (cnn.input.nbytes - 1))
    assert err.value.device_code == protocol.DeviceErrorCode.BAD_INPUT_SIZE


def test_stats_are_the_virtual_boards_own_and_say_so(board, cnn):
    empty = board.stats()
    assert empty.source == "virtual board" and empty.arena_used == 0
    assert empty.stack_high_water is None and empty.stack_size is None  # no task stack to measure
    info, _ = board.ensure_model(cnn.data)
    loaded = board.stats()
    assert loaded.arena_used == info.arena_used > 0 and loaded.arena_size == board.hello().arena_size


def test_a_core_without_the_hooks_answers_unknown_type_naming_the_request():
    out: list[bytes] = []

    def write(_ctx, data, length):
        out.append(ctypes.string_at(data, length))
        return 0

    info = {"fw_version": "t", "chip": "t", "build_hash": "0" * 16, "cpu_mhz": 1, "kernel_mode": 0,
            "timing_source": 0, "arena_size": 0, "store_capacity": 0, "rx_buffer": 0, "reset_ms": 0}
    core = hil.Core(info, {"write": write})
    core.init()
    for seq, (ftype, name) in enumerate(((MsgType.OP_PROFILE, "OP_PROFILE"), (MsgType.STATS, "STATS"))):
        out.clear()
        core.feed(encode_frame(ftype, seq, b""))
        (frame,) = FrameDecoder().feed(b"".join(out))
        err = protocol.DeviceError.parse(frame.payload)
        assert frame.type == MsgType.ERROR and err.code == protocol.DeviceErrorCode.UNKNOWN_TYPE
        assert f"({name}) is not supported" in err.message


def test_payloads_round_trip():
    times = protocol.OpTimes(123456789012, [protocol.OpTime(0, 3, 500), protocol.OpTime(1, 9, 7)])
    assert protocol.OpTimes.parse(times.pack()) == times
    health = protocol.Health("device", 2048, 12288, 200_000, 180_000, 8_000_000, 6352, 131072)
    assert protocol.Health.parse(health.pack()) == health
    assert len(health.pack()) == 32
    with pytest.raises(Exception):
        protocol.OpTimes.parse(times.pack()[:-1])  # a truncated op list is a protocol error, not garbage


def test_results_carry_the_per_op_table_and_health_labelled(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "b"), "--models", "cnn1d_beat", "--records", "232",
           "--max-beats", "40", "--per-op-beat", "7"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads((out / "results.json").read_text())["results"]
    per_op = result["per_op"]
    assert per_op["source"] == "static_estimate" and per_op["beat"] == 7
    assert "estimate" in per_op["label"] and "not measured" in per_op["label"]
    ops = per_op["ops"]
    assert [op["index"] for op in ops] == list(range(len(ops))) and len(ops) > 5
    assert abs(sum(op["share"] for op in ops) - 1.0) < 1e-9
    conv = next(op for op in ops if op["op"] == "CONV_2D")
    assert conv["shapes"]["out"] and conv["macs"] > 0 and conv["cycles"] > 0
    health = result["health"]
    assert health["source"] == "virtual board" and "not measured" in health["note"]
    assert health["arena_used_bytes"] == result["memory"]["arena_used_bytes"]
    assert health["heap_internal_free_before"] is not None and health["stack_high_water_bytes"] is None
