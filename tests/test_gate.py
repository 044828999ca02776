"""Regression gate: each rule, tolerance boundaries, latency sources, malformed baselines, update round trip."""

import json

import pytest

from harness import gate
from harness.errors import BaselineError, BoardTimeout, MismatchError
from harness.results import Result

SHA = "ab" * 32


def make_result(model="cnn1d_beat", *, accuracy=0.9712, macro_f1=0.8123, p50=800.0, source="device_cycles",
                arena=20480, exact=True, device="virtual", profile="virtual", records=("213", "232")) -> Result:
    return Result(
        model=model, device=device, profile=profile,
        bit_exact={"exact": exact, "mismatching_beats": 0 if exact else 4},
        accuracy={"accuracy": accuracy, "macro_f1": macro_f1},
        latency={"source": source, "cpu_mhz": 240, "us": {"n": 10, "median": p50, "p99": p50 * 1.1}},
        memory={"arena_used_bytes": arena},
        provenance={"model_sha256": SHA, "finished_at": "2025-01-01T00:00:05+00:00", "records": records},
    )


def write_baseline(path, models=None, tolerances=None):
    entry = {"accuracy": 0.9712, "macro_f1": 0.8123, "latency_p50_us": 800.0, "latency_source": "device_cycles",
             "arena_used_bytes": 20480, "bit_exact": True, "model_sha256": SHA,
             "updated_at": "2025-01-01T00:00:00+00:00", "dataset": "213,232"}
    document = {"schema": 1, "tolerances": tolerances or dict(gate.DEFAULT_TOLERANCES),
                "models": models if models is not None else {"cnn1d_beat": entry}}
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def baseline(tmp_path):
    return gate.load_baseline(write_baseline(tmp_path / "virtual.json"))


def lines(result, baseline):
    return [r.line() for r in gate.check(result, baseline)]


def test_same_figures_pass(baseline):
    assert gate.check(make_result(), baseline) == []


def test_bit_exact_lost_is_a_regression(baseline):
    assert lines(make_result(exact=False), baseline) == [
        "cnn1d_beat@virtual: bit_exact true → false (limit = true)"]


def test_accuracy_drop(baseline):
    assert lines(make_result(accuracy=0.9601), baseline) == [
        "cnn1d_beat@virtual: accuracy 0.9712 → 0.9601 (limit ≥ 0.9662)"]
    (regression,) = gate.check(make_result(accuracy=0.9601), baseline)
    assert (regression.metric, regression.old, regression.new) == ("accuracy", 0.9712, 0.9601)
    assert regression.limit == pytest.approx(0.9662)


def test_accuracy_boundary(baseline):
    assert gate.check(make_result(accuracy=0.9662), baseline) == []  # exactly old − 0.005 passes
    assert [r.metric for r in gate.check(make_result(accuracy=0.96619), baseline)] == ["accuracy"]
    assert gate.check(make_result(accuracy=0.99), baseline) == []  # improvements never regress


def test_value_at_the_limit_passes_despite_float_noise(tmp_path):
    # 0.5006 - 0.005 is 0.49560000000000004 and 101.6 × 1.05 is 106.67999999999999 in binary floats.
    entry = {"accuracy": 0.5006, "macro_f1": None, "latency_p50_us": 101.6, "latency_source": "device_cycles",
             "arena_used_bytes": None, "bit_exact": True, "model_sha256": SHA, "updated_at": "", "dataset": "213,232"}
    noisy = gate.load_baseline(write_baseline(tmp_path / "noisy.json", models={"cnn1d_beat": entry}))
    assert gate.check(make_result(accuracy=0.4956, p50=106.68), noisy) == []
    assert [r.metric for r in gate.check(make_result(accuracy=0.4955, p50=106.69), noisy)] == [
        "accuracy", "latency_p50_us (device_cycles)"]


def test_macro_f1_boundary(baseline):
    assert gate.check(make_result(macro_f1=0.8023), baseline) == []
    assert lines(make_result(macro_f1=0.8022), baseline) == [
        "cnn1d_beat@virtual: macro_f1 0.8123 → 0.8022 (limit ≥ 0.8023)"]


def test_latency_relative_rise(baseline):
    assert gate.check(make_result(p50=840.0), baseline) == []  # +5 % exactly
    assert lines(make_result(p50=840.5), baseline) == [
        "cnn1d_beat@virtual: latency_p50_us (device_cycles) 800.0 → 840.5 (limit ≤ 840.0)"]


def test_latency_of_another_source_is_never_compared(baseline):
    estimate = make_result(p50=5000.0, source="static_estimate")
    assert gate.check(estimate, baseline) == []
    notes = gate.explain(estimate, baseline)
    assert any("latency not compared" in n and "device_cycles" in n and "static_estimate" in n for n in notes)


def test_arena_rise(tmp_path, baseline):
    assert gate.check(make_result(arena=20480), baseline) == []
    assert lines(make_result(arena=20481), baseline) == [
        "cnn1d_beat@virtual: arena_used_bytes 20480 → 20481 (limit ≤ 20480)"]
    loose = gate.load_baseline(write_baseline(tmp_path / "loose.json",
                                              tolerances={**gate.DEFAULT_TOLERANCES, "arena": 0.1}))
    assert gate.check(make_result(arena=22528), loose) == []  # 20480 × 1.1
    assert [r.metric for r in gate.check(make_result(arena=22529), loose)] == ["arena_used_bytes"]


def test_several_regressions_at_once(baseline):
    got = gate.check(make_result(exact=False, accuracy=0.5, p50=900.0, arena=30000), baseline)
    assert [r.metric for r in got] == ["bit_exact", "accuracy", "latency_p50_us (device_cycles)",
                                       "arena_used_bytes"]


def test_no_entry_and_unfinished_runs_are_not_compared(baseline):
    other = make_result(model="new_model", accuracy=0.1)
    assert gate.check(other, baseline) == []
    assert "no baseline for model new_model" in gate.explain(other, baseline)[0]
    assert "no baseline file" in gate.explain(other, None)[0]

    errored = make_result(accuracy=0.1)
    errored.set_failure(BoardTimeout("stopped"), partial=True)
    assert gate.check(errored, baseline) == []
    assert "ended in an error" in gate.explain(errored, baseline)[0]

    partial = make_result(accuracy=0.1)
    partial.partial = True
    assert gate.check(partial, baseline) == []
    assert "stopped early" in gate.explain(partial, baseline)[0]


def test_apply_marks_a_passing_run_failed(baseline):
    result = make_result(accuracy=0.9601)
    gate.apply(result, gate.check(result, baseline))
    assert result.status == "fail" and result.failure["kind"] == "regression"
    assert result.regressions == ["cnn1d_beat@virtual: accuracy 0.9712 → 0.9601 (limit ≥ 0.9662)"]
    assert result.failure["message"].startswith("HIL510 regression: cnn1d_beat@virtual: accuracy")


# -- loading ---------------------------------------------------------------------------------------------
def test_missing_baseline_is_none(tmp_path):
    assert gate.load_baseline(tmp_path / "nope.json") is None


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.pop("tolerances"), "'tolerances'"),
    (lambda d: d["tolerances"].pop("arena"), "'tolerances.arena'"),
    (lambda d: d["tolerances"].update(acuracy=0.1), "'tolerances.acuracy'"),
    (lambda d: d["tolerances"].update(accuracy=-0.1), "'tolerances.accuracy'"),
    (lambda d: d["models"]["cnn1d_beat"].update(accuracy="high"), "'models.cnn1d_beat.accuracy'"),
    (lambda d: d["models"]["cnn1d_beat"].update(bit_exact="yes"), "'models.cnn1d_beat.bit_exact'"),
    (lambda d: d["models"]["cnn1d_beat"].update(arena_used_bytes=1.5), "'models.cnn1d_beat.arena_used_bytes'"),
    (lambda d: d["models"]["cnn1d_beat"].update(latency_source="guess"), "'models.cnn1d_beat.latency_source'"),
    (lambda d: d["models"]["cnn1d_beat"].pop("model_sha256"), "'models.cnn1d_beat.model_sha256'"),
    (lambda d: d.update(schema=2), "'schema'"),
    (lambda d: d.update(models=[]), "'models'"),
])
def test_malformed_baseline_names_file_and_key(tmp_path, mutate, key):
    path = write_baseline(tmp_path / "virtual.json")
    document = json.loads(path.read_text())
    mutate(document)
    path.write_text(json.dumps(document))
    with pytest.raises(BaselineError) as info:
        gate.load_baseline(path)
    line = str(info.value)
    assert info.value.code == "HIL611"
    assert str(path) in line and key in line
    assert line.endswith("fix: fix or delete it and run with --update-baseline")
    assert "\n" not in line


def test_baseline_that_is_not_json(tmp_path):
    path = tmp_path / "virtual.json"
    path.write_text('{"schema": 1,\n  "tolerances": ')
    with pytest.raises(BaselineError, match=r"HIL611 baseline .*virtual.json line 2: not valid JSON"):
        gate.load_baseline(path)


# -- updating --------------------------------------------------------------------------------------------
def test_update_creates_then_round_trips(tmp_path):
    path = tmp_path / "baselines" / "virtual.json"
    first = make_result(accuracy=0.95, p50=700.0, arena=16000)
    assert gate.update_baseline(path, [first]) == ["cnn1d_beat"]

    loaded = gate.load_baseline(path)
    assert loaded.tolerances == gate.DEFAULT_TOLERANCES
    entry = loaded.models["cnn1d_beat"]
    assert (entry.accuracy, entry.macro_f1, entry.latency_p50_us, entry.latency_source) == \
        (0.95, 0.8123, 700.0, "device_cycles")
    assert (entry.arena_used_bytes, entry.bit_exact, entry.model_sha256) == (16000, True, SHA)
    assert entry.updated_at == "2025-01-01T00:00:05+00:00"
    assert gate.check(first, loaded) == []
    worse = make_result(accuracy=0.9, p50=700.0, arena=16000)
    assert [r.metric for r in gate.check(worse, loaded)] == ["accuracy"]


def test_update_keeps_other_models_and_tolerances(tmp_path):
    path = write_baseline(tmp_path / "virtual.json",
                          tolerances={"accuracy": 0.02, "macro_f1": 0.03, "latency_p50": 0.1, "arena": 0.05})
    assert gate.update_baseline(path, [make_result(model="ae_beat", macro_f1=None, arena=9000)]) == ["ae_beat"]
    loaded = gate.load_baseline(path)
    assert loaded.tolerances == {"accuracy": 0.02, "macro_f1": 0.03, "latency_p50": 0.1, "arena": 0.05}
    assert sorted(loaded.models) == ["ae_beat", "cnn1d_beat"]
    assert loaded.models["cnn1d_beat"].accuracy == 0.9712
    assert loaded.models["ae_beat"].macro_f1 is None and loaded.models["ae_beat"].arena_used_bytes == 9000


def test_update_skips_failed_and_partial_runs(tmp_path):
    path = write_baseline(tmp_path / "virtual.json")
    before = path.read_text()
    mismatch = make_result(exact=False, accuracy=0.5)
    mismatch.set_failure(MismatchError("4 beats differ"))
    partial = make_result(accuracy=0.5)
    partial.partial = True
    assert gate.update_baseline(path, [mismatch, partial]) == []
    assert path.read_text() == before


def test_update_accepts_a_run_failed_only_by_the_gate(tmp_path, baseline):
    slower = make_result(p50=1000.0)
    gate.apply(slower, gate.check(slower, baseline))
    assert slower.status == "fail"
    gate.update_baseline(baseline.path, [slower])
    assert gate.load_baseline(baseline.path).models["cnn1d_beat"].latency_p50_us == 1000.0


def test_update_refuses_to_overwrite_a_malformed_file(tmp_path):
    path = tmp_path / "virtual.json"
    path.write_text("{broken")
    with pytest.raises(BaselineError, match="HIL611"):
        gate.update_baseline(path, [make_result()])
    assert path.read_text() == "{broken"


def test_accuracy_on_other_beats_is_not_compared(baseline):
    other = make_result(accuracy=0.5, macro_f1=0.3, records=("100",))
    assert gate.check(other, baseline) == []
    assert any("not compared" in note and "213,232" in note for note in gate.explain(other, baseline))
    limited = make_result(accuracy=0.5, records=("213", "232"))
    limited.provenance["max_beats"] = 50
    assert gate.check(limited, baseline) == []
