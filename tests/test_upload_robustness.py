"""Model upload against the virtual board with requests a correct host never sends: truncated, oversized,
wrong sha256, abandoned half-way, or a well-formed flatbuffer that points outside its own tables.

The device must refuse each with the ERROR code docs/protocol.md gives, keep answering, and take a good
upload right after. Frames are built here by hand (harness.link.protocol codec, no harness.boards.board), so the
device's state machine is what is tested, not the host's care.
"""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite_runtime.interpreter as tfl

from harness.link import protocol
from harness.link.protocol import DeviceError, DeviceErrorCode, FrameDecoder, Hello, ModelState, MsgType, encode_frame
from harness.boards.profiles import load_profile
from harness.link.transport import open_link
from harness.boards.virtual import VirtualBoard

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE = load_profile("virtual")
CONV = (FIXTURES / "conv_int8.tflite").read_bytes()
CHUNK = 1024


def out_of_range_tensor_model() -> bytes:
    """conv_int8.tflite with op 0's second input pointing at tensor 999 (there are 12): still a valid
    flatbuffer, so the flatbuffers verifier passes it, but TFLM would read past the tensor table."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(CONV, 0))
    op = model.subgraphs[0].operators[0]
    assert len(model.subgraphs[0].tensors) < 999
    op.inputs = [int(op.inputs[0]), 999]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class RawHost:
    """A host that sends exactly the frames a test builds and waits for the reply with the same seq."""

    def __init__(self, url: str):
        self.link = open_link(url, PROFILE.baud)
        self.decoder = FrameDecoder()
        self.seq = 100

    def ask(self, mtype: int, payload: bytes = b"", timeout_s: float = 30.0) -> protocol.Frame:
        self.seq += 1
        self.link.write(encode_frame(mtype, self.seq, payload))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for frame in self.decoder.feed(self.link.read()):
                if frame.seq == self.seq:
                    return frame
        raise AssertionError(f"no reply to {protocol.type_name(mtype)} seq {self.seq} in {timeout_s} s")

    def error(self, mtype: int, payload: bytes = b"") -> DeviceError:
        frame = self.ask(mtype, payload)
        assert frame.type == MsgType.ERROR, f"expected ERROR, got {frame.name}"
        err = DeviceError.parse(frame.payload)
        assert err.request_type == mtype
        return err

    def hello(self) -> Hello:
        frame = self.ask(MsgType.HELLO)
        assert frame.type == MsgType.HELLO_ACK
        return Hello.parse(frame.payload)

    def begin(self, size: int, sha: bytes) -> protocol.Frame:
        return self.ask(MsgType.MODEL_BEGIN, protocol.model_begin(size, sha))

    def chunks(self, data: bytes, start: int = 0) -> None:
        for offset in range(start, len(data), CHUNK):
            frame = self.ask(MsgType.MODEL_CHUNK, protocol.model_chunk(offset, data[offset:offset + CHUNK]))
            assert frame.type == MsgType.CHUNK_ACK, frame
            assert protocol.parse_chunk_ack(frame.payload) == min(offset + CHUNK, len(data))

    def upload(self, data: bytes) -> protocol.Frame:
        assert self.begin(len(data), hashlib.sha256(data).digest()).type == MsgType.MODEL_BEGIN_ACK
        self.chunks(data)
        return self.ask(MsgType.MODEL_END)

    def infer_works(self) -> None:
        """A good upload right after the refusal loads and answers like the reference interpreter."""
        info = self.upload(CONV)
        assert info.type == MsgType.MODEL_INFO, DeviceError.parse(info.payload) if info.type == MsgType.ERROR else info
        beat = np.arange(187, dtype=np.int64).astype(np.int8).tobytes()
        frame = self.ask(MsgType.INFER, beat)
        assert frame.type == MsgType.RESULT
        ref = tfl.Interpreter(model_content=CONV, experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_REF)
        ref.allocate_tensors()
        ref.set_tensor(ref.get_input_details()[0]["index"], np.frombuffer(beat, np.int8).reshape(1, 187, 1))
        ref.invoke()
        expected = ref.get_tensor(ref.get_output_details()[0]["index"]).tobytes()
        assert protocol.Inference.parse(frame.payload).output == expected

    def close(self) -> None:
        self.link.close()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with VirtualBoard(store_dir=tmp_path_factory.mktemp("store")) as vb:
        host = RawHost(vb.url)
        try:
            yield host
        finally:
            host.close()


def test_truncated_upload_is_refused_then_a_good_one_works(board):
    assert board.begin(len(CONV), hashlib.sha256(CONV).digest()).type == MsgType.MODEL_BEGIN_ACK
    board.chunks(CONV[:len(CONV) - 100])
    err = board.error(MsgType.MODEL_END)
    assert err.code == DeviceErrorCode.BAD_LENGTH
    assert f"{len(CONV) - 100} of {len(CONV)} bytes" in err.message
    assert board.hello().model_state == ModelState.NONE
    board.infer_works()


def test_oversized_model_and_chunk_past_the_size(board):
    too_big = PROFILE.model_max_bytes + 1
    err = board.error(MsgType.MODEL_BEGIN, protocol.model_begin(too_big, bytes(32)))
    assert err.code == DeviceErrorCode.TOO_LARGE
    assert str(too_big) in err.message and str(PROFILE.model_max_bytes) in err.message
    # A chunk that runs past the announced size is refused, not written past the erased store.
    assert board.begin(10, bytes(32)).type == MsgType.MODEL_BEGIN_ACK
    err = board.error(MsgType.MODEL_CHUNK, protocol.model_chunk(0, bytes(11)))
    assert err.code == DeviceErrorCode.BAD_LENGTH
    board.infer_works()


def test_wrong_sha256_is_refused_and_nothing_is_loaded(board):
    wrong = hashlib.sha256(b"not the model").digest()
    assert board.begin(len(CONV), wrong).type == MsgType.MODEL_BEGIN_ACK
    board.chunks(CONV)
    err = board.error(MsgType.MODEL_END)
    assert err.code == DeviceErrorCode.SHA_MISMATCH
    hello = board.hello()
    assert hello.model_state == ModelState.NONE and hello.model_size == 0
    err = board.error(MsgType.INFER, bytes(187))
    assert err.code == DeviceErrorCode.BAD_STATE
    board.infer_works()


def test_interrupted_upload_then_hello_and_a_new_upload(board):
    board.infer_works()
    assert board.begin(len(CONV), hashlib.sha256(CONV).digest()).type == MsgType.MODEL_BEGIN_ACK
    board.chunks(CONV[:2 * CHUNK])
    # The host goes away mid-upload; a new one says HELLO: the old model was erased with the store.
    hello = board.hello()
    assert hello.model_state == ModelState.NONE
    assert board.error(MsgType.INFER, bytes(187)).code == DeviceErrorCode.BAD_STATE
    # Chunks at an offset other than next_offset are not stored; the ack says where to resume.
    frame = board.ask(MsgType.MODEL_CHUNK, protocol.model_chunk(0, CONV[:CHUNK]))
    assert protocol.parse_chunk_ack(frame.payload) == 2 * CHUNK
    board.infer_works()


def test_flatbuffer_with_out_of_range_tensor_index_is_load_failed(board):
    bad = out_of_range_tensor_model()
    frame = board.upload(bad)
    assert frame.type == MsgType.ERROR
    err = DeviceError.parse(frame.payload)
    assert err.code == DeviceErrorCode.LOAD_FAILED
    assert "tensor 999" in err.message, err.message
    hello = board.hello()
    assert hello.model_state == ModelState.LOAD_FAILED
    assert hello.model_sha256 == hashlib.sha256(bad).hexdigest()
    assert board.error(MsgType.INFER, bytes(187)).code == DeviceErrorCode.BAD_STATE
    board.infer_works()


def test_truncated_flatbuffer_with_matching_sha_is_load_failed(board):
    cut = CONV[:len(CONV) // 2]
    frame = board.upload(cut)
    err = DeviceError.parse(frame.payload)
    assert frame.type == MsgType.ERROR and err.code == DeviceErrorCode.LOAD_FAILED
    assert board.hello().model_state == ModelState.LOAD_FAILED
    board.infer_works()


def test_short_model_begin_is_bad_length(board):
    err = board.error(MsgType.MODEL_BEGIN, struct.pack("<I", 10))
    assert err.code == DeviceErrorCode.BAD_LENGTH
    assert board.hello().chip == "virtual"
