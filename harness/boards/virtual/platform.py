"""The virtual board's platform hooks: what the ESP-IDF app does on a chip, done on the host.

The C core (firmware/core) calls these through hil_port_t: bytes out, a model store that survives a
restart like a flash partition, model load (checked first in a child process, because TFLM can crash on a
bad model or arena), invoke on TFLM's reference kernels, and the clock. Cycle counts are the static
cost-model estimate for the device profile, and HELLO says so (timing_source = static estimate).

Faults for tests (`flip-lsb:N`, `silent-after:N`) act here on the frames going out, never in the core.
`corrupt-layer:K` changes op K's output inside the computation instead (harness/boards/virtual/layers.py), for
INFER and DUMP alike, so per-layer localisation has a known answer.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import __version__
from ..profiles import Profile
from harness.link.protocol import FrameDecoder, MsgType, encode_frame
from . import core as hil
from .switches import BoardSwitches

_RESULT_OUTPUT_OFFSET = 20
PROBE_TIMEOUT_S = 60.0
# HELLO_ACK v1.1 facts: the server keeps what the host sends in memory, so it promises what an ESP32's
# default link buffer holds (CONFIG_HIL_LINK_RX_BUFFER) and restarts at once (no boot ROM, no flash).
RX_BUFFER = 16384
RESET_MS = 1000


# ---------------------------------------------------------------------------------------------------
# Faults

@dataclass(frozen=True)
class Fault:
    kind: str  # "flip-lsb" | "silent-after"
    n: int

    KINDS = ("flip-lsb", "silent-after", "corrupt-layer")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        kind, sep, num = spec.partition(":")
        if kind not in cls.KINDS or not sep or not num.isdigit():
            raise ValueError(f"bad fault '{spec}': use flip-lsb:N or silent-after:N (N = 0-based INFER count) "
                             "or corrupt-layer:K (K = 0-based op index)")
        return cls(kind, int(num))

    def __str__(self) -> str:
        return f"{self.kind}:{self.n}"


class FaultFilter:
    """Alters the frames the core writes, counting distinct INFERs by their RESULT's seq.

    The count restarts at every HELLO_ACK and MODEL_INFO (and model load); resends of a seq do not count.
    `flip-lsb:N` flips bit 0 of output byte 0 of the N-th distinct INFER's RESULT (every time that seq is
    answered, as a deterministic corruption would). `silent-after:N` drops every frame from the RESULT of
    the N-th distinct INFER on, like a board that hung: it answers nothing until it is restarted.
    """

    def __init__(self, faults: list[Fault]):
        self.flip = {f.n for f in faults if f.kind == "flip-lsb"}
        silent = [f.n for f in faults if f.kind == "silent-after"]
        self.silent_after = min(silent) if silent else None
        self.silent = False
        self._index: dict[int, int] = {}
        self._decoder = FrameDecoder()

    def restart_count(self) -> None:
        self._index.clear()

    def __call__(self, wire: bytes) -> bytes:
        if self.silent:
            return b""
        out = []
        for frame in self._decoder.feed(wire):
            if frame.type in (MsgType.HELLO_ACK, MsgType.MODEL_INFO):
                self.restart_count()
            elif frame.type == MsgType.RESULT:
                index = self._index.setdefault(frame.seq, len(self._index))
                if self.silent_after is not None and index >= self.silent_after:
                    self.silent = True
                    break
                if index in self.flip and len(frame.payload) > _RESULT_OUTPUT_OFFSET:
                    payload = bytearray(frame.payload)
                    payload[_RESULT_OUTPUT_OFFSET] ^= 0x01
                    out.append(encode_frame(frame.type, frame.seq, bytes(payload)))
                    continue
            out.append(encode_frame(frame.type, frame.seq, frame.payload))
        return b"".join(out)


# ---------------------------------------------------------------------------------------------------
# Model store

class ModelStore:
    """A directory standing in for the flash partition: model.bin plus a committed header (size, sha256).

    The header is written atomically after the data is flushed, so a store is either committed whole or
    reported empty, and it outlives the virtual board process like flash outlives a reboot.
    """

    def __init__(self, directory: Path, capacity: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.data_path = self.dir / "model.bin"
        self.header_path = self.dir / "committed.json"
        self._buf = bytearray()
        self._cbuf = None

    def _set(self, buf: bytearray) -> None:
        self._buf = buf
        # A view sharing the bytearray's memory: the core reads the model without a copy.
        self._cbuf = (ctypes.c_char * len(buf)).from_buffer(buf) if buf else None

    def begin(self, size: int) -> None:
        if size > self.capacity:
            raise ValueError("model larger than the store")
        self.header_path.unlink(missing_ok=True)
        self._set(bytearray(size))
        with open(self.data_path, "wb") as f:
            f.truncate(size)

    def write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > len(self._buf):
            raise ValueError("write past the erased size")
        self._buf[offset:offset + len(data)] = data
        with open(self.data_path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def address(self) -> int | None:
        return ctypes.addressof(self._cbuf) if self._cbuf is not None else None

    def commit(self, size: int, sha256: bytes) -> None:
        with open(self.data_path, "r+b") as f:
            os.fsync(f.fileno())
        header = json.dumps({"size": size, "sha256": sha256.hex()})
        tmp = self.header_path.with_suffix(".tmp")
        tmp.write_text(header)
        os.replace(tmp, self.header_path)

    def committed(self) -> tuple[int, bytes] | None:
        """The committed model's size and sha256, with its bytes loaded for `address()`; None if none."""
        try:
            header = json.loads(self.header_path.read_text())
            size, sha = int(header["size"]), bytes.fromhex(header["sha256"])
            data = self.data_path.read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(data) < size or len(sha) != 32:
            return None
        self._set(bytearray(data[:size]))
        return size, sha


# ---------------------------------------------------------------------------------------------------
# The platform

def build_hash() -> str:
    """First 16 hex of sha256 over the core library and these Python sources: changes when either does."""
    digest = hashlib.sha256(hil.ensure_library().read_bytes())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


class LoadRefused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def probe_model(data: bytes, arena: int) -> dict:
    """Run the TFLM load probe (harness.bench.tflm_probe) in a child process; returns its final report."""
    with tempfile.NamedTemporaryFile(suffix=".tflite", delete=False) as f:
        f.write(data)
        path = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.bench.tflm_probe", "--arena", str(arena), path],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              cwd=str(hil.REPO_ROOT), env=_child_env())
    except subprocess.TimeoutExpired:
        raise LoadRefused(hil.E_LOAD_FAILED, f"model load did not finish in {PROBE_TIMEOUT_S:.0f} s") from None
    finally:
        os.unlink(path)
    steps = []
    for line in proc.stdout.splitlines():
        try:
            steps.append(json.loads(line))
        except ValueError:
            continue
    if steps and steps[-1].get("step") == "done":
        return steps[-1]
    # The probe died (TFLM crash): say how far it got.
    last = steps[-1] if steps else {}
    why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:100]
    if last.get("step") == "measure":
        need = last["arena_used"]
        return {"ok": False, "code": hil.E_ARENA_TOO_SMALL,
                "error": f"model needs {need} bytes of tensor arena, the firmware has {arena} "
                         f"(TFLM crashed loading it there: {why})"}
    if not last:
        return {"ok": False, "code": hil.E_LOAD_FAILED,
                "error": f"reading the model crashed the interpreter ({why}): truncated or not a TFLite model?"}
    return {"ok": False, "code": hil.E_LOAD_FAILED, "error": f"TFLM crashed loading the model ({why}) {tail}"}


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(hil.REPO_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Platform:
    """The hooks of hil_port_t for one virtual board process.

    `outbox` collects the bytes the core writes; the server drains it to the pty or socket.
    `reset_requested` is set by the RESET hook; the server re-initialises the core once feed returns.
    """

    def __init__(self, profile: Profile, store_dir: Path, faults: list[Fault] = (), switches=(),
                 hello: dict | None = None, cost_profile: Profile | None = None):
        self.profile = profile
        # Whose cost constants the cycle estimates use: the profile's own (reference kernels), or another
        # board's (--cost-profile esp32s3: ESP-NN on an LX7), for the kernels side-by-side run.
        self.cost_profile = cost_profile or profile
        self._op_costs: list[tuple[int, int, int]] = []  # (op index, builtin code, estimated cycles)
        self.hello = dict(hello or {})  # HELLO fields reported instead of the profile's (--hello)
        self.store = ModelStore(store_dir, profile.model_max_bytes)
        self.outbox: list[bytes] = []
        self.reset_requested = False
        self.faults = FaultFilter(list(faults)) if faults else None
        # Whole-board switches (reset-every, never-answer): harness/boards/virtual/switches.py.
        self.switches = (BoardSwitches(list(switches), lambda: setattr(self, "reset_requested", True),
                                       host_baud=profile.baud) if switches else None)
        self._interp = None
        self._model_data = b""
        self._set_input = self._run = self._get_output = None
        self._in_shape = None
        self._in_dtype = np.int8
        self._cycles = 0
        self._cycles_le = bytes(8)
        self._probe_cache: dict[tuple[bytes, int], dict] = {}
        # DUMP and the corrupt-layer fault (harness/boards/virtual/layers.py), built when first needed.
        self.corrupt_op = next((f.n for f in faults if f.kind == "corrupt-layer"), None)
        self._layers = None
        self.last_load_s = 0.0

    # -- device facts ---------------------------------------------------------------------------------
    def device_info(self) -> dict:
        return {"fw_version": f"{__version__}-virtual", "chip": "virtual", "build_hash": build_hash(),
                "cpu_mhz": self.profile.cpu_mhz, "kernel_mode": hil.KERNELS_REFERENCE,
                "timing_source": hil.TIMING_ESTIMATE, "arena_size": self.profile.arena_bytes,
                "store_capacity": self.profile.model_max_bytes,
                # The server reads every byte the host sends into memory; the bound is what it promises.
                "rx_buffer": RX_BUFFER, "reset_ms": RESET_MS, **self.hello}

    def hooks(self) -> dict:
        return {"write": self._write, "store_begin": self._store_begin, "store_write": self._store_write,
                "store_data": self._store_data, "store_commit": self._store_commit,
                "store_committed": self._store_committed, "model_load": self._model_load,
                "invoke": self._invoke, "clock_ns": _clock_ns, "reset": self._reset, "dump": self._dump,
                "profile": self._profile, "health": self._health}

    # -- hooks ----------------------------------------------------------------------------------------
    # Every hook catches everything: an exception escaping a ctypes callback is printed and turned into
    # 0 ("success"), which would make the core report a store write or an invoke that never happened.

    def _write(self, _ctx, data, length):
        wire = ctypes.string_at(data, length)
        if self.faults is not None:
            try:
                wire = self.faults(wire)
            except Exception as exc:  # noqa: BLE001
                _log(f"fault filter failed: {exc}")
        if self.switches is not None and wire:
            wire = self.switches(wire)
        if wire:
            self.outbox.append(wire)
        return 0

    def _store_begin(self, _ctx, size):
        try:
            self.store.begin(size)
            self._unload()
            return 0
        except Exception as exc:  # noqa: BLE001
            _log(f"store erase failed: {exc}")
            return hil.E_STORE_FAILED

    def _store_write(self, _ctx, offset, data, length):
        try:
            self.store.write(offset, ctypes.string_at(data, length))
            return 0
        except Exception as exc:  # noqa: BLE001
            _log(f"store write failed: {exc}")
            return hil.E_STORE_FAILED

    def _store_data(self, _ctx):
        return self.store.address()

    def _store_commit(self, _ctx, size, sha):
        try:
            self.store.commit(size, ctypes.string_at(sha, 32))
            return 0
        except Exception as exc:  # noqa: BLE001
            _log(f"store commit failed: {exc}")
            return hil.E_STORE_FAILED

    def _store_committed(self, _ctx, size_p, sha):
        try:
            found = self.store.committed()
        except Exception as exc:  # noqa: BLE001
            _log(f"store read failed: {exc}")
            return 1
        if found is None:
            return 1
        size_p[0] = found[0]
        ctypes.memmove(sha, found[1], 32)
        return 0

    def _model_load(self, _ctx, model, size, info_p, msg, msg_cap):
        t0 = time.perf_counter()
        try:
            info = self.load_model(ctypes.string_at(model, size))
        except LoadRefused as exc:
            _put_msg(msg, msg_cap, str(exc))
            return exc.code
        except Exception as exc:  # noqa: BLE001
            _put_msg(msg, msg_cap, f"model load failed: {type(exc).__name__}: {exc}")
            return hil.E_LOAD_FAILED
        finally:
            self.last_load_s = time.perf_counter() - t0
        info_p[0].arena_used, info_p[0].input_bytes, info_p[0].output_bytes = info
        return 0

    def _invoke(self, _ctx, inp, in_len, out, out_len, cycles_p, msg, msg_cap):
        # The per-beat path: everything it needs was looked up once at model load.
        if self._set_input is None:
            _put_msg(msg, msg_cap, "no interpreter (model not loaded)")
            return hil.E_INVOKE_FAILED
        try:
            self._set_input(_frombuffer(_string_at(inp, in_len), self._in_dtype).reshape(self._in_shape), 0)
            self._run()
            y = self._get_output(0).tobytes()
        except Exception as exc:  # noqa: BLE001
            _put_msg(msg, msg_cap, f"TFLM invoke failed: {exc}")
            return hil.E_INVOKE_FAILED
        _memmove(out, y, min(len(y), out_len))
        _memmove(cycles_p, self._cycles_le, 8)
        return 0

    def _profile(self, _ctx, inp, in_len, sink, sink_ctx, cycles_p, msg, msg_cap):
        """OP_PROFILE: the inference really runs (so a bad input fails as on a board); the per-op cycles are
        the cost model's estimates for cost_profile, as HELLO's timing_source (static estimate) says."""
        if self._set_input is None:
            _put_msg(msg, msg_cap, "no interpreter (model not loaded)")
            return hil.E_INVOKE_FAILED
        try:
            self._set_input(_frombuffer(_string_at(inp, in_len), self._in_dtype).reshape(self._in_shape), 0)
            self._run()
            emit = hil.OP_SINK(sink)
            for index, code, cycles in self._op_costs:
                if emit(sink_ctx, index, code, min(cycles, 0xFFFFFFFF)) != 0:
                    _put_msg(msg, msg_cap, f"the core refused op {index}")
                    return hil.E_INVOKE_FAILED
        except Exception as exc:  # noqa: BLE001
            _put_msg(msg, msg_cap, f"TFLM profile failed: {type(exc).__name__}: {exc}")
            return hil.E_INVOKE_FAILED
        _memmove(cycles_p, self._cycles_le, 8)
        return 0

    def _health(self, _ctx, out_p):
        """STATS: the virtual board's own figures. It has no task stack to measure (unknown), and its heap
        figures are the profile's RAM budget minus the arena, not a measurement; the host labels them."""
        out = out_p[0]
        out.source = hil.HEALTH_VIRTUAL
        out.stack_high_water = out.stack_size = hil.UNKNOWN_U32
        budget = max(self.profile.ram_bytes - self.profile.arena_bytes, 0)
        out.heap_internal_free = out.heap_internal_min_free = budget
        out.psram_free = self.profile.psram_bytes
        return 0

    def _reset(self, _ctx):
        self.reset_requested = True

    # -- model load -----------------------------------------------------------------------------------
    def load_model(self, data: bytes) -> tuple[int, int, int]:
        """Probe the model in a child process, then build the in-process interpreter; (arena_used, in, out)."""
        from tflite_micro import runtime

        from harness.bench.costmodel import estimate

        self._unload()
        if self.faults is not None:
            self.faults.restart_count()
        arena = self.profile.arena_bytes
        key = (hashlib.sha256(data).digest(), arena)
        report = self._probe_cache.get(key)
        if report is None:
            report = probe_model(data, arena)
            self._probe_cache[key] = report
        if not report.get("ok"):
            raise LoadRefused(int(report.get("code") or hil.E_LOAD_FAILED), str(report.get("error")))
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
        details = interp.get_input_details(0)
        self._in_shape = tuple(int(d) for d in details["shape"])
        self._in_dtype = np.dtype(details["dtype"])
        cost = estimate(data, self.cost_profile)
        self._cycles = int(round(cost.cycles))
        codes = _builtin_codes(data)
        self._op_costs = [(c.index, codes[c.index], int(c.cycles)) for c in cost.per_op]
        self._cycles_le = self._cycles.to_bytes(8, "little")
        self._interp = interp
        self._model_data = data  # the interpreter may point into these bytes rather than copy them
        self._set_input, self._run, self._get_output = interp.set_input, interp.invoke, interp.get_output
        if self.corrupt_op is not None:
            self._corrupt_infer()
        return int(report["arena_used"]), int(report["input_bytes"]), int(report["output_bytes"])

    @property
    def estimated_cycles(self) -> int:
        """The cost model's cycles for one inference of the loaded model on this profile."""
        return self._cycles

    def invoke_bytes(self, data: bytes) -> bytes:
        """One inference of the loaded model on raw input bytes; the output tensor's bytes (the virtual
        MLPerf Tiny device's th_infer, harness/boards/virtual/mlperf_device.py)."""
        self._set_input(_frombuffer(data, self._in_dtype).reshape(self._in_shape), 0)
        self._run()
        return self._get_output(0).tobytes()

    def _unload(self) -> None:
        self._interp = None
        self._model_data = b""
        self._set_input = self._run = self._get_output = None
        self._layers = None

    # -- DUMP and the corrupt-layer fault ------------------------------------------------------------------
    def _layer_runner(self):
        from .layers import LayerRunner

        if self._layers is None:
            try:
                self._layers = LayerRunner(self._model_data, self.profile.arena_bytes, self.corrupt_op)
            except ValueError as exc:  # corrupt-layer:K beyond the model's ops
                raise LoadRefused(hil.E_LOAD_FAILED, f"fault {exc}") from None
        return self._layers

    def _corrupt_infer(self) -> None:
        """corrupt-layer:K: INFER answers from the same corrupted run that DUMP reports."""
        runner = self._layer_runner()
        self._set_input, self._run, self._get_output = runner.set_input, runner.invoke, runner.get_output

    def _dump(self, _ctx, inp, in_len, sink, sink_ctx, msg, msg_cap):
        if self._set_input is None:
            _put_msg(msg, msg_cap, "no interpreter (model not loaded)")
            return hil.E_INVOKE_FAILED
        try:
            x = _frombuffer(_string_at(inp, in_len), self._in_dtype).reshape(self._in_shape)
            tensors = self._layer_runner().dump(x)
            emit = hil.DUMP_SINK(sink)
            for i, (planned, raw) in enumerate(tensors):
                buf = ctypes.create_string_buffer(raw, len(raw)) if raw else None
                tensor = hil.DumpTensor(i, len(tensors), planned.tensor_index, planned.op_index, planned.type,
                                        ctypes.addressof(buf) if buf is not None else None, len(raw))
                if emit(sink_ctx, ctypes.byref(tensor)) != 0:
                    _put_msg(msg, msg_cap, f"the core refused dump tensor {i}")
                    return hil.E_INVOKE_FAILED
        except LoadRefused as exc:
            _put_msg(msg, msg_cap, str(exc))
            return exc.code
        except Exception as exc:  # noqa: BLE001
            _put_msg(msg, msg_cap, f"TFLM dump failed: {type(exc).__name__}: {exc}")
            return hil.E_INVOKE_FAILED
        return 0


def _builtin_codes(data: bytes) -> list[int]:
    """The builtin operator code of every op of the model's first subgraph, in execution order."""
    from harness.bench.model import _schema

    schema = _schema()
    model = schema.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    out = []
    for i in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        out.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
    return out


_string_at = ctypes.string_at
_memmove = ctypes.memmove
_frombuffer = np.frombuffer


def _clock_ns(_ctx, _now=time.perf_counter_ns):
    return _now()


def _put_msg(msg: int, cap: int, text: str) -> None:
    if not msg or cap == 0:
        return
    raw = text.encode("utf-8", "replace")[:cap - 1]
    ctypes.memmove(msg, raw + b"\x00", len(raw) + 1)


def _log(text: str) -> None:
    print(f"virtual board: {text}", file=sys.stderr, flush=True)
