"""MIT-BIH records → beats → model input windows (and their INT8 quantization).

This is the one place that says what a beat is and what a model sees: the AAMI class map, de Chazal's
inter-patient DS1/DS2 split, the windowing and normalization, and the float → INT8 quantization. The
training recipes in `models/` import it too, so a model is trained on exactly the inputs the harness
feeds the board. Runtime dependencies: numpy and wfdb only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

NORMALIZATIONS = ("none", "beat_zscore", "record_zscore", "beat_minmax")
MASKS = ("none", "half_rr")
# Rhythm features appended after the morphology samples (see rhythm_features); value = how many.
RHYTHMS = {"none": 0, "rr": 6}
RR_LOCAL_BEATS = 10   # the local mean RR covers this many RR intervals ending at the beat
RR_GAIN = 2.0         # rhythm values (seconds, ratios) × this, so they use the int8 range like z-scores
RR_CLIP = 8.0         # ... clipped to [0, RR_CLIP]: a 6 s pause (record 232) would otherwise set the scale


@dataclass(frozen=True)
class WindowSpec:
    """Where a model's input window sits around a beat's R peak, at the record's 360 Hz.

    The window is samples [R - before, R + after) of `channel`, block-averaged by `decimate`
    (non-overlapping means, which also low-passes), then normalized. `mask: half_rr` then sets to 0 every
    sample outside the beat's own half-RR neighbourhood (halfway to the previous R peak up to halfway to
    the next), so a long window shows one beat and not its neighbours.

    `rhythm: rr` appends RHYTHMS["rr"] = 6 values after the morphology samples (see rhythm_features): the
    model's single INT8 input holds both, quantized with the same scale, so the board receives exactly
    what the model was trained on. `length` counts them; `morphology_length` does not.
    """

    before: int
    after: int
    channel: int = 0
    decimate: int = 1
    normalize: str = "none"
    mask: str = "none"
    rhythm: str = "none"

    @property
    def morphology_length(self) -> int:
        return (self.before + self.after) // self.decimate

    @property
    def length(self) -> int:
        return self.morphology_length + RHYTHMS.get(self.rhythm, 0)

    def causality(self) -> list[str]:
        """What this input uses that a device would not have at the beat's R peak (empty: nothing).

        Bench results carry it (provenance["input_causality"]), so a figure from a non-causal input says so.
        """
        notes = []
        if self.normalize == "record_zscore":
            notes.append("record_zscore: mean and std of the whole record (future samples included)")
        if self.mask == "half_rr":
            notes.append("half_rr mask: the annotated previous and next R peaks (one beat of look-ahead, "
                         "annotated rather than detected)")
        if self.rhythm == "rr":
            notes.append("rhythm rr: RR intervals of the annotated R peaks; post-RR needs the next R peak "
                         "(one beat of latency); local and running means are causal")
        return notes


# --- Classes and record lists ------------------------------------------------------------------------

# ANSI/AAMI EC57 beat classes from MIT-BIH beat annotation symbols. Annotations not listed here
# (rhythm '+', noise '~', comments '"', '|', 'x', '!', '[', ']'...) are not beats and are dropped.
AAMI_CLASSES = ("N", "S", "V", "F", "Q")
AAMI_MAP: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",   # normal, bundle branch blocks, escapes
    "A": "S", "a": "S", "J": "S", "S": "S",             # supraventricular ectopic (SVEB)
    "V": "V", "E": "V",                                 # ventricular ectopic (VEB)
    "F": "F",                                           # fusion of ventricular and normal
    "/": "Q", "f": "Q", "Q": "Q",                       # paced, fusion of paced and normal, unclassifiable
}

# de Chazal, O'Dwyer & Reilly, IEEE TBME 51(7), 2004: inter-patient split, no patient in both halves.
DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124", "201", "203",
       "205", "207", "208", "209", "215", "220", "223", "230")
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212", "213", "214",
       "219", "221", "222", "228", "231", "232", "233", "234")
# Paced records: excluded from both halves, as AAMI EC57 recommends.
PACED = ("102", "104", "107", "217")
ALL_RECORDS = tuple(sorted(DS1 + DS2 + PACED))

BUNDLED_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "mitdb"
BUNDLED_RECORDS = ("213", "232", "233")

_DOWNLOAD_HINT = ("give --mitdb DIR, or download it: "
                  "python -c \"import wfdb; wfdb.dl_database('mitdb', 'mitdb')\"")

# Bytes per sample of the WFDB storage formats MIT-BIH and its relatives use; lets a short .dat be
# caught from its size before wfdb reads it (wfdb either raises a broadcasting error or returns less).
_BYTES_PER_SAMPLE = {"212": 1.5, "16": 2, "61": 2, "80": 1, "160": 2, "8": 1, "24": 3, "32": 4}


# --- Records -----------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value; identity is enough
class Record:
    """One MIT-BIH record: the physical signal and its beat annotations (non-beat marks dropped)."""

    name: str
    fs: float
    signal: np.ndarray          # float32 [n_samples, n_channels], mV
    channels: tuple[str, ...]   # channel names, e.g. ("MLII", "V1")
    r_peaks: np.ndarray         # int64 [n_beats], annotation sample of each beat
    symbols: tuple[str, ...]    # annotation symbol of each beat (all keys of AAMI_MAP)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])


def load_record(mitdb_dir: str | os.PathLike, name: str) -> Record:
    """Read record `name` (e.g. "213") from a WFDB directory; every bad input is a one-line DataError."""
    import wfdb  # imported here so that importing harness.bench.data stays cheap

    directory = Path(mitdb_dir)
    name = str(name).strip()
    if not directory.is_dir():
        raise DataError(f"MIT-BIH directory {directory} does not exist", _DOWNLOAD_HINT, code="HIL121")
    base = directory / name
    header = base.with_name(name + ".hea")
    if not header.is_file():
        if name not in ALL_RECORDS:
            raise DataError(f"unknown record '{name}' (no {header.name} in {directory})",
                            "MIT-BIH record names are 100-234, e.g. 213, or use DS1, DS2, all, bundled",
                            code="HIL125")
        raise DataError(f"record {name}: header file {header.name} missing in {directory}", _DOWNLOAD_HINT,
                        code="HIL122")
    try:
        head = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises assorted types for a malformed header
        raise DataError(f"record {name}: cannot read {header.name} ({_first_line(exc)})",
                        "restore the file from the MIT-BIH distribution", code="HIL126") from None
    _check_dat_files(directory, name, head)

    annotation = base.with_name(name + ".atr")
    if not annotation.is_file():
        raise DataError(f"record {name}: annotation file {annotation.name} missing in {directory}",
                        "copy the .atr file next to the .hea and .dat files", code="HIL123")

    try:
        rec = wfdb.rdrecord(str(base), physical=True)
    except Exception as exc:
        # A .dat shorter than the header says makes wfdb fail on array shapes (ValueError).
        raise DataError(f"record {name}: signal unreadable or shorter than its header says "
                        f"({_first_line(exc)})", "restore the .dat file (it looks truncated)",
                        code="HIL124") from None
    signal = np.asarray(rec.p_signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] < head.sig_len:
        raise DataError(f"record {name}: signal has {signal.shape[0]} samples, header says {head.sig_len}",
                        "restore the .dat file (it looks truncated)", code="HIL124")
    try:
        ann = wfdb.rdann(str(base), "atr")
    except Exception as exc:
        raise DataError(f"record {name}: cannot read {annotation.name} ({_first_line(exc)})",
                        "restore the .atr file from the MIT-BIH distribution", code="HIL123") from None

    samples = np.asarray(ann.sample, dtype=np.int64)
    symbols = list(ann.symbol)
    keep = np.fromiter((s in AAMI_MAP for s in symbols), dtype=bool, count=len(symbols))
    r_peaks = samples[keep]
    signal.flags.writeable = False
    r_peaks.flags.writeable = False
    return Record(name=name, fs=float(rec.fs), signal=signal, channels=tuple(rec.sig_name),
                  r_peaks=r_peaks, symbols=tuple(s for s, k in zip(symbols, keep) if k))


def _check_dat_files(directory: Path, name: str, head) -> None:
    """Every signal file the header names must exist and hold at least sig_len samples per channel."""
    files: dict[str, list[int]] = {}
    for i, fname in enumerate(head.file_name):
        files.setdefault(fname, []).append(i)
    for fname, channels in files.items():
        path = directory / fname
        if not path.is_file():
            raise DataError(f"record {name}: signal file {fname} missing in {directory}", _DOWNLOAD_HINT,
                            code="HIL122")
        fmt = str(head.fmt[channels[0]])
        per_sample = _BYTES_PER_SAMPLE.get(fmt)
        if per_sample is None or not head.sig_len:
            continue  # unusual format: the sample-count check after reading still catches a short file
        offset = int((head.byte_offset or [0] * len(head.file_name))[channels[0]] or 0)
        needed = offset + int(np.ceil(head.sig_len * len(channels) * per_sample))
        size = path.stat().st_size
        if size < needed:
            raise DataError(f"record {name}: {fname} is {size} bytes, header needs {needed} "
                            f"({head.sig_len} samples x {len(channels)} channels, format {fmt})",
                            "restore the .dat file (it looks truncated)", code="HIL124")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve_records(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Record names from a spec: "DS1", "DS2", "all", "bundled", "213,232", or a mix ("DS2,102")."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for token in (str(t).strip() for t in tokens):
        if not token:
            continue
        group = {"ds1": DS1, "ds2": DS2, "all": ALL_RECORDS, "bundled": BUNDLED_RECORDS,
                 "paced": PACED}.get(token.lower())
        if group is None:
            if token not in ALL_RECORDS:
                raise DataError(f"unknown record '{token}'",
                                "MIT-BIH record names are 100-234 (e.g. 213), or use DS1, DS2, all, bundled",
                                code="HIL125")
            group = (token,)
        names.extend(n for n in group if n not in names)
    if not names:
        raise DataError(f"no records in '{spec}'", "give e.g. --records DS2 or --records 213,232",
                        code="HIL125")
    return tuple(names)


def iter_records(mitdb_dir: str | os.PathLike, names: str | Iterable[str]) -> Iterator[Record]:
    """Load records one at a time (a spec string like "DS2" is resolved first)."""
    for name in resolve_records(names):
        yield load_record(mitdb_dir, name)


# --- Beats and windows -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Beat:
    """One annotated beat: where it is and what the cardiologists called it."""

    record: str
    index: int     # 0-based among the record's kept beat annotations
    sample: int    # R-peak (annotation) sample at the record's rate
    symbol: str    # MIT-BIH annotation symbol
    aami: str      # AAMI class, one of AAMI_CLASSES


@dataclass(frozen=True, eq=False)
class Windows:
    """The model inputs of one record's beats, row i belonging to beats[i]."""

    beats: list[Beat]
    x: np.ndarray   # float32 [n, spec.length]
    skipped: int    # beats whose window crossed the start or end of the record

    def labels(self) -> np.ndarray:
        """AAMI class index (into AAMI_CLASSES) of each row."""
        index = {c: i for i, c in enumerate(AAMI_CLASSES)}
        return np.array([index[b.aami] for b in self.beats], dtype=np.int64)


def beat_windows(record: Record, spec: WindowSpec) -> Windows:
    """Cut, decimate and normalize one window per beat; beats too close to an edge are skipped."""
    if spec.normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalization '{spec.normalize}'", f"use one of {', '.join(NORMALIZATIONS)}",
                        code="HIL127")
    if spec.mask not in MASKS:
        raise DataError(f"unknown window mask '{spec.mask}'", f"use one of {', '.join(MASKS)}", code="HIL127")
    if spec.rhythm not in RHYTHMS:
        raise DataError(f"unknown rhythm features '{spec.rhythm}'", f"use one of {', '.join(RHYTHMS)}",
                        code="HIL127")
    if spec.decimate < 1 or spec.morphology_length < 1:
        raise DataError(f"window {spec} is empty", "before + after must be at least decimate samples",
                        code="HIL127")
    if not 0 <= spec.channel < record.signal.shape[1]:
        raise DataError(f"record {record.name} has no channel {spec.channel} "
                        f"(it has {', '.join(record.channels)})", "use channel 0 (MLII) or 1", code="HIL127")

    signal = record.signal[:, spec.channel].astype(np.float64)
    length = spec.morphology_length
    span = length * spec.decimate  # samples actually used; a remainder after the last block is dropped
    starts = record.r_peaks - spec.before
    inside = (starts >= 0) & (starts + span <= signal.shape[0])
    if spec.rhythm != "none":  # the first and last beats have no pre- or post-RR: skipped like edge beats
        inside[:1] = False
        inside[-1:] = False
    kept = np.flatnonzero(inside)

    windows = signal[starts[kept, None] + np.arange(span)[None, :]]
    windows = windows.reshape(len(kept), length, spec.decimate).mean(axis=2)
    windows = _normalize(windows, signal, spec.normalize)
    if spec.mask == "half_rr":
        windows = _mask_half_rr(windows, record.r_peaks, kept, starts[kept], spec)
    if spec.rhythm == "rr":
        windows = np.concatenate([windows, rhythm_features(record.r_peaks, record.fs)[kept]], axis=1)

    beats = [Beat(record=record.name, index=int(i), sample=int(record.r_peaks[i]),
                  symbol=record.symbols[i], aami=AAMI_MAP[record.symbols[i]]) for i in kept]
    return Windows(beats=beats, x=windows.astype(np.float32), skipped=int(len(starts) - len(kept)))


_EPS = 1e-6

RR_FEATURES = ("pre_rr_s", "post_rr_s", "local_rr_s", "pre_rr_ratio", "post_rr_ratio", "local_rr_ratio")


def rhythm_features(r_peaks: np.ndarray, fs: float) -> np.ndarray:
    """RR_FEATURES of every beat (float64 [n_beats, 6], × RR_GAIN, clipped to [0, RR_CLIP]).

    pre-RR (this R peak − the previous), post-RR (the next − this: one beat of latency, the only value
    from after the beat), local RR (mean of the last RR_LOCAL_BEATS pre-RRs, this one included), and each
    divided by the running mean RR of the record so far (every pre-RR up to this beat's). Nothing else
    from the future and no whole-record statistic. Row 0 (no pre-RR) and the last row (no post-RR) are
    placeholders: beat_windows skips those beats.
    """
    r = np.asarray(r_peaks, dtype=np.float64)
    n = len(r)
    out = np.zeros((n, len(RR_FEATURES)))
    if n < 2:
        return out
    rr = np.empty(n)
    rr[1:] = np.diff(r) / fs
    rr[0] = rr[1]  # placeholder for beat 0, never used by a kept beat
    pre = rr
    post = np.r_[rr[1:], rr[-1]]
    cum = np.cumsum(rr[1:])  # cum[k] = sum of rr[1..k+1]
    local = np.empty(n)
    running = np.empty(n)
    for i in range(n):
        hi = max(i, 1)
        lo = max(1, hi - RR_LOCAL_BEATS + 1)
        local[i] = (cum[hi - 1] - (cum[lo - 2] if lo >= 2 else 0.0)) / (hi - lo + 1)
        running[i] = cum[hi - 1] / hi
    out[:] = np.stack([pre, post, local, pre / running, post / running, local / running], axis=1)
    return np.clip(out * RR_GAIN, 0.0, RR_CLIP)


def _mask_half_rr(windows: np.ndarray, r_peaks: np.ndarray, kept: np.ndarray, starts: np.ndarray,
                  spec: WindowSpec) -> np.ndarray:
    """Zero the window samples outside [(R[i-1] + R[i]) / 2, (R[i] + R[i+1]) / 2) of each kept beat i.

    A decimated sample stands for its block and counts as inside when the block's centre is. Integer
    arithmetic on doubled sample positions keeps the borders exact. The first and last beats of a record
    have no neighbour on one side and are not masked on that side.
    """
    far = np.iinfo(np.int64).max // 4
    low = np.full(len(r_peaks), -far, dtype=np.int64)
    high = np.full(len(r_peaks), far, dtype=np.int64)
    low[1:] = r_peaks[:-1] + r_peaks[1:]    # 2 x midpoint with the previous beat
    high[:-1] = r_peaks[:-1] + r_peaks[1:]  # 2 x midpoint with the next beat
    # doubled centre of output sample j of a window starting at `start`: 2 (start + j d) + d - 1
    centres = 2 * (starts[:, None] + spec.decimate * np.arange(spec.length)[None, :]) + spec.decimate - 1
    inside = (centres >= low[kept, None]) & (centres < high[kept, None])
    return np.where(inside, windows, 0.0)


def _normalize(windows: np.ndarray, channel: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return windows
    if how == "beat_zscore":
        mean = windows.mean(axis=1, keepdims=True)
        std = windows.std(axis=1, keepdims=True)
        return (windows - mean) / (std + _EPS)
    if how == "record_zscore":
        return (windows - channel.mean()) / (channel.std() + _EPS)
    # beat_minmax: a flat window (max == min) maps to all zeros rather than dividing by zero
    low = windows.min(axis=1, keepdims=True)
    high = windows.max(axis=1, keepdims=True)
    return (windows - low) / np.maximum(high - low, _EPS)


# --- Quantization ------------------------------------------------------------------------------------

def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float → INT8 with a tensor's (scale, zero_point): clip(round(x / scale) + zero_point, -128, 127).

    Rounding is half away from zero, computed in float32, because that is what TFLite's and TFLM's
    QUANTIZE kernels do (reference_ops::AffineQuantize: `TfLiteRound(val / (float)scale)`, TfLiteRound
    being std::round). numpy's np.round is half-to-even and would differ on exact ties (x / scale = k + 0.5);
    models/cnn1d/train.py checks this function against the converter's own QUANTIZE op.
    """
    # The division in float32 like the kernel; the rounding in float64, where |q| + 0.5 is exact (in
    # float32, 0.49999997 + 0.5 would round up to 1.0 while std::round(0.49999997) is 0).
    q = (np.asarray(x, dtype=np.float32) / np.float32(scale)).astype(np.float64)
    q = np.sign(q) * np.floor(np.abs(q) + 0.5) + int(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)
