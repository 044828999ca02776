"""Reference outputs computed once: a content-addressed disk cache in front of a host interpreter.

What the device must answer depends only on the model bytes, the input bytes and the interpreter (name,
version, kernels). The key is the sha256 of exactly those, so N boards running the same beats, shards of
one run and repeated CI runs over the same records share one computation, and a new model, new beats or
another tflite-runtime version can never hit a stale entry.

One entry is one batch (the bench asks per record): `<dir>/<key[:2]>/<key>.npy`. Writers put the array in
a temporary file in the same directory and `os.replace` it into place, which is atomic on POSIX: a
concurrent reader sees either no entry or a whole one, and two writers of the same key write the same
bytes. An entry that cannot be read (disk trouble, a foreign file) is recomputed and rewritten, never
trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .reference import Reference

SCHEMA = b"hil-bench reference cache v1\x00"


def default_dir() -> Path:
    """`$HIL_REFERENCE_CACHE`, else `$XDG_CACHE_HOME/hil-bench/reference` (`~/.cache/...`)."""
    if os.environ.get("HIL_REFERENCE_CACHE"):
        return Path(os.environ["HIL_REFERENCE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hil-bench" / "reference"


def check_dir(path: Path) -> Path:
    """Create the cache directory or say why it cannot be used (before any board is touched)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise ConfigError(f"reference cache directory {path} is not writable ({exc.strerror or exc})",
                          "pass --reference-cache DIR with a writable directory, or --reference-cache off",
                          code="HIL130") from None
    return path


class CachedReference(Reference):
    """`inner` with its outputs kept on disk; same interface, same bytes, counts hits and misses."""

    def __init__(self, inner: Reference, model_sha256: str, cache_dir: Path):
        self.inner = inner
        self.model_sha256 = model_sha256
        self.dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        self.name, self.version, self.kernels, self.note = inner.name, inner.version, inner.kernels, inner.note
        self.input_shape, self.output_bytes = inner.input_shape, inner.output_bytes

    def key(self, beats: np.ndarray) -> str:
        h = hashlib.sha256(SCHEMA)
        for part in (self.model_sha256, self.name, self.version, self.kernels, repr(self.input_shape)):
            h.update(str(part).encode() + b"\x00")
        h.update(np.ascontiguousarray(beats).tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def run(self, inputs: np.ndarray) -> np.ndarray:
        beats = self._beats(inputs)
        path = self.path(self.key(beats))
        out = self._load(path, len(beats))
        if out is not None:
            self.hits += 1
            return out
        self.misses += 1
        out = self.inner.run(beats)
        self._store(path, out)
        return out

    def _load(self, path: Path, n: int) -> np.ndarray | None:
        try:
            out = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or unreadable: recompute and replace
        if out.dtype != np.int8 or out.shape != (n, self.output_bytes):
            return None
        return out

    def _store(self, path: Path, out: np.ndarray) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:12]}-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, out, allow_pickle=False)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            pass  # a full or read-only disk costs the next run a recomputation, not this run its result

    def stats(self) -> dict:
        return {"dir": str(self.dir), "hits": self.hits, "misses": self.misses}

