"""Model loading (registry, .tflite + sidecar + flags) and the host-side checks before upload."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from harness.bench import data
from harness.errors import ModelError
from harness.bench.model import (RESOLVER_OPS_PATH, check_model, firmware_ops, load_registry, load_user_model,
                           resolver_op_count, resolver_ops)
from harness.boards.profiles import load_profile

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WINDOW = {"before": 374, "after": 374, "channel": 0, "decimate": 4, "normalize": "beat_zscore"}


@pytest.fixture(scope="module")
def profile():
    return load_profile("virtual")


def expect_error(code: str, call, *args, **kwargs) -> ModelError:
    """The call fails with a one-line ModelError carrying `code` and a fix, not a chained traceback."""
    with pytest.raises(ModelError) as info:
        call(*args, **kwargs)
    err = info.value
    line = str(err)
    assert err.code == code, line
    assert line.startswith(code + " ") and "\n" not in line and " -- fix: " in line
    assert err.__cause__ is None and (err.__suppress_context__ or err.__context__ is None)
    return err


def copy_fixture(name: str, folder: Path, *, sidecar: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.tflite"
    shutil.copy(FIXTURES / f"{name}.tflite", target)
    if sidecar and (FIXTURES / f"{name}.yaml").exists():
        shutil.copy(FIXTURES / f"{name}.yaml", folder / f"{name}.yaml")
    return target


# firmware/resolver_ops.def ----------------------------------------------------------------------------

def test_resolver_ops_lists_the_firmware_ops_once_each_and_matches_its_count():
    pairs = resolver_ops()
    names = [op for op, _ in pairs]
    assert len(names) == len(set(names)) == resolver_op_count()
    assert firmware_ops() == frozenset(names)
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN",
               "RESHAPE", "EXPAND_DIMS", "SQUEEZE", "SOFTMAX", "ADD", "MUL", "SUB", "RELU", "RELU6", "LOGISTIC",
               "TANH", "QUANTIZE", "DEQUANTIZE", "CONCATENATION", "PAD", "STRIDED_SLICE", "TRANSPOSE_CONV"):
        assert op in firmware_ops()
    assert dict(pairs)["CONV_2D"] == "AddConv2D" and dict(pairs)["TRANSPOSE_CONV"] == "AddTransposeConv"
    assert all(method.startswith("Add") for _, method in pairs)


def test_firmware_ops_ignore_commented_lines(tmp_path):
    text = RESOLVER_OPS_PATH.read_text() + "/* HIL_OP(GATHER, AddGather) */\n// HIL_OP(ABS, AddAbs)\n"
    (tmp_path / "ops.def").write_text(text)
    assert [op for op, _ in resolver_ops(tmp_path / "ops.def")] == [op for op, _ in resolver_ops()]


# Registry --------------------------------------------------------------------------------------------

def write_registry(folder: Path, entries: list[dict]) -> Path:
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return path


def conv_entry(**changes) -> dict:
    entry = {"name": "conv", "file": "conv/conv_int8.tflite", "float_file": "conv/conv_float.tflite",
             "task": "classifier", "labels": ["N", "S", "V", "F", "Q"], "label_map": "aami", "window": WINDOW,
             "card": "conv/CARD.md", "recipe": "conv/train.py"}
    entry.update(changes)
    return entry


def test_registry_entries_become_models(tmp_path, profile):
    copy_fixture("conv_int8", tmp_path / "conv", sidecar=False)
    copy_fixture("autoencoder_int8", tmp_path / "ae", sidecar=False)
    ae = {"name": "ae", "file": "ae/autoencoder_int8.tflite", "task": "autoencoder",
          "label_map": {"N": "normal", "V": "ectopic"}, "window": WINDOW,
          "anomaly": {"error": "mse", "threshold": 0.25, "normal_labels": ["normal"]}}
    registry = write_registry(tmp_path, [conv_entry(), ae])

    conv, auto = load_registry(registry)
    raw = (tmp_path / "conv" / "conv_int8.tflite").read_bytes()
    assert conv.name == "conv" and conv.source == "registry" and conv.task == "classifier"
    assert conv.path == (tmp_path / "conv" / "conv_int8.tflite").resolve()
    assert conv.data == raw and conv.size_bytes == len(raw) and conv.sha256 == hashlib.sha256(raw).hexdigest()
    assert conv.labels == ("N", "S", "V", "F", "Q")
    assert conv.label_map == data.AAMI_MAP
    assert conv.window == data.WindowSpec(374, 374, 0, 4, "beat_zscore") and conv.window.length == 187
    assert conv.input.shape == (1, 187, 1) and conv.input.dtype == "int8" and conv.input.nbytes == 187
    assert conv.output.shape == (1, 5) and conv.output.nbytes == 5 and conv.output.scale > 0
    assert conv.ops == ("RESHAPE", "CONV_2D", "FULLY_CONNECTED", "SOFTMAX")
    assert conv.card == (tmp_path / "conv" / "CARD.md").resolve()
    assert conv.float_path == (tmp_path / "conv" / "conv_float.tflite").resolve()
    assert conv.anomaly is None
    check_model(conv, profile)

    assert auto.task == "autoencoder" and auto.labels == () and auto.label_map == {"N": "normal", "V": "ectopic"}
    assert auto.anomaly == {"error": "mse", "threshold": 0.25, "normal_labels": ["normal"]}
    assert auto.output.shape == (1, 187)
    check_model(auto, profile)

    assert [m.name for m in load_registry(registry, ["ae", "conv"])] == ["ae", "conv"]


def test_registry_errors_name_the_file_entry_and_key(tmp_path):
    copy_fixture("conv_int8", tmp_path / "conv", sidecar=False)
    err = expect_error("HIL118", load_registry, write_registry(tmp_path, [conv_entry()]), ["cnn"])
    assert "'cnn'" in str(err) and "conv" in err.hint

    err = expect_error("HIL118", load_registry, write_registry(tmp_path, [conv_entry(task=None)]))
    assert "registry.yaml entry 'conv'" in str(err) and "'task'" in str(err)

    window = dict(WINDOW, normalize="zscore")
    err = expect_error("HIL118", load_registry, write_registry(tmp_path, [conv_entry(window=window)]))
    assert "window.normalize" in str(err) and "beat_zscore" in err.hint

    err = expect_error("HIL118", load_registry, write_registry(tmp_path, [conv_entry(lables=["N"])]))
    assert "'lables'" in str(err)

    err = expect_error("HIL118", load_registry, write_registry(tmp_path, [conv_entry(), conv_entry()]))
    assert "twice" in str(err)

    err = expect_error("HIL110", load_registry, write_registry(tmp_path, [conv_entry(file="conv/missing.tflite")]))
    assert "missing.tflite" in str(err) and "entry 'conv'" in str(err)

    (tmp_path / "broken.yaml").write_text("models:\n  - name: [unclosed\n")
    assert "not valid YAML" in str(expect_error("HIL118", load_registry, tmp_path / "broken.yaml"))
    expect_error("HIL110", load_registry, tmp_path / "nowhere.yaml")


# User models: sidecar and flags -----------------------------------------------------------------------

def test_user_model_reads_its_sidecar(tmp_path):
    model = load_user_model(copy_fixture("fc_int8", tmp_path))
    assert model.name == "fc_int8" and model.source == "user" and model.task == "classifier"
    assert model.labels == ("N", "S", "V", "F", "Q") and model.window.length == 187
    assert model.input.shape == (1, 187) and model.ops == ("FULLY_CONNECTED", "SOFTMAX")


def test_explicit_sidecar_and_overrides_win(tmp_path, profile):
    path = copy_fixture("conv_int8", tmp_path / "m", sidecar=False)
    sidecar = tmp_path / "meta.yaml"
    sidecar.write_text(yaml.safe_dump({"name": "mine", "task": "classifier", "labels": "N,S,V,F,Q",
                                       "window": {"before": 100, "after": 100, "decimate": 1}}))
    overrides = {"window": {"before": 374, "after": 374, "decimate": 4, "normalize": None}, "labels": None}
    model = load_user_model(path, sidecar=sidecar, overrides=overrides)
    assert model.name == "mine" and model.labels == ("N", "S", "V", "F", "Q")
    assert model.window == data.WindowSpec(374, 374, 0, 4, "none")
    check_model(model, profile)

    relabelled = load_user_model(path, sidecar=sidecar, overrides={**overrides, "labels": ["A", "B", "C", "D", "E"]})
    assert relabelled.labels == ("A", "B", "C", "D", "E")


def test_missing_metadata_says_which_key_and_where_it_can_come_from(tmp_path):
    path = copy_fixture("conv_int8", tmp_path, sidecar=False)
    err = expect_error("HIL118", load_user_model, path)
    assert "'task'" in str(err) and str(tmp_path / "conv_int8.yaml") in err.hint and "--model-task" in err.hint

    err = expect_error("HIL118", load_user_model, path, overrides={"task": "classifier", "window": WINDOW})
    assert "'labels'" in str(err)

    model = load_user_model(path, overrides={"task": "classifier", "window": WINDOW, "labels": "N,S,V,F,Q"})
    assert model.window.length == 187 and model.label_map == data.AAMI_MAP

    expect_error("HIL110", load_user_model, path, sidecar=tmp_path / "absent.yaml")


def test_autoencoder_needs_an_anomaly_threshold(tmp_path):
    path = copy_fixture("autoencoder_int8", tmp_path, sidecar=False)
    err = expect_error("HIL118", load_user_model, path, overrides={"task": "autoencoder", "window": WINDOW})
    assert "'anomaly'" in str(err) and "threshold" in err.hint


# Error codes ------------------------------------------------------------------------------------------

def test_missing_file_is_hil110(tmp_path):
    err = expect_error("HIL110", load_user_model, tmp_path / "nope.tflite")
    assert "nope.tflite" in str(err)


def test_corrupt_and_truncated_files_are_hil112(tmp_path):
    err = expect_error("HIL112", load_user_model, FIXTURES / "corrupt.tflite")
    assert "not a valid TFLite flatbuffer (truncated or corrupt)" in str(err) and "re-export" in err.hint

    # tflite-runtime does not verify buffers and would crash the process on these: every cut must be caught.
    whole = (FIXTURES / "conv_int8.tflite").read_bytes()
    for cut in list(range(0, 64, 3)) + list(range(64, len(whole), 97)):
        (tmp_path / "cut.tflite").write_bytes(whole[:cut])
        expect_error("HIL112", load_user_model, tmp_path / "cut.tflite", sidecar=FIXTURES / "conv_int8.yaml")
    (tmp_path / "text.tflite").write_text("this is a CSV file, not a model\n" * 10)
    expect_error("HIL112", load_user_model, tmp_path / "text.tflite", sidecar=FIXTURES / "conv_int8.yaml")


def short_constant_buffer_model(path: Path) -> Path:
    """conv_int8 with its first multi-byte constant buffer 4 bytes short of what the tensor's shape needs."""
    import flatbuffers

    from harness.bench.flatbuf import schema

    fb = schema()
    data = (FIXTURES / "conv_int8.tflite").read_bytes()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    for tensor in model.subgraphs[0].tensors:
        buf = model.buffers[tensor.buffer]
        if buf.data is not None and len(buf.data) > 8:
            buf.data = buf.data[:-4]
            break
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def test_constant_buffer_shorter_than_its_shape_is_hil112(tmp_path):
    # Issue 9, bug 7: TFLM trusts the shape and would read past the buffer (docs/protocol.md §5.9).
    short = short_constant_buffer_model(tmp_path / "short.tflite")
    err = expect_error("HIL112", load_user_model, short, sidecar=FIXTURES / "conv_int8.yaml")
    assert "subgraph 0 tensor 1" in err.message and "has a 12-byte constant buffer, its shape needs 16 bytes" in err.message


def test_float_io_is_hil111():
    err = expect_error("HIL111", load_user_model, FIXTURES / "float_io.tflite")
    assert "input is float32" in str(err)
    assert "inference_input_type=inference_output_type=tf.int8" in err.hint


def test_several_inputs_is_hil116():
    err = expect_error("HIL116", load_user_model, FIXTURES / "two_inputs_int8.tflite")
    assert "2 input(s)" in str(err)


def test_model_larger_than_the_store_is_hil113(profile):
    model = load_user_model(FIXTURES / "conv_int8.tflite")
    small = dataclasses.replace(profile, model_max_bytes=model.size_bytes - 1)
    err = expect_error("HIL113", check_model, model, small)
    assert str(model.size_bytes) in str(err) and str(model.size_bytes - 1) in str(err)
    check_model(model, dataclasses.replace(profile, model_max_bytes=model.size_bytes))


def test_op_missing_from_the_firmware_is_hil114(profile):
    model = load_user_model(FIXTURES / "unsupported_op_int8.tflite")
    assert "LEAKY_RELU" in model.ops and "LEAKY_RELU" not in firmware_ops()
    err = expect_error("HIL114", check_model, model, profile)
    assert "LEAKY_RELU" in str(err) and "SOFTMAX" not in str(err)
    assert "firmware/resolver_ops.def" in err.hint


def test_window_not_matching_the_input_is_hil115(profile):
    model = load_user_model(FIXTURES / "conv_int8.tflite", overrides={"window": {"decimate": 2}})
    err = expect_error("HIL115", check_model, model, profile)
    assert "374" in str(err) and "187" in str(err) and "window" in err.hint


def test_output_not_matching_labels_or_input_is_hil117(profile):
    model = load_user_model(FIXTURES / "conv_int8.tflite", overrides={"labels": ["N", "V"]})
    err = expect_error("HIL117", check_model, model, profile)
    assert "5 values" in str(err) and "2 labels" in str(err)

    as_autoencoder = load_user_model(FIXTURES / "conv_int8.tflite", overrides={
        "task": "autoencoder", "anomaly": {"error": "mse", "threshold": 1.0, "normal_labels": ["N"]}})
    err = expect_error("HIL117", check_model, as_autoencoder, profile)
    assert "187" in str(err) and "5" in str(err)
