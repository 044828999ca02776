"""The `.tflite` file itself, read with the TFLite schema alone: structural verification (before any C++
interpreter sees the bytes), op names, and the op list the firmware's resolver registers
(`firmware/resolver_ops.def`).

The bottom of the model stack: harness.model, the TFLM probe (harness/tflm_probe.py), localisation and the
virtual board import it; it imports only harness.errors.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ModelError

REPO_DIR = Path(__file__).resolve().parent.parent
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
    # The C++ loader reads names as C strings: a clobbered length or terminator sends it off the buffer.
    if not all(b"\0" not in s and _is_utf8(s) for s in _strings(model)):
        raise bad


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
