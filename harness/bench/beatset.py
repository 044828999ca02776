"""Which beats a run's figures cover (the beat-set fingerprint) and the per-beat labels a paired comparison needs.

Two runs' accuracy figures say something about each other only when they come from the same beats, so a
Result carries `provenance["beat_set"]`: a SHA-256 over the content of every record file used (header,
signal, annotations) and the ordered list of (record, R-peak sample, annotation symbol) of the beats the
run planned to stream. Another record, another `--max-beats`, a model window that drops other edge beats or
an edited annotation file all give another fingerprint; the gate compares figures only on equal ones.

`per_beat` keeps, for each verified beat in stream order, one character for the true label and one for the
model's answer (index into `labels`, "-" when the beat has no label for this model), plus how many beats
each record contributed: enough to pair two runs beat by beat (McNemar) and to resample records (bootstrap)
without keeping the outputs. Baselines store the two strings zlib-compressed and base64-encoded.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

FINGERPRINT_VERSION = "beats/1"
_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NO_LABEL = "-"
# The files of a WFDB record that decide the beats: header, signal, reference annotations.
_RECORD_SUFFIXES = (".hea", ".dat", ".atr")


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are in the key so an edited file is hashed again within one process.
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_digest(mitdb_dir: str | os.PathLike, name: str) -> str:
    """SHA-256 over the record's .hea, .dat and .atr files (those that exist), in that order."""
    h = hashlib.sha256()
    for suffix in _RECORD_SUFFIXES:
        path = Path(mitdb_dir) / f"{name}{suffix}"
        if path.is_file():
            st = path.stat()
            h.update(f"{suffix}:{_file_digest(str(path), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()


class BeatSet:
    """Accumulates records and beats in stream order; `to_dict()` is `provenance["beat_set"]`."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(FINGERPRINT_VERSION.encode() + b"\n")
        self.records: list[str] = []
        self.beats = 0

    def add_record(self, mitdb_dir: str | os.PathLike, name: str, beats: Iterable) -> None:
        """Add one record's planned beats (objects with .sample and .symbol, e.g. data.Beat)."""
        self._h.update(f"record {name} {record_digest(mitdb_dir, name)}\n".encode())
        count = 0
        for beat in beats:
            self._h.update(f"{name},{int(beat.sample)},{beat.symbol}\n".encode())
            count += 1
        self.records.append(str(name))
        self.beats += count

    def note(self, text: str) -> None:
        """Something besides the record files that changes what the beats are (e.g. added noise)."""
        self._h.update(f"note {text}\n".encode())

    @property
    def fingerprint(self) -> str:
        return self._h.copy().hexdigest()

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "beats": self.beats, "records": list(self.records),
                "version": FINGERPRINT_VERSION}


# -- per-beat labels -----------------------------------------------------------------------------------------
def label_char(index: int | None) -> str:
    if index is None:
        return NO_LABEL
    if not 0 <= index < len(_SYMBOLS):
        raise ValueError(f"label index {index} out of range (at most {len(_SYMBOLS)} labels)")
    return _SYMBOLS[index]


def char_index(char: str) -> int:
    """Inverse of label_char; -1 for NO_LABEL."""
    return -1 if char == NO_LABEL else _SYMBOLS.index(char)


def encode_per_beat(labels: Sequence[str], records: Sequence[tuple[str, int]], true: str, pred: str) -> dict:
    if len(true) != len(pred) or len(true) != sum(n for _, n in records):
        raise ValueError(f"per-beat strings of {len(true)} and {len(pred)} beats do not match the record "
                         f"counts ({sum(n for _, n in records)} beats)")
    return {"labels": list(labels), "records": [[str(r), int(n)] for r, n in records], "true": true,
            "pred": pred}


def pack(text: str) -> str:
    """A per-beat string as it is stored in a baseline: zlib (level 9), then base64."""
    return base64.b64encode(zlib.compress(text.encode("ascii"), 9)).decode("ascii")


def unpack(blob: str) -> str:
    return zlib.decompress(base64.b64decode(blob.encode("ascii"))).decode("ascii")
