"""The link relay (harness/link/relay.py): byte-exact forwarding, and each fault doing what it says and counting it.

The fault stages are tested on the Injector directly (no I/O, many pieces, deterministic seeds); the relay
process is tested end to end between two ptys.
"""

from __future__ import annotations

import os
import random
import select
import time
import tty

import pytest

from harness.link import bootlog
from harness.errors import ConfigError
from harness.link.protocol import FrameDecoder, MsgType, encode_frame
from harness.link.relay import Injector, LinkFault, Relay


def frames(n: int, size: int = 180, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [encode_frame(MsgType.INFER, i, bytes(rng.randrange(256) for _ in range(size))) for i in range(n)]


def run(injector: Injector, data: bytes, *, seed: int = 99, now: float = 0.0) -> bytes:
    """Push `data` in random pieces (as reads would deliver it) and collect what comes out."""
    rng = random.Random(seed)
    out, pos = bytearray(), 0
    while pos < len(data):
        n = rng.randint(1, 700)
        injector.push(data[pos:pos + n], now)
        out += injector.take(now)
        pos += n
    return bytes(out + injector.take(now))


def injector(*specs: str, seed: int = 1, direction: str = "to-board") -> Injector:
    faults = [LinkFault.parse(s) for s in specs]
    return Injector([f for f in faults if f.applies_to(direction)], seed)


def test_no_faults_is_byte_exact():
    data = bytes(random.Random(3).randrange(256) for _ in range(50_000))
    inj = injector()
    assert run(inj, data) == data
    assert inj.stats["bytes_in"] == inj.stats["bytes_out"] == len(data)


def test_bit_errors_are_counted_placed_by_position_and_seeded():
    data = bytes(200_000)
    inj = injector("ber:1e-3")
    out = run(inj, data, seed=1)
    flipped = sum(bin(b).count("1") for b in out)
    assert flipped == inj.stats["bits_flipped"]
    assert 1_300 < flipped < 1_900  # 1.6 M bits at 1e-3
    # Same seed, other cut into pieces: the same damage. Another seed: other damage.
    assert run(injector("ber:1e-3"), data, seed=2) == out
    assert run(injector("ber:1e-3", seed=2), data) != out


def test_dropped_bytes_leave_a_subsequence():
    data = bytes(random.Random(4).randrange(1, 256) for _ in range(30_000))
    inj = injector("drop-bytes:0.01")
    out = run(inj, data)
    assert len(out) == len(data) - inj.stats["bytes_dropped"]
    assert 200 < inj.stats["bytes_dropped"] < 420
    it = iter(data)
    assert all(byte in it for byte in out)  # every byte out appears in order in the input


def test_frame_drops_and_duplicates_keep_every_other_frame_whole():
    sent = frames(400)
    inj = injector("drop-frames:0.05", "dup-frames:0.05")
    decoder = FrameDecoder()
    got = decoder.feed(run(inj, b"".join(sent)))
    s = inj.stats
    assert s["frames"] == 400 and s["frames_dropped"] > 5 and s["frames_duplicated"] > 5
    assert len(got) == 400 - s["frames_dropped"] + s["frames_duplicated"]
    assert decoder.bad_frames == 0
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs)  # order kept; duplicates adjacent
    assert len(set(seqs)) == 400 - s["frames_dropped"]


def test_garbage_bursts_are_rom_text_between_frames():
    sent = frames(30)
    inj = injector("garbage:10", direction="to-host")
    assert injector("garbage:10", direction="to-board").stats["garbage_bursts"] == 0  # to-host by default
    out = run(inj, b"".join(sent))
    burst = bootlog.as_received()
    assert inj.stats["garbage_bursts"] == 3 and out.count(burst) == 3
    decoder = FrameDecoder()
    assert [f.seq for f in decoder.feed(out)] == list(range(30))  # no frame lost to the garbage
    assert decoder.garbage_bytes > 0


def test_stall_holds_bytes_then_delivers_them():
    inj = injector("stall:1000:2.5")
    data = bytes(range(256)) * 20
    inj.push(data, now=10.0)
    assert inj.take(10.0) == data[:1000]
    assert inj.wait(10.0) == pytest.approx(2.5)
    inj.push(b"more", now=11.0)
    assert inj.take(12.4) == b""
    assert inj.take(12.6) == data[1000:] + b"more"
    assert inj.stats["stalls"] == 1


def test_rom_banner_at_the_wrong_baud_is_garbage_and_at_its_own_baud_is_text():
    assert bootlog.as_received(rx_baud=bootlog.ROM_BAUD) == bootlog.ROM_TEXT
    seen = bootlog.as_received(rx_baud=921600)
    assert b"rst:" not in seen and seen.count(0) > len(seen) // 3  # long low stretches read as 0x00


@pytest.mark.parametrize("spec", ["ber", "ber:x", "ber:2", "stall:10", "garbage:0", "drop:0.1", "up:ber:1e-4"])
def test_bad_fault_spec_is_one_typed_line(spec):
    with pytest.raises(ConfigError) as err:
        LinkFault.parse(spec)
    assert err.value.code == "HIL104" and "\n" not in str(err.value)


def test_directions():
    assert LinkFault.parse("ber:1e-4").direction == "both"
    assert LinkFault.parse("to-board:drop-frames:0.01").applies_to("to-board")
    assert not LinkFault.parse("to-board:drop-frames:0.01").applies_to("to-host")
    assert str(LinkFault.parse("to-host:stall:5:1.5")) == "to-host:stall:5:1.5"


def _read(fd: int, n: int, timeout: float = 5.0) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            out += os.read(fd, 65536)
    return bytes(out)


def test_relay_process_forwards_both_ways_byte_exact():
    master, slave = os.openpty()  # the "board" end: we play the board on the master
    tty.setraw(slave)
    tty.setraw(master)
    board_path = os.ttyname(slave)
    up = bytes(random.Random(5).randrange(256) for _ in range(20_000))
    down = bytes(random.Random(6).randrange(256) for _ in range(20_000))
    try:
        with Relay(board_path, []) as relay:
            host = os.open(relay.url, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(host)
            try:
                os.write(host, up)
                assert _read(master, len(up)) == up
                os.write(master, down)
                assert _read(host, len(down)) == down
            finally:
                os.close(host)
            stats = relay.stats
        assert stats["to-board"]["bytes_out"] == len(up) and stats["to-host"]["bytes_out"] == len(down)
    finally:
        os.close(master)
        os.close(slave)
