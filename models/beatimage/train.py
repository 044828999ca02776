"""Recipe of beatimage_mobilenet: each beat as a 36×36 image, a small MobileNet-style 2D CNN, 6 classes,
compressed with pruning, weight clustering and quantization-aware training (tensorflow-model-optimization).

The beat image: 3.6 s of MLII around the R peak at 360 Hz (1,296 samples, z-scored with the record's mean
and std), every sample outside the beat's half-RR neighbourhood set to 0 — all of that is the registry
window `harness.bench.data.WindowSpec(648, 648, normalize=record_zscore, mask=half_rr)`, so the board receives
1,296 int8 bytes. The model itself reshapes them to 36×36 (row = 100 ms) and concatenates the image with
itself into 3 channels (RESHAPE + CONCATENATION ops), as the published ImageNet-style network expects.

Classes: N, V, F, paced '/', fusion of paced and normal 'f', other (every other beat symbol). The paced
records hold the '/' and 'f' beats, so this family uses all 48 records:

    inter-patient  train DS1 + 102, 104   test DS2 + 107, 217   (the committed model)
    intra-patient  all 48 records, stratified random 80/20 beat split, seed 0 (figures only)

Stages: float training → magnitude pruning (tfmot prune_low_magnitude, 50 % of the 1×1 and dense kernels)
→ sparsity-preserving weight clustering (tfmot cluster_weights, 16 centroids per layer) → pruning- and
cluster-preserving quantization-aware training (tfmot PCQAT scheme) → full-integer INT8 (int8 I/O).
tfmot needs Keras 2, so this recipe runs on tf_keras (TF_USE_LEGACY_KERAS=1, set below before TensorFlow
is imported). Run from the repo root with the training venv:

    /work/venv-train/bin/python models/beatimage/train.py --mitdb ../shared/mitdb --out models/beatimage
    /work/venv-train/bin/python models/beatimage/train.py --smoke      # CI: bundled records, one epoch
"""

from __future__ import annotations

import os

# tensorflow-model-optimization 0.8 works with Keras 2 only: make tf.keras the tf_keras package. Must be set
# before TensorFlow is first imported (models.training imports it lazily).
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import gzip  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from models import training  # noqa: E402  (sets TF env vars before TensorFlow is imported)

import numpy as np  # noqa: E402

from harness.bench import data  # noqa: E402

NAME = "beatimage_mobilenet"
SPEC = data.WindowSpec(before=648, after=648, channel=0, decimate=1, normalize="record_zscore", mask="half_rr")
SIDE = 36  # 36 × 36 = 1,296 = SPEC.length
CLASSES = ("N", "V", "F", "/", "f", "other")
# Explicit symbol → label map (also the registry's label_map): N, V, F, '/' and 'f' are themselves, every
# other MIT-BIH beat symbol (L, R, e, j, A, a, J, S, E, Q) is "other".
LABEL_MAP = {symbol: (symbol if symbol in CLASSES else "other") for symbol in data.AAMI_MAP}
INTER_TRAIN = data.DS1 + ("102", "104")
INTER_TEST = data.DS2 + ("107", "217")
# MobileNet v1 shape: a strided 3×3 stem, then depthwise-separable blocks (stride, pointwise filters).
# Small on purpose: TFLM's reference kernels run it in ~2 ms a beat on the host (the bench runs it twice
# over ~8,600 beats in `make test`) and ~0.5 M MACs is a few tens of ms on an ESP32-S3 with ESP-NN.
STEM_FILTERS = 16
BLOCKS = ((2, 32), (1, 32), (2, 64), (1, 64))
SPARSITY = 0.5
CLUSTERS = 16


def label_of(beat: data.Beat) -> int:
    return CLASSES.index(LABEL_MAP[beat.symbol])


def build_model(keras):
    """1,296 int8 samples → 36×36×3 image → MobileNet-style CNN → 6 softmax probabilities."""
    layers = keras.layers
    inputs = keras.Input(shape=(SPEC.length,), name="beat")
    image = layers.Reshape((SIDE, SIDE, 1), name="image")(inputs)
    x = layers.Concatenate(axis=-1, name="rgb")([image, image, image])
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (stride, filters) in enumerate(BLOCKS, start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"pw{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    x = layers.Dense(len(CLASSES), name="logits")(x)
    outputs = layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=NAME)


def compressible(layer) -> bool:
    """Pruned and clustered: the 1×1 pointwise convolutions and the classifier, 92 % of the weights. The stem
    (432 weights) and the 3×3 depthwise filters (9 weights per channel) are left whole: they are tiny and
    removing half of a 3×3 filter costs far more accuracy than it saves."""
    kind = type(layer).__name__
    return (kind == "Conv2D" and tuple(layer.kernel_size) == (1, 1)) or kind == "Dense"


# --- Data ------------------------------------------------------------------------------------------

def cap_classes(beats: training.BeatSet, caps: dict[int, int], seed: int) -> training.BeatSet:
    """At most caps[label] random beats of each label (the rest all kept): fewer N beats per epoch keeps
    the training time on a 2-core machine to minutes without losing rare classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(beats.y):
        idx = np.flatnonzero(beats.y == label)
        cap = caps.get(int(label))
        rows.append(np.sort(rng.choice(idx, size=cap, replace=False)) if cap and len(idx) > cap else idx)
    idx = np.sort(np.concatenate(rows))
    return training.BeatSet(beats.x[idx], beats.y[idx], beats.records[idx], beats.names, beats.skipped)


def counts(beats: training.BeatSet) -> dict[str, int]:
    return beats.counts(CLASSES)


# --- Compression stages (tensorflow-model-optimization) ---------------------------------------------

def prune(model, keras, tfmot, steps: int):
    """Wrap the compressible layers in prune_low_magnitude: sparsity grows 0 → 50 % over the first 70 % of
    `steps`, then stays while the rest of the fine-tuning recovers accuracy."""
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=SPARSITY, begin_step=0,
                                                    end_step=max(1, int(0.7 * steps)),
                                                    frequency=max(1, steps // 20))

    def wrap(layer):
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule) if compressible(layer) else layer

    return keras.models.clone_model(model, clone_function=wrap)


def cluster(model, keras, tfmot):
    """Sparsity-preserving k-means clustering of the compressible kernels: CLUSTERS shared values per layer
    (zeros stay zero and are not counted), centroids fine-tuned by gradient descent."""
    clustering = tfmot.clustering.keras

    def wrap(layer):
        if not compressible(layer):
            return layer
        return clustering.cluster_weights(layer, number_of_clusters=CLUSTERS, preserve_sparsity=True,
                                          cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS)

    return keras.models.clone_model(model, clone_function=wrap)


def quantize_aware(model, tfmot):
    """PCQAT: tfmot's default 8-bit QAT scheme in the variant that keeps both the zeros and the clusters
    (fake-quant on weights and activations; weights of clustered layers move only as their centroids do)."""
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        default_8bit_cluster_preserve_quantize_scheme as cps)

    quant = tfmot.quantization.keras
    return quant.quantize_apply(quant.quantize_annotate_model(model),
                                cps.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True))


def to_tflite(model, tf, *, int8: bool, int8_io: bool = True, representative=None) -> bytes:
    """Batch-1 .tflite ([1, 1296] in, as the board runs it). A QAT model carries its own ranges; the float
    model gets float I/O and float weights."""
    run = tf.function(lambda x: model(x, training=False))
    concrete = run.get_concrete_function(tf.TensorSpec([1, SPEC.length], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative is not None:
            converter.representative_dataset = lambda: ([row[None, :].astype(np.float32)] for row in representative)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


# --- Evaluation ------------------------------------------------------------------------------------

# tflite-runtime 2.14 (the bench's reference) and TFLM, in a child process: TensorFlow 2.21's own
# BUILTIN_REF interpreter is ~10× slower on this model, and tflite-runtime cannot share a process with it.
_REFERENCE_SCRIPT = r"""
import json, sys, time
import numpy as np
from tflite_runtime.interpreter import Interpreter, OpResolverType
from tflite_micro import runtime
model = open(sys.argv[1], 'rb').read()
x = np.load(sys.argv[2])
interp = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
interp.allocate_tensors()
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
y = np.empty((len(x), int(np.prod(out['shape']))), dtype=np.int8)
start = time.perf_counter()
for i in range(len(x)):
    interp.set_tensor(inp['index'], x[i].reshape(inp['shape']))
    interp.invoke()
    y[i] = interp.get_tensor(out['index']).reshape(-1)
ref_s = time.perf_counter() - start
n_micro = min(len(x), int(sys.argv[4]))
micro = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
start = time.perf_counter()
differ = 0
for i in range(n_micro):
    micro.set_input(x[i].reshape(inp['shape']), 0)
    micro.invoke()
    differ += int((micro.get_output(0).reshape(-1) != y[i]).any())
micro_s = time.perf_counter() - start
np.save(sys.argv[3], y)
print(json.dumps({'ref_us_per_beat': round(1e6 * ref_s / max(1, len(x)), 1), 'ref_beats': len(x),
                  'tflm_us_per_beat': round(1e6 * micro_s / max(1, n_micro), 1), 'tflm_beats': n_micro,
                  'tflm_vs_ref_differing_beats': differ}))
"""


def run_int8(tflite: bytes, x: np.ndarray, tflm_beats: int = 500) -> tuple[np.ndarray, dict]:
    """INT8 scores of every row of x (float windows → harness.bench.data.quantize → int8 model → dequantized),
    one beat per invoke with tflite-runtime BUILTIN_REF; TFLM runs the first `tflm_beats` as a cross-check
    and for its host time per beat."""
    with tempfile.TemporaryDirectory(prefix="beatimage_eval_") as tmp:
        tmp = Path(tmp)
        (tmp / "model.tflite").write_bytes(tflite)
        interp = training.interpreter(tflite)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        np.save(tmp / "x.npy", data.quantize(x, *inp["quantization"]))
        proc = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT, str(tmp / "model.tflite"), str(tmp / "x.npy"),
                               str(tmp / "y.npy"), str(tflm_beats)], capture_output=True, text=True,
                              cwd=training.REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"INT8 evaluation failed: {proc.stderr.strip()[-600:]}")
        timing = json.loads(proc.stdout.strip().splitlines()[-1])
        raw = np.load(tmp / "y.npy")
    scale, zp = out["quantization"]
    timing["source"] = ("host wall time, one beat per invoke: tflite-runtime 2.14 BUILTIN_REF (all beats) "
                        "and tflite-micro reference kernels (first beats)")
    return (raw.astype(np.float32) - zp) * scale, timing


def evaluate(y: np.ndarray, pred: np.ndarray) -> dict:
    m = training.classification_metrics(y, pred, CLASSES)
    m.pop("macro_f1_nsvf", None)  # an AAMI N/S/V/F figure: these labels are not the AAMI classes
    return m


def weight_layer_names() -> list[str]:
    """Layers with a kernel, in graph order (= the order of the .tflite's CONV/DEPTHWISE/FC ops)."""
    return ["stem"] + [f"{kind}{i}" for i in range(1, len(BLOCKS) + 1) for kind in ("dw", "pw")] + ["logits"]


def int8_weight_structure(tflite: bytes) -> dict:
    """Per weight tensor of the INT8 file: zero fraction and the most distinct values in one output channel
    (≤ CLUSTERS shows the clustering survived BN folding and per-channel quantization)."""
    interp = training.interpreter(tflite)
    interp.allocate_tensors()
    ops = [op for op in interp._get_ops_details()
           if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    out = {}
    for name, op in zip(weight_layer_names(), ops):
        w = interp.get_tensor(int(op["inputs"][1]))
        channel_axis = 3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0
        per_channel = np.moveaxis(w, channel_axis, 0).reshape(w.shape[channel_axis], -1)
        out[name] = {"op": op["op_name"], "shape": list(w.shape), "zero_fraction": round(float((w == 0).mean()), 4),
                     "max_distinct_per_channel": int(max(len(np.unique(c)) for c in per_channel))}
    return out


# --- One protocol, end to end ----------------------------------------------------------------------

def run_protocol(name: str, train: training.BeatSet, test: training.BeatSet, args, keras, tf, tfmot) -> dict:
    """Train, compress and convert one model; evaluate base float, compressed float and INT8 on test."""
    print(f"[{name}] train {len(train.y)} beats {counts(train)} | test {len(test.y)} beats {counts(test)}", flush=True)
    # (largest class / class) ** 0.5, capped at 20; labels absent from y get 1
    weights = training.class_weights(train.y, len(CLASSES), 0.5, cap=20.0, min_beats=1, reference=None)
    loss = "sparse_categorical_crossentropy"
    fit = dict(batch_size=args.batch, class_weight=weights, shuffle=True, verbose=2)
    epochs = dict(base=args.epochs, prune=args.prune_epochs, cluster=args.cluster_epochs, qat=args.qat_epochs)
    if name == "intra" and not args.smoke:
        epochs = {k: max(1, v // 2) for k, v in epochs.items()}
    history, seconds = {}, {}

    def predict(model):
        return model.predict(test.x, batch_size=1024, verbose=0).argmax(1)

    t = time.perf_counter()
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(args.lr), loss=loss, metrics=["accuracy"])
    history["base"] = model.fit(train.x, train.y, epochs=epochs["base"], **fit).history["loss"]
    seconds["base"] = time.perf_counter() - t
    base_eval = evaluate(test.y, predict(model))
    print(f"[{name}] float       ", training.summary(base_eval), flush=True)

    t = time.perf_counter()
    steps = epochs["prune"] * int(np.ceil(len(train.y) / args.batch))
    pruned = prune(model, keras, tfmot, steps)
    pruned.compile(optimizer=keras.optimizers.Adam(args.lr / 2), loss=loss, metrics=["accuracy"])
    history["prune"] = pruned.fit(train.x, train.y, epochs=epochs["prune"],
                                  callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], **fit).history["loss"]
    pruned = tfmot.sparsity.keras.strip_pruning(pruned)
    seconds["prune"] = time.perf_counter() - t

    t = time.perf_counter()
    clustered = cluster(pruned, keras, tfmot)
    clustered.compile(optimizer=keras.optimizers.Adam(args.lr / 5), loss=loss, metrics=["accuracy"])
    history["cluster"] = clustered.fit(train.x, train.y, epochs=epochs["cluster"], **fit).history["loss"]
    clustered = tfmot.clustering.keras.strip_clustering(clustered)
    seconds["cluster"] = time.perf_counter() - t
    compressed_eval = evaluate(test.y, predict(clustered))
    print(f"[{name}] pruned+clustered float", training.summary(compressed_eval), flush=True)

    t = time.perf_counter()
    qat = quantize_aware(clustered, tfmot)
    qat.compile(optimizer=keras.optimizers.Adam(args.lr / 10), loss=loss, metrics=["accuracy"])
    history["qat"] = qat.fit(train.x, train.y, epochs=epochs["qat"], **fit).history["loss"]
    seconds["qat"] = time.perf_counter() - t
    qat_eval = evaluate(test.y, predict(qat))
    print(f"[{name}] QAT (fake-quant float)", training.summary(qat_eval), flush=True)

    float_tflite = to_tflite(clustered, tf, int8=False)
    int8_tflite = to_tflite(qat, tf, int8=True)
    int8_scores, int8_timing = run_int8(int8_tflite, test.x)
    int8_eval = evaluate(test.y, int8_scores.argmax(1))
    print(f"[{name}] INT8 tflite ", training.summary(int8_eval), "|", int8_timing, flush=True)

    sparsity = {layer.name: round(float((layer.get_weights()[0] == 0).mean()), 4)
                for layer in clustered.layers if compressible(layer)}
    distinct = {layer.name: int(len(np.unique(layer.get_weights()[0][layer.get_weights()[0] != 0])))
                for layer in clustered.layers if compressible(layer)}
    return {
        "train_records": list(train.names), "train_beats": counts(train),
        "test_records": list(test.names), "test_beats": counts(test),
        "class_weights": {CLASSES[k]: round(v, 3) for k, v in weights.items()},
        "epochs": epochs, "final_loss": {k: round(float(v[-1]), 4) for k, v in history.items()},
        "fit_seconds_host_wall": {k: round(v, 1) for k, v in seconds.items()},
        "float_sparsity_per_layer": sparsity, "float_distinct_nonzero_weights_per_layer": distinct,
        "test": {"float": base_eval, "pruned_clustered_float": compressed_eval, "qat_fake_quant": qat_eval,
                 "int8": int8_eval},
        "int8_vs_qat_argmax_agreement": round(float((int8_scores.argmax(1) == predict(qat)).mean()), 5),
        "int8_host_timing": int8_timing,
        "_artefacts": (clustered, qat, float_tflite, int8_tflite),
    }


def main(argv=None) -> int:
    ap = training.cli(__doc__, "beatimage", seed=7)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--prune-epochs", type=int, default=3)
    ap.add_argument("--cluster-epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--cap-n", type=int, default=12000, help="at most this many N training beats")
    ap.add_argument("--cap-other", type=int, default=8000, help="at most this many 'other' training beats")
    args = training.parse(ap, argv)
    protocols, out = args.protocol_list, args.out_dir
    if args.smoke:
        args.epochs = args.prune_epochs = args.cluster_epochs = args.qat_epochs = 1
    caps = {CLASSES.index("N"): args.cap_n, CLASSES.index("other"): args.cap_other}

    t0 = time.perf_counter()
    tf = training.deterministic(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    results = {}
    for protocol in protocols:
        if args.smoke:
            beats = training.load_beats(args.mitdb, "bundled", SPEC, label_of)
            train, test = training.subsample(beats, 300, args.seed), training.subsample(beats, 300, args.seed + 1)
        elif protocol == "inter":
            train = training.load_beats(args.mitdb, INTER_TRAIN, SPEC, label_of)
            test = training.load_beats(args.mitdb, INTER_TEST, SPEC, label_of)
            if set(train.names) & set(test.names):
                raise SystemExit(f"train and test records overlap: {sorted(set(train.names) & set(test.names))}")
        else:
            train, test = training.intra_patient(args.mitdb, SPEC, label_of, test_fraction=0.2, seed=0,
                                                 records=data.ALL_RECORDS)
        train = cap_classes(train, caps, args.seed)
        tf.keras.utils.set_random_seed(args.seed)  # each protocol starts from the same seed state
        results[protocol] = run_protocol(protocol, train, test, args, keras, tf, tfmot)

    committed = results[protocols[0]]
    clustered, qat, float_tflite, int8_tflite = committed["_artefacts"]
    for r in results.values():
        del r["_artefacts"]
    float_path, int8_path = out / f"{NAME}_float.tflite", out / f"{NAME}_int8.tflite"
    float_path.write_bytes(float_tflite)
    int8_path.write_bytes(int8_tflite)

    figures = training.harness_figures(int8_path)
    if args.smoke:  # one more conversion and 100 beats of checks: left to the full run
        quant_check = {"note": "not run with --smoke"}
    else:
        float_io = to_tflite(qat, tf, int8=True, int8_io=False)
        probe_rows = training.load_beats(args.mitdb, "bundled", SPEC, label_of).x[:100]
        quant_check = training.quantize_agreement(float_io, probe_rows)
    print("quantize vs TFLite QUANTIZE:", quant_check)
    total_seconds = time.perf_counter() - t0
    metrics = {
        "model": NAME, "smoke": bool(args.smoke),
        "window": training.window_dict(SPEC), "input_causality": SPEC.causality(),
        "classes": list(CLASSES), "label_map": LABEL_MAP,
        "architecture": {"stem_filters": STEM_FILTERS, "blocks_stride_filters": [list(b) for b in BLOCKS],
                         "image": [SIDE, SIDE, 3]},
        "compression": {"pruning": f"tfmot prune_low_magnitude, PolynomialDecay 0 -> {SPARSITY} on 1x1 conv + dense",
                        "clustering": f"tfmot cluster_weights, {CLUSTERS} clusters, kmeans++, preserve_sparsity",
                        "qat": "tfmot quantize_apply, Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)"},
        "batch": args.batch, "lr": args.lr, "seed": args.seed, "caps": {"N": args.cap_n, "other": args.cap_other},
        "params": int(clustered.count_params()),
        "nonzero_params": int(sum(int(np.count_nonzero(w)) for w in clustered.get_weights())),
        "macs": figures["macs"], "macs_source": figures["macs_source"],
        "arena_used_bytes": figures["arena_used_bytes"], "arena_source": figures["arena_source"],
        "tflite_bytes": {"float": len(float_tflite), "int8": len(int8_tflite),
                         "int8_gzip9": len(gzip.compress(int8_tflite, 9)),
                         "float_gzip9": len(gzip.compress(float_tflite, 9))},
        "sha256": training.sha256s(float=float_tflite, int8=int8_tflite),
        "ops_int8": training.op_list(int8_tflite), "ops_float": training.op_list(float_tflite),
        "int8_weights": int8_weight_structure(int8_tflite),
        "int8_io": training.int8_io(int8_tflite),
        "committed_protocol": protocols[0],
        "protocols": results,
        "quantize_vs_tflite_quantize_op": quant_check,
        "total_seconds_host_wall": round(total_seconds, 1),
        "versions": training.versions(tf, keras, tfmot=tfmot.__version__),
    }
    training.write_metrics(out, metrics)
    print(f"wrote {float_path.name} ({len(float_tflite)} B), {int8_path.name} ({len(int8_tflite)} B), metrics.json "
          f"to {out} in {total_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
