"""Regression gate: compare a run with the committed Baseline of its device profile, or a candidate model
with the committed one, figure by figure, each comparison ending in one outcome.

Outcomes: `pass` (no change, or a real change smaller than the tolerance), `regressed`, `improved`,
`within_noise` (a change that chance explains) and `not_compared` (with the reason: no baseline for the
profile or model, another beat set, a figure the baseline lacks, another latency source, a run that
errored). Under `--gate strict` (CI) not_compared fails the run with the fix; by default it is a warning.
A figure the baseline has and the run lacks ("accuracy missing") is a regression in both modes.

Figures per task (`stats.figures`): classifier accuracy, macro-F1 over N, S, V, F, Se and +P of each class
with support; autoencoder Se, Sp, +P, F1 and accuracy at the model's threshold; conformance none. Every
task: bit-exactness (mismatching beats of verified beats; a partial run is never bit-exact), latency, arena
bytes, model bytes.

Decisions that know noise: accuracy figures are compared only on the same beat-set fingerprint
(harness/bench/beatset.py), paired beat by beat. Accuracy regresses only when the drop exceeds the tolerance and
McNemar's exact test says p < alpha; Se, +P, Sp, F1 and macro-F1 only when the drop exceeds the tolerance
and the 95 % bootstrap interval over records lies below zero. Device-cycle latency (p50 and p99) has a tight
relative tolerance. A static latency estimate (virtual board) is a cost-model figure, not a measurement: it
is gated loosely as its own metric `latency_estimate_p50_us` (it moves only when the model's MACs or the
profile's constants do) and never compared with device cycles.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import __version__
from ..bench import beatset
from . import stats
from ..errors import BaselineError
from ..report.outputs import atomic_write
from ..bench.results import LATENCY_SOURCES, TASKS, Result

BASELINE_SCHEMA = 2
DEFAULT_TOLERANCES = {
    "accuracy": 0.005,          # absolute drop allowed (and McNemar p < alpha needed to call it a regression)
    "macro_f1": 0.01,           # absolute drop allowed (and the bootstrap interval below 0)
    "class": 0.02,              # absolute drop allowed of per-class Se/+P, autoencoder Se/Sp/+P/F1
    "latency_p50": 0.02,        # relative rise allowed, device cycles
    "latency_p99": 0.05,        # relative rise allowed, device cycles
    "latency_estimate": 0.10,   # relative rise allowed of the static cost-model estimate
    "arena": 0.0,               # relative rise allowed of the tensor arena used
    "model_bytes": 0.0,         # relative rise allowed of the model file
}
DEFAULT_SIGNIFICANCE = {"alpha": 0.05, "resamples": stats.DEFAULT_RESAMPLES, "seed": stats.DEFAULT_SEED}
OUTCOMES = ("pass", "regressed", "improved", "within_noise", "not_compared")
MODES = ("warn", "strict")
# Float noise (0.9712 - 0.005 is 0.96619999…) must not turn a value exactly at the limit into a regression.
_EPS = 1e-9
_FIX = "fix or delete it and run with --update-baseline"
_ACCURACY_FIGURES = ("accuracy", "macro_f1", "se", "sp", "ppv", "f1")


def is_accuracy_figure(key: str) -> bool:
    """accuracy, macro_f1, se, sp, ppv, f1 and per-class se_<c>, ppv_<c>: compared only on the same beats."""
    return key in _ACCURACY_FIGURES or key.startswith(("se_", "ppv_"))


# -- outcomes ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One compared figure. `limit` is the worst new value the tolerance accepts (None when not compared)."""

    name: str           # <model>@<device>
    metric: str
    outcome: str
    old: Any = None
    new: Any = None
    limit: Any = None
    relation: str = ""  # how `new` must relate to `limit`: "≥", "≤" or "="
    p_value: float | None = None
    ci95: tuple[float, float] | None = None
    reason: str | None = None
    fix: str | None = None
    ci_unit: str | None = None  # what the bootstrap behind ci95 resampled: "records", or "beats (...)"

    @property
    def delta(self) -> float | None:
        if _is_number(self.old) and _is_number(self.new):
            return float(self.new) - float(self.old)
        return None

    def line(self) -> str:
        head = f"{self.name}: {self.metric}"
        if self.outcome == "not_compared":
            text = f"{head} not compared: {self.reason}"
            return text + (f" -- fix: {self.fix}" if self.fix else "")
        parts = []
        if self.delta is not None and self.delta != 0 and not self.metric.startswith("bit_exact"):
            parts.append(f"Δ {format_value(self.metric, self.delta, signed=True)}")
        if self.ci95 is not None:
            parts.append(f"95% CI [{format_value(self.metric, self.ci95[0], signed=True)}, "
                         f"{format_value(self.metric, self.ci95[1], signed=True)}]")
        if self.p_value is not None:
            parts.append(f"McNemar p {self.p_value:.2g}")
        if self.limit is not None:
            parts.append(f"limit {self.relation} {format_value(self.metric, self.limit)}")
        if self.reason:
            parts.append(self.reason)
        detail = f" ({'; '.join(parts)})" if parts else ""
        old, new = format_value(self.metric, self.old), format_value(self.metric, self.new)
        return f"{head} {old} → {new}{detail}: {self.outcome}"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "outcome": self.outcome, "old": self.old, "new": self.new,
                "limit": self.limit, "p_value": self.p_value,
                "ci95": None if self.ci95 is None else [self.ci95[0], self.ci95[1]],
                "reason": self.reason, "fix": self.fix, "ci_unit": self.ci_unit, "line": self.line()}


def format_value(metric: str, value: Any, signed: bool = False) -> str:
    """A figure as the gate prints it: ratios to 4 decimals, bytes as integers, µs to 0.1, None as missing."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if is_accuracy_figure(metric.split(" ")[0]) or metric == "accuracy_figures":
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and "bytes" in metric):
        return f"{int(value):+d}" if signed else str(int(value))
    return f"{value:+.1f}" if signed else f"{value:.1f}"


# -- one side of a comparison --------------------------------------------------------------------------------
@dataclass
class Side:
    """What a comparison needs from a run or a baseline entry."""

    task: str
    figures: dict[str, float | None]             # accuracy-type figures (stats.figures names)
    latency_source: str | None = None
    latency: dict[str, float | None] = field(default_factory=dict)   # p50_us, p99_us
    arena_used_bytes: int | None = None
    model_bytes: int | None = None
    verified: int | None = None
    total: int | None = None
    mismatching: int | None = None
    complete: bool = True
    fingerprint: str | None = None
    beat_set: dict | None = None
    per_beat: dict | None = None                 # plain strings (unpacked)
    model_sha256: str | None = None
    not_reported: tuple[str, ...] = ()          # figures the device's protocol has no way to report


def side_of_result(result: Result) -> Side:
    prov = result.provenance or {}
    per_beat = result.per_beat or None
    figures = _figures_from_per_beat(result.task, per_beat) if per_beat else _figures_from_accuracy(result)
    beat_set = prov.get("beat_set") or None
    return Side(
        task=result.task, figures=figures, latency_source=result.latency_source,
        latency={"p50_us": result.latency_us("median"), "p99_us": result.latency_us("p99")},
        arena_used_bytes=result.arena_used_bytes, model_bytes=(result.memory or {}).get("model_bytes"),
        verified=result.beats.get("verified"), total=result.beats.get("total"),
        mismatching=result.bit_exact.get("mismatching_beats"),
        complete=not result.partial and result.status != "error",
        fingerprint=(beat_set or {}).get("fingerprint"), beat_set=beat_set, per_beat=per_beat,
        model_sha256=prov.get("model_sha256"),
        # MLPerf Tiny's API reports no tensor arena (harness/boards/mlperf.py): absent by protocol, not lost.
        not_reported=("arena_used_bytes",) if prov.get("protocol") == "mlperf-tiny" else ())


def _figures_from_per_beat(task: str, per_beat: dict) -> dict[str, float | None]:
    decoded = _decode(per_beat)
    if decoded is None:
        return {}
    true, pred, _, labels = decoded
    keep = true >= 0
    k = len(labels)
    conf = np.bincount(true[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    figs = stats.figures(conf, task, labels)
    support = conf.sum(axis=1)
    out: dict[str, float | None] = {}
    for name, value in figs.items():
        if task == "classifier" and name[:3] in ("se_", "ppv") and support[labels.index(name.split("_", 1)[1])] == 0:
            continue  # only classes with support are gated
        out[name] = None if not np.isfinite(value) else float(value)
    return out


def _figures_from_accuracy(result: Result) -> dict[str, float | None]:
    """The same figures read from Result.accuracy, for results without per-beat data (unpaired)."""
    acc = result.accuracy or {}
    if result.task == "autoencoder":
        anomaly = acc.get("anomaly") or {}
        return {key: anomaly.get(key) for key in ("accuracy", "se", "sp", "ppv", "f1") if key in anomaly}
    if result.task != "classifier" or not acc:
        return {}
    out: dict[str, float | None] = {"accuracy": acc.get("accuracy")}
    per_class = acc.get("per_class") or {}
    f1s = [p.get("f1") for label, p in per_class.items()
           if (p.get("support") or 0) > 0 and label not in stats.EXCLUDED_FROM_MACRO]
    out["macro_f1"] = (float(np.mean([f or 0.0 for f in f1s])) if f1s else acc.get("macro_f1"))
    for label, p in per_class.items():
        if (p.get("support") or 0) > 0:
            out[f"se_{label}"] = p.get("se")
            out[f"ppv_{label}"] = p.get("ppv") if p.get("ppv") is not None else 0.0
    return out


def _decode(per_beat: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
    """per-beat strings → (true, pred, record index of each beat, labels); None when malformed."""
    try:
        labels = [str(x) for x in per_beat["labels"]]
        true_s, pred_s = per_beat["true"], per_beat["pred"]
        counts = [int(n) for _, n in per_beat["records"]]
        lut = np.full(256, -2, dtype=np.int64)
        lut[ord(beatset.NO_LABEL)] = -1
        for i in range(len(labels)):
            lut[ord(beatset.label_char(i))] = i
        true = lut[np.frombuffer(true_s.encode("ascii"), dtype=np.uint8)]
        pred = lut[np.frombuffer(pred_s.encode("ascii"), dtype=np.uint8)]
        if len(true) != len(pred) or len(true) != sum(counts) or (true < -1).any() or (pred < 0).any():
            return None
        records = np.repeat(np.arange(len(counts)), counts)
        return true, pred, records, labels
    except (KeyError, TypeError, ValueError, UnicodeEncodeError):
        return None


# -- comparing two sides ---------------------------------------------------------------------------------------
def compare(name: str, old: Side, new: Side, tolerances: dict[str, float] | None = None,
            significance: dict | None = None, *, old_label: str = "baseline",
            fix: str = "run with --update-baseline") -> list[Outcome]:
    """Every figure of `new` against `old`, one Outcome each (see the module docstring for the rules)."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    sig = {**DEFAULT_SIGNIFICANCE, **(significance or {})}
    out: list[Outcome] = []

    out.append(_bit_exact(name, new, _be_text(old.mismatching, old.verified)))
    if not new.complete:
        out.append(Outcome(name, "figures", "not_compared", reason="the run stopped early or errored: its "
                           "figures cover only part of the beats", fix="make the run complete"))
    else:
        out += _compare_accuracy(name, old, new, tol, sig, old_label, fix)
    out += _compare_latency(name, old, new, tol, old_label, fix)
    for metric, key, o, n in (("arena_used_bytes", "arena", old.arena_used_bytes, new.arena_used_bytes),
                              ("model_bytes", "model_bytes", old.model_bytes, new.model_bytes)):
        if n is None and metric in new.not_reported:
            out.append(Outcome(name, metric, "not_compared", o, None,
                               reason="the device's protocol does not report it (MLPerf Tiny)"))
            continue
        out.append(_deterministic(name, metric, o, n, tol[key], old_label, fix))
    return out


def _bit_exact(name: str, new: Side, old_text: str | None) -> Outcome:
    """Bit-exactness is absolute (every beat must match), so it is judged with or without a baseline."""
    new_text = _be_text(new.mismatching, new.verified)
    if not new.complete:
        done = f"{new.verified or 0} of {new.total}" if new.total else f"{new.verified or 0}"
        return Outcome(name, "bit_exact", "regressed", old_text, new_text, "0 of all", "=",
                       reason=f"incomplete: bit-exact on {done} beats at most, the rest never checked")
    if new.mismatching is None:
        return Outcome(name, "bit_exact", "regressed", old_text, None, reason="missing in this run")
    if new.mismatching > 0:
        return Outcome(name, "bit_exact", "regressed", old_text, new_text, f"0 of {new.verified}", "=")
    return Outcome(name, "bit_exact", "pass", old_text, new_text)


def _be_text(mismatching: int | None, verified: int | None) -> str | None:
    if mismatching is None or verified is None:
        return None
    return f"{mismatching} of {verified} differ"


def _compare_accuracy(name: str, old: Side, new: Side, tol: dict, sig: dict, old_label: str,
                      fix: str) -> list[Outcome]:
    metrics = list(old.figures) + [m for m in new.figures if m not in old.figures]
    if not metrics:
        return []
    if old.fingerprint is None or new.fingerprint is None or old.fingerprint != new.fingerprint:
        reason = (f"other beat set: {old_label} {_beat_set_text(old)}, this run {_beat_set_text(new)}"
                  if old.fingerprint and new.fingerprint else
                  f"no beat-set fingerprint in {'this run' if old.fingerprint else old_label}")
        return [Outcome(name, ",".join(metrics) if len(metrics) <= 3 else "accuracy_figures", "not_compared",
                        reason=reason, fix=f"run over the {old_label}'s beats, or {fix}")]

    paired = _paired(old, new, sig)
    out = []
    for metric in metrics:
        o, n = old.figures.get(metric), new.figures.get(metric)
        if metric not in old.figures:
            out.append(Outcome(name, metric, "not_compared", None, n, reason=f"not in the {old_label}",
                               fix=fix))
            continue
        if o is None:
            out.append(Outcome(name, metric, "not_compared", None, n, reason=f"not defined in the {old_label}",
                               fix=fix))
            continue
        if n is None:
            out.append(Outcome(name, metric, "regressed", o, None, reason="missing in this run"))
            continue
        key = metric if metric in ("accuracy", "macro_f1") else "class"
        limit = o - tol[key]
        delta = n - o
        p_value = ci = None
        if paired is not None:
            p_value = paired["p_value"] if metric == "accuracy" else None
            ci = paired["ci"].get(metric)
        outcome = _decide(delta, tol[key], metric, p_value, ci, sig["alpha"], paired is not None)
        if paired is None:
            reason = "unpaired (no per-beat data): tolerance only"
        else:
            unit = paired["units"].get(metric)
            reason = None if unit in (None, "records") else f"bootstrap over {unit}"
            if outcome == "within_noise":
                reason = "; ".join(filter(None, [reason, "the change could be chance"]))
        out.append(Outcome(name, metric, outcome, o, n, limit, "≥", p_value=p_value, ci95=ci, reason=reason,
                           ci_unit=None if ci is None else paired["units"].get(metric)))
    return out


def _decide(delta: float, tolerance: float, metric: str, p_value: float | None,
            ci: tuple[float, float] | None, alpha: float, paired: bool) -> str:
    if delta == 0:
        return "pass"
    if not paired:
        if delta < -tolerance - _EPS:
            return "regressed"
        return "improved" if delta > tolerance + _EPS else "pass"
    if metric == "accuracy":
        significant = p_value is not None and p_value < alpha
    else:
        significant = ci is not None and (ci[1] < 0 or ci[0] > 0)
    if not significant:
        return "within_noise"
    if delta < -tolerance - _EPS:
        return "regressed"
    if delta > tolerance + _EPS:
        return "improved"
    return "pass"  # a real change, smaller than the tolerance


def _paired(old: Side, new: Side, sig: dict) -> dict | None:
    """McNemar p on accuracy and bootstrap intervals of every figure; None without usable per-beat data."""
    if not old.per_beat or not new.per_beat:
        return None
    a, b = _decode(old.per_beat), _decode(new.per_beat)
    if a is None or b is None or a[3] != b[3] or len(a[0]) != len(b[0]) or not np.array_equal(a[0], b[0]) \
            or not np.array_equal(a[2], b[2]):
        return None
    true, old_pred, records, labels = a
    new_pred = b[1]
    keep = true >= 0
    right_old = (old_pred == true) & keep
    right_new = (new_pred == true) & keep
    only_old = int(np.sum(right_old & ~right_new))
    only_new = int(np.sum(~right_old & right_new))
    n_records = int(records.max()) + 1 if len(records) else 0
    k = len(labels)
    opts = {"resamples": int(sig["resamples"]), "seed": int(sig["seed"])}
    if n_records >= stats.MIN_RECORDS:
        old_conf = stats.confusion_by_record(true, old_pred, records, n_records, k)
        ci = stats.paired_bootstrap(old_conf, stats.confusion_by_record(true, new_pred, records, n_records, k),
                                    old.task, labels, **opts)
        units = {metric: "records" for metric in ci}
        with_support = (old_conf.sum(axis=2) > 0).sum(axis=0)  # records holding each class
        few = [metric for metric, interval in ci.items()
               if interval is None or _records_with(metric, old.task, labels, with_support, n_records)
               < stats.MIN_CLASS_RECORDS]
        if few:
            # A class present in a few records only: most record resamples lack it, so resample its beats.
            by_beats = stats.paired_bootstrap_beats(true, old_pred, new_pred, old.task, labels, **opts)
            for metric in few:
                ci[metric] = by_beats.get(metric)
                units[metric] = "beats (the class is in too few records)"
    else:
        ci = stats.paired_bootstrap_beats(true, old_pred, new_pred, old.task, labels, **opts)
        units = dict.fromkeys(ci, f"beats (only {n_records} record{'s' if n_records != 1 else ''})")
    return {"p_value": stats.mcnemar_exact(only_old, only_new), "ci": ci, "discordant": (only_old, only_new),
            "units": units}


def _records_with(metric: str, task: str, labels: list[str], with_support: np.ndarray, n_records: int) -> int:
    """How many records hold the class a figure's interval rests on (all records for accuracy, macro-F1)."""
    if task == "autoencoder" and metric in ("se", "sp", "ppv", "f1"):
        return int(with_support[0 if metric == "sp" else 1])
    if metric.startswith(("se_", "ppv_")):
        return int(with_support[labels.index(metric.split("_", 1)[1])])
    return n_records


def _beat_set_text(side: Side) -> str:
    bs = side.beat_set or {}
    records = ",".join(bs.get("records") or [])
    return f"{(side.fingerprint or '?')[:12]} ({bs.get('beats', '?')} beats of {records or '?'})"


def _compare_latency(name: str, old: Side, new: Side, tol: dict, old_label: str, fix: str) -> list[Outcome]:
    if old.latency_source is None and new.latency_source is None:
        return []
    if new.latency_source is None or new.latency.get("p50_us") is None:
        return [Outcome(name, "latency", "regressed", old.latency.get("p50_us"), None,
                        reason="missing in this run")]
    if old.latency_source is None:
        return [Outcome(name, "latency", "not_compared", None, new.latency.get("p50_us"),
                        reason=f"no latency in the {old_label}", fix=fix)]
    if old.latency_source != new.latency_source:
        return [Outcome(name, "latency", "not_compared", old.latency.get("p50_us"), new.latency.get("p50_us"),
                        reason=f"the {old_label} is {old.latency_source}, this run {new.latency_source} "
                               "(an estimate is never compared with a measurement)", fix=fix)]
    if new.latency_source == "static_estimate":
        return [_deterministic(name, "latency_estimate_p50_us", old.latency.get("p50_us"),
                               new.latency.get("p50_us"), tol["latency_estimate"], old_label, fix,
                               note="static cost-model estimate, not measured: gated loosely")]
    return [_deterministic(name, f"latency_{stat}_us", old.latency.get(f"{stat}_us"),
                           new.latency.get(f"{stat}_us"), tol[f"latency_{stat}"], old_label, fix,
                           note=f"measured: {new.latency_source}")
            for stat in ("p50", "p99")]


def _deterministic(name: str, metric: str, old: Any, new: Any, relative: float, old_label: str, fix: str,
                   note: str | None = None) -> Outcome:
    """Lower is better, relative tolerance, no sampling noise to speak of (bytes, cycles, estimates)."""
    if old is None and new is None:
        return Outcome(name, metric, "not_compared", reason="in neither run", fix=None)
    if new is None:
        return Outcome(name, metric, "regressed", old, None, reason="missing in this run")
    if old is None:
        return Outcome(name, metric, "not_compared", None, new, reason=f"not in the {old_label}", fix=fix)
    limit = old * (1.0 + relative)
    if isinstance(old, int) and float(limit).is_integer():
        limit = int(limit)
    if new > limit + _EPS:
        outcome = "regressed"
    elif new < old * (1.0 - relative) - _EPS or (relative == 0 and new < old):
        outcome = "improved"
    else:
        outcome = "pass"
    return Outcome(name, metric, outcome, old, new, limit, "≤", reason=note)


# -- a Result against a Baseline ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineEntry:
    """The accepted figures of one model on one device profile (see baselines/README.md)."""

    raw: dict

    @property
    def model_sha256(self) -> str:
        return str((self.raw.get("provenance") or {}).get("model_sha256") or "")

    def side(self) -> Side:
        raw = self.raw
        figs = raw.get("figures") or {}
        per_beat = raw.get("per_beat")
        if per_beat:
            try:
                per_beat = {**per_beat, "true": beatset.unpack(per_beat["true"]),
                            "pred": beatset.unpack(per_beat["pred"])}
            except (KeyError, ValueError, TypeError):
                per_beat = None
        be = raw.get("bit_exact") or {}
        beat_set = raw.get("beat_set") or None
        return Side(
            task=raw.get("task", "classifier"),
            figures={k: v for k, v in figs.items() if is_accuracy_figure(k)},
            latency_source=raw.get("latency_source"),
            latency={"p50_us": figs.get("latency_p50_us"), "p99_us": figs.get("latency_p99_us")},
            arena_used_bytes=figs.get("arena_used_bytes"), model_bytes=figs.get("model_bytes"),
            verified=be.get("verified"), total=be.get("verified"), mismatching=be.get("mismatching_beats"),
            complete=True, fingerprint=(beat_set or {}).get("fingerprint"), beat_set=beat_set,
            per_beat=per_beat, model_sha256=self.model_sha256)


@dataclass(frozen=True)
class Baseline:
    path: Path
    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    significance: dict = field(default_factory=lambda: dict(DEFAULT_SIGNIFICANCE))
    models: dict[str, BaselineEntry] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": BASELINE_SCHEMA, "tolerances": dict(self.tolerances),
                "significance": dict(self.significance),
                "models": {name: self.models[name].raw for name in sorted(self.models)}}


def profile_fix(profile: str) -> str:
    target = "" if profile == "virtual" else f" --target {profile}"
    return f"run with --update-baseline{target} and commit baselines/{profile}.json"


def check(result: Result, baseline: Baseline | None, *, alpha: float | None = None) -> list[Outcome]:
    """Every figure of `result` against its model's entry in `baseline` (None: no file for the profile)."""
    name = result.name
    fix = profile_fix(result.profile)
    if baseline is None:
        return [_bit_exact(name, side_of_result(result), None),
                Outcome(name, "baseline", "not_compared", reason=f"no baseline for profile {result.profile}",
                        fix=fix)]
    entry = baseline.models.get(result.model)
    if entry is None:
        return [_bit_exact(name, side_of_result(result), None),
                Outcome(name, "baseline", "not_compared",
                        reason=f"no baseline for model {result.model} in {baseline.path}", fix=fix)]
    significance = dict(baseline.significance)
    if alpha is not None:
        significance["alpha"] = alpha
    outcomes = compare(name, entry.side(), side_of_result(result), baseline.tolerances, significance, fix=fix)
    sha = result.provenance.get("model_sha256")
    if sha and entry.model_sha256 and sha != entry.model_sha256:
        # Not a figure: said once, on the bit-exactness line, so a reader knows the model itself changed.
        outcomes[0].reason = ((outcomes[0].reason + "; ") if outcomes[0].reason else "") + \
            f"model changed since the baseline (sha256 {entry.model_sha256[:12]} → {sha[:12]})"
    return outcomes


def compare_candidate(candidate: Result, committed: Result | None, *, alpha: float | None = None,
                      tolerances: dict | None = None) -> list[Outcome]:
    """A candidate model against the committed one, run in the same session over the same beats."""
    name = candidate.name
    if committed is None:
        return [Outcome(name, "committed_model", "not_compared",
                        reason="the committed model did not run on this board", fix="run both in one session")]
    significance = dict(DEFAULT_SIGNIFICANCE)
    if alpha is not None:
        significance["alpha"] = alpha
    old = side_of_result(committed)
    if not old.complete:
        return [Outcome(name, "committed_model", "not_compared",
                        reason=f"the committed model's run is incomplete ({committed.bit_exact_summary})",
                        fix="run again")]
    return compare(name, old, side_of_result(candidate), tolerances, significance, old_label="committed model",
                   fix="give the candidate the committed model's window and labels")


def apply(result: Result, outcomes: list[Outcome], *, mode: str = "warn", candidate: bool = False) -> None:
    """Store the outcomes on `result`; a regression (or, in strict mode, a not_compared) fails a passing run."""
    result.gate = [o.to_dict() for o in outcomes]
    regressed = [o for o in outcomes if o.outcome == "regressed"]
    result.regressions = [o.line() for o in regressed]
    if result.status != "pass":
        return
    if regressed:
        more = f" (+{len(regressed) - 1} more)" if len(regressed) > 1 else ""
        if candidate:
            result.failure = {"kind": "regression", "code": "HIL511",
                              "message": f"HIL511 the candidate is worse than the committed model: "
                                         f"{regressed[0].line()}{more} -- fix: keep the committed model, or "
                                         "improve the candidate (paired table: compare.md)"}
        else:
            result.failure = {"kind": "regression", "code": "HIL510",
                              "message": f"HIL510 regression: {regressed[0].line()}{more} -- fix: find the "
                                         "cause, or accept the new figures with --update-baseline"}
        result.status = "fail"
        return
    unchecked = [o for o in outcomes if o.outcome == "not_compared" and o.fix]
    if mode == "strict" and unchecked:
        first = unchecked[0]
        more = f" (+{len(unchecked) - 1} more)" if len(unchecked) > 1 else ""
        result.failure = {"kind": "regression", "code": "HIL512",
                          "message": f"HIL512 --gate strict: {first.name}: {first.metric} not compared: "
                                     f"{first.reason}{more} -- fix: {first.fix}"}
        result.status = "fail"


def summary_lines(result: Result) -> list[str]:
    """One line per non-pass outcome of a result (for the session summary)."""
    return [str(g.get("line")) for g in result.gate if g.get("outcome") != "pass"]


# -- loading ---------------------------------------------------------------------------------------------
def load_baseline(path: str | os.PathLike) -> Baseline | None:
    """Read and validate a baseline file; None when it does not exist (first run of a profile)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc.strerror}", _FIX, code="HIL611") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BaselineError(f"baseline {path}{where}: not valid JSON", _FIX, code="HIL611") from None
    return _validate(raw, path)


def _validate(raw: Any, path: Path) -> Baseline:
    def fail(key: str, why: str) -> BaselineError:
        return BaselineError(f"baseline {path}: key '{key}' {why}", _FIX, code="HIL611")

    if not isinstance(raw, dict):
        raise fail("(top level)", f"must be a JSON object, got {type(raw).__name__}")
    for key in ("schema", "tolerances", "models"):
        if key not in raw:
            raise fail(key, "is missing")
    if raw["schema"] != BASELINE_SCHEMA:
        raise fail("schema", f"is {raw['schema']!r}, this harness reads {BASELINE_SCHEMA}")
    unknown = sorted(set(raw) - {"schema", "tolerances", "significance", "models"})
    if unknown:
        raise fail(unknown[0], "is not a baseline key")

    tol_raw = raw["tolerances"]
    if not isinstance(tol_raw, dict):
        raise fail("tolerances", "must be an object")
    unknown = sorted(set(tol_raw) - set(DEFAULT_TOLERANCES))
    if unknown:
        raise fail(f"tolerances.{unknown[0]}", f"is not a tolerance (known: {', '.join(DEFAULT_TOLERANCES)})")
    tolerances = {}
    for key in DEFAULT_TOLERANCES:
        if key not in tol_raw:
            raise fail(f"tolerances.{key}", "is missing")
        value = tol_raw[key]
        if not _is_number(value) or value < 0:
            raise fail(f"tolerances.{key}", f"must be a number ≥ 0, got {value!r}")
        tolerances[key] = float(value)

    sig_raw = raw.get("significance", {})
    if not isinstance(sig_raw, dict):
        raise fail("significance", "must be an object")
    unknown = sorted(set(sig_raw) - set(DEFAULT_SIGNIFICANCE))
    if unknown:
        raise fail(f"significance.{unknown[0]}", f"is not a setting (known: {', '.join(DEFAULT_SIGNIFICANCE)})")
    significance = {**DEFAULT_SIGNIFICANCE, **sig_raw}
    if not _is_number(significance["alpha"]) or not 0 < significance["alpha"] < 1:
        raise fail("significance.alpha", f"must be a number in (0, 1), got {significance['alpha']!r}")
    for key in ("resamples", "seed"):
        value = significance[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (100 if key == "resamples" else 0):
            raise fail(f"significance.{key}", f"must be an integer ≥ {100 if key == 'resamples' else 0}, "
                                               f"got {value!r}")

    models_raw = raw["models"]
    if not isinstance(models_raw, dict):
        raise fail("models", "must be an object keyed by model name")
    models = {name: _entry(entry, f"models.{name}", fail) for name, entry in models_raw.items()}
    return Baseline(path=path, tolerances=tolerances, significance=significance, models=models)


_ENTRY_KEYS = ("task", "figures", "latency_source", "bit_exact", "beat_set", "per_beat", "provenance")


def _entry(raw: Any, where: str, fail) -> BaselineEntry:
    if not isinstance(raw, dict):
        raise fail(where, "must be an object")
    for key in ("task", "figures", "latency_source", "bit_exact", "provenance"):
        if key not in raw:
            raise fail(f"{where}.{key}", "is missing")
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    if unknown:
        raise fail(f"{where}.{unknown[0]}", "is not a baseline field")
    if raw["task"] not in TASKS:
        raise fail(f"{where}.task", f"must be one of {', '.join(TASKS)}, got {raw['task']!r}")
    figs = raw["figures"]
    if not isinstance(figs, dict):
        raise fail(f"{where}.figures", "must be an object")
    for key, value in figs.items():
        if is_accuracy_figure(key):
            if value is not None and (not _is_number(value) or not 0.0 <= value <= 1.0):
                raise fail(f"{where}.figures.{key}", f"must be a number in [0, 1] or null, got {value!r}")
        elif key in ("arena_used_bytes", "model_bytes"):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise fail(f"{where}.figures.{key}", f"must be an integer ≥ 0 or null, got {value!r}")
        elif key in ("latency_p50_us", "latency_p99_us"):
            if value is not None and (not _is_number(value) or value < 0):
                raise fail(f"{where}.figures.{key}", f"must be a number ≥ 0 or null, got {value!r}")
        else:
            raise fail(f"{where}.figures.{key}", "is not a gated figure")
    source = raw["latency_source"]
    if source is not None and source not in LATENCY_SOURCES:
        raise fail(f"{where}.latency_source", f"must be one of {', '.join(LATENCY_SOURCES)} or null, got {source!r}")
    if figs.get("latency_p50_us") is not None and source is None:
        raise fail(f"{where}.latency_source", "is null but latency_p50_us is set: a latency needs its source")
    be = raw["bit_exact"]
    if not isinstance(be, dict) or not isinstance(be.get("verified"), int) \
            or not isinstance(be.get("mismatching_beats"), int):
        raise fail(f"{where}.bit_exact", "must be {\"verified\": int, \"mismatching_beats\": int}")
    bs = raw.get("beat_set")
    if bs is not None and (not isinstance(bs, dict) or not isinstance(bs.get("fingerprint"), str)):
        raise fail(f"{where}.beat_set", "must be an object with a 'fingerprint' string or null")
    pb = raw.get("per_beat")
    if pb is not None:
        if not isinstance(pb, dict) or any(k not in pb for k in ("labels", "records", "true", "pred")):
            raise fail(f"{where}.per_beat", "must have labels, records, true and pred")
        try:
            unpacked = {**pb, "true": beatset.unpack(pb["true"]), "pred": beatset.unpack(pb["pred"])}
        except (ValueError, TypeError, AttributeError, Exception):  # noqa: BLE001 - zlib.error, binascii.Error
            raise fail(f"{where}.per_beat", "holds strings that are not zlib+base64") from None
        if _decode(unpacked) is None:
            raise fail(f"{where}.per_beat", "does not match its labels and record counts")
    if not isinstance(raw["provenance"], dict):
        raise fail(f"{where}.provenance", "must be an object")
    return BaselineEntry(raw=raw)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- updating ----------------------------------------------------------------------------------------------
def refusal(result: Result) -> str | None:
    """Why `result` must not become a baseline, or None when it may."""
    if result.partial:
        return f"{result.name}: refused: the run is incomplete ({result.bit_exact_summary})"
    if result.is_bit_exact is not True:
        return f"{result.name}: refused: not bit-exact ({result.bit_exact_summary})"
    gated_only = result.status == "fail" and (result.failure or {}).get("kind") == "regression"
    if result.status != "pass" and not gated_only:
        return f"{result.name}: refused: the run did not pass ({result.failure_line or result.status})"
    return None


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the repository the harness runs from, with '+dirty' for uncommitted changes; None outside git."""
    repo = repo or Path(__file__).resolve().parent.parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def entry_from(result: Result, *, commit: str | None = None) -> dict:
    """The baseline entry of a complete, bit-exact run (raw JSON dict)."""
    side = side_of_result(result)
    figures: dict[str, Any] = dict(side.figures)
    source = result.latency_source
    figures["latency_p50_us"] = _round(side.latency.get("p50_us"))
    figures["latency_p99_us"] = _round(side.latency.get("p99_us")) if source == "device_cycles" else None
    figures["arena_used_bytes"] = None if side.arena_used_bytes is None else int(side.arena_used_bytes)
    figures["model_bytes"] = None if side.model_bytes is None else int(side.model_bytes)
    per_beat = None
    if result.per_beat:
        per_beat = {"labels": result.per_beat["labels"], "records": result.per_beat["records"],
                    "encoding": "zlib+base64", "true": beatset.pack(result.per_beat["true"]),
                    "pred": beatset.pack(result.per_beat["pred"])}
    beat_set = result.provenance.get("beat_set")
    date = result.provenance.get("finished_at") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "task": result.task,
        "figures": figures,
        "latency_source": source if figures["latency_p50_us"] is not None else None,
        "bit_exact": {"verified": int(side.verified or 0), "mismatching_beats": int(side.mismatching or 0)},
        "beat_set": beat_set,
        "per_beat": per_beat,
        "provenance": {
            "model_sha256": result.provenance.get("model_sha256"),
            "harness_version": result.provenance.get("harness_version") or __version__,
            "git_commit": commit, "date": str(date),
            "beat_set": (beat_set or {}).get("fingerprint"),
            "device": result.device, "firmware": result.provenance.get("firmware"),
            "reference": (result.provenance.get("reference") or {}).get("name"),
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def changes(old: dict | None, new: dict, name: str) -> list[str]:
    """'old → new' per figure between two baseline entries, for --update-baseline's printout."""
    if old is None:
        return [f"{name}: new entry ({len(new['figures'])} figures)"]
    lines = []
    of, nf = old.get("figures") or {}, new["figures"]
    for key in list(of) + [k for k in nf if k not in of]:
        a, b = of.get(key), nf.get(key)
        if a != b:
            lines.append(f"{name}: {key} {format_value(key, a)} → {format_value(key, b)}")
    if (old.get("beat_set") or {}).get("fingerprint") != (new.get("beat_set") or {}).get("fingerprint"):
        lines.append(f"{name}: beat set {((old.get('beat_set') or {}).get('fingerprint') or '?')[:12]} → "
                     f"{((new.get('beat_set') or {}).get('fingerprint') or '?')[:12]}")
    old_sha = (old.get("provenance") or {}).get("model_sha256") or ""
    new_sha = new["provenance"].get("model_sha256") or ""
    if old_sha != new_sha:
        lines.append(f"{name}: model sha256 {old_sha[:12]} → {new_sha[:12]}")
    return lines or [f"{name}: figures unchanged (provenance updated)"]


def update_baseline(path: str | os.PathLike, results: list[Result]) -> tuple[list[str], list[str]]:
    """Rewrite the entries of these results' models in `path`, keeping other models and the settings.

    Only complete, bit-exact runs are written (status pass, or failed by the gate alone); the others are
    refused with a reason. If a model appears several times, the last result wins. Returns (lines saying
    old → new per figure, refusal lines). Written atomically; a malformed existing file raises BaselineError
    rather than being overwritten.
    """
    path = Path(path)
    profiles = sorted({r.profile for r in results})
    if len(profiles) > 1:
        raise ValueError(f"one baseline file holds one device profile; got results of {profiles}")
    current = load_baseline(path) or Baseline(path=path)
    models = dict(current.models)
    lines: list[str] = []
    refused: list[str] = []
    commit = git_commit()
    written = False
    for result in results:
        why = refusal(result)
        if why:
            refused.append(why)
            continue
        new = entry_from(result, commit=commit)
        old = models.get(result.model)
        lines += changes(old.raw if old else None, new, result.model)
        models[result.model] = BaselineEntry(raw=new)
        written = True
    if written:
        document = Baseline(path=path, tolerances=current.tolerances, significance=current.significance,
                            models=models).to_dict()

        def write(fh: IO[bytes]) -> None:
            fh.write((json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))

        atomic_write(path, write)
    return lines, refused
