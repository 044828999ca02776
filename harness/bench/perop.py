"""Per-op tables: the board's OP_TIMES for one beat (docs/protocol.md §12) joined with the model's own
description of each op (type, input and output shapes), as `Result.per_op`.

    {"source": "device_cycles" | "static_estimate", "beat": int, "label": str,
     "invoke_cycles": int, "ops_cycles": int, "cpu_mhz": int,
     "ops": [{"index", "op", "shapes": {"in": [[...], ...], "out": [[...], ...]}, "macs", "cycles", "share"}]}

`share` is the op's part of the sum of all ops' cycles. On a board the cycles are the CPU counter around
each kernel; on the virtual board they are the cost model's estimates for the profile it was started
with, and `source` and `label` say so. `speedup()` compares two tables of the same model and beat (the
kernels side by side, harness/bench/kernels.py).
"""

from __future__ import annotations

from .costmodel import _op_work
from .model import _schema, open_interpreter
from ..link.protocol import OpTimes


def op_shapes(model_data: bytes) -> list[dict]:
    """Per op, in execution order: {"index", "op", "shapes": {"in", "out"}} from the host interpreter."""
    interp = open_interpreter(model_data, "model")
    interp.allocate_tensors()
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():  # noqa: SLF001 - the only op listing tflite-runtime has
        out.append({"index": int(op["index"]), "op": str(op["op_name"]),
                    "shapes": {"in": [shapes[i] for i in op["inputs"] if i >= 0],
                               "out": [shapes[i] for i in op["outputs"] if i >= 0]}})
    return out


def _builtin_names() -> dict[int, str]:
    return {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}


def table(model_data: bytes, times: OpTimes, *, timing_source: str, beat: int, cpu_mhz: int,
          label: str) -> dict:
    """Result.per_op from a device's OP_TIMES. Op types come from the model, and the device's builtin
    codes must agree with them (a board running another model than the host thinks is an error here)."""
    described = {op["index"]: op for op in op_shapes(model_data)}
    macs = {index: m for index, _op, m, _el in _op_work(model_data)}
    names = _builtin_names()
    total = sum(op.cycles for op in times.ops)
    ops = []
    for op in times.ops:
        host = described.get(op.index)
        device_name = names.get(op.builtin, f"BUILTIN_{op.builtin}")
        if host is None or host["op"] != device_name:
            raise ValueError(f"the board timed op #{op.index} as {device_name}, the model's op #{op.index} is "
                             f"{host['op'] if host else 'missing'}")
        ops.append({"index": op.index, "op": host["op"], "shapes": host["shapes"], "macs": macs.get(op.index),
                    "cycles": op.cycles, "share": op.cycles / total if total else None})
    return {"source": timing_source, "beat": beat, "label": label, "invoke_cycles": times.invoke_cycles,
            "ops_cycles": total, "cpu_mhz": cpu_mhz, "ops": ops}


def speedup(fast: dict, slow: dict) -> list[dict]:
    """Per op: slow cycles ÷ fast cycles, for two tables of the same model (e.g. esp-nn vs reference)."""
    slow_by_index = {op["index"]: op for op in slow.get("ops", [])}
    out = []
    for op in fast.get("ops", []):
        other = slow_by_index.get(op["index"])
        if other is None:
            continue
        ratio = other["cycles"] / op["cycles"] if op["cycles"] else None
        out.append({"index": op["index"], "op": op["op"], "shapes": op["shapes"], "fast_cycles": op["cycles"],
                    "slow_cycles": other["cycles"], "speedup": ratio})
    return out


def _kib(value) -> str:
    return "?" if value is None else f"{value / 1024:,.1f} KiB"


def board_lines(results) -> list[str]:
    """Terminal lines per result: the per-op top 3, the health figures and the cycles-vs-wall check."""
    out = []
    for r in results:
        per_op, health = r.per_op or {}, r.health or {}
        clock = (r.latency or {}).get("clock_check") or {}
        parts = []
        if per_op.get("ops"):
            top = sorted(per_op["ops"], key=lambda op: -(op.get("cycles") or 0))[:3]
            est = " (est.)" if per_op.get("source") == "static_estimate" else ""
            parts.append(f"per-op beat {per_op.get('beat')}{est}: " + ", ".join(
                f"#{op['index']} {op['op']} {op['share']:.0%}" for op in top if op.get("share") is not None))
        elif per_op.get("note") or per_op.get("error"):
            parts.append(f"per-op: {per_op.get('note') or per_op.get('error')}")
        if health.get("source"):
            stack = health.get("stack_high_water_bytes")
            stack_text = (f"stack high water {stack:,} B free of {health.get('stack_size_bytes') or 0:,}"
                          if stack is not None else "stack n/a")
            parts.append(f"health ({health['source']}): {stack_text}, internal heap "
                         f"{_kib(health.get('heap_internal_free_before'))} → {_kib(health.get('heap_internal_free_after'))}, "
                         f"PSRAM {_kib(health.get('psram_free_after'))}, arena {_kib(health.get('arena_used_bytes'))} "
                         f"of {_kib(health.get('arena_size_bytes'))}")
        if clock.get("compared"):
            parts.append(f"cycles vs wall: {clock.get('flagged', 0)} of {clock['compared']} beats beyond "
                         f"{clock['margin']['rel']:.0%} + {clock['margin']['abs_us']:g} µs")
        if parts:
            out.append(f"{r.name}: " + "; ".join(parts))
    return out
