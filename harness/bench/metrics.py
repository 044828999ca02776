"""Figures computed from a run: classification quality (AAMI Se/+P), anomaly detection, latency statistics.

Pure functions over plain sequences (numpy only), so they can be checked by hand. Every ratio whose
denominator is zero is `None`, never NaN: results go to JSON, where NaN is not valid, and a reader must
see "not defined" rather than a number.

Vocabulary (AAMI EC57): Se = sensitivity = recall = TP / (TP + FN); +P = positive predictivity =
precision = TP / (TP + FP), here named `ppv`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LATENCY_STATS = ("min", "median", "p90", "p99", "max", "mean")


def _ratio(num: int | float, den: int | float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def classification(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class Se/+P/F1 and the confusion matrix of one classifier run.

    `labels` fixes the order of the confusion matrix (rows = true class, columns = predicted class).
    Every value of `y_true` and `y_pred` must be one of `labels`.

    `macro_f1` is the mean F1 over the labels that have support in `y_true` (at least one true beat):
    a class absent from the test records says nothing about the model, so it neither counts as 0 nor
    as 1. It is `None` when no label has support (empty run).

    Per class: `se` is None without support, `ppv` is None when the class was never predicted, `f1`
    (2·TP / (2·TP + FP + FN)) is None only when the class is neither present nor predicted.
    """
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} values but y_pred has {len(y_pred)}")
    index = {label: i for i, label in enumerate(labels)}
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"{name} holds {unknown}, which are not among the labels {labels}")

    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    if len(y_true):
        rows = np.fromiter((index[v] for v in y_true), dtype=np.int64, count=len(y_true))
        cols = np.fromiter((index[v] for v in y_pred), dtype=np.int64, count=len(y_pred))
        np.add.at(confusion, (rows, cols), 1)

    n = int(confusion.sum())
    correct = int(np.trace(confusion))
    per_class: dict[str, dict] = {}
    f1_supported: list[float] = []
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        support = int(confusion[i, :].sum())
        predicted = int(confusion[:, i].sum())
        fn = support - tp
        fp = predicted - tp
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        per_class[label] = {
            "se": _ratio(tp, support),
            "ppv": _ratio(tp, predicted),
            "f1": f1,
            "support": support,
            "predicted": predicted,
        }
        if support > 0:
            f1_supported.append(f1)  # support > 0 makes the denominator > 0

    return {
        "accuracy": _ratio(correct, n),
        "macro_f1": float(np.mean(f1_supported)) if f1_supported else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "labels": labels,
        "n": n,
    }


def latency(values_us: Sequence[float], warmup: int) -> dict:
    """Statistics of per-invoke times after dropping the first `warmup` values.

    The first invokes pay for caches and lazy allocation, so they are not the model's steady latency.
    Percentiles are numpy's default (linear interpolation); `median` is the 50th percentile.
    `warmup` in the result is the number of values actually dropped. The unit is whatever the input is
    (the same function serves µs and cycles). With nothing left after warm-up, `n` is 0 and every
    statistic is None.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be ≥ 0, got {warmup}")
    values = np.asarray(list(values_us), dtype=np.float64)
    dropped = min(warmup, len(values))
    kept = values[dropped:]
    if len(kept) == 0:
        return {"n": 0, "warmup": dropped, **{stat: None for stat in LATENCY_STATS}}
    if not np.all(np.isfinite(kept)):
        raise ValueError("latency values must be finite numbers")
    p50, p90, p99 = np.percentile(kept, [50, 90, 99])
    return {
        "n": int(len(kept)),
        "warmup": dropped,
        "min": float(kept.min()),
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(kept.max()),
        "mean": float(kept.mean()),
    }


HISTOGRAM_BINS = 40


def histogram(values: Sequence[float], warmup: int, bins: int = HISTOGRAM_BINS) -> dict:
    """Fixed-bin histogram of per-invoke values after dropping the first `warmup` (as `latency` does).

    {"edges": bins + 1 floats, "counts": bins ints, "n", "warmup"}: a compact stand-in for the per-beat
    list, enough to draw the spread. Equal values get one bin of width 1 centred on them; nothing left
    after warm-up gives empty lists.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be ≥ 0, got {warmup}")
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    values = np.asarray(list(values), dtype=np.float64)
    dropped = min(warmup, len(values))
    kept = values[dropped:]
    if len(kept) == 0:
        return {"edges": [], "counts": [], "n": 0, "warmup": dropped}
    if not np.all(np.isfinite(kept)):
        raise ValueError("histogram values must be finite numbers")
    low, high = float(kept.min()), float(kept.max())
    if low == high:
        counts, edges = np.array([len(kept)]), np.array([low - 0.5, high + 0.5])
    else:
        counts, edges = np.histogram(kept, bins=bins, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "n": int(len(kept)),
            "warmup": dropped}


def anomaly(errors: Sequence[float], is_normal: Sequence[bool], threshold: float) -> dict:
    """Detection figures of an autoencoder: a beat is called abnormal when its error > `threshold`.

    The positive class is "abnormal": `se` is the share of abnormal beats detected, `sp` the share of
    normal beats let through, `ppv` the share of alarms that were abnormal beats.
    `confusion` is [[TN, FP], [FN, TP]] (rows = true normal/abnormal, columns = called normal/abnormal).
    """
    if len(errors) != len(is_normal):
        raise ValueError(f"errors has {len(errors)} values but is_normal has {len(is_normal)}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    err = np.asarray(list(errors), dtype=np.float64)
    if not np.all(np.isfinite(err)):
        raise ValueError("reconstruction errors must be finite numbers")
    normal = np.asarray(list(is_normal), dtype=bool)
    called_abnormal = err > threshold
    abnormal = ~normal

    tp = int(np.sum(abnormal & called_abnormal))
    fn = int(np.sum(abnormal & ~called_abnormal))
    tn = int(np.sum(normal & ~called_abnormal))
    fp = int(np.sum(normal & called_abnormal))
    return {
        "threshold": float(threshold),
        "n": int(len(err)),
        "accuracy": _ratio(tp + tn, len(err)),
        "se": _ratio(tp, tp + fn),
        "sp": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "confusion": [[tn, fp], [fn, tp]],
    }


# Cycles vs wall time (bench): a beat whose device cycle count, turned into time at the HELLO clock, and the
# device's own timer around the same invoke differ by more than this is flagged. The timer also covers the
# input and output copies (a few µs) and has 1 µs resolution; a larger gap means the clock changed (DFS,
# light sleep), the counter wrapped, or the invoke ran on another core than the one counted.
CLOCK_MARGIN_REL = 0.05
CLOCK_MARGIN_US = 20.0


def clock_agreement(cycles: Sequence[float], wall_ns: Sequence[float], cpu_mhz: float, *,
                    rel: float = CLOCK_MARGIN_REL, abs_us: float = CLOCK_MARGIN_US) -> dict:
    """Per-beat check that cycles ÷ MHz agrees with the wall time of the same invoke.

    Returns {"compared": n, "flagged": k, "first_flagged": {"beat", "cycles_us", "wall_us"} | None,
    "max_gap_us", "margin": {"rel", "abs_us"}}. A beat is flagged when |wall − cycles/MHz| > abs_us +
    rel × cycles/MHz.
    """
    c = np.asarray(list(cycles), dtype=np.float64)
    w = np.asarray(list(wall_ns), dtype=np.float64) / 1e3
    n = min(len(c), len(w))
    out = {"compared": int(n), "flagged": 0, "first_flagged": None, "max_gap_us": None,
           "margin": {"rel": rel, "abs_us": abs_us}}
    if n == 0 or cpu_mhz <= 0:
        return out
    c_us = c[:n] / float(cpu_mhz)
    gap = np.abs(w[:n] - c_us)
    bad = np.flatnonzero(gap > abs_us + rel * c_us)
    out["flagged"] = int(len(bad))
    out["max_gap_us"] = float(gap.max())
    if len(bad):
        i = int(bad[0])
        out["first_flagged"] = {"beat": i, "cycles_us": float(c_us[i]), "wall_us": float(w[i])}
    return out
