"""MLPerf Tiny's benchmark API: the driver (harness/boards/mlperf.py), the virtual MLPerf Tiny device
(harness/boards/virtual/mlperf_device.py), the performance rule (harness/bench/perfrule.py) and the plugin's
`--protocol mlperf-tiny`.

The accuracy test runs the same beats through both protocols and the same bench path: the AAMI figures must
be identical, and every printed output must pin down the reference's INT8 output (cnn1d_beat's output
scale is 1/256, coarser than the printed 0.001). Both sides run the same TFLM kernels and the reference is
the same interpreter, so the agreement checks the MLPerf exchange and the decimal recovery, not TFLM.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.bench import run as bench, data, perfrule
from harness.boards.board import Board
from harness.errors import BoardError, ProtocolError
from harness.boards.mlperf import MlperfBoard, MlperfInference, Printed, model_id_of
from harness.bench.model import load_registry
from harness.boards.profiles import load_profile
from harness.bench.reference import make_reference
from harness.link.transport import open_link
from harness.boards.virtual import VirtualBoard
from harness.boards.virtual.mlperf_device import _atoi

from test_bad_input import assert_one_line_failure, run_bench

PROFILE = load_profile("virtual")
BEATS = 300


@pytest.fixture(scope="module")
def model():
    return load_registry(names=["cnn1d_beat"])[0]


@pytest.fixture(scope="module")
def mlperf_board(model):
    with VirtualBoard("virtual", api="mlperf-tiny", model=model.path) as vb:
        board = MlperfBoard(open_link(vb.url, PROFILE.baud), timeout_s=5, name="virtual-mlperf")
        try:
            yield board
        finally:
            board.close()


@pytest.fixture(scope="module")
def hil_board():
    with VirtualBoard("virtual") as vb:
        board = Board(open_link(vb.url, PROFILE.baud), timeout_s=5, window=8)
        try:
            yield board
        finally:
            board.close()


# -- the printed decimals ----------------------------------------------------------------------------------
def test_printed_decimals_pin_int8_when_finer_than_the_scale():
    printed = Printed.parse("0.648,0.062,0.000,0.996")
    est, lo, hi = printed.int8_bounds(1 / 256, -128)
    assert printed.decimals == [3, 3, 3, 3]
    assert list(lo) == list(hi) == list(est)
    assert list(est) == [round(0.648 * 256) - 128, round(0.062 * 256) - 128, -128, 127]
    assert Printed.parse("0.9961").decimals == [4]


def test_printed_decimals_coarser_than_the_scale_leave_an_interval():
    # scale 0.0002: one printed step of 0.001 spans five INT8 values; q = 10 prints 0.002.
    printed = Printed.parse("0.002")
    _, lo, hi = printed.int8_bounds(0.0002, 0)
    assert (int(lo[0]), int(hi[0])) == (8, 12)


def test_a_printed_value_no_int8_gives_is_an_empty_interval():
    _, lo, hi = Printed.parse("0.0025").int8_bounds(1 / 256, -128)  # between two steps of 1/256
    assert lo[0] > hi[0]


def test_non_numbers_are_not_results():
    for text in ("0.1,abc", "nan,0.5", "inf"):
        with pytest.raises(ValueError):
            Printed.parse(text)


def test_a_profile_can_say_its_board_speaks_mlperf_tiny(tmp_path):
    from harness.errors import ProfileError
    from harness.boards.profiles import PROFILES_DIR

    base = (PROFILES_DIR / "virtual.yaml").read_text()
    assert PROFILE.protocol == "hil"
    (tmp_path / "m.yaml").write_text(base + "protocol: mlperf-tiny\n")
    assert load_profile(tmp_path / "m.yaml").protocol == "mlperf-tiny"
    (tmp_path / "bad.yaml").write_text(base + "protocol: modbus\n")
    with pytest.raises(ProfileError) as err:
        load_profile(tmp_path / "bad.yaml")
    assert "protocol" in str(err.value) and "mlperf-tiny" in str(err.value)


def test_atoi_like_c():
    assert [_atoi(t) for t in ("12", "7x", "x", "-3", "")] == [12, 7, 0, -3, 0]


def test_bench_counts_a_value_outside_the_printed_interval_as_a_mismatch(model):
    tally = bench._Tally()
    beat = data.Beat(record="100", index=0, sample=0, symbol="N", aami="N")
    expected = np.array([10, -5, 0, 0, 0], dtype=np.int8)
    lo = np.array([10, -5, 0, 0, 1], dtype=np.int16)  # the device printed a value one step above the reference
    inference = MlperfInference(0, lo.astype(np.int8).tobytes(), (lo, lo.copy()), True, [], 100)
    bench._compare(tally, model, beat, 0, inference, expected, None, np.zeros(187, np.int8))
    assert tally.mismatching == 1 and tally.max_abs_diff == 1 and tally.resolved == 1
    assert tally.argmax_verified == 1  # the arg-max still agrees


# -- the virtual MLPerf Tiny device ------------------------------------------------------------------------
def test_identity_and_model_check(mlperf_board, model):
    hello = mlperf_board.hello()
    assert (hello.device, hello.chip, hello.model_id) == ("dut", "virtual", model_id_of(model.data))
    assert hello.timing_source == "static_estimate"
    check, flashed = mlperf_board.ensure_model(model.data)
    assert not flashed and check.input_bytes == 187 and check.output_bytes == 5


def test_another_model_id_is_named(mlperf_board, model):
    board = MlperfBoard(mlperf_board.link, timeout_s=5, name="virtual-mlperf", expected_model_id="ic01")
    with pytest.raises(ProtocolError) as err:
        board.ensure_model(model.data)
    assert err.value.code == "HIL332" and "ic01" in str(err.value) and "--mlperf-model-id" in str(err.value)


def test_device_errors_are_typed(mlperf_board, model):
    mlperf_board.ensure_model(model.data)
    with pytest.raises(BoardError) as err:
        mlperf_board.command("frobnicate")
    assert err.value.code == "HIL335" and "Unknown command" in str(err.value)
    with pytest.raises(BoardError):
        mlperf_board.command("infer 0 0")
    assert mlperf_board.command("name")  # still in step after the refusals


def test_accuracy_mode_matches_our_protocol_on_the_same_beats(mlperf_board, hil_board, model):
    spec = bench.BenchSpec(mitdb_dir=data.BUNDLED_DIR, records=data.resolve_records("bundled"), max_beats=BEATS)
    results = []
    for board in (mlperf_board, hil_board):
        ref = make_reference("tflite-ref", model.data, arena_size=1 << 20)
        results.append(bench.run(board, model, PROFILE, "virtual", spec, ref))
    mlperf, ours = results
    assert mlperf.status == "pass", mlperf.failure
    assert mlperf.provenance["protocol"] == "mlperf-tiny"
    assert mlperf.beats["verified"] == ours.beats["verified"] == BEATS
    verification = mlperf.bit_exact["verification"]
    assert verification["int8_recovered_beats"] == verification["consistent_beats"] == BEATS
    assert mlperf.bit_exact["exact"] is True
    assert mlperf.accuracy == ours.accuracy  # same AAMI figures through the same bench path
    # Per-beat laps of the virtual device's clock: the cost model's estimate, as our board's cycles are.
    assert mlperf.latency["source"] == ours.latency["source"] == "static_estimate"
    assert abs(mlperf.latency["us"]["median"] - ours.latency["us"]["median"]) <= 1.0


def test_a_wrong_printed_value_is_a_mismatch_verdict(model):
    # The first `infer` after boot is the connect-time self-test's in the plugin; here the stream's beat 3.
    spec = bench.BenchSpec(mitdb_dir=data.BUNDLED_DIR, records=["213"], max_beats=20)
    with VirtualBoard("virtual", api="mlperf-tiny", model=model.path, faults=["mlperf-skew:3"]) as vb:
        with MlperfBoard(open_link(vb.url, PROFILE.baud), timeout_s=5, name="virtual-mlperf") as board:
            result = bench.run(board, model, PROFILE, "virtual", spec, make_reference("tflite-ref", model.data))
    assert result.status == "fail" and result.failure["code"] == "HIL501"
    assert result.bit_exact["mismatching_beats"] == 1 and result.bit_exact["first_mismatch"]["beat"] == 3
    assert result.bit_exact["max_abs_diff"] == 1
    assert "no per-layer dump" in result.bit_exact["localisation"]["summary"]  # said, not crashed


def test_performance_mode_follows_the_rule_with_a_short_window(mlperf_board, hil_board, model):
    spec = bench.BenchSpec(mitdb_dir=data.BUNDLED_DIR, records=["213"])
    mlperf_board.ensure_model(model.data)
    hil_board.ensure_model(model.data)
    expected_us = None
    for board in (mlperf_board, hil_board):
        perf = perfrule.measure(board, model, spec, min_window_s=0.2)
        assert perf["rule"] == perfrule.RULE and len(perf["windows"]) == 5 and perf["warmup"] == 10
        assert all(w["elapsed_s"] >= 0.2 for w in perf["windows"])
        assert len({w["input"] for w in perf["windows"]}) == 5
        assert perf["mlperf_compliant"] is False  # windows shorter than MLPerf's 10 s
        assert perf["source"] == "static_estimate"
        if expected_us is None:
            expected_us = perf["median_latency_us"]
        assert perf["median_latency_us"] == pytest.approx(expected_us, abs=1.0)  # both protocols agree


# -- the plugin: a device answering e-[...] or garbage ends the run with one line -------------------------
# (e-[...] to `name` is the same path as to `db`, checked without a subprocess in test_device_errors_are_typed.)
@pytest.mark.parametrize("fault, code", [("mlperf-garbage", "HIL330"), ("mlperf-error:db", "HIL335")])
def test_refusal_or_garbage_ends_the_run_with_one_line(tmp_path, fault, code):
    proc = run_bench(tmp_path, "--device", "virtual", "--protocol", "mlperf-tiny", "--virtual-fault", fault)
    assert proc.returncode == 3
    assert_one_line_failure(proc, tmp_path, code)


def test_protocol_once_or_once_per_device(tmp_path):
    proc = run_bench(tmp_path, "--device", "virtual", "--protocol", "hil", "--protocol", "mlperf-tiny")
    assert proc.returncode != 0
    assert_one_line_failure(proc, tmp_path, "HIL108", "--protocol")


def test_virtual_device_needs_its_model():
    proc = subprocess.run([sys.executable, "-m", "harness.boards.virtual", "--api", "mlperf-tiny"],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2 and "HIL104" in proc.stderr and "--model" in proc.stderr


def test_plugin_runs_accuracy_then_performance_mode_with_a_short_window(tmp_path):
    import json

    proc = run_bench(tmp_path, "--device", "virtual", "--protocol", "mlperf-tiny", "--max-beats", str(BEATS),
                     "--latency-rule", "mlperf-tiny", "--mlperf-window-s", "0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert result["provenance"]["protocol"] == "mlperf-tiny"
    assert result["beats"]["verified"] == BEATS
    assert result["bit_exact"]["verification"]["int8_recovered_beats"] == BEATS
    assert result["latency"]["rule"] == "per-beat"
    perf = result["latency"]["mlperf_tiny"]
    assert (perf["rule"], perf["protocol"], perf["min_window_s"]) == (perfrule.RULE, "mlperf-tiny", 0.2)
    assert len(perf["windows"]) == 5 and perf["mlperf_compliant"] is False
    assert "MLPerf Tiny performance rule (mlperf-tiny)" in proc.stdout and "not MLPerf-compliant" in proc.stdout
    # Gated against the profile's baseline; the arena, which MLPerf's API cannot report, is not compared.
    arena = [g for g in result["gate"] if g["metric"] == "arena_used_bytes"]
    assert arena and arena[0]["outcome"] == "not_compared" and "MLPerf" in arena[0]["reason"]
    # The real-time margin counts MLPerf's text commands on the link, not our INFER frame.
    from harness.bench import realtime

    assert result["realtime"]["link"]["wire_bytes"] == realtime.mlperf_wire_bytes(187)


def test_table_marks_a_device_timer_latency():
    from harness.report import outputs as report
    from harness.bench.results import Result

    result = Result(model="m", device="d", profile="virtual",
                    latency={"source": "device_timer", "us": {"median": 4142.0, "p99": 4143.0}})
    row = next(line for line in report.format_table([result]).splitlines() if line.startswith("m "))
    assert "4,142 µs (timer)" in row and "(est.)" not in row
