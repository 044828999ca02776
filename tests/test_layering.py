"""Layering: modules import only layers below them (docs/architecture.md).

The TFLM probe used to live in harness/boards/virtual and import harness.bench.model, while harness.bench.model ran it: the
model layer depended on the virtual board's, which depended on the model layer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imported_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('harness')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    return set(proc.stdout.split())


def test_the_tflm_probe_and_the_file_layer_sit_below_model_and_virtual_board():
    for module in ("harness.bench.flatbuf", "harness.bench.tflm_probe"):
        loaded = _imported_by(module)
        assert not {m for m in loaded if m == "harness.bench.model" or m.startswith("harness.boards.virtual")}, (module, loaded)


def test_model_layer_does_not_reach_into_the_virtual_board():
    assert not {m for m in _imported_by("harness.bench.model") if m.startswith("harness.boards.virtual")}
    assert "harness.boards.virtual" not in (REPO / "harness" / "bench" / "model.py").read_text()


def test_probe_runs_by_its_module_name(tmp_path):
    model = REPO / "tests" / "fixtures" / "conv_int8.tflite"
    proc = subprocess.run([sys.executable, "-m", "harness.bench.tflm_probe", "--arena", "131072", str(model)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"step": "done", "ok": true' in proc.stdout.splitlines()[-1]
