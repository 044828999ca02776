"""Mismatch localisation: which op of the model first computed something different on the device.

Given the model, one input and the board's DUMP of that input (every intermediate tensor, in execution
order), the host reference runs the same input with all tensors preserved (tflite-runtime BUILTIN_REF,
`experimental_preserve_all_tensors=True`) and the tensors are compared in op order. The first op whose
output differs is named with what a kernel developer needs: op index and type, input/output shapes,
quantization (scale, zero point), max |diff| and how many values differ.

Geometry flags point at known optimized-kernel pitfalls of that op (ESP-NN FULLY_CONNECTED with an
output channel count that is not a multiple of 8 on the ESP32-S3; asymmetric SAME padding in CONV_2D and
DEPTHWISE_CONV_2D). They are hints for where to look, not a diagnosis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .model import _interpreter_module, _schema, verify_flatbuffer
from .protocol import DUMP_INPUT_OP, DumpedTensor

REFERENCE = "tflite-ref"
_PADDING_SAME = 0  # tflite schema Padding enum


@dataclass
class Divergence:
    """The first op whose output differs between device and reference."""

    op_index: int
    op: str
    tensor_index: int
    input_shapes: list[list[int]]
    output_shape: list[int]
    input_quant: dict | None  # {"scale", "zero_point"} of the op's first (activation) input
    output_quant: dict | None
    max_abs_diff: float
    values_differ: int
    values: int
    hints: list[str] = field(default_factory=list)

    def line(self) -> str:
        """`op #3 CONV_2D (in [1,1,62,8] out [1,1,62,16], out scale 0.0235 zp -128: 17/992 values differ, ...)`"""
        shapes = ", ".join(_shape(s) for s in self.input_shapes)
        quant = ""
        if self.output_quant:
            quant = f", out scale {self.output_quant['scale']:.6g} zp {self.output_quant['zero_point']}"
        text = (f"op #{self.op_index} {self.op} (in {shapes} out {_shape(self.output_shape)}{quant}: "
                f"{self.values_differ}/{self.values} values differ, max |diff| {_num(self.max_abs_diff)})")
        if self.hints:
            text += " hint (known optimized-kernel pitfall, not a diagnosis): " + "; ".join(self.hints)
        return text


@dataclass
class Localisation:
    reference: str
    tensors_compared: int = 0
    first: Divergence | None = None
    note: str = ""  # e.g. "the input itself differs" or "no tensor differs"

    @property
    def summary(self) -> str:
        if self.first is not None:
            return f"first diverging {self.first.line()}"
        return self.note or "no intermediate tensor differs"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["summary"] = self.summary
        return out


def localise(model_data: bytes, input: bytes, dump: list[DumpedTensor], *,  # noqa: A002 - the model input
             chip: str | None = None) -> Localisation:
    """Compare the device's dump with the host reference run on the same input, in op order."""
    host = _HostRun(model_data, input)
    result = Localisation(reference=REFERENCE)
    for tensor in sorted(dump, key=lambda t: t.index):
        expected = host.tensor(tensor.tensor_index)
        if expected is None:
            result.note = f"the device dumped tensor {tensor.tensor_index}, which the model does not have"
            return result
        result.tensors_compared += 1
        got = _as_array(tensor, expected)
        if got is not None and np.array_equal(got, expected):
            continue
        if tensor.op_index == DUMP_INPUT_OP:
            result.note = "the input tensor on the device differs from the one sent (link or firmware input copy)"
            return result
        result.first = host.divergence(tensor.op_index, tensor.tensor_index, got, expected, chip)
        return result
    if not dump:
        result.note = "the device dumped no tensors"
    else:
        result.note = (f"all {result.tensors_compared} dumped tensors match {REFERENCE}: the difference arose "
                       "after the interpreter (output copy, link) or does not reproduce")
    return result


def geometry_hints(op: str, input_shapes: list[list[int]], options, chip: str | None) -> list[str]:
    """Known optimized-kernel pitfalls for this op's geometry (hints, not findings)."""
    hints = []
    if op == "FULLY_CONNECTED" and len(input_shapes) > 1 and input_shapes[1]:
        channels = int(input_shapes[1][0])
        if channels % 8 and (chip is None or chip.lower().replace("-", "") == "esp32s3"):
            hints.append(f"FULLY_CONNECTED with {channels} output channels (not a multiple of 8) takes a "
                         "special path in ESP-NN's ESP32-S3 kernels")
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D") and options is not None and len(input_shapes) > 1:
        if getattr(options, "padding", None) == _PADDING_SAME and len(input_shapes[0]) == 4:
            _, h, w, _ = input_shapes[0]
            kh, kw = input_shapes[1][1], input_shapes[1][2]
            odd = []
            for name, size, k, stride, dil in (("H", h, kh, options.strideH, options.dilationHFactor),
                                               ("W", w, kw, options.strideW, options.dilationWFactor)):
                if _total_same_padding(int(size), int(k), int(stride or 1), int(dil or 1)) % 2:
                    odd.append(name)
            if odd:
                hints.append(f"{op} with asymmetric SAME padding along {'/'.join(odd)} (one more row/column "
                             "after than before), which optimized kernels have handled differently")
    return hints


def _total_same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    out = -(-size // stride)
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class _HostRun:
    """The reference interpreter after one invoke on the input, every tensor kept."""

    def __init__(self, model_data: bytes, input: bytes):  # noqa: A002
        verify_flatbuffer(model_data, "model")  # tflite-runtime crashes on a corrupt buffer
        interpreter_cls, resolver = _interpreter_module()
        interp = interpreter_cls(model_content=model_data, experimental_op_resolver_type=resolver.BUILTIN_REF,
                                 experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        x = np.frombuffer(bytes(input), dtype=detail["dtype"]).reshape(detail["shape"])
        interp.set_tensor(detail["index"], x)
        interp.invoke()
        self.interp = interp
        self.details = {int(t["index"]): t for t in interp.get_tensor_details()}
        self.ops = {int(op["index"]): op for op in interp._get_ops_details()}  # noqa: SLF001
        schema = _schema()
        self.graph = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_data, 0)).subgraphs[0]

    def tensor(self, index: int) -> np.ndarray | None:
        if index not in self.details:
            return None
        try:
            return np.array(self.interp.get_tensor(index))
        except ValueError:  # a tensor without data (optional input)
            return None

    def _quant(self, index: int) -> dict | None:
        scale, zero_point = self.details[index]["quantization"]
        return {"scale": float(scale), "zero_point": int(zero_point)} if scale else None

    def divergence(self, op_index: int, tensor_index: int, got: np.ndarray | None, expected: np.ndarray,
                   chip: str | None) -> Divergence:
        op = self.ops.get(op_index, {"op_name": "?", "inputs": []})
        inputs = [int(i) for i in op["inputs"] if i >= 0]
        shapes = [[int(d) for d in self.details[i]["shape"]] for i in inputs]
        if got is None:  # wrong size: nothing to compare element-wise
            max_diff, differ = float("nan"), expected.size
        else:
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            max_diff, differ = float(diff.max()), int(np.count_nonzero(diff))
        options = None
        operators = self.graph.operators or []
        if 0 <= op_index < len(operators):
            options = operators[op_index].builtinOptions
        name = str(op["op_name"])
        return Divergence(op_index=op_index, op=name, tensor_index=tensor_index, input_shapes=shapes,
                          output_shape=[int(d) for d in expected.shape],
                          input_quant=self._quant(inputs[0]) if inputs else None,
                          output_quant=self._quant(tensor_index), max_abs_diff=max_diff, values_differ=differ,
                          values=int(expected.size), hints=geometry_hints(name, shapes, options, chip))


def _as_array(tensor: DumpedTensor, expected: np.ndarray) -> np.ndarray | None:
    """The device's bytes as the reference tensor's dtype and shape, or None when the sizes differ."""
    if len(tensor.data) != expected.nbytes:
        return None
    return np.frombuffer(tensor.data, dtype=expected.dtype).reshape(expected.shape)


def _shape(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _num(value: float) -> str:
    return "?" if value != value else f"{value:g}"  # NaN: sizes differed
