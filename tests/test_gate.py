"""Regression gate: outcomes per figure and task, paired decisions, strict mode, baselines and their updates.

Runs are built from per-beat labels (as the bench records them), so the gate sees exactly what a real run
gives it; the end-to-end runs on the virtual board are in tests/test_hil_verdicts.py.
"""

import json

import numpy as np
import pytest

from harness.bench import beatset, metrics
from harness.gate import baseline as gate
from harness.errors import BaselineError, BoardTimeout, MismatchError
from harness.bench.results import Result

SHA = "ab" * 32
LABELS = ["N", "S", "V", "F", "Q"]
RECORDS = (("213", 3000), ("232", 2800), ("233", 2400))  # ~8k beats, like the bundled records


def truth(seed=0, records=RECORDS):
    rng = np.random.default_rng(seed)
    n = sum(c for _, c in records)
    return rng.choice(4, size=n, p=[0.80, 0.10, 0.08, 0.02])


def predictions(true, accuracy=0.9, seed=1):
    rng = np.random.default_rng(seed)
    wrong = rng.random(true.size) > accuracy
    return np.where(wrong, (true + 1 + rng.integers(0, 3, true.size)) % 4, true)


def make_result(true, pred, *, model="cnn1d_beat", task="classifier", labels=LABELS, records=RECORDS,
                fingerprint="f" * 64, p50=800.0, source="device_cycles", arena=20480, model_bytes=17000,
                mismatching=0, partial=False, profile="virtual") -> Result:
    true = np.asarray(true)
    pred = np.asarray(pred)
    if task == "autoencoder":
        labels = ["normal", "abnormal"]
        acc = {"anomaly": {"accuracy": float(np.mean(true == pred))}}
    else:
        acc = metrics.classification([labels[t] for t in true], [labels[p] for p in pred], labels)
    total = len(true)
    verified = total // 2 if partial else total
    result = Result(
        model=model, device="virtual", profile=profile, task=task, partial=partial,
        beats={"total": total, "verified": verified},
        bit_exact={"exact": mismatching == 0 and not partial, "mismatching_beats": mismatching},
        accuracy=acc,
        latency={"source": source, "cpu_mhz": 240,
                 "us": {"n": total, "median": p50, "p99": None if p50 is None else p50 * 1.1}},
        memory={"arena_used_bytes": arena, "model_bytes": model_bytes},
        per_beat=beatset.encode_per_beat(labels, records, "".join(beatset.label_char(int(t)) for t in true),
                                         "".join(beatset.label_char(int(p)) for p in pred)),
        provenance={"model_sha256": SHA, "finished_at": "2025-01-01T00:00:05+00:00",
                    "records": [r for r, _ in records], "harness_version": "0.1.0",
                    "beat_set": {"fingerprint": fingerprint, "beats": total, "records": [r for r, _ in records]}},
    )
    if partial:
        result.status = "error"
        result.failure = {"kind": "timeout", "code": "HIL312", "message": "HIL312 stopped"}
    return result


@pytest.fixture(scope="module")
def base():
    true = truth()
    return true, predictions(true)


@pytest.fixture
def baseline(tmp_path, base):
    path = tmp_path / "virtual.json"
    written, refused = gate.update_baseline(path, [make_result(*base)])
    assert refused == [] and written == ["cnn1d_beat: new entry (14 figures)"]
    return gate.load_baseline(path)


def outcomes(result, baseline, **kw):
    return {o.metric: o for o in gate.check(result, baseline, **kw)}


def failing(result, baseline, mode="warn"):
    gate.apply(result, gate.check(result, baseline), mode=mode)
    return result.status == "fail"


# -- must pass -------------------------------------------------------------------------------------------
def test_unchanged_model_run_twice_passes_every_figure(baseline, base):
    got = outcomes(make_result(*base), baseline)
    assert set(got) >= {"bit_exact", "accuracy", "macro_f1", "se_N", "ppv_N", "se_S", "ppv_S", "se_V", "ppv_V",
                        "se_F", "ppv_F", "latency_p50_us", "latency_p99_us", "arena_used_bytes", "model_bytes"}
    assert "se_Q" not in got  # Q has no support: not gated
    assert {o.outcome for o in got.values()} == {"pass"}
    assert got["accuracy"].p_value == 1.0 and got["macro_f1"].ci95 == (0.0, 0.0)
    assert not failing(make_result(*base), baseline, mode="strict")


def test_a_handful_of_changed_beats_is_within_noise(baseline, base):
    true, pred = base
    rng = np.random.default_rng(7)
    changed = pred.copy()
    flip = rng.choice(np.flatnonzero(pred == true), size=3, replace=False)
    changed[flip] = (true[flip] + 1) % 4  # 3 of ~8k beats now wrong
    fixed = rng.choice(np.flatnonzero(pred != true), size=2, replace=False)
    changed[fixed] = true[fixed]          # 2 now right
    result = make_result(true, changed)
    got = outcomes(result, baseline)
    assert got["accuracy"].outcome == "within_noise" and got["accuracy"].p_value == 1.0
    assert not any(o.outcome == "regressed" for o in got.values())
    assert not failing(result, baseline, mode="strict")


# -- must fail -------------------------------------------------------------------------------------------
def test_classifier_whose_s_output_never_wins_regresses(baseline, base):
    true, pred = base
    never_s = np.where(pred == 1, 0, pred)
    result = make_result(true, never_s)
    got = outcomes(result, baseline)
    assert got["se_S"].outcome == "regressed" and got["se_S"].new == 0.0
    assert got["se_S"].ci95[1] < 0
    assert got["ppv_S"].outcome == "regressed" and got["ppv_S"].new == 0.0  # never predicted counts as 0
    assert got["macro_f1"].outcome == "regressed"
    assert got["accuracy"].outcome == "regressed" and got["accuracy"].p_value < 1e-6
    assert failing(result, baseline)
    assert result.failure["code"] == "HIL510" and "regressed" in result.failure["message"]


def test_collapsed_autoencoder_regresses_though_its_accuracy_rises(tmp_path):
    rng = np.random.default_rng(3)
    true = (rng.random(8200) < 0.35).astype(int)             # 1 = abnormal
    pred = np.where(rng.random(8200) < 0.6, true, 1 - true)   # a weak but working detector
    path = tmp_path / "virtual.json"
    gate.update_baseline(path, [make_result(true, pred, model="ae_beat", task="autoencoder")])
    collapsed = make_result(true, np.zeros_like(true), model="ae_beat", task="autoencoder")  # threshold → +inf
    got = outcomes(collapsed, gate.load_baseline(path))
    assert got["accuracy"].outcome == "improved"  # every beat "normal" is right 65 % of the time ...
    assert got["se"].outcome == "regressed" and got["se"].new == 0.0  # ... but finds no abnormal beat
    assert got["f1"].outcome == "regressed" and got["ppv"].outcome == "regressed"
    assert got["sp"].outcome == "improved"
    assert failing(collapsed, gate.load_baseline(path))


def test_accuracy_missing_is_a_regression_in_both_modes(baseline, base):
    result = make_result(*base)
    result.accuracy, result.per_beat = {}, {}
    got = outcomes(result, baseline)
    assert got["accuracy"].outcome == "regressed" and got["accuracy"].reason == "missing in this run"
    assert failing(result, baseline, mode="warn")


def test_another_beat_set_is_not_compared_and_fails_only_in_strict_mode(baseline, base):
    other = make_result(*base, fingerprint="0" * 64)
    got = outcomes(other, baseline)
    (acc,) = [o for o in got.values() if o.outcome == "not_compared"]
    assert "other beat set" in acc.reason and "ffffffffffff" in acc.reason and "000000000000" in acc.reason
    assert got["arena_used_bytes"].outcome == "pass"  # beat-independent figures are still compared
    assert not failing(make_result(*base, fingerprint="0" * 64), baseline, mode="warn")
    strict = make_result(*base, fingerprint="0" * 64)
    assert failing(strict, baseline, mode="strict")
    assert strict.failure["code"] == "HIL512" and "other beat set" in strict.failure["message"]


def test_no_baseline_for_the_profile_fails_strict_with_the_fix(base):
    result = make_result(*base, profile="esp32s3")
    exact, only = gate.check(result, None)
    assert exact.metric == "bit_exact" and exact.outcome == "pass"  # absolute: needs no baseline
    assert only.outcome == "not_compared" and only.reason == "no baseline for profile esp32s3"
    assert not failing(make_result(*base, profile="esp32s3"), None, mode="warn")
    assert failing(result, None, mode="strict")
    assert result.failure["message"].endswith(
        "-- fix: run with --update-baseline --target esp32s3 and commit baselines/esp32s3.json")


def test_no_entry_for_the_model(baseline, base):
    exact, only = gate.check(make_result(*base, model="new_model"), baseline)
    assert only.outcome == "not_compared" and "no baseline for model new_model" in only.reason
    partial = gate.check(make_result(*base, model="new_model", partial=True), baseline)
    assert partial[0].metric == "bit_exact" and partial[0].outcome == "regressed"


def test_a_partial_run_is_never_bit_exact_and_fails(baseline, base):
    result = make_result(*base, partial=True)
    assert result.is_bit_exact is False
    assert result.bit_exact_summary == f"bit-exact on {len(base[0]) // 2} of {len(base[0])} beats, incomplete"
    got = outcomes(result, baseline)
    assert got["bit_exact"].outcome == "regressed" and "incomplete" in got["bit_exact"].reason
    assert got["figures"].outcome == "not_compared"
    # Even when nothing else marked it failed, the gate does.
    result.status, result.failure = "pass", None
    assert failing(result, baseline)


def test_a_mismatch_regresses_bit_exactness(baseline, base):
    got = outcomes(make_result(*base, mismatching=4), baseline)
    assert got["bit_exact"].outcome == "regressed"
    assert got["bit_exact"].line().startswith("cnn1d_beat@virtual: bit_exact 0 of 8200 differ → 4 of 8200 differ")


# -- latency, memory, size --------------------------------------------------------------------------------
def test_device_cycle_latency_has_a_tight_tolerance(baseline, base):
    assert outcomes(make_result(*base, p50=816.0), baseline)["latency_p50_us"].outcome == "pass"  # +2 %
    slower = outcomes(make_result(*base, p50=830.0), baseline)
    assert slower["latency_p50_us"].outcome == "regressed"
    assert slower["latency_p50_us"].line().startswith("cnn1d_beat@virtual: latency_p50_us 800.0 → 830.0")
    assert outcomes(make_result(*base, p50=700.0), baseline)["latency_p50_us"].outcome == "improved"


def test_a_static_estimate_is_gated_loosely_and_never_against_cycles(tmp_path, base):
    path = tmp_path / "virtual.json"
    gate.update_baseline(path, [make_result(*base, source="static_estimate", p50=4000.0)])
    loaded = gate.load_baseline(path)
    assert loaded.models["cnn1d_beat"].raw["figures"]["latency_p99_us"] is None  # p99 of an estimate: not kept
    got = outcomes(make_result(*base, source="static_estimate", p50=4300.0), loaded)
    assert got["latency_estimate_p50_us"].outcome == "pass"  # +7.5 % of an estimate
    assert "not measured" in got["latency_estimate_p50_us"].reason
    assert outcomes(make_result(*base, source="static_estimate", p50=4500.0),
                    loaded)["latency_estimate_p50_us"].outcome == "regressed"
    measured = outcomes(make_result(*base, source="device_cycles", p50=900.0), loaded)["latency"]
    assert measured.outcome == "not_compared" and "never compared with a measurement" in measured.reason


def test_arena_and_model_bytes(baseline, base):
    got = outcomes(make_result(*base, arena=20481, model_bytes=16000), baseline)
    assert got["arena_used_bytes"].outcome == "regressed"
    assert got["arena_used_bytes"].line() == ("cnn1d_beat@virtual: arena_used_bytes 20480 → 20481 "
                                              "(Δ +1; limit ≤ 20480): regressed")
    assert got["model_bytes"].outcome == "improved"


def test_conformance_task_compares_bit_exactness_latency_arena_and_bytes_only(tmp_path):
    result = Result(model="conv_conformance", device="virtual", profile="virtual", task="conformance",
                    beats={"total": 50, "verified": 50}, bit_exact={"exact": True, "mismatching_beats": 0},
                    latency={"source": "device_cycles", "us": {"median": 100.0, "p99": 120.0}},
                    memory={"arena_used_bytes": 1000, "model_bytes": 3000},
                    provenance={"model_sha256": SHA, "beat_set": {"fingerprint": "c" * 64}})
    path = tmp_path / "virtual.json"
    gate.update_baseline(path, [result])
    got = outcomes(result, gate.load_baseline(path))
    assert set(got) == {"bit_exact", "latency_p50_us", "latency_p99_us", "arena_used_bytes", "model_bytes"}
    assert {o.outcome for o in got.values()} == {"pass"}


def test_outcome_dicts_follow_the_shared_contract(baseline, base):
    result = make_result(*base)
    gate.apply(result, gate.check(result, baseline))
    for entry in result.gate:
        assert {"metric", "outcome", "old", "new", "limit", "p_value", "ci95", "reason", "line"} <= set(entry)
        assert entry["outcome"] in gate.OUTCOMES
    json.dumps(result.to_dict(), allow_nan=False)
    assert Result.from_dict(json.loads(json.dumps(result.to_dict()))).gate == result.gate


def test_alpha_is_configurable(baseline, base):
    true, pred = base
    worse = pred.copy()
    right = np.flatnonzero(pred == true)[:60]
    worse[right] = (true[right] + 1) % 4  # 60 beats of 8200 worse: Δ −0.0073, beyond the 0.005 tolerance
    got = outcomes(make_result(true, worse), baseline)
    assert got["accuracy"].outcome == "regressed" and got["accuracy"].p_value < 1e-10
    assert outcomes(make_result(true, worse), baseline, alpha=1e-30)["accuracy"].outcome == "within_noise"


def test_many_records_bootstrap_records(tmp_path):
    records = tuple((str(100 + i), 400) for i in range(12))
    true = truth(records=records)
    pred = predictions(true)
    path = tmp_path / "virtual.json"
    gate.update_baseline(path, [make_result(true, pred, records=records)])
    got = outcomes(make_result(true, np.where(pred == 1, 0, pred), records=records), gate.load_baseline(path))
    assert got["se_S"].outcome == "regressed" and got["se_S"].reason is None  # records are the unit
    assert got["se_S"].ci95[0] <= got["se_S"].delta <= got["se_S"].ci95[1] < 0


def test_a_class_in_one_record_of_many_falls_back_to_beats(tmp_path):
    records = tuple((str(100 + i), 300) for i in range(12))
    true = truth(records=records)
    true = np.where(true == 3, 0, true)
    true[:40] = 3                        # F only in the first record
    pred = predictions(true, accuracy=0.95)
    path = tmp_path / "virtual.json"
    gate.update_baseline(path, [make_result(true, pred, records=records)])
    never_f = np.where(pred == 3, 0, pred)
    got = outcomes(make_result(true, never_f, records=records), gate.load_baseline(path))
    assert got["se_F"].outcome == "regressed", got["se_F"].line()
    assert got["se_F"].reason == "bootstrap over beats (the class is in too few records)"
    assert got["se_N"].ci_unit == "records"


def test_single_record_runs_bootstrap_beats_and_say_so(tmp_path):
    records = (("232", 2000),)
    true = truth(records=records)
    pred = predictions(true)
    path = tmp_path / "virtual.json"
    gate.update_baseline(path, [make_result(true, pred, records=records)])
    worse = np.where(pred == 1, 0, pred)
    got = outcomes(make_result(true, worse, records=records), gate.load_baseline(path))
    assert got["se_S"].outcome == "regressed" and "bootstrap over beats (only 1 record)" in got["se_S"].reason


# -- baselines: loading, updating -------------------------------------------------------------------------
def test_missing_baseline_is_none(tmp_path):
    assert gate.load_baseline(tmp_path / "nope.json") is None


def test_update_prints_old_to_new_and_records_provenance(tmp_path, base):
    path = tmp_path / "virtual.json"
    true, pred = base
    gate.update_baseline(path, [make_result(true, pred)])
    better = np.where(true == 1, 1, pred)
    lines, refused = gate.update_baseline(path, [make_result(true, better, arena=20000)])
    assert refused == []
    assert any(line.startswith("cnn1d_beat: se_S 0.") and "→ 1.0000" in line for line in lines), lines
    assert "cnn1d_beat: arena_used_bytes 20480 → 20000" in lines
    entry = json.loads(path.read_text())["models"]["cnn1d_beat"]
    prov = entry["provenance"]
    assert prov["model_sha256"] == SHA and prov["harness_version"] == "0.1.0" and prov["beat_set"] == "f" * 64
    assert prov["date"] == "2025-01-01T00:00:05+00:00"
    assert prov["git_commit"] is None or len(prov["git_commit"].split("+")[0]) == 40
    assert entry["per_beat"]["encoding"] == "zlib+base64"
    assert beatset.unpack(entry["per_beat"]["pred"]) == "".join(beatset.label_char(int(p)) for p in better)
    assert len(path.read_bytes()) < 8000  # 8,200 beats of labels compress to a few KB


def test_update_refuses_partial_and_non_bit_exact_runs(tmp_path, base):
    path = tmp_path / "virtual.json"
    mismatch = make_result(*base, mismatching=2)
    mismatch.set_failure(MismatchError("2 beats differ"))
    lines, refused = gate.update_baseline(path, [make_result(*base, partial=True), mismatch])
    assert lines == [] and not path.exists()
    assert refused[0].startswith("cnn1d_beat@virtual: refused: the run is incomplete (bit-exact on 4100 of 8200")
    assert refused[1].startswith("cnn1d_beat@virtual: refused: not bit-exact (2 of 8200 verified beats differ")


def test_update_accepts_a_run_failed_only_by_the_gate(baseline, base):
    slower = make_result(*base, p50=1000.0)
    gate.apply(slower, gate.check(slower, baseline))
    assert slower.status == "fail"
    lines, refused = gate.update_baseline(baseline.path, [slower])
    assert refused == [] and "cnn1d_beat: latency_p50_us 800.0 → 1000.0" in lines


def test_update_keeps_other_models_and_settings(baseline, base):
    doc = json.loads(baseline.path.read_text())
    doc["tolerances"]["accuracy"] = 0.02
    doc["significance"]["alpha"] = 0.01
    baseline.path.write_text(json.dumps(doc))
    gate.update_baseline(baseline.path, [make_result(*base, model="bwn_beat")])
    loaded = gate.load_baseline(baseline.path)
    assert loaded.tolerances["accuracy"] == 0.02 and loaded.significance["alpha"] == 0.01
    assert sorted(loaded.models) == ["bwn_beat", "cnn1d_beat"]


def test_update_refuses_to_overwrite_a_malformed_file(tmp_path, base):
    path = tmp_path / "virtual.json"
    path.write_text("{broken")
    with pytest.raises(BaselineError, match="HIL611"):
        gate.update_baseline(path, [make_result(*base)])
    assert path.read_text() == "{broken"


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.pop("tolerances"), "'tolerances'"),
    (lambda d: d["tolerances"].pop("arena"), "'tolerances.arena'"),
    (lambda d: d["tolerances"].update(acuracy=0.1), "'tolerances.acuracy'"),
    (lambda d: d["tolerances"].update(accuracy=-0.1), "'tolerances.accuracy'"),
    (lambda d: d["significance"].update(alpha=1.5), "'significance.alpha'"),
    (lambda d: d["models"]["cnn1d_beat"]["figures"].update(accuracy="high"), "'models.cnn1d_beat.figures.accuracy'"),
    (lambda d: d["models"]["cnn1d_beat"]["figures"].update(arena_used_bytes=1.5),
     "'models.cnn1d_beat.figures.arena_used_bytes'"),
    (lambda d: d["models"]["cnn1d_beat"]["figures"].update(speed=1), "'models.cnn1d_beat.figures.speed'"),
    (lambda d: d["models"]["cnn1d_beat"].update(latency_source="guess"), "'models.cnn1d_beat.latency_source'"),
    (lambda d: d["models"]["cnn1d_beat"].update(task="regression"), "'models.cnn1d_beat.task'"),
    (lambda d: d["models"]["cnn1d_beat"]["per_beat"].update(pred="!!"), "'models.cnn1d_beat.per_beat'"),
    (lambda d: d["models"]["cnn1d_beat"].pop("provenance"), "'models.cnn1d_beat.provenance'"),
    (lambda d: d.update(schema=1), "'schema'"),
    (lambda d: d.update(models=[]), "'models'"),
])
def test_malformed_baseline_names_file_and_key(baseline, mutate, key):
    document = json.loads(baseline.path.read_text())
    mutate(document)
    baseline.path.write_text(json.dumps(document))
    with pytest.raises(BaselineError) as info:
        gate.load_baseline(baseline.path)
    line = str(info.value)
    assert info.value.code == "HIL611"
    assert str(baseline.path) in line and key in line, line
    assert line.endswith("fix: fix or delete it and run with --update-baseline")
    assert "\n" not in line


def test_baseline_that_is_not_json(tmp_path):
    path = tmp_path / "virtual.json"
    path.write_text('{"schema": 2,\n  "tolerances": ')
    with pytest.raises(BaselineError, match=r"HIL611 baseline .*virtual.json line 2: not valid JSON"):
        gate.load_baseline(path)


def test_the_committed_baseline_loads_and_covers_every_shipped_model():
    from harness.bench.model import load_registry

    loaded = gate.load_baseline(gate.Path(__file__).resolve().parent.parent / "baselines" / "virtual.json")
    for model in load_registry():
        entry = loaded.models[model.name].raw
        assert entry["beat_set"]["fingerprint"] and entry["task"] == model.task, model.name
        assert bool(entry["per_beat"]) == (model.task != "conformance"), model.name  # conformance: no labels
        assert entry["provenance"]["model_sha256"] == model.sha256, f"{model.name}: baseline is stale"


def test_errored_result_keeps_its_status(baseline, base):
    errored = make_result(*base)
    errored.set_failure(BoardTimeout("stopped"), partial=True)
    gate.apply(errored, gate.check(errored, baseline))
    assert errored.status == "error" and errored.failure["kind"] == "timeout"
    assert any(g["outcome"] == "regressed" and g["metric"] == "bit_exact" for g in errored.gate)


def test_a_handful_of_changed_beats_of_the_shipped_model_is_within_noise(tmp_path):
    """The same check on real data: the shipped cnn1d_beat's own per-beat answers over the bundled records."""
    committed = gate.load_baseline(gate.Path(__file__).resolve().parent.parent / "baselines" / "virtual.json")
    entry = committed.models["cnn1d_beat"]
    side = entry.side()
    true = np.array([beatset.char_index(c) for c in side.per_beat["true"]])
    pred = np.array([beatset.char_index(c) for c in side.per_beat["pred"]])
    records = tuple((r, n) for r, n in side.per_beat["records"])
    assert len(true) > 8000
    changed = pred.copy()
    rng = np.random.default_rng(11)
    flip = rng.choice(np.flatnonzero(pred == true), size=4, replace=False)
    changed[flip] = (true[flip] + 1) % 4
    result = make_result(true, changed, records=records, fingerprint=side.fingerprint,
                         p50=side.latency["p50_us"], source=entry.raw["latency_source"],
                         arena=side.arena_used_bytes, model_bytes=side.model_bytes)
    got = outcomes(result, committed)
    assert got["accuracy"].outcome == "within_noise" and got["accuracy"].p_value > 0.05
    assert not any(o.outcome in ("regressed", "not_compared") for o in got.values()), \
        [o.line() for o in got.values() if o.outcome != "pass"]
