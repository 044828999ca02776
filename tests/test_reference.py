"""Host reference interpreters: batching changes nothing, and tflite-runtime BUILTIN_REF gives the same
bytes as the TFLM host interpreter (the kernels the firmware links)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from harness.errors import ConfigError, ModelError
from harness.bench.reference import REFERENCES, TFLiteReference, TFLMReference, make_reference

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def model_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.tflite").read_bytes()


def random_beats(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(-128, 128, size=(n, 187)).astype(np.int8)


def test_batched_outputs_equal_per_beat_outputs():
    beats = random_beats(300)
    batched = TFLiteReference(model_bytes("fc_int8"), batch=64)  # 300 = 4 full batches + a padded one
    per_beat = TFLiteReference(model_bytes("fc_int8"), batch=1)
    out = batched.run(beats)
    assert batched.batched and not per_beat.batched
    assert out.shape == (300, 5) and out.dtype == np.int8
    np.testing.assert_array_equal(out, per_beat.run(beats))
    assert len({row.tobytes() for row in out}) > 100  # the outputs vary: the comparison means something


def test_graph_with_a_fixed_batch_falls_back_to_per_beat():
    # conv_int8's Conv1D export reshapes to a constant [1, 1, 187, 1], so it cannot be resized.
    beats = random_beats(50, seed=1)
    reference = TFLiteReference(model_bytes("conv_int8"), batch=16)
    out = reference.run(beats)
    assert not reference.batched
    np.testing.assert_array_equal(out, TFLiteReference(model_bytes("conv_int8"), batch=1).run(beats))


@pytest.mark.parametrize("name", ["conv_int8", "fc_int8", "mixed_int8"])
def test_tflite_builtin_ref_is_bit_exact_with_tflm(name):
    beats = random_beats(300, seed=2)
    tflite = make_reference("tflite-ref", model_bytes(name)).run(beats)
    tflm = make_reference("tflm", model_bytes(name)).run(beats)
    assert len({row.tobytes() for row in tflite}) > 100
    np.testing.assert_array_equal(tflite, tflm)


def test_inputs_may_carry_the_model_shape_or_be_flat():
    reference = make_reference("tflm", model_bytes("conv_int8"))
    beats = random_beats(20, seed=3)
    assert reference.input_shape == (1, 187, 1) and reference.output_bytes == 5
    np.testing.assert_array_equal(reference.run(beats), reference.run(beats.reshape(20, 187, 1)))
    with pytest.raises(ModelError) as info:
        reference.run(beats[:, :100])
    assert info.value.code == "HIL115"


def test_provenance_names_the_packages():
    tflite = make_reference("tflite-ref", model_bytes("fc_int8"))
    tflm = make_reference("tflm", model_bytes("fc_int8"))
    assert isinstance(tflm, TFLMReference)
    assert (tflite.name, tflm.name) == ("tflite-ref", "tflm")
    assert tflite.version == importlib.metadata.version("tflite-runtime") and tflite.note == ""
    assert tflm.version == importlib.metadata.version("tflite-micro")
    assert "BUILTIN_REF" in tflite.kernels


def test_unknown_reference_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        make_reference("tflite", model_bytes("fc_int8"))
    assert all(name in info.value.hint for name in REFERENCES)


def test_litert_reference_runs_or_says_how_to_install_it():
    if importlib.util.find_spec("ai_edge_litert") is None:
        with pytest.raises(ConfigError) as info:
            make_reference("litert", model_bytes("fc_int8"))
        assert "pip install ai-edge-litert" in info.value.hint
    else:
        reference = make_reference("litert", model_bytes("fc_int8"))
        out = reference.run(random_beats(50))
        tflm = make_reference("tflm", model_bytes("fc_int8")).run(random_beats(50))
        assert reference.note and np.abs(out.astype(int) - tflm).max() <= 1


def test_corrupt_model_is_refused_before_the_interpreter_sees_it():
    for name in ("tflite-ref", "tflm"):
        with pytest.raises(ModelError) as info:
            make_reference(name, model_bytes("corrupt"))
        assert info.value.code == "HIL112"
