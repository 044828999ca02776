"""The C device core (firmware/core) as a host shared library, bound with ctypes.

`ensure_library()` compiles build/libhilcore.so with the system C compiler whenever it is missing or older
than a core source, so the virtual board always runs the same C code the ESP32 app links. The Structures
below mirror hil_core.h field for field; `Core` owns one hil_core_t and the hook table it points to.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.errors import BuildError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent.parent
CORE_DIR = REPO_ROOT / "firmware" / "core"
CORE_SOURCES = ("hil_frame.c", "hil_sha256.c", "hil_core.c")
CFLAGS = ("-std=c99", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra")

# hil_core.h constants the Python side needs.
PROTO_VERSION = 1
MAX_PAYLOAD = 4096
MAX_WIRE = (4 + MAX_PAYLOAD + 4) + (4 + MAX_PAYLOAD + 4) // 254 + 3
KERNELS_REFERENCE = 1
TIMING_ESTIMATE = 1
TIMING_HOST_CLOCK = 2

E_LOAD_FAILED = 5
E_INVOKE_FAILED = 7
E_STORE_FAILED = 10
E_ARENA_TOO_SMALL = 11


def library_path() -> Path:
    return REPO_ROOT / "build" / "libhilcore.so"


def _core_inputs() -> list[Path]:
    return sorted(CORE_DIR.glob("*.c")) + sorted(CORE_DIR.glob("*.h"))


def _is_stale(lib: Path) -> bool:
    if not lib.is_file():
        return True
    built = lib.stat().st_mtime_ns
    return any(src.stat().st_mtime_ns > built for src in _core_inputs())


def ensure_library() -> Path:
    """Build build/libhilcore.so from firmware/core if it is missing or out of date; return its path.

    The compiler writes a private temporary file that is renamed into place, so two processes building
    at once both end with a complete library (the last rename wins, both are the same code).
    """
    lib = library_path()
    if not _is_stale(lib):
        return lib
    missing = [name for name in CORE_SOURCES if not (CORE_DIR / name).is_file()]
    if missing:
        raise BuildError(f"device core source firmware/core/{missing[0]} is missing",
                         "restore firmware/core from the repository", code="HIL705")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise BuildError(f"no C compiler '{cc}' to build the virtual board's device core",
                         "install gcc (apt-get install gcc) or set CC to a C compiler", code="HIL706")
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libhilcore-", suffix=".so", dir=lib.parent)
    os.close(fd)
    cmd = [cc, *CFLAGS, "-o", tmp, *(str(CORE_DIR / name) for name in CORE_SOURCES)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip())
            raise BuildError(f"compiling the device core failed: {first[:300]}",
                             f"fix firmware/core, or run by hand: {' '.join(cmd)}", code="HIL707")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


# ---------------------------------------------------------------------------------------------------
# Mirrors of hil_core.h. Pointers to bytes are c_void_p so the hooks get plain ints: cheaper than
# POINTER objects on the per-beat path, and read/written with ctypes.string_at / ctypes.memmove.

class ModelInfo(ctypes.Structure):
    _fields_ = [("arena_used", ctypes.c_uint32),
                ("input_bytes", ctypes.c_uint32),
                ("output_bytes", ctypes.c_uint32)]


class DeviceInfo(ctypes.Structure):
    _fields_ = [("fw_version", ctypes.c_char_p),
                ("chip", ctypes.c_char_p),
                ("build_hash", ctypes.c_char_p),
                ("cpu_mhz", ctypes.c_uint16),
                ("kernel_mode", ctypes.c_uint8),
                ("timing_source", ctypes.c_uint8),
                ("arena_size", ctypes.c_uint32),
                ("store_capacity", ctypes.c_uint32),
                ("rx_buffer", ctypes.c_uint32),   # v1.1
                ("reset_ms", ctypes.c_uint16)]


_vp = ctypes.c_void_p
_u32 = ctypes.c_uint32
WRITE = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, _u32)
STORE_BEGIN = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32)
STORE_WRITE = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _vp, _u32)
STORE_DATA = ctypes.CFUNCTYPE(_vp, _vp)
STORE_COMMIT = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _vp)
STORE_COMMITTED = ctypes.CFUNCTYPE(ctypes.c_int, _vp, ctypes.POINTER(_u32), _vp)
MODEL_LOAD = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, _u32, ctypes.POINTER(ModelInfo), _vp, _u32)
INVOKE = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, _u32, _vp, _u32, _vp, _vp, _u32)
CLOCK_NS = ctypes.CFUNCTYPE(ctypes.c_uint64, _vp)
RESET = ctypes.CFUNCTYPE(None, _vp)


class DumpTensor(ctypes.Structure):
    """hil_dump_tensor_t: one tensor handed to the core's dump sink."""

    _fields_ = [("index", ctypes.c_uint16),
                ("count", ctypes.c_uint16),
                ("tensor_index", ctypes.c_uint16),
                ("op_index", ctypes.c_uint16),
                ("type", ctypes.c_uint8),
                ("data", _vp),
                ("bytes", _u32)]


DUMP_SINK = ctypes.CFUNCTYPE(ctypes.c_int, _vp, ctypes.POINTER(DumpTensor))
# The sink arrives as a plain pointer; the platform casts it to DUMP_SINK to call the core back.
DUMP = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, _u32, _vp, _vp, _vp, _u32)
DUMP_INPUT_OP = 0xFFFF


# OP_PROFILE (hil_op_sink_t, profile hook) and STATS (hil_health_t, health hook): docs/protocol.md §12-13.
OP_SINK = ctypes.CFUNCTYPE(ctypes.c_int, _vp, ctypes.c_uint16, ctypes.c_uint16, _u32)
PROFILE = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, _u32, _vp, _vp, _vp, _vp, _u32)
UNKNOWN_U32 = 0xFFFFFFFF
HEALTH_VIRTUAL = 1


class Health(ctypes.Structure):
    _fields_ = [("source", ctypes.c_uint8),
                ("stack_high_water", _u32),
                ("stack_size", _u32),
                ("heap_internal_free", _u32),
                ("heap_internal_min_free", _u32),
                ("psram_free", _u32)]


HEALTH = ctypes.CFUNCTYPE(ctypes.c_int, _vp, ctypes.POINTER(Health))


class Port(ctypes.Structure):
    _fields_ = [("ctx", _vp),
                ("info", DeviceInfo),
                ("write", WRITE),
                ("store_begin", STORE_BEGIN),
                ("store_write", STORE_WRITE),
                ("store_data", STORE_DATA),
                ("store_commit", STORE_COMMIT),
                ("store_committed", STORE_COMMITTED),
                ("model_load", MODEL_LOAD),
                ("invoke", INVOKE),
                ("clock_ns", CLOCK_NS),
                ("reset", RESET),
                ("dump", DUMP),
                ("profile", PROFILE),
                ("health", HEALTH)]  # last in hil_port_t, like in hil_core.h


HOOKS = {"write": WRITE, "store_begin": STORE_BEGIN, "store_write": STORE_WRITE, "store_data": STORE_DATA,
         "store_commit": STORE_COMMIT, "store_committed": STORE_COMMITTED, "model_load": MODEL_LOAD,
         "invoke": INVOKE, "clock_ns": CLOCK_NS, "reset": RESET, "dump": DUMP, "profile": PROFILE,
         "health": HEALTH}


def load_library() -> ctypes.CDLL:
    # PyDLL keeps the GIL across hil_core_feed: every hook is Python, so releasing it for the call only to
    # take it back in each callback would cost about a microsecond per hook call, several per beat.
    lib = ctypes.PyDLL(str(ensure_library()))
    lib.hil_core_init.argtypes = [_vp, ctypes.POINTER(Port)]
    lib.hil_core_init.restype = None
    lib.hil_core_feed.argtypes = [_vp, ctypes.c_char_p, _u32]
    lib.hil_core_feed.restype = None
    lib.hil_core_sizeof.argtypes = []
    lib.hil_core_sizeof.restype = ctypes.c_size_t
    lib.hil_crc32.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.hil_crc32.restype = ctypes.c_uint32
    lib.hil_sha256.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.hil_sha256.restype = None
    lib.hil_frame_encode.argtypes = [ctypes.c_uint8, ctypes.c_uint16, ctypes.c_char_p, ctypes.c_size_t,
                                     ctypes.c_char_p, ctypes.c_size_t]
    lib.hil_frame_encode.restype = ctypes.c_size_t
    return lib


class Core:
    """One device core instance: its hil_core_t storage, its hook table and the Python hooks behind it.

    `hooks` maps each hil_port_t hook name to a Python callable with the C signature (pointers as ints).
    The CFUNCTYPE wrappers and the strings of the device info are kept on the instance: ctypes does not
    own them, and the C side would call freed memory if they were collected.
    """

    def __init__(self, info: dict, hooks: dict):
        self.lib = load_library()
        self._strings = {key: str(info[key]).encode()[:63] for key in ("fw_version", "chip", "build_hash")}
        # A hook the platform does not supply stays NULL, which the core handles (e.g. DUMP refused).
        self._callbacks = {name: HOOKS[name](hooks[name]) for name in HOOKS if hooks.get(name) is not None}
        self.port = Port()
        self.port.ctx = None
        self.port.info = DeviceInfo(self._strings["fw_version"], self._strings["chip"],
                                    self._strings["build_hash"], int(info["cpu_mhz"]), int(info["kernel_mode"]),
                                    int(info["timing_source"]), int(info["arena_size"]),
                                    int(info["store_capacity"]), int(info.get("rx_buffer", 0)),
                                    int(info.get("reset_ms", 0)))
        for name, callback in self._callbacks.items():
            setattr(self.port, name, callback)
        # uint64 words: the storage is 8-byte aligned like the static hil_core_t on the device.
        size = int(self.lib.hil_core_sizeof())
        self._storage = (ctypes.c_uint64 * ((size + 7) // 8))()
        self._core = ctypes.addressof(self._storage)
        self._feed = self.lib.hil_core_feed

    def init(self) -> None:
        """hil_core_init: reset the protocol state and load the committed model, if any."""
        self.lib.hil_core_init(self._core, ctypes.byref(self.port))

    def feed(self, data: bytes) -> None:
        self._feed(self._core, data, len(data))

    def crc32(self, data: bytes) -> int:
        return int(self.lib.hil_crc32(data, len(data)))

    def sha256(self, data: bytes) -> bytes:
        out = ctypes.create_string_buffer(32)
        self.lib.hil_sha256(data, len(data), out)
        return out.raw

    def frame_encode(self, ftype: int, seq: int, payload: bytes) -> bytes:
        out = ctypes.create_string_buffer(MAX_WIRE)
        n = self.lib.hil_frame_encode(ftype, seq & 0xFFFF, payload, len(payload), out, MAX_WIRE)
        if n == 0:
            raise ValueError(f"payload of {len(payload)} bytes does not fit in a frame")
        return out.raw[:n]
