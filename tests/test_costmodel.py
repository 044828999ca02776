"""Static cost model: MACs recomputed here from the fixture layer sizes (tests/fixtures/make_fixtures.py),
and the cycle formula with chosen constants."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.bench.costmodel import count_macs, estimate
from harness.boards.profiles import CostConstants, load_profile

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Layer sizes used by make_fixtures.py.
BEAT, CLASSES = 187, 5
CONV_FILTERS, CONV_KERNEL, CONV_STRIDE = 4, 7, 3
FC_HIDDEN = 16
DW_KERNEL = 5
TCONV_FILTERS, TCONV_KERNEL, TCONV_STRIDE = 2, 4, 2

CONV_LEN = (BEAT - CONV_KERNEL) // CONV_STRIDE + 1      # 'valid' Conv1D output length
DW_LEN = CONV_LEN - DW_KERNEL + 1                       # 'valid' DepthwiseConv1D
TCONV_LEN = (DW_LEN - 1) * TCONV_STRIDE + TCONV_KERNEL  # 'valid' Conv1DTranspose


def model_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.tflite").read_bytes()


# (op, MACs, output elements) per op in graph order, from the layer sizes alone.
EXPECTED = {
    "conv_int8": [
        ("RESHAPE", 0, BEAT),
        ("CONV_2D", CONV_LEN * CONV_FILTERS * CONV_KERNEL * 1, CONV_LEN * CONV_FILTERS),
        ("RESHAPE", 0, CONV_LEN * CONV_FILTERS),
        ("FULLY_CONNECTED", CLASSES * CONV_LEN * CONV_FILTERS, CLASSES),
        ("SOFTMAX", 0, CLASSES),
    ],
    "fc_int8": [
        ("FULLY_CONNECTED", FC_HIDDEN * BEAT, FC_HIDDEN),
        ("FULLY_CONNECTED", CLASSES * FC_HIDDEN, CLASSES),
        ("SOFTMAX", 0, CLASSES),
    ],
    "mixed_int8": [
        ("RESHAPE", 0, BEAT),
        ("CONV_2D", CONV_LEN * CONV_FILTERS * CONV_KERNEL, CONV_LEN * CONV_FILTERS),
        ("DEPTHWISE_CONV_2D", DW_LEN * CONV_FILTERS * DW_KERNEL, DW_LEN * CONV_FILTERS),
        ("TRANSPOSE_CONV", DW_LEN * CONV_FILTERS * TCONV_KERNEL * TCONV_FILTERS, TCONV_LEN * TCONV_FILTERS),
        ("RESHAPE", 0, TCONV_LEN * TCONV_FILTERS),
        ("FULLY_CONNECTED", CLASSES * TCONV_LEN * TCONV_FILTERS, CLASSES),
        ("SOFTMAX", 0, CLASSES),
    ],
}


@pytest.fixture(scope="module")
def profile():
    cost = CostConstants(cycles_per_mac={"CONV_2D": 2.0, "FULLY_CONNECTED": 3.0, "default": 5.0},
                         cycles_per_element=1.5, op_overhead_cycles=100.0, invoke_overhead_cycles=1000.0)
    return dataclasses.replace(load_profile("virtual"), cost=cost)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_macs_per_op_follow_from_the_layer_sizes(name):
    got = estimate(model_bytes(name), load_profile("virtual"))
    assert [(c.op, c.macs, c.elements) for c in got.per_op] == EXPECTED[name]
    assert [c.index for c in got.per_op] == list(range(len(EXPECTED[name])))
    assert got.macs == count_macs(model_bytes(name)) == sum(macs for _, macs, _ in EXPECTED[name])
    assert got.source == "static_estimate"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cycles_follow_the_profile_formula(name, profile):
    per_mac = {"CONV_2D": 2.0, "FULLY_CONNECTED": 3.0}
    ops = [1000.0]
    for op, macs, elements in EXPECTED[name]:
        ops.append(100.0 + macs * per_mac.get(op, 5.0) + elements * 1.5)
    got = estimate(model_bytes(name), profile)
    assert got.cycles == round(sum(ops))
    assert [c.cycles for c in got.per_op] == [round(c) for c in ops[1:]]


def test_real_profiles_rank_the_boards_by_their_constants():
    # The S3's SIMD constants must make the same model cheaper than the LX6 ESP32's.
    data = model_bytes("conv_int8")
    assert estimate(data, load_profile("esp32s3")).cycles < estimate(data, load_profile("esp32")).cycles
