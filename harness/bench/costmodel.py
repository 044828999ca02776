"""Static cost of a model: multiply-accumulates per op from the tensor shapes, and estimated cycles from a
device profile's cost constants.

These numbers are estimates and are always labelled so (`source = "static_estimate"`): the virtual board
reports them instead of a cycle counter, and model cards quote the MAC count. Measured device cycles,
when a board has run the model, always win over them.

    cycles = invoke_overhead + Σ over ops (op_overhead + MACs × cycles_per_mac[op] + elements × cycles_per_element)

where `elements` is the number of output values an op writes (requantization, activation or copy work,
which every op has, MAC-heavy or not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import open_interpreter
from ..boards.profiles import Profile

SOURCE = "static_estimate"


@dataclass(frozen=True)
class OpCost:
    index: int
    op: str
    macs: int
    elements: int
    cycles: int


@dataclass(frozen=True)
class Estimate:
    macs: int
    cycles: int
    per_op: tuple[OpCost, ...]
    source: str = SOURCE


def _elements(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _op_work(model_data: bytes) -> list[tuple[int, str, int, int]]:
    """(index, op name, MACs, output elements) per op, in execution order."""
    interpreter = open_interpreter(model_data, "model")
    interpreter.allocate_tensors()  # intermediate shapes are only final after allocation
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}
    work = []
    for op in interpreter._get_ops_details():
        name = str(op["op_name"])
        ins = [shapes[i] for i in op["inputs"] if i >= 0]
        out_elements = sum(_elements(shapes[i]) for i in op["outputs"] if i >= 0)
        macs = 0
        if name == "CONV_2D":  # filter [out_ch, kh, kw, in_ch]: every output value sums kh·kw·in_ch products
            _, kh, kw, in_ch = ins[1]
            macs = out_elements * kh * kw * in_ch
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, ch]: one input channel per output value
            _, kh, kw, _ = ins[1]
            macs = out_elements * kh * kw
        elif name == "FULLY_CONNECTED":  # weights [units, in_features]
            macs = out_elements * ins[1][-1]
        elif name == "TRANSPOSE_CONV":  # inputs (output shape, filter [out_ch, kh, kw, in_ch], input)
            out_ch, kh, kw, _ = ins[1]
            macs = _elements(ins[2]) * kh * kw * out_ch  # each input value scatters into kh·kw·out_ch outputs
        work.append((int(op["index"]), name, int(macs), int(out_elements)))
    return work


def count_macs(model_data: bytes) -> int:
    """Total multiply-accumulates of one inference (for model cards)."""
    return sum(macs for _, _, macs, _ in _op_work(model_data))


def estimate(model_data: bytes, profile: Profile) -> Estimate:
    """MACs and estimated cycles of one inference on `profile`'s device."""
    cost = profile.cost
    per_op = []
    total = cost.invoke_overhead_cycles
    for index, op, macs, elements in _op_work(model_data):
        cycles = cost.op_overhead_cycles + macs * cost.mac_cycles(op) + elements * cost.cycles_per_element
        total += cycles
        per_op.append(OpCost(index=index, op=op, macs=macs, elements=elements, cycles=round(cycles)))
    return Estimate(macs=sum(c.macs for c in per_op), cycles=round(total), per_op=tuple(per_op))
