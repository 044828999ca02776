"""metrics: classification, latency and anomaly figures on small cases computed by hand."""

import json

import numpy as np
import pytest

from harness.bench import metrics


def test_classification_hand_computed_case():
    # true:  N N N S S V     confusion (rows true, cols predicted, order N S V F):
    # pred:  N N S S N V       N [2 1 0 0]   S [1 1 0 0]   V [0 0 1 0]   F [0 0 0 0]
    got = metrics.classification(list("NNNSSV"), list("NNSSNV"), ["N", "S", "V", "F"])

    assert got["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert got["labels"] == ["N", "S", "V", "F"]
    assert got["n"] == 6
    assert got["accuracy"] == pytest.approx(4 / 6)

    n, s, v, f = (got["per_class"][k] for k in "NSVF")
    assert (n["se"], n["ppv"], n["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert (n["support"], n["predicted"]) == (3, 3)
    assert (s["se"], s["ppv"], s["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (v["se"], v["ppv"], v["f1"]) == (1.0, 1.0, 1.0)
    # F never occurs and is never predicted: nothing is defined, and it is left out of macro-F1.
    assert f == {"se": None, "ppv": None, "f1": None, "support": 0, "predicted": 0}
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_classification_zero_division_is_none_not_nan():
    # S is present but never predicted: Se = 0, +P undefined, F1 = 0 (2·0 / (0 + 0 + 1)).
    # V is predicted but never present: Se undefined, +P = 0, and V does not count in macro-F1.
    got = metrics.classification(["N", "N", "S"], ["N", "V", "N"], ["N", "S", "V"])
    s, v = got["per_class"]["S"], got["per_class"]["V"]
    assert (s["se"], s["ppv"], s["f1"]) == (0.0, None, 0.0)
    assert (v["se"], v["ppv"], v["f1"]) == (None, 0.0, 0.0)
    n = got["per_class"]["N"]  # tp 1, fn 1, fp 1
    assert n["f1"] == pytest.approx(0.5)
    assert got["macro_f1"] == pytest.approx((0.5 + 0.0) / 2)
    json.dumps(got, allow_nan=False)  # valid strict JSON


def test_classification_empty_run():
    got = metrics.classification([], [], ["N", "S"])
    assert got["accuracy"] is None and got["macro_f1"] is None and got["n"] == 0
    assert got["confusion"] == [[0, 0], [0, 0]]
    json.dumps(got, allow_nan=False)


def test_classification_rejects_unknown_labels_and_length_mismatch():
    with pytest.raises(ValueError, match="'Q'"):
        metrics.classification(["N", "Q"], ["N", "N"], ["N", "S"])
    with pytest.raises(ValueError, match="2 values"):
        metrics.classification(["N", "S"], ["N"], ["N", "S"])


def test_latency_matches_numpy_percentiles_after_warmup():
    rng = np.random.default_rng(7)
    values = list(rng.uniform(500, 900, size=203))
    values[:3] = [90_000.0, 50_000.0, 20_000.0]  # cold-start invokes that warm-up must drop
    got = metrics.latency(values, warmup=3)
    kept = np.array(values[3:])
    assert got["n"] == 200 and got["warmup"] == 3
    assert got["median"] == pytest.approx(np.percentile(kept, 50))
    assert got["p90"] == pytest.approx(np.percentile(kept, 90))
    assert got["p99"] == pytest.approx(np.percentile(kept, 99))
    assert got["min"] == pytest.approx(kept.min()) and got["max"] == pytest.approx(kept.max())
    assert got["mean"] == pytest.approx(kept.mean())
    assert got["max"] < 900  # the cold values are gone
    assert all(type(got[k]) is float for k in metrics.LATENCY_STATS)


def test_latency_small_hand_case():
    got = metrics.latency([100, 10, 20, 30, 40], warmup=1)
    assert (got["min"], got["median"], got["max"], got["mean"]) == (10.0, 25.0, 40.0, 25.0)
    assert got["p90"] == pytest.approx(37.0)  # 30 + 0.7 · (40 - 30), linear interpolation


def test_latency_empty_after_warmup_is_all_none():
    got = metrics.latency([1.0, 2.0], warmup=5)
    assert got == {"n": 0, "warmup": 2, "min": None, "median": None, "p90": None, "p99": None,
                   "max": None, "mean": None}
    with pytest.raises(ValueError):
        metrics.latency([1.0], warmup=-1)


def test_anomaly_hand_computed_case():
    # threshold 0.4 → called abnormal: F T T F T
    # normal:   0.1 → TN, 0.5 → FP;   abnormal: 0.9 → TP, 0.3 → FN, 0.7 → TP
    got = metrics.anomaly([0.1, 0.5, 0.9, 0.3, 0.7], [True, True, False, False, False], threshold=0.4)
    assert got["confusion"] == [[1, 1], [1, 2]]
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["se"] == pytest.approx(2 / 3)
    assert got["sp"] == pytest.approx(1 / 2)
    assert got["ppv"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(4 / 6)
    assert got["threshold"] == 0.4 and got["n"] == 5


def test_anomaly_error_equal_to_threshold_is_normal_and_zero_division_is_none():
    got = metrics.anomaly([0.4, 0.2], [True, True], threshold=0.4)
    assert got["confusion"] == [[2, 0], [0, 0]]
    assert got["sp"] == 1.0
    assert got["se"] is None and got["ppv"] is None and got["f1"] is None
    json.dumps(got, allow_nan=False)
    with pytest.raises(ValueError):
        metrics.anomaly([float("nan")], [True], 0.4)


def test_clock_agreement_flags_beats_whose_cycles_and_wall_time_disagree():
    from harness.bench.metrics import clock_agreement

    mhz = 240
    cycles = [240_000] * 10                 # 1000 µs each by the cycle counter
    wall = [1_004_000] * 10                 # 1004 µs by the timer: copies and timer resolution, fine
    wall[3] = 1_500_000                     # preempted or clock changed: 500 µs more
    wall[7] = 800_000                       # clock went up (DFS): fewer µs than the cycles say
    check = clock_agreement(cycles, wall, mhz)
    assert check["compared"] == 10 and check["flagged"] == 2
    assert check["first_flagged"] == {"beat": 3, "cycles_us": 1000.0, "wall_us": 1500.0}
    assert check["max_gap_us"] == 500.0
    # The margin is relative plus absolute: exactly at the edge passes, just past it is flagged.
    edge = 1000 + check["margin"]["abs_us"] + check["margin"]["rel"] * 1000
    assert clock_agreement([240_000], [edge * 1000], mhz)["flagged"] == 0
    assert clock_agreement([240_000], [(edge + 0.01) * 1000], mhz)["flagged"] == 1
    assert clock_agreement([], [], mhz)["compared"] == 0
