"""The Result of one (model × device) bench run: verdict, figures with their source, and provenance.

`harness/bench/run.py` fills a `Result`; the report writers, the regression gate and the pytest plugin only
read it. It is plain data (dicts of numbers and strings) so it round-trips through JSON unchanged
(`to_dict` / `from_dict`), and `figures()` flattens it into named values whose names say where each number
came from (`..._device_cycles`, `..._static_estimate`, `..._host_wall`).

Shape of each block (keys absent or None when unknown):

- beats: {"total", "verified", "skipped_edge"}
- bit_exact: {"exact" (true only when every planned beat was verified and none differed: a partial run is
  never bit-exact), "summary" (e.g. "bit-exact on 30 of 100 beats, incomplete"), "mismatching_beats",
  "max_abs_diff", "first_mismatch": {"beat", "record", "sample", "symbol", "output_index", "device",
  "reference", "window": {"start", "end", "channel"}} | None, "reference", "cross_check": {"reference",
  "mismatching_beats", "max_abs_diff", "verdict"} | None, "localisation": localize.Localisation.to_dict()
  (or {"error", "summary"} when it failed), only on a mismatch}
- accuracy: metrics.classification(...) for classifiers; {"anomaly": metrics.anomaly(...), "mean_error"}
  for autoencoders
- latency: {"source": "device_cycles" | "static_estimate" | "host_clock" | "device_timer", "cpu_mhz" (0: no
  meaningful clock, then "us" is None), "rule": "per-beat",
  "cycles": metrics.latency(...),
  "us": metrics.latency(...), "clock_check": metrics.clock_agreement(...) + {"source"} (beats whose
  cycles ÷ MHz and device wall time disagree beyond the margin: preemption on another core, clock change,
  counter wrap), or {"compared": 0, "reason"} when cycles are not a device counter,
  "mlperf_tiny": perfrule.windows(...) with --latency-rule mlperf-tiny,
  "histogram_cycles": metrics.histogram(...) (device cycles only)}
- host_time: {"source": "host_wall", "invoke_us": metrics.latency(...)}
- throughput: {"source": "host_wall", "beats_per_s", "wall_s"}
- memory: {"arena_used_bytes", "arena_size_bytes", "model_bytes", "arena_limit_bytes" and "model_max_bytes"
  (the profile's limits)}
- per_record: {record: {"beats", "mismatching", "classified", "correct"}} (correct: right class, or for
  an autoencoder the right normal/abnormal call)
- per_op (harness/bench/perop.py, one beat's OP_PROFILE): {"source": "device_cycles" | "static_estimate", "beat",
  "label", "invoke_cycles", "ops_cycles", "cpu_mhz", "ops": [{"index", "op", "shapes": {"in", "out"},
  "macs", "cycles", "share"}]}; {"note"} or {"error"} when the board cannot say
- health (STATS before and after the stream): {"source": "device" | "virtual board", "stack_high_water_bytes",
  "stack_size_bytes", "heap_internal_free_before", "heap_internal_free_after", "heap_internal_min_free",
  "psram_free_before", "psram_free_after", "arena_used_bytes", "arena_size_bytes", "note"}
- kernels (harness/bench/kernels.py, --kernels both): {"builds": {"esp-nn": {...}, "reference": {...}}, "speedup":
  {"source", "overall", "ci95", "paired_beats", "per_op": [...]}, "note"}
- link: {"sent", "resent", "naks", "duplicates", "strays" (frames with seqs never sent, docs/protocol.md
  §11.2), "garbage_bytes", "bad_frames", "resets", "reuploads", "recoveries"}; the real counters also when the
  run stopped part-way
- realtime (harness/bench/realtime.py): {"source": latency source, "latency_stat": "p99", "latency_s",
  "link_s_per_beat", "link": {"baud", "bits_per_byte", "transport", "model", "wire_bytes", "input_bytes"},
  "rates": {"60"|"350": {"interval_s", "duty_cycle", "compute_duty_cycle", "keeps_up"}}, "max_bpm",
  "flag": str | None}; duty_cycle counts receiving the beat and the invoke, compute_duty_cycle the invoke only
- noise (harness/bench/noise.py): with --noise {"spec", "source", "seed"}; with --noise-sweep {"sweep": {"snr_db":
  [...], "noises": [...], "metric": "macro_f1" | "f1" (autoencoder), "clean": point, "curves": {noise: {"points":
  [point, ...], "snr90_db", "snr90_at_grid_db", "snr90_line", "snr90_note"}}, "seed", "source", "offset", "link"}},
  point = {"snr_db", "beats", "mismatching_beats", "accuracy", "macro_f1", "per_class": {label: {"se", "ppv",
  "support"}}}; snr90_db = the SNR where the metric falls below 90 % of clean (interpolated), None if it does not
- provenance: {"model_sha256", "model_path", "firmware": {"version", "build_hash", "chip", "cpu_mhz",
  "kernel_mode"}, "reference": {"name", "version", "kernels", "note"}, "cross_reference": {...} | None,
  "records", "data_dir", "harness_version", "python", "started_at", "finished_at", "profile_path",
  "noise": {"spec", "seed", "offset": {record: first noise sample}, "source", "records": {record: gains}},
  "beat_set": {"fingerprint", "beats", "records"} (harness/bench/beatset.py: which beats the figures cover),
  "protocol": "hil/1.1" | "hil/1" (the version HELLO negotiated, docs/protocol.md §0) | "mlperf-tiny"}
- per_beat: what a paired comparison needs, one character per verified beat in stream order
  (harness/bench/beatset.py encode_per_beat): {"labels", "records": [[name, beats], ...], "true", "pred"}; empty for
  tasks without per-beat labels (conformance)
- gate: one dict per compared figure (harness/gate/baseline.py Outcome.to_dict): {"metric", "outcome", "old", "new",
  "limit", "p_value", "ci95", "reason", "line"}; outcome is pass, regressed, improved, within_noise or
  not_compared
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import HarnessError, ReportError

STATUSES = ("pass", "fail", "error")
# conformance: kernel conformance models whose verdict is bit-exactness alone (no accuracy figures).
TASKS = ("classifier", "autoencoder", "conformance")
# device_timer: an MLPerf Tiny device's th_timestamp µs laps (harness/boards/mlperf.py).
LATENCY_SOURCES = ("device_cycles", "static_estimate", "device_timer")
# A verdict about the model (it computed something wrong or worse than before) is a test failure; anything
# else (link, board, config...) means the bench could not judge the model, which is an error.
FAILURE_KINDS = ("mismatch", "regression")

# figures() names a latency statistic p50, as CI dashboards do; metrics.latency calls it "median".
_STAT_NAMES = {"min": "min", "median": "p50", "p90": "p90", "p99": "p99", "max": "max", "mean": "mean"}


@dataclass
class Result:
    model: str
    device: str
    profile: str
    task: str = "classifier"
    status: str = "pass"
    failure: dict | None = None
    partial: bool = False
    beats: dict = field(default_factory=dict)
    bit_exact: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    host_time: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    link: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)
    realtime: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)
    per_beat: dict = field(default_factory=dict)
    gate: list[dict] = field(default_factory=list)
    per_record: dict = field(default_factory=dict)
    per_op: dict = field(default_factory=dict)   # harness/bench/perop.py table for one beat (CONTRACTS)
    health: dict = field(default_factory=dict)   # STATS before/after the run (CONTRACTS)
    kernels: dict = field(default_factory=dict)  # esp-nn vs reference side by side (harness/bench/kernels.py)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Result.status must be one of {STATUSES}, got {self.status!r}")
        if self.task not in TASKS:
            raise ValueError(f"Result.task must be one of {TASKS}, got {self.task!r}")

    # -- identity and verdict ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """`<model>@<device>`: the test id used in JUnit, the table and regression lines."""
        return f"{self.model}@{self.device}"

    def set_failure(self, error: HarnessError, *, partial: bool | None = None) -> None:
        """Record a typed harness error as this run's verdict (fail for mismatch/regression, else error)."""
        self.failure = {"kind": error.kind, "code": error.code, "message": str(error)}
        self.status = "fail" if error.kind in FAILURE_KINDS else "error"
        if partial is not None:
            self.partial = partial

    @property
    def failure_line(self) -> str:
        """The one-line failure message (code, cause, fix), or "" when the run passed."""
        if not self.failure:
            return ""
        return str(self.failure.get("message") or self.failure.get("code") or self.failure.get("kind") or "")

    # -- headline figures used by the table and the gate --------------------------------------------------
    @property
    def is_bit_exact(self) -> bool | None:
        """True only for a complete run without a differing beat: a partial run is never bit-exact."""
        exact = self.bit_exact.get("exact")
        if exact is None:
            return None
        return bool(exact) and not self.partial

    @property
    def bit_exact_summary(self) -> str:
        """"bit-exact on all 8123 beats", "bit-exact on 30 of 100 beats, incomplete", "4 of 100 beats differ"."""
        return self.bit_exact.get("summary") or bit_exact_summary(
            self.beats.get("verified"), self.beats.get("total"), self.bit_exact.get("mismatching_beats"),
            self.partial)

    @property
    def accuracy_value(self) -> float | None:
        """Classifier accuracy, or the anomaly-detection accuracy of an autoencoder."""
        if self.task == "autoencoder":
            return (self.accuracy.get("anomaly") or {}).get("accuracy")
        return self.accuracy.get("accuracy")

    @property
    def macro_f1_value(self) -> float | None:
        """Macro-F1 of a classifier; None for an autoencoder (no classes)."""
        return self.accuracy.get("macro_f1") if self.task == "classifier" else None

    @property
    def latency_source(self) -> str | None:
        return self.latency.get("source")

    def latency_us(self, stat: str = "median") -> float | None:
        """A latency statistic in µs (see metrics.LATENCY_STATS); its source is `latency_source`."""
        return (self.latency.get("us") or {}).get(stat)

    @property
    def arena_used_bytes(self) -> int | None:
        return self.memory.get("arena_used_bytes")

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any) -> "Result":
        """Rebuild a Result from `to_dict()` output. Keys this version does not know are ignored."""
        if not isinstance(data, dict):
            raise ReportError(f"a result must be a JSON object, got {type(data).__name__}",
                              "regenerate the results file with this harness", code="HIL602")
        missing = [key for key in ("model", "device", "profile") if not isinstance(data.get(key), str)]
        if missing:
            raise ReportError(f"result is missing text field '{missing[0]}'",
                              "regenerate the results file with this harness", code="HIL602")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except (TypeError, ValueError) as exc:
            raise ReportError(f"result {data['model']}@{data['device']} is not valid: {exc}",
                              "regenerate the results file with this harness", code="HIL602") from None

    # -- flat figures ----------------------------------------------------------------------------------------
    def figures(self) -> dict[str, str | float | int]:
        """Every figure as {name: value}, for JUnit properties and pytest's record_property.

        Names carry the source of measured numbers: `latency_p50_us_device_cycles` or
        `latency_p50_us_static_estimate`, `host_invoke_p50_us_host_wall`, `beats_per_s_host_wall`.
        Unknown values (None) are left out rather than written as "None".
        """
        out: dict[str, Any] = {
            "model": self.model, "device": self.device, "profile": self.profile, "task": self.task,
            "status": self.status, "partial": self.partial,
        }
        if self.failure:
            out["failure_kind"] = self.failure.get("kind")
            out["failure_code"] = self.failure.get("code")
        for key in ("total", "verified", "skipped_edge"):
            out[f"beats_{key}"] = self.beats.get(key)

        be = self.bit_exact
        out["bit_exact"] = self.is_bit_exact
        out["bit_exact_summary"] = self.bit_exact_summary
        out["mismatching_beats"] = be.get("mismatching_beats")
        out["max_abs_diff"] = be.get("max_abs_diff")
        out["reference"] = be.get("reference") or (self.provenance.get("reference") or {}).get("name")
        cross = be.get("cross_check") or {}
        out["cross_reference"] = cross.get("reference")
        out["cross_mismatching_beats"] = cross.get("mismatching_beats")
        out["cross_max_abs_diff"] = cross.get("max_abs_diff")
        out["cross_verdict"] = cross.get("verdict")
        loc = be.get("localisation") or {}
        out["localisation"] = loc.get("summary")
        first_op = loc.get("first") or {}
        out["first_diverging_op_index"] = first_op.get("op_index")
        out["first_diverging_op"] = first_op.get("op")

        self._accuracy_figures(out)

        source = self.latency.get("source")
        if source:
            out["latency_source"] = source
            out["cpu_mhz"] = self.latency.get("cpu_mhz")
            out[f"latency_n_{source}"] = (self.latency.get("us") or {}).get("n")
            for unit in ("us", "cycles"):
                stats = self.latency.get(unit) or {}
                for stat, short in _STAT_NAMES.items():
                    out[f"latency_{short}_{unit}_{source}"] = stats.get(stat)
        clock = self.latency.get("clock_check") or {}
        if clock.get("compared"):
            out["clock_checked_beats"] = clock.get("compared")
            out["clock_disagree_beats"] = clock.get("flagged")
        perf = self.latency.get("mlperf_tiny") or {}  # --latency-rule mlperf-tiny (harness/bench/perfrule.py)
        if perf.get("source"):
            out[f"latency_mlperf_tiny_median_us_{perf['source']}"] = perf.get("median_latency_us")
            out["latency_mlperf_tiny_compliant"] = perf.get("mlperf_compliant")
        if self.latency.get("rule"):
            out["latency_rule"] = self.latency["rule"]
        if self.provenance.get("protocol"):
            out["protocol"] = self.provenance["protocol"]
        host = self.host_time.get("invoke_us") or {}
        host_source = self.host_time.get("source", "host_wall")
        for stat, short in _STAT_NAMES.items():
            out[f"host_invoke_{short}_us_{host_source}"] = host.get(stat)
        tp_source = self.throughput.get("source", "host_wall")
        out[f"beats_per_s_{tp_source}"] = self.throughput.get("beats_per_s")
        out[f"wall_s_{tp_source}"] = self.throughput.get("wall_s")

        for key in ("arena_used_bytes", "arena_size_bytes", "model_bytes"):
            out[key] = self.memory.get(key)
        for key, value in self.link.items():
            out[f"link_{key}"] = value
        health = self.health or {}
        if health.get("source"):
            out["health_source"] = health["source"]
            for key in ("stack_high_water_bytes", "heap_internal_free_before", "heap_internal_free_after",
                        "psram_free_before", "psram_free_after"):
                out[f"health_{key}"] = health.get(key)
        if (self.per_op or {}).get("ops"):
            out["per_op_source"] = self.per_op.get("source")
            out["per_op_beat"] = self.per_op.get("beat")
            top = max(self.per_op["ops"], key=lambda op: op.get("cycles") or 0)
            out[f"per_op_top_{self.per_op.get('source')}"] = f"#{top['index']} {top['op']} {top.get('share', 0):.0%}"
        speed = (self.kernels or {}).get("speedup") or {}
        if speed.get("overall") is not None:
            out[f"kernels_speedup_{speed.get('source')}"] = speed["overall"]

        prov = self.provenance
        for key in ("model_sha256", "model_path", "data_dir", "harness_version", "python", "started_at",
                    "finished_at", "profile_path"):
            out[key] = prov.get(key)
        records = prov.get("records")
        if records:
            out["records"] = ",".join(str(r) for r in records)
        for key, value in (prov.get("firmware") or {}).items():
            out[f"firmware_{key}"] = value
        ref = prov.get("reference") or {}
        for key in ("version", "kernels", "note"):
            out[f"reference_{key}"] = ref.get(key)
        xref = prov.get("cross_reference") or {}
        out["cross_reference_version"] = xref.get("version")
        beat_set = prov.get("beat_set") or {}
        out["beat_set_fingerprint"] = beat_set.get("fingerprint")
        out["beat_set_beats"] = beat_set.get("beats")
        out["regressions"] = len(self.regressions)
        self._realtime_figures(out)
        self._noise_figures(out)
        for outcome in ("regressed", "improved", "within_noise", "not_compared"):
            out[f"gate_{outcome}"] = sum(1 for g in self.gate if g.get("outcome") == outcome)
        if self.gate:
            out["gate_compared"] = len(self.gate)
        for entry in self.gate:
            out[f"gate_outcome_{entry.get('metric')}"] = entry.get("outcome")
        return {key: value for key, value in _plain(out).items() if value is not None}

    def _realtime_figures(self, out: dict[str, Any]) -> None:
        rt = self.realtime or {}
        source = rt.get("source")
        if not source:
            return
        out["realtime_source"] = source
        out[f"realtime_max_bpm_{source}"] = rt.get("max_bpm")
        out[f"realtime_latency_{rt.get('latency_stat', 'p99')}_s_{source}"] = rt.get("latency_s")
        out["realtime_link_s_per_beat"] = rt.get("link_s_per_beat")
        for bpm, figures in (rt.get("rates") or {}).items():
            out[f"realtime_duty_cycle_{bpm}bpm_{source}"] = figures.get("duty_cycle")
            out[f"realtime_keeps_up_{bpm}bpm"] = figures.get("keeps_up")
        out["realtime_flag"] = rt.get("flag")

    def _noise_figures(self, out: dict[str, Any]) -> None:
        noise = self.noise or {}
        prov = self.provenance.get("noise") or {}
        if prov.get("spec"):
            out["noise_spec"] = prov["spec"]
            out["noise_seed"] = prov.get("seed")
        sweep = noise.get("sweep") or {}
        metric = sweep.get("metric", "macro_f1")
        for name, curve in (sweep.get("curves") or {}).items():
            out[f"noise_{name}_snr90_db"] = curve.get("snr90_db")
            for point in curve.get("points") or []:
                snr = f"{point.get('snr_db'):g}".replace("-", "m")
                out[f"noise_{name}_{snr}db_{metric}"] = point.get(metric)
                out[f"noise_{name}_{snr}db_accuracy"] = point.get("accuracy")

    def _accuracy_figures(self, out: dict[str, Any]) -> None:
        acc = self.accuracy
        if self.task == "autoencoder":
            anomaly = acc.get("anomaly") or {}
            out["accuracy"] = anomaly.get("accuracy")
            for key in ("threshold", "se", "sp", "ppv", "f1"):
                out[f"anomaly_{key}"] = anomaly.get(key)
            out["mean_error"] = acc.get("mean_error")
            return
        out["accuracy"] = acc.get("accuracy")
        out["macro_f1"] = acc.get("macro_f1")
        out["n_classified"] = acc.get("n")
        for label, per in (acc.get("per_class") or {}).items():
            for key in ("se", "ppv", "f1", "support"):
                out[f"{key}_{label}"] = per.get(key)


def bit_exact_summary(verified: int | None, total: int | None, mismatching: int | None, partial: bool) -> str:
    """The bit-exactness verdict in words: mismatching beats of verified beats, and whether the run finished."""
    if not verified:
        return "no beat verified"
    of = f" of {total}" if total and total != verified else ""
    if mismatching:
        text = f"{mismatching} of {verified} verified beats differ"
    elif partial:
        return f"bit-exact on {verified}{of} beats, incomplete"
    else:
        return f"bit-exact on all {verified} beats"
    return text + (f" ({verified}{of} beats verified, incomplete)" if partial else "")


def _plain(value: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into JSON types, and NaN/inf into None (invalid in JSON).

    Anything else unknown is left as is, so json.dump reports it instead of it being silently stringified.
    """
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):  # also numpy.float64, a float subclass
        return float(value) if math.isfinite(value) else None
    # numpy without importing it: scalars have .item(), arrays .tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return _plain(value.tolist())
    return value
