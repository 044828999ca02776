"""Real-time margin of a model on a device profile: can it keep up with the heart?

A beat arrives every 60/bpm seconds: 1,000 ms at 60 bpm, 171 ms at 350 bpm (a run of tachycardia). Per beat
the device must receive the beat over its link and run the model. This module turns a Result's latency
and the profile's link into the share of each beat interval that work takes (the duty cycle), the
highest heart rate it sustains, and a flag when it cannot keep up at 350 bpm (a flag, not a failure).

The model is deliberately conservative: receiving and computing are counted one after the other (no
overlap of the next beat's reception with this beat's invoke), latency is the p99 after warm-up (so one
slow beat in a hundred is allowed to be late, not one in two), and the frame is the protocol's longest
encoding of the input (COBS worst case). The answer goes back on the other direction of a full-duplex
link and is not counted. The latency keeps its source: a static estimate stays an estimate.
"""

from __future__ import annotations

from ..boards.profiles import Profile
from ..link.protocol import max_wire_bytes

RATES_BPM = (60, 350)
FLAG_BPM = 350
LATENCY_STAT = "p99"
# UART 8N1: a start bit, 8 data bits and a stop bit per byte (pyserial's default, firmware/main/port_esp.cc).
BITS_PER_BYTE = 10


def infer_wire_bytes(input_bytes: int) -> int:
    """Bytes on the wire of one INFER frame at worst: 0x00 | COBS(header + input + CRC) | 0x00, where COBS
    adds at most one byte per 254 and one more (docs/protocol.md)."""
    return max_wire_bytes(int(input_bytes))


def mlperf_wire_bytes(input_bytes: int) -> int:
    """Bytes the host sends per beat to an MLPerf Tiny device (harness/boards/mlperf.py): `db load N%`, the tensor
    as `db HH…%` lines of 31 bytes in hex, and `infer 1 0%`. Its stop-and-wait replies are not counted."""
    from ..boards.mlperf import DB_BYTES  # only for a run on that protocol

    n = int(input_bytes)
    full, rest = divmod(n, DB_BYTES)
    lines = full * (len("db %") + 2 * DB_BYTES) + ((len("db %") + 2 * rest) if rest else 0)
    return len(f"db load {n}%") + lines + len("infer 1 0%")


def link_model(profile: Profile, baud: int | None = None) -> dict:
    """How the link time is counted on this profile, in words and numbers."""
    rate = int(baud or profile.baud)
    if profile.transport == "usb-serial-jtag":
        text = (f"USB-Serial-JTAG: no UART line rate; the profile's {rate} baud is used as a nominal rate "
                "(USB full speed is faster, so this overstates the link time)")
    elif profile.transport == "pty":
        text = f"pseudo-terminal counted as a UART at {rate} baud 8N1 (what --virtual-throttle enforces)"
    else:
        text = f"UART at {rate} baud, 8N1"
    return {"baud": rate, "bits_per_byte": BITS_PER_BYTE, "transport": profile.transport, "model": text}


def margin(latency: dict, profile: Profile, input_bytes: int, *, baud: int | None = None,
           protocol: str | None = None) -> dict:
    """Result.realtime from Result.latency: duty cycle at 60 and 350 bpm, the highest sustained rate, flag.

    Empty when the run has no latency (no beat got through). `protocol` "mlperf-tiny" counts that
    protocol's text commands on the link instead of our INFER frame.
    """
    source = latency.get("source")
    us = (latency.get("us") or {}).get("p99")
    if source is None or us is None:
        return {}
    link = link_model(profile, baud)
    if protocol == "mlperf-tiny":
        wire = mlperf_wire_bytes(input_bytes)
        link["model"] += "; MLPerf Tiny text commands (db load, hex db lines, infer)"
    else:
        wire = infer_wire_bytes(input_bytes)
    link_s = wire * BITS_PER_BYTE / link["baud"]
    latency_s = float(us) / 1e6
    per_beat_s = latency_s + link_s
    rates = {}
    for bpm in RATES_BPM:
        interval_s = 60.0 / bpm
        duty = per_beat_s / interval_s
        rates[str(bpm)] = {"interval_s": interval_s, "duty_cycle": duty,
                           "compute_duty_cycle": latency_s / interval_s, "keeps_up": duty <= 1.0}
    max_bpm = 60.0 / per_beat_s if per_beat_s > 0 else None
    flag = None
    if not rates[str(FLAG_BPM)]["keeps_up"]:
        estimate = " (static estimate)" if source == "static_estimate" else ""
        flag = (f"cannot keep up at {FLAG_BPM} bpm on {profile.name}: {latency_s * 1e3:.1f} ms latency p99"
                f"{estimate} + {link_s * 1e3:.1f} ms to receive the beat > {60.0 / FLAG_BPM * 1e3:.0f} ms "
                f"between beats; it sustains {max_bpm:.0f} bpm")
    return {
        "source": source,
        "latency_stat": LATENCY_STAT,
        "latency_s": latency_s,
        "link_s_per_beat": link_s,
        "link": dict(link, wire_bytes=wire, input_bytes=int(input_bytes)),
        "rates": rates,
        "max_bpm": max_bpm,
        "flag": flag,
    }
