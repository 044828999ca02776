"""Recipe of rr_beat: a small 1D CNN on one beat's morphology plus causal RR-interval features, 5 AAMI classes.

The input is one INT8 tensor: 90 samples of MLII at 90 Hz around the R peak (0.4 s before, 0.6 s after,
beat z-score) followed by the 6 rhythm values of harness.bench.data.rhythm_features (pre-RR, post-RR, local mean
RR of the last 10 beats, and each over the running mean RR of the record so far). The model slices the two
apart (STRIDED_SLICE), runs a conv stack on the morphology and a dense layer on the rhythm, adds the two
embeddings and classifies. The registry window says `rhythm: rr`, so the bench sends the board exactly
these 96 values and bit-exactness covers the rhythm part too.

Every choice is made on a DS1 patient hold-out (training.HOLDOUT_RECORDS; DS2 is never looked at before
the final test): the class weights — (n_N / n_class) ** power capped at cap, every pair of
--weight-powers and --weight-caps — scored by macro-F1 over N, S, V, F of the float model on the
hold-out (first candidate on a tie). The chosen setting is then trained on all of DS1, quantized
(full-integer INT8 PTQ) and tested once on DS2 with the harness's own reference (tflite-runtime
BUILTIN_REF, the interpreter the board is checked against bit for bit). The intra-patient run reuses the
same choice. The card (CARD.md) says how the candidate list came to be.

    python models/rr/train.py --mitdb ../shared/mitdb            # writes models/rr
    python models/rr/train.py --smoke                            # CI: bundled records, one epoch
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from models import training  # noqa: E402  (sets TF env vars before TensorFlow is imported)

import numpy as np  # noqa: E402

from harness.bench import data  # noqa: E402

NAME = "rr_beat"
SPEC = data.WindowSpec(before=144, after=216, channel=0, decimate=4, normalize="beat_zscore", rhythm="rr")
MORPH = SPEC.morphology_length          # 90
N_RHYTHM = SPEC.length - MORPH          # 6
CLASSES = data.AAMI_CLASSES


def build_model(keras, batch_size=None):
    layers = keras.layers
    inputs = keras.Input(shape=(SPEC.length,), batch_size=batch_size, name="beat")
    morph = layers.Lambda(lambda t: t[:, :MORPH], output_shape=(MORPH,), name="morphology")(inputs)
    rhythm = layers.Lambda(lambda t: t[:, MORPH:], output_shape=(N_RHYTHM,), name="rhythm")(inputs)
    x = layers.Reshape((MORPH, 1), name="as_sequence")(morph)
    for i, (filters, kernel) in enumerate([(8, 7), (16, 5), (16, 5)], start=1):
        x = layers.Conv1D(filters, kernel, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling1D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.2, name="drop_morph")(x)
    m = layers.Dense(32, name="morph_fc")(x)
    r = layers.Dense(16, activation="relu", name="rhythm_fc1")(rhythm)
    r = layers.Dense(32, name="rhythm_fc2")(r)
    h = layers.ReLU(name="joint_relu")(layers.Add(name="joint")([m, r]))
    h = layers.Dropout(0.1, name="drop")(h)
    x = layers.Dense(len(CLASSES), name="logits")(h)
    return keras.Model(inputs, layers.Softmax(name="probs")(x), name=NAME)


def fit(keras, train: training.BeatSet, power: float, cap: float, args, epochs: int):
    """A freshly seeded model trained on `train` with class weights (power, cap); returns (model, weights, loss)."""
    keras.utils.set_random_seed(args.seed)
    model = build_model(keras)
    steps = epochs * int(np.ceil(len(train.y) / args.batch))
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
    weights = training.class_weights(train.y, len(CLASSES), power, cap=cap)
    hist = model.fit(train.x, train.y, batch_size=args.batch, epochs=epochs, class_weight=weights, shuffle=True,
                     verbose=2 if not args.smoke else 0)
    return model, weights, float(hist.history["loss"][-1])


def candidates(args) -> dict[str, tuple[float, float]]:
    return {f"power {p:g}, cap {c:g}": (p, c) for c in args.weight_caps for p in args.weight_powers}


def choose_weights(keras, ds1: training.BeatSet, args) -> dict:
    """Each candidate (power, cap) trained on DS1 minus the hold-out patients, scored on the hold-out."""
    fit_set, holdout = training.patient_holdout(ds1)
    results = {}
    for name, (power, cap) in candidates(args).items():
        t = time.perf_counter()
        model, _, _ = fit(keras, fit_set, power, cap, args, args.select_epochs)
        pred = model.predict(holdout.x, verbose=0, batch_size=1024).argmax(1)
        results[name] = training.classification_metrics(holdout.y, pred, CLASSES)
        print(f"[select] {name}: hold-out {training.summary(results[name])} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    best, scores = training.select(results, lambda m: m["macro_f1_nsvf"] or 0.0)
    return {"rule": "highest macro-F1 (N,S,V,F) of the float model on the DS1 hold-out patients",
            "holdout_records": list(holdout.names), "holdout_beats": holdout.counts(),
            "fit_records": list(fit_set.names), "epochs": args.select_epochs,
            "candidates": {k: {"macro_f1_nsvf": scores[k], "per_class": results[k]["per_class"],
                               "confusion": results[k]["confusion"]} for k in results},
            "chosen": best, "chosen_weight_power": candidates(args)[best][0],
            "chosen_weight_cap": candidates(args)[best][1]}


def run(keras, train: training.BeatSet, test: training.BeatSet, power: float, cap: float, args, epochs: int) -> dict:
    t = time.perf_counter()
    model, weights, loss = fit(keras, train, power, cap, args, epochs)
    fit_seconds = time.perf_counter() - t
    float_eval = training.classification_metrics(test.y, model.predict(test.x, verbose=0, batch_size=1024).argmax(1),
                                                 CLASSES)
    export = build_model(keras, batch_size=1)
    export.set_weights(model.get_weights())
    rep = train.x[np.random.default_rng(args.seed).choice(len(train.x), size=min(1000, len(train.x)), replace=False)]
    float_tflite = training.convert(export)
    int8_tflite = training.convert(export, representative=rep)
    int8_scores = training.reference_scores(int8_tflite, test.x)
    int8_eval = training.classification_metrics(test.y, int8_scores.argmax(1), CLASSES)
    print("float:", training.summary(float_eval))
    print("int8 :", training.summary(int8_eval), flush=True)
    figures = {"train_records": list(train.names), "train_beats": train.counts(), "train_skipped": train.skipped,
               "test_records": list(test.names), "test_beats": test.counts(), "test_skipped": test.skipped,
               "class_weights": {CLASSES[k]: round(v, 3) for k, v in weights.items()}, "epochs": epochs,
               "final_train_loss": round(loss, 4), "fit_seconds_host_wall": round(fit_seconds, 1),
               "float": float_eval, "int8": int8_eval,
               "int8_source": "harness.bench.reference.TFLiteReference (tflite-runtime BUILTIN_REF), inputs via harness.bench.data.quantize",
               "steps": training.step_costs({"float": float_eval, "int8": int8_eval}, [("int8_pp", "float", "int8")]),
               "sha256": training.sha256s(float=float_tflite, int8=int8_tflite)}
    return {"figures": figures, "model": model, "float_tflite": float_tflite, "int8_tflite": int8_tflite}


def main(argv=None) -> int:
    ap = training.cli(__doc__, "rr", seed=7)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--select-epochs", type=int, default=8, help="epochs of each hold-out candidate")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-powers", default="0.5,1.0", help="class-weight powers tried on the DS1 hold-out")
    ap.add_argument("--weight-caps", default="30,5", help="class-weight caps tried on the DS1 hold-out")
    args = training.parse(ap, argv)
    args.weight_powers = [float(p) for p in args.weight_powers.split(",")]
    args.weight_caps = [float(c) for c in args.weight_caps.split(",")]
    if args.smoke:  # two candidates are enough to run the selection code
        args.epochs = args.select_epochs = 1
        args.weight_powers = args.weight_powers[:1]
    t0 = time.perf_counter()
    tf = training.deterministic(args.seed)
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(2)
    runs, selection = {}, None
    for protocol in args.protocol_list:
        train, test = training.load_split(protocol, SPEC, args)
        print(f"[{protocol}] train {len(train.names)} records {train.counts()}; test {len(test.names)} records "
              f"{test.counts()}", flush=True)
        if selection is None:  # chosen on the DS1 hold-out of the first (inter) protocol, reused after
            if len(candidates(args)) > 1:
                selection = choose_weights(keras, train, args)
            else:
                (power, cap), = candidates(args).values()
                selection = {"rule": "one candidate given", "chosen_weight_power": power, "chosen_weight_cap": cap}
        runs[protocol] = run(keras, train, test, selection["chosen_weight_power"], selection["chosen_weight_cap"],
                             args, args.epochs)

    committed = runs[args.protocol_list[0]]
    out = args.out_dir
    float_tflite, int8_tflite = committed["float_tflite"], committed["int8_tflite"]
    (out / f"{NAME}_float.tflite").write_bytes(float_tflite)
    (out / f"{NAME}_int8.tflite").write_bytes(int8_tflite)
    harness = training.harness_figures(out / f"{NAME}_int8.tflite")
    model = committed["model"]
    metrics = {
        "model": NAME, "smoke": bool(args.smoke), "written_files_from_protocol": args.protocol_list[0],
        "window": training.window_dict(SPEC), "rhythm_features": list(data.RR_FEATURES),
        "rhythm_scaling": {"gain": data.RR_GAIN, "clip": [0.0, data.RR_CLIP], "local_beats": data.RR_LOCAL_BEATS},
        "input_causality": SPEC.causality(),
        "classes": list(CLASSES), "batch": args.batch, "lr": args.lr, "lr_schedule": "cosine to 5 %",
        "seed": args.seed, "selection": selection,
        "params": int(model.count_params()),
        "macs": harness["macs"], "macs_source": harness["macs_source"],
        "arena_used_bytes": harness["arena_used_bytes"], "arena_source": harness["arena_source"],
        "tflite_bytes": {"float": len(float_tflite), "int8": len(int8_tflite)},
        "sha256": committed["figures"]["sha256"],
        "ops_int8": training.op_list(int8_tflite), "ops_float": training.op_list(float_tflite),
        "int8_io": training.int8_io(int8_tflite),
        "protocols": {training.PROTOCOL_NAMES[p]: runs[p]["figures"] for p in args.protocol_list},
        "total_seconds_host_wall": round(time.perf_counter() - t0, 1),
        "versions": training.versions(tf, keras),
    }
    training.write_metrics(out, metrics)
    print(f"wrote {out}/{NAME}_float.tflite ({len(float_tflite)} B), {NAME}_int8.tflite ({len(int8_tflite)} B), "
          f"metrics.json in {metrics['total_seconds_host_wall']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
