"""The `.tflite` file itself, read with the TFLite schema alone: structural verification (before any C++
interpreter sees the bytes), op names, and the op list the firmware's resolver registers
(`firmware/resolver_ops.def`).

The bottom of the model stack: harness.bench.model, the TFLM probe (harness/bench/tflm_probe.py), localisation and the
virtual board import it; it imports only harness.errors.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelError

REPO_DIR = Path(__file__).resolve().parent.parent.parent
RESOLVER_OPS_PATH = REPO_DIR / "firmware" / "resolver_ops.def"


def schema():
    """The TFLite flatbuffer schema's Python classes (from the tflite-micro package)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    return schema_py_generated


def verify_flatbuffer(model_data: bytes, where: str = "model") -> None:
    """Raise HIL112 unless the bytes are a structurally sound TFLite flatbuffer.

    Unpacking the whole object tree in Python reads every offset the C++ loader would follow, so a
    truncated or garbled buffer fails here with an exception instead of a segfault; index fields are
    then checked against the table sizes they point into.
    """
    fix = "re-export it (or copy it again: the file may be truncated)"
    bad = ModelError(f"{where} is not a valid TFLite flatbuffer (truncated or corrupt)", fix, code="HIL112")
    if len(model_data) < 8:
        raise bad
    if model_data[4:8] != b"TFL3":
        raise ModelError(f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier)",
                         "give a .tflite file exported by the TFLite converter", code="HIL112")
    fb = schema()
    try:
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(model_data, 0))
    except Exception:  # any failure to unpack means the structure is broken
        raise bad from None
    subgraphs = model.subgraphs or []
    codes = model.operatorCodes or []
    buffers = model.buffers or []
    if not subgraphs:
        raise bad

    def check(what: str, indices, limit: int, table: str, optional: bool = False) -> None:
        """An index pointing outside its table is a valid flatbuffer but a model the C++ loaders read out
        of bounds (TFLM does not check): name the field so the message says what is broken."""
        low = -1 if optional else 0
        for i in (indices if indices is not None else []):
            if not low <= int(i) < limit:
                raise ModelError(f"{where} is a corrupt TFLite model: {what} refers to {table} {int(i)}, "
                                 f"but there are {limit}", fix, code="HIL112")

    for g, graph in enumerate(subgraphs):
        tensors = graph.tensors or []
        check(f"subgraph {g} input", graph.inputs, len(tensors), "tensor")
        check(f"subgraph {g} output", graph.outputs, len(tensors), "tensor")
        for t, tensor in enumerate(tensors):
            check(f"subgraph {g} tensor {t}", [tensor.buffer], max(len(buffers), 1), "buffer")
        for k, op in enumerate(graph.operators or []):
            check(f"subgraph {g} operator {k}", [op.opcodeIndex], len(codes), "operator code")
            check(f"subgraph {g} operator {k} input", op.inputs, len(tensors), "tensor", optional=True)
            check(f"subgraph {g} operator {k} output", op.outputs, len(tensors), "tensor", optional=True)
    for buf in buffers:  # buffers stored outside the flatbuffer (models > 2 GB) must lie in the file
        if getattr(buf, "offset", 0) and buf.offset + buf.size > len(model_data):
            raise bad
    _check_constant_buffers(subgraphs, buffers, where, fix)
    # The C++ loader reads names as C strings: a clobbered length or terminator sends it off the buffer.
    if not all(b"\0" not in s and _is_utf8(s) for s in _strings(model)):
        raise bad


# Bytes per element of the schema's TensorType codes (schema.fbs) whose constant data is shape x element;
# strings, resources, variants and packed INT4 are not, and are not checked.
_ELEMENT_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2, 18: 2}
_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 8: "complex64",
               9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 15: "uint32", 16: "uint16", 18: "bfloat16"}


def _check_constant_buffers(subgraphs, buffers, where: str, fix: str) -> None:
    """Every constant tensor's buffer holds exactly shape x element bytes (docs/protocol.md §5.9): TFLM
    trusts the shape and reads that many bytes, so a short buffer is read past its end on the device. The
    firmware checks the same before its interpreter sees the model (firmware/main/inference.cc)."""
    for g, graph in enumerate(subgraphs):
        for t, tensor in enumerate(graph.tensors or []):
            index = int(tensor.buffer)
            buf = buffers[index] if 0 < index < len(buffers) else None
            have = (len(buf.data) if buf is not None and buf.data is not None else 0) or (
                int(getattr(buf, "size", 0) or 0) if buf is not None and getattr(buf, "offset", 0) else 0)
            size = _ELEMENT_BYTES.get(int(tensor.type))
            if not have or size is None or tensor.sparsity is not None:
                continue
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            need = size
            for d in shape:
                need *= max(d, 0)
            if need != have:
                name = tensor.name.decode("utf-8", "replace") if isinstance(tensor.name, bytes) else tensor.name
                dims = "x".join(str(d) for d in shape) or "scalar"
                raise ModelError(f"{where} is a corrupt TFLite model: subgraph {g} tensor {t} ('{name}', "
                                 f"{dims} {_TYPE_NAMES.get(int(tensor.type), tensor.type)}) has a {have}-byte "
                                 f"constant buffer, its shape needs {need} bytes", fix, code="HIL112")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _strings(node: Any):
    """Every string field of an unpacked flatbuffer object tree (byte arrays are numpy, not bytes)."""
    if isinstance(node, bytes):
        yield node
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _strings(item)
    elif hasattr(node, "__dict__"):
        for value in vars(node).values():
            yield from _strings(value)


def flatbuffer_ops(model_data: bytes) -> list[str]:
    """Op names straight from the flatbuffer (custom ops by their custom name)."""
    fb = schema()
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(model_data, 0))
    ops = []
    for code in model.operatorCodes or []:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if names.get(builtin) == "CUSTOM":
            custom = code.customCode
            ops.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            ops.append(names.get(builtin, f"BUILTIN_{builtin}"))
    return ops


_OP_LINE = re.compile(r"^\s*HIL_OP\(\s*([A-Z0-9_]+)\s*,\s*(\w+)\s*\)")
_COUNT_LINE = re.compile(r"^\s*#define\s+HIL_OP_COUNT\s+(\d+)")


@lru_cache(maxsize=None)
def resolver_ops(path: Path = RESOLVER_OPS_PATH) -> tuple[tuple[str, str], ...]:
    """(op name, MicroMutableOpResolver method) pairs from firmware/resolver_ops.def, in file order."""
    try:
        text = Path(path).read_text()
    except OSError:
        raise ModelError(f"the firmware's op list {path} is missing", "restore firmware/resolver_ops.def from git",
                         code="HIL114") from None
    return tuple((m.group(1), m.group(2)) for m in map(_OP_LINE.match, text.splitlines()) if m)


def resolver_op_count(path: Path = RESOLVER_OPS_PATH) -> int | None:
    """The HIL_OP_COUNT the C++ resolver is sized with (None when the file does not define it)."""
    for line in Path(path).read_text().splitlines():
        match = _COUNT_LINE.match(line)
        if match:
            return int(match.group(1))
    return None


def firmware_ops() -> frozenset[str]:
    """The op names the firmware's resolver registers (and the virtual board accepts)."""
    return frozenset(op for op, _ in resolver_ops())
