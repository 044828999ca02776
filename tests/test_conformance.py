"""Kernel conformance models (models/conformance/): generated deterministically, probing what they claim.

Their bit-exact run on the virtual board is part of the HIL suite (tests/hil, every registry model); on
the virtual board that agreement holds by construction (TFLM reference kernels on both sides), so these
tests check the models themselves: the committed bytes are what the generator writes, the shapes are the
bug classes named in the README, and a device that gets one op wrong is named by op and shape.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.bench.model import firmware_ops, load_registry, open_interpreter

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "models" / "conformance"


def _generator():
    spec = importlib.util.spec_from_file_location("conformance_generate", CONF / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models():
    return {m.name: m for m in load_registry() if m.task == "conformance"}


def test_regenerating_gives_identical_bytes():
    generated = _generator().generate()
    assert set(generated) == {p.stem for p in CONF.glob("*.tflite")}, "committed files differ from the generator's"
    for name, data in generated.items():
        assert (CONF / f"{name}.tflite").read_bytes() == data, (
            f"{name}.tflite is not what models/conformance/generate.py writes: rerun it and commit")


def test_registry_runs_every_conformance_model_first_on_seeded_inputs(models):
    names = [m.name for m in load_registry()]
    assert set(models) == {p.stem for p in CONF.glob("*.tflite")}
    assert names[: len(models)] == list(models), "conformance models must run before the ECG models"
    for model in models.values():
        assert model.window is None and model.labels == () and set(model.ops) <= firmware_ops()
        x = model.seeded_inputs()
        assert x.dtype == np.int8 and x.shape == (64,) + model.input.shape[1:]
        assert np.array_equal(x, model.seeded_inputs())  # the same bytes every run
        assert x.min() == -128 and x.max() == 127
    seeds = {m.inputs["seed"] for m in models.values()}
    assert len(seeds) == len(models)


def _ops(model):
    interp = open_interpreter(model.data)
    interp.allocate_tensors()
    shapes = {t["index"]: list(t["shape"]) for t in interp.get_tensor_details()}
    return interp, [(op["op_name"], [shapes[i] for i in op["inputs"]], [shapes[i] for i in op["outputs"]])
                    for op in interp._get_ops_details()]  # noqa: SLF001


def test_fc_widths_are_not_multiples_of_8(models):
    for name in ("conf_fc_odd_per_tensor", "conf_fc_odd_per_channel"):
        _, ops = _ops(models[name])
        widths = [(ins[1][1], ins[1][0]) for op, ins, _ in ops if op == "FULLY_CONNECTED"]
        assert {w for pair in widths for w in pair} >= {1, 2, 3, 5, 7, 9, 15, 17}
        assert all(w % 8 for pair in widths for w in pair)
    per_channel = _generator().S
    raw = per_channel.ModelT.InitFromObj(per_channel.Model.GetRootAsModel(models["conf_fc_odd_per_channel"].data, 0))
    weights = [t for t in raw.subgraphs[0].tensors if t.name.endswith(b"/weights")]
    assert weights and all(len(t.quantization.scale) == t.shape[0] for t in weights)
    assert all(t.quantization.quantizedDimension == 0 for t in weights)
    assert sum(len(t.quantization.scale) > 1 for t in weights) >= 6


def test_depthwise_padding_is_asymmetric(models):
    _, ops = _ops(models["conf_dwconv_same_odd"])
    dw = [(ins[0], ins[1], outs[0]) for op, ins, outs in ops if op == "DEPTHWISE_CONV_2D"]
    assert len(dw) == 2
    for (_, h, w, _), (_, kh, kw, _), (_, oh, ow, _) in dw:
        stride = 1 if (oh, ow) == (h, w) else 2
        pad_w = max((ow - 1) * stride + kw - w, 0)
        assert pad_w % 2 == 1, "SAME padding here must split unevenly (before < after)"
    assert dw[0][2][3] == 2 * dw[0][0][3]  # depth multiplier 2
    assert any(s[2] % 2 == 1 for s, _, _ in dw)  # an odd width


def test_conv_saturates_at_both_rails_and_softmax_rows_are_odd(models):
    conv = models["conf_conv_saturate"]
    interp, _ = _ops(conv)
    out = []
    for x in conv.seeded_inputs():
        interp.set_tensor(interp.get_input_details()[0]["index"], x[None])
        interp.invoke()
        out.append(interp.get_tensor(interp.get_output_details()[0]["index"]).ravel())
    out = np.concatenate(out)
    assert (out == -128).mean() > 0.1 and (out == 127).mean() > 0.1
    assert 0.1 < ((out > -128) & (out < 127)).mean()
    _, ops = _ops(models["conf_pool_softmax_odd"])
    softmax = next(ins[0] for op, ins, _ in ops if op == "SOFTMAX")
    assert softmax[-1] % 2 == 1
    _, ops = _ops(models["conf_add_mul_broadcast"])
    assert [ins[1] for op, ins, _ in ops] == [[1, 1, 1, 3], [1, 5, 1, 1]]


def test_a_wrong_op_is_named_with_its_shapes(tmp_path):
    # corrupt-layer:3 makes the virtual board compute op 3 (FULLY_CONNECTED 7→5) wrongly, as a broken
    # kernel would: the run fails with HIL501 naming the seeded input, the op and its shapes.
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "baselines"), "--models", "conf_fc_odd_per_tensor",
           "--virtual-fault", "corrupt-layer:3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL501" in line)
    assert "of 64 seeded inputs differ" in line and "(seed 1" in line, line
    assert "op #3 FULLY_CONNECTED (in [1,7], [5,7], [5] out [1,5]" in line, line
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert result["task"] == "conformance" and result["accuracy"] == {}
    assert result["bit_exact"]["localisation"]["first"]["op"] == "FULLY_CONNECTED"
    assert "by construction" in result["bit_exact"]["evidence"]
    assert "conformance models (1) are evidence only on a board" in proc.stdout
