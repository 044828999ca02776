"""INT8 outputs from the harness's own reference (harness.reference.TFLiteReference), for the recipes.

The bench checks the board bit for bit against tflite-runtime's BUILTIN_REF kernels, so a recipe's INT8
figures must come from the same interpreter: TensorFlow 2.21's own interpreter rounds differently on some
ops (a step or two on the autoencoder's outputs). tflite-runtime cannot be loaded into a process that has
imported TensorFlow (both carry the TFLite C++ runtime; loading fails with "vector::reserve"), so the
reference runs in a child Python process that imports only the harness.

Used by models/autoencoder/train.py and models/tcn/train.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent


def reference_outputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """int8 inputs [n, input values] → int8 outputs [n, output values] of harness.reference.TFLiteReference."""
    with tempfile.TemporaryDirectory(prefix="hil-ref-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.tflite").write_bytes(tflite)
        np.save(tmp / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.int8))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp)], check=True, env=env)
        return np.load(tmp / "outputs.npy")


def _child(tmp: Path) -> None:
    from harness.reference import TFLiteReference

    reference = TFLiteReference((tmp / "model.tflite").read_bytes())
    np.save(tmp / "outputs.npy", reference.run(np.load(tmp / "inputs.npy")))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
