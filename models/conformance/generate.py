"""Kernel conformance models: small INT8 graphs whose shapes probe the optimized-kernel bug classes a
bit-exact bench exists to catch (from the esp-nn and esp-tflite-micro issue trackers).

Written straight as TFLite flatbuffers with the schema's object API (no TensorFlow, no converter), from
fixed numpy seeds, so the bytes depend only on this file: `python models/conformance/generate.py` rewrites
models/conformance/*.tflite, and tests/test_conformance.py checks that regenerating gives identical
bytes. Each model is one input, one output, INT8 throughout; the registry (models/registry.yaml, task
`conformance`) runs them on seeded random INT8 inputs and judges bit-exactness alone.

| model | probes |
|---|---|
| conf_fc_odd_per_tensor | FULLY_CONNECTED chain 17→15→9→7→5→3→2→1→5: widths not multiples of 8 (the ESP32-S3 kernel needs multiples of 8 and its wrapper does not check), per-tensor weight scale |
| conf_fc_odd_per_channel | the same chain with per-channel weight scales (per-channel FC gave wrong outputs) |
| conf_dwconv_same_odd | DEPTHWISE_CONV_2D with asymmetric SAME padding on odd sizes (9×13): 4×4 stride 1 (pad 1/2) with depth multiplier 2, then 2×2 stride 2 (pad 0/1) (scratch sizing, last row dropped) |
| conf_conv_saturate | CONV_2D whose outputs saturate at −128 and 127 (S3 conv clamping to −128), odd width, SAME padding |
| conf_pool_softmax_odd | MAX_POOL_2D 3×3/2 and AVERAGE_POOL_2D 2×2 SAME on odd sizes, then SOFTMAX over rows of 5 |
| conf_add_mul_broadcast | ADD with a per-channel constant [1,1,1,3] and MUL with a per-row constant [1,5,1,1]: broadcasting with different scales and zero points on each side |
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flatbuffers
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run as a script from anywhere in the repository

from harness.bench.model import _schema  # noqa: E402 - the schema module tflite-micro ships

S = _schema()
INT8, INT32 = S.TensorType.INT8, S.TensorType.INT32
SAME, VALID = S.Padding.SAME, S.Padding.VALID
# std of a uniform int8 value: what a seeded random input (and a random weight) spreads over.
_U8_STD = 74.0


class Graph:
    """Builds one subgraph: tensors, constant buffers and operators, in execution order."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.tensors: list = []
        self.buffers: list = [S.BufferT()]  # buffer 0: the empty sentinel every TFLite model starts with
        self.ops: list = []
        self.codes: list[tuple[int, int]] = []

    # -- tensors ------------------------------------------------------------------------------------
    def tensor(self, name: str, shape, dtype=INT8, scale=None, zero_point=None, data: np.ndarray | None = None,
               axis: int = 0) -> int:
        t = S.TensorT()
        t.name = name.encode()
        t.shape = list(int(d) for d in shape)
        t.type = dtype
        t.buffer = 0
        if data is not None:
            buf = S.BufferT()
            buf.data = list(np.ascontiguousarray(data).tobytes())
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zero_point if zero_point is not None else 0)]
            if len(q.zeroPoint) == 1 and len(q.scale) > 1:
                q.zeroPoint = q.zeroPoint * len(q.scale)
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def act(self, name: str, shape, scale: float, zero_point: int) -> int:
        return self.tensor(name, shape, INT8, scale, zero_point)

    def weights(self, name: str, shape, per_channel_axis: int | None, channels: int):
        """Symmetric INT8 weights (zero point 0, values in [-127, 127]) and their scale(s)."""
        w = self.rng.integers(-127, 128, size=shape, dtype=np.int8)
        if per_channel_axis is None:
            scale = np.array([float(self.rng.uniform(0.002, 0.02))])
            axis = 0
        else:
            scale = self.rng.uniform(0.002, 0.02, size=channels)
            axis = per_channel_axis
        return w, scale, axis

    def bias(self, name: str, in_scale: float, w_scale: np.ndarray, channels: int) -> int:
        scale = in_scale * np.broadcast_to(w_scale, (channels,))
        b = self.rng.integers(-2000, 2001, size=channels, dtype=np.int32)
        return self.tensor(name, [channels], INT32, scale, np.zeros(channels, dtype=np.int64), b)

    # -- ops ----------------------------------------------------------------------------------------
    def op(self, builtin: int, version: int, inputs: list[int], outputs: list[int], options_type: int = 0,
           options=None) -> None:
        key = (builtin, version)
        if key not in self.codes:
            self.codes.append(key)
        o = S.OperatorT()
        o.opcodeIndex = self.codes.index(key)
        o.inputs = list(inputs)
        o.outputs = list(outputs)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.ops.append(o)

    def model(self, description: str, inputs: list[int], outputs: list[int]) -> bytes:
        sub = S.SubGraphT()
        sub.tensors, sub.operators, sub.inputs, sub.outputs = self.tensors, self.ops, inputs, outputs
        sub.name = b"main"
        m = S.ModelT()
        m.version = 3
        m.description = description.encode()
        m.subgraphs = [sub]
        m.buffers = self.buffers
        codes = []
        for builtin, version in self.codes:
            c = S.OperatorCodeT()
            c.builtinCode = builtin
            c.deprecatedBuiltinCode = min(builtin, S.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            c.version = version
            codes.append(c)
        m.operatorCodes = codes
        builder = flatbuffers.Builder(4096)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _out_scale(in_scale: float, w_scale, fan_in: int, spread: float = 2.5) -> float:
    """Output scale so that a layer fed uniform INT8 inputs spans most of INT8 without clipping much:
    `spread` standard deviations of the accumulator map to 128 steps (smaller `spread` saturates)."""
    std = in_scale * float(np.mean(w_scale)) * np.sqrt(fan_in) * _U8_STD * 73.0
    return spread * std / 128.0


# ---------------------------------------------------------------------------------------------------
# The models

FC_WIDTHS = (17, 15, 9, 7, 5, 3, 2, 1, 5)


def fc_chain(per_channel: bool) -> bytes:
    g = Graph(seed=11 if per_channel else 10)
    scale, zp = 0.05, -3
    x = g.act("input", [1, FC_WIDTHS[0]], scale, zp)
    first = x
    for i, (n_in, n_out) in enumerate(zip(FC_WIDTHS, FC_WIDTHS[1:])):
        w, w_scale, axis = g.weights(f"fc{i}/w", [n_out, n_in], 0 if per_channel else None, n_out)
        wt = g.tensor(f"fc{i}/weights", [n_out, n_in], INT8, w_scale, 0, w, axis)
        b = g.bias(f"fc{i}/bias", scale, w_scale, n_out)
        out_scale = _out_scale(scale, w_scale, n_in)
        out_zp = int(g.rng.integers(-20, 21))
        y = g.act(f"fc{i}/out", [1, n_out], out_scale, out_zp)
        opts = S.FullyConnectedOptionsT()
        opts.fusedActivationFunction = S.ActivationFunctionType.NONE
        g.op(S.BuiltinOperator.FULLY_CONNECTED, 4, [x, wt, b], [y], S.BuiltinOptions.FullyConnectedOptions, opts)
        x, scale = y, out_scale
    kind = "per-channel" if per_channel else "per-tensor"
    return g.model(f"hil-bench conformance: FULLY_CONNECTED widths {'-'.join(map(str, FC_WIDTHS))}, {kind}",
                   [first], [x])


def dwconv_same_odd() -> bytes:
    g = Graph(seed=20)
    h, w, c = 9, 13, 3
    scale, zp = 0.04, 5
    x = g.act("input", [1, h, w, c], scale, zp)
    # 4x4 kernel, stride 1, SAME: total padding 3 → 1 before, 2 after (asymmetric), depth multiplier 2.
    mult = 2
    w1, s1, a1 = g.weights("dw1/w", [1, 4, 4, c * mult], 3, c * mult)
    t1 = g.tensor("dw1/weights", [1, 4, 4, c * mult], INT8, s1, 0, w1, a1)
    b1 = g.bias("dw1/bias", scale, s1, c * mult)
    sc1 = _out_scale(scale, s1, 16)
    y1 = g.act("dw1/out", [1, h, w, c * mult], sc1, -7)
    o1 = S.DepthwiseConv2DOptionsT()
    o1.padding, o1.strideW, o1.strideH, o1.depthMultiplier = SAME, 1, 1, mult
    o1.dilationWFactor = o1.dilationHFactor = 1
    o1.fusedActivationFunction = S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.DEPTHWISE_CONV_2D, 3, [x, t1, b1], [y1], S.BuiltinOptions.DepthwiseConv2DOptions, o1)
    # 2×2, stride 2, SAME on 9×13 (odd): out 5×7, padding 0 before and 1 after in both dimensions.
    c2 = c * mult
    w2, s2, a2 = g.weights("dw2/w", [1, 2, 2, c2], 3, c2)
    t2 = g.tensor("dw2/weights", [1, 2, 2, c2], INT8, s2, 0, w2, a2)
    b2 = g.bias("dw2/bias", sc1, s2, c2)
    sc2 = _out_scale(sc1, s2, 4)
    y2 = g.act("dw2/out", [1, 5, 7, c2], sc2, 3)
    o2 = S.DepthwiseConv2DOptionsT()
    o2.padding, o2.strideW, o2.strideH, o2.depthMultiplier = SAME, 2, 2, 1
    o2.dilationWFactor = o2.dilationHFactor = 1
    o2.fusedActivationFunction = S.ActivationFunctionType.RELU
    g.op(S.BuiltinOperator.DEPTHWISE_CONV_2D, 3, [y1, t2, b2], [y2], S.BuiltinOptions.DepthwiseConv2DOptions, o2)
    return g.model("hil-bench conformance: DEPTHWISE_CONV_2D asymmetric SAME padding, odd sizes", [x], [y2])


def conv_saturate() -> bytes:
    g = Graph(seed=30)
    h, w, c, f = 5, 11, 3, 6
    scale, zp = 0.05, 0
    x = g.act("input", [1, h, w, c], scale, zp)
    wt, ws, axis = g.weights("conv/w", [f, 3, 3, c], 0, f)
    t = g.tensor("conv/weights", [f, 3, 3, c], INT8, ws, 0, wt, axis)
    # Large biases of both signs push whole channels into the rails: about half the outputs clamp.
    b = (g.rng.choice([-1, 1], size=f) * g.rng.integers(20_000, 60_000, size=f)).astype(np.int32)
    bt = g.tensor("conv/bias", [f], INT32, scale * ws, np.zeros(f, dtype=np.int64), b)
    out_scale = _out_scale(scale, ws, 9 * c, spread=0.6)
    y = g.act("conv/out", [1, h, w, f], out_scale, -10)
    o = S.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH = SAME, 1, 1
    o.dilationWFactor = o.dilationHFactor = 1
    o.fusedActivationFunction = S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.CONV_2D, 3, [x, t, bt], [y], S.BuiltinOptions.Conv2DOptions, o)
    return g.model("hil-bench conformance: CONV_2D saturating at -128 and 127", [x], [y])


def pool_softmax_odd() -> bytes:
    g = Graph(seed=40)
    scale, zp = 0.06, -9
    x = g.act("input", [1, 11, 13, 5], scale, zp)
    y1 = g.act("maxpool/out", [1, 5, 6, 5], scale, zp)  # 3×3 stride 2 VALID: (11-3)/2+1, (13-3)/2+1
    o1 = S.Pool2DOptionsT()
    o1.padding, o1.strideW, o1.strideH, o1.filterWidth, o1.filterHeight = VALID, 2, 2, 3, 3
    o1.fusedActivationFunction = S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.MAX_POOL_2D, 2, [x], [y1], S.BuiltinOptions.Pool2DOptions, o1)
    y2 = g.act("avgpool/out", [1, 5, 6, 5], scale, zp)  # 2×2 stride 1 SAME on odd height: pad 0/1
    o2 = S.Pool2DOptionsT()
    o2.padding, o2.strideW, o2.strideH, o2.filterWidth, o2.filterHeight = SAME, 1, 1, 2, 2
    o2.fusedActivationFunction = S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.AVERAGE_POOL_2D, 2, [y1], [y2], S.BuiltinOptions.Pool2DOptions, o2)
    # Softmax over rows of 5 (an odd length): 30 rows of the pooled 5×6×5 tensor.
    shape = g.tensor("reshape/shape", [2], INT32, data=np.array([30, 5], dtype=np.int32))
    y4 = g.act("reshape/out", [30, 5], scale, zp)
    o4 = S.ReshapeOptionsT()
    o4.newShape = [30, 5]
    g.op(S.BuiltinOperator.RESHAPE, 1, [y2, shape], [y4], S.BuiltinOptions.ReshapeOptions, o4)
    y5 = g.act("softmax/out", [30, 5], 1.0 / 256.0, -128)
    o5 = S.SoftmaxOptionsT()
    o5.beta = 1.0
    g.op(S.BuiltinOperator.SOFTMAX, 2, [y4], [y5], S.BuiltinOptions.SoftmaxOptions, o5)
    return g.model("hil-bench conformance: MAX_POOL_2D, AVERAGE_POOL_2D, SOFTMAX on odd sizes", [x], [y5])


def add_mul_broadcast() -> bytes:
    g = Graph(seed=50)
    scale, zp = 0.03, 4
    x = g.act("input", [1, 5, 7, 3], scale, zp)
    c1 = g.tensor("add/const", [1, 1, 1, 3], INT8, 0.02, -6, g.rng.integers(-128, 128, (1, 1, 1, 3), dtype=np.int8))
    y1 = g.act("add/out", [1, 5, 7, 3], 0.045, -2)
    o1 = S.AddOptionsT()
    o1.fusedActivationFunction = S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.ADD, 2, [x, c1], [y1], S.BuiltinOptions.AddOptions, o1)
    c2 = g.tensor("mul/const", [1, 5, 1, 1], INT8, 0.01, 3, g.rng.integers(-128, 128, (1, 5, 1, 1), dtype=np.int8))
    y2 = g.act("mul/out", [1, 5, 7, 3], 0.05, 1)
    o2 = S.MulOptionsT()
    o2.fusedActivationFunction = S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.MUL, 2, [y1, c2], [y2], S.BuiltinOptions.MulOptions, o2)
    return g.model("hil-bench conformance: ADD and MUL with broadcasting", [x], [y2])


MODELS = {
    "conf_fc_odd_per_tensor": lambda: fc_chain(per_channel=False),
    "conf_fc_odd_per_channel": lambda: fc_chain(per_channel=True),
    "conf_dwconv_same_odd": dwconv_same_odd,
    "conf_conv_saturate": conv_saturate,
    "conf_pool_softmax_odd": pool_softmax_odd,
    "conf_add_mul_broadcast": add_mul_broadcast,
}


def generate() -> dict[str, bytes]:
    """Every conformance model's bytes, by name (deterministic)."""
    return {name: build() for name, build in MODELS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the .tflite files (default: here)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in generate().items():
        (args.out / f"{name}.tflite").write_bytes(data)
        print(f"{name}.tflite: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
