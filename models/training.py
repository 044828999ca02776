"""The recipe runner every models/*/train.py uses (TensorFlow side, never imported at runtime).

Data always comes through harness.bench.data (records, AAMI map, DS1/DS2, windowing), so a model is trained on
exactly the inputs the harness sends the board. Here: the two evaluation protocols (inter_patient,
intra_patient) and the split of each (load_split, --smoke included), the DS1 patient hold-out every choice
is made on (patient_holdout; DS2 is only ever the final test), class weights, the command line
(cli, output_dir: an intra-only run never writes into the committed folder), deterministic setup,
magnitude pruning with fixed masks, INT8 conversion, TFLite evaluation and the harness's reference
(reference_outputs), the AAMI metrics (through harness.bench.metrics), step costs, and the metrics.json writer
with the fields every family shares (common_metrics). A family's train.py holds its model and what is
special about it.
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

from harness.bench import data  # noqa: E402


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


def take(beats: BeatSet, idx: np.ndarray) -> BeatSet:
    """Rows idx (indices or a boolean mask) of beats; `names` keeps only the records that still have a
    row there. `skipped` stays the count of the whole record set (edge beats belong to no split)."""
    idx = np.flatnonzero(idx) if np.asarray(idx).dtype == bool else np.asarray(idx)
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
    return take(beats, np.flatnonzero(~in_test)), take(beats, np.flatnonzero(in_test))


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
    it is only used to check harness.bench.data.quantize against TFLite's own QUANTIZE op.
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

    An INT8-input model gets harness.bench.data.quantize(x, input scale, zero point); an INT8 output is
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
from harness.bench import costmodel, model
from harness.bench import tflm_probe as probe
data = open(sys.argv[1], 'rb').read()
report = probe.probe(data, int(sys.argv[2]), model.firmware_ops())
print(json.dumps({'macs': costmodel.count_macs(data), 'probe': report}))
"""


def harness_figures(tflite_path, arena_bytes: int = 131072) -> dict:
    """What the harness will see of an INT8 model: static MACs (harness.bench.costmodel.count_macs), the
    firmware-op check and the TFLM arena it needs (harness.bench.tflm_probe, TFLM's allocation recorder on
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
    return {"macs": raw["macs"], "macs_source": "static_estimate (harness.bench.costmodel.count_macs)",
            "arena_used_bytes": report["arena_used"],
            "arena_source": "TFLM allocation recorder on the 64-bit host (harness.bench.tflm_probe)",
            "input_bytes": report["input_bytes"], "output_bytes": report["output_bytes"]}


def quantize_agreement(tflite_float_io: bytes, x: np.ndarray) -> dict:
    """Compare harness.bench.data.quantize with the QUANTIZE op at the input of a float-I/O INT8 model.

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
    """harness.bench.metrics.classification (the project's one implementation) of class indices, plus the
    macro-F1 over N, S, V, F only, rounded to 4 digits for metrics.json.

    Same keys as the bench's results.json: accuracy, macro_f1, per_class {se, ppv, f1, support,
    predicted}, confusion (rows = truth, columns = prediction), labels, n.
    """
    from harness.bench import metrics

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
    nsvf = f" (NSVF {m['macro_f1_nsvf']})" if "macro_f1_nsvf" in m else ""
    return (f"acc {m['accuracy']} macroF1 {m['macro_f1']}{nsvf} | "
            + " ".join(f"{c}: Se {pc[c]['se']} +P {pc[c]['ppv']}" for c in m["labels"] if c in pc))


def step_costs(evals: dict, steps) -> dict:
    """Accuracy and macro-F1 (N,S,V,F) change of each compression step, in percentage points.

    steps: (name, from, to) keys of `evals` (classification_metrics results); a step whose ends are not
    both in evals is left out (e.g. no full-precision twin).
    """
    out = {}
    for name, a, b in steps:
        if a in evals and b in evals:
            out[name] = {k: round(100 * (evals[b][k] - evals[a][k]), 2) for k in ("accuracy", "macro_f1_nsvf")}
    return out


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --- Class weights, splits and selection -------------------------------------------------------------

def class_weights(y: np.ndarray, n_classes: int, power: float, *, cap: float = 30.0, min_beats: int = 50,
                  reference: int | None = 0) -> dict[int, float]:
    """{class: (n_reference / n_class) ** power}, capped at `cap`; a class with fewer than `min_beats`
    beats (Q in DS1: 8) gets 1. reference=None measures against the largest class."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    ref = counts.max() if reference is None else counts[reference]
    return {i: 1.0 if n < max(1, min_beats) else float(min(cap, (ref / n) ** power)) for i, n in enumerate(counts)}


def split_stratified(beats: BeatSet, fraction: float, seed: int) -> tuple[BeatSet, BeatSet]:
    """Random split by beat, stratified by label: (the rest, `fraction` of each label). Beats of one
    patient land on both sides: only for the intra-patient protocol's own calibration."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(beats.y), dtype=bool)
    for c in np.unique(beats.y):
        idx = np.flatnonzero(beats.y == c)
        held[rng.choice(idx, size=int(round(fraction * len(idx))), replace=False)] = True
    return take(beats, ~held), take(beats, held)


# The DS1 records every choice (class weights, thresholds, variants) is made on, by patient: every fourth
# DS1 record, a fixed rule not chosen by looking at results. DS2 is only the final test.
HOLDOUT_RECORDS = data.DS1[1::4]


def patient_holdout(beats: BeatSet, records=HOLDOUT_RECORDS) -> tuple[BeatSet, BeatSet]:
    """(fit, hold-out) of DS1 beats by patient: the hold-out records' beats are never trained on."""
    held = np.isin(beats.records, list(records))
    if not held.any() or held.all():  # --smoke: three bundled records; hold out the last one
        held = beats.records == beats.names[-1]
    return take(beats, ~held), take(beats, held)


def select(candidates: dict, score) -> tuple[str, dict]:
    """The candidate with the highest score(result) (first on ties), and the table of all scores."""
    scores = {name: score(result) for name, result in candidates.items()}
    best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
    return best, scores


SMOKE_BEATS = 300
PROTOCOL_NAMES = {"inter": "inter_patient", "intra": "intra_patient"}


def load_split(protocol: str, spec: data.WindowSpec, args, label_of=None) -> tuple[BeatSet, BeatSet]:
    """(train, test) of a protocol; --smoke uses the bundled records and a few hundred beats."""
    if args.smoke:
        if protocol == "inter":  # three records cannot be split by patient: train and test on the same ones
            train = test = load_beats(args.mitdb, "bundled", spec, label_of)
        else:
            train, test = intra_patient(args.mitdb, spec, label_of, records=data.BUNDLED_RECORDS)
        return subsample(train, SMOKE_BEATS, args.seed), subsample(test, SMOKE_BEATS, args.seed + 1)
    if protocol == "inter":
        train, test = inter_patient(args.mitdb, spec, label_of)
        overlap = set(train.names) & set(test.names)
        if overlap:
            raise SystemExit(f"train and test records overlap: {sorted(overlap)}")
        return train, test
    return intra_patient(args.mitdb, spec, label_of)


# --- Command line and output -------------------------------------------------------------------------

def cli(doc: str, family: str, **defaults):
    """The argparse parser every recipe starts from: --mitdb, --out, --protocols, --seed, --smoke.
    A recipe adds its own options and calls parse(parser, argv)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--mitdb", default=str(data.BUNDLED_DIR), help="MIT-BIH directory (wfdb files)")
    ap.add_argument("--out", default=None,
                    help=f"output directory (default models/{family}; a temp dir with --smoke or without the "
                         "inter protocol, so the committed files are only ever written by an inter-patient run)")
    ap.add_argument("--protocols", default=None,
                    help="inter (train DS1, test DS2; writes the .tflite files) and/or intra (beat split); "
                         "default inter,intra (inter only with --smoke)")
    ap.add_argument("--seed", type=int, default=defaults.get("seed", 7))
    ap.add_argument("--smoke", action="store_true",
                    help="bundled records, a few hundred beats, one epoch, temp dir (CI)")
    ap.set_defaults(family=family)
    return ap


def parse(ap, argv=None):
    """Parse, resolve --protocols into args.protocol_list and --out into args.out_dir (a Path)."""
    args = ap.parse_args(argv)
    spec = args.protocols or ("inter" if args.smoke else "inter,intra")
    protocols = [p.strip() for p in spec.split(",") if p.strip()]
    if not protocols or set(protocols) - set(PROTOCOL_NAMES) or len(set(protocols)) != len(protocols):
        raise SystemExit(f"--protocols takes inter and/or intra, got {spec!r}")
    args.protocol_list = protocols
    args.out_dir = output_dir(args.out, args.family, smoke=args.smoke, writes_committed="inter" in protocols)
    return args


def output_dir(out, family: str, *, smoke: bool, writes_committed: bool) -> Path:
    """Where a run writes. The committed folder models/<family> only takes an inter-patient, non-smoke
    run: an intra-only or smoke run goes to a temp dir (or --out elsewhere), so it never overwrites the
    committed inter-patient files."""
    import tempfile

    committed = REPO / "models" / family
    if out is None:
        if smoke or not writes_committed:
            path = Path(tempfile.mkdtemp(prefix=f"{family}_{'smoke' if smoke else 'intra'}_"))
            print(f"writing to {path} (the committed files in models/{family} come from an inter-patient run)")
            return path
        path = committed
    else:
        path = Path(out)
    if (smoke or not writes_committed) and path.resolve() == committed.resolve():
        raise SystemExit(f"--out {out}: a {'--smoke' if smoke else 'intra-patient only'} run would overwrite the "
                         f"committed inter-patient files of models/{family}; give another --out or add --protocols inter")
    path.mkdir(parents=True, exist_ok=True)
    return path


def window_dict(spec: data.WindowSpec) -> dict:
    """The metrics.json form of a window (the registry's `window`, plus its length)."""
    out = {"before": spec.before, "after": spec.after, "channel": spec.channel, "decimate": spec.decimate,
           "normalize": spec.normalize}
    if spec.mask != "none":
        out["mask"] = spec.mask
    if spec.rhythm != "none":
        out["rhythm"] = spec.rhythm
    out["length"] = spec.length
    return out


def int8_io(tflite: bytes) -> dict:
    """Input and output shape, scale and zero point of a model (metrics.json's int8_io)."""
    interp = interpreter(tflite)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    return {"input_shape": inp["shape"].tolist(), "input_scale": float(inp["quantization"][0]),
            "input_zero_point": int(inp["quantization"][1]), "output_shape": outp["shape"].tolist(),
            "output_scale": float(outp["quantization"][0]), "output_zero_point": int(outp["quantization"][1])}


def sha256s(**files: bytes) -> dict[str, str]:
    import hashlib

    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def versions(tf, keras, **more) -> dict:
    import platform

    return {"tensorflow": tf.__version__, ("tf_keras" if keras.__name__ == "tf_keras" else "keras"): keras.__version__,
            **more, "numpy": np.__version__, "python": platform.python_version()}


def write_metrics(out: Path, metrics: dict) -> Path:
    import json

    path = Path(out) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    return path


# --- The harness's own INT8 reference ----------------------------------------------------------------

_REFERENCE_SCRIPT = """
import sys
import numpy as np
from harness.bench.reference import TFLiteReference
reference = TFLiteReference(open(sys.argv[1], 'rb').read())
np.save(sys.argv[3], reference.run(np.load(sys.argv[2])))
"""


def reference_outputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """int8 inputs [n, input values] → int8 outputs [n, output values] of harness.bench.reference.TFLiteReference
    (tflite-runtime BUILTIN_REF, the interpreter the bench checks the board against, bit for bit).

    TensorFlow 2.21's own interpreter rounds differently on some ops (a step or two), and tflite-runtime
    cannot load in a process that imported TensorFlow ("vector::reserve"): a child process runs it.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hil-ref-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.tflite").write_bytes(tflite)
        np.save(tmp / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.int8))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT, str(tmp / "model.tflite"), str(tmp / "inputs.npy"),
                        str(tmp / "outputs.npy")], check=True, env=env, cwd=REPO)
        return np.load(tmp / "outputs.npy")


def reference_scores(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Dequantized INT8 outputs [n, outputs] of float windows x, through harness.bench.data.quantize and
    reference_outputs: exactly what the bench computes from the board's bytes."""
    interp = interpreter(tflite)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    raw = reference_outputs(tflite, data.quantize(x, *inp["quantization"]))
    scale, zp = out["quantization"]
    return (raw.reshape(len(x), -1).astype(np.float32) - zp) * np.float32(scale)
