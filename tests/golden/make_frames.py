"""Writes tests/golden/frames.txt: the golden wire vectors both protocol implementations are tested on.

Run once when the protocol changes (`python tests/golden/make_frames.py`); the output is committed. It
builds frames from the spec with independent parts (the `cobs` package and zlib), not with
harness/protocol.py or the C core, so a shared misreading of the spec shows up as a failing test.
"""

import hashlib
import struct
import zlib
from pathlib import Path

from cobs import cobs


def wire(ftype: int, seq: int, payload: bytes, ver: int = 1) -> bytes:
    body = struct.pack("<BBH", ver, ftype, seq) + payload
    body += struct.pack("<I", zlib.crc32(body))
    return b"\x00" + cobs.encode(body) + b"\x00"


def hello_ack() -> bytes:
    sha = hashlib.sha256(b"model").digest()
    fixed = struct.pack("<BBBBHHIII", 1, 2, 0, 1, 240, 4096, 131072, 2097152, 5) + sha + struct.pack("<I", 12345)
    strings = b"".join(bytes([len(s)]) + s for s in (b"0.1.0", b"esp32s3", b"deadbeef"))
    return fixed + strings


DUMP_INPUT = bytes((i * 3 + 1) & 0xFF for i in range(187))


def dump_tensor(index: int, count: int, tensor: int, op: int, ttype: int, total: int, offset: int,
                data: bytes) -> bytes:
    return struct.pack("<HHHHBBII", index, count, tensor, op, ttype, 0, total, offset) + data


VECTORS = [
    ("hello", 0x01, 0, b""),
    ("hello_seq_max", 0x01, 0xFFFF, b""),
    ("hello_ack", 0x81, 0, hello_ack()),
    ("model_begin", 0x10, 1, struct.pack("<I", 5) + hashlib.sha256(b"model").digest()),
    ("model_chunk", 0x11, 2, struct.pack("<I", 0) + b"model"),
    ("chunk_ack", 0x91, 2, struct.pack("<I", 5)),
    ("model_end", 0x12, 3, b""),
    ("model_info", 0x92, 3, struct.pack("<IIII", 5120, 187, 5, 5) + hashlib.sha256(b"model").digest()),
    ("infer_zeros", 0x20, 4, bytes(187)),
    ("infer_ramp", 0x20, 5, bytes((i * 7) & 0xFF for i in range(187))),
    ("infer_long_run", 0x20, 6, bytes([0x55] * 600)),
    ("result", 0xA0, 4, struct.pack("<B3xQQ", 0, 1234567, 89000) + bytes([0x80, 0x7F, 0x00, 0x01, 0xFF])),
    ("result_repeat", 0xA0, 5, struct.pack("<B3xQQ", 1, 2**40 + 3, 0) + bytes([1, 2, 3, 4, 5])),
    ("reset", 0x30, 7, b""),
    ("reset_ack", 0xB0, 7, b""),
    ("nak_crc", 0xE0, 0xFFFF, bytes([4])),
    ("error_load", 0xEE, 3, struct.pack("<HB", 5, 0x12) + b"op CONV_3D is not in the firmware's op resolver"),
    # A two-tensor dump: the model input (no producing op: 0xFFFF) and op 0's 6-byte INT8 output.
    ("dump", 0x40, 9, DUMP_INPUT),
    ("dump_tensor_input", 0xA1, 9, dump_tensor(0, 2, 0, 0xFFFF, 9, 187, 0, DUMP_INPUT)),
    ("dump_tensor", 0xA1, 9, dump_tensor(1, 2, 15, 0, 9, 6, 0, bytes([0x01, 0x00, 0x80, 0x7F, 0xFF, 0x00]))),
    ("dump_end", 0xA2, 9, struct.pack("<H", 2)),
    ("max_payload", 0x11, 8, struct.pack("<I", 4096) + bytes((i % 255) + 1 for i in range(4092))),
]


def main() -> None:
    out = Path(__file__).with_name("frames.txt")
    lines = ["# name type seq payload_hex wire_hex  (payload '-' = empty); made by make_frames.py"]
    for name, ftype, seq, payload in VECTORS:
        lines.append(f"{name} {ftype:02x} {seq} {payload.hex() or '-'} {wire(ftype, seq, payload).hex()}")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
