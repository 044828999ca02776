"""The reference cache (harness/bench/refcache.py): same bytes as the interpreter, computed once, keyed on all that
matters, safe with concurrent writers; and the bench run through the plugin uses it."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.bench.refcache import CachedReference, check_dir
from harness.bench.reference import make_reference

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def model_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.tflite").read_bytes()


def beats(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(-128, 128, size=(n, 187)).astype(np.int8)


class Counting:
    """Wraps a real reference and counts the beats it computes."""

    def __init__(self, inner):
        self.inner = inner
        self.computed = 0
        for attr in ("name", "version", "kernels", "note", "input_shape", "output_bytes"):
            setattr(self, attr, getattr(inner, attr))

    def run(self, inputs):
        self.computed += len(inputs)
        return self.inner.run(inputs)


def cached(tmp_path, model="fc_int8", ref="tflite-ref", sha=None) -> tuple[CachedReference, Counting]:
    inner = Counting(make_reference(ref, model_bytes(model)))
    return CachedReference(inner, sha or model, tmp_path / "cache"), inner


def test_second_run_is_served_from_disk_with_the_same_bytes(tmp_path):
    x = beats(200)
    first, inner1 = cached(tmp_path)
    out1 = first.run(x)
    np.testing.assert_array_equal(out1, make_reference("tflite-ref", model_bytes("fc_int8")).run(x))
    assert (first.hits, first.misses, inner1.computed) == (0, 1, 200)
    # Another process (a second board, the next CI run): a fresh object over the same directory.
    second, inner2 = cached(tmp_path)
    out2 = second.run(x.reshape(200, 187, 1) if second.input_shape[-1:] == (1,) else x)
    np.testing.assert_array_equal(out1, out2)
    assert (second.hits, second.misses, inner2.computed) == (1, 0, 0)
    assert len({row.tobytes() for row in out2}) > 50  # real outputs, not a constant


def test_key_covers_model_inputs_and_interpreter(tmp_path):
    x = beats(30)
    ref, _ = cached(tmp_path)
    base = ref.key(x)
    y = x.copy()
    y[7, 100] ^= 1  # one input bit
    assert ref.key(y) != base
    assert cached(tmp_path, sha="another-model")[0].key(x) != base
    other_version, _ = cached(tmp_path)
    other_version.version = "9.9.9"
    assert other_version.key(x) != base
    assert cached(tmp_path, ref="tflm")[0].key(x) != base
    assert ref.key(x.copy()) == base  # content, not identity


def test_unreadable_entry_is_recomputed_and_replaced(tmp_path):
    x = beats(40)
    ref, inner = cached(tmp_path)
    good = ref.run(x)
    path = ref.path(ref.key(x))
    path.write_bytes(b"\x93NUMPY garbage")  # a foreign or damaged file
    again, inner2 = cached(tmp_path)
    np.testing.assert_array_equal(again.run(x), good)
    assert inner2.computed == 40 and again.misses == 1
    assert np.array_equal(np.load(path), good)


def _writer(cache_dir: str, seed: int, barrier) -> bytes:
    ref = CachedReference(make_reference("tflite-ref", model_bytes("fc_int8")), "fc_int8", Path(cache_dir))
    barrier.wait()
    return ref.run(beats(300, seed)).tobytes()


def test_concurrent_writers_leave_one_whole_entry(tmp_path):
    cache = tmp_path / "cache"
    n = 6
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            outs = pool.starmap(_writer, [(str(cache), 5, barrier)] * n)
    assert len(set(outs)) == 1
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npy", files  # no temporary file left behind
    assert np.load(files[0]).tobytes() == outs[0]


def test_unwritable_cache_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        check_dir(blocker / "cache")
    assert info.value.code == "HIL130" and "--reference-cache" in info.value.hint


def test_bench_fills_then_reads_the_cache(tmp_path):
    cache = tmp_path / "refcache"

    def bench(out: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--models", "cnn1d_beat",
             "--records", "213", "--max-beats", "40", "--reference-cache", str(cache), "--out", str(tmp_path / out)],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((tmp_path / out / "results.json").read_text())

    first = bench("a")["results"][0]
    second = bench("b")["results"][0]
    assert first["provenance"]["reference_cache"]["misses"] == 2  # reference and cross-check, one record
    assert second["provenance"]["reference_cache"] == {"dir": str(cache), "hits": 2, "misses": 0}
    assert first["bit_exact"] == second["bit_exact"] and first["accuracy"] == second["accuracy"]
