"""Result round trip, figures, results.json / JUnit writers (atomic, merging) and the terminal table."""

import json
import os

import numpy as np
import pytest
from junitparser import Error, Failure, JUnitXml, Properties, TestCase, TestSuite

from harness.bench import metrics
from harness.report import outputs as report
from harness.errors import BoardTimeout, MismatchError, ReportError
from harness.bench.results import Result


def make_result(model="cnn1d_beat", device="virtual", profile="virtual", *, source="device_cycles",
                p50_us=812.0, exact=True, mismatching=0, **overrides) -> Result:
    us = metrics.latency([p50_us - 10, p50_us, p50_us + 10], warmup=0)
    result = Result(
        model=model, device=device, profile=profile, task="classifier",
        beats={"total": 6, "verified": 6, "skipped_edge": 1},
        bit_exact={"exact": exact, "mismatching_beats": mismatching, "max_abs_diff": 0 if exact else 3,
                   "first_mismatch": None, "reference": "tflite-ref",
                   "cross_check": {"reference": "tflm-host", "mismatching_beats": 0, "max_abs_diff": 0,
                                   "verdict": "device == TFLM host; TFLM host == TFLite REF"}},
        accuracy=metrics.classification(list("NNNSSV"), list("NNSSNV"), ["N", "S", "V", "F"]),
        latency={"source": source, "cpu_mhz": 240, "us": us,
                 "cycles": metrics.latency([v * 240 for v in (p50_us - 10, p50_us, p50_us + 10)], 0)},
        host_time={"source": "host_wall", "invoke_us": metrics.latency([50.0, 60.0, 70.0], 0)},
        throughput={"source": "host_wall", "beats_per_s": 1500.0, "wall_s": 0.004},
        memory={"arena_used_bytes": 20480, "arena_size_bytes": 131072, "model_bytes": 45000},
        link={"sent": 6, "resent": 0, "naks": 0, "duplicates": 0, "garbage_bytes": 12, "bad_frames": 0},
        provenance={"model_sha256": "ab" * 32, "model_path": "models/cnn1d_beat.tflite",
                    "firmware": {"version": "1.0", "build_hash": "deadbeef", "chip": "virtual", "cpu_mhz": 240,
                                 "kernel_mode": "reference"},
                    "reference": {"name": "tflite-ref", "version": "2.14.0", "kernels": "BUILTIN_REF", "note": ""},
                    "cross_reference": {"name": "tflm-host", "version": "0.dev"},
                    "records": ["100", "101"], "data_dir": "/data/mitdb", "harness_version": "0.1.0",
                    "python": "3.11.7", "started_at": "2025-01-01T00:00:00+00:00",
                    "finished_at": "2025-01-01T00:00:05+00:00", "profile_path": "device_profiles/virtual.yaml"},
    )
    for key, value in overrides.items():
        setattr(result, key, value)
    return result


# -- Result ----------------------------------------------------------------------------------------------
def test_result_json_round_trip():
    original = make_result()
    original.regressions = ["x@y: accuracy 0.9 → 0.8 (limit ≥ 0.895)"]
    text = json.dumps(original.to_dict(), allow_nan=False)
    again = Result.from_dict(json.loads(text))
    assert again == original
    assert again.to_dict() == original.to_dict()


def test_to_dict_turns_numpy_and_nan_into_json_values():
    result = make_result()
    result.memory["arena_used_bytes"] = np.int64(20480)
    result.throughput["beats_per_s"] = float("nan")
    result.bit_exact["exact"] = np.bool_(True)
    plain = result.to_dict()
    assert plain["memory"]["arena_used_bytes"] == 20480 and type(plain["memory"]["arena_used_bytes"]) is int
    assert plain["throughput"]["beats_per_s"] is None
    assert plain["bit_exact"]["exact"] is True
    json.dumps(plain, allow_nan=False)


def test_from_dict_rejects_bad_input_with_report_error():
    with pytest.raises(ReportError, match="HIL602.*'device'"):
        Result.from_dict({"model": "m", "profile": "p"})
    with pytest.raises(ReportError, match="status"):
        Result.from_dict({"model": "m", "device": "d", "profile": "p", "status": "maybe"})


def test_set_failure_maps_kind_to_status():
    result = make_result()
    result.set_failure(MismatchError("3 beats differ", "see the first mismatch"))
    assert result.status == "fail"
    assert result.failure == {"kind": "mismatch", "code": "HIL500",
                              "message": "HIL500 3 beats differ -- fix: see the first mismatch"}
    result.set_failure(BoardTimeout("no answer", "check the cable", verified=3, total=6), partial=True)
    assert result.status == "error" and result.partial and result.failure["kind"] == "timeout"


def test_figures_names_carry_their_source():
    figs = make_result().figures()
    assert figs["latency_p50_us_device_cycles"] == 812.0
    assert figs["latency_p50_cycles_device_cycles"] == 812.0 * 240
    assert figs["host_invoke_p50_us_host_wall"] == 60.0
    assert figs["beats_per_s_host_wall"] == 1500.0
    assert figs["accuracy"] == pytest.approx(4 / 6)
    assert figs["se_S"] == 0.5 and figs["ppv_S"] == 0.5
    assert figs["arena_used_bytes"] == 20480
    assert figs["bit_exact"] is True and figs["mismatching_beats"] == 0
    assert figs["model_sha256"] == "ab" * 32
    assert figs["firmware_build_hash"] == "deadbeef"
    assert figs["reference"] == "tflite-ref" and figs["cross_reference"] == "tflm-host"
    assert figs["records"] == "100,101"
    assert not any("static_estimate" in name for name in figs)
    assert "se_F" not in figs  # undefined values are left out, not written as "None"
    assert all(isinstance(v, (str, int, float)) for v in figs.values())

    est = make_result(source="static_estimate").figures()
    assert est["latency_p50_us_static_estimate"] == 812.0
    assert "latency_p50_us_device_cycles" not in est


def test_figures_of_an_autoencoder():
    result = make_result(task="autoencoder")
    result.accuracy = {"anomaly": metrics.anomaly([0.1, 0.5, 0.9], [True, True, False], 0.4), "mean_error": 0.5}
    figs = result.figures()
    assert figs["accuracy"] == pytest.approx(2 / 3)
    assert figs["anomaly_se"] == 1.0 and figs["anomaly_sp"] == 0.5 and figs["mean_error"] == 0.5
    assert "macro_f1" not in figs


# -- results.json ----------------------------------------------------------------------------------------
def test_results_json_round_trip(tmp_path):
    path = tmp_path / "out" / "results.json"  # missing directories are created
    results = [make_result(), make_result(device="/dev/ttyUSB0", profile="esp32s3")]
    report.write_results_json(path, results, session={"profiles": ["virtual", "esp32s3"]})
    document = json.loads(path.read_text())
    assert document["schema"] == report.RESULTS_SCHEMA
    assert document["harness_version"] == "0.1.0"
    session, again = report.read_results_json(path)
    assert session == {"profiles": ["virtual", "esp32s3"]}
    assert again == results
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_failed_serialisation_leaves_old_file_intact_and_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    report.write_results_json(path, [make_result()], session={"run": 1})
    before = path.read_bytes()

    bad = make_result(model="second")
    bad.provenance["note"] = object()  # not JSON: json.dump fails after the first result was written
    with pytest.raises(TypeError):
        report.write_results_json(path, [make_result(), bad], session={"run": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["results.json"]


def test_atomic_write_removes_partial_temp_file(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("old")
    seen = []

    def write(fh):
        fh.write(b"half a rep")
        fh.flush()
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "report.txt")
        raise RuntimeError("crash midway")

    with pytest.raises(RuntimeError):
        report.atomic_write(path, write)
    assert len(seen) == 1 and seen[0].endswith(".tmp")  # the partial data went to a temp file ...
    assert path.read_text() == "old"  # ... never to the target
    assert sorted(os.listdir(tmp_path)) == ["report.txt"]


def test_output_under_a_file_raises_report_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(ReportError) as info:
        report.write_results_json(blocker / "results.json", [make_result()], session={})
    assert info.value.code == "HIL601"
    line = str(info.value)
    assert "\n" not in line and "fix:" in line and "results.json" in line


def test_unwritable_directory_raises_report_error(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report.tempfile, "mkstemp", denied)
    with pytest.raises(ReportError, match="HIL601 .*Permission denied.* -- fix: .*writable"):
        report.write_junit(tmp_path / "junit.xml", [make_result()])


# -- JUnit -----------------------------------------------------------------------------------------------
def _cases(path):
    xml = JUnitXml.fromfile(str(path))
    return {(case.classname, case.name): (suite.name, case) for suite in xml for case in suite}


def _properties(case):
    return {prop.name: prop.value for prop in case.child(Properties)}


def test_junit_written_and_read_back(tmp_path):
    path = tmp_path / "junit.xml"
    passed = make_result()
    failed = make_result(device="/dev/ttyUSB0", profile="esp32s3", exact=False, mismatching=3)
    failed.set_failure(MismatchError("3 of 6 beats differ from tflite-ref", "look at beat 2 of record 100"))
    errored = make_result(model="ae_beat", partial=True)
    errored.set_failure(BoardTimeout("board stopped answering after beat 3", "check the cable"))
    report.write_junit(path, [passed, failed, errored])

    xml = JUnitXml.fromfile(str(path))
    suite = next(iter(xml))
    assert suite.name == "hil-bench"
    assert (suite.tests, suite.failures, suite.errors) == (3, 1, 1)
    cases = _cases(path)
    _, ok = cases[("hil.virtual", "cnn1d_beat@virtual")]
    assert ok.is_passed
    props = _properties(ok)
    assert props["latency_p50_us_device_cycles"] == "812.0"
    assert props["bit_exact"] == "true"
    assert props["model_sha256"] == "ab" * 32
    assert set(props) == set(passed.figures())

    _, bad = cases[("hil.esp32s3", "cnn1d_beat@/dev/ttyUSB0")]
    (failure,) = bad.result
    assert isinstance(failure, Failure)
    assert failure.message == "HIL500 3 of 6 beats differ from tflite-ref -- fix: look at beat 2 of record 100"
    assert _properties(bad)["mismatching_beats"] == "3"

    _, err = cases[("hil.virtual", "ae_beat@virtual")]
    assert isinstance(err.result[0], Error) and err.result[0].message.startswith("HIL310 ")


def test_junit_merge_replaces_same_name_and_keeps_others(tmp_path):
    path = tmp_path / "junit.xml"
    # A file another tool already wrote into, with its own suite.
    other = JUnitXml()
    pytest_suite = TestSuite("pytest")
    pytest_suite.add_testcase(TestCase("test_protocol", "tests.test_protocol"))
    other.add_testsuite(pytest_suite)
    other.write(str(path))

    report.write_junit(path, [make_result(model="a"), make_result(model="b")])
    b_now_fails = make_result(model="b", exact=False, mismatching=2)
    b_now_fails.set_failure(MismatchError("2 beats differ"))
    report.write_junit(path, [b_now_fails, make_result(model="c")])

    cases = _cases(path)
    assert sorted(cases) == [("hil.virtual", "a@virtual"), ("hil.virtual", "b@virtual"),
                             ("hil.virtual", "c@virtual"), ("tests.test_protocol", "test_protocol")]
    suite_of_b, b = cases[("hil.virtual", "b@virtual")]
    assert suite_of_b == "hil-bench" and b.is_failure
    assert _properties(b)["mismatching_beats"] == "2"
    hil = next(s for s in JUnitXml.fromfile(str(path)) if s.name == "hil-bench")
    assert (hil.tests, hil.failures) == (3, 1)

    report.write_junit(path, [make_result(model="z")], merge=False)
    assert sorted(_cases(path)) == [("hil.virtual", "z@virtual")]


def test_junit_merge_into_garbage_is_a_report_error(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text("this is not xml")
    with pytest.raises(ReportError, match="HIL603"):
        report.write_junit(path, [make_result()])
    assert path.read_text() == "this is not xml"


# -- table -----------------------------------------------------------------------------------------------
def test_table_marks_sources_and_fits_120_columns():
    measured = make_result()
    estimated = make_result(device="socket://192.168.100.200:33333", profile="esp32s3",
                            source="static_estimate", p50_us=1234.0, exact=False, mismatching=3)
    estimated.set_failure(MismatchError("3 beats differ"))
    long_name = make_result(model="a_really_long_model_name_for_the_table", partial=True)
    long_name.set_failure(BoardTimeout("stopped"))
    table = report.format_table([measured, estimated, long_name])
    lines = table.splitlines()

    assert all(len(line) <= 120 for line in lines)
    header, _, row_measured, row_estimated, row_partial = lines[:5]
    assert "812 µs" in row_measured and "(est.)" not in row_measured
    assert "1,234 µs (est.)" in row_estimated
    assert "✓" in row_measured and "✗ 3" in row_estimated
    assert "0.6667" in row_measured
    assert "20.0 KiB" in row_measured and "1500.0" in row_measured
    assert row_estimated.rstrip().endswith("FAIL mismatch")
    assert row_partial.rstrip().endswith("ERROR timeout*")
    assert any("est. = static cost-model estimate, not measured; host wall time is not device latency" in line
               for line in lines)
    assert any(line.startswith("* = the run stopped early") for line in lines)
    # Right-aligned numeric columns end where their header ends.
    end = header.index("beats/s") + len("beats/s")
    assert row_measured[:end].endswith("1500.0") and row_estimated[:end].endswith("1500.0")
    status_at = header.index("status")
    assert row_measured[status_at:].startswith("pass")


def test_autoencoder_row_says_its_figures_are_anomaly_detection():
    from harness.bench import metrics as m

    ae = make_result(model="ae_beat", task="autoencoder",
                     accuracy={"anomaly": m.anomaly([0.01, 0.03, 0.05, 0.002], [True, True, False, True], 0.02),
                               "mean_error": 0.023})
    table = report.format_table([make_result(), ae])
    row = next(line for line in table.splitlines() if line.startswith("ae_beat"))
    # acc 3/4 and F1 of the abnormal class 2·1/(2·1 + 1 + 0), both marked; the classifier row is not.
    assert "0.7500 AD" in row and "0.6667 AD" in row, row
    assert " AD" not in next(line for line in table.splitlines() if line.startswith("cnn1d_beat"))
    assert report.ANOMALY_NOTE in table
    assert "ae_beat@virtual: mean reconstruction error 0.023 (MSE), threshold 0.02, Se 1, Sp 0.6667, +P 0.5" in table
    assert all(len(line) <= report.TABLE_WIDTH for line in table.splitlines() if not line.startswith(("AD", "est")))
