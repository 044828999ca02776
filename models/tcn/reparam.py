"""The TCN of tcn_beat and its structural re-parametrisation into a strided CNN (tf-keras, for tfmot QAT).

The TCN is non-causal: a stem convolution, then residual blocks whose kernel-3 convolutions are dilated
1, 2, 4 ... on a 665-sample window, and a 1x1 head, giving 5 class logits at every position. Only the
centre position (the annotated beat) is trained and used.

The centre output depends only on the centre's receptive field, and the values a dilated layer needs
there lie on a grid whose spacing is that layer's dilation. So, with the same weights:

- crop the input to the receptive field (STRIDED_SLICE);
- a kernel-3 convolution with dilation d evaluated only where the next layer (dilation 2d) reads it is a
  plain kernel-3 convolution with stride 2 and no padding over the grid of spacing d;
- the residual branch keeps every second grid point starting at 1 (STRIDED_SLICE with step 2);
- the last block leaves exactly one position: the centre.

Both graphs compute the same numbers for the centre (no zero padding is ever inside the receptive field),
and after QAT they carry the same quantization ranges, so their INT8 centre outputs are identical.
Conv1D is expressed as Conv2D over [1, length] because tfmot's QAT registry knows Conv2D, not Conv1D.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

LENGTH = 665
CENTRE = LENGTH // 2            # 332: the R peak falls in block 332 of before=after=665, decimate 2
FILTERS = 16
KERNEL = 3
DILATIONS = (2, 4, 8, 16, 32, 64, 128)   # residual blocks after the stem (dilation 1)
CLASSES = 5
# Receptive field of the centre: 1 + (KERNEL - 1) * (1 + sum of block dilations) = 511 samples.
HALF_RF = (KERNEL - 1) // 2 * (1 + sum(DILATIONS))
RF = 2 * HALF_RF + 1


def _keras():
    import tf_keras

    return tf_keras


def build_tcn(batch_size=None):
    """The sequence model: in the window [B, 1, 665, 1], out logits at every position [B, 1, 665, 5]."""
    keras = _keras()
    inputs = keras.Input(shape=(1, LENGTH, 1), batch_size=batch_size, name="window")
    x = keras.layers.Conv2D(FILTERS, (1, KERNEL), padding="same", activation="relu", name="stem")(inputs)
    for d in DILATIONS:
        y = keras.layers.Conv2D(FILTERS, (1, KERNEL), dilation_rate=(1, d), padding="same", activation="relu",
                                name=f"tcn_d{d}")(x)
        x = keras.layers.Add(name=f"res_d{d}")([x, y])
    outputs = keras.layers.Conv2D(CLASSES, (1, 1), name="head")(x)
    return keras.Model(inputs, outputs, name="tcn_beat_sequence")


def slice_layer():
    """A Keras layer for x[:, :, start:stop:step, :], exported as STRIDED_SLICE."""
    keras = _keras()

    class TimeSlice(keras.layers.Layer):
        def __init__(self, start, stop, step=1, **kwargs):
            super().__init__(**kwargs)
            self.start, self.stop, self.step = int(start), int(stop), int(step)

        def call(self, x):
            return x[:, :, self.start:self.stop:self.step, :]

        def get_config(self):
            return {**super().get_config(), "start": self.start, "stop": self.stop, "step": self.step}

    return TimeSlice


def build_strided(batch_size=None):
    """The centre-only CNN: same layer names and weights as build_tcn, out [B, 1, 1, 5]."""
    keras = _keras()
    TimeSlice = slice_layer()
    inputs = keras.Input(shape=(1, LENGTH, 1), batch_size=batch_size, name="window")
    x = TimeSlice(CENTRE - HALF_RF, CENTRE + HALF_RF + 1, name="crop_rf")(inputs)      # 511 samples
    x = keras.layers.Conv2D(FILTERS, (1, KERNEL), strides=(1, 2), padding="valid", activation="relu",
                            name="stem")(x)
    for d in DILATIONS:
        n = int(x.shape[2])
        y = keras.layers.Conv2D(FILTERS, (1, KERNEL), strides=(1, 2), padding="valid", activation="relu",
                                name=f"tcn_d{d}")(x)
        skip = TimeSlice(1, n - 1, 2, name=f"skip_d{d}")(x)
        x = keras.layers.Add(name=f"res_d{d}")([skip, y])
    outputs = keras.layers.Conv2D(CLASSES, (1, 1), name="head")(x)
    return keras.Model(inputs, outputs, name="tcn_beat_strided")


def counts(kind: str) -> dict:
    """Kernel applications (output positions x output channels of every conv) and MACs, from the layer
    shapes of one inference: 'tcn' computes every position, 'strided' only what the centre needs."""
    layers = [("stem", 1, FILTERS)] + [(f"tcn_d{d}", FILTERS, FILTERS) for d in DILATIONS] + [("head", FILTERS, CLASSES)]
    positions = []
    if kind == "tcn":
        positions = [LENGTH] * len(layers)
    else:
        n = RF
        for _ in layers[:-1]:
            n = (n - KERNEL) // 2 + 1
            positions.append(n)
        positions.append(1)
    applications = macs = 0
    per_layer = {}
    for (name, cin, cout), p in zip(layers, positions):
        k = 1 if name == "head" else KERNEL
        per_layer[name] = {"positions": p, "kernel_applications": p * cout, "macs": p * cout * k * cin}
        applications += p * cout
        macs += p * cout * k * cin
    return {"kernel_applications": applications, "macs": macs, "per_layer": per_layer}


# --- QAT plumbing (tensorflow-model-optimization on tf-keras) ----------------------------------------

def quantize(model):
    """tfmot QAT wrapper of a float model; the slices carry no quantizer (they keep their input's scale)."""
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras
    TimeSlice = None
    for layer in model.layers:
        if type(layer).__name__ == "TimeSlice":
            TimeSlice = type(layer)

    class NoOpQuantizeConfig(q.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    def annotate(layer):
        if TimeSlice is not None and isinstance(layer, TimeSlice):
            return q.quantize_annotate_layer(layer, quantize_config=NoOpQuantizeConfig())
        return q.quantize_annotate_layer(layer) if not isinstance(layer, _keras().layers.InputLayer) else layer

    annotated = _keras().models.clone_model(model, clone_function=annotate)
    scope = {"NoOpQuantizeConfig": NoOpQuantizeConfig}
    if TimeSlice is not None:
        scope["TimeSlice"] = TimeSlice
    with q.quantize_scope(scope):
        return q.quantize_apply(annotated)


def copy_weights(src, dst) -> int:
    """Copy every weight (kernels, biases, QAT ranges) from src to dst layer by layer name; returns the
    number of layers copied. Layers only dst has (the slices) have no weights to copy."""
    by_name = {_base(layer.name): layer for layer in dst.layers}
    copied = 0
    for layer in src.layers:
        if not layer.weights:
            continue
        target = by_name[_base(layer.name)]
        target.set_weights(layer.get_weights())
        copied += 1
    return copied


def float_weights_from_qat(qat, float_model) -> None:
    """The trained float kernels and biases inside the QAT wrappers → a plain float model."""
    # Inside a QuantizeWrapper, layer.kernel is the fake-quantized tensor of the last call; the float
    # variables are the wrapper's weights named "<layer>/kernel" and "<layer>/bias".
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is None or not isinstance(inner, _keras().layers.Conv2D):
            continue
        found = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights
                 if w.name.split("/")[-2:-1] == [inner.name] or w.name.startswith(inner.name + "/")}
        float_model.get_layer(inner.name).set_weights([found["kernel"], found["bias"]])


def _base(name: str) -> str:
    # Keras numbers a second "quantize_layer" in one session "quantize_layer_1".
    return "quantize_layer" if name.startswith("quantize_layer") else name


def centre_logits(outputs: np.ndarray) -> np.ndarray:
    """[B, 1, L, 5] sequence outputs or [B, 1, 1, 5] strided outputs → [B, 5] centre logits."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 4 and outputs.shape[2] == LENGTH:
        return outputs[:, 0, CENTRE, :]
    return outputs.reshape(len(outputs), -1)
