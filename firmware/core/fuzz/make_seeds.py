"""Seed corpora for the core's fuzz targets (firmware/core/fuzz/fuzz_core.c), made from the golden vectors.

`python firmware/core/fuzz/make_seeds.py OUT_DIR` writes OUT_DIR/raw/* (a knob byte, then wire bytes) and
OUT_DIR/frames/* (a knob byte, then records `op u8 | seq u16 | len u16 | payload`). Standard library only,
so `make fuzz` needs no virtualenv. The frames seeds also hold whole sessions (upload, INFER, DUMP, RESET)
so the fuzzer starts from a loaded model instead of having to discover one.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "frames.txt"
REJECTS = ROOT / "tests" / "golden" / "rejects.txt"  # candidates the device NAKs (protocol §1.3)

R_UPLOAD, R_GARBAGE, R_CORRUPT, R_KNOBS, R_POWER_CYCLE = 0xF0, 0xF1, 0xF2, 0xF3, 0xF4
HELLO, INFER, RESET, DUMP, MODEL_END = 0x01, 0x20, 0x30, 0x40, 0x12


def golden() -> list[tuple[str, int, int, bytes, bytes]]:
    vectors = []
    for line in GOLDEN.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, ftype, seq, payload, wire = line.split()
        vectors.append((name, int(ftype, 16), int(seq), b"" if payload == "-" else bytes.fromhex(payload),
                        bytes.fromhex(wire)))
    return vectors


def record(op: int, seq: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BHH", op, seq & 0xFFFF, len(payload)) + payload


def fake_model(outcome: int, n_in: int, n_out: int, invoke: int = 0, dump: bytes = b"\x02\x40\x00\x00\x00") -> bytes:
    """Bytes the fuzz target's fake interpreter reads as: outcome, tensor sizes, arena, behaviour."""
    return struct.pack("<BHHIB", outcome, n_in, n_out, 4096, invoke) + dump + bytes(range(32))


def sessions() -> dict[str, bytes]:
    ok = fake_model(0, 8, 5)
    out = {
        "session_ok": record(R_UPLOAD, 1, ok) + record(INFER, 10, bytes(8)) + record(INFER, 10, bytes(8))
        + record(DUMP, 11, bytes(8)) + record(HELLO, 12) + record(RESET, 13) + record(HELLO, 14)
        + record(INFER, 15, bytes(range(8))),
        "session_big_dump": record(R_UPLOAD, 1, fake_model(0, 8, 5, dump=b"\x04\x00\x22\x00\x00"))
        + record(DUMP, 2, bytes(8)),
        "session_arena": record(R_UPLOAD, 1, fake_model(1, 8, 5)) + record(INFER, 2, bytes(8)),
        "session_load_msg": record(R_UPLOAD, 1, fake_model(2, 8, 5)) + record(HELLO, 2),
        "session_too_wide": record(R_UPLOAD, 1, fake_model(0, 5000, 5)) + record(INFER, 2, bytes(8)),
        "session_interrupted": record(R_UPLOAD, 1, ok)[:5 + 20] + record(0x10, 3, struct.pack("<I", 40) + bytes(32))
        + record(0x11, 4, struct.pack("<I", 0) + ok[:20]) + record(HELLO, 5) + record(MODEL_END, 6)
        + record(R_UPLOAD, 7, ok) + record(INFER, 8, bytes(8)),
        "session_power_cycle": record(R_UPLOAD, 1, ok) + record(R_POWER_CYCLE, 0) + record(HELLO, 2)
        + record(INFER, 3, bytes(8)),
        "session_invoke_error": record(R_UPLOAD, 1, ok) + record(INFER, 2, b"\xee\x07\x01" + bytes(5))
        + record(R_CORRUPT, 0x0305, bytes([INFER]) + bytes(7)) + record(R_GARBAGE, 0, b"ets Jun  8 2016\r\n\x00"),
        "session_knobs": record(R_KNOBS, 0x02, b"") + record(R_UPLOAD, 1, ok * 10) + record(R_KNOBS, 0x04)
        + record(R_UPLOAD, 2, ok),
    }
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[1])
    raw, frames = out / "raw", out / "frames"
    raw.mkdir(parents=True, exist_ok=True)
    frames.mkdir(parents=True, exist_ok=True)
    vectors = golden()
    knobs = b"\x00"
    for name, ftype, seq, payload, wire in vectors:
        (raw / name).write_bytes(knobs + wire)
        (frames / name).write_bytes(knobs + record(ftype, seq, payload))
    for line in REJECTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _reason, wire = line.split()
            (raw / f"reject_{name}").write_bytes(knobs + bytes.fromhex(wire))
    (raw / "all_with_log").write_bytes(knobs + b"".join(b"I (29) boot: ESP-IDF\r\n" + v[4] for v in vectors))
    (frames / "all").write_bytes(knobs + b"".join(record(t, s, p) for _, t, s, p, _ in vectors))
    for name, data in sessions().items():
        (frames / name).write_bytes(knobs + data)
    print(f"{len(list(raw.iterdir()))} raw and {len(list(frames.iterdir()))} frames seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
