"""Writes tests/golden/frames.txt and rejects.txt: the golden wire vectors both protocol implementations
(harness/link/protocol.py and the C core) are tested on.

frames.txt holds valid frames: `name type seq payload_hex wire_hex`; names starting with `accept_` are
decode-only (a wire form receivers must accept but encoders do not produce). rejects.txt holds candidates
a receiver must drop, and the NAK reason a device answers them with: `name nak_reason wire_hex`.

Run once when the protocol changes (`python tests/golden/make_frames.py`); the output is committed. It
builds frames from the spec with independent parts (the `cobs` package and zlib), not with
harness/link/protocol.py or the C core, so a shared misreading of the spec shows up as a failing test.
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


# v1.1 additions --------------------------------------------------------------------------------------

def hello_ack_v11() -> bytes:
    return hello_ack() + struct.pack("<BIH", 1, 16384, 3000)


def no_zero_payload(size: int, ftype: int, seq: int) -> bytes:
    """A payload of `size` non-zero bytes whose whole body (header, payload, CRC) has no zero byte either,
    so the body is one COBS run: the case where a 254-byte block ends exactly at the end of the body."""
    for salt in range(1, 256):
        payload = bytes(((i * 13 + salt) % 255) + 1 for i in range(size))
        body = struct.pack("<BBH", 1, ftype, seq) + payload
        body += struct.pack("<I", zlib.crc32(body))
        if 0 not in body:
            return payload
    raise AssertionError("no salt gives a zero-free CRC")


def dump_pattern(n: int) -> bytes:
    """The C unit test's fake dump tensor (firmware/core/test/test_core.c, g_dump_pattern)."""
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(n))


DUMP_ROOM = 4096 - 18  # data bytes of one DUMP_TENSOR frame
BIG = dump_pattern(5000)
SEQ_254 = 0x0101  # seq bytes must be non-zero too

ERROR_MESSAGES = {
    1: (0x20, "no model loaded"),
    2: (0x10, "model of 9000000 bytes does not fit the model store (1 to 2097152 bytes)"),
    3: (0x12, "stored model does not hash to the sha256 announced in MODEL_BEGIN"),
    4: (0x11, "reserved"),
    5: (0x12, "op CONV_3D is not in the firmware's op resolver"),
    6: (0x20, "input is 186 bytes, the model expects 187"),
    7: (0x20, "invoke failed (platform gave no reason)"),
    8: (0x7F, "request type 0x7f is unknown"),
    9: (0x11, "chunk at 0 with 6 bytes runs past the announced model size 5"),
    10: (0x10, "model store could not be erased"),
    11: (0x12, "model needs 150000 bytes of arena, the firmware has 131072"),
}
ERROR_NAMES = {1: "bad_state", 2: "too_large", 3: "sha_mismatch", 4: "bad_offset", 5: "load_failed",
               6: "bad_input_size", 7: "invoke_failed", 8: "unknown_type", 9: "bad_length", 10: "store_failed",
               11: "arena_too_small"}

VECTORS += [
    ("hello_v11", 0x01, 10, bytes([1])),
    ("hello_ack_v11", 0x81, 10, hello_ack_v11()),
    # Body of exactly 254 zero-free bytes: COBS is 0xFF + 254 bytes and NO trailing 0x01 code byte.
    ("cobs_block_254", 0x20, SEQ_254, no_zero_payload(254 - 8, 0x20, SEQ_254)),
    # Two full blocks (508 bytes): the same at a block boundary inside a longer body.
    ("cobs_block_508", 0x20, SEQ_254, no_zero_payload(508 - 8, 0x20, SEQ_254)),
    # A 5000-byte tensor in two DUMP_TENSOR chunks (4078 + 922 data bytes), each with the full header.
    ("dump_chunk_0", 0xA1, 9, dump_tensor(1, 2, 15, 0, 9, len(BIG), 0, BIG[:DUMP_ROOM])),
    ("dump_chunk_1", 0xA1, 9, dump_tensor(1, 2, 15, 0, 9, len(BIG), DUMP_ROOM, BIG[DUMP_ROOM:])),
    ("nak_cobs", 0xE0, 0xFFFF, bytes([1])),
    ("nak_length", 0xE0, 0xFFFF, bytes([2])),
    ("nak_version", 0xE0, 0xFFFF, bytes([3])),
    # nak_crc (reason 4) is above
]
# v1.1 additions (§12 OP_PROFILE/OP_TIMES, §13 STATS/STATS_ACK).
VECTORS += [
    ("op_profile", 0x50, 11, DUMP_INPUT),
    ("op_times", 0xC0, 11, struct.pack("<HHQ", 3, 0, 994278) + struct.pack("<HHI", 0, 22, 4122)
     + struct.pack("<HHI", 1, 3, 74808) + struct.pack("<HHI", 2, 17, 7464)),
    ("stats", 0x51, 12, b""),
    ("stats_ack", 0xC1, 12, struct.pack("<B3xIIIIIII", 0, 2048, 12288, 201_344, 187_000, 8_126_464, 6352, 131072)),
]
VECTORS += [(f"error_{ERROR_NAMES[code]}", 0xEE, 20 + code,
             struct.pack("<HB", code, request) + text.encode()) for code, (request, text) in ERROR_MESSAGES.items()]


def accept_vectors() -> list[tuple[str, int, int, bytes, bytes]]:
    """Wire forms receivers must accept though encoders never produce them."""
    payload = no_zero_payload(254 - 8, 0x20, SEQ_254)
    canonical = wire(0x20, SEQ_254, payload)
    # Some COBS encoders close a full final block with an extra 0x01 code byte: same body.
    return [("accept_cobs_254_extra_code", 0x20, SEQ_254, payload, canonical[:-1] + b"\x01\x00")]


def rejects() -> list[tuple[str, int, bytes]]:
    """Candidates a receiver drops, with the NAK reason a device answers (docs/protocol.md, Receiving)."""
    good = wire(0x01, 7, b"")[1:-1]
    body = struct.pack("<BBH", 1, 0x01, 7)
    out = [
        ("bad_cobs_overrun", 1, b"\x00\x05\x01\x02\x00"),  # code 5 promises 4 bytes, 2 follow
        ("bad_length_short", 2, b"\x00" + cobs.encode(b"\x01\x01\x07") + b"\x00"),  # 3-byte body
        ("bad_length_long", 2, b"\x00" + cobs.encode(
            body + bytes(range(1, 256)) * 17 + struct.pack("<I", zlib.crc32(body))) + b"\x00"),  # 4339 > 4104
        ("bad_version", 3, wire(0x01, 7, b"", ver=2)),
        ("bad_crc", 4, b"\x00" + good[:-1] + bytes([good[-1] ^ 0x01 or 0x02]) + b"\x00"),
        ("log_text", 1, b"\x00I (312) cpu_start: Starting scheduler\r\n\x00"),
    ]
    return out


def main() -> None:
    out = Path(__file__).with_name("frames.txt")
    lines = ["# name type seq payload_hex wire_hex  (payload '-' = empty); made by make_frames.py"]
    for name, ftype, seq, payload in VECTORS:
        lines.append(f"{name} {ftype:02x} {seq} {payload.hex() or '-'} {wire(ftype, seq, payload).hex()}")
    for name, ftype, seq, payload, raw in accept_vectors():
        lines.append(f"{name} {ftype:02x} {seq} {payload.hex() or '-'} {raw.hex()}")
    out.write_text("\n".join(lines) + "\n")
    rej = ["# name nak_reason wire_hex: candidates a receiver drops; a device answers NAK(reason); make_frames.py"]
    for name, reason, raw in rejects():
        rej.append(f"{name} {reason} {raw.hex()}")
    out.with_name("rejects.txt").write_text("\n".join(rej) + "\n")


if __name__ == "__main__":
    main()
