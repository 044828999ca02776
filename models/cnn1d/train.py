"""Recipe of cnn1d_beat: a small 1D CNN classifying single MIT-BIH beats into the 5 AAMI classes.

train on DS1 (class-weighted) → magnitude-prune with fixed masks and fine-tune → full-integer INT8 PTQ →
evaluate float, pruned float and INT8 on DS2 (never seen in training) → write the two .tflite files and
metrics.json. Run from the repo root with the training venv:

    /work/venv-train/bin/python models/cnn1d/train.py --mitdb ../shared/mitdb --out models/cnn1d
    /work/venv-train/bin/python models/cnn1d/train.py --smoke          # CI: bundled records, one epoch

The input window comes from harness.data (the same function the harness uses to feed the board).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from models import training  # noqa: E402  (sets TF env vars before TensorFlow is imported)

import numpy as np  # noqa: E402

from harness import data  # noqa: E402

NAME = "cnn1d_beat"
# 748 samples at 360 Hz ≈ 2.08 s centred on the R peak: the previous and next R peaks normally fall
# inside, so the net sees RR timing as well as morphology (prematurity is what tells S beats apart).
# Block means of 4 → 187 samples at 90 Hz.
SPEC = data.WindowSpec(before=374, after=374, channel=0, decimate=4, normalize="beat_zscore")
INPUT_SHAPE = (1, SPEC.length, 1)
CLASSES = data.AAMI_CLASSES
SPARSITY = 0.5
SKIP_PRUNING = ("conv1",)  # 56 weights: pruning the first filter bank saves nothing and costs accuracy


def build_model(keras, batch_size=None):
    inputs = keras.Input(shape=(SPEC.length, 1), batch_size=batch_size, name="beat")
    x = inputs
    for i, (filters, kernel) in enumerate([(8, 7), (16, 5), (16, 5), (16, 3)], start=1):
        x = keras.layers.Conv1D(filters, kernel, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling1D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)   # keeps where things are in time (RR context)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(len(CLASSES), name="logits")(x)
    outputs = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=NAME)


def macs(model) -> int:
    """Multiply-accumulates of one inference, counted statically from the layer shapes."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv1D":
            length, filters = layer.output.shape[1], layer.output.shape[2]
            total += length * filters * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif kind == "Dense":
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def class_weights(y: np.ndarray, power: float) -> dict[int, float]:
    """(N beats / class beats) ** power, capped at 30; classes with < 50 beats (Q in DS1: 8) get 1."""
    counts = np.bincount(y, minlength=len(CLASSES)).astype(float)
    weights = {}
    for i, n in enumerate(counts):
        weights[i] = 1.0 if n < 50 else float(min(30.0, (counts[0] / n) ** power))
    return weights


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mitdb", default=str(data.BUNDLED_DIR), help="MIT-BIH directory (wfdb files)")
    ap.add_argument("--out", default=None, help="output directory (default models/cnn1d, a temp dir with --smoke)")
    ap.add_argument("--train-records", default=None, help="default DS1 (bundled with --smoke)")
    ap.add_argument("--eval-records", default=None, help="default DS2 (bundled with --smoke)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--weight-power", type=float, default=0.5, help="class weight = (n_N / n_class) ** power")
    ap.add_argument("--smoke", action="store_true", help="a few hundred beats, one epoch each (CI)")
    args = ap.parse_args(argv)

    if args.smoke:
        out = Path(args.out or tempfile.mkdtemp(prefix="cnn1d_smoke_"))
        train_names = args.train_records or "bundled"
        eval_names = args.eval_records or "bundled"
        args.epochs, args.finetune_epochs = 1, 1
    else:
        out = Path(args.out or Path(__file__).resolve().parent)
        train_names = args.train_records or "DS1"
        eval_names = args.eval_records or "DS2"
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train = training.load_beats(args.mitdb, train_names, SPEC)
    test = training.load_beats(args.mitdb, eval_names, SPEC)
    if args.smoke:
        train = training.subsample(train, 300, args.seed)
        test = training.subsample(test, 300, args.seed + 1)
    overlap = set(train.names) & set(test.names)
    if overlap and not args.smoke:
        raise SystemExit(f"train and eval records overlap: {sorted(overlap)}")
    print(f"train {train.names[0]}..{train.names[-1]} ({len(train.names)} records): {train.counts()}")
    print(f"eval  {test.names[0]}..{test.names[-1]} ({len(test.names)} records): {test.counts()}")

    tf = training.deterministic(args.seed)
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(2)
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    weights = class_weights(train.y, args.weight_power)
    x_train = train.x[..., None]
    t_fit = time.perf_counter()
    hist = model.fit(x_train, train.y, batch_size=args.batch, epochs=args.epochs, class_weight=weights,
                     shuffle=True, verbose=2)
    float_eval = training.classification_metrics(test.y, model.predict(test.x[..., None], verbose=0,
                                                                       batch_size=1024).argmax(1), CLASSES)
    print("float   DS2:", _short(float_eval))

    masks = training.magnitude_masks(model, SPARSITY, skip=SKIP_PRUNING)
    training.apply_masks(masks)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist_ft = model.fit(x_train, train.y, batch_size=args.batch, epochs=args.finetune_epochs,
                        class_weight=weights, shuffle=True, verbose=2,
                        callbacks=[training.pruning_callback(masks)])
    fit_seconds = time.perf_counter() - t_fit
    sparsity = training.sparsity_of(model)

    rng = np.random.default_rng(args.seed)
    rep = train.x[rng.choice(len(train.x), size=min(500, len(train.x)), replace=False)]
    # The board runs one beat per invoke: export a batch-1 copy so the .tflite input is [1, 187, 1].
    export = build_model(keras, batch_size=INPUT_SHAPE[0])
    export.set_weights(model.get_weights())
    float_tflite = training.convert(export)
    int8_tflite = training.convert(export, representative=rep)
    float_io_tflite = training.convert(export, representative=rep, int8_io=False)

    pruned_scores, pruned_timing = training.run_tflite(float_tflite, test.x)
    int8_scores, int8_timing = training.run_tflite(int8_tflite, test.x)
    pruned_eval = training.classification_metrics(test.y, pruned_scores.argmax(1), CLASSES)
    int8_eval = training.classification_metrics(test.y, int8_scores.argmax(1), CLASSES)
    print("pruned  DS2:", _short(pruned_eval))
    print("int8    DS2:", _short(int8_eval))
    agreement = float((pruned_scores.argmax(1) == int8_scores.argmax(1)).mean())
    quant_check = training.quantize_agreement(float_io_tflite, test.x[:200])
    print("quantize vs TFLite QUANTIZE:", quant_check)

    interp = training.interpreter(int8_tflite)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]

    (out / f"{NAME}_float.tflite").write_bytes(float_tflite)
    (out / f"{NAME}_int8.tflite").write_bytes(int8_tflite)
    total_seconds = time.perf_counter() - t0
    metrics = {
        "model": NAME,
        "smoke": bool(args.smoke),
        "window": {"before": SPEC.before, "after": SPEC.after, "channel": SPEC.channel,
                   "decimate": SPEC.decimate, "normalize": SPEC.normalize, "length": SPEC.length},
        "classes": list(CLASSES),
        "train_records": list(train.names), "train_beats": train.counts(), "train_skipped_at_edges": train.skipped,
        "eval_records": list(test.names), "eval_beats": test.counts(), "eval_skipped_at_edges": test.skipped,
        "weight_power": args.weight_power, "class_weights": {CLASSES[k]: round(v, 3) for k, v in weights.items()},
        "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "batch": args.batch, "seed": args.seed,
        "final_train_loss": round(float(hist.history["loss"][-1]), 4),
        "final_finetune_loss": round(float(hist_ft.history["loss"][-1]), 4),
        "target_sparsity": SPARSITY, "not_pruned": list(SKIP_PRUNING), "sparsity_per_layer": sparsity,
        "params": int(model.count_params()),
        "nonzero_params": int(sum(int(np.count_nonzero(w.numpy())) for w in model.weights)),
        "macs_static_estimate": macs(model),
        "tflite_bytes": {"float": len(float_tflite), "int8": len(int8_tflite)},
        "sha256": {"float": hashlib.sha256(float_tflite).hexdigest(), "int8": hashlib.sha256(int8_tflite).hexdigest()},
        "ops_int8": training.op_list(int8_tflite), "ops_float": training.op_list(float_tflite),
        "int8_io": {"input_shape": inp["shape"].tolist(), "input_scale": float(inp["quantization"][0]),
                    "input_zero_point": int(inp["quantization"][1]), "output_shape": outp["shape"].tolist(),
                    "output_scale": float(outp["quantization"][0]), "output_zero_point": int(outp["quantization"][1])},
        "ds2": {"float": float_eval, "pruned_float": pruned_eval, "int8": int8_eval},
        "int8_vs_pruned_float_argmax_agreement": round(agreement, 5),
        "host_timing_tflite_builtin_ref": {"pruned_float": pruned_timing, "int8": int8_timing,
                                           "source": "host wall time, tf.lite BUILTIN_REF, one beat per invoke"},
        "quantize_vs_tflite_quantize_op": quant_check,
        "fit_seconds_host_wall": round(fit_seconds, 1), "total_seconds_host_wall": round(total_seconds, 1),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"wrote {out}/{NAME}_float.tflite ({len(float_tflite)} B), {NAME}_int8.tflite ({len(int8_tflite)} B), "
          f"metrics.json in {total_seconds:.0f} s")
    return 0


def _short(m: dict) -> str:
    pc = m["per_class"]
    return (f"acc {m['accuracy']} macroF1 {m['macro_f1']} (NSVF {m['macro_f1_nsvf']}) | "
            + " ".join(f"{c}: Se {pc[c]['Se']} +P {pc[c]['+P']}" for c in CLASSES))


if __name__ == "__main__":
    sys.exit(main())
