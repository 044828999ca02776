"""The device under test for the conformance suite (docs/conformance.md).

`pytest tests/conformance --device PORT [--baud N]` talks to the device on PORT (a serial port or a pyserial
URL); without --device (or with `--device virtual`) the suite starts a virtual board of its own. Every test
uses `dut`, a raw frame-level view of the link: the suite sends frames, including broken ones, that the
harness's Board would never send, and reads every frame that comes back.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from harness.boards.profiles import load_profile
from harness.link.protocol import (
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    Hello,
    ModelInfo,
    MsgType,
    encode_frame,
    model_begin,
    model_chunk,
    parse_chunk_ack,
)
from harness.link.transport import open_link

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# The model every INFER/DUMP rule runs: small, and only ops every port of the firmware has.
MODEL = FIXTURES / "conv_int8.tflite"
ANSWER_S = 2.0  # §6.7: fast requests are answered within 1 s; the rest is slack for a loaded machine
LOAD_S = 7.0    # §6.7: MODEL_END (hash and load) within 5 s + 10 s per MB; 2 s slack


class Dut:
    """The device under test, one frame at a time. `seq` numbers are chosen by the tests (they matter)."""

    def __init__(self, link, name: str):
        self.link = link
        self.name = name
        self.decoder = FrameDecoder()
        self._seq = 0x1000
        self.hello_ack: Hello | None = None
        self.info: ModelInfo | None = None
        self.model = MODEL.read_bytes()
        self.model_sha = hashlib.sha256(self.model).digest()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFF or 1
        return self._seq

    # -- raw I/O --------------------------------------------------------------------------------------
    def write(self, raw: bytes) -> None:
        self.link.write(raw)

    def send(self, mtype: int, payload: bytes = b"", seq: int | None = None) -> int:
        seq = self.next_seq() if seq is None else seq
        self.write(encode_frame(mtype, seq, payload))
        return seq

    def read(self, seconds: float, until=None) -> list[Frame]:
        """Frames arriving within `seconds`, or until `until(frames)` is true."""
        frames: list[Frame] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            data = self.link.read(65536)
            if data:
                frames += self.decoder.feed(data)
                if until is not None and until(frames):
                    break
        return frames

    def drain(self, seconds: float = 0.1) -> list[Frame]:
        return self.read(seconds)

    def answers(self, seq: int, *, last=None, seconds: float = ANSWER_S) -> list[Frame]:
        """Frames with `seq` (NAKs left out) until `last(frame)` says one ends the answer (default: the
        first one does)."""
        def done(frames):
            mine = [f for f in frames if f.seq == seq and f.type != MsgType.NAK]
            return bool(mine) and (last is None or last(mine[-1]))

        return [f for f in self.read(seconds, done) if f.seq == seq and f.type != MsgType.NAK]

    def request(self, mtype: int, payload: bytes = b"", seq: int | None = None, seconds: float = ANSWER_S) -> Frame:
        """Send one request and return its answer (the first frame carrying its seq)."""
        seq = self.send(mtype, payload, seq)
        got = self.answers(seq, seconds=seconds)
        assert got, f"{self.name}: no answer to {MsgType(mtype).name} (seq {seq}) within {seconds:g} s (§6.7)"
        return got[0]

    # -- conveniences ---------------------------------------------------------------------------------
    def hello(self, minor: int = 1) -> Hello:
        frame = self.request(MsgType.HELLO, bytes([minor]) if minor else b"")
        assert frame.type == MsgType.HELLO_ACK, f"HELLO answered with {frame.name} (§4.1)"
        self.hello_ack = Hello.parse(frame.payload)
        return self.hello_ack

    @property
    def v11(self) -> bool:
        return self.hello_ack is not None and self.hello_ack.proto_minor >= 1

    def require_v11(self) -> None:
        if not self.v11:
            pytest.skip(f"{self.name} speaks protocol 1.0 (HELLO_ACK has no 1.1 extension, §0): a 1.1 rule")

    @property
    def chunk_bytes(self) -> int:
        return min(MAX_PAYLOAD, (self.hello_ack.max_payload if self.hello_ack else 0) or MAX_PAYLOAD) - 4

    def begin(self, size: int | None = None, sha: bytes | None = None) -> Frame:
        size = len(self.model) if size is None else size
        slow = ANSWER_S + size * 10e-6  # §6.7: 10 s per MB of erase
        return self.request(MsgType.MODEL_BEGIN, model_begin(size, sha or self.model_sha), seconds=slow)

    def chunk(self, offset: int, data: bytes) -> Frame:
        return self.request(MsgType.MODEL_CHUNK, model_chunk(offset, data))

    def end(self, seq: int | None = None) -> Frame:
        return self.request(MsgType.MODEL_END, b"", seq=seq, seconds=LOAD_S + len(self.model) * 10e-6)

    def upload(self) -> ModelInfo:
        """The whole upload of MODEL; asserts every step's answer type."""
        assert self.begin().type == MsgType.MODEL_BEGIN_ACK
        offset = 0
        while offset < len(self.model):
            ack = self.chunk(offset, self.model[offset:offset + self.chunk_bytes])
            assert ack.type == MsgType.CHUNK_ACK, f"MODEL_CHUNK answered with {ack.name}"
            offset = parse_chunk_ack(ack.payload)
        info = self.end()
        assert info.type == MsgType.MODEL_INFO, f"MODEL_END answered with {info.name}: {info.payload[3:]!r}"
        self.info = ModelInfo.parse(info.payload)
        return self.info

    def ensure_model(self) -> ModelInfo:
        hello = self.hello()
        if self.info is not None and hello.model_loaded and hello.model_sha256 == self.model_sha.hex():
            return self.info
        return self.upload()

    def input(self, k: int = 0) -> bytes:
        n = self.info.input_bytes
        return bytes(((i * 7 + k * 13) % 256) for i in range(n))


def _device_option(config) -> str | None:
    devices = config.getoption("--device", default=None) or []
    device = devices[0] if devices else None
    return None if device in (None, "virtual") else device


@pytest.fixture(scope="session")
def dut(request, tmp_path_factory):
    config = request.config
    port = _device_option(config)
    baud = config.getoption("--baud", default=None)
    board = None
    if port is None:
        from harness.boards.virtual import VirtualBoard

        board = VirtualBoard(store_dir=tmp_path_factory.mktemp("conformance-store"))
        url = board.start()
        baud = baud or load_profile("virtual").baud
        name = "virtual board"
    else:
        profile = load_profile(config.getoption("--target", default=None) or "esp32")
        if port == "auto":  # the first port whose chip answers esptool as the profile's (as the bench does)
            from harness.boards.flash import autodetect_port

            port = autodetect_port(profile.chip)
        url = port
        baud = baud or profile.baud
        name = port
    link = open_link(url, baud, timeout=0.02)
    try:
        dut = Dut(link, name)
        dut.drain(0.2)
        dut.hello()
        yield dut
    finally:
        link.close()
        if board is not None:
            board.stop()


@pytest.fixture
def loaded(dut) -> Dut:
    """The device with MODEL loaded and a fresh session (HELLO), nothing left on the line."""
    dut.drain(0.05)
    dut.ensure_model()
    dut.drain(0.05)
    return dut
