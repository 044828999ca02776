"""What `make` runs, read with `make -n` (nothing is executed): `make test` keeps `make bench`'s out/, and the
minutes of first-time installs say what they are doing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(*targets: str) -> list[str]:
    proc = subprocess.run(["make", "-n", "-B", *targets], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _pytest_line(lines: list[str]) -> str:
    (line,) = [line for line in lines if "/bin/pytest" in line]
    return line


def test_make_test_writes_its_reports_apart_from_make_bench():
    bench = _pytest_line(_dry_run("bench")).split()
    test = _pytest_line(_dry_run("test")).split()
    assert bench[bench.index("--out") + 1] == "out"
    assert "--out" in test and test[test.index("--out") + 1] not in ("out", "out/")


def test_installs_announce_themselves_before_the_silent_pip_runs():
    lines = _dry_run("test")
    pips = [i for i, line in enumerate(lines) if "pip install" in line and "-e" in line]
    assert len(pips) == 2  # the test extra, then the train extra
    for i in pips:
        said = [line for line in lines[:i] if line.startswith("echo") and "==" in line]
        assert said, f"nothing is printed before {lines[i]!r}"
    assert any("TensorFlow" in line for line in lines[pips[0]:pips[1]])
