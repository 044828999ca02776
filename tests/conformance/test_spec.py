"""Conformance of a device with the HIL wire protocol (docs/protocol.md), one test per rule.

Each test's name starts with the section it checks (`test_s5_3_…` is §5.3) and its docstring quotes the
rule, so a failure names the paragraph a board vendor has to read. docs/conformance.md says how to run it.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
import zlib
from pathlib import Path

import pytest
from cobs import cobs

from harness.link.protocol import (
    DUMP_HEADER_BYTES,
    NAK_SEQ,
    DeviceError,
    DeviceErrorCode,
    DumpAssembler,
    DumpChunk,
    Frame,
    Hello,
    Inference,
    ModelInfo,
    MsgType,
    encode_frame,
    model_begin,
    model_chunk,
    parse_chunk_ack,
    parse_dump_end,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _golden() -> dict[str, tuple[int, int, bytes, bytes]]:
    out = {}
    for line in (GOLDEN / "frames.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, ftype, seq, payload, wire = line.split()
            out[name] = (int(ftype, 16), int(seq), b"" if payload == "-" else bytes.fromhex(payload),
                         bytes.fromhex(wire))
    return out


def _rejects() -> list[tuple[str, int, bytes]]:
    rows = []
    for line in (GOLDEN / "rejects.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, reason, wire = line.split()
            rows.append((name, int(reason), bytes.fromhex(wire)))
    return rows


VECTORS = _golden()
REJECTS = _rejects()


def naks(frames: list[Frame]) -> list[int]:
    return [f.payload[0] for f in frames if f.type == MsgType.NAK and f.payload]


def error_code(frame: Frame) -> int:
    assert frame.type == MsgType.ERROR, f"expected ERROR, got {frame.name}"
    return DeviceError.parse(frame.payload).code


def result(frame: Frame) -> Inference:
    assert frame.type == MsgType.RESULT, f"expected RESULT, got {frame.name}: {frame.payload[3:]!r}"
    return Inference.parse(frame.payload, frame.seq)


# -- §1 Framing -----------------------------------------------------------------------------------------

def test_s1_1_a_frame_after_text_is_found_and_the_text_earns_one_nak(dut):
    """§1.1/§8.1: every maximal run of non-zero bytes is one candidate; a candidate that is not a frame
    earns exactly one NAK, and the frame after it is answered."""
    dut.drain()
    seq = dut.next_seq()
    dut.write(b"\x00I (312) boot: some log text\r\n" + encode_frame(MsgType.HELLO, seq, b"\x01"))
    frames = dut.read(2.0, lambda fs: any(f.seq == seq for f in fs))
    assert [f.type for f in frames if f.seq == seq] == [MsgType.HELLO_ACK]
    assert len(naks(frames)) == 1


def test_s1_1_empty_runs_are_ignored_silently(dut):
    """§1.1: empty runs (two zeros in a row) are ignored silently: no NAK."""
    dut.drain()
    seq = dut.next_seq()
    dut.write(b"\x00" * 64 + encode_frame(MsgType.HELLO, seq, b"\x01") + b"\x00" * 64)
    frames = dut.read(0.5)
    assert [f.type for f in frames] == [MsgType.HELLO_ACK] and frames[0].seq == seq


@pytest.mark.parametrize("name", ["cobs_block_254", "cobs_block_508", "accept_cobs_254_extra_code"])
def test_s1_2_a_body_ending_on_a_254_byte_block_is_a_frame(loaded, name):
    """§1.2: a body that ends exactly on a 254-byte COBS block decodes (with or without the extra 0x01
    code byte some encoders add); these INFERs have the wrong input size, so the answer is ERROR
    BAD_INPUT_SIZE with the frame's seq, never a NAK."""
    _type, seq, _payload, wire = VECTORS[name]
    loaded.write(wire)
    frames = loaded.read(2.0, lambda fs: any(f.seq == seq for f in fs))
    assert naks(frames) == [], f"{name} was NAKed: the decoder mishandles a full final COBS block"
    (answer,) = [f for f in frames if f.seq == seq]
    assert error_code(answer) == DeviceErrorCode.BAD_INPUT_SIZE


@pytest.mark.parametrize("name,reason,wire", REJECTS, ids=[r[0] for r in REJECTS])
def test_s1_3_every_broken_candidate_gets_one_nak_with_its_reason(dut, name, reason, wire):
    """§1.3/§8.1: COBS error → NAK 1, body too short or too long → 2, version ≠ 1 → 3, CRC → 4; exactly
    one NAK, seq 0xFFFF; the device then answers the next frame normally."""
    dut.drain()
    dut.write(wire)
    frames = dut.read(1.0, lambda fs: bool(naks(fs)))
    frames += dut.read(0.1)
    assert naks(frames) == [reason], f"{name}: expected NAK({reason}), got {naks(frames)}"
    assert all(f.seq == NAK_SEQ for f in frames if f.type == MsgType.NAK)
    assert [f for f in frames if f.type != MsgType.NAK] == []
    assert dut.hello().proto_version == 1


def test_s1_3_crc_covers_the_header(dut):
    """§1.3/§2: the CRC covers version, type and seq: a frame whose seq changed after the CRC was computed
    is NAKed with reason 4, not answered under the wrong seq."""
    head = struct.pack("<BBH", 1, MsgType.HELLO, 0x0101) + b"\x01"
    body = bytearray(head + struct.pack("<I", zlib.crc32(head)))
    body[2] ^= 0x02
    dut.drain()
    dut.write(b"\x00" + cobs.encode(bytes(body)) + b"\x00")
    frames = dut.read(1.0, lambda fs: bool(fs))
    assert naks(frames) == [4] and all(f.type == MsgType.NAK for f in frames)


def test_s1_4_an_over_long_run_is_one_nak_for_bad_length(dut):
    """§1.4/§8.1: a run longer than the longest frame is judged when its zero comes: one NAK, reason 2."""
    dut.drain()
    dut.write(b"\x00" + bytes((i % 255) + 1 for i in range(9000)) + b"\x00")
    frames = dut.read(1.5, lambda fs: bool(naks(fs)))
    frames += dut.read(0.1)
    assert naks(frames) == [2]
    assert dut.hello().proto_version == 1


# -- §2 Body, §4 HELLO ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seq", [0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF])
def test_s3_every_reply_carries_the_requests_seq(dut, seq):
    """§3: every reply to a request carries its seq, over the whole u16 range (0xFFFF included)."""
    dut.drain()
    answer = dut.request(MsgType.HELLO, b"\x01", seq=seq)
    assert answer.type == MsgType.HELLO_ACK and answer.seq == seq


def test_s4_1_an_empty_hello_gets_exactly_the_v1_layout(dut):
    """§4.1: a 1.0 host (empty HELLO) gets the 1.0 HELLO_ACK: fixed part and three strings, nothing after."""
    answer = dut.request(MsgType.HELLO, b"")
    payload = answer.payload
    pos = 56
    for _ in range(3):
        pos += 1 + payload[pos]
    assert len(payload) == pos, f"{len(payload) - pos} bytes after the strings in a 1.0 HELLO_ACK"
    dut.hello()  # back to the negotiated session


def test_s4_1_hello_negotiates_the_minor_version(dut):
    """§4.1/§4.2: HELLO with max_minor 1 → the extension with proto_minor = min(1, the device's)."""
    hello = dut.hello(1)
    dut.require_v11()
    assert hello.proto_minor == 1
    # §2.1: bytes after the fields a receiver knows are ignored; a host speaking minor 9 gets 1.
    answer = dut.request(MsgType.HELLO, b"\x09\xaa\xbb")
    assert Hello.parse(answer.payload).proto_minor == 1


def test_s4_2_hello_ack_fields_are_sane(dut):
    """§4.2: proto_version 1, known kernel_mode and model_state, max_payload 4096, arena and store sizes."""
    hello = dut.hello()
    assert hello.proto_version == 1
    assert hello.kernel_mode in ("unknown", "reference", "esp-nn")
    assert hello.model_state in (0, 1, 2)
    assert hello.max_payload == 4096
    assert hello.arena_size > 0 and hello.store_capacity > 0
    if hello.model_state == 0:
        assert hello.model_size == 0 and hello.model_sha256 == "00" * 32 and hello.arena_used == 0


def test_s4_3_chip_and_build_hash_formats(dut):
    """§4.3: chip is [a-z0-9_-]{1,31}; build_hash is 7–40 lowercase hex digits, optionally -dirty."""
    hello = dut.hello()
    assert re.fullmatch(r"[a-z0-9_-]{1,31}", hello.chip), hello.chip
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", hello.build_hash), hello.build_hash
    assert len(hello.fw_version.encode()) <= 63


# -- §5 Model upload --------------------------------------------------------------------------------------

def test_s5_upload_reports_the_model_and_hello_shows_it(loaded):
    """§5.5/§5.8: MODEL_INFO carries the stored size and sha256 and the tensor sizes; HELLO then reports
    the model loaded (state 1, same sha256, same arena_used)."""
    info = loaded.upload()
    assert info.model_size == len(loaded.model) and info.sha256 == loaded.model_sha.hex()
    assert info.input_bytes == 187 and info.output_bytes == 5 and info.arena_used > 0
    hello = loaded.hello()
    assert hello.model_loaded and hello.model_sha256 == info.sha256 and hello.arena_used == info.arena_used


def test_s5_2_a_chunk_at_another_offset_is_not_stored_and_says_where_to_resume(loaded):
    """§5.2: MODEL_CHUNK at an offset other than next_offset is answered CHUNK_ACK(next_offset), not stored."""
    assert loaded.begin().type == MsgType.MODEL_BEGIN_ACK
    first = loaded.chunk(0, loaded.model[:100])
    assert parse_chunk_ack(first.payload) == 100
    ahead = loaded.chunk(500, loaded.model[500:600])
    assert ahead.type == MsgType.CHUNK_ACK and parse_chunk_ack(ahead.payload) == 100
    again = loaded.chunk(0, loaded.model[:100])  # a resend of an acknowledged chunk
    assert again.type == MsgType.CHUNK_ACK and parse_chunk_ack(again.payload) == 100
    loaded.info = None  # the upload replaced the model: the next test uploads again


def test_s5_3_a_chunk_past_the_announced_size_is_refused_and_the_upload_stays_open(loaded):
    """§5.3: data running past `size` → ERROR BAD_LENGTH, nothing stored, the upload stays open."""
    loaded.require_v11()
    data = loaded.model
    assert loaded.begin().type == MsgType.MODEL_BEGIN_ACK
    offset = 0
    while len(data) - offset >= loaded.chunk_bytes:
        offset = parse_chunk_ack(loaded.chunk(offset, data[offset:offset + loaded.chunk_bytes]).payload)
    assert error_code(loaded.chunk(offset, data[offset:] + b"\x01")) == DeviceErrorCode.BAD_LENGTH
    ack = loaded.chunk(offset, data[offset:])
    assert ack.type == MsgType.CHUNK_ACK and parse_chunk_ack(ack.payload) == len(data)
    assert loaded.end().type == MsgType.MODEL_INFO


def test_s5_4_model_end_before_all_bytes_is_bad_length_and_the_upload_stays_open(loaded):
    """§5.4: MODEL_END with fewer bytes stored than announced → BAD_LENGTH; the host continues."""
    loaded.require_v11()
    data = loaded.model
    assert loaded.begin().type == MsgType.MODEL_BEGIN_ACK
    assert parse_chunk_ack(loaded.chunk(0, data[:64]).payload) == 64
    assert error_code(loaded.end()) == DeviceErrorCode.BAD_LENGTH
    offset = 64
    while offset < len(data):
        offset = parse_chunk_ack(loaded.chunk(offset, data[offset:offset + loaded.chunk_bytes]).payload)
    assert loaded.end().type == MsgType.MODEL_INFO


def test_s5_1_a_refused_model_begin_changes_nothing(loaded):
    """§5.1: MODEL_BEGIN refused (TOO_LARGE: size 0 or above store_capacity; BAD_LENGTH: payload short)
    keeps the loaded model loaded."""
    loaded.require_v11()
    capacity = loaded.hello_ack.store_capacity
    assert error_code(loaded.begin(capacity + 1)) == DeviceErrorCode.TOO_LARGE
    assert error_code(loaded.begin(0)) == DeviceErrorCode.TOO_LARGE
    short = loaded.request(MsgType.MODEL_BEGIN, struct.pack("<I", 100) + bytes(8))
    assert error_code(short) == DeviceErrorCode.BAD_LENGTH
    hello = loaded.hello()
    assert hello.model_loaded and hello.model_sha256 == loaded.model_sha.hex()
    assert result(loaded.request(MsgType.INFER, loaded.input())).output


def test_s5_6_a_repeated_model_end_gets_the_same_answer(loaded):
    """§5.6: MODEL_END resent because its MODEL_INFO was lost gets MODEL_INFO again (also after HELLO);
    after an upload that ended in SHA_MISMATCH, a repeat gets SHA_MISMATCH again."""
    loaded.require_v11()
    info = loaded.upload()
    again = loaded.end()
    assert again.type == MsgType.MODEL_INFO and ModelInfo.parse(again.payload) == info
    loaded.hello()
    assert loaded.end().type == MsgType.MODEL_INFO
    wrong = bytes(32)
    assert loaded.begin(sha=wrong).type == MsgType.MODEL_BEGIN_ACK
    offset = 0
    while offset < len(loaded.model):
        offset = parse_chunk_ack(loaded.chunk(offset, loaded.model[offset:offset + loaded.chunk_bytes]).payload)
    assert error_code(loaded.end()) == DeviceErrorCode.SHA_MISMATCH
    assert error_code(loaded.end()) == DeviceErrorCode.SHA_MISMATCH
    loaded.info = None


def test_s5_10_hello_during_an_upload_leaves_it_open(loaded):
    """§4.1/§5.10: HELLO in the middle of an upload answers (model_state 0) and the upload goes on."""
    data = loaded.model
    assert loaded.begin().type == MsgType.MODEL_BEGIN_ACK
    offset = parse_chunk_ack(loaded.chunk(0, data[:200]).payload)
    assert loaded.hello().model_state == 0
    while offset < len(data):
        ack = loaded.chunk(offset, data[offset:offset + loaded.chunk_bytes])
        assert ack.type == MsgType.CHUNK_ACK, "the upload was closed by HELLO"
        offset = parse_chunk_ack(ack.payload)
    assert loaded.end().type == MsgType.MODEL_INFO


def test_s5_chunk_without_an_upload_is_bad_state(loaded):
    """§5.2/§8.2: MODEL_CHUNK with no open upload → BAD_STATE."""
    assert error_code(loaded.request(MsgType.MODEL_CHUNK, model_chunk(0, b"abc"))) == DeviceErrorCode.BAD_STATE


# -- §6 Streaming -----------------------------------------------------------------------------------------

def test_s6_4_result_is_exactly_output_bytes_and_a_pure_function_of_the_input(loaded):
    """§6.1/§6.4: RESULT's output is exactly MODEL_INFO's output_bytes; the same input gives the same bytes;
    flags other than bit 0 and the reserved bytes are 0."""
    first = result(loaded.request(MsgType.INFER, loaded.input(1)))
    second = result(loaded.request(MsgType.INFER, loaded.input(1)))
    assert len(first.output) == loaded.info.output_bytes
    assert first.output == second.output
    frame = loaded.request(MsgType.INFER, loaded.input(2))
    assert frame.payload[1:4] == b"\x00\x00\x00" and frame.payload[0] & 0xFE == 0


@pytest.mark.parametrize("delta", [-1, 1, None])
def test_s6_4_an_input_of_another_size_is_bad_input_size(loaded, delta):
    """§6.4: INFER carries exactly input_bytes (no trailing bytes), else ERROR BAD_INPUT_SIZE."""
    n = 0 if delta is None else loaded.info.input_bytes + delta
    assert error_code(loaded.request(MsgType.INFER, bytes(n))) == DeviceErrorCode.BAD_INPUT_SIZE


def test_s6_2_the_repeat_flag_marks_a_resent_seq(loaded):
    """§6.2: a second INFER with the same seq has flag bit 0 set; after HELLO it is fresh again."""
    seq = 0x2345
    assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=seq)).repeat
    assert result(loaded.request(MsgType.INFER, loaded.input(), seq=seq)).repeat
    loaded.hello()
    assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=seq)).repeat


def test_s6_2_the_repeat_flag_survives_the_seq_wrap(loaded):
    """§6.2: across 65535 → 0 every fresh seq is unflagged and a resend flagged; a seq is forgotten once
    another seq of the same slot (mod 64) was answered, so the flag never outlives the host's span."""
    seqs = [0xFFFC, 0xFFFD, 0xFFFE, 0xFFFF, 0, 1, 2, 3]
    for seq in seqs:
        assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=seq)).repeat, seq
    assert result(loaded.request(MsgType.INFER, loaded.input(), seq=0xFFFF)).repeat
    assert result(loaded.request(MsgType.INFER, loaded.input(), seq=0)).repeat
    # seq 0 and seq 64 share a slot: after 64 is answered, 0 is fresh again (65,536 beats later it is).
    assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=64)).repeat
    assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=0)).repeat


def test_s6_6_a_window_of_requests_is_answered_once_each_in_order(loaded):
    """§6.1/§6.6: requests sent back to back, as many as the device's rx_buffer holds (at most 16 here),
    are each answered exactly once, in order."""
    frame = len(encode_frame(MsgType.INFER, 0, loaded.input()))
    rx = loaded.hello_ack.rx_buffer if loaded.v11 and loaded.hello_ack.rx_buffer else 16384
    k = max(1, min(16, rx // frame))
    base = 0x3000
    loaded.write(b"".join(encode_frame(MsgType.INFER, base + i, loaded.input(i)) for i in range(k)))
    frames = loaded.read(2.0 + 0.5 * k, lambda fs: len([f for f in fs if f.type == MsgType.RESULT]) >= k)
    frames += loaded.read(0.1)
    assert [f.seq for f in frames if f.type == MsgType.RESULT] == [base + i for i in range(k)]
    assert naks(frames) == []


# -- §7 DUMP ------------------------------------------------------------------------------------------------

def _dump(dut, data: bytes) -> tuple[list[Frame], Frame]:
    seq = dut.send(MsgType.DUMP, data)
    frames = dut.answers(seq, last=lambda f: f.type in (MsgType.DUMP_END, MsgType.ERROR), seconds=5.0)
    assert frames, "no answer to DUMP (§6.7)"
    if frames[-1].type == MsgType.ERROR and error_code(frames[-1]) == DeviceErrorCode.UNKNOWN_TYPE:
        pytest.skip(f"{dut.name} does not implement DUMP (answers UNKNOWN_TYPE, §7.5)")
    return frames[:-1], frames[-1]


def test_s7_dump_contains_every_tensor_in_order_and_covers_each(loaded):
    """§7.1–§7.4: tensors 0..count-1, the input first (op 0xFFFF) and equal to the request, then op outputs
    in execution order; chunks at most max_payload-18 bytes, never past total, covering every byte; the
    last tensor is the model output, equal to RESULT's; DUMP_END's count is the number of tensors."""
    data = loaded.input(3)
    chunks, end = _dump(loaded, data)
    assert end.type == MsgType.DUMP_END
    parts = DumpAssembler()
    ops = []
    for frame in chunks:
        assert frame.type == MsgType.DUMP_TENSOR
        assert len(frame.payload) - DUMP_HEADER_BYTES <= loaded.hello_ack.max_payload - 18
        assert frame.payload[9] == 0, "reserved byte not 0"
        chunk = DumpChunk.parse(frame.payload)
        parts.add(chunk)
        ops.append((chunk.index, chunk.op_index))
    count = parse_dump_end(end.payload)
    assert count == parts.count and parts.complete(count)
    tensors = parts.tensors()
    assert [t.index for t in tensors] == list(range(count))
    assert tensors[0].op_index == 0xFFFF and tensors[0].data == data
    op_order = [t.op_index for t in tensors[1:]]
    assert op_order == sorted(op_order) and 0xFFFF not in op_order
    out = result(loaded.request(MsgType.INFER, data)).output
    assert tensors[-1].data == out


def test_s7_5_dump_with_the_wrong_input_size_is_bad_input_size(loaded):
    """§7.5: DUMP checks its input like INFER: BAD_INPUT_SIZE, and no DUMP_TENSOR before it."""
    chunks, end = _dump(loaded, bytes(loaded.info.input_bytes + 3))
    assert chunks == [] and error_code(end) == DeviceErrorCode.BAD_INPUT_SIZE


# -- §8 ERROR ------------------------------------------------------------------------------------------------

def test_s8_2_an_unknown_request_type_is_unknown_type_naming_it(dut):
    """§0/§8.2: a type the device does not know → ERROR UNKNOWN_TYPE with request_type = that type."""
    answer = dut.request(0x7F, b"\x01\x02")
    assert error_code(answer) == DeviceErrorCode.UNKNOWN_TYPE
    assert DeviceError.parse(answer.payload).request_type == 0x7F


def test_s8_2_infer_without_a_model_is_bad_state(loaded):
    """§5.1/§8.2: an accepted MODEL_BEGIN forgets the model; INFER then → BAD_STATE."""
    assert loaded.begin().type == MsgType.MODEL_BEGIN_ACK
    assert loaded.hello().model_state == 0
    assert error_code(loaded.request(MsgType.INFER, loaded.input())) == DeviceErrorCode.BAD_STATE
    loaded.info = None


def test_s8_2_error_messages_are_short_utf8(loaded):
    """§3/§8.2: ERROR's message is UTF-8 of at most 200 bytes."""
    answer = loaded.request(MsgType.INFER, b"\x01")
    assert error_code(answer) == DeviceErrorCode.BAD_INPUT_SIZE
    message = answer.payload[3:]
    assert len(message) <= 200
    message.decode("utf-8")


# -- §9 RESET, §10 timing, §11 unsolicited ------------------------------------------------------------------

def test_s9_reset_keeps_the_model_and_clears_the_session(loaded):
    """§9: RESET_ACK, then HELLO is answered within reset_ms; the committed model is still loaded; the
    repeat memory and an open upload are gone."""
    seq = 0x4444
    assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=seq)).repeat
    assert loaded.request(MsgType.RESET).type == MsgType.RESET_ACK
    wait = (loaded.hello_ack.reset_ms or 5000) / 1000 if loaded.v11 else 5.0
    hello = None
    deadline = wait + 1.0
    start = time.monotonic()
    while hello is None and time.monotonic() - start < deadline:
        seq_h = loaded.send(MsgType.HELLO, b"\x01")
        got = [f for f in loaded.answers(seq_h, seconds=0.5) if f.type == MsgType.HELLO_ACK]
        hello = Hello.parse(got[0].payload) if got else None
    assert hello is not None, f"no HELLO_ACK within reset_ms + 1 s ({deadline:g} s) after RESET_ACK (§9)"
    loaded.hello_ack = hello
    assert hello.model_loaded and hello.model_sha256 == loaded.model_sha.hex()
    assert not result(loaded.request(MsgType.INFER, loaded.input(), seq=seq)).repeat
    assert error_code(loaded.request(MsgType.MODEL_CHUNK, model_chunk(0, b"x"))) == DeviceErrorCode.BAD_STATE


def test_s10_timing_fields_agree_with_the_timing_source(loaded):
    """§10: timing_source 0 device cycles (cpu_mhz > 0, cycles > 0), 1 an estimate, 2 host clock (cycles 0,
    wall_ns > 0); wall_ns is the time around the invoke, so it is positive."""
    hello = loaded.hello()
    assert hello.timing_source in ("device_cycles", "static_estimate", "host_clock"), hello.timing_source
    answer = result(loaded.request(MsgType.INFER, loaded.input()))
    assert answer.wall_ns > 0
    if hello.timing_source == "device_cycles":
        assert hello.cpu_mhz > 0 and answer.cycles > 0
    elif hello.timing_source == "host_clock":
        assert answer.cycles == 0
    else:
        assert answer.cycles > 0


def test_s11_2_no_frames_without_a_request(loaded):
    """§11.2: a device sends frames only in answer to a request (NAK aside)."""
    assert loaded.read(0.5) == []
    loaded.request(MsgType.INFER, loaded.input())
    assert loaded.read(0.3) == []


def test_s5_9_a_model_with_a_short_constant_buffer_is_refused(loaded, tmp_path):
    """§5.9: a constant buffer shorter than its tensor's shape needs → LOAD_FAILED naming it, before the
    interpreter reads past it."""
    import flatbuffers

    from harness.bench.flatbuf import schema

    fb = schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(loaded.model, 0))
    for tensor in model.subgraphs[0].tensors:
        buf = model.buffers[tensor.buffer]
        if buf.data is not None and len(buf.data) > 8:
            buf.data = buf.data[:-4]
            break
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    short = bytes(builder.Output())
    assert loaded.request(MsgType.MODEL_BEGIN, model_begin(len(short), hashlib.sha256(short).digest()),
                          seconds=3.0).type == MsgType.MODEL_BEGIN_ACK
    offset = 0
    while offset < len(short):
        offset = parse_chunk_ack(loaded.chunk(offset, short[offset:offset + loaded.chunk_bytes]).payload)
    answer = loaded.end()
    assert error_code(answer) == DeviceErrorCode.LOAD_FAILED
    assert b"constant buffer" in answer.payload
    loaded.info = None


# -- §12 OP_PROFILE, §13 STATS (optional 1.1 additions) ----------------------------------------------------

def _optional(dut, answer: Frame, what: str) -> None:
    if answer.type == MsgType.ERROR and error_code(answer) == DeviceErrorCode.UNKNOWN_TYPE:
        pytest.skip(f"{dut.name} does not implement {what} (answers UNKNOWN_TYPE, optional)")


def test_s12_op_profile_times_every_op_in_execution_order(loaded):
    """§12: OP_TIMES with the request's seq; ops in execution order with known builtin codes; their cycles
    sum to at most invoke_cycles (timing_source 0); a wrong input size is BAD_INPUT_SIZE."""
    from harness.link.protocol import OpTimes

    answer = loaded.request(MsgType.OP_PROFILE, loaded.input(), seconds=5.0)
    _optional(loaded, answer, "OP_PROFILE")
    assert answer.type == MsgType.OP_TIMES, answer.name
    times = OpTimes.parse(answer.payload)
    assert times.ops and [op.index for op in times.ops] == sorted(op.index for op in times.ops)
    assert answer.payload[2:4] == b"\x00\x00"
    if loaded.hello_ack.timing_source == "device_cycles":
        assert sum(op.cycles for op in times.ops) <= times.invoke_cycles
    bad = loaded.request(MsgType.OP_PROFILE, bytes(loaded.info.input_bytes + 1))
    assert error_code(bad) == DeviceErrorCode.BAD_INPUT_SIZE


def test_s13_stats_reports_the_arena_as_hello_does(loaded):
    """§13: STATS_ACK is 32 bytes; arena_size equals HELLO_ACK's, arena_used the loaded model's."""
    from harness.link.protocol import Health

    answer = loaded.request(MsgType.STATS)
    _optional(loaded, answer, "STATS")
    assert answer.type == MsgType.STATS_ACK and len(answer.payload) >= 32
    health = Health.parse(answer.payload)
    assert answer.payload[1:4] == b"\x00\x00\x00"
    assert health.arena_size == loaded.hello_ack.arena_size
    assert health.arena_used == loaded.hello().arena_used
