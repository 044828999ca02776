"""The training recipes (models/*/train.py) and their shared helpers in models/training.py.

Every recipe runs once with --smoke (bundled records, one epoch) into a temp dir and must exit 0, write
loadable .tflite files there and leave the committed models alone. The recipes start together, each in
its own process, so the slow part (TensorFlow's start-up and graph tracing) overlaps. They need
TensorFlow (the `train` extra); the evaluation-protocol and binary-weight checks below do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.bench import data
from harness.bench.model import open_interpreter

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(REPO.glob("models/*/train.py"))
HAVE_TF = importlib.util.find_spec("tensorflow") is not None
TIMEOUT_S = 240


def _committed_files() -> dict[str, str]:
    return {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in REPO.glob("models/*/*") if p.suffix in (".tflite", ".json")}


def _say(config, text: str) -> None:
    """A line on the terminal while the module fixture runs (minutes that would otherwise be silent)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or reporter.verbosity < -1:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(text)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, request):
    """Start every recipe with --smoke at once; {family: (returncode, out dir, log text)} when all ended."""
    before = _committed_files()
    _say(request.config, f"recipe smoke runs: {len(RECIPES)} recipes ({', '.join(r.parent.name for r in RECIPES)}) "
                         "each train one epoch in parallel, about 2 minutes")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    running = {}
    for recipe in RECIPES:
        family = recipe.parent.name
        out = tmp_path_factory.mktemp(f"smoke_{family}")
        log = open(out.parent / f"{family}.log", "w+")
        proc = subprocess.Popen([sys.executable, str(recipe), "--smoke", "--out", str(out)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        running[family] = (proc, out, log, time.monotonic())
    results = {}
    for family, (proc, out, log, start) in running.items():
        try:
            code = proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = f"killed after {TIMEOUT_S} s"
        log.seek(0)
        results[family] = (code, out, log.read())
        _say(request.config, f"    {family}: exit {code} after {time.monotonic() - start:.0f} s")
        log.close()
    results["__committed_unchanged__"] = before == _committed_files()
    return results


@pytest.mark.skipif(not HAVE_TF, reason="needs TensorFlow (pip install -e .[train])")
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_recipe_smoke_run_writes_loadable_models(recipe, smoke_runs):
    code, out, log = smoke_runs[recipe.parent.name]
    tail = "\n".join(log.strip().splitlines()[-15:])
    assert code == 0, f"{recipe.relative_to(REPO)} --smoke exited {code}:\n{tail}"
    models = sorted(out.glob("*.tflite"))
    assert models, f"{recipe.relative_to(REPO)} --smoke wrote no .tflite into {out}:\n{tail}"
    assert any(p.name.endswith("_int8.tflite") for p in models), [p.name for p in models]
    for path in models:
        interp = open_interpreter(path.read_bytes(), path.name)  # raises on a malformed flatbuffer
        interp.allocate_tensors()
    assert (out / "metrics.json").is_file()


@pytest.mark.skipif(not HAVE_TF, reason="needs TensorFlow (pip install -e .[train])")
def test_smoke_runs_leave_the_committed_models_alone(smoke_runs):
    assert smoke_runs["__committed_unchanged__"], "a --smoke run overwrote a committed .tflite or metrics.json"


# --- Evaluation protocols (models/training.py; numpy and wfdb only, no TensorFlow) --------------------

def test_intra_patient_split_is_stratified_disjoint_and_reproducible():
    from models import training

    spec = data.WindowSpec(before=90, after=110, decimate=2, normalize="beat_zscore")
    train, test = training.intra_patient(data.BUNDLED_DIR, spec, test_fraction=0.25, seed=3,
                                         records=data.BUNDLED_RECORDS)
    whole = training.load_beats(data.BUNDLED_DIR, data.BUNDLED_RECORDS, spec)
    assert len(train.y) + len(test.y) == len(whole.y)
    for label in np.unique(whole.y):  # stratified: each label split 75 / 25, to the nearest beat
        n = int((whole.y == label).sum())
        if n >= 4:
            assert int((test.y == label).sum()) == round(0.25 * n), data.AAMI_CLASSES[label]
    # disjoint and together complete: each window row appears on exactly one side
    rows = {r.tobytes() for r in whole.x}
    train_rows, test_rows = {r.tobytes() for r in train.x}, {r.tobytes() for r in test.x}
    assert not train_rows & test_rows and train_rows | test_rows == rows
    again_train, again_test = training.intra_patient(data.BUNDLED_DIR, spec, test_fraction=0.25, seed=3,
                                                     records=data.BUNDLED_RECORDS)
    assert np.array_equal(again_test.x, test.x) and np.array_equal(again_train.y, train.y)
    _, other = training.intra_patient(data.BUNDLED_DIR, spec, test_fraction=0.25, seed=4,
                                      records=data.BUNDLED_RECORDS)
    assert not np.array_equal(other.x, test.x)


def test_inter_patient_trains_on_ds1_and_tests_on_ds2(monkeypatch):
    from models import training

    asked = []
    monkeypatch.setattr(training, "load_beats", lambda mitdb, names, spec, label_of=None: asked.append(names) or names)
    assert training.inter_patient("somewhere", data.WindowSpec(before=90, after=110)) == (data.DS1, data.DS2)
    assert not set(data.DS1) & set(data.DS2)


def test_intra_patient_rejects_a_test_fraction_outside_0_1():
    from models import training

    with pytest.raises(ValueError, match="test_fraction"):
        training.intra_patient(data.BUNDLED_DIR, data.WindowSpec(before=90, after=110), test_fraction=1.0)


def test_classification_metrics_come_from_harness_metrics():
    from harness.bench import metrics
    from models import training

    y = np.array([0, 0, 1, 2, 3, 4, 1])
    pred = np.array([0, 1, 1, 2, 0, 0, 1])
    got = training.classification_metrics(y, pred, data.AAMI_CLASSES)
    labels = list(data.AAMI_CLASSES)
    want = metrics.classification([labels[i] for i in y], [labels[i] for i in pred], labels)
    assert got["confusion"] == want["confusion"]
    assert got["accuracy"] == round(want["accuracy"], 4)
    # N: TP 1, FP 2, FN 1 → F1 0.4; S: TP 2, FP 1 → 0.8; V 1.0; F 0. The N,S,V,F mean leaves Q out.
    assert got["macro_f1_nsvf"] == round((0.4 + 0.8 + 1.0 + 0.0) / 4, 4)


# --- The committed binary-weight network -------------------------------------------------------------

def test_committed_binary_weight_model_holds_only_plus_minus_one():
    path = REPO / "models" / "binary" / "bwn_beat_int8.tflite"
    if not path.is_file():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run models/binary/train.py")
    interp = open_interpreter(path.read_bytes(), path.name)
    interp.allocate_tensors()
    weights = [int(op["inputs"][1]) for op in interp._get_ops_details()
               if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(weights) == 6
    for index in weights:
        values = set(np.unique(interp.get_tensor(index)).tolist())
        assert values == {-1, 1}, f"weight tensor {index} holds {sorted(values)}"


# --- The recipe runner (models/training.py; no TensorFlow) -------------------------------------------

def test_intra_only_or_smoke_runs_never_write_into_the_committed_folder(tmp_path):
    from models import training

    committed = REPO / "models" / "cnn1d"
    for argv in (["--protocols", "intra"], ["--smoke"], ["--smoke", "--protocols", "inter,intra"]):
        args = training.parse(training.cli("doc", "cnn1d"), argv)
        assert args.out_dir.resolve() != committed.resolve(), argv
    assert training.parse(training.cli("doc", "cnn1d"), []).out_dir.resolve() == committed.resolve()
    for argv in (["--protocols", "intra", "--out", str(committed)], ["--smoke", "--out", str(committed)]):
        with pytest.raises(SystemExit, match="overwrite the committed"):
            training.parse(training.cli("doc", "cnn1d"), argv)
    other = training.parse(training.cli("doc", "cnn1d"), ["--protocols", "intra", "--out", str(tmp_path / "x")])
    assert other.out_dir == tmp_path / "x" and other.protocol_list == ["intra"]
    with pytest.raises(SystemExit, match="--protocols"):
        training.parse(training.cli("doc", "cnn1d"), ["--protocols", "inter,ds2"])


def test_patient_holdout_is_by_patient_and_inside_ds1():
    from models import training

    assert set(training.HOLDOUT_RECORDS) < set(data.DS1)
    spec = data.WindowSpec(before=90, after=110, decimate=2)
    beats = training.load_beats(data.BUNDLED_DIR, data.BUNDLED_RECORDS, spec)
    fit, held = training.patient_holdout(beats, records=("232",))
    assert set(held.records) == {"232"} and "232" not in set(fit.records)
    assert len(fit.y) + len(held.y) == len(beats.y)


def test_class_weights_and_selection():
    from models import training

    y = np.array([0] * 400 + [1] * 100 + [2] * 4 + [3] * 60)
    w = training.class_weights(y, 5, 0.5)
    assert w == {0: 1.0, 1: 2.0, 2: 1.0, 3: pytest.approx((400 / 60) ** 0.5), 4: 1.0}   # < 50 beats → 1
    assert training.class_weights(y, 5, 2.0, cap=5.0)[1] == 5.0
    assert training.class_weights(y, 5, 1.0, cap=200.0, min_beats=1, reference=None)[2] == 100.0
    best, scores = training.select({"a": 0.2, "b": 0.5, "c": 0.5}, lambda v: v)
    assert best == "b" and scores == {"a": 0.2, "b": 0.5, "c": 0.5}
