"""A newcomer's own model from the command line: what README and --help say is what the harness does.

Each test is one piece of friction a new user met: README's example failing for a missing flag, an
autoencoder that could not run from flags, help naming a sidecar file the loader never reads, a symlinked
model whose sidecar was looked for beside the link's target, hints naming flags that do not exist,
normalisation names nobody could find, and results that did not say which window a run used.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.bench import data
from harness.errors import ConfigError, ModelError
from harness.bench.model import check_model, load_user_model, sidecar_path
from harness.plugin import _load_models, _parse_window
from harness.boards.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
CNN1D = REPO / "models" / "cnn1d" / "cnn1d_beat_int8.tflite"
README = (REPO / "README.md").read_text()


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _opt(paths, **flags) -> SimpleNamespace:
    base = {"model": [str(p) for p in paths], "model_window": None, "model_labels": None, "model_task": None,
            "model_threshold": None, "models": None}
    base.update(flags)
    return SimpleNamespace(**base)


def test_readme_model_example_runs_and_results_record_its_window(tmp_path):
    """README's own `--model my.tflite ...` line, run as written (cnn1d_beat's bytes, no sidecar)."""
    line = next(line for line in README.splitlines() if "--model my.tflite" in line)
    args = shlex.split(line)
    assert args[:2] == [".venv/bin/pytest", "tests/hil"]
    shutil.copy(CNN1D, tmp_path / "my.tflite")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), *args[2:], "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "baselines"), "--max-beats", "10", "--records", "213",
           "--mitdb", os.path.relpath(REPO / "data" / "mitdb", tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    (result,) = doc["results"]
    prov = result["provenance"]
    assert prov["model_source"] == "user"
    assert prov["window"] == {"before": 374, "after": 374, "channel": 0, "decimate": 4, "normalize": "beat_zscore",
                              "mask": "none", "rhythm": "none"}
    assert Path(prov["data_dir"]).is_absolute() and Path(prov["data_dir"]) == (REPO / "data" / "mitdb").resolve()
    assert Path(doc["session"]["data_dir"]).is_absolute()


def test_autoencoder_from_flags_alone(tmp_path):
    model = tmp_path / "ae.tflite"  # no sidecar beside it
    shutil.copy(FIXTURES / "autoencoder_int8.tflite", model)
    flags = {"model_task": "autoencoder", "model_window": "374:374:4:beat_zscore"}
    with pytest.raises(ModelError) as err:
        _load_models(_opt([model], **flags))
    assert err.value.code == "HIL118" and "anomaly" in err.value.message
    assert "--model-threshold" in err.value.hint and str(sidecar_path(model)) in err.value.hint
    (ae,) = _load_models(_opt([model], model_threshold=0.05, **flags))
    assert ae.task == "autoencoder" and ae.anomaly == {"error": "mse", "threshold": 0.05, "normal_labels": ["N"]}
    check_model(ae, load_profile("virtual"))
    # The flag wins over a sidecar's threshold and keeps the sidecar's other anomaly keys.
    shutil.copy(FIXTURES / "autoencoder_int8.yaml", sidecar_path(model))
    (ae,) = _load_models(_opt([model], model_threshold=0.5))
    assert ae.anomaly["threshold"] == 0.5 and ae.anomaly["error"] == "mse"


def test_repeated_model_flags_give_each_model(tmp_path):
    for name in ("a", "b"):
        shutil.copy(FIXTURES / "conv_int8.tflite", tmp_path / f"{name}.tflite")
        shutil.copy(FIXTURES / "conv_int8.yaml", tmp_path / f"{name}.yaml")
    models = _load_models(_opt([tmp_path / "a.tflite", tmp_path / "b.tflite"]))
    assert [m.name for m in models] == ["a", "b"]


def test_help_names_the_sidecar_the_loader_reads():
    assert sidecar_path("my.tflite") == Path("my.yaml")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=_env())
    text = " ".join(proc.stdout.split())  # argparse wraps help text
    assert "my.tflite → my.yaml" in text and "PATH.yaml" not in text
    assert "--model-threshold" in text
    for name in data.NORMALIZATIONS:  # the normalisation names are in --help and README, not only models/
        assert name in text and f"`{name}`" in README


def test_symlinked_model_reads_the_sidecar_beside_the_link(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(FIXTURES / "conv_int8.tflite", store / "3f9a.tflite")
    link = tmp_path / "mine.tflite"
    link.symlink_to(store / "3f9a.tflite")
    with pytest.raises(ModelError) as err:  # no sidecar anywhere: the hint names every path searched
        load_user_model(link)
    assert str(tmp_path / "mine.yaml") in err.value.hint and str(store / "3f9a.yaml") in err.value.hint
    assert "--model-task" in err.value.hint
    shutil.copy(FIXTURES / "conv_int8.yaml", tmp_path / "mine.yaml")
    model = load_user_model(link)
    assert model.name == "mine" and model.task == "classifier"


def test_no_message_names_a_model_flag_that_does_not_exist():
    sources = {path: path.read_text() for path in (REPO / "harness").rglob("*.py")}
    pytest_options = set(re.findall(r'addoption\("(--model[a-z-]*)"', sources[REPO / "harness" / "plugin.py"]))
    assert {"--model", "--models", "--model-task", "--model-window", "--model-labels",
            "--model-threshold"} <= pytest_options
    # Options of the harness's own programs (python -m harness.boards.virtual ...) count as defined too.
    defined = pytest_options | {flag for text in sources.values()
                                for flag in re.findall(r'add_argument\("(--model[a-z-]*)"', text)}
    for path, text in sources.items():
        for flag in re.findall(r"--model[a-z-]*[a-z]", text):
            assert flag in defined, f"{path.name} names {flag}, which is not an option"


def test_model_window_normalisation_is_checked():
    assert _parse_window("90:97") == {"before": 90, "after": 97}
    assert _parse_window("90:97:1:beat_minmax")["normalize"] == "beat_minmax"
    with pytest.raises(ConfigError) as err:
        _parse_window("90:97:1:zscore")
    assert err.value.code == "HIL127" and "beat_zscore" in err.value.message and "'zscore'" in err.value.message
