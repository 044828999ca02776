"""Commands to a board over a Link: HELLO, model upload, a pipelined INFER stream with resend and dedup.

The board is whatever answers our protocol on the link (an ESP32 with firmware/main, or the virtual board).
Requests carry a seq; answers are matched by it, so stale answers from an earlier run, duplicates of
resent requests and log text between frames are all harmless. The stream keeps `window` INFER requests
in flight (consecutive seqs; a lost one being resent does not hold the others back) and delivers every beat
index exactly once. It survives a board that restarts mid-stream (see Board._recover).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from ..errors import BoardError, BoardTimeout, ConfigError, ProtocolError
from ..link.protocol import (
    MAX_PAYLOAD,
    PROTO_VERSION,
    DeviceError,
    DeviceErrorCode,
    DumpAssembler,
    DumpChunk,
    DumpedTensor,
    Frame,
    FrameDecoder,
    Hello,
    Inference,
    ModelInfo,
    ModelState,
    MsgType,
    encode_frame,
    parse_chunk_ack,
    parse_dump_end,
    type_name,
)
from ..link import protocol
from ..link.stream import REPEAT_HISTORY, RECOVER_ASK, Action, InferStream, StreamStats, _Pending
from ..link.transport import open_link

__all__ = ["Board", "StreamStats"]

_READ_SIZE = 65536
_FLASH_S_PER_BYTE = 10.0 / 1_000_000  # worst-case ESP32 flash erase with 4 KB sectors: ~10 s per MB
_MIN_CHUNK = 256       # smallest model chunk on a noisy link
_SENT_MEMORY = 1024    # requests remembered (seq → type) to tell a late answer from a stray (§11.2)
_EXCHANGE_STRAYS = 3   # strays during one command before HIL308
# Which reply types answer which request (ERROR answers any): a reply to a remembered seq of another
# type is a stray, not a late answer.
_REPLIES = {
    MsgType.HELLO: {MsgType.HELLO_ACK}, MsgType.MODEL_BEGIN: {MsgType.MODEL_BEGIN_ACK},
    MsgType.MODEL_CHUNK: {MsgType.CHUNK_ACK}, MsgType.MODEL_END: {MsgType.MODEL_INFO},
    MsgType.INFER: {MsgType.RESULT}, MsgType.RESET: {MsgType.RESET_ACK},
    MsgType.DUMP: {MsgType.DUMP_TENSOR, MsgType.DUMP_END},
    MsgType.OP_PROFILE: {MsgType.OP_TIMES}, MsgType.STATS: {MsgType.STATS_ACK},
}


class Board:
    def __init__(self, link, *, timeout_s: float = 5.0, window: int = 8, resend_after_s: float | None = None,
                 max_resends: int = 8, name: str = ""):
        if not 1 <= window <= 64:
            raise ConfigError(f"window {window} is outside 1..64 (protocol limit)", "set window to 1..64",
                              code="HIL103")
        self.link = link
        self.timeout_s = float(timeout_s)
        self.window = window
        self.resend_after_s = resend_after_s if resend_after_s is not None else min(0.25, self.timeout_s / 4)
        self.max_resends = max_resends
        self.name = name or link.url
        self.decoder = FrameDecoder()
        self.resends = 0  # requests sent again, over the Board's life (uploads and streams)
        self.last_hello: Hello | None = None
        self._seq = 0
        self._model_data: bytes | None = None  # what ensure_model put on the board: re-uploaded after a reset
        self._order = 0  # INFER transmissions so far (the link is FIFO: the device answers in this order)
        # At most `window` requests are in flight, but they need not be consecutive: while a lost one is
        # resent the others go on, up to `span` beats past the oldest unanswered one. That keeps a lossy
        # link's pipeline full; the span stays inside the device's repeat memory (64 seqs) so repeat flags
        # and restart probes stay true. Inputs are drawn at most `span` ahead of the oldest unanswered beat.
        self.span = min(4 * window, REPEAT_HISTORY - window) if window < REPEAT_HISTORY // 2 else window
        self.strays = 0  # frames with seqs never sent, over the Board's life (§11.2)
        self._sent: OrderedDict[int, int] = OrderedDict()  # recent requests: seq → type
        self._output_bytes: int | None = None  # MODEL_INFO's output size, checked on every RESULT (§6.4)
        self._output_sizes: dict[bytes, int] = {}  # model sha256 → MODEL_INFO output_bytes

    @classmethod
    def open(cls, url: str, baud: int, *, link_timeout: float = 0.05, **kwargs) -> Board:
        """Open the link (transport.open_link) and wrap it; close() closes both."""
        return cls(open_link(url, baud, timeout=link_timeout), **kwargs)

    # -- commands -----------------------------------------------------------------------------------

    def hello(self, attempts: int = 3) -> Hello:
        """Ask the board what it is. Sends HELLO up to `attempts` times within timeout_s (a board that
        was just reset may still be printing its boot log). HELLO offers protocol v1.1; a v1 board answers
        the v1 layout and the session is v1 (`Hello.protocol`)."""
        self.link.reset_input()
        frame = self._exchange(MsgType.HELLO, protocol.hello(), MsgType.HELLO_ACK, budget_s=self.timeout_s,
                               resend_every_s=self.timeout_s / max(1, attempts), max_resends=attempts - 1)
        if not frame.payload or frame.payload[0] != PROTO_VERSION:
            theirs = frame.payload[0] if frame.payload else "?"
            raise ProtocolError(f"{self.name} speaks HIL protocol version {theirs}, this harness speaks "
                                f"{PROTO_VERSION}",
                                "flash the firmware built from this checkout (omit --build-dir / see README)",
                                code="HIL302")
        self.last_hello = Hello.parse(frame.payload)
        return self.last_hello

    def ensure_model(self, data: bytes, *, force: bool = False,
                     on_progress: Callable[[int, int], None] | None = None) -> tuple[ModelInfo, bool]:
        """Make the board hold and run `data`. Returns (info, uploaded). Skips the upload when HELLO
        reports this sha256 loaded (info then has no tensor sizes: input_bytes/output_bytes None)."""
        self._model_data = bytes(data)
        hello = self.hello()
        digest = hashlib.sha256(data).digest()
        known = self._output_sizes.get(digest)  # output size from an earlier MODEL_INFO of this model
        self._output_bytes = known
        if not force and hello.model_state == ModelState.LOADED and hello.model_sha256 == digest.hex():
            return ModelInfo.from_hello(hello), False

        size = len(data)
        context = {"size": size, "capacity": hello.store_capacity, "arena": hello.arena_size}
        slow_s = self.timeout_s + size * _FLASH_S_PER_BYTE  # erase before BEGIN_ACK, hash + load before INFO
        # Slow commands are resent only on NAK or after a full timeout: an eager resend restarts the erase.
        self._exchange(MsgType.MODEL_BEGIN, protocol.model_begin(size, digest), MsgType.MODEL_BEGIN_ACK,
                       budget_s=2 * slow_s, resend_every_s=slow_s, context=context)
        chunk = min(hello.max_payload or MAX_PAYLOAD, MAX_PAYLOAD) - 4
        offset = 0
        stuck = 0
        while offset < size:
            ack, chunk = self._send_chunk(data, offset, chunk, context)
            next_offset = parse_chunk_ack(ack.payload)
            if next_offset > size:
                raise ProtocolError(f"{self.name} acknowledged {next_offset} model bytes of {size}",
                                    "the board's upload state is corrupt: reset the board and run again",
                                    code="HIL305")
            # The device tells us where to continue (lost acks, resends); follow it, but not forever.
            stuck = stuck + 1 if next_offset <= offset else 0
            if stuck > self.max_resends:
                raise ProtocolError(f"{self.name} keeps acknowledging model offset {next_offset} without "
                                    "storing more", "reset the board and run again", code="HIL305")
            offset = next_offset
            if on_progress is not None:
                on_progress(offset, size)
        try:
            frame = self._exchange(MsgType.MODEL_END, protocol.model_end(), MsgType.MODEL_INFO,
                                   budget_s=2 * slow_s, resend_every_s=slow_s, context=context)
        except BoardError as err:
            # A resent MODEL_END finds no upload when the first one was done and its MODEL_INFO was lost
            # on the way (a noisy link): then HELLO shows the model loaded.
            if err.device_code != DeviceErrorCode.BAD_STATE:
                raise
            hello = self.hello()
            if hello.model_state == ModelState.LOADED and hello.model_sha256 == digest.hex():
                return ModelInfo.from_hello(hello), True
            raise
        info = ModelInfo.parse(frame.payload)
        if info.sha256 != digest.hex():
            raise ProtocolError(f"{self.name} loaded a model with sha256 {info.sha256[:12]}…, we sent "
                                f"{digest.hex()[:12]}…", "reset the board and run again", code="HIL305")
        self._output_sizes[digest] = self._output_bytes = info.output_bytes
        return info, True

    def infer_stream(self, inputs: Iterable[bytes], *, total: int | None = None,
                     on_result: Callable[[int, Inference], None], output_bytes: int | None = None,
                     stats: StreamStats | None = None) -> StreamStats:
        """Run every input on the board, in order of index, `window` requests in flight.

        `inputs` is consumed lazily. on_result(index, inference) is called exactly once per index.
        Lost requests or answers are resent after a quiet spell; a NAK (a frame the device could not read)
        resends at once. No new result for timeout_s → BoardTimeout saying how far the stream got.
        A RESULT whose output is not `output_bytes` long (default: MODEL_INFO's) → HIL307; frames with
        seqs never sent → counted, HIL308 past a limit. `stats` (returned) is updated as the stream goes,
        so a caller that catches an error still has the real counters. The states and transitions are in
        harness/link/stream.py.
        """
        stats = stats if stats is not None else StreamStats()
        garbage0, bad0 = self.decoder.garbage_bytes, self.decoder.bad_frames
        stream = InferStream(self, inputs, total=total, on_result=on_result, stats=stats,
                             output_bytes=output_bytes if output_bytes is not None else self._output_bytes)
        try:
            while True:
                batch = stream.fill(time.monotonic())
                if batch:
                    self.link.write(b"".join(batch))
                if stream.done:
                    break
                recover = None
                for frame in self._read_frames():
                    recover = stream.on_frame(frame, time.monotonic())
                    if recover is not None:
                        break
                now = time.monotonic()
                if recover is not None:
                    if stream.outstanding and now - stream.last_progress >= self.timeout_s:
                        raise stream.timeout()
                    stream.recover(recover, now)
                    continue
                action = stream.on_quiet(now)
                if action == Action.RECOVER:
                    stream.recover(RECOVER_ASK, now)
                elif action == Action.RESEND_OLDEST:
                    stream.resend_oldest()
                elif action == Action.RESEND_ALL:
                    stream.resend_all(now)
        finally:
            self._seq = stream.seq_of(stream.next_index)
            stats.garbage_bytes += self.decoder.garbage_bytes - garbage0
            stats.bad_frames += self.decoder.bad_frames - bad0
            stats.wall_s += time.monotonic() - stream.started
        return stats

    # -- recovery mid-stream --------------------------------------------------------------------------

    def _send_chunk(self, data: bytes, offset: int, chunk: int, context: dict) -> tuple[Frame, int]:
        """One MODEL_CHUNK from `offset`; returns (CHUNK_ACK, the chunk size used).

        A chunk that keeps getting lost is halved and tried again, down to _MIN_CHUNK: at a bit error rate
        of 1e-4 a 4 KB chunk almost never arrives intact, a 512-byte one two times out of three.
        """
        while True:
            piece = data[offset:offset + chunk]
            wait = self.resend_after_s + 2 * self._wire_s(chunk + 16)
            last_try = chunk <= _MIN_CHUNK
            try:
                ack = self._exchange(MsgType.MODEL_CHUNK, protocol.model_chunk(offset, piece), MsgType.CHUNK_ACK,
                                     budget_s=self.timeout_s + wait if last_try else 2 * wait,
                                     resend_every_s=wait, max_resends=None if last_try else 3, context=context)
                return ack, chunk
            except BoardTimeout:
                if last_try:
                    raise
                chunk = max(_MIN_CHUNK, chunk // 2)

    def _resend(self, pendings, stats: StreamStats, probe: _Pending | None = None) -> None:
        """Send requests again with their seq (and a probe after them); they become the latest sent."""
        pendings = list(pendings)
        now = time.monotonic()
        self.link.write(b"".join(p.wire for p in pendings) + (probe.wire if probe is not None else b""))
        for p in pendings:
            p.sent_at = now
            p.last = self._order
            self._order += 1
        stats.resent += len(pendings)
        self.resends += len(pendings)

    def _recover(self, stats: StreamStats, *, restarted: bool, probe: _Pending | None, probes: set[int],
                 budget_s: float) -> bool | None:
        """Mid-stream HELLO after a silence, a refused INFER or a detected restart.

        A probe is a request the board already answered since the last HELLO, sent again: answered without
        the repeat flag, it shows the board forgot it, i.e. restarted (the board keeps its model across a
        restart, so HELLO alone cannot tell a restart from a stall). `probe` goes out just before the first
        HELLO, and `probes` (seqs) went out earlier: the board handles them before any HELLO clears its
        memory, whenever their answers arrive. A HELLO_ACK whose model is missing or has another sha256
        means the board lost the model: it is uploaded again (ensure_model). Returns None when no
        HELLO_ACK came within budget_s, else whether it uploaded the model.
        """
        if budget_s <= 0:
            return None
        seq = self._next_seq()
        hello = encode_frame(MsgType.HELLO, seq, protocol.hello())
        self.note_sent(seq, MsgType.HELLO)
        probe_seqs = set(probes)
        if probe is not None:
            probe_seqs.add(self._frame_seq(probe.wire))
        self.link.write((probe.wire if probe is not None else b"") + hello)
        started = last = time.monotonic()
        every = max(min(budget_s / 4, self.resend_after_s * 2), 0.05)
        answer = None
        while answer is None:
            for frame in self._read_frames():
                if frame.type == MsgType.RESULT and frame.seq in probe_seqs:
                    probe_seqs.discard(frame.seq)
                    if not Inference.parse(frame.payload).repeat:
                        restarted = True
                elif frame.type == MsgType.HELLO_ACK and frame.seq == seq:
                    answer = frame
                    break
            now = time.monotonic()
            if answer is None and now - started >= budget_s:
                return None
            if answer is None and now - last >= every:
                self.link.write(hello)  # without a probe: the first HELLO may have cleared the board's memory
                last = now
        stats.recoveries += 1
        try:
            self.last_hello = Hello.parse(answer.payload)
        except ProtocolError:
            return None
        expected = hashlib.sha256(self._model_data).hexdigest() if self._model_data is not None else None
        lost_model = expected is not None and not (self.last_hello.model_loaded
                                                   and self.last_hello.model_sha256 == expected)
        if restarted or lost_model:
            stats.resets += 1
        if not lost_model:
            return False
        self.ensure_model(self._model_data)
        stats.reuploads += 1
        return True

    @staticmethod
    def _frame_seq(wire: bytes) -> int:
        body = FrameDecoder().feed(wire)
        return body[0].seq if body else -1

    def reset(self) -> None:
        """Ask the firmware to restart (RESET → RESET_ACK). The board then boots; call hello() next, it
        waits for the boot. Only resent on NAK: a second RESET would land in the middle of the boot."""
        self._exchange(MsgType.RESET, protocol.reset(), MsgType.RESET_ACK, budget_s=self.timeout_s,
                       resend_every_s=self.timeout_s * 2)
        self.last_hello = None

    def op_profile(self, input: bytes) -> protocol.OpTimes:  # noqa: A002 - the model's input tensor
        """Cycles per op of one inference of `input` (OP_PROFILE, docs/protocol.md §12). A device without it
        answers UNKNOWN_TYPE: BoardError with device_code 8."""
        budget = self.timeout_s * 2
        frame = self._exchange(MsgType.OP_PROFILE, protocol.op_profile(input), MsgType.OP_TIMES,
                               budget_s=budget, resend_every_s=budget / 2)
        return protocol.OpTimes.parse(frame.payload)

    def stats(self) -> protocol.Health:
        """The device's health figures now (STATS, docs/protocol.md §13); UNKNOWN_TYPE on older firmware."""
        frame = self._exchange(MsgType.STATS, protocol.stats(), MsgType.STATS_ACK, budget_s=self.timeout_s,
                               resend_every_s=self.timeout_s / 3)
        return protocol.Health.parse(frame.payload)

    def dump(self, input: bytes) -> list[DumpedTensor]:  # noqa: A002 - the model's input tensor
        """Run one inference keeping every intermediate tensor (DUMP): the input and each op's outputs, in
        execution order. Frames lost on the way make the whole DUMP be asked again (it is a pure function
        of the input); no new frame for timeout_s → BoardTimeout."""
        seq = self._next_seq()
        wire = encode_frame(MsgType.DUMP, seq, protocol.dump(input))
        self.note_sent(seq, MsgType.DUMP)
        strays = 0
        frames_before, bytes_before = self.decoder.frames_ok, self.decoder.bytes_in
        self.link.write(wire)
        started = last_activity = time.monotonic()
        arena = self.last_hello.arena_size if self.last_hello and self.last_hello.arena_size else 16 << 20
        parts = DumpAssembler(max_total=arena)
        resends = 0
        while True:
            retry = False
            for frame in self._read_frames():
                if frame.type == MsgType.NAK:
                    retry = True
                    continue
                if frame.seq != seq:
                    if not self.is_stale(frame):
                        strays = self._count_stray(frame, strays)
                    continue
                if frame.type == MsgType.ERROR:
                    raise self._device_error(frame, {})
                if frame.type == MsgType.DUMP_TENSOR:
                    parts.add(DumpChunk.parse(frame.payload))
                    last_activity = time.monotonic()
                elif frame.type == MsgType.DUMP_END:
                    count = parse_dump_end(frame.payload)
                    if parts.complete(count):
                        return parts.tensors()
                    retry = True  # a chunk was lost: the device dumps again, the assembler fills the gaps
            now = time.monotonic()
            if now - last_activity >= self.timeout_s:
                raise self._no_answer(MsgType.DUMP, seq, now - started, frames_before, bytes_before)
            if retry:
                if resends >= self.max_resends:
                    raise ProtocolError(f"{self.name} never delivered a complete DUMP after {resends} resends",
                                        "check the cable and baud rate, then run again", code="HIL306")
                self.link.write(wire)
                resends += 1
                self.resends += 1
                last_activity = now

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        return seq

    def _wire_s(self, nbytes: int) -> float:
        """Time to move nbytes at the link's baud (8N1: 10 bits a byte)."""
        baud = getattr(self.link, "baud", 0) or 0
        return nbytes * 10 / baud if baud > 0 else 0.0

    def _read_frames(self) -> list[Frame]:
        data = self.link.read(_READ_SIZE)
        return self.decoder.feed(data) if data else []

    def _exchange(self, mtype: int, payload: bytes, expect: int, *, budget_s: float, resend_every_s: float,
                  max_resends: int | None = None, context: dict | None = None) -> Frame:
        """One request, stop-and-wait: send, resend on NAK or when `resend_every_s` passes without the
        answer, give up after `budget_s`. Returns the answer with our seq; device ERROR → BoardError."""
        limit = self.max_resends if max_resends is None else max_resends
        seq = self._next_seq()
        wire = encode_frame(mtype, seq, payload)
        self.note_sent(seq, mtype)
        strays = 0
        frames_before = self.decoder.frames_ok
        bytes_before = self.decoder.bytes_in
        self.link.write(wire)
        started = last_send = time.monotonic()
        resends = 0
        while True:
            nak = False
            for frame in self._read_frames():
                if frame.type == MsgType.NAK:
                    nak = True
                elif frame.seq == seq and frame.type == expect:
                    return frame
                elif frame.seq == seq and frame.type == MsgType.ERROR:
                    raise self._device_error(frame, context or {})
                elif not self.is_stale(frame):
                    strays = self._count_stray(frame, strays)
                    # The board is alive and answers, with the wrong seq: ask again now rather than after
                    # the resend interval, so a broken board is named in milliseconds, not at the timeout.
                    nak = nak or frame.type == expect
            now = time.monotonic()
            if now - started >= budget_s:
                raise self._no_answer(mtype, seq, now - started, frames_before, bytes_before)
            if (nak or now - last_send >= resend_every_s) and resends < limit:
                self.link.write(wire)
                resends += 1
                self.resends += 1
                last_send = now

    def note_sent(self, seq: int, mtype: int) -> None:
        """Remember a request (seq → type) so a late answer to it is told apart from a stray."""
        sent = self._sent
        sent[seq] = mtype
        sent.move_to_end(seq)
        if len(sent) > _SENT_MEMORY:
            sent.popitem(last=False)

    def is_stale(self, frame: Frame) -> bool:
        """A late answer to a request sent recently (a resend's second answer, a reply that came after we
        gave up): harmless. Anything else with a seq never sent, or of a type that does not answer what
        was sent with that seq, is a stray (docs/protocol.md §11.2)."""
        mtype = self._sent.get(frame.seq)
        if mtype is None:
            return False
        return frame.type == MsgType.ERROR or frame.type in _REPLIES.get(mtype, ())

    def _count_stray(self, frame: Frame, seen: int) -> int:
        """One more stray during a command; past the limit the board is broken: HIL308 at once."""
        self.strays += 1
        seen += 1
        if seen >= _EXCHANGE_STRAYS:
            raise self._strays_error(frame, seen, "during one command")
        return seen

    def _strays_error(self, frame: Frame, count: int, when: str) -> ProtocolError:
        sent = f"; the last seq we sent was {(self._seq - 1) & 0xFFFF}" if self._sent else ""
        return ProtocolError(
            f"{self.name} sent {count} frames {when} with seqs we never sent (the latest: {type_name(frame.type)} "
            f"seq {frame.seq}{sent}); docs/protocol.md §11.2",
            "the firmware does not echo the request's seq in its replies: fix or reflash it (check a "
            "third-party board with pytest tests/conformance --device PORT)", code="HIL308")

    def _no_answer(self, mtype: int, seq: int, waited: float, frames_before: int,
                   bytes_before: int) -> Exception:
        where = getattr(self.link, "url", self.name)
        if self.decoder.frames_ok == frames_before and self.decoder.bytes_in > bytes_before:
            baud = getattr(self.link, "baud", None)
            return ProtocolError(
                f"bytes arrive on {where}{f' at {baud} baud' if baud else ''} but no HIL frame",
                "wrong baud rate (try --baud 115200/921600) or the board runs other firmware "
                "(flash ours: omit --build-dir / see README)", code="HIL301")
        if self.decoder.frames_ok == frames_before:
            return BoardTimeout(f"no answer from {where} within {waited:.1f}s (to {type_name(mtype)})",
                                "check the port, press reset, or check that our firmware is flashed",
                                code="HIL311")
        return BoardTimeout(f"{where} answers, but not to {type_name(mtype)} (seq {seq}) within {waited:.1f}s",
                            "reset the board and run again; if it repeats, the firmware does not match this "
                            "harness (reflash it)", code="HIL313")

    def _stream_timeout(self, delivered: int, total: int | None, drawn: int, exhausted: bool,
                        oldest: _Pending, seq: int) -> BoardTimeout:
        of = total if total is not None else (drawn if exhausted else None)
        of_text = f"{of}" if of is not None else f"{drawn}+"
        stopped_at = f"beat {oldest.index} (seq {seq})"
        return BoardTimeout(
            f"{self.name} stopped answering: {delivered} of {of_text} beats verified, no result for "
            f"{self.timeout_s:g}s; stopped at {stopped_at}",
            "check the board's power and cable and its serial log (crash, watchdog reset, brownout), then "
            "run again", verified=delivered, total=of if of is not None else drawn, stopped_at=stopped_at,
            code="HIL312")

    def _device_error(self, frame: Frame, context: dict) -> BoardError:
        try:
            err = DeviceError.parse(frame.payload)
        except ProtocolError:
            err = DeviceError(0, 0, frame.payload.hex())
        request = type_name(err.request_type)
        where = f" at beat {context['beat']}" if "beat" in context else ""
        context = {**context, "message": err.message,
                   "chip": self.last_hello.chip if self.last_hello is not None else None}
        return BoardError(f"{self.name} refused {request}{where}: {err.name}: {err.message}",
                          _hint(err.code, context), device_code=err.code,
                          code=_BOARD_ERROR_CODES.get(err.code, "HIL499"))


# The device's ERROR code → the harness code (HIL4 + the device code), written out so that each code can be
# found in the source and in docs/errors.md; a code this harness does not know is HIL499.
_BOARD_ERROR_CODES = {
    DeviceErrorCode.BAD_STATE: "HIL401",
    DeviceErrorCode.TOO_LARGE: "HIL402",
    DeviceErrorCode.SHA_MISMATCH: "HIL403",
    DeviceErrorCode.BAD_OFFSET: "HIL404",
    DeviceErrorCode.LOAD_FAILED: "HIL405",
    DeviceErrorCode.BAD_INPUT_SIZE: "HIL406",
    DeviceErrorCode.INVOKE_FAILED: "HIL407",
    DeviceErrorCode.UNKNOWN_TYPE: "HIL408",
    DeviceErrorCode.BAD_LENGTH: "HIL409",
    DeviceErrorCode.STORE_FAILED: "HIL410",
    DeviceErrorCode.ARENA_TOO_SMALL: "HIL411",
}


_NEEDS = re.compile(r"needs (\d+) bytes of tensor arena")


def _arena_hint(message: str, arena: int | None, chip: str | None) -> str:
    """The fix for ARENA_TOO_SMALL, with the bytes the device (or the virtual board's probe) measured."""
    match = _NEEDS.search(message)
    have = f" (it reserves {arena})" if arena else ""
    if match is None:
        return (f"the firmware's tensor arena is too small{have}: raise CONFIG_HIL_ARENA_SIZE and the profile's "
                "arena_bytes and rebuild the firmware, or use a smaller model")
    need = int(match.group(1))
    if chip == "virtual":
        return f"raise arena_bytes in the device profile to at least {need}{have}, or use a smaller model"
    where = f"firmware/sdkconfig.defaults.{chip}" if chip else "firmware/sdkconfig.defaults.<target>"
    return (f"raise CONFIG_HIL_ARENA_SIZE to at least {need} in {where} and arena_bytes in the device profile to "
            f"match{have}, then rebuild and flash; or use a smaller model")


def _hint(code: int, context: dict) -> str:
    size, capacity, arena = context.get("size"), context.get("capacity"), context.get("arena")
    if code == DeviceErrorCode.TOO_LARGE:
        if size == 0:
            return "the model file is empty: rebuild or re-download it"
        return (f"model is {size} bytes, the board's model store holds {capacity}: shrink the model or use a "
                "profile with a larger model partition")
    if code == DeviceErrorCode.ARENA_TOO_SMALL:
        return _arena_hint(context.get("message") or "", arena, context.get("chip"))
    return {
        DeviceErrorCode.BAD_STATE: "the board lost its upload or model state (reset mid-run?): run again",
        DeviceErrorCode.SHA_MISMATCH: "the stored bytes differ from the sent ones: check the cable and baud "
                                      "rate and run again; if it repeats the flash partition may be failing",
        DeviceErrorCode.BAD_OFFSET: "reset the board and run again",
        DeviceErrorCode.LOAD_FAILED: "the firmware cannot run this model: add the missing op to the "
                                     "firmware's op resolver, or convert the model with supported ops",
        DeviceErrorCode.BAD_INPUT_SIZE: "the input size differs from the loaded model's input tensor: the board "
                                        "holds another model than the one benchmarked (rerun with force upload)",
        DeviceErrorCode.INVOKE_FAILED: "the interpreter failed on the board: check the model on the host "
                                       "reference first, then the board's serial log",
        DeviceErrorCode.UNKNOWN_TYPE: "the firmware is older than this harness: reflash it",
        DeviceErrorCode.BAD_LENGTH: "the firmware and harness disagree on a message layout: reflash the firmware",
        DeviceErrorCode.STORE_FAILED: "the board could not write its model partition: check the partition table "
                                      "(firmware/partitions.csv) and reflash",
    }.get(code, "see the board's message; reflash the firmware built from this checkout if it persists")
