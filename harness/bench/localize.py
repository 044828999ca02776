"""Mismatch localisation: which op of the model first computed something different on the device.

Given the model, one input and the board's DUMP of that input (every intermediate tensor, in execution
order), the run's host reference (`--reference`: tflite-ref, tflm or litert) computes the same input and
the tensors are compared in op order. The first op whose output differs is named with what a kernel
developer needs: op index and type, input/output shapes, quantization (scale, zero point), max |diff| and
how many values differ.

The host must really keep every intermediate tensor. Preserve-all modes are not trusted for that:
tflite-runtime 2.14's `experimental_preserve_all_tensors=True` returns stale data for STRIDED_SLICE
outputs (tcn_beat), which made localisation blame a correct device op. Instead every op output is declared
an output of a copy of the model, and an interpreter must keep its outputs; tests/test_localize.py checks
this copy against models cut off after each op, for every shipped model and every reference.

Geometry flags point at known optimized-kernel pitfalls of that op (ESP-NN FULLY_CONNECTED with an
output channel count that is not a multiple of 8 on the ESP32-S3; asymmetric SAME padding in CONV_2D and
DEPTHWISE_CONV_2D). They are hints for where to look, not a diagnosis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from .flatbuf import schema as _schema
from .flatbuf import verify_flatbuffer
from .model import open_interpreter
from ..link.protocol import DUMP_INPUT_OP, DumpedTensor

REFERENCE = "tflite-ref"  # the default; localise() compares with the run's reference
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
             chip: str | None = None, reference: str = REFERENCE) -> Localisation:
    """Compare the device's dump with the host reference run on the same input, in op order."""
    host = _HostRun(model_data, input, reference)
    result = Localisation(reference=reference)
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
        result.note = (f"all {result.tensors_compared} dumped tensors match {reference}: the difference arose "
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


def kept_outputs_model(model_data: bytes) -> tuple[bytes, list[int]]:
    """A copy of the model whose outputs are every op's outputs, in execution order (so an interpreter
    must keep each of them), and that list of tensor indices."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_data, 0))
    graph = model.subgraphs[0]
    inputs = {int(i) for i in graph.inputs}
    outputs: list[int] = []
    for op in graph.operators or []:
        for t in op.outputs if op.outputs is not None else []:
            if t >= 0 and int(t) not in inputs and int(t) not in outputs:
                outputs.append(int(t))
    graph.outputs = outputs
    builder = flatbuffers.Builder(len(model_data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), outputs


def run_kept(model_data: bytes, x: np.ndarray, reference: str = REFERENCE) -> dict[int, np.ndarray]:
    """tensor index → value of every op output of one invoke of `reference` on input `x`."""
    kept, outputs = kept_outputs_model(model_data)
    if reference == "tflm":
        from tflite_micro import runtime

        # Every output lives to the end of the invoke: room for all of them (at 8 bytes an element) on top of
        # the usual plan, and generous, since TFLM crashes rather than fails on a too-small arena.
        schema = _schema()
        graph = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(kept, 0)).subgraphs[0]
        total = sum(int(np.prod(t.shape)) if t.shape is not None else 1 for t in graph.tensors or [])
        interp = runtime.Interpreter.from_bytes(kept, arena_size=max(1 << 20, 16 * total + (1 << 18)))
        interp.set_input(x, 0)
        interp.invoke()
        return {t: np.array(interp.get_output(i)) for i, t in enumerate(outputs)}
    if reference == "litert":
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise ConfigError("reference 'litert' needs the ai-edge-litert package, which is not installed",
                              "pip install ai-edge-litert, or use --reference tflite-ref") from None
        interp = Interpreter(model_content=kept, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    elif reference == "tflite-ref":
        interp = open_interpreter(kept, "model")
    else:
        raise ConfigError(f"unknown reference '{reference}'", "use tflite-ref, tflm or litert")
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return {int(d["index"]): np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()}


class _HostRun:
    """The reference's every tensor after one invoke on the input; names, shapes and quantization from
    tflite-runtime's view of the unchanged model."""

    def __init__(self, model_data: bytes, input: bytes, reference: str = REFERENCE):  # noqa: A002
        verify_flatbuffer(model_data, "model")  # the C++ interpreters crash on a corrupt buffer
        meta = open_interpreter(model_data, "model")
        meta.allocate_tensors()
        self.details = {int(t["index"]): t for t in meta.get_tensor_details()}
        self.ops = {int(op["index"]): op for op in meta._get_ops_details()}  # noqa: SLF001
        detail = meta.get_input_details()[0]
        x = np.frombuffer(bytes(input), dtype=detail["dtype"]).reshape(detail["shape"])
        self.values = {int(detail["index"]): x, **run_kept(model_data, x, reference)}
        schema = _schema()
        self.graph = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_data, 0)).subgraphs[0]

    def tensor(self, index: int) -> np.ndarray | None:
        """The tensor's value, or None for a tensor that is neither the input nor an op output."""
        value = self.values.get(index)
        return None if value is None else value.reshape(self.details[index]["shape"])

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
