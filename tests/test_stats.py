"""Properties of the gate's statistics (hypothesis): McNemar, the bootstrap interval, monotone decisions."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.bench import beatset
from harness.gate import baseline as gate, stats
from harness.bench.results import Result

LABELS = ["N", "S", "V", "F", "Q"]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.integers(0, 3000), st.integers(0, 3000))
def test_mcnemar_is_symmetric_and_a_probability(b, c):
    p = stats.mcnemar_exact(b, c)
    assert p == stats.mcnemar_exact(c, b)
    assert 0.0 <= p <= 1.0  # 0.0 only when the true value underflows a float (e.g. 2 / 2**1076)
    if b == c:
        assert p == 1.0


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (5, 1), (30, 12), (100, 140), (900, 1000), (12000, 11000),
                                  (26000, 25000)])
def test_mcnemar_matches_the_binomial_test(b, c):
    from scipy.stats import binomtest  # scipy comes with wfdb

    expected = binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@FAST
@given(st.integers(0, 400), st.integers(0, 400), st.integers(0, 400))
def test_mcnemar_falls_as_the_split_gets_more_uneven(b, c, extra):
    lo, hi = min(b, c), max(b, c)
    assert stats.mcnemar_exact(hi + extra, lo) <= stats.mcnemar_exact(hi, lo)


def _confusions(draw, n_records, k):
    counts = draw(st.lists(st.integers(0, 40), min_size=n_records * k * k, max_size=n_records * k * k))
    return np.array(counts, dtype=np.int64).reshape(n_records, k, k)


@FAST
@given(st.data(), st.integers(1, 12), st.sampled_from(["classifier", "autoencoder"]))
def test_bootstrap_interval_contains_the_point_estimate(data, n_records, task):
    labels = LABELS if task == "classifier" else ["normal", "abnormal"]
    k = len(labels)
    old = _confusions(data.draw, n_records, k)
    new = _confusions(data.draw, n_records, k)
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    cis = stats.paired_bootstrap(old, new, task, labels, resamples=200, seed=seed)
    old_point = stats.figures(old.sum(axis=0), task, labels)
    new_point = stats.figures(new.sum(axis=0), task, labels)
    for name, ci in cis.items():
        point = new_point[name] - old_point[name]
        if ci is None:
            continue
        assert math.isfinite(point)
        assert ci[0] - 1e-12 <= point <= ci[1] + 1e-12, (name, ci, point)


def _result(true, pred, counts):
    per_beat = beatset.encode_per_beat(LABELS, [(str(100 + i), n) for i, n in enumerate(counts)],
                                       "".join(beatset.label_char(int(t)) for t in true),
                                       "".join(beatset.label_char(int(p)) for p in pred))
    return Result(model="m", device="virtual", profile="virtual", beats={"total": len(true), "verified": len(true)},
                  bit_exact={"exact": True, "mismatching_beats": 0}, per_beat=per_beat,
                  provenance={"beat_set": {"fingerprint": "x" * 64}})


def _fails(old, new):
    outcomes = gate.compare("m@virtual", gate.side_of_result(old), gate.side_of_result(new),
                            significance={"resamples": 200})
    return any(o.outcome == "regressed" for o in outcomes)


@SLOW
@given(st.data())
def test_a_strictly_worse_confusion_never_passes_where_a_better_one_fails(data):
    n_records = data.draw(st.integers(1, 14))  # both paths: beats (< 10 records) and records
    counts = [data.draw(st.integers(20, 80)) for _ in range(n_records)]
    n = sum(counts)
    seed = data.draw(st.integers(0, 10 ** 6))
    rng = np.random.default_rng(seed)
    true = rng.choice(4, size=n, p=[0.6, 0.2, 0.15, 0.05])
    old = np.where(rng.random(n) < data.draw(st.floats(0.5, 0.99)), true, rng.integers(0, 4, n))
    better = np.where(rng.random(n) < data.draw(st.floats(0.3, 0.99)), true, rng.integers(0, 4, n))
    # worse: the same answers, except some beats `better` gets right are now wrong.
    right = np.flatnonzero(better == true)
    flip = rng.choice(right, size=min(len(right), data.draw(st.integers(1, 200))), replace=False) if len(right) else []
    worse = better.copy()
    worse[flip] = (true[flip] + 1 + rng.integers(0, 3, len(flip))) % 4
    baseline = _result(true, old, counts)
    assert not (_fails(baseline, _result(true, better, counts)) and not _fails(baseline, _result(true, worse, counts)))


def test_bootstrap_cost_for_48_records_is_small():
    """Not a timing assertion (benchmarks print figures: `make bench-gate`); it checks the benchmark runs."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        stats._bench()
    assert "48 records, 1000 bootstrap resamples" in out.getvalue()
