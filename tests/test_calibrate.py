"""`--calibrate` (harness/bench/calibrate.py): refitting a profile's cost constants from per-op device cycles.

No board is attached here, so the device cycles are synthetic: per-op tables made from known constants
(with noise), in the exact shape bench.py writes from OP_TIMES. The fit must recover the constants, write
them with the board and date into a copy of a profile that still loads, and refuse estimates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.bench import calibrate
from harness.errors import ConfigError
from harness.bench.model import load_registry
from harness.bench.perop import op_shapes
from harness.bench.costmodel import _op_work
from harness.boards.profiles import PROFILES_DIR, load_profile
from harness.bench.results import Result

REPO = Path(__file__).resolve().parent.parent
TRUE = {"CONV_2D": 1.7, "DEPTHWISE_CONV_2D": 2.6, "FULLY_CONNECTED": 1.3, "op": 1800.0, "elem": 3.0, "invoke": 5200}


def _measured(model, rng) -> Result:
    """A Result whose per_op holds device cycles from TRUE's constants, ±2 % noise."""
    macs = {i: m for i, _op, m, _e in _op_work(model.data)}
    ops = []
    for op in op_shapes(model.data):
        elements = sum(int(np.prod(s)) for s in op["shapes"]["out"])
        cycles = TRUE["op"] + macs[op["index"]] * TRUE.get(op["op"], 0.0) + elements * TRUE["elem"]
        ops.append({"index": op["index"], "op": op["op"], "shapes": op["shapes"], "macs": macs[op["index"]],
                    "cycles": int(cycles * rng.uniform(0.98, 1.02)), "share": None})
    total = sum(op["cycles"] for op in ops)
    r = Result(model.name, "/dev/ttyUSB0", "esp32s3")
    r.per_op = {"source": "device_cycles", "beat": 0, "ops": ops, "ops_cycles": total,
                "invoke_cycles": total + TRUE["invoke"]}
    r.provenance["firmware"] = {"chip": "esp32s3", "build_hash": "0123abcd4567ef89", "kernel_mode": "esp-nn"}
    return r


def test_fit_recovers_the_constants_and_writes_a_loadable_profile(tmp_path):
    rng = np.random.default_rng(5)
    results = [_measured(m, rng) for m in load_registry()]
    path = tmp_path / "esp32s3.yaml"
    shutil.copy(PROFILES_DIR / "esp32s3.yaml", path)
    profile = load_profile(path)
    line = calibrate.calibrate(profile, results, "/dev/ttyUSB0")
    assert "calibrated" in line and "device cycles" in line
    new = load_profile(path)
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        assert new.cost.mac_cycles(op) == pytest.approx(TRUE[op], rel=0.1), op
    assert new.cost.cycles_per_element == pytest.approx(TRUE["elem"], rel=0.25)
    assert new.cost.invoke_overhead_cycles == TRUE["invoke"]
    cal = new.calibration
    assert cal["board"] == {"device": "/dev/ttyUSB0", "chip": "esp32s3", "firmware_build": "0123abcd4567ef89",
                            "kernels": "esp-nn"}
    assert cal["date"] and cal["ops"] == sum(len(r.per_op["ops"]) for r in results) and cal["median_rel_error"] < 0.05
    # Everything but the cost block is the profile as it was; a second calibration replaces the first.
    assert new.arena_bytes == profile.arena_bytes and new.model_max_bytes == profile.model_max_bytes
    calibrate.calibrate(new, results, "/dev/ttyUSB0")
    assert path.read_text().count("calibration:") == 1 and path.read_text().count("\ncost:") == 1


def test_estimates_never_calibrate(tmp_path):
    rng = np.random.default_rng(1)
    result = _measured(load_registry(names=["cnn1d_beat"])[0], rng)
    result.per_op["source"] = "static_estimate"
    with pytest.raises(ConfigError) as err:
        calibrate.calibrate(load_profile("esp32s3"), [result], "/dev/ttyUSB0")
    assert err.value.code == "HIL160"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--calibrate",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "HIL160" in text and "estimates" in text and "Traceback" not in text
