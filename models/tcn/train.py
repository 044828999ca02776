"""Recipe of tcn_beat: a dilated TCN beat classifier (AAMI N/S/V/F/Q), QAT INT8, re-parametrised into a
strided CNN that computes only the centre beat.

train the non-causal TCN on DS1 windows of 665 samples (loss on the centre position only) → QAT
(tensorflow-model-optimization on tf-keras) → INT8 TCN and INT8 strided CNN with the same weights and
quantization ranges → evaluate on DS2 (inter-patient), check that the two INT8 models agree on the centre
→ a second, shorter intra-patient run → write the .tflite files and metrics.json. From the repo root:

    /work/venv-train/bin/python models/tcn/train.py --mitdb ../shared/mitdb --out models/tcn
    /work/venv-train/bin/python models/tcn/train.py --smoke        # CI: bundled records, one epoch

Needs tf-keras and tensorflow-model-optimization next to TensorFlow (tfmot does not support Keras 3).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from models import training  # noqa: E402  (sets TF env vars before TensorFlow is imported)

import numpy as np  # noqa: E402

import reparam  # noqa: E402
from harness.bench import data  # noqa: E402

NAME = "tcn_beat"
# 1330 samples at 360 Hz (3.7 s) centred on the R peak, block means of 2 → 665 samples at 180 Hz. The
# neighbouring beats are unlabelled context; the centre's receptive field (511 samples, ±1.42 s) covers
# the previous and next R peaks at any rate above ~42 bpm.
SPEC = data.WindowSpec(before=665, after=665, channel=0, decimate=2, normalize="beat_zscore")
CLASSES = data.AAMI_CLASSES
assert SPEC.length == reparam.LENGTH


def training_rows(y: np.ndarray, keep_normal: int, seed: int) -> np.ndarray:
    """Every non-N beat and a fixed random `keep_normal` N beats: the TCN computes all 665 positions per
    window, so 46k N windows per epoch would cost minutes for little new information."""
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y == 0)
    keep = rng.choice(normal, size=min(keep_normal, len(normal)), replace=False)
    return np.sort(np.concatenate([keep, np.flatnonzero(y != 0)]))


def centre_loss(tf):
    def loss(y_true, y_pred):
        logits = y_pred[:, 0, reparam.CENTRE, :]
        return tf.keras.losses.sparse_categorical_crossentropy(tf.reshape(y_true, [-1]), logits, from_logits=True)
    return loss


def to_int8(tf, qat_model) -> bytes:
    """QAT model → full-integer INT8 .tflite; every range comes from the QAT quantizers."""
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def to_float(tf, model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def raw_int8(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """INT8 outputs (not dequantized) of every row, from the harness's own reference
    (training.reference_outputs: tflite-runtime BUILTIN_REF, the interpreter the bench checks the board
    against). TensorFlow 2.21's interpreter is not used here: its reference kernels round differently
    from TFLM on some ops, so its INT8 outputs can differ from the board's by a step or two."""
    details = training.interpreter(tflite).get_input_details()[0]
    scale, zp = details["quantization"]
    return training.reference_outputs(tflite, data.quantize(x, scale, zp))


def train(tf, keras, train_set: training.BeatSet, args, epochs: int, qat_epochs: int, tag: str):
    """Float TCN training then QAT; returns (float-trained TCN, QAT TCN, log)."""
    rows = training_rows(train_set.y, args.keep_normal, args.seed)
    x = train_set.x[rows][:, None, :, None]
    y = train_set.y[rows]
    weights = np.array(list(training.class_weights(y, len(CLASSES), args.weight_power).values()))
    sw = weights[y].astype(np.float32)
    tcn = reparam.build_tcn()
    tcn.compile(optimizer=keras.optimizers.Adam(args.lr), loss=centre_loss(tf))
    t0 = time.perf_counter()
    hist = tcn.fit(x, y, sample_weight=sw, batch_size=args.batch, epochs=epochs, shuffle=True,
                   verbose=2 if not args.smoke else 0)
    float_seconds = time.perf_counter() - t0
    float_snapshot = reparam.build_tcn()
    float_snapshot.set_weights(tcn.get_weights())
    qat = reparam.quantize(tcn)
    qat.compile(optimizer=keras.optimizers.Adam(args.lr / 10), loss=centre_loss(tf))
    t1 = time.perf_counter()
    hist_q = qat.fit(x, y, sample_weight=sw, batch_size=args.batch, epochs=qat_epochs, shuffle=True,
                     verbose=2 if not args.smoke else 0)
    qat_seconds = time.perf_counter() - t1
    log = {"train_rows": int(len(rows)), "train_rows_per_class": {c: int((y == i).sum()) for i, c in enumerate(CLASSES)},
           "class_weights": {c: round(float(w), 3) for c, w in zip(CLASSES, weights)},
           "epochs": epochs, "qat_epochs": qat_epochs,
           "final_loss": round(float(hist.history["loss"][-1]), 4),
           "final_qat_loss": round(float(hist_q.history["loss"][-1]), 4),
           "float_fit_seconds_host_wall": round(float_seconds, 1), "qat_fit_seconds_host_wall": round(qat_seconds, 1)}
    print(f"[{tag}] float fit {float_seconds:.0f} s, QAT fit {qat_seconds:.0f} s")
    return float_snapshot, qat, log


def export(tf, qat):
    """The four deployable files from one QAT model: INT8 + float TCN and strided CNN, batch 1."""
    files = {}
    q_tcn, q_str = reparam.quantize(reparam.build_tcn(1)), reparam.quantize(reparam.build_strided(1))
    reparam.copy_weights(qat, q_tcn)
    reparam.copy_weights(qat, q_str)
    files["tcn_int8"], files["strided_int8"] = to_int8(tf, q_tcn), to_int8(tf, q_str)
    f_tcn, f_str = reparam.build_tcn(1), reparam.build_strided(1)
    reparam.float_weights_from_qat(qat, f_tcn)
    reparam.float_weights_from_qat(qat, f_str)
    files["tcn_float"], files["strided_float"] = to_float(tf, f_tcn), to_float(tf, f_str)
    return files


def evaluate(files: dict, float_model, test: training.BeatSet, tcn_beats: int, seed: int) -> dict:
    """Metrics of the float (pre-QAT) Keras model, the float and INT8 strided CNN, and TCN ↔ strided
    agreement of the INT8 centre outputs on `tcn_beats` test beats (all when 0)."""
    strided_keras = reparam.build_strided()
    reparam.copy_weights(float_model, strided_keras)
    pre_qat = reparam.centre_logits(strided_keras.predict(test.x[:, None, :, None], verbose=0, batch_size=512))
    res = {"float_before_qat": training.classification_metrics(test.y, pre_qat.argmax(1), CLASSES)}
    # The float TCN and the float strided CNN compute the same centre (checked here on a few beats).
    few = test.x[:64, None, :, None]
    res["float_tcn_vs_strided_max_abs_diff"] = float(np.abs(
        reparam.centre_logits(float_model.predict(few, verbose=0)) - reparam.centre_logits(strided_keras.predict(few, verbose=0))).max())
    f_scores, f_timing = training.run_tflite(files["strided_float"], test.x)
    res["float_after_qat"] = training.classification_metrics(test.y, f_scores.argmax(1), CLASSES)
    t0 = time.perf_counter()
    s_raw = raw_int8(files["strided_int8"], test.x)
    s_time = time.perf_counter() - t0
    res["int8_strided"] = training.classification_metrics(test.y, s_raw.argmax(1), CLASSES)

    idx = np.arange(len(test.x))
    if tcn_beats and tcn_beats < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=tcn_beats, replace=False))
    t0 = time.perf_counter()
    t_raw = raw_int8(files["tcn_int8"], test.x[idx]).reshape(len(idx), reparam.LENGTH, len(CLASSES))[:, reparam.CENTRE]
    t_time = time.perf_counter() - t0
    diff = np.abs(t_raw.astype(np.int16) - s_raw[idx].astype(np.int16))
    res["int8_tcn_centre"] = training.classification_metrics(test.y[idx], t_raw.argmax(1), CLASSES)
    res["agreement_int8_tcn_vs_strided"] = {
        "beats": int(len(idx)), "argmax_agree": round(float((t_raw.argmax(1) == s_raw[idx].argmax(1)).mean()), 6),
        "beats_with_any_output_differing": int(diff.any(axis=1).sum()),
        "max_abs_diff_int8_steps": int(diff.max()) if diff.size else 0,
        "outputs_compared": int(diff.size)}
    res["int8_vs_float_after_qat_argmax_agreement"] = round(float((s_raw.argmax(1) == f_scores.argmax(1)).mean()), 5)
    res["host_timing_tflite_builtin_ref"] = {
        "source": "host wall time; INT8: harness.bench.reference.TFLiteReference (tflite-runtime BUILTIN_REF, batched), float: tf.lite BUILTIN_REF one beat per invoke",
        "strided_int8_us_per_beat": round(1e6 * s_time / len(test.x), 1),
        "tcn_int8_us_per_beat": round(1e6 * t_time / max(1, len(idx)), 1),
        "strided_float": f_timing}
    return res


def main(argv=None) -> int:
    ap = training.cli(__doc__, "tcn", seed=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--intra-epochs", type=int, default=5)
    ap.add_argument("--keep-normal", type=int, default=12000, help="N beats per epoch (all other beats are kept)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-power", type=float, default=0.5)
    ap.add_argument("--tcn-beats", type=int, default=0,
                    help="DS2 beats on which the INT8 TCN is run for the agreement check (0 = all)")
    # --smoke runs inter only (the default): the intra run goes through the same train/export/evaluate
    # code, and the QAT graph building and four conversions per run are what make the smoke run slow.
    args = training.parse(ap, argv)
    protocols, out = args.protocol_list, args.out_dir
    _need_qat_packages()
    t_start = time.perf_counter()
    if args.smoke:
        args.epochs = args.qat_epochs = args.intra_epochs = 1
        args.keep_normal, args.tcn_beats = 150, 40

    if args.smoke:
        beats = training.subsample(training.load_beats(args.mitdb, data.BUNDLED_RECORDS, SPEC), 300, args.seed)
        train_set = training.take(beats, beats.records != data.BUNDLED_RECORDS[2])
        test = training.take(beats, beats.records == data.BUNDLED_RECORDS[2])
    else:
        train_set, test = training.inter_patient(args.mitdb, SPEC)
    print(f"inter: train {len(train_set.names)} records {train_set.counts()}; test {len(test.names)} records {test.counts()}")

    tf = training.deterministic(args.seed)
    import tf_keras as keras

    keras.utils.set_random_seed(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    inter = files = None
    if "inter" in protocols:
        float_model, qat, log = train(tf, keras, train_set, args, args.epochs, args.qat_epochs, "inter")
        files = export(tf, qat)
        inter = evaluate(files, float_model, test, args.tcn_beats, args.seed)
        print("[inter] INT8 strided DS2:", training.summary(inter["int8_strided"]))
        print("[inter] TCN vs strided INT8:", inter["agreement_int8_tcn_vs_strided"])

    intra = None
    if "intra" in protocols:
        tf = training.deterministic(args.seed)
        keras.utils.set_random_seed(args.seed)
        tr, te = training.intra_patient(args.mitdb, SPEC, test_fraction=0.2, seed=0)
        print(f"intra: train {tr.counts()}; test {te.counts()}")
        f_intra, q_intra, log_intra = train(tf, keras, tr, args, args.intra_epochs, 1, "intra")
        intra_files = export(tf, q_intra)
        # The INT8 TCN costs ~5 ms a beat on the host: the agreement check of this run uses 2000 beats.
        intra = {**log_intra, **evaluate(intra_files, f_intra, te, 2000, args.seed)}
        if files is None:  # intra only: its files are written, into a temp dir (training.output_dir)
            files, float_model, log = intra_files, f_intra, log_intra
        print("[intra] INT8 strided:", training.summary(intra["int8_strided"]))

    names = {"tcn_int8": f"{NAME}_tcn_int8.tflite", "tcn_float": f"{NAME}_tcn_float.tflite",
             "strided_int8": f"{NAME}_strided_int8.tflite", "strided_float": f"{NAME}_strided_float.tflite"}
    for key, fname in names.items():
        (out / fname).write_bytes(files[key])
    total = time.perf_counter() - t_start
    metrics = {
        "model": NAME, "smoke": bool(args.smoke),
        "window": training.window_dict(SPEC),
        "classes": list(CLASSES), "centre_index": reparam.CENTRE, "receptive_field": reparam.RF,
        "filters": reparam.FILTERS, "kernel": reparam.KERNEL, "dilations": [1, *reparam.DILATIONS],
        "quantization": "QAT (tensorflow-model-optimization default 8-bit scheme), converter ranges from the QAT quantizers",
        "batch": args.batch, "lr": args.lr, "seed": args.seed, "keep_normal": args.keep_normal,
        "weight_power": args.weight_power,
        "params": int(float_model.count_params()),
        "ops_counts_static": {"tcn": reparam.counts("tcn"), "strided": reparam.counts("strided")},
        "macs_harness_costmodel": _harness_macs(files),
        "files": {names[k]: {"bytes": len(v), "sha256": training.sha256s(f=v)["f"], "ops": training.op_list(v)}
                  for k, v in files.items()},
        "int8_io_strided": training.int8_io(files["strided_int8"]),
        "inter_patient": {"train_records": list(train_set.names), "train_beats": train_set.counts(),
                          "test_records": list(test.names), "test_beats": test.counts(), **log, **inter}
        if inter else None,
        "intra_patient": intra,
        "total_seconds_host_wall": round(total, 1),
        "versions": training.versions(tf, keras, tfmot=_tfmot_version()),
    }
    training.write_metrics(out, metrics)
    print(f"wrote {', '.join(names.values())} and metrics.json to {out} in {total:.0f} s")
    return 0


def _harness_macs(files: dict) -> dict | str:
    """harness.bench.costmodel.count_macs of each INT8 file (needs tflite-runtime, absent from some train venvs)."""
    try:
        from harness.bench.costmodel import count_macs
        return {k: count_macs(v) for k, v in files.items() if k.endswith("int8")}
    except Exception as exc:  # noqa: BLE001 — the static counts above still hold
        return f"not computed here ({type(exc).__name__}); run harness.bench.costmodel.count_macs in the runtime venv"


def _need_qat_packages() -> None:
    """tfmot's QAT runs on tf-keras (Keras 2) only; say what to install instead of a deep ImportError."""
    try:
        import tensorflow_model_optimization  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"models/tcn/train.py needs tf-keras and tensorflow-model-optimization ({exc}): "
                         "pip install 'tf-keras==2.21.*' 'tensorflow-model-optimization==0.8.1'") from None


def _tfmot_version() -> str:
    import tensorflow_model_optimization as tfmot
    return tfmot.__version__


if __name__ == "__main__":
    sys.exit(main())
