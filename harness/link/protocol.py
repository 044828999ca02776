"""HIL wire protocol version 1.1 (docs/protocol.md): frame codec and message payloads. No I/O here.

Version 1.1 is negotiated in HELLO (the host sends the highest minor version it speaks; a v1.1 device
answers with an extension after HELLO_ACK's strings); a v1 board answers the v1 layout and keeps working.

A frame on the wire is `0x00 | COBS(body) | 0x00`, body = `ver u8 | type u8 | seq u16 | payload | crc32`.
`encode_frame` builds one, `FrameDecoder` finds frames in a byte stream that may also carry boot-ROM and
IDF log text, and the dataclasses below turn payloads into named fields and back.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from cobs import cobs

from ..errors import ProtocolError

PROTO_VERSION = 1
PROTO_MINOR = 1  # highest minor version this harness speaks
MAX_PAYLOAD = 4096
HEADER_BYTES = 4
CRC_BYTES = 4
NAK_SEQ = 0xFFFF
MESSAGE_MAX = 200


class MsgType(IntEnum):
    HELLO = 0x01
    MODEL_BEGIN = 0x10
    MODEL_CHUNK = 0x11
    MODEL_END = 0x12
    INFER = 0x20
    RESET = 0x30
    DUMP = 0x40
    OP_PROFILE = 0x50  # v1.1 addition (§12)
    STATS = 0x51       # v1.1 addition (§13)
    HELLO_ACK = 0x81
    MODEL_BEGIN_ACK = 0x90
    CHUNK_ACK = 0x91
    MODEL_INFO = 0x92
    RESULT = 0xA0
    DUMP_TENSOR = 0xA1
    DUMP_END = 0xA2
    RESET_ACK = 0xB0
    OP_TIMES = 0xC0
    STATS_ACK = 0xC1
    NAK = 0xE0
    ERROR = 0xEE


class NakReason(IntEnum):
    BAD_COBS = 1
    BAD_LENGTH = 2
    BAD_VERSION = 3
    BAD_CRC = 4


class DeviceErrorCode(IntEnum):
    BAD_STATE = 1
    TOO_LARGE = 2
    SHA_MISMATCH = 3
    BAD_OFFSET = 4
    LOAD_FAILED = 5
    BAD_INPUT_SIZE = 6
    INVOKE_FAILED = 7
    UNKNOWN_TYPE = 8
    BAD_LENGTH = 9
    STORE_FAILED = 10
    ARENA_TOO_SMALL = 11


class ModelState(IntEnum):
    NONE = 0
    LOADED = 1
    LOAD_FAILED = 2


KERNEL_MODES = {0: "unknown", 1: "reference", 2: "esp-nn"}
TIMING_SOURCES = {0: "device_cycles", 1: "static_estimate", 2: "host_clock"}

RESULT_FLAG_REPEAT = 0x01


def type_name(ftype: int) -> str:
    """`HELLO_ACK` for 0x81; `0x7f` for a type this version does not define."""
    try:
        return MsgType(ftype).name
    except ValueError:
        return f"0x{ftype:02x}"


def max_wire_bytes(max_payload: int = MAX_PAYLOAD) -> int:
    """Longest wire frame for a payload limit: COBS adds one byte per 254 plus one, and two delimiters."""
    body = HEADER_BYTES + max_payload + CRC_BYTES
    return body + body // 254 + 3


# ---------------------------------------------------------------------------------------------------
# Frames

@dataclass(slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes

    @property
    def name(self) -> str:
        return type_name(self.type)


def encode_frame(type: int, seq: int, payload: bytes = b"") -> bytes:  # noqa: A002 - the spec's field name
    """The whole wire frame, both delimiting zeros included."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the protocol limit of {MAX_PAYLOAD}",
                            "split the data (model chunks) or check the model's tensor sizes", code="HIL304")
    head = struct.pack("<BBH", PROTO_VERSION, type, seq & 0xFFFF) + payload
    body = head + struct.pack("<I", zlib.crc32(head))
    return b"\x00" + cobs.encode(body) + b"\x00"


class FrameDecoder:
    """Finds frames in a byte stream, in pieces of any size.

    Every maximal run of non-zero bytes is one candidate (docs/protocol.md). Counters:
    `frames_ok` candidates that were valid frames; `bad_frames` candidates dropped (COBS, length, version
    or CRC); `garbage_bytes` bytes of dropped candidates (log text, noise, corrupt frames);
    `bytes_in` every byte fed, so a caller can tell "nothing arrived" from "only garbage arrived" even
    while a long text line is still waiting for its terminating zero.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self.max_body = HEADER_BYTES + max_payload + CRC_BYTES
        # The COBS text of the longest body; a longer run cannot be a frame, so it is dropped without
        # waiting for its zero (keeps memory bounded on a stream of log text).
        self._max_candidate = max_wire_bytes(max_payload) - 2
        self._tail = b""
        self._overflow = False
        self.frames_ok = 0
        self.bad_frames = 0
        self.garbage_bytes = 0
        self.bytes_in = 0

    @property
    def pending(self) -> int:
        """Bytes received after the last zero, not yet judged."""
        return len(self._tail)

    def feed(self, data: bytes) -> list[Frame]:
        self.bytes_in += len(data)
        parts = data.split(b"\x00")
        if len(parts) == 1:
            self._extend(data)
            return []
        frames: list[Frame] = []
        # The first part ends the run carried over from the previous call.
        if self._overflow:
            self.garbage_bytes += len(parts[0])
            self.bad_frames += 1
        else:
            first = self._tail + parts[0] if self._tail else parts[0]
            if first:
                frame = self._decode(first)
                if frame is not None:
                    frames.append(frame)
        for part in parts[1:-1]:
            if part:
                frame = self._decode(part)
                if frame is not None:
                    frames.append(frame)
        self._tail = b""
        self._overflow = False
        self._extend(parts[-1])
        return frames

    def _extend(self, run: bytes) -> None:
        """Add bytes to the unterminated run; a run too long to be a frame is dropped at once."""
        if self._overflow:
            self.garbage_bytes += len(run)
            return
        self._tail = self._tail + run if self._tail else run
        if len(self._tail) > self._max_candidate:
            self.garbage_bytes += len(self._tail)
            self._tail = b""
            self._overflow = True

    def _decode(self, candidate: bytes) -> Frame | None:
        try:
            body = cobs.decode(candidate)
        except cobs.DecodeError:
            body = None
        if (body is None or not (HEADER_BYTES + CRC_BYTES <= len(body) <= self.max_body)
                or body[0] != PROTO_VERSION
                or zlib.crc32(body[:-CRC_BYTES]) != int.from_bytes(body[-CRC_BYTES:], "little")):
            self.bad_frames += 1
            self.garbage_bytes += len(candidate)
            return None
        self.frames_ok += 1
        return Frame(body[1], body[2] | (body[3] << 8), body[HEADER_BYTES:-CRC_BYTES])


# ---------------------------------------------------------------------------------------------------
# Payloads

def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise ProtocolError(f"{what} payload is {len(payload)} bytes, needs at least {size}",
                            "the board's firmware and this harness disagree on the protocol: reflash the "
                            "firmware built from this repository", code="HIL303")


def _name_of(table: dict[int, str], value: int) -> str:
    return table.get(value, f"unknown({value})")


def _code_of(table: dict[int, str], name: str) -> int:
    for code, label in table.items():
        if label == name:
            return code
    return 0


_HELLO_FIXED = struct.Struct("<BBBBHHIII32sI")
_HELLO_EXT = struct.Struct("<BIH")  # v1.1, after the strings: proto_minor, rx_buffer, reset_ms


@dataclass
class Hello:
    """HELLO_ACK: what the board is and what it holds. The last three fields are the v1.1 extension; a v1
    board leaves them 0 (`protocol` then says "hil/1")."""

    proto_version: int
    kernel_mode: str
    timing_source: str
    model_state: int
    cpu_mhz: int
    max_payload: int
    arena_size: int
    store_capacity: int
    model_size: int
    model_sha256: str
    arena_used: int
    fw_version: str
    chip: str
    build_hash: str
    proto_minor: int = 0
    rx_buffer: int = 0
    reset_ms: int = 0

    @property
    def model_loaded(self) -> bool:
        return self.model_state == ModelState.LOADED

    @property
    def protocol(self) -> str:
        """The version this session speaks, as results record it: "hil/1.1" or "hil/1"."""
        return f"hil/{self.proto_version}.{self.proto_minor}" if self.proto_minor else f"hil/{self.proto_version}"

    @classmethod
    def parse(cls, payload: bytes) -> Hello:
        _need(payload, _HELLO_FIXED.size, "HELLO_ACK")
        (ver, kernel, timing, state, mhz, max_payload, arena, capacity, size, sha,
         used) = _HELLO_FIXED.unpack_from(payload)
        strings = []
        pos = _HELLO_FIXED.size
        for field_name in ("fw_version", "chip", "build_hash"):
            _need(payload, pos + 1, f"HELLO_ACK ({field_name} length)")
            n = payload[pos]
            _need(payload, pos + 1 + n, f"HELLO_ACK ({field_name})")
            strings.append(payload[pos + 1:pos + 1 + n].decode("utf-8", "replace"))
            pos += 1 + n
        ext = (0, 0, 0)
        if len(payload) > pos:  # v1.1 extension; bytes after it belong to later minor versions: ignored
            _need(payload, pos + _HELLO_EXT.size, "HELLO_ACK (v1.1 extension)")
            ext = _HELLO_EXT.unpack_from(payload, pos)
        return cls(ver, _name_of(KERNEL_MODES, kernel), _name_of(TIMING_SOURCES, timing), state, mhz,
                   max_payload, arena, capacity, size, sha.hex(), used, *strings, *ext)

    def pack(self) -> bytes:
        fixed = _HELLO_FIXED.pack(self.proto_version, _code_of(KERNEL_MODES, self.kernel_mode),
                                  _code_of(TIMING_SOURCES, self.timing_source), self.model_state, self.cpu_mhz,
                                  self.max_payload, self.arena_size, self.store_capacity, self.model_size,
                                  bytes.fromhex(self.model_sha256), self.arena_used)
        out = [fixed]
        for text in (self.fw_version, self.chip, self.build_hash):
            raw = text.encode()[:255]
            out.append(bytes([len(raw)]) + raw)
        if self.proto_minor:
            out.append(_HELLO_EXT.pack(self.proto_minor, self.rx_buffer, self.reset_ms))
        return b"".join(out)


_MODEL_INFO = struct.Struct("<IIII32s")


@dataclass
class ModelInfo:
    """MODEL_INFO after an upload. When the upload was skipped it is built from HELLO_ACK, which does not
    report tensor sizes: then `input_bytes` and `output_bytes` are None (take them from the Model)."""

    arena_used: int
    input_bytes: int | None
    output_bytes: int | None
    model_size: int
    sha256: str

    @classmethod
    def parse(cls, payload: bytes) -> ModelInfo:
        _need(payload, _MODEL_INFO.size, "MODEL_INFO")
        used, n_in, n_out, size, sha = _MODEL_INFO.unpack_from(payload)
        return cls(used, n_in, n_out, size, sha.hex())

    @classmethod
    def from_hello(cls, hello: Hello) -> ModelInfo:
        return cls(hello.arena_used, None, None, hello.model_size, hello.model_sha256)

    def pack(self) -> bytes:
        return _MODEL_INFO.pack(self.arena_used, self.input_bytes or 0, self.output_bytes or 0, self.model_size,
                                bytes.fromhex(self.sha256))


_RESULT_HEAD = struct.Struct("<B3xQQ")


@dataclass(slots=True)
class Inference:
    """RESULT: one beat's output. `cycles` is what HELLO's timing_source says (device counter or static
    estimate); `wall_ns` is the platform clock around the same invoke."""

    seq: int
    flags: int
    cycles: int
    wall_ns: int
    output: bytes

    @property
    def repeat(self) -> bool:
        """The device had already answered this seq since the last HELLO (the host resent it)."""
        return bool(self.flags & RESULT_FLAG_REPEAT)

    @classmethod
    def parse(cls, payload: bytes, seq: int = 0) -> Inference:
        _need(payload, _RESULT_HEAD.size, "RESULT")
        flags, cycles, wall_ns = _RESULT_HEAD.unpack_from(payload)
        return cls(seq, flags, cycles, wall_ns, payload[_RESULT_HEAD.size:])

    def pack(self) -> bytes:
        return _RESULT_HEAD.pack(self.flags, self.cycles, self.wall_ns) + self.output


_ERROR_HEAD = struct.Struct("<HB")


@dataclass
class DeviceError:
    """ERROR: the device refused a request."""

    code: int
    request_type: int
    message: str

    @property
    def name(self) -> str:
        try:
            return DeviceErrorCode(self.code).name
        except ValueError:
            return f"code {self.code}"

    @classmethod
    def parse(cls, payload: bytes) -> DeviceError:
        _need(payload, _ERROR_HEAD.size, "ERROR")
        code, request_type = _ERROR_HEAD.unpack_from(payload)
        return cls(code, request_type, payload[_ERROR_HEAD.size:].decode("utf-8", "replace"))

    def pack(self) -> bytes:
        return _ERROR_HEAD.pack(self.code, self.request_type) + self.message.encode()[:MESSAGE_MAX]


# DUMP (docs/protocol.md): DUMP_TENSOR chunks, reassembled into DumpedTensor, then DUMP_END.

DUMP_INPUT_OP = 0xFFFF  # op_index of the model's input tensor: no op produced it
# TfLiteType codes (tensorflow/lite/core/c/c_api_types.h) → numpy dtype names.
TFLITE_TYPES = {1: "float32", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
                10: "float16", 16: "uint32", 17: "uint16"}
_DUMP_HEAD = struct.Struct("<HHHHBBII")
DUMP_HEADER_BYTES = _DUMP_HEAD.size  # 18


@dataclass(slots=True)
class DumpChunk:
    """One DUMP_TENSOR frame: part of tensor `index` of `count`, `data` at `offset` of its `total` bytes."""

    index: int
    count: int
    tensor_index: int
    op_index: int
    type: int  # noqa: A003 - TfLiteType code, as on the wire
    total: int
    offset: int
    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> DumpChunk:
        _need(payload, _DUMP_HEAD.size, "DUMP_TENSOR")
        index, count, tensor, op, ttype, _reserved, total, offset = _DUMP_HEAD.unpack_from(payload)
        data = payload[_DUMP_HEAD.size:]
        if index >= count or offset + len(data) > total:
            raise ProtocolError(f"DUMP_TENSOR {index} of {count} carries bytes {offset}..{offset + len(data)} of a "
                                f"{total}-byte tensor", "reflash the firmware built from this checkout",
                                code="HIL303")
        return cls(index, count, tensor, op, ttype, total, offset, data)

    def pack(self) -> bytes:
        return _DUMP_HEAD.pack(self.index, self.count, self.tensor_index, self.op_index, self.type, 0,
                               self.total, self.offset) + self.data


@dataclass(slots=True)
class DumpedTensor:
    """One whole tensor of a device dump, in dump order (the input first, then each op's outputs)."""

    index: int
    tensor_index: int
    op_index: int  # DUMP_INPUT_OP for the model input
    type: int  # noqa: A003 - TfLiteType code
    data: bytes

    @property
    def dtype(self) -> str:
        """numpy dtype name of the tensor's elements, or `tflite_type_<n>` for a type we do not map."""
        return TFLITE_TYPES.get(self.type, f"tflite_type_{self.type}")


class DumpAssembler:
    """Collects DUMP_TENSOR chunks of one dump (any order, repeats harmless) into DumpedTensor objects."""

    def __init__(self, max_total: int = 16 << 20) -> None:
        # A tensor can never exceed the device's arena; the cap keeps one bad header (valid CRC, buggy
        # firmware) from making the host allocate gigabytes.
        self.max_total = max_total
        self.count: int | None = None
        self._meta: dict[int, tuple[int, int, int, int]] = {}  # index → (tensor, op, type, total)
        self._buf: dict[int, bytearray] = {}
        # index → byte ranges received, merged: a tensor is complete when they cover [0, total) (§7.4);
        # adding up chunk sizes would let a repeated or overlapping chunk stand in for a missing one.
        self._covered: dict[int, list[tuple[int, int]]] = {}

    def add(self, chunk: DumpChunk) -> None:
        if chunk.total > self.max_total or chunk.offset + len(chunk.data) > chunk.total:
            raise ProtocolError(f"DUMP_TENSOR {chunk.index} claims {chunk.total} bytes (chunk at {chunk.offset}), "
                                f"more than the device's arena of {self.max_total}",
                                "reflash the firmware built from this checkout", code="HIL303")
        if self.count is None:
            self.count = chunk.count
        elif chunk.count != self.count:
            raise ProtocolError(f"DUMP_TENSOR says {chunk.count} tensors, an earlier one said {self.count}",
                                "reflash the firmware built from this checkout", code="HIL303")
        meta = (chunk.tensor_index, chunk.op_index, chunk.type, chunk.total)
        if self._meta.setdefault(chunk.index, meta) != meta:
            raise ProtocolError(f"DUMP_TENSOR {chunk.index} changed its header between chunks",
                                "reflash the firmware built from this checkout", code="HIL303")
        buf = self._buf.setdefault(chunk.index, bytearray(chunk.total))
        buf[chunk.offset:chunk.offset + len(chunk.data)] = chunk.data
        self._covered[chunk.index] = _merge(self._covered.get(chunk.index, []),
                                            (chunk.offset, chunk.offset + len(chunk.data)))

    def complete(self, count: int) -> bool:
        """True when tensors 0..count-1 have all their bytes."""
        if self.count not in (None, count):
            return False
        return all(i in self._meta and self._covers(i) for i in range(count))

    def _covers(self, index: int) -> bool:
        total = self._meta[index][3]
        ranges = self._covered.get(index, [])
        return total == 0 or (len(ranges) == 1 and ranges[0] == (0, total))

    def tensors(self) -> list[DumpedTensor]:
        out = []
        for i in sorted(self._meta):
            tensor, op, ttype, _total = self._meta[i]
            out.append(DumpedTensor(i, tensor, op, ttype, bytes(self._buf[i])))
        return out


def _merge(ranges: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping byte ranges with `new` added (touching ranges join)."""
    if new[0] >= new[1]:
        return ranges
    out: list[tuple[int, int]] = []
    lo, hi = new
    for a, b in ranges:
        if b < lo or a > hi:
            out.append((a, b))
        else:
            lo, hi = min(lo, a), max(hi, b)
    out.append((lo, hi))
    return sorted(out)


def parse_dump_end(payload: bytes) -> int:
    """DUMP_END → the number of tensors the device sent."""
    _need(payload, 2, "DUMP_END")
    return int.from_bytes(payload[:2], "little")


def parse_chunk_ack(payload: bytes) -> int:
    """CHUNK_ACK → next_offset (bytes the device has stored so far)."""
    _need(payload, 4, "CHUNK_ACK")
    return int.from_bytes(payload[:4], "little")


def parse_nak(payload: bytes) -> int:
    _need(payload, 1, "NAK")
    return payload[0]


# ---------------------------------------------------------------------------------------------------
# Request payloads (host → device); the Board applies the seq.

def hello(minor: int = PROTO_MINOR) -> bytes:
    """HELLO: v1.1 sends the highest minor version the host speaks; minor 0 is the empty v1 HELLO."""
    return bytes([minor]) if minor else b""


def model_begin(size: int, sha256: bytes) -> bytes:
    if len(sha256) != 32:
        raise ValueError("sha256 must be the 32-byte digest")
    return struct.pack("<I", size) + sha256


def model_chunk(offset: int, data: bytes) -> bytes:
    return struct.pack("<I", offset) + data


def model_end() -> bytes:
    return b""


def infer(input: bytes) -> bytes:  # noqa: A002 - the tensor is the model's input
    return bytes(input)


def reset() -> bytes:
    return b""


def dump(input: bytes) -> bytes:  # noqa: A002 - the tensor is the model's input
    return bytes(input)


# Response payloads (device → host), for test peers and tools.

def chunk_ack(next_offset: int) -> bytes:
    return struct.pack("<I", next_offset)


def nak(reason: int) -> bytes:
    return bytes([reason])


def dump_end(count: int) -> bytes:
    return struct.pack("<H", count)


# OP_PROFILE → OP_TIMES (§12) and STATS → STATS_ACK (§13), v1.1 additions.

_OP_TIMES_HEAD = struct.Struct("<HHQ")
_OP_TIME = struct.Struct("<HHI")
UNKNOWN_U32 = 0xFFFFFFFF
HEALTH_SOURCES = {0: "device", 1: "virtual board"}


@dataclass
class OpTime:
    index: int
    builtin: int  # TFLite BuiltinOperator code
    cycles: int


@dataclass
class OpTimes:
    """OP_TIMES: each op's cycles for one inference, in execution order, and the whole invoke's."""

    invoke_cycles: int
    ops: list[OpTime]

    @classmethod
    def parse(cls, payload: bytes) -> OpTimes:
        _need(payload, _OP_TIMES_HEAD.size, "OP_TIMES")
        count, _reserved, cycles = _OP_TIMES_HEAD.unpack_from(payload)
        _need(payload, _OP_TIMES_HEAD.size + count * _OP_TIME.size, "OP_TIMES")
        ops = [OpTime(*_OP_TIME.unpack_from(payload, _OP_TIMES_HEAD.size + i * _OP_TIME.size)) for i in range(count)]
        return cls(cycles, ops)

    def pack(self) -> bytes:
        return _OP_TIMES_HEAD.pack(len(self.ops), 0, self.invoke_cycles) + b"".join(
            _OP_TIME.pack(op.index, op.builtin, op.cycles) for op in self.ops)


_STATS = struct.Struct("<B3xIIIIIII")


def _known(value: int) -> int | None:
    return None if value == UNKNOWN_U32 else value


@dataclass
class Health:
    """STATS_ACK: the device's health figures now. None where the device cannot measure one."""

    source: str  # "device" | "virtual board"
    stack_high_water: int | None  # bytes of the bench task's stack never used so far
    stack_size: int | None
    heap_internal_free: int | None
    heap_internal_min_free: int | None
    psram_free: int | None
    arena_used: int
    arena_size: int

    @classmethod
    def parse(cls, payload: bytes) -> Health:
        _need(payload, _STATS.size, "STATS_ACK")
        source, stack, stack_size, heap, heap_min, psram, used, size = _STATS.unpack_from(payload)
        return cls(HEALTH_SOURCES.get(source, f"unknown({source})"), _known(stack), _known(stack_size),
                   _known(heap), _known(heap_min), _known(psram), used, size)

    def pack(self) -> bytes:
        def raw(v):
            return UNKNOWN_U32 if v is None else v
        return _STATS.pack(_code_of(HEALTH_SOURCES, self.source), raw(self.stack_high_water), raw(self.stack_size),
                           raw(self.heap_internal_free), raw(self.heap_internal_min_free), raw(self.psram_free),
                           self.arena_used, self.arena_size)


def op_profile(input: bytes) -> bytes:  # noqa: A002 - the tensor is the model's input
    return bytes(input)


def stats() -> bytes:
    return b""
