"""Regression gate: compare a run's Result with the committed Baseline of its device profile.

A baseline is `baselines/<profile>.json` (format in baselines/README.md): tolerances plus, per model, the
figures of the last accepted run. `check` turns every figure that got worse than its tolerance allows into
a `Regression` with a one-line explanation; `update_baseline` accepts new figures (--update-baseline).

Latency is compared only between numbers of the same source: a static cost-model estimate is never
compared with measured device cycles (`explain` says which comparisons were skipped and why).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from .errors import BaselineError
from .report import atomic_write
from .results import LATENCY_SOURCES, Result

BASELINE_SCHEMA = 1
DEFAULT_TOLERANCES = {
    "accuracy": 0.005,     # absolute drop allowed
    "macro_f1": 0.01,      # absolute drop allowed
    "latency_p50": 0.05,   # relative rise allowed
    "arena": 0.0,          # relative rise allowed
}
# Float noise (0.9712 - 0.005 is 0.96619999…) must not turn a value exactly at the limit into a regression.
_EPS = 1e-9
_FIX = "fix or delete it and run with --update-baseline"


@dataclass(frozen=True)
class BaselineEntry:
    """The accepted figures of one model on one device profile."""

    accuracy: float | None
    macro_f1: float | None
    latency_p50_us: float | None
    latency_source: str | None
    arena_used_bytes: int | None
    bit_exact: bool
    model_sha256: str
    updated_at: str
    dataset: str  # the beats the figures came from, e.g. "213,232,233"; accuracy only compares on the same

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy, "macro_f1": self.macro_f1, "latency_p50_us": self.latency_p50_us,
            "latency_source": self.latency_source, "arena_used_bytes": self.arena_used_bytes,
            "bit_exact": self.bit_exact, "model_sha256": self.model_sha256, "updated_at": self.updated_at,
            "dataset": self.dataset,
        }


@dataclass(frozen=True)
class Baseline:
    path: Path
    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    models: dict[str, BaselineEntry] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema": BASELINE_SCHEMA,
            "tolerances": dict(self.tolerances),
            "models": {name: self.models[name].to_dict() for name in sorted(self.models)},
        }


@dataclass(frozen=True)
class Regression:
    """One figure that got worse than allowed: `limit` is the worst value the tolerance accepts."""

    name: str           # <model>@<device>
    metric: str
    old: Any
    new: Any
    limit: Any
    relation: str       # how `new` must relate to `limit`: "≥", "≤" or "="

    def line(self) -> str:
        return (f"{self.name}: {self.metric} {_fmt(self.metric, self.old)} → {_fmt(self.metric, self.new)} "
                f"(limit {self.relation} {_fmt(self.metric, self.limit)})")


def _fmt(metric: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and metric in ("accuracy", "macro_f1"):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# -- loading -----------------------------------------------------------------------------------------------
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

    models_raw = raw["models"]
    if not isinstance(models_raw, dict):
        raise fail("models", "must be an object keyed by model name")
    models = {name: _entry(entry, f"models.{name}", fail) for name, entry in models_raw.items()}
    return Baseline(path=path, tolerances=tolerances, models=models)


def _entry(raw: Any, where: str, fail) -> BaselineEntry:
    if not isinstance(raw, dict):
        raise fail(where, "must be an object")
    keys = ("accuracy", "macro_f1", "latency_p50_us", "latency_source", "arena_used_bytes", "bit_exact",
            "model_sha256", "updated_at", "dataset")
    for key in keys:
        if key not in raw:
            raise fail(f"{where}.{key}", "is missing")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise fail(f"{where}.{unknown[0]}", "is not a baseline field")

    for key in ("accuracy", "macro_f1"):
        value = raw[key]
        if value is not None and (not _is_number(value) or not 0.0 <= value <= 1.0):
            raise fail(f"{where}.{key}", f"must be a number in [0, 1] or null, got {value!r}")
    latency = raw["latency_p50_us"]
    if latency is not None and (not _is_number(latency) or latency < 0):
        raise fail(f"{where}.latency_p50_us", f"must be a number ≥ 0 or null, got {latency!r}")
    source = raw["latency_source"]
    if source is not None and source not in LATENCY_SOURCES:
        raise fail(f"{where}.latency_source", f"must be one of {', '.join(LATENCY_SOURCES)} or null, got {source!r}")
    if latency is not None and source is None:
        raise fail(f"{where}.latency_source", "is null but latency_p50_us is set: a latency needs its source")
    arena = raw["arena_used_bytes"]
    if arena is not None and (not isinstance(arena, int) or isinstance(arena, bool) or arena < 0):
        raise fail(f"{where}.arena_used_bytes", f"must be an integer ≥ 0 or null, got {arena!r}")
    if not isinstance(raw["bit_exact"], bool):
        raise fail(f"{where}.bit_exact", f"must be true or false, got {raw['bit_exact']!r}")
    for key in ("model_sha256", "updated_at", "dataset"):
        if not isinstance(raw[key], str):
            raise fail(f"{where}.{key}", f"must be a string, got {raw[key]!r}")
    return BaselineEntry(
        accuracy=None if raw["accuracy"] is None else float(raw["accuracy"]),
        macro_f1=None if raw["macro_f1"] is None else float(raw["macro_f1"]),
        latency_p50_us=None if latency is None else float(latency),
        latency_source=source, arena_used_bytes=arena, bit_exact=raw["bit_exact"],
        model_sha256=raw["model_sha256"], updated_at=raw["updated_at"], dataset=raw["dataset"])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def dataset(result: Result) -> str:
    """Which beats a result's accuracy covers: the records, and the beat limit when one was given."""
    records = ",".join(result.provenance.get("records") or [])
    limit = result.provenance.get("max_beats")
    return f"{records}[:{limit}]" if limit else records


# -- checking ----------------------------------------------------------------------------------------------
def _comparable(result: Result) -> bool:
    # An errored or cut-short run has figures over part of the beats (or none): comparing them would
    # report noise as regressions on top of the real error.
    return result.status != "error" and not result.partial


def check(result: Result, baseline: Baseline) -> list[Regression]:
    """Every figure of `result` that is worse than `baseline` allows. No entry for the model → []."""
    entry = baseline.models.get(result.model)
    if entry is None or not _comparable(result):
        return []
    tol = baseline.tolerances
    name = result.name
    found: list[Regression] = []

    if entry.bit_exact and result.is_bit_exact is False:
        found.append(Regression(name, "bit_exact", True, False, True, "="))

    for metric, new in (("accuracy", result.accuracy_value), ("macro_f1", result.macro_f1_value)):
        old = getattr(entry, metric)
        if old is None or new is None or dataset(result) != entry.dataset:
            continue
        limit = old - tol[metric]
        if new < limit - _EPS:
            found.append(Regression(name, metric, old, float(new), limit, "≥"))

    new_latency = result.latency_us("median")
    if (entry.latency_p50_us is not None and new_latency is not None
            and entry.latency_source == result.latency_source):
        limit = entry.latency_p50_us * (1.0 + tol["latency_p50"])
        if new_latency > limit + _EPS:
            found.append(Regression(name, f"latency_p50_us ({result.latency_source})", entry.latency_p50_us,
                                    float(new_latency), limit, "≤"))

    new_arena = result.arena_used_bytes
    if entry.arena_used_bytes is not None and new_arena is not None:
        limit_bytes = entry.arena_used_bytes * (1.0 + tol["arena"])
        if new_arena > limit_bytes + _EPS:
            limit = int(limit_bytes) if float(limit_bytes).is_integer() else limit_bytes
            found.append(Regression(name, "arena_used_bytes", entry.arena_used_bytes, int(new_arena), limit, "≤"))
    return found


def explain(result: Result, baseline: Baseline | None) -> list[str]:
    """One line per comparison `check` did not make, and why (for the session summary)."""
    name = result.name
    if baseline is None:
        return [f"{name}: no baseline file for profile {result.profile}; run with --update-baseline to create it"]
    entry = baseline.models.get(result.model)
    if entry is None:
        return [f"{name}: no baseline for model {result.model} in {baseline.path}; "
                "run with --update-baseline to add it"]
    if result.status == "error":
        return [f"{name}: not compared with the baseline: the run ended in an error"]
    if result.partial:
        return [f"{name}: not compared with the baseline: the run stopped early (partial figures)"]
    notes = []
    if dataset(result) != entry.dataset:
        notes.append(f"{name}: accuracy and macro-F1 not compared: baseline beats are {entry.dataset}, "
                     f"this run's are {dataset(result)}")
    sha = result.provenance.get("model_sha256")
    if sha and entry.model_sha256 and sha != entry.model_sha256:
        notes.append(f"{name}: model changed since the baseline (sha256 {entry.model_sha256[:12]} → {sha[:12]}); "
                     "figures compared anyway")
    if entry.latency_p50_us is not None and result.latency_us("median") is not None \
            and entry.latency_source != result.latency_source:
        notes.append(f"{name}: latency not compared: baseline is {entry.latency_source}, this run is "
                     f"{result.latency_source} (an estimate is never compared with a measurement)")
    for metric, new, old in (("accuracy", result.accuracy_value, entry.accuracy),
                             ("macro_f1", result.macro_f1_value, entry.macro_f1),
                             ("latency_p50_us", result.latency_us("median"), entry.latency_p50_us),
                             ("arena_used_bytes", result.arena_used_bytes, entry.arena_used_bytes)):
        if (old is None) != (new is None):
            missing = "baseline" if old is None else "this run"
            notes.append(f"{name}: {metric} not compared: no value in {missing}")
    return notes


def apply(result: Result, regressions: list[Regression]) -> None:
    """Store the regression lines on `result`; a passing run with regressions becomes a failure."""
    result.regressions = [r.line() for r in regressions]
    if regressions and result.status == "pass":
        count = f" (+{len(regressions) - 1} more)" if len(regressions) > 1 else ""
        result.failure = {"kind": "regression", "code": "HIL510",
                          "message": f"HIL510 regression: {regressions[0].line()}{count} "
                                     "-- fix: find the cause, or accept the new figures with --update-baseline"}
        result.status = "fail"


# -- updating ----------------------------------------------------------------------------------------------
def _acceptable(result: Result) -> bool:
    # A run that failed only because of the gate is exactly what --update-baseline is meant to accept.
    gated_only = result.status == "fail" and (result.failure or {}).get("kind") == "regression"
    return (result.status == "pass" or gated_only) and not result.partial


def update_baseline(path: str | os.PathLike, results: list[Result]) -> list[str]:
    """Rewrite the entries of these results' models in `path`, keeping other models and the tolerances.

    Only complete runs are accepted: status pass (or failed by the gate alone) and not partial. If a model
    appears several times, the last result wins. Returns the model names written. The file is written
    atomically; a malformed existing file raises BaselineError rather than being overwritten.
    """
    path = Path(path)
    profiles = sorted({r.profile for r in results})
    if len(profiles) > 1:
        raise ValueError(f"one baseline file holds one device profile; got results of {profiles}")
    current = load_baseline(path) or Baseline(path=path)
    models = dict(current.models)
    written = []
    for result in results:
        if not _acceptable(result):
            continue
        models[result.model] = _entry_from(result)
        if result.model not in written:
            written.append(result.model)
    if not written:
        return []
    document = Baseline(path=path, tolerances=current.tolerances, models=models).to_dict()

    def write(fh: IO[bytes]) -> None:
        fh.write((json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))

    atomic_write(path, write)
    return written


def _entry_from(result: Result) -> BaselineEntry:
    latency = result.latency_us("median")
    arena = result.arena_used_bytes
    updated = result.provenance.get("finished_at") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return BaselineEntry(
        accuracy=result.accuracy_value,
        macro_f1=result.macro_f1_value,
        latency_p50_us=None if latency is None else round(float(latency), 3),
        latency_source=result.latency_source if latency is not None else None,
        arena_used_bytes=None if arena is None else int(arena),
        bit_exact=bool(result.is_bit_exact),
        model_sha256=str(result.provenance.get("model_sha256") or ""),
        updated_at=str(updated),
        dataset=dataset(result),
    )
