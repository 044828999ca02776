"""Per-layer DUMP and mismatch localisation: protocol frames, Board.dump, the virtual board's dump against
the host reference, geometry hints, and the whole HIL run naming the op a `corrupt-layer:K` fault broke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from harness.bench import run as bench
from harness.link import protocol
from harness.boards.board import Board
from harness.errors import BoardError
from harness.bench.localize import _HostRun, geometry_hints, localise, run_kept
from harness.bench.model import _interpreter_module, open_interpreter
from harness.link.protocol import DUMP_INPUT_OP, DumpAssembler, DumpChunk, MsgType, encode_frame
from harness.link.transport import open_link
from harness.boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
GOLDEN = REPO / "tests" / "golden" / "frames.txt"
CNN1D = REPO / "models" / "cnn1d" / "cnn1d_beat_int8.tflite"


def _golden(name: str) -> tuple[int, int, bytes]:
    for line in GOLDEN.read_text().splitlines():
        if line.startswith(name + " "):
            _, ftype, seq, payload, _wire = line.split()
            return int(ftype, 16), int(seq), bytes.fromhex(payload)
    raise KeyError(name)


# ---- protocol ------------------------------------------------------------------------------------------

def test_golden_dump_frames_parse_into_the_two_tensors():
    ftype, seq, request = _golden("dump")
    assert (ftype, seq) == (MsgType.DUMP, 9) and protocol.dump(request) == request
    parts = DumpAssembler()
    for name in ("dump_tensor", "dump_tensor_input"):  # order of arrival does not matter
        ftype, seq, payload = _golden(name)
        assert ftype == MsgType.DUMP_TENSOR and seq == 9
        chunk = DumpChunk.parse(payload)
        assert chunk.pack() == payload
        parts.add(chunk)
    ftype, _, payload = _golden("dump_end")
    assert ftype == MsgType.DUMP_END and protocol.parse_dump_end(payload) == 2
    assert protocol.dump_end(2) == payload
    assert parts.complete(2)
    first, second = parts.tensors()
    assert (first.index, first.tensor_index, first.op_index, first.dtype) == (0, 0, DUMP_INPUT_OP, "int8")
    assert first.data == request
    assert (second.tensor_index, second.op_index, second.data) == (15, 0, bytes([1, 0, 0x80, 0x7F, 0xFF, 0]))


def test_chunks_reassemble_out_of_order_and_gaps_are_noticed():
    data = bytes(range(256)) * 40
    room = protocol.MAX_PAYLOAD - protocol.DUMP_HEADER_BYTES
    chunks = [DumpChunk(0, 1, 7, 2, 9, len(data), off, data[off:off + room]) for off in range(0, len(data), room)]
    parts = DumpAssembler()
    for chunk in reversed(chunks[1:]):
        parts.add(chunk)
    assert not parts.complete(1)
    parts.add(chunks[0])
    parts.add(chunks[0])  # a repeat from a resent DUMP changes nothing
    assert parts.complete(1) and parts.tensors()[0].data == data


def test_chunk_past_its_tensor_is_a_protocol_error():
    bad = DumpChunk(0, 1, 3, 0, 9, 4, 2, b"abc").pack()
    with pytest.raises(protocol.ProtocolError) as err:
        DumpChunk.parse(bad)
    assert err.value.code == "HIL303"


class _LossyDumpLink:
    """A link whose device answers DUMP with two chunks, dropping the second one the first time."""

    url = "fake://dump"
    baud = 0

    def __init__(self):
        self.inbox = b""
        self.dumps = 0
        self.decoder = protocol.FrameDecoder()

    def write(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if frame.type != MsgType.DUMP:
                continue
            self.dumps += 1
            x = frame.payload
            frames = [encode_frame(MsgType.DUMP_TENSOR, frame.seq, DumpChunk(0, 1, 0, DUMP_INPUT_OP, 9, len(x), 0,
                                                                           x[:3]).pack())]
            if self.dumps > 1:
                frames.append(encode_frame(MsgType.DUMP_TENSOR, frame.seq,
                                           DumpChunk(0, 1, 0, DUMP_INPUT_OP, 9, len(x), 3, x[3:]).pack()))
            frames.append(encode_frame(MsgType.DUMP_END, frame.seq, protocol.dump_end(1)))
            self.inbox += b"".join(frames)

    def read(self, _n: int) -> bytes:
        data, self.inbox = self.inbox, b""
        return data

    def close(self) -> None:
        pass


def test_board_dump_asks_again_when_a_chunk_was_lost():
    link = _LossyDumpLink()
    (tensor,) = Board(link, timeout_s=1.0).dump(b"abcdef")
    assert tensor.data == b"abcdef" and link.dumps == 2


# ---- the virtual board's dump against the host reference -------------------------------------------------

def _inputs(n: int) -> bytes:
    return ((np.arange(n) * 37 % 200) - 100).astype(np.int8).tobytes()


def test_virtual_board_dump_matches_the_preserved_host_tensors(tmp_path):
    interpreter_cls, resolver = _interpreter_module()
    with VirtualBoard(store_dir=tmp_path) as vb, Board(open_link(vb.url, 921600), timeout_s=5.0) as board:
        board.hello()
        with pytest.raises(BoardError) as err:  # nothing loaded yet
            board.dump(bytes(187))
        assert "BAD_STATE" in str(err.value)
        for path in (FIXTURES / "mixed_int8.tflite", CNN1D):
            data = path.read_bytes()
            board.ensure_model(data)
            x = _inputs(187)
            dump = board.dump(x)
            host = _HostRun(data, x)
            ops = [host.ops[i] for i in sorted(host.ops)]
            # The input, then every op's output, in op order, each equal to the host's preserved tensor.
            assert [t.op_index for t in dump] == [DUMP_INPUT_OP] + list(range(len(ops)))
            assert [t.tensor_index for t in dump[1:]] == [int(op["outputs"][0]) for op in ops]
            for tensor in dump:
                expected = host.tensor(tensor.tensor_index)
                assert tensor.dtype == expected.dtype.name
                assert tensor.data == expected.tobytes(), (path.name, tensor.tensor_index)
            assert localise(data, x, dump).first is None


# ---- every shipped model: the host keeps every tensor, and a fault in op K is localised to K -------------

def _shipped() -> list[tuple[str, bytes]]:
    import yaml

    entries = yaml.safe_load((REPO / "models" / "registry.yaml").read_text())["models"]
    return [(e["name"], (REPO / "models" / e["file"]).read_bytes()) for e in entries]


SHIPPED = _shipped()


def _cut_after(model_data: bytes, op: int, tensor: int) -> bytes:
    """The model with only ops 0..op, and `tensor` as its one output: a tensor any interpreter must keep."""
    import flatbuffers

    from harness.bench.model import _schema

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_data, 0))
    model.subgraphs[0].operators = model.subgraphs[0].operators[:op + 1]
    model.subgraphs[0].outputs = [tensor]
    builder = flatbuffers.Builder(len(model_data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _run_output(model_data: bytes, x: np.ndarray, reference: str) -> np.ndarray:
    if reference == "tflm":
        from tflite_micro import runtime

        interp = runtime.Interpreter.from_bytes(model_data, arena_size=1 << 21)
        interp.set_input(x, 0)
        interp.invoke()
        return np.array(interp.get_output(0))
    interp = open_interpreter(model_data)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))


@pytest.mark.parametrize("reference", ["tflite-ref", "tflm"])
@pytest.mark.parametrize("name,data", SHIPPED, ids=[n for n, _ in SHIPPED])
def test_every_host_tensor_is_the_one_the_op_computed(name, data, reference):
    """Each intermediate the localiser compares with equals the output of the model cut off after that op
    (tflite-runtime's preserve-all mode failed this on tcn_beat's STRIDED_SLICE outputs)."""
    detail = open_interpreter(data).get_input_details()[0]
    x = np.random.default_rng(9).integers(-128, 128, size=detail["shape"], dtype=np.int8)
    kept = run_kept(data, x, reference)
    ops = open_interpreter(data)._get_ops_details()  # noqa: SLF001
    assert set(kept) == {int(t) for op in ops for t in op["outputs"] if t >= 0}
    for op in ops:
        for t in op["outputs"]:
            expected = _run_output(_cut_after(data, int(op["index"]), int(t)), x, reference)
            assert np.array_equal(kept[int(t)].reshape(-1), expected.reshape(-1)), (name, op["index"], op["op_name"])


@pytest.mark.parametrize("name,data", SHIPPED, ids=[n for n, _ in SHIPPED])
def test_a_fault_in_op_k_is_localised_to_k(name, data):
    """The virtual board's `corrupt-layer:K` computation (harness/boards/virtual/layers.py), dumped as DUMP sends
    it, for every op K of every shipped model: the localiser must name op K and nothing earlier, comparing
    with tflite-ref and with tflm."""
    from harness.boards.virtual.layers import LayerRunner

    detail = open_interpreter(data).get_input_details()[0]
    x = np.random.default_rng(3).integers(-128, 128, size=detail["shape"], dtype=np.int8)
    ops = open_interpreter(data)._get_ops_details()  # noqa: SLF001

    def dumped(corrupt_op):
        planned = LayerRunner(data, 1 << 17, corrupt_op=corrupt_op).dump(x)
        return [protocol.DumpedTensor(i, p.tensor_index, p.op_index, p.type, raw) for i, (p, raw) in enumerate(planned)]

    references = ("tflite-ref", "tflm")
    clean = dumped(None)
    for reference in references:
        assert localise(data, x.tobytes(), clean, reference=reference).first is None, (name, reference)
    for k, op in enumerate(ops):
        dump = dumped(k)
        for reference in references:
            found = localise(data, x.tobytes(), dump, reference=reference)
            assert found.reference == reference
            assert found.first is not None and found.first.op_index == k, (name, k, op["op_name"], found.summary)
            assert found.first.op == op["op_name"] and found.first.values_differ == 1, found.summary


# ---- geometry hints ----------------------------------------------------------------------------------------

def test_fc_hint_only_for_non_multiple_of_8_channels_on_s3():
    assert geometry_hints("FULLY_CONNECTED", [[1, 176], [5, 176], [5]], None, "esp32s3")
    assert not geometry_hints("FULLY_CONNECTED", [[1, 176], [16, 176], [16]], None, "esp32s3")
    assert not geometry_hints("FULLY_CONNECTED", [[1, 176], [5, 176], [5]], None, "esp32")


def test_asymmetric_same_padding_is_flagged():
    same = SimpleNamespace(padding=0, strideH=1, strideW=2, dilationHFactor=1, dilationWFactor=1)
    # W = 10, stride 2 → 5 outputs. Kernel 4: total padding (5-1)*2+4-10 = 2, split evenly; kernel 3:
    # (5-1)*2+3-10 = 1, one column after and none before.
    assert geometry_hints("CONV_2D", [[1, 1, 10, 8], [16, 1, 3, 8]], same, None)[0].find("along W") > 0
    assert not geometry_hints("CONV_2D", [[1, 1, 10, 8], [16, 1, 4, 8]], same, None)
    valid = SimpleNamespace(**{**vars(same), "padding": 1})
    assert not geometry_hints("DEPTHWISE_CONV_2D", [[1, 1, 10, 8], [1, 1, 3, 8]], valid, None)


def test_localisation_failure_is_recorded_and_never_raised():
    class OldFirmware:
        def dump(self, _x):
            raise BoardError("board refused DUMP: UNKNOWN_TYPE: request type 0x40 (DUMP) is not supported",
                             "reflash", code="HIL408")

    class Broken:
        def dump(self, _x):
            raise RuntimeError("kaboom")

    model = SimpleNamespace(data=CNN1D.read_bytes())
    old = bench._localise(OldFirmware(), model, None, bytes(187))  # noqa: SLF001
    assert old["summary"].startswith("localisation failed: HIL408") and "UNKNOWN_TYPE" in old["error"]
    broken = bench._localise(Broken(), model, None, bytes(187))  # noqa: SLF001
    assert broken["summary"] == "localisation failed: RuntimeError: kaboom"


# ---- the whole HIL run -------------------------------------------------------------------------------------

def test_corrupt_layer_fault_is_localised_to_that_op(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "baselines"), "--records", "213", "--max-beats", "20",
           "--models", "cnn1d_beat", "--virtual-fault", "corrupt-layer:3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL501" in line)
    # cnn1d_beat's op 3 is its second CONV_2D (op 0 is a RESHAPE, op 2 a MAX_POOL_2D).
    assert "first diverging op #3 CONV_2D (" in line and "values differ" in line, line
    assert "Traceback" not in text
    (result,) = json.loads((out / "results.json").read_text())["results"]
    loc = result["bit_exact"]["localisation"]
    assert loc["first"]["op_index"] == 3 and loc["first"]["op"] == "CONV_2D"
    assert loc["first"]["values_differ"] == 1 and loc["first"]["output_quant"]["zero_point"] == -128
    junit = (out / "junit.xml").read_text()
    assert 'name="first_diverging_op_index" value="3"' in junit


@pytest.mark.parametrize("fault,reference,expected", [
    # The reported bug: tcn_beat's op 2 (STRIDED_SLICE) was blamed for any fault after it.
    ("corrupt-layer:7", "tflm", "first diverging op #7 ADD ("),
    ("flip-lsb:5", "tflite-ref", "all 25 dumped tensors match tflite-ref"),
])
def test_tcn_beat_fault_is_localised_where_it_was_made(tmp_path, fault, reference, expected):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--out", str(out),
           "--baseline-dir", str(tmp_path / "baselines"), "--records", "213", "--max-beats", "12",
           "--models", "tcn_beat", "--virtual-fault", fault, "--reference", reference]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    line = next(line for line in text.splitlines() if "HIL501" in line)
    assert expected in line, line
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert result["bit_exact"]["localisation"]["reference"] == reference


def test_dump_chunk_claiming_more_than_the_arena_is_refused():
    """One bad DUMP_TENSOR header (valid CRC, buggy firmware) must not make the host allocate gigabytes."""
    from harness.errors import ProtocolError
    from harness.link.protocol import DumpAssembler, DumpChunk

    assembler = DumpAssembler(max_total=1024)
    chunk = DumpChunk(index=0, count=1, tensor_index=0, op_index=0xFFFF, type=9, total=0xFFFFFFFF, offset=0,
                      data=b"\x01")
    with pytest.raises(ProtocolError) as info:
        assembler.add(chunk)
    assert info.value.code == "HIL303"
