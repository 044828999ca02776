"""Frame codec and payloads (harness/link/protocol.py) against the golden vectors and as properties."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.link import protocol
from harness.errors import ProtocolError
from harness.link.protocol import (
    DeviceError,
    DeviceErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Inference,
    ModelInfo,
    MsgType,
    NakReason,
    encode_frame,
)

GOLDEN = Path(__file__).parent / "golden" / "frames.txt"
REJECTS = Path(__file__).parent / "golden" / "rejects.txt"


def _golden() -> dict[str, tuple[int, int, bytes, bytes]]:
    vectors = {}
    for line in GOLDEN.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, ftype, seq, payload, wire = line.split()
        vectors[name] = (int(ftype, 16), int(seq), b"" if payload == "-" else bytes.fromhex(payload),
                         bytes.fromhex(wire))
    return vectors


VECTORS = _golden()
ENCODED = sorted(name for name in VECTORS if not name.startswith("accept_"))  # accept_*: decode-only
REJECTED = [line.split() for line in REJECTS.read_text().splitlines() if line and not line.startswith("#")]
BOOT_LOG = (b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
            b"configsip: 0, SPIWP:0xee\r\nclk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00\r\n"
            b"mode:DIO, clock div:2\r\nload:0x3fff0030,len:7104\r\nentry 0x400805f0\r\n"
            b"I (29) boot: ESP-IDF v5.2.1 2nd stage bootloader\r\n\x1b[0;32mI (312) cpu_start: Starting\x1b[0m\r\n")


def test_golden_file_covers_every_message_kind():
    assert len(VECTORS) >= 18
    # MODEL_BEGIN_ACK is an empty payload like RESET_ACK; every other type has a vector.
    missing = {int(m) for m in MsgType} - {t for t, *_ in VECTORS.values()}
    assert missing == {MsgType.MODEL_BEGIN_ACK}


@pytest.mark.parametrize("name", ENCODED)
def test_golden_encode(name):
    ftype, seq, payload, wire = VECTORS[name]
    assert encode_frame(ftype, seq, payload) == wire


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_golden_decode(name):
    ftype, seq, payload, wire = VECTORS[name]
    dec = FrameDecoder()
    assert dec.feed(wire) == [Frame(ftype, seq, payload)]
    assert (dec.frames_ok, dec.bad_frames, dec.garbage_bytes) == (1, 0, 0)


def test_golden_v11_cases_are_there():
    """Protocol v1.1 (docs/protocol.md): a vector for every NAK reason and ERROR code, the COBS body that
    ends exactly on a 254-byte block, and a tensor dumped in more than one DUMP_TENSOR chunk."""
    naks = {protocol.parse_nak(p) for t, _s, p, _w in VECTORS.values() if t == MsgType.NAK}
    assert naks == {int(r) for r in NakReason}
    errors = {DeviceError.parse(p).code for t, _s, p, _w in VECTORS.values() if t == MsgType.ERROR}
    assert errors == {int(c) for c in DeviceErrorCode}
    assert {int(reason) for _n, reason, _w in REJECTED} == {int(r) for r in NakReason}
    assert len(VECTORS["cobs_block_254"][3]) == 257 and VECTORS["cobs_block_254"][3][1] == 0xFF
    chunks = [protocol.DumpChunk.parse(VECTORS[n][2]) for n in ("dump_chunk_0", "dump_chunk_1")]
    assert chunks[0].total == chunks[1].total == 5000 and chunks[1].offset == len(chunks[0].data)


def test_golden_dump_chunks_reassemble():
    parts = protocol.DumpAssembler()
    for name in ("dump_tensor_input", "dump_chunk_1", "dump_chunk_0"):  # any order
        parts.add(protocol.DumpChunk.parse(VECTORS[name][2]))
    assert parts.complete(2)
    big = parts.tensors()[1].data
    assert big == bytes((i * 7 + (i >> 8)) & 0xFF for i in range(5000))


def test_dump_tensor_is_complete_by_coverage_not_by_byte_count():
    # Issue 9, bug 7: 150 bytes at 0 and 50 at 50 add up to 200 of 200, but bytes 150..200 never came.
    parts = protocol.DumpAssembler()

    def chunk(offset, n):
        return protocol.DumpChunk(0, 1, 3, 0xFFFF, 9, 200, offset, bytes(range(offset, offset + n)))

    parts.add(chunk(0, 150))
    parts.add(chunk(50, 50))
    assert not parts.complete(1)
    parts.add(chunk(0, 150))  # a repeat adds nothing either
    assert not parts.complete(1)
    parts.add(chunk(150, 50))
    assert parts.complete(1) and parts.tensors()[0].data == bytes(range(200))
    empty = protocol.DumpAssembler()
    empty.add(protocol.DumpChunk(0, 1, 3, 0, 9, 0, 0, b""))
    assert empty.complete(1)


@pytest.mark.parametrize("name,reason,wire", REJECTED, ids=[r[0] for r in REJECTED])
def test_golden_rejects_are_dropped_without_a_frame(name, reason, wire):
    raw = bytes.fromhex(wire)
    dec = FrameDecoder()
    assert dec.feed(raw) == []
    assert dec.bad_frames == 1 and dec.garbage_bytes == len(raw) - 2
    # The stream goes on: a good frame right after it is found.
    assert dec.feed(VECTORS["hello"][3]) == [Frame(MsgType.HELLO, 0, b"")]


def test_hello_v11_negotiation_payloads():
    assert protocol.hello() == VECTORS["hello_v11"][2] == bytes([protocol.PROTO_MINOR])
    assert protocol.hello(0) == VECTORS["hello"][2] == b""
    v11 = Hello.parse(VECTORS["hello_ack_v11"][2])
    assert (v11.proto_minor, v11.rx_buffer, v11.reset_ms, v11.protocol) == (1, 16384, 3000, "hil/1.1")
    assert v11.pack() == VECTORS["hello_ack_v11"][2]
    v1 = Hello.parse(VECTORS["hello_ack"][2])
    assert (v1.proto_minor, v1.rx_buffer, v1.protocol) == (0, 0, "hil/1")
    assert v1.pack() == VECTORS["hello_ack"][2]
    # Bytes after the v1.1 extension belong to a later minor version: ignored, not an error.
    assert Hello.parse(VECTORS["hello_ack_v11"][2] + b"\x07\x08").rx_buffer == 16384


def test_crc_is_ieee_reflected():
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_all_golden_frames_in_one_stream_with_boot_log_between():
    decoder = FrameDecoder()
    stream = BOOT_LOG + b"".join(w + BOOT_LOG for *_, w in VECTORS.values())
    frames = decoder.feed(stream)
    assert frames == [Frame(t, s, p) for t, s, p, _ in VECTORS.values()]
    # The log has no zero byte: each run of log text is one dropped candidate; the last one still waits
    # for its terminating zero.
    assert decoder.bad_frames == len(VECTORS)
    assert decoder.garbage_bytes == len(BOOT_LOG) * len(VECTORS)
    assert decoder.pending == len(BOOT_LOG)
    assert decoder.frames_ok == len(VECTORS)


def test_garbage_glued_to_a_frame_without_delimiter_costs_only_the_garbage():
    # Text right before a frame is cut off by the frame's leading zero (docs/protocol.md).
    _, _, _, wire = VECTORS["result"]
    decoder = FrameDecoder()
    frames = decoder.feed(b"I (312) cpu_start: Starting" + wire + b"noise after" + wire)
    assert len(frames) == 2
    assert decoder.bad_frames == 2


def test_split_at_every_byte_boundary():
    stream = b"".join(w for *_, w in VECTORS.values())
    expected = [Frame(t, s, p) for t, s, p, _ in VECTORS.values()]
    for cut in range(0, len(stream), 7):  # every 7th boundary over the big stream keeps this fast...
        decoder = FrameDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected
    small = VECTORS["result"][3] + VECTORS["hello_ack"][3]
    for cut in range(len(small) + 1):  # ...and every single boundary of a small one
        decoder = FrameDecoder()
        got = decoder.feed(small[:cut]) + decoder.feed(small[cut:])
        assert got == [Frame(*VECTORS["result"][:3]), Frame(*VECTORS["hello_ack"][:3])]


def test_byte_by_byte_feed():
    decoder = FrameDecoder()
    wire = VECTORS["max_payload"][3]
    frames = []
    for b in wire:
        frames += decoder.feed(bytes([b]))
    assert frames == [Frame(*VECTORS["max_payload"][:3])]


@pytest.mark.parametrize("position", [1, 2, 5, 30, -3])
def test_flipped_bit_drops_only_that_frame(position):
    bad = bytearray(VECTORS["result"][3])
    bad[position] ^= 0x10
    good = VECTORS["result_repeat"][3]
    decoder = FrameDecoder()
    frames = decoder.feed(bytes(bad) + good)
    assert frames == [Frame(*VECTORS["result_repeat"][:3])]
    assert decoder.bad_frames >= 1
    assert decoder.frames_ok == 1


def test_wrong_version_and_short_bodies_are_dropped():
    body = bytes([2, 0x01, 0, 0])
    v2 = b"\x00" + cobs.encode(body + zlib.crc32(body).to_bytes(4, "little")) + b"\x00"
    short = b"\x00" + cobs.encode(b"\x01\x01\x00") + b"\x00"
    decoder = FrameDecoder()
    assert decoder.feed(v2 + short) == []
    assert decoder.bad_frames == 2


def test_oversized_body_dropped_by_constructor_limit():
    decoder = FrameDecoder(max_payload=16)
    assert decoder.feed(encode_frame(0x20, 1, bytes(17))) == []
    assert decoder.bad_frames == 1
    assert decoder.feed(encode_frame(0x20, 2, bytes(16))) == [Frame(0x20, 2, bytes(16))]


def test_endless_text_is_dropped_without_growing_memory():
    decoder = FrameDecoder(max_payload=64)
    line = b"E (1234) task_wdt: Task watchdog got triggered. " * 4
    for _ in range(200):
        assert decoder.feed(line) == []
        assert decoder.pending <= protocol.max_wire_bytes(64)
    frames = decoder.feed(VECTORS["hello"][3])
    assert frames == [Frame(0x01, 0, b"")]
    assert decoder.bad_frames == 1
    assert decoder.garbage_bytes == len(line) * 200
    assert decoder.bytes_in == len(line) * 200 + len(VECTORS["hello"][3])


def test_encode_refuses_oversized_payload():
    with pytest.raises(ProtocolError) as info:
        encode_frame(0x11, 0, bytes(protocol.MAX_PAYLOAD + 1))
    assert info.value.code == "HIL304"


@settings(max_examples=150, deadline=None)
@given(ftype=st.integers(0, 255), seq=st.integers(0, 0xFFFF), payload=st.binary(max_size=4096))
def test_round_trip(ftype, seq, payload):
    wire = encode_frame(ftype, seq, payload)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert FrameDecoder().feed(wire) == [Frame(ftype, seq, payload)]


@settings(max_examples=300, deadline=None)
@given(soup=st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([w for *_, w in VECTORS.values()][:8])),
                     max_size=20),
       cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_byte_soup_never_raises_and_never_yields_a_frame_with_a_wrong_crc(soup, cuts):
    stream = b"".join(soup)
    decoder = FrameDecoder()
    frames = []
    last = 0
    for cut in sorted(c for c in cuts if c <= len(stream)) + [len(stream)]:
        frames += decoder.feed(stream[last:cut])
        last = cut
    for frame in frames:
        # Re-encode and check the CRC the decoder accepted is the CRC of the decoded fields.
        body = cobs.decode(encode_frame(frame.type, frame.seq, frame.payload)[1:-1])
        assert zlib.crc32(body[:-4]) == int.from_bytes(body[-4:], "little")
        assert encode_frame(frame.type, frame.seq, frame.payload) in stream
    assert decoder.bytes_in == len(stream)


# --- payloads --------------------------------------------------------------------------------------

def test_hello_ack_payload():
    hello = Hello.parse(VECTORS["hello_ack"][2])
    assert hello.proto_version == 1
    assert hello.kernel_mode == "esp-nn"
    assert hello.timing_source == "device_cycles"
    assert hello.model_state == 1 and hello.model_loaded
    assert (hello.cpu_mhz, hello.max_payload) == (240, 4096)
    assert (hello.arena_size, hello.store_capacity, hello.model_size, hello.arena_used) == (131072, 2097152, 5, 12345)
    assert hello.model_sha256 == hashlib.sha256(b"model").hexdigest()
    assert (hello.fw_version, hello.chip, hello.build_hash) == ("0.1.0", "esp32s3", "deadbeef")
    assert hello.pack() == VECTORS["hello_ack"][2]


def test_hello_unknown_codes_are_named_not_guessed():
    raw = bytearray(VECTORS["hello_ack"][2])
    raw[1], raw[2] = 9, 7
    hello = Hello.parse(bytes(raw))
    assert (hello.kernel_mode, hello.timing_source) == ("unknown(9)", "unknown(7)")


@pytest.mark.parametrize("cut", [0, 10, 55, 56, 57, 62])
def test_truncated_hello_is_a_protocol_error(cut):
    with pytest.raises(ProtocolError) as info:
        Hello.parse(VECTORS["hello_ack"][2][:cut])
    assert info.value.code.startswith("HIL3")
    assert "HELLO_ACK" in str(info.value) and "\n" not in str(info.value)


def test_model_info_payload():
    info = ModelInfo.parse(VECTORS["model_info"][2])
    assert (info.arena_used, info.input_bytes, info.output_bytes, info.model_size) == (5120, 187, 5, 5)
    assert info.sha256 == hashlib.sha256(b"model").hexdigest()
    assert info.pack() == VECTORS["model_info"][2]
    with pytest.raises(ProtocolError):
        ModelInfo.parse(VECTORS["model_info"][2][:-1])


def test_result_payloads():
    first = Inference.parse(VECTORS["result"][2], seq=4)
    assert (first.seq, first.flags, first.cycles, first.wall_ns) == (4, 0, 1234567, 89000)
    assert first.output == bytes([0x80, 0x7F, 0x00, 0x01, 0xFF]) and not first.repeat
    again = Inference.parse(VECTORS["result_repeat"][2], seq=5)
    assert again.repeat and again.cycles == 2**40 + 3 and again.output == bytes([1, 2, 3, 4, 5])
    assert again.pack() == VECTORS["result_repeat"][2]
    with pytest.raises(ProtocolError):
        Inference.parse(VECTORS["result"][2][:19])


def test_error_payload():
    err = DeviceError.parse(VECTORS["error_load"][2])
    assert err.code == DeviceErrorCode.LOAD_FAILED and err.name == "LOAD_FAILED"
    assert err.request_type == MsgType.MODEL_END
    assert err.message == "op CONV_3D is not in the firmware's op resolver"
    assert err.pack() == VECTORS["error_load"][2]
    with pytest.raises(ProtocolError):
        DeviceError.parse(b"\x05\x00")


def test_request_builders_match_golden_payloads():
    sha = hashlib.sha256(b"model").digest()
    assert protocol.model_begin(5, sha) == VECTORS["model_begin"][2]
    assert protocol.model_chunk(0, b"model") == VECTORS["model_chunk"][2]
    assert protocol.hello(0) == protocol.model_end() == protocol.reset() == b""
    assert protocol.infer(bytes(187)) == VECTORS["infer_zeros"][2]
    assert protocol.chunk_ack(5) == VECTORS["chunk_ack"][2]
    assert protocol.parse_chunk_ack(VECTORS["chunk_ack"][2]) == 5
    assert protocol.nak(NakReason.BAD_CRC) == VECTORS["nak_crc"][2]


def test_decoder_is_fast_enough_for_ten_thousand_frames_a_second():
    import time

    frames = b"".join(encode_frame(0xA0, i & 0xFFFF, Inference(i, 0, i, i, bytes(5)).pack()) for i in range(20000))
    decoder = FrameDecoder()
    start = time.perf_counter()
    got = []
    for i in range(0, len(frames), 4096):
        got += decoder.feed(frames[i:i + 4096])
    elapsed = time.perf_counter() - start
    assert len(got) == 20000 and decoder.bad_frames == 0
    assert elapsed < 1.0, f"decoding 20k frames took {elapsed:.2f}s"
