"""Noise on the records: MIT-BIH Noise Stress Test Database noise at a chosen SNR, added before windowing.

Sits between records and beats: `NoiseMix.apply(record)` returns the same Record with NSTDB noise added to
its signal, so windowing, quantization, the board and the bit-exactness check see the noisy ECG exactly as
they see a clean one. Runtime dependencies: numpy and wfdb only.

Scaling follows the NSTDB's own generator, WFDB's `nst` (app/nst.c) with the amplitudes `sigamp` measures
(app/sigamp.c), per record and per channel:

- signal amplitude A: `sigamp -a atr` — the peak-to-peak amplitude of each "normal" QRS (WFDB map1 ==
  NORMAL: every beat but V, E, F) within ±0.05 s of its annotation, over the first 300 such beats; the
  mean after dropping the lowest and highest 5 % (namp/20 values at each end);
- noise amplitude R: `sigamp -r` — the RMS of the noise in consecutive 1 s windows, each window's mean
  removed, over the first 300 windows; the same 5 % trimmed mean;
- `nst -s SNR`: nsr = 10^(-SNR/20) · √2/4 (RMS noise over peak-to-peak signal, for a sinusoid whose power
  is A²/8), and the noise gain is nsr · A / R. So SNR = 10·log10((A²/8) / (gain·R)²).

Where this differs from `nst`, and why: nst measures R over the first 300 s of the noise record and adds
the noise from its first sample; here each record gets the noise from a seeded offset (so the records of
a run do not all carry the same noise at the same time), and R is measured over the first 300 s of the
noise this record actually gets — the same 300 s nst measures when the offset is 0. nst alternates 2 min
of noise with 2 min of clean signal after a clean first 5 min (its protocol annotation file); here the
noise runs through the whole record, because the figure wanted is accuracy at one SNR. Where the noise is
shorter than the record it is played forwards, then backwards, and so on, which keeps it continuous
without nst's DC offsets at each wrap. Noise record channel i goes onto ECG channel i (nst: i mod the
noise record's channel count).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Record
from ..errors import DataError

REPO = Path(__file__).resolve().parent.parent.parent
# CI lays out ../shared beside the repository (docs/architecture.md); the repo carries 300 s of bw and ma.
SHARED_DIR = REPO.parent / "shared" / "nstdb"
BUNDLED_DIR = REPO / "data" / "nstdb"

NOISE_RECORDS = {"bw": "baseline wander", "ma": "muscle (EMG) artifact", "em": "electrode motion artifact"}
SWEEP_SNRS_DB = (24.0, 18.0, 12.0, 6.0, 0.0, -6.0)
DEFAULT_SEED = 0

# sigamp's constants (app/sigamp.c): NMAX measurements, ±0.05 s QRS window, 1 s RMS windows, 5 % trim.
SIGAMP_NMAX = 300
SIGAMP_QRS_HALF_S = 0.05
SIGAMP_RMS_WINDOW_S = 1.0
# MIT-BIH symbols WFDB's map1() calls NORMAL (lib/ecgmap.h): all beats except V, E (PVC), F (fusion), r, !.
SIGAMP_NORMAL = frozenset("NLRaJASj/QBenf")

_GET_NSTDB = ("python -c \"import wfdb; wfdb.dl_database('nstdb', 'nstdb', records=['bw', 'ma', 'em'])\" "
              "then give --nstdb nstdb")


@dataclass(frozen=True)
class NoiseTerm:
    """One noise record added at one SNR (dB, NSTDB's definition)."""

    name: str
    snr_db: float

    def __str__(self) -> str:
        return f"{self.name}:{_fmt_db(self.snr_db)}"


def _fmt_db(value: float) -> str:
    return f"{value:g}"


# --- Options -----------------------------------------------------------------------------------------

def parse_spec(text: str) -> tuple[NoiseTerm, ...]:
    """`--noise bw:12,ma:6` → (bw at 12 dB, ma at 6 dB); both are added to every record."""
    fix = "give NAME:SNR_DB pairs, e.g. --noise bw:12 or --noise bw:12,ma:6 (names: bw, ma, em)"
    terms: list[NoiseTerm] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, sep, snr = part.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise DataError(f"--noise '{text}': '{part}' is not NAME:SNR_DB", fix, code="HIL150")
        _check_name(name, "--noise")
        try:
            snr_db = float(snr)
        except ValueError:
            raise DataError(f"--noise '{text}': SNR '{snr.strip()}' of {name} is not a number (dB)", fix,
                            code="HIL150") from None
        if not math.isfinite(snr_db) or not -60.0 <= snr_db <= 100.0:
            raise DataError(f"--noise '{text}': SNR {snr.strip()} dB of {name} is outside -60..100 dB", fix,
                            code="HIL150")
        if any(t.name == name for t in terms):
            raise DataError(f"--noise '{text}' names {name} twice", fix, code="HIL150")
        terms.append(NoiseTerm(name, snr_db))
    if not terms:
        raise DataError(f"--noise '{text}' names no noise", fix, code="HIL150")
    return tuple(terms)


def parse_sweep(text: str) -> tuple[str, ...]:
    """`--noise-sweep bw,ma` → ("bw", "ma")."""
    names: list[str] = []
    for name in (p.strip().lower() for p in str(text).split(",")):
        if not name:
            continue
        if ":" in name:
            raise DataError(f"--noise-sweep '{text}': give noise names only, the sweep sets the SNRs",
                            "e.g. --noise-sweep bw,ma (and --noise-snr 12,0 for other SNRs)", code="HIL150")
        _check_name(name, "--noise-sweep")
        if name not in names:
            names.append(name)
    if not names:
        raise DataError(f"--noise-sweep '{text}' names no noise", "e.g. --noise-sweep bw,ma", code="HIL150")
    return tuple(names)


def parse_snrs(text: str) -> tuple[float, ...]:
    """`--noise-snr 24,12,0` → SNRs of a sweep in dB, highest first."""
    values: list[float] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise DataError(f"--noise-snr '{text}': '{part}' is not a number (dB)",
                            "e.g. --noise-snr 24,18,12,6,0,-6", code="HIL150") from None
        if not math.isfinite(value) or not -60.0 <= value <= 100.0:
            raise DataError(f"--noise-snr '{text}': {part} dB is outside -60..100 dB",
                            "e.g. --noise-snr 24,18,12,6,0,-6", code="HIL150")
        if value not in values:
            values.append(value)
    if not values:
        raise DataError(f"--noise-snr '{text}' gives no SNR", "e.g. --noise-snr 24,18,12,6,0,-6", code="HIL150")
    return tuple(sorted(values, reverse=True))


def _check_name(name: str, option: str) -> None:
    if name not in NOISE_RECORDS:
        raise DataError(f"{option}: unknown noise record '{name}'",
                        "NSTDB noise records are bw (baseline wander), ma (muscle artifact), em (electrode "
                        "motion)", code="HIL151")


# --- Noise records -----------------------------------------------------------------------------------

class NoiseSource:
    """The NSTDB noise records of one directory, read once (float64 mV, [n_samples, n_channels])."""

    def __init__(self, directory: Path, *, bundled: bool):
        self.directory = Path(directory)
        self.bundled = bundled
        self._cache: dict[str, tuple[float, np.ndarray]] = {}

    @property
    def label(self) -> str:
        """Where the noise came from, for provenance."""
        if self.bundled:
            return f"{self.directory} (bundled: the first 300 s of each NSTDB record)"
        return str(self.directory)

    def check(self, names) -> None:
        """Fail now, with the fix, when a noise record is not in the directory."""
        for name in names:
            self.load(name)

    def load(self, name: str) -> tuple[float, np.ndarray]:
        """(fs, signal) of noise record `name`; one-line DataError when absent or unreadable."""
        if name in self._cache:
            return self._cache[name]
        import wfdb  # imported here so that importing harness.bench.noise stays cheap

        _check_name(name, "noise")
        header = self.directory / f"{name}.hea"
        if not header.is_file():
            where = "the bundled segment" if self.bundled else str(self.directory)
            if name == "em":
                raise DataError(f"noise record em (electrode motion) is not in {where}: ../shared/nstdb and "
                                "the repository carry only bw and ma", f"download it: {_GET_NSTDB}",
                                code="HIL151")
            raise DataError(f"noise record {name} ({header.name}) is missing in {where}",
                            f"copy {name}.hea and {name}.dat there, or {_GET_NSTDB}", code="HIL153")
        try:
            rec = wfdb.rdrecord(str(self.directory / name), physical=True)
            signal = np.asarray(rec.p_signal, dtype=np.float64)
        except Exception as exc:  # wfdb raises assorted types for a malformed or short record
            text = str(exc).strip().splitlines()
            raise DataError(f"noise record {name} in {self.directory} is unreadable "
                            f"({type(exc).__name__}: {text[0] if text else ''})",
                            f"restore {name}.hea and {name}.dat from the NSTDB distribution", code="HIL153") from None
        fs = float(rec.fs)
        if signal.ndim != 2 or signal.shape[0] < int(round(fs * SIGAMP_RMS_WINDOW_S)) or not np.isfinite(signal).all():
            raise DataError(f"noise record {name} in {self.directory} holds {signal.shape[0]} samples, "
                            "less than one second", f"restore {name}.dat from the NSTDB distribution",
                            code="HIL153")
        signal.flags.writeable = False
        self._cache[name] = (fs, signal)
        return self._cache[name]


def resolve_source(directory: str | os.PathLike | None) -> NoiseSource:
    """`--nstdb DIR`, else ../shared/nstdb beside the repository, else the bundled 300 s segment."""
    if directory is not None:
        path = Path(directory)
        if not path.is_dir():
            raise DataError(f"NSTDB directory {path} does not exist",
                            f"give --nstdb the directory holding bw.hea/bw.dat and ma.hea/ma.dat, or omit "
                            f"--nstdb to use ../shared/nstdb or the bundled segment; to get it: {_GET_NSTDB}",
                            code="HIL152")
        return NoiseSource(path, bundled=False)
    if (SHARED_DIR / "bw.hea").is_file() or (SHARED_DIR / "ma.hea").is_file():
        return NoiseSource(SHARED_DIR, bundled=False)
    if BUNDLED_DIR.is_dir():
        return NoiseSource(BUNDLED_DIR, bundled=True)
    raise DataError(f"no NSTDB noise: neither {SHARED_DIR} nor the bundled {BUNDLED_DIR} exists",
                    f"give --nstdb DIR; to get the records: {_GET_NSTDB}", code="HIL152")


# --- Amplitudes (sigamp) -----------------------------------------------------------------------------

def trimmed_mean(values: np.ndarray) -> float:
    """sigamp's trimmed mean: sort, drop namp/20 values at each end, average the rest."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    drop = len(values) // 20
    kept = values[drop:len(values) - drop]
    return float(kept.mean()) if len(kept) else float("nan")


def qrs_amplitude(record: Record, channel: int) -> float:
    """`sigamp -a atr`: trimmed mean peak-to-peak amplitude (mV) of the first 300 normal QRS complexes."""
    fs = record.fs
    half = int(SIGAMP_QRS_HALF_S * fs + 0.5)  # WFDB strtim("0.05") at 360 Hz: 18 samples
    signal = record.signal[:, channel].astype(np.float64)
    peaks = np.array([r for r, s in zip(record.r_peaks, record.symbols) if s in SIGAMP_NORMAL], dtype=np.int64)
    peaks = peaks[(peaks - half >= 0) & (peaks + half < len(signal))][:SIGAMP_NMAX]
    if len(peaks) == 0:
        raise DataError(f"record {record.name}: no normal QRS to measure the signal amplitude on",
                        "NSTDB scaling needs normal (non-V, non-F) beats; choose other --records", code="HIL154")
    windows = signal[peaks[:, None] + np.arange(-half, half + 1)[None, :]]
    return trimmed_mean(windows.max(axis=1) - windows.min(axis=1))


def rms_amplitude(noise: np.ndarray, fs: float) -> float:
    """`sigamp -r`: trimmed mean RMS (mV) of consecutive 1 s windows, each window's mean removed, first 300."""
    width = int(SIGAMP_RMS_WINDOW_S * fs + 0.5)
    count = min(len(noise) // width, SIGAMP_NMAX)
    blocks = np.asarray(noise[:count * width], dtype=np.float64).reshape(count, width)
    blocks = blocks - blocks.mean(axis=1, keepdims=True)
    return trimmed_mean(np.sqrt((blocks ** 2).mean(axis=1)))


def nst_gain(snr_db: float, qrs_pp: float, noise_rms: float) -> float:
    """nst's noise gain for an SNR in dB: 10^(-SNR/20) · √2/4 · A / R (app/nst.c)."""
    return 10.0 ** (-snr_db / 20.0) * math.sqrt(2.0) / 4.0 * qrs_pp / noise_rms


def nst_snr_db(qrs_pp: float, noise_rms: float) -> float:
    """The SNR nst means, from the two amplitudes: 10·log10((A²/8) / R²)."""
    return 10.0 * math.log10((qrs_pp ** 2 / 8.0) / noise_rms ** 2)


# --- Mixing ------------------------------------------------------------------------------------------

def record_offset(seed: int, record: str, length: int) -> int:
    """The noise sample a record's noise starts at: a function of the seed and the record name only."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(record).encode())])
    return int(rng.integers(0, length))


def noise_segment(noise: np.ndarray, offset: int, n: int) -> np.ndarray:
    """n samples of `noise` from `offset`, played forwards then backwards when it runs out (continuous)."""
    length = len(noise)
    idx = (offset + np.arange(n, dtype=np.int64)) % (2 * length)
    idx = np.where(idx < length, idx, 2 * length - 1 - idx)
    return noise[idx]


@dataclass
class NoiseMix:
    """Noise terms, where they come from and the seed: applies the same noise to a record every time."""

    terms: tuple[NoiseTerm, ...]
    source: NoiseSource
    seed: int = DEFAULT_SEED
    applied: dict = field(default_factory=dict)  # record → what was added (provenance)

    @property
    def spec(self) -> str:
        return ",".join(str(t) for t in self.terms)

    def apply(self, record: Record) -> Record:
        """The record with every term's noise added at its SNR; channels beyond the noise's wrap around."""
        signal = record.signal.astype(np.float64)
        n, channels = signal.shape
        info = {"offset": None, "qrs_pp_mv": [], "terms": {}}
        amplitudes = [qrs_amplitude(record, ch) for ch in range(channels)]
        info["qrs_pp_mv"] = amplitudes
        for term in self.terms:
            fs, noise = self.source.load(term.name)
            if abs(fs - record.fs) > 0.01 * record.fs:
                raise DataError(f"noise record {term.name} is sampled at {fs:g} Hz, record {record.name} at "
                                f"{record.fs:g} Hz", "use NSTDB noise at the records' rate (360 Hz)",
                                code="HIL153")
            offset = record_offset(self.seed, record.name, len(noise))
            if info["offset"] is None:
                info["offset"] = offset
            gains, rms = [], []
            for ch in range(channels):
                segment = noise_segment(noise[:, ch % noise.shape[1]], offset, n)
                r = rms_amplitude(segment, fs)
                if not r > 0:
                    raise DataError(f"noise record {term.name} channel {ch % noise.shape[1]} is flat",
                                    f"restore {term.name}.dat from the NSTDB distribution", code="HIL153")
                gain = nst_gain(term.snr_db, amplitudes[ch], r)
                signal[:, ch] += gain * segment
                gains.append(gain)
                rms.append(r)
            info["terms"][term.name] = {"snr_db": term.snr_db, "offset": offset, "gain": gains,
                                        "noise_rms_mv": rms}
        self.applied[record.name] = info
        noisy = signal.astype(np.float32)
        noisy.flags.writeable = False
        return dataclasses.replace(record, signal=noisy)

    def provenance(self) -> dict:
        """Result.provenance["noise"]: spec, seed, per-record offset (samples), source, per-record gains."""
        return {
            "spec": self.spec,
            "seed": self.seed,
            "offset": {name: info["offset"] for name, info in self.applied.items()},
            "source": self.source.label,
            "records": {name: dict(info) for name, info in self.applied.items()},
        }


@dataclass(frozen=True)
class SweepSpec:
    """`--noise-sweep`: which noise records, at which SNRs, each point a pass over the same beats."""

    names: tuple[str, ...]
    snrs_db: tuple[float, ...] = SWEEP_SNRS_DB
    source: NoiseSource | None = None
    seed: int = DEFAULT_SEED

    def mix(self, name: str, snr_db: float) -> NoiseMix:
        return NoiseMix(terms=(NoiseTerm(name, snr_db),), source=self.source, seed=self.seed)

    @property
    def label(self) -> str:
        return f"{','.join(self.names)} at {','.join(_fmt_db(s) for s in self.snrs_db)} dB"


def from_options(noise: str | None, sweep: str | None, snrs: str | None, seed: int | None,
                 nstdb: str | None) -> tuple[NoiseMix | None, SweepSpec | None]:
    """Check the noise options together (before anything runs) → (mix for --noise, sweep for --noise-sweep)."""
    if noise and sweep:
        raise DataError("--noise and --noise-sweep together", "give one: --noise for a run at one SNR, "
                        "--noise-sweep for accuracy against SNR (its clean pass is the reference)", code="HIL150")
    if snrs and not sweep:
        raise DataError("--noise-snr without --noise-sweep", "add --noise-sweep bw (or drop --noise-snr)",
                        code="HIL150")
    if not noise and not sweep:
        if nstdb is not None:
            resolve_source(nstdb)  # a wrong directory is still a mistake worth one line
        return None, None
    seed = DEFAULT_SEED if seed is None else int(seed)
    source = resolve_source(nstdb)
    if noise:
        terms = parse_spec(noise)
        source.check(t.name for t in terms)
        return NoiseMix(terms=terms, source=source, seed=seed), None
    names = parse_sweep(sweep)
    source.check(names)
    return None, SweepSpec(names=names, snrs_db=parse_snrs(snrs) if snrs else SWEEP_SNRS_DB, source=source,
                           seed=seed)
