"""A `.tflite` file plus its metadata (registry entry or sidecar YAML) → `Model`, and the host-side checks
that refuse a model before it is uploaded: corrupt, not INT8, too large for the board, an op the
firmware does not register, a window or label list that does not fit the tensors.

The metadata says what the bytes cannot: which beats the input window covers, what each output index
means, and whether the model classifies beats or reconstructs them (an autoencoder).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from . import data
from ..errors import ModelError
# The file-level pieces live in harness/bench/flatbuf.py (below this module and the TFLM probe); these names stay
# importable from here for existing callers.
from .flatbuf import RESOLVER_OPS_PATH, firmware_ops, resolver_op_count, resolver_ops, verify_flatbuffer  # noqa: F401
from .flatbuf import flatbuffer_ops as _flatbuffer_ops
from .flatbuf import schema as _schema  # noqa: F401
from ..boards.profiles import Profile

REPO_DIR = Path(__file__).resolve().parent.parent.parent
REGISTRY_PATH = REPO_DIR / "models" / "registry.yaml"

TASKS = ("classifier", "autoencoder", "conformance")
# A conformance model (models/conformance/) probes kernels, not ECG: it runs on seeded random INT8 inputs
# and its verdict is bit-exactness alone (no window, labels or accuracy).
CONFORMANCE_INPUTS = {"count": 64, "seed": 0}
ANOMALY_ERRORS = ("mse", "mae")
# Keys of a registry entry; a sidecar has the same keys minus `file`.
_ENTRY_KEYS = ("name", "file", "float_file", "task", "labels", "label_map", "window", "inputs", "card", "recipe",
               "anomaly", "description")
_WINDOW_KEYS = ("before", "after", "channel", "decimate", "normalize", "mask", "rhythm")
_ANOMALY_KEYS = ("error", "threshold", "normal_labels")


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor as the interpreter sees it (batch dimension included)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    nbytes: int

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    data: bytes = field(repr=False)
    sha256: str
    task: str
    labels: tuple[str, ...]
    label_map: dict[str, str] = field(hash=False, repr=False)  # beat symbol → label
    window: data.WindowSpec | None  # None for a conformance model (seeded random inputs, no beats)
    input: TensorInfo
    output: TensorInfo
    ops: tuple[str, ...]  # distinct op names, in the order the graph first runs them
    size_bytes: int
    card: Path | None
    float_path: Path | None
    anomaly: dict | None = field(hash=False)
    source: str  # "registry" | "user"
    inputs: dict | None = field(default=None, hash=False)  # conformance: {"count", "seed"} of its inputs

    def seeded_inputs(self) -> np.ndarray:
        """A conformance model's inputs: `count` INT8 tensors of the input shape, uniform over −128..127
        from numpy's PCG64 with `seed`, so every run and every board gets the same bytes."""
        spec = self.inputs or CONFORMANCE_INPUTS
        rng = np.random.default_rng(int(spec["seed"]))
        return rng.integers(-128, 128, size=(int(spec["count"]),) + tuple(self.input.shape[1:]), dtype=np.int8)


# Parsing the .tflite ----------------------------------------------------------------------------------

def open_interpreter(model_data: bytes, where: str = "model"):
    """A host interpreter with reference kernels (BUILTIN_REF, bit-exact with TFLM), after checking
    the flatbuffer's structure: tflite-runtime does not verify the buffer and crashes the whole process
    on a truncated file, so corrupt bytes must never reach it."""
    verify_flatbuffer(model_data, where)
    interpreter_cls, resolver = _interpreter_module()
    try:
        return interpreter_cls(model_content=model_data, experimental_op_resolver_type=resolver.BUILTIN_REF)
    except (ValueError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "op" in text.lower() and ("unresolved" in text.lower() or "didn't find" in text.lower()):
            ops = ", ".join(op for op in _flatbuffer_ops(model_data) if op not in firmware_ops()) or text
            raise ModelError(f"{where} uses op(s) the interpreter cannot resolve: {ops}",
                             "export with builtin TFLite ops only (no SELECT_TF_OPS / custom ops); "
                             f"the firmware's resolver list is {_rel(RESOLVER_OPS_PATH)}", code="HIL114") from None
        raise ModelError(f"{where} could not be loaded by the TFLite interpreter ({text})",
                         "re-export it with the TFLite converter", code="HIL112") from None


def _interpreter_module():
    """(Interpreter class, OpResolverType) from tflite-runtime, or from LiteRT where tflite-runtime has
    no wheel (Python ≥ 3.12)."""
    try:
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    except ImportError:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise ModelError("no TFLite interpreter is installed (tflite-runtime or ai-edge-litert)",
                             "pip install tflite-runtime (Python ≤ 3.11) or ai-edge-litert", code="HIL112") from None
    return Interpreter, OpResolverType


def _tensor_info(detail: Mapping[str, Any]) -> TensorInfo:
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(d) for d in detail["shape"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(name=str(detail["name"]), shape=shape, dtype=dtype.name, scale=float(scale),
                      zero_point=int(zero_point), nbytes=int(np.prod(shape)) * dtype.itemsize if shape else dtype.itemsize)


def _parse_tflite(model_data: bytes, where: str) -> tuple[TensorInfo, TensorInfo, tuple[str, ...]]:
    interpreter = open_interpreter(model_data, where)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{where} has {len(inputs)} input(s) and {len(outputs)} output(s); the bench runs "
                         "models with exactly one input tensor and one output tensor",
                         "export a single-input, single-output model (concatenate extra inputs into one tensor)",
                         code="HIL116")
    tensor_in, tensor_out = _tensor_info(inputs[0]), _tensor_info(outputs[0])
    for role, tensor in (("input", tensor_in), ("output", tensor_out)):
        if tensor.dtype != "int8":
            raise ModelError(f"{where}: {role} is {tensor.dtype}, the bench runs INT8 models",
                             "convert with full-integer quantization "
                             "(inference_input_type=inference_output_type=tf.int8)", code="HIL111")
    ops = tuple(dict.fromkeys(str(op["op_name"]) for op in interpreter._get_ops_details()))
    return tensor_in, tensor_out, ops


def _read_model_file(path: Path, where: str, hint: str) -> bytes:
    if not path.is_file():
        raise ModelError(f"{where}: model file {path} does not exist", hint, code="HIL110")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{where}: cannot read model file {path} ({exc.strerror})",
                         "check the file's permissions", code="HIL110") from None


# Metadata (registry entry / sidecar) ------------------------------------------------------------------

def _meta_error(where: str, key: str, why: str, fix: str) -> ModelError:
    return ModelError(f"{where}: key '{key}' {why}", fix, code="HIL118")


def _int(raw: Mapping[str, Any], key: str, where: str, *, default: int | None = None, minimum: int = 0) -> int:
    if key not in raw or raw[key] is None:
        if default is None:
            raise _meta_error(where, f"window.{key}", "is missing", f"add window.{key} (samples at 360 Hz)")
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _meta_error(where, f"window.{key}", f"must be an integer ≥ {minimum}, got {value!r}",
                          f"set window.{key} to an integer ≥ {minimum}")
    return value


def _window(raw: Any, where: str) -> data.WindowSpec:
    if not isinstance(raw, Mapping):
        raise _meta_error(where, "window", f"must be a mapping, got {raw!r}",
                          "write window: {before: 374, after: 374, decimate: 4, normalize: beat_zscore}")
    unknown = sorted(set(raw) - set(_WINDOW_KEYS))
    if unknown:
        raise _meta_error(where, f"window.{unknown[0]}", "is not a window key",
                          f"use only {', '.join(_WINDOW_KEYS)}")
    normalize = raw.get("normalize") or "none"
    if normalize not in data.NORMALIZATIONS:
        raise _meta_error(where, "window.normalize", f"is '{normalize}'",
                          f"use one of {', '.join(data.NORMALIZATIONS)}")
    mask = raw.get("mask") or "none"
    if mask not in data.MASKS:
        raise _meta_error(where, "window.mask", f"is '{mask}'", f"use one of {', '.join(data.MASKS)}")
    rhythm = raw.get("rhythm") or "none"
    if rhythm not in data.RHYTHMS:
        raise _meta_error(where, "window.rhythm", f"is '{rhythm}'", f"use one of {', '.join(data.RHYTHMS)}")
    spec = data.WindowSpec(before=_int(raw, "before", where), after=_int(raw, "after", where),
                           channel=_int(raw, "channel", where, default=0),
                           decimate=_int(raw, "decimate", where, default=1, minimum=1), normalize=normalize,
                           mask=mask, rhythm=rhythm)
    if spec.morphology_length <= 0:
        raise _meta_error(where, "window", f"covers {spec.before + spec.after} samples, fewer than decimate "
                          f"({spec.decimate})", "make before + after at least decimate")
    return spec


def _labels(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):  # from a CLI flag: "N,S,V,F,Q"
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise _meta_error(where, "labels", f"must be a non-empty list (output index → label), got {raw!r}",
                          "write labels: [N, S, V, F, Q]")
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise _meta_error(where, "labels", f"has {item!r}, not a label name",
                              "quote labels YAML reads as other types, e.g. 'yes', 'no', 'on'")
    labels = tuple(str(item) for item in raw)
    if len(set(labels)) != len(labels):
        raise _meta_error(where, "labels", f"repeats a label: {list(labels)}", "give each output index its own label")
    return labels


def _label_map(raw: Any, where: str) -> dict[str, str]:
    if raw == "aami":
        return dict(data.AAMI_MAP)
    if isinstance(raw, Mapping) and raw and all(isinstance(k, str) and isinstance(v, (str, int))
                                                and not isinstance(v, bool) for k, v in raw.items()):
        return {k: str(v) for k, v in raw.items()}
    raise _meta_error(where, "label_map", f"must be 'aami' or a mapping beat symbol → label, got {raw!r}",
                      "write label_map: aami, or label_map: {N: normal, V: ectopic, ...}")


def _anomaly(raw: Any, where: str) -> dict:
    if not isinstance(raw, Mapping):
        raise _meta_error(where, "anomaly", "is missing or not a mapping (autoencoders need it)",
                          "add anomaly: {error: mse, threshold: <float>, normal_labels: [N]}")
    unknown = sorted(set(raw) - set(_ANOMALY_KEYS))
    if unknown:
        raise _meta_error(where, f"anomaly.{unknown[0]}", "is not an anomaly key", f"use only {', '.join(_ANOMALY_KEYS)}")
    error = raw.get("error", "mse")
    if error not in ANOMALY_ERRORS:
        raise _meta_error(where, "anomaly.error", f"is {error!r}", f"use one of {', '.join(ANOMALY_ERRORS)}")
    threshold = raw.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise _meta_error(where, "anomaly.threshold", f"must be a number ≥ 0, got {threshold!r}",
                          "set the reconstruction-error threshold above which a beat is anomalous")
    normal = raw.get("normal_labels", ["N"])
    if isinstance(normal, str) or not isinstance(normal, (list, tuple)) or not normal:
        raise _meta_error(where, "anomaly.normal_labels", f"must be a non-empty list, got {normal!r}",
                          "write normal_labels: [N]")
    return {"error": error, "threshold": float(threshold), "normal_labels": [str(x) for x in normal]}


def _inputs(raw: Any, where: str) -> dict:
    if raw is None:
        return dict(CONFORMANCE_INPUTS)
    if not isinstance(raw, Mapping) or set(raw) - {"count", "seed"}:
        raise _meta_error(where, "inputs", f"must be a mapping with count and seed, got {raw!r}",
                          "write inputs: {count: 64, seed: 1}")
    out = dict(CONFORMANCE_INPUTS)
    for key, minimum in (("count", 1), ("seed", 0)):
        value = raw.get(key, out[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _meta_error(where, f"inputs.{key}", f"must be an integer ≥ {minimum}, got {value!r}",
                              f"set inputs.{key} to an integer ≥ {minimum}")
        out[key] = value
    return out


def _optional_path(raw: Mapping[str, Any], key: str, base: Path, where: str) -> Path | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _meta_error(where, key, f"must be a path, got {value!r}", f"set {key} to a path relative to {base}")
    return (base / value).resolve()


def _build(meta: Mapping[str, Any], *, name: str, path: Path, base: Path, where: str, source: str,
           fix_origin: str, missing_hint: str) -> Model:
    """Read the model file and combine it with validated metadata. `fix_origin` tells the user where
    missing metadata can come from."""
    unknown = sorted(set(meta) - set(_ENTRY_KEYS))
    if unknown:
        raise _meta_error(where, unknown[0], "is not a model key", f"use only {', '.join(_ENTRY_KEYS)}")

    model_data = _read_model_file(path, where, missing_hint)
    tensor_in, tensor_out, ops = _parse_tflite(model_data, f"{path.name}")

    def need(key: str, example: str) -> Any:
        if meta.get(key) is None:
            flag = f" {MODEL_FLAGS[key]}" if source == "user" and key in MODEL_FLAGS else ""
            raise _meta_error(where, key, "is missing", f"give {key} ({example}) in {fix_origin}{flag}")
        return meta[key]

    task = need("task", "classifier or autoencoder")
    if task not in TASKS:
        raise _meta_error(where, "task", f"is {task!r}", f"use one of {', '.join(TASKS)}")
    inputs = None
    if task == "conformance":
        for key in ("window", "labels", "anomaly"):
            if meta.get(key) is not None:
                raise _meta_error(where, key, "is not used by a conformance model (seeded random inputs, "
                                  "verdict bit-exactness alone)", f"remove {key}")
        return Model(
            name=name, path=path, data=model_data, sha256=hashlib.sha256(model_data).hexdigest(), task=task,
            labels=(), label_map={}, window=None, input=tensor_in, output=tensor_out, ops=ops,
            size_bytes=len(model_data), card=_optional_path(meta, "card", base, where),
            float_path=None, anomaly=None, source=source, inputs=_inputs(meta.get("inputs"), where))
    if meta.get("inputs") is not None:
        raise _meta_error(where, "inputs", "is only for conformance models", "remove it or set task: conformance")
    window = _window(need("window", "before/after/decimate/normalize"), where)
    if task == "classifier":
        labels = _labels(need("labels", "output index → label, e.g. [N, S, V, F, Q]"), where)
        if meta.get("anomaly") is not None:
            raise _meta_error(where, "anomaly", "is only for autoencoders", "remove it or set task: autoencoder")
        anomaly = None
    else:
        labels = _labels(meta["labels"], where) if meta.get("labels") is not None else ()
        if source == "user" and meta.get("anomaly") is None:
            need("anomaly", "the reconstruction-error threshold above which a beat is anomalous")
        anomaly = _anomaly(meta.get("anomaly"), where)
    # MIT-BIH beats with the AAMI classes are the bench's domain, so that is the default mapping.
    label_map = _label_map(meta.get("label_map", "aami"), where)

    return Model(
        name=name, path=path, data=model_data, sha256=hashlib.sha256(model_data).hexdigest(), task=task,
        labels=labels, label_map=label_map, window=window, input=tensor_in, output=tensor_out, ops=ops,
        size_bytes=len(model_data), card=_optional_path(meta, "card", base, where),
        float_path=_optional_path(meta, "float_file", base, where), anomaly=anomaly, source=source)


def _load_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ModelError(f"{path}{line}: {what} is not valid YAML ({getattr(exc, 'problem', exc)})",
                         "fix the YAML syntax", code="HIL118") from None
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path} ({exc.strerror})", "check the path and permissions",
                         code="HIL110") from None


def load_registry(path: Path = REGISTRY_PATH, names: Sequence[str] | None = None) -> list[Model]:
    """The registry's models (all, or those in `names`, in that order)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model registry {path} does not exist", "check the path (default models/registry.yaml)",
                         code="HIL110")
    raw = _load_yaml(path, "the model registry")
    entries = raw.get("models") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list):
        raise ModelError(f"{path}: key 'models' is missing or not a list",
                         "write models: followed by one '- name: ...' entry per model", code="HIL118")
    by_name: dict[str, Mapping[str, Any]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ModelError(f"{path}: entry #{i + 1} key 'name' is missing or not a string",
                             "give every entry a name: <model name>", code="HIL118")
        if entry["name"] in by_name:
            raise ModelError(f"{path}: model name '{entry['name']}' appears twice", "rename one entry",
                             code="HIL118")
        by_name[entry["name"]] = entry
    wanted = list(names) if names is not None else list(by_name)
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ModelError(f"{path}: no model named '{missing[0]}' in the registry",
                         f"use one of: {', '.join(by_name) or '(none registered)'}, or give a .tflite path",
                         code="HIL118")
    models = []
    for name in wanted:
        entry = by_name[name]
        where = f"{path} entry '{name}'"
        file = entry.get("file")
        if not isinstance(file, str) or not file:
            raise _meta_error(where, "file", "is missing", "set file: to the .tflite path relative to the registry")
        meta = {k: v for k, v in entry.items() if k not in ("file", "recipe")}
        models.append(_build(meta, name=name, path=(path.parent / file).resolve(), base=path.parent,
                             where=where, source="registry", fix_origin=f"the registry entry in {path.name}",
                             missing_hint="correct 'file' (relative to the registry's folder) or create the model (see its recipe)"))
    return models


def sidecar_path(model_path: Path | str) -> Path:
    """Where a user model's metadata is read from: `<stem>.yaml` beside it (my.tflite → my.yaml)."""
    return Path(model_path).with_suffix(".yaml")


# The command-line flag that gives each metadata key of a --model (the plugin defines them).
MODEL_FLAGS = {"task": "--model-task", "window": "--model-window", "labels": "--model-labels",
               "anomaly": "--model-threshold"}


def load_user_model(path: Path | str, *, sidecar: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Model:
    """A model from a `.tflite` path, described by its sidecar YAML (default `sidecar_path(path)`, beside the
    path as given; for a symlink without one, beside its target) and/or overrides from command-line flags,
    which win. Override values of None (flags not given) are ignored; mapping overrides (`window`,
    `anomaly`) are merged key by key into the sidecar's."""
    given = Path(os.path.abspath(path))  # absolute, symlinks kept: the sidecar sits beside the name the user gave
    path = given.resolve()
    if sidecar is not None:
        searched = [Path(sidecar)]
    else:
        searched = list(dict.fromkeys([sidecar_path(given), sidecar_path(path)]))
    found = next((c for c in searched if c.is_file()), None)
    meta: dict[str, Any] = {}
    if found is not None:
        raw = _load_yaml(found, "the model sidecar")
        if raw is not None and not isinstance(raw, Mapping):
            raise ModelError(f"{found}: expected a mapping of model keys, got {type(raw).__name__}",
                             "write task:, labels:, window: ... as in models/registry.yaml", code="HIL118")
        meta = dict(raw or {})
        if "file" in meta:
            raise _meta_error(str(found), "file", "is not a sidecar key (the sidecar describes "
                              f"{given.name})", "remove it")
    elif sidecar is not None:
        raise ModelError(f"sidecar {searched[0]} does not exist", "check the sidecar's path", code="HIL110")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(meta.get(key), Mapping):
            merged = dict(meta[key])
            merged.update({k: v for k, v in value.items() if v is not None})
            meta[key] = merged
        else:
            meta[key] = value
    meta.pop("recipe", None)
    name = meta.pop("name", None) or given.stem
    if found is not None:
        where, origin = f"{given.name} (sidecar {found})", f"the sidecar {found}"
    else:
        where = given.name
        origin = "a sidecar " + " or ".join(str(c) for c in searched) + " (none found)"
    return _build(meta, name=str(name), path=path, base=(found or searched[0]).parent, where=where, source="user",
                  fix_origin=f"{origin}, or with the flag", missing_hint="check the --model path")


# Firmware op list and checks ---------------------------------------------------------------------------

def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def check_model(model: Model, profile: Profile) -> None:
    """Refuse, before any upload, a model the board cannot run or the bench cannot score."""
    if model.size_bytes > profile.model_max_bytes:
        raise ModelError(f"model {model.name} is {model.size_bytes} bytes, larger than {profile.name}'s model "
                         f"store ({profile.model_max_bytes} bytes)",
                         "shrink the model (fewer filters/units, pruning) or use a profile with a larger "
                         "model partition", code="HIL113")
    missing = [op for op in model.ops if op not in firmware_ops()]
    if missing:
        raise ModelError(f"model {model.name} uses op(s) the firmware does not register: {', '.join(missing)}",
                         f"replace them in the model, or add them to the firmware's resolver list "
                         f"{_rel(RESOLVER_OPS_PATH)} and rebuild the firmware", code="HIL114")
    if model.window is not None and model.window.length != model.input.elements:
        w = model.window
        raise ModelError(f"model {model.name}: the window gives {w.length} samples ((before {w.before} + after "
                         f"{w.after}) // decimate {w.decimate}) but the input tensor {list(model.input.shape)} "
                         f"takes {model.input.elements}",
                         "fix window before/after/decimate in the registry entry, sidecar or flags", code="HIL115")
    if model.task == "classifier" and model.output.elements != len(model.labels):
        raise ModelError(f"model {model.name}: the output tensor {list(model.output.shape)} has "
                         f"{model.output.elements} values but {len(model.labels)} labels are given "
                         f"({', '.join(model.labels)})", "give one label per output index", code="HIL117")
    if model.task == "autoencoder" and model.output.elements != model.input.elements:
        raise ModelError(f"model {model.name}: an autoencoder must output as many values as it takes "
                         f"({model.input.elements}), but its output has {model.output.elements}",
                         "check the task (classifier?) or the exported model", code="HIL117")
    need = measure_arena(model.data)
    if need is not None and need > profile.arena_bytes:
        raise ModelError(f"model {model.name} needs {need} bytes of tensor arena (TFLM allocation recorder, "
                         f"host), {profile.name} reserves {profile.arena_bytes} (arena_bytes)",
                         "shrink the model (fewer filters/units), or raise arena_bytes in the profile and the "
                         "firmware's CONFIG_HIL_ARENA_SIZE if the board has the RAM", code="HIL119")


ARENA_PROBE_TIMEOUT_S = 120.0
ARENA_CACHE_DIR = REPO_DIR / "build" / "arena"


@lru_cache(maxsize=32)
def measure_arena(model_data: bytes) -> int | None:
    """Bytes of tensor arena TFLM allocates for the model, from its allocation recorder on the host; None
    when it could not be measured (the device then reports any shortfall itself).

    The measurement is the TFLM load probe (harness/bench/tflm_probe.py, which the virtual board also uses), run
    as a program in a child process because TFLM can crash the process on an odd model. It is given a 1-byte firmware arena so that it stops right after its
    "measure" step (measured in an arena of at least 1 MiB) instead of also loading and invoking.
    A probe takes a second or two, and every bench run checks every model, so figures are kept in
    build/arena/, keyed by the model's sha256 and the TFLM version.
    """
    import json

    cache = ARENA_CACHE_DIR / f"{hashlib.sha256(model_data).hexdigest()}-{_tflm_version()}.json"
    try:
        return int(json.loads(cache.read_text())["arena_used"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    used = _probe_arena(model_data)
    if used is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"arena_used": used}))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only checkout only loses the cache
    return used


def _tflm_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tflite_micro")
    except metadata.PackageNotFoundError:
        return "unknown"


def _probe_arena(model_data: bytes) -> int | None:
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hil-arena-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model_data)
        try:
            proc = subprocess.run([sys.executable, "-m", "harness.bench.tflm_probe", "--no-op-check",
                                   "--arena", "1", str(path)], capture_output=True, text=True,
                                  timeout=ARENA_PROBE_TIMEOUT_S, cwd=str(REPO_DIR))
        except (OSError, subprocess.TimeoutExpired):
            return None
    for line in proc.stdout.splitlines():
        try:
            step = json.loads(line)
        except ValueError:
            continue
        if isinstance(step, dict) and step.get("step") == "measure":
            return int(step["arena_used"])
    return None
