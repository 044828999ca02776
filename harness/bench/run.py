"""The bench: one model × one board × MIT-BIH beats × host references → one Result.

Per record: windows are cut and quantized with the model's own input scale and zero point (exactly the
bytes the device receives), the host references run first (batched), then the beats stream to the board and
every output is compared on arrival, so progress can show mismatches live. Only one record's inputs are in
memory at a time; per-beat figures kept for the whole run are a few bytes each.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from . import beatset, data, localize, metrics, noise, realtime
from ..boards.board import Board, StreamStats
from ..errors import BoardTimeout, HarnessError
from .model import Model
from ..boards.profiles import Profile
from .reference import Reference
from .results import Result, bit_exact_summary


@dataclass
class Progress:
    """What the live progress line shows."""

    model: str
    device: str
    done: int
    total: int
    beats_per_s: float
    mismatches: int


@dataclass
class BenchSpec:
    mitdb_dir: Path
    records: Sequence[str]
    warmup: int = 10
    max_beats: int | None = None
    noise: noise.NoiseMix | None = None    # --noise: every pass streams the noisy beats
    sweep: noise.SweepSpec | None = None   # --noise-sweep: clean pass, then one pass per noise and SNR
    baud: int | None = None                # --baud when given; the real-time margin uses it over the profile's
    per_op_beat: int | None = 0            # --per-op-beat: the beat whose per-op cycles are asked (None: none)
    health: bool = True                    # ask the board's health (STATS) before and after the run
    shard: tuple[int, int] | None = None   # only beats [start, end) of the run (after max_beats): one board's share


@dataclass
class _Tally:
    """Running evidence; updated per beat, small."""

    verified: int = 0
    mismatching: int = 0
    max_abs_diff: int = 0
    first_mismatch: dict | None = None
    first_mismatch_input: bytes | None = None  # that beat's input bytes, for the per-layer dump
    profile_beat: int | None = None  # the beat whose input is kept for OP_PROFILE
    profile_input: bytes | None = None
    cross_mismatching: int = 0
    cross_max_abs_diff: int = 0
    refs_disagree: int = 0
    refs_max_abs_diff: int = 0
    cycles: list = field(default_factory=list)
    wall_ns: list = field(default_factory=list)
    y_true: list = field(default_factory=list)
    y_pred: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    is_normal: list = field(default_factory=list)
    # MLPerf Tiny (printed decimals, harness/boards/mlperf.py): beats whose INT8 output the print pins down exactly,
    # and beats whose printed arg-max is unique and equals the reference's.
    resolved: int = 0
    argmax_verified: int = 0
    # per-beat labels for paired comparisons (harness/bench/beatset.py), one character per verified beat
    true_chars: list = field(default_factory=list)
    pred_chars: list = field(default_factory=list)
    record_counts: list = field(default_factory=list)  # [[record, verified beats], ...] in stream order
    # record → {"beats", "mismatching", "classified", "correct"}: four counters per record, for the report
    per_record: dict = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=8)
def _windows(mitdb_dir: str, name: str, window: data.WindowSpec) -> data.Windows:
    """A record's beat windows, kept for the next few asks: a run plans over its records and then streams
    them, and the shards of a farm run (threads of this process) walk the same records."""
    return data.beat_windows(data.load_record(mitdb_dir, name), window)


_OUTLINE: dict = {}  # (dir, record, window) → (beats, skipped at the edges): what planning and skipping need


def forget_records() -> None:
    """Drop the records kept in this process (a benchmark measuring one fresh run's cost)."""
    _windows.cache_clear()
    _OUTLINE.clear()


def _outline(mitdb_dir, name: str, window: data.WindowSpec) -> tuple[list, int]:
    key = (str(mitdb_dir), str(name), window)
    if key not in _OUTLINE:
        windows = _windows(str(mitdb_dir), str(name), window)
        _OUTLINE[key] = (windows.beats, windows.skipped)
    return _OUTLINE[key]


def _plan(model: Model, spec: BenchSpec) -> tuple[int, beatset.BeatSet]:
    """How many beats the run will stream, and their fingerprint (the figures cover exactly these beats).
    A shard plans only its range of the run's beats."""
    planned = beatset.BeatSet()
    if spec.noise is not None:
        # Noisy beats are other inputs: the same annotations, but figures that must not meet clean ones.
        # The noise files count too: the bundled 300 s and the full records give other noise for one seed.
        files = " ".join(f"{t.name}={beatset.record_digest(spec.noise.source.directory, t.name)}"
                         for t in spec.noise.terms)
        planned.note(f"noise {spec.noise.spec} seed {spec.noise.seed} {files}")
    lo, hi = spec.shard or (0, None)
    seen = 0
    for name in spec.records:
        if (spec.max_beats is not None and seen >= spec.max_beats) or (hi is not None and seen >= hi):
            break  # _stream stops before this record too
        beats, _ = _outline(spec.mitdb_dir, name, model.window)
        first, last = _cut(len(beats), seen, lo, hi, spec.max_beats)
        seen += len(beats)
        if last > first:
            planned.add_record(spec.mitdb_dir, name, beats[first:last])
    return planned.beats, planned


def count_beats(model: Model, spec: BenchSpec) -> int:
    """How many beats a run (or, with spec.shard, a shard) streams."""
    return _plan(model, spec)[0]


def _cut(n: int, seen: int, lo: int, hi: int | None, max_beats: int | None) -> tuple[int, int]:
    """The part [first, last) of a record's n beats, numbered from `seen` in the run, that the run (beats
    lo..hi of it, at most max_beats in all) streams."""
    first, last = max(lo - seen, 0), n
    if max_beats is not None:
        last = min(last, max_beats - seen)
    if hi is not None:
        last = min(last, hi - seen)
    return first, max(first, last)


def run(board: Board, model: Model, profile: Profile, device: str, spec: BenchSpec, reference: Reference,
        cross_reference: Reference | None = None,
        on_progress: Callable[[Progress], None] | None = None, shard_out: list | None = None) -> Result:
    """Benchmark `model` on `board`; typed failures come back inside the Result (status error, partial).

    With `spec.sweep` the model is uploaded once and the beats stream again per noise record and SNR
    (`_sweep`); with `spec.noise` the one pass streams the noisy beats. With `spec.shard` only that range
    of beats streams, and `shard_out` receives the running evidence for `merge`.
    """
    started = _now()
    tally = _Tally(profile_beat=spec.per_op_beat)
    result = Result(model=model.name, device=device, profile=profile.name, task=model.task)
    result.provenance.update({
        "model_sha256": model.sha256, "model_path": str(model.path), "model_source": model.source,
        "window": dataclasses.asdict(model.window) if model.window is not None else None,
        # What the input uses that a device would not have at the R peak (whole-record statistics,
        # annotated neighbouring R peaks, look-ahead): empty when nothing, so a figure says if it is causal.
        "input_causality": model.window.causality() if model.window is not None else [],
        "reference": _ref_info(reference), "cross_reference": _ref_info(cross_reference),
        "records": list(spec.records), "max_beats": spec.max_beats, "data_dir": str(spec.mitdb_dir), "harness_version": __version__,
        "python": platform.python_version(), "started_at": started, "profile_path": str(profile.path),
    })
    if spec.shard is not None:
        result.provenance["shard"] = {"beats": list(spec.shard)}
    # The profile's limits travel with the figures, so a report can show used against allowed.
    result.memory.update(model_bytes=model.size_bytes, model_max_bytes=profile.model_max_bytes,
                         arena_limit_bytes=profile.arena_bytes)
    result.bit_exact["reference"] = reference.name
    skipped_edge = 0
    link = dict.fromkeys(_LINK_KEYS, 0)
    strays0 = getattr(board, "strays", None)  # Board counts strays of every command, not only of streams
    t0 = time.perf_counter()
    hello = None
    try:
        hello = board.hello()
        info, uploaded = board.ensure_model(model.data)
        result.provenance["firmware"] = {
            "version": hello.fw_version, "build_hash": hello.build_hash, "chip": hello.chip,
            "cpu_mhz": hello.cpu_mhz, "kernel_mode": hello.kernel_mode,
        }
        result.provenance["protocol"] = hello.protocol  # "hil/1.1", or "hil/1" for a v1 board
        result.provenance["model_uploaded"] = uploaded
        if hello.protocol == "mlperf-tiny":  # the model is compiled in: its id is what was checked
            result.provenance["firmware"]["model_id"] = info.model_id
        result.memory.update(
            arena_used_bytes=info.arena_used, arena_size_bytes=hello.arena_size,
            # TFLM on the 64-bit host lays out the arena with 8-byte pointers: close to, not equal to, an ESP32's.
            arena_source="virtual board (TFLM on the 64-bit host)" if hello.chip == "virtual" else "device")
        if hello.protocol == "mlperf-tiny":
            result.memory["arena_source"] = "not reported (MLPerf Tiny's API has no arena figure)"
        if model.task == "conformance":
            x = model.seeded_inputs()
            if spec.max_beats is not None:
                x = x[: spec.max_beats]
            total, planned = len(x), beatset.BeatSet()
            seed = (model.inputs or {}).get("seed")
            # The inputs are the beats of a conformance run: their bytes are the fingerprint.
            planned.note(f"seeded int8 inputs seed {seed} count {total} sha256 {hashlib.sha256(x.tobytes()).hexdigest()}")
            planned.beats = total
            result.provenance.update(records=[], conformance_inputs={"seed": seed, "count": total})
        else:
            total, planned = _plan(model, spec)
        result.beats["total"] = total
        result.provenance["beat_set"] = planned.to_dict()
        health_before = _ask_health(board, hello, spec)
        t0 = time.perf_counter()  # throughput counts streaming only, not the model upload
        if model.task == "conformance":
            _stream_seeded(board, model, x, reference, cross_reference, tally, link, device, on_progress, t0)
        else:
            skipped_edge = _stream(board, model, spec, spec.noise, reference, cross_reference, tally, link,
                                   total, device, model.name, on_progress)
        result.status = "pass"
        wall_s = time.perf_counter() - t0
        result.health = _health_block(health_before, _ask_health(board, hello, spec), hello)
        result.per_op = _per_op(board, model, hello, tally)
        t0 = time.perf_counter() - wall_s  # throughput keeps counting the stream alone
    except HarnessError as err:
        result.status = "error"
        result.partial = True
        result.failure = {"kind": err.kind, "code": err.code, "message": str(err)}
    wall_s = time.perf_counter() - t0
    if on_progress:
        on_progress(Progress(model.name, device, tally.verified, result.beats.get("total", 0),
                             tally.verified / max(wall_s, 1e-9), tally.mismatching))
    _finish(result, tally, model, hello, spec, wall_s, skipped_edge)
    # Per-beat cycles for a paired comparison in this session (kernels side by side); not serialised.
    result.beat_cycles = np.asarray(tally.cycles, dtype=np.float64)
    result.realtime = realtime.margin(result.latency, profile, model.input.nbytes, baud=spec.baud,
                                      protocol=result.provenance.get("protocol"))
    if strays0 is not None:
        link["strays"] = board.strays - strays0
    result.link = link
    if spec.noise is not None:
        result.provenance["noise"] = spec.noise.provenance()
        result.noise = {"spec": spec.noise.spec, "source": spec.noise.source.label, "seed": spec.noise.seed}
    if spec.sweep is not None and result.status == "pass" and not tally.mismatching and model.task != "conformance":
        _sweep(result, board, model, spec, reference, device, on_progress)
    result.provenance["finished_at"] = _now()
    if result.status == "pass" and tally.mismatching:
        localisation = _localise(board, model, hello, tally.first_mismatch_input, reference=reference.name)
        _mismatch(result, tally, model, device, reference.name, localisation)
    if shard_out is not None:
        shard_out.append(Shard(result, tally, hello, wall_s, skipped_edge, link))
    return result


def _mismatch(result: Result, tally: _Tally, model: Model, device: str, reference: str, localisation: dict) -> None:
    first = tally.first_mismatch
    result.bit_exact["localisation"] = localisation
    result.status = "fail"
    if model.task == "conformance":
        seed = (model.inputs or {}).get("seed")
        what, where = "seeded inputs", f"input {first['beat']} (seed {seed}"
    else:
        what, where = "beats", f"beat {first['beat']} (record {first['record']}, sample {first['sample']}"
    result.failure = {
        "kind": "mismatch", "code": "HIL501",
        "message": (f"HIL501 {model.name}@{device}: {tally.mismatching} of {tally.verified} {what} differ "
                    f"from {reference} (max |diff| {tally.max_abs_diff}); first at {where}, output "
                    f"{first['output_index']}: device {first['device']} vs reference {first['reference']}); "
                    f"{result.bit_exact['cross_check']['verdict']}; {localisation['summary']}"),
    }


@dataclass
class Shard:
    """One board's share of a sharded run: its Result and the evidence `merge` adds up."""

    result: Result
    tally: _Tally
    hello: object
    wall_s: float
    skipped_edge: int
    link: dict


_SUMMED = ("verified", "mismatching", "cross_mismatching", "refs_disagree", "resolved", "argmax_verified")
_MAXED = ("max_abs_diff", "cross_max_abs_diff", "refs_max_abs_diff")
_LISTS = ("cycles", "wall_ns", "y_true", "y_pred", "errors", "is_normal", "true_chars", "pred_chars")


def merge(shards: Sequence[Shard], model: Model, profile: Profile, device: str, spec: BenchSpec) -> Result:
    """One Result from the shards of one run, in beat order, as if one board had streamed every beat.

    Counts add up, maxima take the maximum, and the per-beat lists (cycles, labels, errors) are joined in
    beat order, so accuracy, the confusion matrix, the bit-exact tally, latency percentiles and the beat-set
    fingerprint are exactly the single-board figures. Throughput is the whole run's: all beats over the
    slowest shard's wall time (the shards stream at the same time).
    """
    shards = sorted(shards, key=lambda s: s.result.provenance["shard"]["beats"][0])
    tally = _Tally()
    for part in shards:
        for key in _SUMMED:
            setattr(tally, key, getattr(tally, key) + getattr(part.tally, key))
        for key in _MAXED:
            setattr(tally, key, max(getattr(tally, key), getattr(part.tally, key)))
        for key in _LISTS:
            getattr(tally, key).extend(getattr(part.tally, key))
        for record, count in part.tally.record_counts:  # a record split between two shards is one entry
            if tally.record_counts and tally.record_counts[-1][0] == record:
                tally.record_counts[-1][1] += count
            else:
                tally.record_counts.append([record, count])
        for record, counts in part.tally.per_record.items():
            into = tally.per_record.setdefault(record, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
        if tally.first_mismatch is None and part.tally.first_mismatch is not None:
            tally.first_mismatch = part.tally.first_mismatch
            tally.first_mismatch_input = part.tally.first_mismatch_input
    head = shards[0].result
    whole = dataclasses.replace(spec, shard=None)
    result = Result(model=model.name, device=device, profile=profile.name, task=model.task)
    result.provenance.update({k: v for k, v in head.provenance.items() if k not in ("shard", "board")})
    result.provenance["finished_at"] = max(s.result.provenance.get("finished_at", "") for s in shards)
    result.provenance["shards"] = [dict(s.result.provenance["shard"], board=s.result.provenance.get("board"),
                                        status=s.result.status, wall_s=s.wall_s) for s in shards]
    result.provenance["board"] = head.provenance.get("board")
    result.memory = dict(head.memory)
    result.bit_exact["reference"] = head.bit_exact.get("reference")
    total, planned = _plan(model, whole)
    result.beats["total"] = total
    result.provenance["beat_set"] = planned.to_dict()
    failed = [s.result for s in shards if s.result.status == "error"]
    result.status = "error" if failed else "pass"
    if failed:
        result.partial = True
        result.failure = dict(failed[0].failure)
    _finish(result, tally, model, shards[0].hello, whole, max(s.wall_s for s in shards),
            sum(s.skipped_edge for s in shards))
    result.realtime = realtime.margin(result.latency, profile, model.input.nbytes, baud=spec.baud,
                                      protocol=result.provenance.get("protocol"))
    result.link = {key: sum(s.link.get(key, 0) for s in shards) for key in _LINK_KEYS}
    # Per-op cycles come from the one shard that streamed the chosen beat; health is the first board's.
    result.per_op = next((s.result.per_op for s in shards if (s.result.per_op or {}).get("source")), head.per_op)
    result.health = head.health
    if spec.noise is not None:
        result.provenance["noise"] = spec.noise.provenance()
        result.noise = dict(head.noise or {})
    if result.status == "pass" and tally.mismatching:
        first = next(s.result for s in shards if s.tally.mismatching)
        _mismatch(result, tally, model, device, result.bit_exact["reference"],
                  first.bit_exact.get("localisation") or {"summary": "localisation not run"})
    return result


class LiveRate:
    """Beats per second for the live progress line, counted from the first result: the time before it
    (upload, the host references of the first record) is not streaming, and one beat is no rate, so no
    line is due until `every_s` after the first result."""

    def __init__(self, every_s: float = 0.5):
        self.every_s = every_s
        self.first: tuple[float, int] | None = None  # (time, beats verified) at the first result
        self.last = 0.0

    def due(self, verified: int, now: float) -> float | None:
        """The rate to show now, or None when no progress line is due."""
        if self.first is None:
            self.first, self.last = (now, verified), now
            return None
        if now - self.last <= self.every_s:
            return None
        self.last = now
        since, beats = self.first
        return (verified - beats) / max(now - since, 1e-9)


_LINK_KEYS = ("sent", "resent", "naks", "duplicates", "strays", "garbage_bytes", "bad_frames", "resets",
              "reuploads", "recoveries")


def _stream(board: Board, model: Model, spec: BenchSpec, mix: noise.NoiseMix | None, reference: Reference,
            cross_reference: Reference | None, tally: _Tally, link: dict, total: int, device: str, label: str,
            on_progress: Callable[[Progress], None] | None) -> int:
    """One pass of every beat through the board (noisy when `mix` is given) into `tally`; → beats skipped
    at record edges. Raises the board's HarnessError; the model must already be on the board."""
    skipped_edge = 0
    rate = LiveRate()
    # Beats are numbered across the whole run; a shard streams only its contiguous range [lo, hi), so the
    # beat numbers it reports, and the order of its per-beat figures, are the single-board run's.
    lo, hi = spec.shard or (0, None)
    seen = 0
    for name in spec.records:
        if (spec.max_beats is not None and seen >= spec.max_beats) or (hi is not None and seen >= hi):
            break
        if mix is None:
            outline, skipped = _outline(spec.mitdb_dir, name, model.window)
            windows = None  # loaded only when this run streams some of the record's beats
        else:
            windows = data.beat_windows(mix.apply(data.load_record(spec.mitdb_dir, name)), model.window)
            outline, skipped = windows.beats, windows.skipped
        if lo <= seen and (hi is None or seen < hi):
            skipped_edge += skipped  # counted once, by the shard holding the record's first beat
        first, last = _cut(len(outline), seen, lo, hi, spec.max_beats)
        seen += len(outline)
        if last <= first:
            continue
        if windows is None:
            windows = _windows(str(spec.mitdb_dir), str(name), model.window)
        beats = windows.beats[first:last]
        x = data.quantize(windows.x[first:last], model.input.scale, model.input.zero_point)
        x = x.reshape((len(beats),) + tuple(model.input.shape[1:]))
        expected = reference.run(x).reshape(len(beats), -1)
        cross = cross_reference.run(x).reshape(len(beats), -1) if cross_reference else None
        if cross is not None:
            diff = np.abs(cross.astype(np.int16) - expected.astype(np.int16))
            tally.refs_disagree += int(np.count_nonzero(diff.max(axis=1)))
            tally.refs_max_abs_diff = max(tally.refs_max_abs_diff, int(diff.max(initial=0)))
        flat = x.reshape(len(beats), -1)
        base = lo + tally.verified

        def on_result(i: int, inference, *, _beats=beats, _expected=expected, _cross=cross, _base=base,
                      _x=flat) -> None:
            _compare(tally, model, _beats[i], _base + i, inference, _expected[i],
                     None if _cross is None else _cross[i], _x[i])
            beats_per_s = rate.due(tally.verified, time.perf_counter())
            if on_progress and beats_per_s is not None:
                on_progress(Progress(label, device, tally.verified, total, beats_per_s, tally.mismatching))

        stats = StreamStats()  # updated as the stream goes: a run that stops part-way keeps its counters
        try:
            board.infer_stream((row.tobytes() for row in flat), total=len(beats), on_result=on_result,
                               output_bytes=model.output.nbytes, stats=stats)
        except BoardTimeout as err:
            # The board counts within this record; the user needs the whole run's position.
            raise BoardTimeout(f"{err.message} (record {name}); {tally.verified} of {total} beats of the "
                               f"run verified, the partial figures cover only those", err.hint,
                               verified=tally.verified, total=total,
                               stopped_at=f"record {name}, {err.stopped_at}", code=err.code) from None
        finally:
            for key in link:
                link[key] += getattr(stats, key)
    return skipped_edge


def _stream_seeded(board: Board, model: Model, x: np.ndarray, reference: Reference,
                   cross_reference: Reference | None, tally: _Tally, link: dict, device: str,
                   on_progress: Callable[[Progress], None] | None, t0: float) -> None:
    """A conformance model's pass: its seeded random INT8 inputs through the board, compared bit for bit.
    Input i is reported as "beat" i of the pseudo-record `seeded` (no ECG behind it)."""
    expected = reference.run(x).reshape(len(x), -1)
    cross = cross_reference.run(x).reshape(len(x), -1) if cross_reference else None
    if cross is not None:
        diff = np.abs(cross.astype(np.int16) - expected.astype(np.int16))
        tally.refs_disagree += int(np.count_nonzero(diff.max(axis=1)))
        tally.refs_max_abs_diff = max(tally.refs_max_abs_diff, int(diff.max(initial=0)))
    flat = x.reshape(len(x), -1)
    last_report = 0.0

    def on_result(i: int, inference) -> None:
        nonlocal last_report
        beat = data.Beat(record="seeded", index=i, sample=i, symbol="", aami="")
        _compare(tally, model, beat, i, inference, expected[i], None if cross is None else cross[i], flat[i])
        now = time.perf_counter()
        if on_progress and now - last_report > 0.5:
            last_report = now
            on_progress(Progress(model.name, device, tally.verified, len(x),
                                 tally.verified / max(now - t0, 1e-9), tally.mismatching))

    stats = board.infer_stream((row.tobytes() for row in flat), total=len(x), on_result=on_result)
    for key in link:
        link[key] += getattr(stats, key)


def _quality(model: Model, tally: _Tally) -> dict:
    """The accuracy figures a sweep point keeps: accuracy, macro-F1 (or anomaly F1), per-class Se/+P."""
    if model.task == "classifier":
        acc = metrics.classification(tally.y_true, tally.y_pred, list(model.labels))
        return {"accuracy": acc["accuracy"], "macro_f1": acc["macro_f1"],
                "per_class": {label: {"se": per["se"], "ppv": per["ppv"], "support": per["support"]}
                              for label, per in acc["per_class"].items()}}
    threshold = float((model.anomaly or {}).get("threshold", 0.0))
    an = metrics.anomaly(tally.errors, tally.is_normal, threshold)
    # An autoencoder has no classes: its quality figure is the anomaly F1, its "class" the abnormal beats.
    return {"accuracy": an["accuracy"], "macro_f1": None, "f1": an["f1"],
            "per_class": {"abnormal": {"se": an["se"], "ppv": an["ppv"]}}}


def _sweep(result: Result, board: Board, model: Model, spec: BenchSpec, reference: Reference, device: str,
           on_progress: Callable[[Progress], None] | None) -> None:
    """Stream the beats again per noise record and SNR, on the model already on the board, into
    result.noise["sweep"]. Each point is checked bit for bit against `reference` (no cross-check: that one
    only explains a mismatch); a mismatch or a board error ends the sweep and becomes the verdict."""
    sweep = spec.sweep
    metric = "macro_f1" if model.task == "classifier" else "f1"
    clean = _clean_quality(result, model)
    curves: dict[str, dict] = {}
    offsets: dict = {}
    total = result.beats.get("total", 0)
    result.noise = {"sweep": {"snr_db": list(sweep.snrs_db), "noises": list(sweep.names), "metric": metric,
                              "clean": clean, "curves": curves, "seed": sweep.seed,
                              "source": sweep.source.label, "offset": offsets}}
    result.provenance["noise"] = {"spec": f"sweep {sweep.label}", "seed": sweep.seed, "offset": offsets,
                                  "source": sweep.source.label}
    link = dict.fromkeys(_LINK_KEYS, 0)
    for name in sweep.names:
        points: list[dict] = []
        curves[name] = {"points": points}
        for snr in sweep.snrs_db:
            mix = sweep.mix(name, snr)
            tally = _Tally()
            try:
                _stream(board, model, spec, mix, reference, None, tally, link, total, device,
                        f"{model.name} [{name} {snr:g} dB]", on_progress)
            except HarnessError as err:
                result.status = "error"
                result.partial = True
                result.failure = {"kind": err.kind, "code": err.code,
                                  "message": f"{err} (noise sweep, {name} at {snr:g} dB)"}
                curves[name].update(_threshold(points, clean.get(metric), metric))
                return
            offsets.update({rec: info["offset"] for rec, info in mix.applied.items()})
            point = {"snr_db": snr, "beats": tally.verified, "mismatching_beats": tally.mismatching,
                     **_quality(model, tally)}
            points.append(point)
            if tally.mismatching:
                first = tally.first_mismatch
                result.status = "fail"
                result.bit_exact["noise_mismatching_beats"] = tally.mismatching
                result.failure = {
                    "kind": "mismatch", "code": "HIL501",
                    "message": (f"HIL501 {model.name}@{device}: under noise {name} at {snr:g} dB, {tally.mismatching} "
                                f"of {tally.verified} beats differ from {reference.name} (max |diff| "
                                f"{tally.max_abs_diff}); first at record {first['record']}, sample "
                                f"{first['sample']}: device {first['device']} vs reference {first['reference']}"),
                }
                curves[name].update(_threshold(points, clean.get(metric), metric))
                return
        curves[name].update(_threshold(points, clean.get(metric), metric))
    result.noise["sweep"]["link"] = link


def _clean_quality(result: Result, model: Model) -> dict:
    """The clean pass's figures in a sweep point's shape (the 90 % line is drawn from it)."""
    acc = result.accuracy
    if model.task == "classifier":
        return {"snr_db": None, "beats": result.beats.get("verified"), "accuracy": acc.get("accuracy"),
                "macro_f1": acc.get("macro_f1"),
                "per_class": {label: {"se": per.get("se"), "ppv": per.get("ppv"), "support": per.get("support")}
                              for label, per in (acc.get("per_class") or {}).items()}}
    an = acc.get("anomaly") or {}
    return {"snr_db": None, "beats": result.beats.get("verified"), "accuracy": an.get("accuracy"),
            "macro_f1": None, "f1": an.get("f1"), "per_class": {"abnormal": {"se": an.get("se"), "ppv": an.get("ppv")}}}


SNR90_SHARE = 0.9


def _threshold(points: list[dict], clean: float | None, metric: str) -> dict:
    """The SNR at which `metric` falls below 90 % of its clean value, going down the sweep's SNRs.

    Linear interpolation (in dB) between the last point at or above the line and the first below it;
    `snr90_at_grid_db` is that first grid point below. None, with a note, when the curve never crosses
    (or starts below the line, or the clean value is unknown).
    """
    out = {"snr90_db": None, "snr90_at_grid_db": None, "snr90_note": None, "snr90_line": None}
    if clean is None or not points:
        out["snr90_note"] = "no clean value to compare with" if clean is None else "no sweep points"
        return out
    line = SNR90_SHARE * clean
    out["snr90_line"] = line
    previous = None
    for point in points:  # highest SNR first
        value = point.get(metric)
        if value is not None and value < line:
            out["snr90_at_grid_db"] = point["snr_db"]
            if previous is None:
                out["snr90_note"] = f"already below 90 % of clean at {point['snr_db']:g} dB, the highest SNR swept"
                return out
            v0, s0 = previous[metric], previous["snr_db"]
            s1 = point["snr_db"]
            out["snr90_db"] = s0 + (v0 - line) / (v0 - value) * (s1 - s0)
            return out
        if value is not None:
            previous = point
    out["snr90_note"] = f"stays at or above 90 % of clean down to {points[-1]['snr_db']:g} dB"
    return out


def _speaks_hil(board, hello) -> bool:
    return hello is not None and str(getattr(hello, "protocol", "hil")).startswith("hil") and hasattr(board, "stats")


def _ask_health(board: Board, hello, spec: BenchSpec):
    """STATS now (docs/protocol.md §13): a protocol.Health, or a note why there is none. Never raises for a
    firmware without STATS; the run's verdict does not depend on it."""
    if not spec.health or not _speaks_hil(board, hello):
        return "not asked" if not spec.health else "the board does not speak the HIL protocol"
    try:
        return board.stats()
    except HarnessError as err:
        if getattr(err, "device_code", None) == 8:  # UNKNOWN_TYPE: firmware older than the STATS addition
            return "the firmware has no STATS request (older than this harness): reflash it for health figures"
        raise


def _health_block(before, after, hello) -> dict:
    """Result.health (CONTRACTS): the figures before and after the stream, labelled by who measured them."""
    if isinstance(before, str) or isinstance(after, str):
        return {"source": None, "note": before if isinstance(before, str) else after}
    out = {
        "source": after.source,
        "stack_high_water_bytes": after.stack_high_water,
        "stack_size_bytes": after.stack_size,
        "heap_internal_free_before": before.heap_internal_free,
        "heap_internal_free_after": after.heap_internal_free,
        "heap_internal_min_free": after.heap_internal_min_free,
        "psram_free_before": before.psram_free,
        "psram_free_after": after.psram_free,
        "arena_used_bytes": after.arena_used,
        "arena_size_bytes": after.arena_size,
    }
    if after.source == "virtual board":
        out["note"] = ("the virtual board's own figures: no task stack to measure (None); heap = its profile's RAM "
                       "budget minus the arena, not measured; arena_used is TFLM's on the 64-bit host")
    return out


def _per_op(board: Board, model: Model, hello, tally: _Tally) -> dict:
    """Result.per_op for the chosen beat (OP_PROFILE), or a note why there is none; never the verdict."""
    from . import perop

    if tally.profile_beat is None:
        return {}
    base = {"source": None, "beat": tally.profile_beat, "ops": []}
    if not _speaks_hil(board, hello):
        return {**base, "note": "the board does not speak the HIL protocol: no per-op timing"}
    if tally.profile_input is None:
        return {**base, "note": f"the run has no beat {tally.profile_beat}"}
    try:
        times = board.op_profile(tally.profile_input)
    except HarnessError as err:
        if getattr(err, "device_code", None) == 8:
            return {**base, "note": "the firmware has no OP_PROFILE request (older than this harness): reflash it"}
        return {**base, "error": str(err)}
    if hello.timing_source == "device_cycles":
        label = f"device cycles ({hello.chip}, {hello.kernel_mode} kernels), CPU counter around each kernel"
    else:
        label = (f"{hello.chip} board: the cost model's estimate per op ({hello.timing_source}), not measured")
    try:
        return perop.table(model.data, times, timing_source=hello.timing_source, beat=tally.profile_beat,
                           cpu_mhz=hello.cpu_mhz, label=label)
    except ValueError as exc:
        return {**base, "error": str(exc)}


def _localise(board: Board, model: Model, hello, x: bytes | None, reference: str = localize.REFERENCE) -> dict:
    """Dump the first mismatching beat on the board and name the first diverging op (harness/bench/localize.py).

    Never raises: the mismatch is the verdict, localisation only explains it, so a board without DUMP
    (older firmware) or a failing host run is recorded in `error` and the summary says so.
    """
    if x is None:
        return {"error": "no input kept for the first mismatch", "summary": "localisation not run"}
    try:
        dump = board.dump(x)
        return localize.localise(model.data, x, dump, chip=hello.chip if hello else None,
                                 reference=reference).to_dict()
    except HarnessError as err:
        return {"error": str(err), "summary": f"localisation failed: {err.code} {err.message[:160]}"}
    except Exception as exc:  # noqa: BLE001 - a bug here must not turn a mismatch verdict into a crash
        text = f"{type(exc).__name__}: {exc}"
        return {"error": text, "summary": f"localisation failed: {text[:160]}"}


def _ref_info(ref: Reference | None) -> dict | None:
    if ref is None:
        return None
    return {"name": ref.name, "version": ref.version, "kernels": ref.kernels, "note": ref.note}


def _compare(tally: _Tally, model: Model, beat: data.Beat, index: int, inference, expected: np.ndarray,
             cross: np.ndarray | None, x: np.ndarray) -> None:
    out = np.frombuffer(inference.output, dtype=np.int8)
    if index == tally.profile_beat:
        tally.profile_input = x.tobytes()
    tally.verified += 1
    rec = tally.per_record.setdefault(beat.record, {"beats": 0, "mismatching": 0, "classified": 0, "correct": 0})
    rec["beats"] += 1
    tally.cycles.append(inference.cycles)
    tally.wall_ns.append(inference.wall_ns)
    bounds = getattr(inference, "bounds", None)  # MLPerf Tiny: the INT8 values its printed decimals allow
    if out.shape != expected.shape:
        diff = np.array([255])
    elif bounds is not None:
        ref = expected.astype(np.int16)
        diff = np.maximum(np.maximum(bounds[0] - ref, ref - bounds[1]), 0)
        tally.resolved += bool(inference.resolved)
        if model.task == "classifier":
            top = np.flatnonzero(out == out.max())
            tally.argmax_verified += bool(top.size == 1 and top[0] == int(np.argmax(expected)))
    else:
        diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    if diff.any():
        tally.mismatching += 1
        rec["mismatching"] += 1
        tally.max_abs_diff = max(tally.max_abs_diff, int(diff.max()))
        if tally.first_mismatch is None:
            k = int(np.argmax(diff))
            tally.first_mismatch = {
                "beat": index, "record": beat.record, "sample": int(beat.sample), "symbol": beat.symbol,
                "output_index": k, "device": int(out[k]) if k < out.size else None,
                "reference": int(expected[k]),
                # the record samples the model saw ([start, end) at 360 Hz), so a report can plot them
                "window": ({"start": int(beat.sample) - model.window.before,
                            "end": int(beat.sample) + model.window.after, "channel": model.window.channel}
                           if model.window is not None else None),  # a conformance input has no record window
            }
            tally.first_mismatch_input = x.tobytes()
    if cross is not None and out.shape == cross.shape:
        cdiff = np.abs(out.astype(np.int16) - cross.astype(np.int16))
        if cdiff.any():
            tally.cross_mismatching += 1
            tally.cross_max_abs_diff = max(tally.cross_max_abs_diff, int(cdiff.max()))
    if tally.record_counts and tally.record_counts[-1][0] == beat.record:
        tally.record_counts[-1][1] += 1
    else:
        tally.record_counts.append([beat.record, 1])
    if model.task == "classifier":
        label = model.label_map.get(beat.symbol)
        predicted = int(np.argmax(out))
        if label is not None:
            tally.y_true.append(label)
            tally.y_pred.append(model.labels[predicted])
            rec["classified"] += 1
            rec["correct"] += int(model.labels[predicted] == label)
        tally.true_chars.append(beatset.label_char(None if label is None else model.labels.index(label)))
        tally.pred_chars.append(beatset.label_char(predicted))
    elif model.task == "autoencoder":
        # Reconstruction error in the input's real units: both tensors dequantized with their own scales.
        xin = (x.astype(np.float32) - model.input.zero_point) * model.input.scale
        xout = (out.astype(np.float32) - model.output.zero_point) * model.output.scale
        tally.errors.append(float(np.mean((xout - xin) ** 2)))
        normal = (model.anomaly or {}).get("normal_labels", ["N"])
        is_normal = model.label_map.get(beat.symbol) in normal
        tally.is_normal.append(is_normal)
        threshold = float((model.anomaly or {}).get("threshold", 0.0))
        # labels of an autoencoder's per-beat record: 0 = normal, 1 = abnormal (as metrics.anomaly calls it)
        tally.true_chars.append(beatset.label_char(0 if is_normal else 1))
        tally.pred_chars.append(beatset.label_char(1 if tally.errors[-1] > threshold else 0))
        rec["classified"] += 1
        rec["correct"] += int((tally.errors[-1] > threshold) != is_normal)  # same call as metrics.anomaly


def _verdict(ref_name: str, cross_name: str | None, device_vs_ref: int, device_vs_cross: int,
             refs_disagree: int) -> str:
    if cross_name is None:
        return "device == reference" if device_vs_ref == 0 else "device != reference (no cross-check run)"
    parts = [
        f"device {'==' if device_vs_cross == 0 else '!='} {cross_name}",
        f"{cross_name} {'==' if refs_disagree == 0 else '!='} {ref_name}",
    ]
    if device_vs_ref and device_vs_cross and not refs_disagree:
        parts.append("the device differs from both host interpreters: platform or optimized-kernel issue")
    elif device_vs_ref and not device_vs_cross and refs_disagree:
        parts.append(f"semantics: {cross_name} and {ref_name} differ; the device follows {cross_name}")
    return "; ".join(parts)


def _finish(result: Result, tally: _Tally, model: Model, hello, spec: BenchSpec, wall_s: float,
            skipped_edge: int) -> None:
    result.beats.update(verified=tally.verified, skipped_edge=skipped_edge)
    result.per_record = {name: dict(counts) for name, counts in tally.per_record.items()}
    if result.beats.get("total") and tally.verified < result.beats["total"]:
        result.partial = True
    cross_name = result.provenance["cross_reference"]["name"] if result.provenance.get("cross_reference") else None
    result.bit_exact.update({
        # A run that stopped part-way is never bit-exact: the beats it did not verify may differ.
        "exact": tally.verified > 0 and tally.mismatching == 0 and not result.partial,
        "summary": bit_exact_summary(tally.verified, result.beats.get("total"), tally.mismatching,
                                     result.partial),
        "mismatching_beats": tally.mismatching,
        "max_abs_diff": tally.max_abs_diff,
        "first_mismatch": tally.first_mismatch,
        "cross_check": {
            "reference": cross_name,
            "mismatching_beats": tally.cross_mismatching,
            "max_abs_diff": tally.cross_max_abs_diff,
            "references_disagree_beats": tally.refs_disagree,
            "verdict": _verdict(result.bit_exact["reference"], cross_name, tally.mismatching,
                                tally.cross_mismatching, tally.refs_disagree),
        },
    })
    if result.provenance.get("protocol") == "mlperf-tiny":
        result.bit_exact["verification"] = {
            "mode": "printed decimals (MLPerf Tiny m-results)", "consistent_beats": tally.verified - tally.mismatching,
            "int8_recovered_beats": tally.resolved,
            "argmax_verified_beats": tally.argmax_verified if model.task == "classifier" else None,
            "note": "a beat is consistent when the reference's INT8 output lies inside the values the printed "
                    "decimals allow; bit-exact only for int8_recovered_beats (docs/mlperf.md)"}
        result.bit_exact["exact"] = (tally.verified > 0 and tally.mismatching == 0
                                     and tally.resolved == tally.verified and not result.partial)
    if tally.true_chars:
        labels = list(model.labels) if model.task == "classifier" else ["normal", "abnormal"]
        result.per_beat = beatset.encode_per_beat(labels, [tuple(rc) for rc in tally.record_counts],
                                                  "".join(tally.true_chars), "".join(tally.pred_chars))
    if hello is not None and hello.chip == "virtual":
        # The virtual board runs TFLM's reference kernels, the interpreter of the tflm cross-check: its
        # agreement with the host references holds by construction and is no evidence about a board's kernels.
        result.bit_exact["evidence"] = ("by construction: the virtual board runs TFLM reference kernels, as the "
                                        "tflm cross-check does; this says nothing about a board's optimized kernels")
    if model.task == "conformance":
        result.accuracy = {}  # bit-exactness is the whole verdict of a kernel conformance model
    elif model.task == "classifier":
        result.accuracy = metrics.classification(tally.y_true, tally.y_pred, list(model.labels))
    elif model.task == "autoencoder":
        threshold = float((model.anomaly or {}).get("threshold", 0.0))
        result.accuracy = {
            "anomaly": metrics.anomaly(tally.errors, tally.is_normal, threshold),
            "mean_error": float(np.mean(tally.errors)) if tally.errors else None,
        }
    if hello is not None and getattr(hello, "protocol", None) == "mlperf-tiny":
        # MLPerf Tiny: µs between the two m-lap-us laps around each `infer 1 0` (harness/boards/mlperf.py).
        result.latency = {"source": hello.timing_source, "cpu_mhz": None, "rule": "per-beat",
                          "us": metrics.latency(np.asarray(tally.wall_ns, dtype=np.float64) / 1e3, spec.warmup)}
    elif hello is not None:
        cycles = np.asarray(tally.cycles, dtype=np.float64)
        result.latency = {
            "source": hello.timing_source,
            "cpu_mhz": hello.cpu_mhz,
            "rule": "per-beat",
            "cycles": metrics.latency(cycles, spec.warmup),
            # cpu_mhz 0: no meaningful clock (docs/protocol.md §10), so cycles are not turned into time.
            "us": metrics.latency(cycles / hello.cpu_mhz, spec.warmup) if hello.cpu_mhz else None,
        }
        if hello.timing_source == "device_cycles" and hello.cpu_mhz:
            check = metrics.clock_agreement(tally.cycles, tally.wall_ns, hello.cpu_mhz)
            check["source"] = "device_cycles vs device_clock"
        else:
            # Estimated cycles against a host clock tell nothing about the device: not compared.
            check = {"compared": 0, "flagged": 0, "source": None,
                     "reason": f"cycles are a {hello.timing_source.replace('_', ' ')}, not a device counter"}
        result.latency["clock_check"] = check
        if hello.timing_source == "device_cycles":
            # The spread of measured cycles in fixed bins: what a histogram needs, a few hundred bytes.
            result.latency["histogram_cycles"] = metrics.histogram(cycles, spec.warmup)
        result.host_time = {
            "source": ("host_wall" if hello.timing_source in ("static_estimate", "host_clock")
                       else "device_clock"),
            "invoke_us": metrics.latency(np.asarray(tally.wall_ns, dtype=np.float64) / 1e3, spec.warmup),
        }
    result.throughput = {"source": "host_wall", "beats_per_s": tally.verified / wall_s if wall_s else None,
                         "wall_s": wall_s}
