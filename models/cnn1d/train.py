"""Recipe of cnn1d_beat: a small 1D CNN classifying single MIT-BIH beats into the 5 AAMI classes.

train (class-weighted) → magnitude-prune with fixed masks and fine-tune → full-integer INT8 PTQ → evaluate
float, pruned float and INT8 on the held-out beats. Done twice, once per evaluation protocol:
inter-patient (train DS1, test DS2: the committed .tflite files) and intra-patient (random stratified beat
split of DS1+DS2, for comparison with papers that use it; its model is not written). Writes the two
.tflite files and metrics.json. Run from the repo root with the training venv:

    /work/venv-train/bin/python models/cnn1d/train.py --mitdb ../shared/mitdb --out models/cnn1d
    /work/venv-train/bin/python models/cnn1d/train.py --smoke          # CI: bundled records, one epoch

The input window comes from harness.bench.data (the same function the harness uses to feed the board).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from models import training  # noqa: E402  (sets TF env vars before TensorFlow is imported)

import numpy as np  # noqa: E402

from harness.bench import data  # noqa: E402

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


def train_and_evaluate(train, test, args, tf, keras, with_quantize_check: bool) -> dict:
    """One full pass float → pruned → INT8 on one protocol's split; returns figures and the .tflite bytes."""
    tf.keras.utils.set_random_seed(args.seed)  # each protocol's run starts from the same seeds
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    weights = training.class_weights(train.y, len(CLASSES), args.weight_power)
    x_train = train.x[..., None]
    t_fit = time.perf_counter()
    hist = model.fit(x_train, train.y, batch_size=args.batch, epochs=args.epochs, class_weight=weights,
                     shuffle=True, verbose=2)
    float_eval = training.classification_metrics(test.y, model.predict(test.x[..., None], verbose=0,
                                                                       batch_size=1024).argmax(1), CLASSES)
    print("float   :", training.summary(float_eval))

    masks = training.magnitude_masks(model, SPARSITY, skip=SKIP_PRUNING)
    training.apply_masks(masks)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist_ft = model.fit(x_train, train.y, batch_size=args.batch, epochs=args.finetune_epochs,
                        class_weight=weights, shuffle=True, verbose=2,
                        callbacks=[training.pruning_callback(masks)])
    fit_seconds = time.perf_counter() - t_fit

    rng = np.random.default_rng(args.seed)
    rep = train.x[rng.choice(len(train.x), size=min(500, len(train.x)), replace=False)]
    # The board runs one beat per invoke: export a batch-1 copy so the .tflite input is [1, 187, 1].
    export = build_model(keras, batch_size=INPUT_SHAPE[0])
    export.set_weights(model.get_weights())
    float_tflite = training.convert(export)
    int8_tflite = training.convert(export, representative=rep)

    pruned_scores, pruned_timing = training.run_tflite(float_tflite, test.x)
    int8_scores, int8_timing = training.run_tflite(int8_tflite, test.x)
    pruned_eval = training.classification_metrics(test.y, pruned_scores.argmax(1), CLASSES)
    int8_eval = training.classification_metrics(test.y, int8_scores.argmax(1), CLASSES)
    print("pruned  :", training.summary(pruned_eval))
    print("int8    :", training.summary(int8_eval))
    figures = {
        "train_records": list(train.names), "train_beats": train.counts(),
        "test_records": list(test.names), "test_beats": test.counts(),
        "class_weights": {CLASSES[k]: round(v, 3) for k, v in weights.items()},
        "final_train_loss": round(float(hist.history["loss"][-1]), 4),
        "final_finetune_loss": round(float(hist_ft.history["loss"][-1]), 4),
        "sparsity_per_layer": training.sparsity_of(model),
        "float": float_eval, "pruned_float": pruned_eval, "int8": int8_eval,
        "steps": training.step_costs({"float": float_eval, "pruned": pruned_eval, "int8": int8_eval},
                                     [("pruning_pp", "float", "pruned"), ("int8_pp", "pruned", "int8"),
                                      ("float_to_int8_pp", "float", "int8")]),
        "int8_vs_pruned_float_argmax_agreement": round(float((pruned_scores.argmax(1) == int8_scores.argmax(1)).mean()), 5),
        "host_timing_tflite_builtin_ref": {"pruned_float": pruned_timing, "int8": int8_timing,
                                           "source": "host wall time, tf.lite BUILTIN_REF, one beat per invoke"},
        "fit_seconds_host_wall": round(fit_seconds, 1),
        "sha256": training.sha256s(float=float_tflite, int8=int8_tflite),
    }
    if with_quantize_check:
        float_io_tflite = training.convert(export, representative=rep, int8_io=False)
        figures["quantize_vs_tflite_quantize_op"] = training.quantize_agreement(float_io_tflite, test.x[:200])
        print("quantize vs TFLite QUANTIZE:", figures["quantize_vs_tflite_quantize_op"])
    return {"figures": figures, "model": model, "float_tflite": float_tflite, "int8_tflite": int8_tflite}


def holdout_check(args, powers) -> int:
    """The class-weight power choice made again without DS2: each power trained (float, pruning, INT8) on
    DS1 minus the hold-out patients and scored on the hold-out (INT8 macro-F1 over N, S, V, F)."""
    tf = training.deterministic(args.seed)
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(2)
    ds1, _ = training.load_split("inter", SPEC, args)
    fit_set, holdout = training.patient_holdout(ds1)
    results = {}
    for power in powers:
        args.weight_power = power
        run = train_and_evaluate(fit_set, holdout, args, tf, keras, with_quantize_check=False)
        results[f"{power:g}"] = run["figures"]["int8"]
        print(f"[holdout] power {power:g}:", training.summary(results[f"{power:g}"]), flush=True)
    best, scores = training.select(results, lambda m: m["macro_f1_nsvf"] or 0.0)
    report = {"rule": "highest INT8 macro-F1 (N,S,V,F) on the DS1 hold-out patients", "smoke": bool(args.smoke),
              "holdout_records": list(holdout.names), "holdout_beats": holdout.counts(),
              "fit_records": list(fit_set.names), "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
              "scores": scores, "chosen_weight_power": float(best), "committed_weight_power": 0.5,
              "per_power": results}
    (args.out_dir / "holdout_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"hold-out choice: power {best} (committed model: 0.5)")
    return 0


def main(argv=None) -> int:
    ap = training.cli(__doc__, "cnn1d", seed=7)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--weight-power", type=float, default=0.5, help="class weight = (n_N / n_class) ** power")
    ap.add_argument("--holdout-check", default=None, metavar="POWERS",
                    help="only re-make the class-weight choice on the DS1 patient hold-out for these powers "
                         "(e.g. 0.5,1.0): writes holdout_check.json, leaves the model files alone")
    args = training.parse(ap, argv)
    protocols, out = args.protocol_list, args.out_dir
    if args.smoke:
        args.epochs, args.finetune_epochs = 1, 1
    if args.holdout_check:
        return holdout_check(args, [float(p) for p in args.holdout_check.split(",")])

    t0 = time.perf_counter()
    tf = training.deterministic(args.seed)
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(2)
    runs = {}
    for protocol in protocols:
        train, test = training.load_split(protocol, SPEC, args)
        print(f"[{protocol}] train {len(train.names)} records {train.counts()}; "
              f"test {len(test.names)} records {test.counts()}")
        runs[protocol] = train_and_evaluate(train, test, args, tf, keras, with_quantize_check=protocol == protocols[0])
        runs[protocol]["figures"].update(train_skipped_at_edges=train.skipped, test_skipped_at_edges=test.skipped)

    committed = runs[protocols[0]]
    float_tflite, int8_tflite, model = committed["float_tflite"], committed["int8_tflite"], committed["model"]
    (out / f"{NAME}_float.tflite").write_bytes(float_tflite)
    (out / f"{NAME}_int8.tflite").write_bytes(int8_tflite)
    harness = training.harness_figures(out / f"{NAME}_int8.tflite")

    total_seconds = time.perf_counter() - t0
    metrics = {
        "model": NAME,
        "smoke": bool(args.smoke),
        "written_files_from_protocol": protocols[0],
        "window": training.window_dict(SPEC),
        "classes": list(CLASSES),
        "weight_power": args.weight_power, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
        "batch": args.batch, "seed": args.seed,
        "target_sparsity": SPARSITY, "not_pruned": list(SKIP_PRUNING),
        "params": int(model.count_params()),
        "nonzero_params": int(sum(int(np.count_nonzero(w.numpy())) for w in model.weights)),
        "macs": harness["macs"], "macs_source": harness["macs_source"],
        "arena_used_bytes": harness["arena_used_bytes"], "arena_source": harness["arena_source"],
        "tflite_bytes": {"float": len(float_tflite), "int8": len(int8_tflite)},
        "sha256": committed["figures"]["sha256"],
        "ops_int8": training.op_list(int8_tflite), "ops_float": training.op_list(float_tflite),
        "int8_io": training.int8_io(int8_tflite),
        "protocols": {training.PROTOCOL_NAMES[p]: runs[p]["figures"] for p in protocols},
        "total_seconds_host_wall": round(total_seconds, 1),
        "versions": training.versions(tf, keras),
    }
    training.write_metrics(out, metrics)
    print(f"wrote {out}/{NAME}_float.tflite ({len(float_tflite)} B), {NAME}_int8.tflite ({len(int8_tflite)} B), "
          f"metrics.json in {total_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
