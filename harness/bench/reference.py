"""Host interpreters that compute what the device should answer, byte for byte.

The bench compares every device output with one of these:

- `tflite-ref`: tflite-runtime with OpResolverType.BUILTIN_REF, the reference kernels, which give the
  same bytes as TFLM's reference kernels on conv, depthwise and fully-connected INT8 models. Batched,
  because it runs over all 109k MIT-BIH beats.
- `tflm`: the TFLM host interpreter (the tflite-micro package): the same kernels the firmware links,
  one beat at a time.
- `litert`: LiteRT (ai-edge-litert) with BUILTIN_REF, for Python versions tflite-runtime has no wheel
  for. Its FULLY_CONNECTED requantizes in float since TF 2.20 and can differ from TFLM by one LSB.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import numpy as np

from ..errors import ConfigError, ModelError
from .model import open_interpreter, verify_flatbuffer

REFERENCES = ("tflite-ref", "tflm", "litert")
LITERT_NOTE = "LiteRT REF FULLY_CONNECTED differs from TFLM by ±1 LSB (TF ≥ 2.20 float requant)"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Reference:
    """A host interpreter for one model: `run(int8 inputs) → int8 outputs`, one row per beat."""

    name: str = ""
    version: str = ""
    kernels: str = ""
    note: str = ""
    input_shape: tuple[int, ...] = ()
    output_bytes: int = 0

    @property
    def input_bytes(self) -> int:
        return int(np.prod(self.input_shape))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """int8 [n, *input shape[1:]] or [n, input bytes] → int8 [n, output bytes]."""
        raise NotImplementedError

    def _beats(self, inputs: np.ndarray) -> np.ndarray:
        """The inputs as [n, *input shape[1:]], after checking type and size."""
        inputs = np.asarray(inputs)
        if inputs.dtype != np.int8:
            raise TypeError(f"{self.name}: inputs must be int8, got {inputs.dtype}")
        per_beat = int(np.prod(self.input_shape[1:]))
        if inputs.ndim < 2 or int(np.prod(inputs.shape[1:])) != per_beat:
            raise ModelError(f"{self.name}: inputs of shape {list(inputs.shape)} do not hold rows of the "
                             f"model's {per_beat} input values", "check the model's window against its "
                             "input tensor (one row per beat)", code="HIL115")
        return np.ascontiguousarray(inputs.reshape((len(inputs), *self.input_shape[1:])))


class TFLiteReference(Reference):
    """tflite-runtime (or LiteRT where it is missing) with the reference kernels, in batches."""

    name = "tflite-ref"
    kernels = "TFLite BUILTIN_REF"

    def __init__(self, model_data: bytes, *, batch: int = 512):
        self._data = model_data
        self._one = self._open()
        self._one.allocate_tensors()
        self.version, self.note = self._provenance()
        inp, out = self._one.get_input_details()[0], self._one.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.output_bytes = int(np.prod(out["shape"]))
        self._in_index, self._out_index = inp["index"], out["index"]
        self.batch = batch
        self._batched = None  # built on first use; False once batching proved unusable for this model

    def _open(self):
        return open_interpreter(self._data, "model")

    def _provenance(self) -> tuple[str, str]:
        module = type(self._one).__module__
        if module.startswith("ai_edge_litert"):
            return _version("ai-edge-litert"), LITERT_NOTE
        return _version("tflite-runtime"), ""

    def _batch_interpreter(self):
        """An interpreter resized to [batch, ...], or None when the graph has a fixed batch of 1 (e.g. a
        RESHAPE to [1, n]) and cannot be resized."""
        interpreter = self._open()
        try:
            interpreter.resize_tensor_input(self._in_index, [self.batch, *self.input_shape[1:]])
            interpreter.allocate_tensors()
            shape = interpreter.get_output_details()[0]["shape"]
        except (ValueError, RuntimeError):
            return None
        if int(shape[0]) != self.batch or int(np.prod(shape)) != self.batch * self.output_bytes:
            return None
        return interpreter

    def _run_one(self, beat: np.ndarray) -> np.ndarray:
        self._one.set_tensor(self._in_index, beat[None])
        self._one.invoke()
        return self._one.get_tensor(self._out_index).reshape(-1)

    def _run_batch(self, chunk: np.ndarray) -> np.ndarray:
        padded = np.zeros((self.batch, *chunk.shape[1:]), np.int8)  # the last chunk is padded to size
        padded[: len(chunk)] = chunk
        self._batched.set_tensor(self._in_index, padded)
        self._batched.invoke()
        return self._batched.get_tensor(self._out_index).reshape(self.batch, -1)[: len(chunk)]

    def run(self, inputs: np.ndarray) -> np.ndarray:
        beats = self._beats(inputs)
        out = np.empty((len(beats), self.output_bytes), np.int8)
        if self._batched is None and self.batch > 1 and len(beats) > 1:
            self._batched = self._batch_interpreter() or False
            if self._batched:
                # A graph that mixes rows of a batch would still resize: prove on real rows that it doesn't.
                probe = beats[:2]
                if not np.array_equal(self._run_batch(probe), np.stack([self._run_one(b) for b in probe])):
                    self._batched = False
        if self._batched and len(beats) > 1:
            for start in range(0, len(beats), self.batch):
                out[start:start + self.batch] = self._run_batch(beats[start:start + self.batch])
        else:
            for i, beat in enumerate(beats):
                out[i] = self._run_one(beat)
        return out

    @property
    def batched(self) -> bool:
        return bool(self._batched)


class LiteRTReference(TFLiteReference):
    """LiteRT's interpreter with BUILTIN_REF, asked for by name."""

    name = "litert"
    kernels = "LiteRT BUILTIN_REF"

    def __init__(self, model_data: bytes, *, batch: int = 512):
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise ConfigError("reference 'litert' needs the ai-edge-litert package, which is not installed",
                              "pip install ai-edge-litert, or use --reference tflite-ref") from None
        verify_flatbuffer(model_data, "model")
        self._litert = (Interpreter, OpResolverType)
        super().__init__(model_data, batch=batch)

    def _open(self):
        interpreter_cls, resolver = self._litert
        return interpreter_cls(model_content=self._data, experimental_op_resolver_type=resolver.BUILTIN_REF)


class TFLMReference(Reference):
    """The TFLM host interpreter: the reference kernels the firmware links, one beat per invoke."""

    name = "tflm"
    kernels = "TFLM reference"

    def __init__(self, model_data: bytes, *, arena_size: int = 1 << 20):
        verify_flatbuffer(model_data, "model")
        from tflite_micro import runtime

        self.version = _version("tflite-micro")
        try:
            self._interpreter = runtime.Interpreter.from_bytes(model_data, arena_size=arena_size)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"the TFLM host interpreter could not load the model ({exc})",
                             "check the arena size (--tflm-arena) and that the model's ops are builtin",
                             code="HIL112") from None
        inp, out = self._interpreter.get_input_details(0), self._interpreter.get_output_details(0)
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.output_bytes = int(np.prod(out["shape"]))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        beats = self._beats(inputs)
        out = np.empty((len(beats), self.output_bytes), np.int8)
        for i, beat in enumerate(beats):
            self._interpreter.set_input(beat[None], 0)
            self._interpreter.invoke()
            out[i] = self._interpreter.get_output(0).reshape(-1)
        return out


def check_available(name: str) -> None:
    """Raise the one-line error `make_reference(name, ...)` would raise for a missing package, before a run."""
    if name not in REFERENCES:
        raise ConfigError(f"unknown reference '{name}'", f"use one of: {', '.join(REFERENCES)}")
    package = {"tflite-ref": None, "tflm": "tflite_micro", "litert": "ai_edge_litert"}[name]
    if package is None:
        from .model import _interpreter_module

        _interpreter_module()  # tflite-runtime, or LiteRT where it has no wheel; HIL112 when neither
        return
    if importlib.util.find_spec(package) is None:
        pip = {"tflite_micro": "tflite-micro", "ai_edge_litert": "ai-edge-litert"}[package]
        raise ConfigError(f"reference '{name}' needs the {pip} package, which is not installed",
                          f"pip install {pip}, or use --reference tflite-ref")


def make_reference(name: str, model_data: bytes, *, arena_size: int = 1 << 20) -> Reference:
    """The reference interpreter called `name` (one of REFERENCES) for these model bytes."""
    if name == "tflite-ref":
        return TFLiteReference(model_data)
    if name == "tflm":
        return TFLMReference(model_data, arena_size=arena_size)
    if name == "litert":
        return LiteRTReference(model_data)
    raise ConfigError(f"unknown reference '{name}'", f"use one of: {', '.join(REFERENCES)}")
