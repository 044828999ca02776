"""Recipe of bwn_beat: a binary-weight 1D CNN (every conv and dense weight ±1 × a per-channel scale)
classifying single MIT-BIH beats into the 5 AAMI classes.

Training keeps latent float weights; the forward pass uses alpha_c · sign(w) (alpha_c = mean |w| of output
channel c) and the backward pass the straight-through estimator: the gradient of sign is taken as 1 where
|w| ≤ 1 and 0 elsewhere, and the latent weights are clipped to [-1, 1] after every step (BinaryConnect).
Batch norm after each binary layer is folded into the per-channel scale and the bias at export, so the
exported kernels are still ±(one value per output channel).

TFLM has no 1-bit kernels, so the board runs the model as an ordinary full-integer INT8 graph whose
weight tensors hold only -1 and +1, with per-output-channel scale = the binary layer's folded scale. The
converter maps ±alpha to ±127 with scale alpha/127; `binarize_int8_weights` rewrites those tensors in
place to ±1 with scale alpha (and requantizes each bias to scale input_scale · alpha), and
`binary_weight_check` reads the final file back and fails the recipe unless every weight is ±1.

Per protocol (inter-patient: train DS1, test DS2, the committed files; intra-patient: stratified random
beat split of DS1+DS2, for comparison with published figures): a full-precision twin of the same network
(the reference for the cost of binarization), the binary-weight network, its INT8 form. Run from the repo
root with the training venv:

    /work/venv-train/bin/python models/binary/train.py --mitdb ../shared/mitdb --out models/binary
    /work/venv-train/bin/python models/binary/train.py --smoke          # CI: bundled records, one epoch
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

NAME = "bwn_beat"
# The same window as cnn1d_beat: 2.08 s around the R peak at 90 Hz, so RR timing is visible.
SPEC = data.WindowSpec(before=374, after=374, channel=0, decimate=4, normalize="beat_zscore")
CLASSES = data.AAMI_CLASSES
# (filters, kernel) of the binary conv blocks (conv → batch norm → ReLU → max pool 2), then the dense layers.
CONVS = ((16, 7), (24, 5), (32, 5), (32, 3))
HIDDEN = 32
BN_EPS = 1e-3
LUT_CHECK_BEATS = 500


# --- The network -------------------------------------------------------------------------------------

def binary_layers(keras):
    """Keras layers whose kernels are alpha_c · sign(w) in the forward pass (straight-through backward)."""
    from keras import ops

    class ClipUnit(keras.constraints.Constraint):
        """Latent weights stay in [-1, 1]: beyond it the clipped STE gives no gradient to bring them back."""

        def __call__(self, w):
            return ops.clip(w, -1.0, 1.0)

    def binarize(w, reduce_axes):
        clipped = ops.clip(w, -1.0, 1.0)
        alpha = ops.mean(ops.abs(w), axis=reduce_axes, keepdims=True)
        binary = alpha * ops.where(w >= 0, 1.0, -1.0)
        # Forward: the binary kernel. Backward: d(clip(w))/dw, i.e. 1 inside [-1, 1], 0 outside.
        return clipped + ops.stop_gradient(binary - clipped)

    class BinaryConv1D(keras.layers.Layer):
        def __init__(self, filters, kernel_size, binary=True, **kwargs):
            super().__init__(**kwargs)
            self.filters, self.kernel_size, self.binary = filters, kernel_size, binary

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(self.kernel_size, input_shape[-1], self.filters),
                                          initializer="glorot_uniform", name="kernel",
                                          constraint=ClipUnit() if self.binary else None)

        def call(self, x):
            kernel = binarize(self.kernel, (0, 1)) if self.binary else self.kernel
            return ops.conv(x, kernel, padding="same")

    class BinaryDense(keras.layers.Layer):
        def __init__(self, units, binary=True, use_bias=False, **kwargs):
            super().__init__(**kwargs)
            self.units, self.binary, self.use_bias = units, binary, use_bias

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                          name="kernel", constraint=ClipUnit() if self.binary else None)
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias") if self.use_bias else None

        def call(self, x):
            kernel = binarize(self.kernel, (0,)) if self.binary else self.kernel
            y = ops.matmul(x, kernel)
            return y + self.bias if self.use_bias else y

    return BinaryConv1D, BinaryDense


def build_model(keras, binary: bool):
    """The training network; binary=False gives the full-precision twin (same layers, float kernels)."""
    BinaryConv1D, BinaryDense = binary_layers(keras)
    inputs = keras.Input(shape=(SPEC.length, 1), name="beat")
    x = inputs
    for i, (filters, kernel) in enumerate(CONVS, start=1):
        x = BinaryConv1D(filters, kernel, binary=binary, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPS, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling1D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = BinaryDense(HIDDEN, binary=binary, name="fc1")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPS, name="bn_fc1")(x)
    x = keras.layers.ReLU(name="relu_fc1")(x)
    x = BinaryDense(len(CLASSES), binary=binary, use_bias=True, name="logits")(x)
    outputs = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=NAME if binary else NAME + "_fp")


def build_export(keras):
    """Plain Keras layers (batch 1, what the board runs): Conv1D/Dense with the folded binary kernels."""
    inputs = keras.Input(shape=(SPEC.length, 1), batch_size=1, name="beat")
    x = inputs
    for i, (filters, kernel) in enumerate(CONVS, start=1):
        x = keras.layers.Conv1D(filters, kernel, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling1D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(HIDDEN, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(len(CLASSES), name="logits")(x)
    outputs = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=NAME)


def folded_weights(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (kernel, bias)} of the export network: alpha_c · sign(w) times the batch-norm scale.

    Batch norm y = gamma (z - mean) / sqrt(var + eps) + beta is per output channel, so folding it into
    a kernel whose channel c is ±alpha_c keeps it ±(alpha_c · |s_c|): still one magnitude per channel.
    """
    out = {}
    layers = {layer.name: layer for layer in model.layers}
    for name, bn_name, axes in [(f"conv{i}", f"bn{i}", (0, 1)) for i in range(1, len(CONVS) + 1)] + \
                               [("fc1", "bn_fc1", (0,)), ("logits", None, (0,))]:
        w = layers[name].kernel.numpy().astype(np.float64)
        alpha = np.abs(w).mean(axis=axes, keepdims=True)
        kernel = alpha * np.where(w >= 0, 1.0, -1.0)
        if bn_name:
            gamma, beta, mean, var = (v.numpy().astype(np.float64) for v in layers[bn_name].weights)
            s = gamma / np.sqrt(var + BN_EPS)
            kernel, bias = kernel * s, beta - mean * s
        else:
            bias = layers[name].bias.numpy().astype(np.float64)
        out[name] = (kernel.astype(np.float32), bias.astype(np.float32))
    return out


def count_weights() -> dict[str, int]:
    """Binary weights and per-channel scales (= output channels) of the network."""
    weights, channels, in_ch, length = 0, 0, 1, SPEC.length
    for filters, kernel in CONVS:
        weights += kernel * in_ch * filters
        channels += filters
        in_ch, length = filters, length // 2
    weights += length * in_ch * HIDDEN + HIDDEN * len(CLASSES)
    channels += HIDDEN + len(CLASSES)
    return {"binary_weights": weights, "output_channels": channels}


# --- INT8 weights holding ±1 -------------------------------------------------------------------------

def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def _weighted_ops(model_t, schema):
    """(subgraph, op name, filter tensor index, bias tensor index or -1) of every CONV_2D / FULLY_CONNECTED."""
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for g in range(model_t.SubgraphsLength()):
        graph = model_t.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model_t.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
            if name in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
                inputs = op.InputsAsNumpy()
                yield graph, name, int(inputs[0]), int(inputs[1]), int(inputs[2]) if len(inputs) > 2 else -1


def binarize_int8_weights(tflite: bytes) -> tuple[bytes, dict]:
    """Rewrite every ±127 INT8 weight tensor of a converted binary network to ±1 (scale × 127), in place.

    The converter quantizes a channel whose weights are all ±alpha to ±127 with scale alpha / 127 (it maps
    the channel's max |w| to 127). The same real weights are ±1 with scale alpha. The bias (int32, scale
    input_scale · weight_scale) is requantized to the new, 127× coarser scale: rounding moves it by at
    most half an accumulator step, the resolution the ±1 products have anyway. Patching the buffers in
    place keeps the converter's layout and alignment. Refuses a tensor holding anything but ±127.
    """
    schema = _schema()
    buf = bytearray(tflite)
    model_t = schema.Model.GetRootAs(buf, 0)
    max_bias_change = 0.0
    tensors = 0
    for graph, op, inp, flt, bias in _weighted_ops(model_t, schema):
        t = graph.Tensors(flt)
        q = model_t.Buffers(t.Buffer()).DataAsNumpy().view(np.int8)  # a view into buf: writes patch it
        values = set(np.unique(q).tolist())
        if not values <= {-127, 127}:
            raise RuntimeError(f"{op} weight tensor {t.Name().decode()} holds {sorted(values)[:8]}..., not ±127: "
                               "its channels are not binary")
        scale = t.Quantization().ScaleAsNumpy()
        q[:] = np.sign(q)
        scale *= 127.0
        if bias >= 0:
            b = graph.Tensors(bias)
            b_int = model_t.Buffers(b.Buffer()).DataAsNumpy().view("<i4")
            b_scale = b.Quantization().ScaleAsNumpy()
            in_scale = float(graph.Tensors(inp).Quantization().ScaleAsNumpy()[0])
            real = b_int.astype(np.float64) * b_scale
            new_scale = (np.float32(in_scale) * scale).astype(np.float32)
            new_int = np.round(real / new_scale)
            max_bias_change = max(max_bias_change, float(np.max(np.abs(new_int * new_scale - real) / new_scale)))
            b_int[:] = new_int.astype(np.int32)
            b_scale[:] = new_scale
        tensors += 1
    return bytes(buf), {"patched_weight_tensors": tensors,
                        "max_bias_rounding_in_accumulator_steps": round(max_bias_change, 4)}


def binary_weight_check(tflite: bytes) -> dict:
    """Read every conv / dense weight tensor of the final file back through the TFLite interpreter and
    count its values; raises unless all are -1 or +1."""
    interp = training.interpreter(tflite)
    interp.allocate_tensors()
    filters = set()
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
            filters.add(int(op["inputs"][1]))
    counts: dict[int, int] = {}
    n = 0
    for index in sorted(filters):
        values, freq = np.unique(interp.get_tensor(index), return_counts=True)
        for v, f in zip(values.tolist(), freq.tolist()):
            counts[v] = counts.get(v, 0) + f
        n += int(interp.get_tensor(index).size)
    if set(counts) - {-1, 1}:
        raise RuntimeError(f"weight tensors hold values other than ±1: {sorted(counts)}")
    return {"weight_tensors": len(filters), "weights": n, "value_counts": {str(k): v for k, v in sorted(counts.items())}}


# TFLM's own answer to 1-bit weights: LUT compression (tflite_micro's compress tool rewrites a tensor as
# 1-bit indices into a 2-entry table and inserts a DECODE op). Per-channel tables: the weights are
# per-channel quantized, and a per-tensor table silently gives wrong outputs in TFLM (checked by hand on
# this model: every output changed). Tried in a child process: tflite_micro's
# runtime next to TensorFlow in one process is not safe (see training.harness_figures).
_LUT_SCRIPT = """
import importlib, json, sys
import numpy as np
compress = importlib.import_module('tflite_micro.tensorflow.lite.micro.compression.compress')
from tflite_micro.tensorflow.lite.micro.compression import spec
from tflite_micro import runtime
from harness.bench.model import firmware_ops, open_interpreter
data = open(sys.argv[1], 'rb').read()
x = np.load(sys.argv[2])
ref = open_interpreter(data)
weights = [int(op['inputs'][1]) for op in ref._get_ops_details()
           if op['op_name'] in ('CONV_2D', 'FULLY_CONNECTED', 'DEPTHWISE_CONV_2D')]
text = 'tensors:\\n' + ''.join(f'  - subgraph: 0\\n    tensor: {w}\\n    compression:\\n      - lut:\\n'
                               f'          index_bitwidth: 1\\n          per_channel:\\n            axis: 0\\n'
                               for w in weights)
packed = bytes(compress.compress(data, spec.parse_yaml(text)))
report = {'compressed_tflite_bytes': len(packed), 'uncompressed_tflite_bytes': len(data)}
plain = runtime.Interpreter.from_bytes(data, arena_size=1 << 20)
small = runtime.Interpreter.from_bytes(packed, arena_size=1 << 20)
same = 0
for row in x:
    outs = []
    for interp in (plain, small):
        interp.set_input(row.reshape(1, -1, 1), 0)
        interp.invoke()
        outs.append(interp.get_output(0).copy())
    same += int(np.array_equal(*outs))
report['tflm_python_runs_it'] = True
report['beats_checked'] = int(len(x))
report['identical_int8_outputs'] = same
report['firmware_resolver_has_DECODE'] = 'DECODE' in firmware_ops()
try:
    open_interpreter(packed)
    report['tflite_runtime_loads_it'] = True
except Exception as exc:
    report['tflite_runtime_loads_it'] = False
    report['tflite_runtime_error'] = str(exc).splitlines()[0][:200]
print(json.dumps(report))
"""


def lut_compression_check(int8_path: Path, x_int8: np.ndarray, work: Path) -> dict:
    """Compress the ±1 weight tensors to 1-bit LUTs with tflite_micro's tool and compare TFLM's outputs
    with and without compression; also say whether the harness's reference and firmware could run it."""
    import subprocess

    beats = work / "lut_check_beats.npy"
    np.save(beats, x_int8)
    proc = subprocess.run([sys.executable, "-c", _LUT_SCRIPT, str(int8_path), str(beats)], capture_output=True,
                          text=True, cwd=training.REPO, timeout=600)
    beats.unlink()
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- Training and evaluation -------------------------------------------------------------------------

def fit(model, train, args, keras, weights):
    steps = args.epochs * int(np.ceil(len(train.y) / args.batch))
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model.fit(train.x[..., None], train.y, batch_size=args.batch, epochs=args.epochs,
                     class_weight=weights, shuffle=True, verbose=2)


def run_protocol(train, test, args, tf, keras, twin: bool) -> dict:
    """Full-precision twin (optional), binary-weight net, its float and INT8 (±1) exports, on one split."""
    weights = training.class_weights(train.y, len(CLASSES), args.weight_power)
    figures = {"train_records": list(train.names), "train_beats": train.counts(), "train_skipped_at_edges": train.skipped,
               "test_records": list(test.names), "test_beats": test.counts(), "test_skipped_at_edges": test.skipped,
               "class_weights": {CLASSES[k]: round(v, 3) for k, v in weights.items()}}
    x_test = test.x[..., None]
    if twin:
        tf.keras.utils.set_random_seed(args.seed)
        t = time.perf_counter()
        fp = build_model(keras, binary=False)
        hist = fit(fp, train, args, keras, weights)
        figures["full_precision"] = training.classification_metrics(
            test.y, fp.predict(x_test, verbose=0, batch_size=1024).argmax(1), CLASSES)
        figures["full_precision_fit_seconds_host_wall"] = round(time.perf_counter() - t, 1)
        figures["full_precision_final_train_loss"] = round(float(hist.history["loss"][-1]), 4)
        print("full precision :", training.summary(figures["full_precision"]))

    tf.keras.utils.set_random_seed(args.seed)
    t = time.perf_counter()
    model = build_model(keras, binary=True)
    hist = fit(model, train, args, keras, weights)
    figures["binary_fit_seconds_host_wall"] = round(time.perf_counter() - t, 1)
    figures["binary_final_train_loss"] = round(float(hist.history["loss"][-1]), 4)
    figures["binary_keras"] = training.classification_metrics(
        test.y, model.predict(x_test, verbose=0, batch_size=1024).argmax(1), CLASSES)
    print("binary (keras) :", training.summary(figures["binary_keras"]))

    export = build_export(keras)
    folded = folded_weights(model)
    for name, (kernel, bias) in folded.items():
        export.get_layer(name).set_weights([kernel, bias])
    rng = np.random.default_rng(args.seed)
    rep = train.x[rng.choice(len(train.x), size=min(500, len(train.x)), replace=False)]
    float_tflite = training.convert(export)
    converted = training.convert(export, representative=rep)
    int8_tflite, patch = binarize_int8_weights(converted)
    figures["binarize_int8"] = patch
    figures["binary_weight_check"] = binary_weight_check(int8_tflite)

    float_scores, float_timing = training.run_tflite(float_tflite, test.x)
    int8_scores, int8_timing = training.run_tflite(int8_tflite, test.x)
    conv_scores, _ = training.run_tflite(converted, test.x)
    figures["binary_float"] = training.classification_metrics(test.y, float_scores.argmax(1), CLASSES)
    figures["int8"] = training.classification_metrics(test.y, int8_scores.argmax(1), CLASSES)
    print("binary (tflite):", training.summary(figures["binary_float"]))
    print("binary INT8 ±1 :", training.summary(figures["int8"]))
    figures["int8_vs_binary_float_argmax_agreement"] = round(float((float_scores.argmax(1) == int8_scores.argmax(1)).mean()), 5)
    # The ±127 file straight from the converter, before the ±1 rewrite: what the rewrite's bias rounding costs.
    figures["int8_plus_minus_127_vs_plus_minus_1_argmax_agreement"] = round(
        float((conv_scores.argmax(1) == int8_scores.argmax(1)).mean()), 5)
    figures["host_timing_tflite_builtin_ref"] = {"binary_float": float_timing, "int8": int8_timing,
                                                 "source": "host wall time, tf.lite BUILTIN_REF, one beat per invoke"}
    figures["steps"] = training.step_costs(figures, [("int8_pp", "binary_float", "int8"),
                                                     ("binarization_pp", "full_precision", "binary_float"),
                                                     ("full_precision_to_int8_pp", "full_precision", "int8")])
    figures["sha256"] = training.sha256s(float=float_tflite, int8=int8_tflite)
    return {"figures": figures, "model": model, "float_tflite": float_tflite, "int8_tflite": int8_tflite}


def main(argv=None) -> int:
    ap = training.cli(__doc__, "binary", seed=7)
    ap.add_argument("--no-twin", action="store_true", help="skip the full-precision twin")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-power", type=float, default=0.5, help="class weight = (n_N / n_class) ** power")
    args = training.parse(ap, argv)
    protocols, out = args.protocol_list, args.out_dir
    if args.smoke:
        args.epochs = 1

    t0 = time.perf_counter()
    tf = training.deterministic(args.seed)
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(2)
    runs = {}
    for protocol in protocols:
        train, test = training.load_split(protocol, SPEC, args)
        print(f"[{protocol}] train {len(train.names)} records {train.counts()}; "
              f"test {len(test.names)} records {test.counts()}")
        # The smoke run checks the twin's code path once, on the first protocol only.
        twin = not args.no_twin and not (args.smoke and protocol != protocols[0])
        runs[protocol] = run_protocol(train, test, args, tf, keras, twin)
        runs[protocol]["test_x"] = test.x

    committed = runs[protocols[0]]
    float_tflite, int8_tflite = committed["float_tflite"], committed["int8_tflite"]
    (out / f"{NAME}_float.tflite").write_bytes(float_tflite)
    (out / f"{NAME}_int8.tflite").write_bytes(int8_tflite)
    harness = training.harness_figures(out / f"{NAME}_int8.tflite")
    io = training.int8_io(int8_tflite)
    lut = lut_compression_check(out / f"{NAME}_int8.tflite",
                                data.quantize(committed["test_x"][:LUT_CHECK_BEATS], io["input_scale"],
                                              io["input_zero_point"]), out)
    print("1-bit LUT compression:", lut)
    counted = count_weights()
    bits_bytes = int(np.ceil(counted["binary_weights"] / 8))
    total_seconds = time.perf_counter() - t0
    metrics = {
        "model": NAME,
        "smoke": bool(args.smoke),
        "written_files_from_protocol": protocols[0],
        "window": training.window_dict(SPEC),
        "classes": list(CLASSES),
        "architecture": {"convs": [list(c) for c in CONVS], "hidden": HIDDEN, "bn_eps": BN_EPS},
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "lr_schedule": "cosine to 5 %",
        "seed": args.seed, "weight_power": args.weight_power,
        "params_trainable": int(sum(int(np.prod(w.shape)) for w in committed["model"].trainable_weights)),
        **counted,
        "sizes_bytes": {
            "int8_tflite": len(int8_tflite), "float_tflite": len(float_tflite),
            "packed_weight_bits": bits_bytes,
            "packed_float32_scales": 4 * counted["output_channels"],
            "packed_int32_biases": 4 * counted["output_channels"],
            "packed_total": bits_bytes + 8 * counted["output_channels"],
            "packed_note": "1 bit per weight + one float32 scale and one int32 bias per output channel; "
                           "a size on paper: no TFLM kernel runs this form",
        },
        "tflm_lut_compression_1bit": lut,
        "macs": harness["macs"], "macs_source": harness["macs_source"],
        "arena_used_bytes": harness["arena_used_bytes"], "arena_source": harness["arena_source"],
        "sha256": committed["figures"]["sha256"],
        "ops_int8": training.op_list(int8_tflite), "ops_float": training.op_list(float_tflite),
        "int8_io": io,
        "protocols": {training.PROTOCOL_NAMES[p]: runs[p]["figures"] for p in protocols},
        "total_seconds_host_wall": round(total_seconds, 1),
        "versions": training.versions(tf, keras),
    }
    training.write_metrics(out, metrics)
    print(f"wrote {out}/{NAME}_float.tflite ({len(float_tflite)} B), {NAME}_int8.tflite ({len(int8_tflite)} B, "
          f"{bits_bytes + 8 * counted['output_channels']} B packed), metrics.json in {total_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
