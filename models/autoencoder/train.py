"""Recipe of ae_beat: an INT8 1D convolutional autoencoder that flags abnormal MIT-BIH beats.

Trained on normal beats (AAMI N) only; a beat is called abnormal when its reconstruction error (mean
squared error, in the input's normalized units) exceeds a threshold calibrated on held-out DS1 records.

train on the N beats of DS1 minus the calibration records → float threshold on the calibration records
→ full-integer INT8 PTQ → INT8 threshold re-tuned on the calibration records with the INT8 model → evaluate
float and INT8 on DS2 (inter-patient) → a second, intra-patient run (random stratified beat split of
DS1+DS2) → write the two .tflite files and metrics.json. Run from the repo root with the training venv:

    /work/venv-train/bin/python models/autoencoder/train.py --mitdb ../shared/mitdb --out models/autoencoder
    /work/venv-train/bin/python models/autoencoder/train.py --smoke     # CI: bundled records, one epoch

The reconstruction error is computed exactly as harness/bench/run.py computes it on the board's outputs:
both the INT8 input and the INT8 output dequantized with their own scale and zero point, then the mean of
the squared differences, so the INT8 figures here are the figures the bench reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from models import training  # noqa: E402  (sets TF env vars before TensorFlow is imported)

import numpy as np  # noqa: E402

from harness.bench import data  # noqa: E402

NAME = "ae_beat"
# One beat: 0.27 s before the R peak (P wave, PR) to 0.44 s after (QRS, ST, most of T), block means of 4
# → 64 samples at 90 Hz, z-scored per beat so the error measures shape, not amplitude.
SPEC = data.WindowSpec(before=96, after=160, channel=0, decimate=4, normalize="beat_zscore")
NORMAL = data.AAMI_CLASSES.index("N")
# Patient-wise calibration hold-out for the inter-patient model: the runner's DS1 hold-out (every fourth
# DS1 record, a fixed rule not chosen by looking at results). Their beats (all classes) set the threshold;
# their N beats are not trained on, so the threshold sees unseen patients as DS2 will.
CALIBRATION_RECORDS = training.HOLDOUT_RECORDS


def build_model(keras, batch_size=None):
    n = SPEC.length
    inputs = keras.Input(shape=(n, 1), batch_size=batch_size, name="beat")
    x = keras.layers.Conv1D(4, 7, strides=2, padding="same", activation="relu", name="enc_conv1")(inputs)
    x = keras.layers.Conv1D(8, 5, strides=2, padding="same", activation="relu", name="enc_conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)                                   # [n/4 * 8]
    code = keras.layers.Dense(8, activation="relu", name="bottleneck")(x)
    x = keras.layers.Dense((n // 4) * 8, activation="relu", name="dec_fc")(code)
    x = keras.layers.Reshape((n // 4, 8), name="unflatten")(x)
    # Upsampling by 2 without TRANSPOSE_CONV (tflite-runtime 2.14, the harness's reference, lacks the
    # version-4 TRANSPOSE_CONV that TF 2.21 emits): a convolution with twice the channels, then a
    # reshape [L, 2C] → [2L, C] that interleaves them in time (1D "pixel shuffle", a plain RESHAPE).
    x = keras.layers.Conv1D(8, 5, padding="same", activation="relu", name="dec_conv1")(x)        # [16, 2x4]
    x = keras.layers.Reshape((n // 2, 4), name="upsample1")(x)                                    # [32, 4]
    x = keras.layers.Conv1D(2, 7, padding="same", name="dec_conv2")(x)                            # [32, 2x1]
    outputs = keras.layers.Reshape((n, 1), name="upsample2")(x)                                   # [64, 1]
    return keras.Model(inputs, outputs, name=NAME)


# --- Reconstruction error and thresholds -------------------------------------------------------------

def errors_float(model, x: np.ndarray) -> np.ndarray:
    out = model.predict(x[..., None], verbose=0, batch_size=1024)[..., 0]
    return np.mean((out - x) ** 2, axis=1)


def errors_tflite(tflite: bytes, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-beat MSE the way harness/bench/run.py computes it (INT8: both tensors dequantized).

    INT8 models run on the harness's own reference (training.reference_outputs: tflite-runtime BUILTIN_REF,
    bit-exact with the board). TensorFlow 2.21's interpreter is not used for them: its
    reference kernels round differently on some ops (on this model 342 of 3000 beats of record 213 got
    outputs differing by up to 3 steps), which would move beats across the threshold.
    """
    interp = training.interpreter(tflite)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = tuple(inp["shape"])
    start = time.perf_counter()
    if inp["dtype"] == np.int8:
        scale, zp = inp["quantization"]
        o_scale, o_zp = out["quantization"]
        q = data.quantize(x, scale, zp)
        raw = training.reference_outputs(tflite, q)
        xins = (q.astype(np.float32) - zp) * np.float32(scale)
        xouts = (raw.astype(np.float32) - o_zp) * np.float32(o_scale)
    else:
        xins = x.astype(np.float32)
        xouts = np.empty_like(xins)
        for i in range(len(x)):
            interp.set_tensor(inp["index"], xins[i].reshape(shape))
            interp.invoke()
            xouts[i] = interp.get_tensor(out["index"]).reshape(-1)
    # One row at a time, float32 like harness/bench/run.py (a 2-D mean could sum in another order).
    errs = np.array([float(np.mean((xouts[i] - xins[i]) ** 2)) for i in range(len(x))], dtype=np.float64)
    elapsed = time.perf_counter() - start
    return errs, {"host_seconds": round(elapsed, 2), "host_us_per_beat": round(1e6 * elapsed / max(1, len(x)), 1)}


def pick_threshold(errors: np.ndarray, normal: np.ndarray) -> float:
    """The threshold t maximising Youden's J = Se + Sp - 1 of "abnormal when error > t".

    Youden rather than accuracy: with ~9 normal beats for every abnormal one, the accuracy-optimal
    threshold calls nearly everything normal and detects little.
    """
    order = np.argsort(errors, kind="stable")
    e, is_normal = errors[order], normal[order]
    n_norm, n_abn = is_normal.sum(), (~is_normal).sum()
    # Threshold at e[i]: beats 0..i called normal (ties: take the last index of each value).
    cum_norm = np.cumsum(is_normal)
    cum_abn = np.cumsum(~is_normal)
    last = np.r_[e[1:] != e[:-1], True]
    sp = cum_norm / max(1, n_norm)
    se = (n_abn - cum_abn) / max(1, n_abn)
    j = np.where(last, se + sp - 1, -np.inf)
    i = int(np.argmax(j))
    # Halfway to the next larger error, so that no beat's error sits on the threshold itself.
    return float(e[i] if i + 1 == len(e) else (e[i] + e[i + 1]) / 2)


def detection(errors: np.ndarray, normal: np.ndarray, threshold: float) -> dict:
    """Accuracy, Se, Sp, +P, F1 of "abnormal when error > threshold" (abnormal = positive), as
    harness.bench.metrics.anomaly reports them."""
    called = errors > threshold
    abn = ~normal
    tp, fn = int((abn & called).sum()), int((abn & ~called).sum())
    tn, fp = int((normal & ~called).sum()), int((normal & called).sum())
    return {"threshold": threshold, "n": int(len(errors)), "normal": int(normal.sum()), "abnormal": int(abn.sum()),
            "accuracy": _r((tp + tn) / len(errors)), "se": _r(tp / max(1, tp + fn)), "sp": _r(tn / max(1, tn + fp)),
            "ppv": _r(tp / max(1, tp + fp)) if tp + fp else None, "f1": _r(2 * tp / max(1, 2 * tp + fp + fn)),
            "confusion": [[tn, fp], [fn, tp]], "confusion_axes": "rows=true normal/abnormal, cols=called normal/abnormal",
            "all_normal_baseline_accuracy": _r(normal.mean()),
            "error_median": {"normal": _r(np.median(errors[normal])) if normal.any() else None,
                             "abnormal": _r(np.median(errors[abn])) if abn.any() else None}}


def per_class_detection(errors, y, threshold) -> dict:
    """Share of each AAMI class's beats called abnormal (for N: the false-alarm rate)."""
    return {c: {"beats": int((y == i).sum()), "called_abnormal": _r((errors[y == i] > threshold).mean())}
            for i, c in enumerate(data.AAMI_CLASSES) if (y == i).any()}


# --- One protocol: train, calibrate, quantize, re-calibrate, evaluate ------------------------------

def run(keras, tf, train_x, calib: training.BeatSet, test: training.BeatSet, args, tag: str) -> dict:
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(args.lr), loss="mse")
    t_fit = time.perf_counter()
    hist = model.fit(train_x[..., None], train_x[..., None], batch_size=args.batch, epochs=args.epochs,
                     shuffle=True, verbose=2 if not args.smoke else 0)
    fit_seconds = time.perf_counter() - t_fit

    calib_normal, test_normal = calib.y == NORMAL, test.y == NORMAL
    thr_float = pick_threshold(errors_float(model, calib.x), calib_normal)

    rng = np.random.default_rng(args.seed)
    rep = train_x[rng.choice(len(train_x), size=min(500, len(train_x)), replace=False)]
    export = build_model(keras, batch_size=1)
    export.set_weights(model.get_weights())
    float_tflite = training.convert(export)
    int8_tflite = training.convert(export, representative=rep)

    calib_err_int8, _ = errors_tflite(int8_tflite, calib.x)
    thr_int8 = pick_threshold(calib_err_int8, calib_normal)
    test_err_float, float_timing = errors_tflite(float_tflite, test.x)
    test_err_int8, int8_timing = errors_tflite(int8_tflite, test.x)
    result = {
        "train_normal_beats": int(len(train_x)), "final_train_loss": round(float(hist.history["loss"][-1]), 5),
        "fit_seconds_host_wall": round(fit_seconds, 1),
        "calibration": {"records": sorted(set(calib.records.tolist())), "beats": calib.counts(),
                        "threshold_float": thr_float, "threshold_int8": thr_int8,
                        "float": detection(errors_float(model, calib.x), calib_normal, thr_float),
                        "int8": detection(calib_err_int8, calib_normal, thr_int8)},
        "test": {"records": sorted(set(test.records.tolist())), "beats": test.counts(),
                 "float": detection(test_err_float, test_normal, thr_float),
                 "int8": detection(test_err_int8, test_normal, thr_int8),
                 "int8_with_float_threshold": detection(test_err_int8, test_normal, thr_float),
                 "int8_called_abnormal_per_class": per_class_detection(test_err_int8, test.y, thr_int8)},
        "host_timing_tflite_builtin_ref": {"float": float_timing, "int8": int8_timing,
                                           "source": "host wall time; INT8: harness.bench.reference.TFLiteReference (tflite-runtime BUILTIN_REF, batched); float: tf.lite BUILTIN_REF, one beat per invoke"},
    }
    d = result["test"]["int8"]
    print(f"[{tag}] thresholds float {thr_float:.4f} int8 {thr_int8:.4f} | INT8 test: acc {d['accuracy']} "
          f"Se {d['se']} Sp {d['sp']} +P {d['ppv']} (float acc {result['test']['float']['accuracy']})")
    return {"result": result, "model": model, "float_tflite": float_tflite, "int8_tflite": int8_tflite}


def main(argv=None) -> int:
    ap = training.cli(__doc__, "autoencoder", seed=11)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--intra-epochs", type=int, default=15, help="epochs of the intra-patient run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.set_defaults(protocols="inter,intra")  # --smoke runs the intra path too: it is a few hundred beats
    args = training.parse(ap, argv)
    protocols, out = args.protocol_list, args.out_dir
    t0 = time.perf_counter()
    if args.smoke:
        args.epochs = args.intra_epochs = 1

    tf = training.deterministic(args.seed)
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(2)

    # Inter-patient: train on DS1 N beats (minus the calibration records), test on DS2.
    if args.smoke:
        beats = training.subsample(training.load_beats(args.mitdb, data.BUNDLED_RECORDS, SPEC), 600, args.seed)
        calib_mask = beats.records == data.BUNDLED_RECORDS[0]
        test_mask = beats.records == data.BUNDLED_RECORDS[2]
        fit_mask = ~calib_mask & ~test_mask
        ds1 = training.take(beats, ~test_mask)
        train_x = beats.x[fit_mask & (beats.y == NORMAL)]
        calib, test = training.take(beats, calib_mask), training.take(beats, test_mask)
    else:
        ds1, test = training.inter_patient(args.mitdb, SPEC)
        calib_mask = np.isin(ds1.records, CALIBRATION_RECORDS)
        train_x = ds1.x[~calib_mask & (ds1.y == NORMAL)]
        calib = training.take(ds1, calib_mask)
    print(f"inter: train {len(train_x)} N beats; calibration {sorted(set(calib.records))}: {calib.counts()}; "
          f"test {len(set(test.records))} records: {test.counts()}")
    inter = run(keras, tf, train_x, calib, test, args, "inter") if "inter" in protocols else None

    # Intra-patient: random stratified beat split of DS1+DS2; the threshold from a random 20 % of the
    # training part (all classes), the autoencoder from the N beats of the other 80 %.
    intra = intra_run = None
    if "intra" in protocols:
        tf = training.deterministic(args.seed)
        if args.smoke:
            tr, te = training.split_stratified(beats, 0.2, args.seed)
        else:
            tr, te = training.intra_patient(args.mitdb, SPEC, test_fraction=0.2, seed=0)
        fit, cal = training.split_stratified(tr, 0.2, args.seed + 1)
        args_intra = argparse.Namespace(**{**vars(args), "epochs": args.intra_epochs})
        print(f"intra: train {int((fit.y == NORMAL).sum())} N beats; calibration {cal.counts()}; test {te.counts()}")
        intra_run = run(keras, tf, fit.x[fit.y == NORMAL], cal, te, args_intra, "intra")
        intra = intra_run["result"]

    written = inter or intra_run  # the files come from the inter-patient run unless only intra was asked for
    model, float_tflite, int8_tflite = written["model"], written["float_tflite"], written["int8_tflite"]
    (out / f"{NAME}_float.tflite").write_bytes(float_tflite)
    (out / f"{NAME}_int8.tflite").write_bytes(int8_tflite)
    harness = training.harness_figures(out / f"{NAME}_int8.tflite")
    total_seconds = time.perf_counter() - t0
    metrics = {
        "model": NAME, "smoke": bool(args.smoke), "task": "autoencoder",
        "window": training.window_dict(SPEC),
        "normal_labels": ["N"], "error": "mse of dequantized output vs dequantized input (harness/bench/run.py)",
        "threshold_rule": "maximise Youden J (Se + Sp - 1) on the calibration beats; INT8 threshold from INT8 errors",
        "epochs": args.epochs, "intra_epochs": args.intra_epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "params": int(model.count_params()),
        "macs": harness["macs"], "macs_source": harness["macs_source"],
        "arena_used_bytes": harness["arena_used_bytes"], "arena_source": harness["arena_source"],
        "tflite_bytes": {"float": len(float_tflite), "int8": len(int8_tflite)},
        "sha256": training.sha256s(float=float_tflite, int8=int8_tflite),
        "ops_int8": training.op_list(int8_tflite), "ops_float": training.op_list(float_tflite),
        "int8_io": training.int8_io(int8_tflite),
        "inter_patient": {"train_records": sorted(set(ds1.records.tolist()) - set(calib.records.tolist())),
                          **inter["result"]} if inter else None,
        "intra_patient": intra,
        "total_seconds_host_wall": round(total_seconds, 1),
        "versions": training.versions(tf, keras),
    }
    training.write_metrics(out, metrics)
    print(f"wrote {out}/{NAME}_float.tflite ({len(float_tflite)} B), {NAME}_int8.tflite ({len(int8_tflite)} B), "
          f"metrics.json in {total_seconds:.0f} s")
    return 0


def _r(v):
    return None if v is None else round(float(v), 4)


if __name__ == "__main__":
    sys.exit(main())
