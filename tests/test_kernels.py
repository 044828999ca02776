"""Kernels side by side (harness/bench/kernels.py, --kernels both): the paired speedup statistics, and the whole
flow end to end on the virtual board, whose two "builds" both compute with TFLM reference kernels and
differ only in the cost constants of their estimates (so its speedup is labelled a cost-model ratio)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.bench.kernels import compare, paired_speedup
from harness.bench.results import Result

REPO = Path(__file__).resolve().parent.parent


def test_paired_speedup_is_per_beat_on_the_same_beats_with_a_ci():
    rng = np.random.default_rng(3)
    fast = rng.normal(1000, 20, 400)
    slow = fast * 3.0 + rng.normal(0, 30, 400)  # 3x slower on the very same beats
    got = paired_speedup(fast, slow, warmup=10)
    assert got["paired_beats"] == 390
    lo, hi = got["ci95"]
    assert lo <= got["overall"] <= hi and lo < 3.0 < hi and hi - lo < 0.05
    assert abs(got["ratio_of_medians"] - 3.0) < 0.05
    assert paired_speedup([], [], warmup=0)["overall"] is None


def test_compare_refuses_a_speedup_across_different_cycle_sources():
    fast = Result("m", "d", "p", latency={"source": "device_cycles", "us": {"median": 1.0}})
    slow = Result("m", "d", "p", latency={"source": "static_estimate", "us": {"median": 4.0}})
    out = compare("esp-nn", {"esp-nn": fast, "reference": slow}, {"esp-nn": [1.0], "reference": [4.0]}, 0)
    assert out["speedup"]["source"] is None
    assert "different sources" in out["speedup"]["reason"]


def test_kernels_both_end_to_end_on_the_virtual_board(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "b"), "--models", "cnn1d_beat,conf_fc_odd_per_channel",
           "--records", "232", "--max-beats", "60", "--kernels", "both"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("kernels ")]
    assert len(lines) == 2 and all("cost-model ratio, not measured" in line for line in lines), proc.stdout
    for result in json.loads((out / "results.json").read_text())["results"]:
        k = result["kernels"]
        assert result["provenance"]["kernels"]["build"] == "reference" == k["primary"]
        assert set(k["builds"]) == {"esp-nn", "reference"}
        for build in k["builds"].values():
            assert build["bit_exact"] is True and build["verified_beats"] == 60
            assert build["computed_with"] == "TFLM reference kernels (virtual board)"
        assert "esp32s3" in k["builds"]["esp-nn"]["cycles_from"] and "virtual" in k["builds"]["reference"]["cycles_from"]
        speed = k["speedup"]
        assert speed["source"] == "static_estimate" and speed["overall"] > 1 and speed["paired_beats"] == 50
        assert "not a measurement" in k["note"]
        ops = speed["per_op"]
        assert ops and all(op["speedup"] > 0 for op in ops)
        assert [op["index"] for op in ops] == [op["index"] for op in result["per_op"]["ops"]]
        assert k["builds"]["esp-nn"]["per_op"]["source"] == "static_estimate"
