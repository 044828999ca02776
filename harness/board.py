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
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import BoardError, BoardTimeout, ConfigError, ProtocolError
from .protocol import (
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
from . import protocol
from .transport import open_link

_READ_SIZE = 65536
_FLASH_S_PER_BYTE = 10.0 / 1_000_000  # worst-case ESP32 flash erase with 4 KB sectors: ~10 s per MB
_REPEAT_HISTORY = 64   # seqs the device remembers for the RESULT repeat flag (HIL_REPEAT_HISTORY)
_MAX_RECOVERIES = 3    # HELLO recoveries in a row without a new result before the stream gives up
_MIN_CHUNK = 256       # smallest model chunk on a noisy link


@dataclass
class StreamStats:
    """What a stream cost on the link. `sent` counts beats sent once; `resent` every INFER sent again."""

    sent: int = 0
    resent: int = 0
    naks: int = 0
    duplicates: int = 0
    garbage_bytes: int = 0
    bad_frames: int = 0
    resets: int = 0       # board restarts seen mid-stream (repeat probe or HELLO showing the model lost)
    reuploads: int = 0    # model uploads to recover from a restart
    recoveries: int = 0   # silences or refusals answered by a HELLO mid-stream
    wall_s: float = 0.0  # host wall time of the whole stream


class _Pending:
    # first/last: transmission numbers of its first and latest sending (see Board._overtaken).
    __slots__ = ("index", "wire", "sent_at", "first", "last")

    def __init__(self, index: int, wire: bytes, sent_at: float, order: int = 0):
        self.index = index
        self.wire = wire
        self.sent_at = sent_at
        self.first = self.last = order


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
        self.span = min(4 * window, _REPEAT_HISTORY - window) if window < _REPEAT_HISTORY // 2 else window

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
        return info, True

    def infer_stream(self, inputs: Iterable[bytes], *, total: int | None = None,
                     on_result: Callable[[int, Inference], None]) -> StreamStats:
        """Run every input on the board, in order of index, `window` requests in flight.

        `inputs` is consumed lazily. on_result(index, inference) is called exactly once per index.
        Lost requests or answers are resent after a quiet spell; a NAK (a frame the device could not read)
        resends at once. No new result for timeout_s → BoardTimeout saying how far the stream got.
        """
        stats = StreamStats()
        garbage0, bad0 = self.decoder.garbage_bytes, self.decoder.bad_frames
        started = time.monotonic()
        source = iter(inputs)
        exhausted = False
        outstanding: OrderedDict[int, _Pending] = OrderedDict()  # seq → request, oldest first
        base = self._seq
        next_index = 0
        delivered = 0
        last_progress = started
        last_resend = 0.0
        rounds = 0  # resend rounds since the last new result
        nak_pending = False
        gap_ewma = 0.0  # typical time between results, so a slow model is not mistaken for a lost frame
        nak_at = 0.0
        # Restart detection (see _recover): recently retired requests, resent as probes after a silence.
        retired: deque[_Pending] = deque(maxlen=8)
        probes: dict[int, int] = {}  # seq of a probe on its way → next_index when it was sent
        spare: _Pending | None = None  # a probe kept for when a silence ends without any probe answered
        recoveries = 0  # HELLO recoveries since the last new result
        quick = 0  # quick resends of the oldest request since the last new result
        try:
            while True:
                now = time.monotonic()
                batch = []
                # `window` requests in flight; a lost one being resent does not stall the others, up to a
                # span the device's repeat memory covers (so repeat flags and restart probes stay true).
                while not exhausted and (not outstanding
                                         or (len(outstanding) < self.window
                                             and next_index - next(iter(outstanding.values())).index < self.span)):
                    try:
                        tensor = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    seq = (base + next_index) & 0xFFFF
                    wire = encode_frame(MsgType.INFER, seq, tensor)
                    outstanding[seq] = _Pending(next_index, wire, now, self._order)
                    self._order += 1
                    batch.append(wire)
                    next_index += 1
                if batch:
                    self.link.write(b"".join(batch))
                    stats.sent += len(batch)
                if exhausted and not outstanding:
                    break

                recover = None  # None: carry on; False: ask the board (HELLO); True: it restarted
                for frame in self._read_frames():
                    kind = frame.type
                    if kind == MsgType.RESULT:
                        pending = outstanding.pop(frame.seq, None)
                        if pending is None:
                            # A probe lost long ago tells nothing now (its seq may be a new beat's by then).
                            if next_index - probes.pop(frame.seq, -_REPEAT_HISTORY) < _REPEAT_HISTORY:
                                spare = None  # this answer is the verdict on the silence
                                if not Inference.parse(frame.payload).repeat:
                                    recover = True  # it forgot a seq it answered: it restarted
                                    break
                                continue
                            stats.duplicates += 1
                            continue
                        on_result(pending.index, Inference.parse(frame.payload, frame.seq))
                        delivered += 1
                        t = time.monotonic()
                        if rounds == 0 and delivered > 1:
                            gap_ewma = 0.8 * gap_ewma + 0.2 * (t - last_progress)
                        last_progress = t
                        if rounds and spare is not None:
                            # The board is back from a silence but no probe got through: ask once more
                            # whether it restarted (no HELLO went since, so the answer is still true).
                            self.link.write(spare.wire)
                            probes[(base + spare.index) & 0xFFFF] = next_index
                            spare = None
                        rounds = 0
                        recoveries = quick = 0
                        retired.append(pending)
                        lost = self._overtaken(outstanding, pending)
                        if lost:
                            self._resend(lost, stats)
                            nak_pending = False  # the NAK was about one of these
                    elif kind == MsgType.NAK:
                        stats.naks += 1
                        if not nak_pending:
                            nak_at = time.monotonic()
                        nak_pending = True
                    elif kind == MsgType.ERROR and frame.seq in outstanding:
                        if (self._model_data is not None and recoveries < _MAX_RECOVERIES
                                and _device_code(frame) == DeviceErrorCode.BAD_STATE):
                            recover = False  # no model any more: restarted without it? ask, upload again
                            break
                        raise self._device_error(frame, {"beat": outstanding[frame.seq].index})
                    # anything else is a stale answer to an earlier command: ignore it

                if not outstanding and recover is None:
                    nak_pending = False  # nothing left that a NAK could have been about
                    continue
                now = time.monotonic()
                if outstanding:
                    oldest = next(iter(outstanding.values()))
                    if now - last_progress >= self.timeout_s:
                        raise self._stream_timeout(delivered, total, next_index, exhausted, oldest,
                                                   (base + oldest.index) & 0xFFFF)
                    in_flight = sum(len(p.wire) for p in outstanding.values())
                    patience = min(max(self.resend_after_s, 3 * gap_ewma) + self._wire_s(in_flight),
                                   self.timeout_s / 2)
                    quiet = now - max(last_progress, oldest.sent_at) >= patience
                    # A NAK is answered by the next result (which shows what was lost, see _overtaken);
                    # only a NAK no result follows (the last frame sent was damaged) needs a resend.
                    settle = max(self._wire_s(in_flight) + 0.005, 3 * gap_ewma)
                    nak_due = nak_pending and now - last_resend >= settle and now - nak_at >= settle
                    if quiet and rounds >= 1 and recover is None and recoveries < _MAX_RECOVERIES:
                        recover = False  # silent through a resend: ask the board what happened
                    elif (not quiet and recover is None and quick < 3 and rounds == 0
                          and self._due_again(outstanding, oldest, now - max(last_progress, oldest.sent_at),
                                              gap_ewma, in_flight)):
                        self._resend([oldest], stats)
                        quick += 1
                        continue
                if recover is not None:
                    recoveries += 1
                    probe = retired.pop() if retired else None
                    recent = {seq for seq, at in probes.items() if next_index - at < _REPEAT_HISTORY}
                    outcome = self._recover(stats, restarted=recover, probe=probe, probes=recent,
                                            budget_s=self.timeout_s - (now - last_progress))
                    if outcome is None:
                        if outstanding:
                            raise self._stream_timeout(delivered, total, next_index, exhausted, oldest,
                                                       (base + oldest.index) & 0xFFFF)
                        continue
                    if outcome:  # uploaded again: the board is working, give it a full timeout
                        last_progress = time.monotonic()
                    retired.clear()  # HELLO cleared the device's repeat history: old probes tell nothing
                    probes.clear()
                    spare = None
                    self._resend(outstanding.values(), stats)
                    rounds, last_resend, nak_pending = rounds + 1, time.monotonic(), False
                    continue
                if (nak_due or quiet) and rounds < self.max_resends:
                    probe = None
                    if quiet and retired and next_index - retired[-1].index < _REPEAT_HISTORY:
                        probe = retired.pop()
                        probes[(base + probe.index) & 0xFFFF] = next_index
                        if rounds == 0 and retired:
                            spare = retired.pop()
                    self._resend(outstanding.values(), stats, probe)
                    rounds += 1
                    last_resend = now
                    nak_pending = False
        finally:
            self._seq = (base + next_index) & 0xFFFF
            stats.garbage_bytes = self.decoder.garbage_bytes - garbage0
            stats.bad_frames = self.decoder.bad_frames - bad0
            stats.wall_s = time.monotonic() - started
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

    def _due_again(self, outstanding: OrderedDict, oldest: _Pending, waited: float, gap: float,
                   in_flight: int) -> bool:
        """A resent oldest request whose answer is overdue: everything sent before it has been answered,
        so its answer was next, about one result gap after the last. Without this, a resend that is lost
        again would wait the full patience, with the window stuck behind it and nothing to overtake it."""
        if oldest.last == oldest.first or gap <= 0.0:
            return False  # sent once (the normal patience applies) or no result rhythm yet
        if waited < max(4 * gap, 0.002) + self._wire_s(in_flight):
            return False
        return not any(p.last < oldest.last for p in outstanding.values() if p is not oldest)

    @staticmethod
    def _overtaken(outstanding: OrderedDict, answered: _Pending) -> list[_Pending]:
        """Requests that an answer has overtaken: lost on the way, or their answer was.

        The link and the device keep order, so a request whose latest sending went out before `answered`
        was first sent would have been answered first. Resending those at once, instead of after a quiet
        spell, keeps the pipeline full on a lossy link; a wrong guess costs one duplicate, never a beat.
        """
        lost = []
        for p in outstanding.values():  # oldest first; later ones were first sent after `answered`
            if p.first >= answered.first:
                break
            if p.last < answered.first:
                lost.append(p)
        return lost

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

    def dump(self, input: bytes) -> list[DumpedTensor]:  # noqa: A002 - the model's input tensor
        """Run one inference keeping every intermediate tensor (DUMP): the input and each op's outputs, in
        execution order. Frames lost on the way make the whole DUMP be asked again (it is a pure function
        of the input); no new frame for timeout_s → BoardTimeout."""
        seq = self._next_seq()
        wire = encode_frame(MsgType.DUMP, seq, protocol.dump(input))
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
                if frame.seq != seq:
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
        frames_before = self.decoder.frames_ok
        bytes_before = self.decoder.bytes_in
        self.link.write(wire)
        started = last_send = time.monotonic()
        resends = 0
        while True:
            nak = False
            for frame in self._read_frames():
                if frame.seq == seq and frame.type == expect:
                    return frame
                if frame.seq == seq and frame.type == MsgType.ERROR:
                    raise self._device_error(frame, context or {})
                if frame.type == MsgType.NAK:
                    nak = True
            now = time.monotonic()
            if now - started >= budget_s:
                raise self._no_answer(mtype, seq, now - started, frames_before, bytes_before)
            if (nak or now - last_send >= resend_every_s) and resends < limit:
                self.link.write(wire)
                resends += 1
                self.resends += 1
                last_send = now

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


def _device_code(frame: Frame) -> int:
    try:
        return DeviceError.parse(frame.payload).code
    except ProtocolError:
        return 0


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
