"""The plugin builds its HIL session only when HIL cases are collected.

It is loaded into every pytest run of the repository (pytest11 entry point), so a unit-test run must not
load models, probe arenas or read records, and HIL options that are wrong must not break it. When HIL cases
do run, a wrong option still ends the run with one line, a non-zero exit and no report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    cmd = [sys.executable, "-m", "pytest", "-q", "--out", str(tmp_path / "out"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_unit_tests_run_with_hil_options_that_would_be_wrong(tmp_path):
    # Each of these options alone makes a HIL run refuse to start (HIL118, HIL121, HIL102).
    proc = _pytest(tmp_path, "tests/test_metrics.py", "--models", "nope", "--mitdb", str(tmp_path / "none"),
                   "--target", "esp32p9")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "passed" in text and "HIL1" not in text
    assert not (tmp_path / "out").exists()


def test_bad_option_when_hil_cases_run_is_one_line_and_no_report(tmp_path):
    proc = _pytest(tmp_path, "tests/hil", "--models", "nope")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 4, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "HIL118" in line]
    assert len(lines) == 1 and lines[0].startswith("ERROR: HIL118") and "'nope'" in lines[0], text
    assert "fix: use one of: " in lines[0] and "cnn1d_beat" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "junit.xml").exists()


def test_deselected_hil_cases_do_not_need_a_valid_session(tmp_path):
    proc = _pytest(tmp_path, "tests/hil", "tests/test_metrics.py", "--models", "nope", "-k", "not hil")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "deselected" in text and "HIL118" not in text


def test_collect_only_lists_the_hil_cases(tmp_path):
    proc = _pytest(tmp_path, "tests/hil", "--collect-only", "--models", "cnn1d_beat,ae_beat")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "test_model_on_device[cnn1d_beat@virtual]" in text and "test_model_on_device[ae_beat@virtual]" in text
