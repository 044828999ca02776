"""Shared helpers of the training recipes in models/*/train.py (TensorFlow side, never imported at runtime).

Data always comes through harness.data (records, AAMI map, DS1/DS2, windowing), so a model is trained on
exactly the inputs the harness sends the board. Here: loading windowed beats, deterministic setup,
magnitude pruning with fixed masks, INT8 conversion, TFLite evaluation and the usual AAMI metrics.
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
    """TFLite interpreter with the reference kernels (bit-exact with TFLM for these ops)."""
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
    """Accuracy, macro-F1 over the classes present in y (and over N, S, V, F only), per-class Se and +P."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class, f1s = {}, []
    for i, c in enumerate(classes):
        tp = confusion[i, i]
        support = confusion[i].sum()
        predicted = confusion[:, i].sum()
        se = tp / support if support else None
        ppv = tp / predicted if predicted else None
        f1 = 2 * tp / (support + predicted) if support + predicted else None
        per_class[c] = {"support": int(support), "predicted": int(predicted),
                        "Se": _r(se), "+P": _r(ppv), "F1": _r(f1)}
        if support:
            f1s.append(f1 or 0.0)
    # AAMI practice scores N, S, V, F: Q is a handful of unclassifiable beats (7 in DS2, 8 in DS1)
    nsvf = [per_class[c]["F1"] or 0.0 for c in ("N", "S", "V", "F") if c in per_class and per_class[c]["support"]]
    return {"n": int(len(y)), "accuracy": _r(float((y == pred).mean())), "macro_f1": _r(float(np.mean(f1s))),
            "macro_f1_nsvf": _r(float(np.mean(nsvf))) if nsvf else None,
            "per_class": per_class, "confusion": confusion.tolist(), "confusion_axes": "rows=truth, cols=pred"}


def _r(v):
    return None if v is None else round(float(v), 4)
