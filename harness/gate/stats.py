"""Statistics of paired comparisons: McNemar's exact test over beats, bootstrap over records.

Two runs over the same beats (a baseline and a new run, or a committed model and a candidate) are paired:
each beat is right or wrong under both. McNemar's exact test asks whether the beats that only one of them
gets right split more unevenly than a fair coin would. Se, +P and F1 are ratios whose beats are not
independent (beats of one patient look alike), so their changes get a percentile bootstrap interval that
resamples *records* with replacement: both runs see the same resampled records in each round.

Figures come from confusion matrices (rows = true class, columns = predicted class), so one resample
costs a matrix product: 48 records × 1,000 resamples take a few milliseconds (`python -m harness.gate.stats`
prints it; `make bench-gate`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
# Below this many records a bootstrap over records has too few distinct resamples to mean anything (3
# records give 10): the gate then resamples beats, which understates the uncertainty (beats of one patient
# are correlated), and says so in the outcome's reason.
MIN_RECORDS = 10
# A class found in fewer records than this has no between-record spread to estimate: its figures resample
# beats even when the run has many records.
MIN_CLASS_RECORDS = 5
DEFAULT_SEED = 20240  # fixed: the same runs always get the same interval, so the gate is reproducible
EXCLUDED_FROM_MACRO = ("Q",)  # AAMI: macro-F1 over N, S, V, F; Q (unclassifiable) is too rare to judge


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    `b` beats are right in the first run only, `c` in the second only. Under "no difference" each
    discordant beat is a fair coin: p = P(|X - n/2| ≥ |b - n/2|) for X ~ Binomial(n = b + c, 1/2), i.e.
    2 · P(X ≤ min(b, c)) capped at 1. Symmetric in b and c; 1.0 when nothing differs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be ≥ 0, got {b}, {c}")
    n, k = b + c, min(b, c)
    if n == 0 or 2 * k == n:
        return 1.0
    if n <= 20000:
        # Exact integer arithmetic: sum of C(n, i) for i ≤ k, divided by 2^(n-1).
        term, total = 1, 1
        for i in range(1, k + 1):
            term = term * (n - i + 1) // i
            total += term
        return min(1.0, total / (1 << (n - 1)))
    # Very long runs: the same sum in log space (lgamma), accurate to float precision.
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(v - top) for v in logs)) - (n - 1) * math.log(2)
    return min(1.0, math.exp(log_tail))


def confusion_by_record(true: np.ndarray, pred: np.ndarray, record_of_beat: np.ndarray, n_records: int,
                        n_labels: int) -> np.ndarray:
    """int64 [records, labels, labels] confusion per record; beats with true < 0 (no label) are left out."""
    keep = true >= 0
    flat = (record_of_beat[keep] * n_labels + true[keep]) * n_labels + pred[keep]
    counts = np.bincount(flat, minlength=n_records * n_labels * n_labels)
    return counts.reshape(n_records, n_labels, n_labels).astype(np.int64)


def figures(conf: np.ndarray, task: str, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Gated figures from confusion matrices [..., K, K] → {name: array[...]}, NaN where not defined.

    classifier: accuracy, macro_f1 (classes with support, Q left out), se_<c> and ppv_<c> per class.
    autoencoder (labels normal, abnormal): accuracy, se, sp, ppv, f1 with "abnormal" as positive.
    A class that has support but is never predicted has +P 0 here (not "undefined"): for a comparison,
    a class the model stopped predicting is the worst case, and its F1 is 0 anyway.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support = conf.sum(axis=-1)
    predicted = conf.sum(axis=-2)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, tp.sum(axis=-1) / total, np.nan)
        se = np.where(support > 0, tp / support, np.nan)
        ppv = np.where(support > 0, np.where(predicted > 0, tp / predicted, 0.0), np.nan)
        f1 = np.where(support > 0, 2 * tp / (support + predicted), np.nan)
    out = {"accuracy": accuracy}
    if task == "autoencoder":
        out.update(se=se[..., 1], sp=se[..., 0], ppv=ppv[..., 1], f1=f1[..., 1])
        return out
    in_macro = np.array([label not in EXCLUDED_FROM_MACRO for label in labels])
    with np.errstate(invalid="ignore"), _quiet():
        macro = np.nanmean(np.where(in_macro, f1, np.nan), axis=-1)
    out["macro_f1"] = macro
    for i, label in enumerate(labels):
        out[f"se_{label}"] = se[..., i]
        out[f"ppv_{label}"] = ppv[..., i]
    return out


class _quiet:
    """np.nanmean warns on all-NaN rows (a resample with no supported class); NaN is the right answer."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def resample_weights(n_records: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, records]: how often each record is drawn in each resample (records with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_records, size=(resamples, n_records))
    weights = np.zeros((resamples, n_records), dtype=np.float64)
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    return weights


def paired_bootstrap(old_conf: np.ndarray, new_conf: np.ndarray, task: str, labels: Sequence[str], *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     min_valid: float = 0.5) -> dict[str, tuple[float, float] | None]:
    """95 % interval of (new − old) for every figure, resampling records; both runs share each resample.

    `old_conf` and `new_conf` are per-record confusions [records, K, K] over the same beats. The interval
    is the 2.5th–97.5th percentile of the resampled differences, widened to include the observed
    difference when the resamples all fall on one side of it (with few records they can): the interval
    always covers what was measured. None when fewer than `min_valid` of the resamples define the figure
    (e.g. a class present in one record only).
    """
    old_conf = np.asarray(old_conf)
    new_conf = np.asarray(new_conf)
    if old_conf.shape != new_conf.shape or old_conf.ndim != 3:
        raise ValueError(f"per-record confusions must have the same shape [R, K, K], got {old_conf.shape} "
                         f"and {new_conf.shape}")
    n_records, k, _ = old_conf.shape
    weights = resample_weights(n_records, resamples, seed)
    old_b = (weights @ old_conf.reshape(n_records, k * k)).reshape(resamples, k, k)
    new_b = (weights @ new_conf.reshape(n_records, k * k)).reshape(resamples, k, k)
    old_point = figures(old_conf.sum(axis=0), task, labels)
    new_point = figures(new_conf.sum(axis=0), task, labels)
    return _intervals(old_point, new_point, figures(old_b, task, labels), figures(new_b, task, labels),
                      resamples, min_valid)


def paired_bootstrap_beats(true: np.ndarray, old_pred: np.ndarray, new_pred: np.ndarray, task: str,
                           labels: Sequence[str], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                           min_valid: float = 0.5) -> dict[str, tuple[float, float] | None]:
    """The same interval resampling beats instead of records (for runs over fewer than MIN_RECORDS records).

    Beats are exchangeable within a (true, old, new) cell, so drawing n beats with replacement is one
    multinomial draw over the K³ cells per resample: cheap for any n.
    """
    k = len(labels)
    keep = true >= 0
    cells = np.bincount((true[keep] * k + old_pred[keep]) * k + new_pred[keep], minlength=k ** 3)
    n = int(cells.sum())
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, cells / n, size=resamples).reshape(resamples, k, k, k)
    joint = cells.reshape(k, k, k)
    old_point, new_point = figures(joint.sum(axis=2), task, labels), figures(joint.sum(axis=1), task, labels)
    old_figs, new_figs = figures(draws.sum(axis=3), task, labels), figures(draws.sum(axis=2), task, labels)
    return _intervals(old_point, new_point, old_figs, new_figs, resamples, min_valid)


def _intervals(old_point, new_point, old_figs, new_figs, resamples: int, min_valid: float):
    out: dict[str, tuple[float, float] | None] = {}
    for name, old_values in old_figs.items():
        delta = new_figs[name] - old_values
        valid = delta[np.isfinite(delta)]
        point = float(new_point[name] - old_point[name])
        if len(valid) < min_valid * resamples or not math.isfinite(point):
            out[name] = None
            continue
        lo, hi = np.percentile(valid, [2.5, 97.5])
        out[name] = (min(float(lo), point), max(float(hi), point))
    return out


def _bench() -> None:
    """Print the gate's own cost: the bootstrap over 48 records × 1,000 resamples (goal < 2 s)."""
    rng = np.random.default_rng(1)
    labels = ["N", "S", "V", "F", "Q"]
    beats_per_record = 2300
    true = rng.choice(5, size=48 * beats_per_record, p=[0.89, 0.03, 0.065, 0.008, 0.007])
    old = np.where(rng.random(true.size) < 0.9, true, rng.integers(0, 5, true.size))
    new = np.where(rng.random(true.size) < 0.995, old, rng.integers(0, 5, true.size))
    record = np.repeat(np.arange(48), beats_per_record)
    t0 = time.perf_counter()
    old_c = confusion_by_record(true, old, record, 48, 5)
    new_c = confusion_by_record(true, new, record, 48, 5)
    cis = paired_bootstrap(old_c, new_c, "classifier", labels, resamples=DEFAULT_RESAMPLES)
    right_old, right_new = old == true, new == true
    p = mcnemar_exact(int(np.sum(right_old & ~right_new)), int(np.sum(~right_old & right_new)))
    elapsed = time.perf_counter() - t0
    print(f"gate statistics: {true.size:,} beats in 48 records, {DEFAULT_RESAMPLES} bootstrap resamples over "
          f"records, {len(cis)} figures + McNemar (p={p:.3g}): {elapsed * 1000:.1f} ms host wall "
          f"(goal < 2000 ms) -> {'OK' if elapsed < 2.0 else 'TOO SLOW'}")


if __name__ == "__main__":
    _bench()
