"""harness.bench.realtime: duty cycle at 60 and 350 bpm, highest sustained rate, the 350 bpm flag, labelled sources."""

from __future__ import annotations

import pytest

from harness.link import protocol
from harness.bench import realtime
from harness.report import outputs as report
from harness.boards.profiles import load_profile
from harness.bench.results import Result


def _latency(p99_us: float, source: str = "device_cycles") -> dict:
    return {"source": source, "cpu_mhz": 240, "us": {"p99": p99_us, "median": p99_us * 0.9}}


def test_wire_bytes_are_the_longest_infer_frame():
    assert realtime.infer_wire_bytes(187) == 198  # 4 header + 187 + 4 CRC = 195; +1 COBS; +2 delimiters
    no_zeros = bytes([7]) * 1296  # COBS's worst case: no zero byte to replace
    frame = protocol.encode_frame(protocol.MsgType.INFER, 0x0101, no_zeros)
    assert len(frame) <= realtime.infer_wire_bytes(1296)
    assert realtime.infer_wire_bytes(1296) - len(frame) <= 2


def test_duty_cycle_and_max_bpm_on_esp32():
    profile = load_profile("esp32")
    rt = realtime.margin(_latency(4000.0), profile, 187)
    link_s = 198 * 10 / 921600
    assert rt["source"] == "device_cycles" and rt["latency_stat"] == "p99"
    assert rt["link_s_per_beat"] == pytest.approx(link_s)
    assert rt["rates"]["60"]["duty_cycle"] == pytest.approx(0.004 + link_s)
    assert rt["rates"]["350"]["interval_s"] == pytest.approx(60 / 350)
    assert rt["rates"]["350"]["duty_cycle"] == pytest.approx((0.004 + link_s) * 350 / 60)
    assert rt["rates"]["350"]["compute_duty_cycle"] == pytest.approx(0.004 * 350 / 60)
    assert rt["max_bpm"] == pytest.approx(60 / (0.004 + link_s))
    assert rt["rates"]["350"]["keeps_up"] and rt["flag"] is None
    assert "921600 baud" in rt["link"]["model"]


def test_slow_model_is_flagged_at_350_bpm_not_at_60():
    profile = load_profile("esp32c3")
    rt = realtime.margin(_latency(180_000.0, "static_estimate"), profile, 1296)
    assert rt["rates"]["60"]["keeps_up"] and not rt["rates"]["350"]["keeps_up"]
    assert rt["max_bpm"] < 350
    assert "cannot keep up at 350 bpm on esp32c3" in rt["flag"] and "static estimate" in rt["flag"]
    assert "USB-Serial-JTAG" in rt["link"]["model"]  # the nominal baud is said to be nominal


def test_baud_override_counts():
    profile = load_profile("esp32")
    slow = realtime.margin(_latency(1000.0), profile, 187, baud=115200)
    assert slow["link"]["baud"] == 115200
    assert slow["link_s_per_beat"] == pytest.approx(198 * 10 / 115200)


def test_no_latency_no_margin():
    assert realtime.margin({}, load_profile("esp32"), 187) == {}


def test_figures_and_table_keep_the_source_and_flag():
    profile = load_profile("esp32c3")
    fast = Result(model="small", device="/dev/ttyACM0", profile="esp32c3")
    fast.realtime = realtime.margin(_latency(3000.0), profile, 187)
    slow = Result(model="big", device="virtual", profile="virtual")
    slow.realtime = realtime.margin(_latency(250_000.0, "static_estimate"), load_profile("virtual"), 1296)
    figures = slow.figures()
    assert figures["realtime_source"] == "static_estimate"
    assert "realtime_max_bpm_static_estimate" in figures and "realtime_max_bpm_device_cycles" not in figures
    assert figures["realtime_keeps_up_350bpm"] is False and figures["realtime_duty_cycle_350bpm_static_estimate"] > 1
    assert "cannot keep up" in figures["realtime_flag"]
    assert "realtime_max_bpm_device_cycles" in fast.figures() and "realtime_flag" not in fast.figures()

    lines = report.format_realtime([fast, slow])
    assert all(len(line) <= report.TABLE_WIDTH for line in lines)
    big = next(line for line in lines if line.startswith("big@virtual"))
    small = next(line for line in lines if line.startswith("small@/dev/ttyACM0"))
    assert "(est.)" in big and "⚑" in big
    assert "(est.)" not in small and "⚑" not in small
    assert any(line.startswith("⚑ big@virtual: cannot keep up") for line in lines)


def test_result_round_trips_realtime_and_noise():
    result = Result(model="m", device="virtual", profile="virtual")
    result.realtime = realtime.margin(_latency(1000.0), load_profile("virtual"), 187)
    result.noise = {"sweep": {"snr_db": [12.0], "curves": {"bw": {"points": [{"snr_db": 12.0, "macro_f1": 0.5}],
                                                                   "snr90_db": None}}}}
    again = Result.from_dict(result.to_dict())
    assert again.realtime == result.to_dict()["realtime"] and again.noise == result.noise
    assert again.figures()["noise_bw_12db_macro_f1"] == 0.5


def test_mlperf_link_counts_its_text_commands():
    # 187 bytes: "db load 187%" (12) + 6 lines of 31 bytes (66 each) + "db " + 2 hex + "%" (6) + "infer 1 0%" (10)
    assert realtime.mlperf_wire_bytes(187) == 12 + 6 * 66 + 6 + 10
    rt = realtime.margin(_latency(1000.0), load_profile("esp32"), 187, baud=115200, protocol="mlperf-tiny")
    assert rt["link"]["wire_bytes"] == realtime.mlperf_wire_bytes(187) and "MLPerf" in rt["link"]["model"]
    assert rt["link_s_per_beat"] == pytest.approx(424 * 10 / 115200)
