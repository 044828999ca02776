"""Shared helpers of the training recipes in models/*/train.py (TensorFlow side, never imported at runtime).

Data always comes through harness.data (records, AAMI map, DS1/DS2, windowing), so a model is trained on
exactly the inputs the harness sends the board. Here: the two evaluation protocols (inter_patient,
intra_patient), loading windowed beats, deterministic setup, magnitude pruning with fixed masks, INT8
conversion, TFLite evaluation, the AAMI metrics (through harness.metrics) and the harness's own view of
a model (harness_figures: MACs, arena).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Before TensorFlow is imported: oneDNN's reordered float sums would make runs differ bit for bit.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from harness import data  # noqa: E402


@dataclass
class BeatSet:
    """Windowed beats of several records: x float32 [n, length], y class index, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    records: np.ndarray   # record name per row
    names: tuple[str, ...]
    skipped: int

    def counts(self, classes: tuple[str, ...] = data.AAMI_CLASSES) -> dict[str, int]:
        return {c: int((self.y == i).sum()) for i, c in enumerate(classes)}


def load_beats(mitdb_dir, names, spec: data.WindowSpec, label_of=None) -> BeatSet:
    """Windows and labels of every kept beat of `names` (a spec string such as "DS1" or a list)."""
    label_of = label_of or (lambda beat: data.AAMI_CLASSES.index(beat.aami))
    xs, ys, recs, skipped = [], [], [], 0
    names = data.resolve_records(names)
    for record in data.iter_records(mitdb_dir, names):
        w = data.beat_windows(record, spec)
        xs.append(w.x)
        ys.append(np.array([label_of(b) for b in w.beats], dtype=np.int64))
        recs.append(np.full(len(w.beats), record.name))
        skipped += w.skipped
    return BeatSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(recs), names, skipped)


def _take(beats: BeatSet, idx: np.ndarray) -> BeatSet:
    """Rows idx of beats; `names` keeps only the records that still have a row there. `skipped` stays
    the count of the whole record set (edge beats belong to no split)."""
    kept = set(beats.records[idx].tolist())
    return BeatSet(beats.x[idx], beats.y[idx], beats.records[idx],
                   tuple(n for n in beats.names if n in kept), beats.skipped)


def inter_patient(mitdb_dir, spec: data.WindowSpec, label_of=None) -> tuple[BeatSet, BeatSet]:
    """de Chazal's inter-patient protocol: train on every beat of DS1, test on every beat of DS2.

    No patient is in both halves, so the test figures say how the model does on people it has never
    seen. This is the protocol of the committed models.
    """
    return (load_beats(mitdb_dir, data.DS1, spec, label_of),
            load_beats(mitdb_dir, data.DS2, spec, label_of))


def intra_patient(mitdb_dir, spec: data.WindowSpec, label_of=None, test_fraction: float = 0.2,
                  seed: int = 0, records=data.DS1 + data.DS2) -> tuple[BeatSet, BeatSet]:
    """The intra-patient ("beat split") protocol most published ECG papers use.

    All beats of DS1 + DS2 (44 non-paced records), split at random into train and test, stratified by
    label: each label keeps round(test_fraction * its beats) in the test set (at least one when it has
    two or more beats). The same seed gives the same split. Beats of one patient land on both sides, so
    the test figures are optimistic: the model has seen the patient's other beats. `records` is only
    changed by --smoke runs (the bundled records).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    beats = load_beats(mitdb_dir, records, spec, label_of)
    rng = np.random.default_rng(seed)
    test_rows = []
    for label in np.unique(beats.y):
        rows = np.flatnonzero(beats.y == label)
        n_test = int(round(test_fraction * len(rows)))
        if len(rows) >= 2:
            n_test = min(max(n_test, 1), len(rows) - 1)
        test_rows.append(rng.permutation(rows)[:n_test])
    in_test = np.zeros(len(beats.y), dtype=bool)
    in_test[np.concatenate(test_rows)] = True
    return _take(beats, np.flatnonzero(~in_test)), _take(beats, np.flatnonzero(in_test))


def subsample(beats: BeatSet, n: int, seed: int) -> BeatSet:
    """A stratified-ish random subset of n beats (every class keeps at least a few), for --smoke."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(beats.y):
        idx = np.flatnonzero(beats.y == c)
        picks.append(rng.choice(idx, size=min(len(idx), max(10, n * len(idx) // len(beats.y))), replace=False))
    idx = np.sort(np.concatenate(picks))[:n] if sum(map(len, picks)) > n else np.sort(np.concatenate(picks))
    return BeatSet(beats.x[idx], beats.y[idx], beats.records[idx], beats.names, beats.skipped)


def deterministic(seed: int):
    """Seed Python, numpy and TensorFlow and make TF's kernels deterministic; returns the tf module."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return tf


# --- Pruning -----------------------------------------------------------------------------------------

def magnitude_masks(model, sparsity: float, skip: tuple[str, ...] = ()) -> dict:
    """Per-layer masks zeroing the `sparsity` fraction of smallest-|w| kernel weights (biases kept)."""
    masks = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None or layer.name in skip:
            continue
        w = np.abs(kernel.numpy()).ravel()
        k = int(round(sparsity * w.size))
        if k == 0:
            continue
        threshold = np.partition(w, k - 1)[k - 1]
        mask = (np.abs(kernel.numpy()) > threshold).astype(np.float32)
        masks[layer.name] = (kernel, mask)
    return masks


def apply_masks(masks: dict) -> None:
    for kernel, mask in masks.values():
        kernel.assign(kernel.numpy() * mask)


def pruning_callback(masks: dict):
    """Keras callback that re-applies fixed masks after every batch, so pruned weights stay exactly zero.

    tensorflow-model-optimization's prune_low_magnitude does not support Keras 3, hence this small one.
    """
    import keras

    class KeepPruned(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            apply_masks(masks)

        def on_train_batch_end(self, batch, logs=None):
            apply_masks(masks)

    return KeepPruned()


def sparsity_of(model) -> dict[str, float]:
    out = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            w = kernel.numpy()
            out[layer.name] = float((w == 0).mean())
    return out


# --- Conversion and TFLite evaluation ----------------------------------------------------------------

def convert(model, representative: np.ndarray | None = None, int8_io: bool = True) -> bytes:
    """Keras model → .tflite bytes, float, or full-integer INT8 (PTQ) when `representative` is given.

    The model's Input should carry the batch size the board uses (1): the .tflite keeps that shape.
    int8_io=False keeps float input/output around the INT8 graph (QUANTIZE/DEQUANTIZE at the edges);
    it is only used to check harness.data.quantize against TFLite's own QUANTIZE op.
    """
    import tensorflow as tf

    input_shape = tuple(model.inputs[0].shape)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def gen():
            for row in representative:
                yield [row.reshape(input_shape).astype(np.float32)]

        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


def interpreter(tflite: bytes, **kwargs):
    """TensorFlow's TFLite interpreter with the reference kernels, for the figures a recipe reports.

    Not the bench's reference: TF ≥ 2.20's FULLY_CONNECTED requantizes in float and can differ from TFLM by
    ±1 LSB, and tflite-runtime 2.14 (bit-exact with TFLM) cannot load in a process that imported TF. Cards
    therefore quote what this gives; the bench re-measures on the board's path (models/README.md compares).
    """
    import tensorflow as tf

    return tf.lite.Interpreter(model_content=tflite,
                               experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF,
                               **kwargs)


def op_list(tflite: bytes) -> list[str]:
    interp = interpreter(tflite)
    return sorted({op["op_name"] for op in interp._get_ops_details()})


def run_tflite(tflite: bytes, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run every row of x (float) through the model one at a time, as the board does.

    An INT8-input model gets harness.data.quantize(x, input scale, zero point); an INT8 output is
    dequantized. Returns (float scores [n, outputs], timing info).
    """
    interp = interpreter(tflite)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = tuple(inp["shape"])
    if inp["dtype"] == np.int8:
        scale, zp = inp["quantization"]
        feed = data.quantize(x, scale, zp)
    else:
        feed = x.astype(np.float32)
    o_scale, o_zp = out["quantization"]
    scores = np.empty((len(x), int(np.prod(out["shape"]))), dtype=np.float32)
    start = time.perf_counter()
    for i in range(len(x)):
        interp.set_tensor(inp["index"], feed[i].reshape(shape))
        interp.invoke()
        raw = interp.get_tensor(out["index"]).reshape(-1)
        scores[i] = (raw.astype(np.float32) - o_zp) * o_scale if out["dtype"] == np.int8 else raw
    elapsed = time.perf_counter() - start
    return scores, {"host_seconds": round(elapsed, 2), "host_us_per_beat": round(1e6 * elapsed / max(1, len(x)), 1)}


_FIGURES_SCRIPT = """
import json, sys
from harness import costmodel, model
from harness import tflm_probe as probe
data = open(sys.argv[1], 'rb').read()
report = probe.probe(data, int(sys.argv[2]), model.firmware_ops())
print(json.dumps({'macs': costmodel.count_macs(data), 'probe': report}))
"""


def harness_figures(tflite_path, arena_bytes: int = 131072) -> dict:
    """What the harness will see of an INT8 model: static MACs (harness.costmodel.count_macs), the
    firmware-op check and the TFLM arena it needs (harness.tflm_probe, TFLM's allocation recorder on
    the 64-bit host), against the virtual profile's 131,072-byte arena by default.

    Runs in a child process: tflite-runtime 2.14 and TensorFlow 2.21 in one process clash (loading a model
    fails with `vector::reserve` once TensorFlow is imported), and TFLM may crash on a bad model.
    """
    import json
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _FIGURES_SCRIPT, str(tflite_path), str(arena_bytes)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"harness figures of {tflite_path} failed: {proc.stderr.strip()[-400:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    report = raw["probe"]
    if not report["ok"]:
        raise RuntimeError(f"the virtual board would refuse {tflite_path}: {report['error']}")
    return {"macs": raw["macs"], "macs_source": "static_estimate (harness.costmodel.count_macs)",
            "arena_used_bytes": report["arena_used"],
            "arena_source": "TFLM allocation recorder on the 64-bit host (harness.tflm_probe)",
            "input_bytes": report["input_bytes"], "output_bytes": report["output_bytes"]}


def quantize_agreement(tflite_float_io: bytes, x: np.ndarray) -> dict:
    """Compare harness.data.quantize with the QUANTIZE op at the input of a float-I/O INT8 model.

    Feeds real windows plus values placed exactly on rounding ties ((k + 0.5) * scale), reads the
    QUANTIZE op's output tensor and counts disagreements.
    """
    interp = interpreter(tflite_float_io, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    quant_ops = [op for op in interp._get_ops_details() if op["op_name"] == "QUANTIZE"
                 and inp["index"] in list(op["inputs"])]
    if not quant_ops:
        return {"checked": 0, "mismatches": None, "note": "no input QUANTIZE op"}
    q_index = int(quant_ops[0]["outputs"][0])
    q_detail = next(t for t in interp.get_tensor_details() if t["index"] == q_index)
    scale, zp = q_detail["quantization"]
    shape = tuple(inp["shape"])
    length = int(np.prod(shape))
    ties = ((np.arange(length) - length // 2) + 0.5).astype(np.float32) * np.float32(scale)
    rows = np.concatenate([x[:, :length].astype(np.float32), ties[None, :], -ties[None, :],
                           (ties * 40)[None, :]])  # the last row also exercises clipping
    mismatches = 0
    for row in rows:
        interp.set_tensor(inp["index"], row.reshape(shape))
        interp.invoke()
        got = interp.get_tensor(q_index).reshape(-1)
        mismatches += int((got != data.quantize(row, scale, zp)).sum())
    half_even = np.clip(np.round(ties / np.float32(scale)) + zp, -128, 127).astype(np.int8)
    return {"checked_values": int(rows.size), "mismatches": mismatches,
            "numpy_round_half_even_would_mismatch_on_ties": int((half_even != data.quantize(ties, scale, zp)).sum())}


# --- Metrics -----------------------------------------------------------------------------------------

def classification_metrics(y: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """harness.metrics.classification (the project's one implementation) of class indices, plus the
    macro-F1 over N, S, V, F only, rounded to 4 digits for metrics.json.

    Same keys as the bench's results.json: accuracy, macro_f1, per_class {se, ppv, f1, support,
    predicted}, confusion (rows = truth, columns = prediction), labels, n.
    """
    from harness import metrics

    labels = list(classes)
    result = metrics.classification([labels[i] for i in np.asarray(y)], [labels[i] for i in np.asarray(pred)],
                                    labels)
    # AAMI practice scores N, S, V, F: Q is a handful of unclassifiable beats (7 in DS2, 8 in DS1)
    nsvf = [result["per_class"][c]["f1"] for c in ("N", "S", "V", "F")
            if c in result["per_class"] and result["per_class"][c]["support"]]
    result["macro_f1_nsvf"] = float(np.mean(nsvf)) if nsvf else None
    return _rounded(result)


def summary(m: dict) -> str:
    """One line of a classification_metrics result for the recipe's log."""
    pc = m["per_class"]
    return (f"acc {m['accuracy']} macroF1 {m['macro_f1']} (NSVF {m['macro_f1_nsvf']}) | "
            + " ".join(f"{c}: Se {pc[c]['se']} +P {pc[c]['ppv']}" for c in m["labels"]))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
