"""Commands to a board over a Link: HELLO, model upload, a pipelined INFER stream with resend and dedup.

The board is whatever answers our protocol on the link (an ESP32 with firmware/main, or the virtual board).
Requests carry a seq; answers are matched by it, so stale answers from an earlier run, duplicates of
resent requests and log text between frames are all harmless. The stream keeps `window` INFER requests
in flight (a sliding window of consecutive seqs) and delivers every beat index exactly once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import BoardError, BoardTimeout, ConfigError, ProtocolError
from .protocol import (
    MAX_PAYLOAD,
    PROTO_VERSION,
    DeviceError,
    DeviceErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Inference,
    ModelInfo,
    ModelState,
    MsgType,
    encode_frame,
    parse_chunk_ack,
    type_name,
)
from . import protocol
from .transport import open_link

_READ_SIZE = 65536
_FLASH_S_PER_BYTE = 10.0 / 1_000_000  # worst-case ESP32 flash erase with 4 KB sectors: ~10 s per MB


@dataclass
class StreamStats:
    """What a stream cost on the link. `sent` counts beats sent once; `resent` every INFER sent again."""

    sent: int = 0
    resent: int = 0
    naks: int = 0
    duplicates: int = 0
    garbage_bytes: int = 0
    bad_frames: int = 0
    wall_s: float = 0.0  # host wall time of the whole stream


class _Pending:
    __slots__ = ("index", "wire", "sent_at")

    def __init__(self, index: int, wire: bytes, sent_at: float):
        self.index = index
        self.wire = wire
        self.sent_at = sent_at


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

    @classmethod
    def open(cls, url: str, baud: int, *, link_timeout: float = 0.05, **kwargs) -> Board:
        """Open the link (transport.open_link) and wrap it; close() closes both."""
        return cls(open_link(url, baud, timeout=link_timeout), **kwargs)

    # -- commands -----------------------------------------------------------------------------------

    def hello(self, attempts: int = 3) -> Hello:
        """Ask the board what it is. Sends HELLO up to `attempts` times within timeout_s (a board that
        was just reset may still be printing its boot log)."""
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
        chunk_wait = self.resend_after_s + 2 * self._wire_s(chunk + 16)
        offset = 0
        stuck = 0
        while offset < size:
            piece = data[offset:offset + chunk]
            ack = self._exchange(MsgType.MODEL_CHUNK, protocol.model_chunk(offset, piece), MsgType.CHUNK_ACK,
                                 budget_s=self.timeout_s + chunk_wait, resend_every_s=chunk_wait,
                                 context=context)
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
        frame = self._exchange(MsgType.MODEL_END, protocol.model_end(), MsgType.MODEL_INFO,
                               budget_s=2 * slow_s, resend_every_s=slow_s, context=context)
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
        try:
            while True:
                now = time.monotonic()
                batch = []
                while not exhausted and (not outstanding
                                         or next_index - next(iter(outstanding.values())).index < self.window):
                    try:
                        tensor = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    seq = (base + next_index) & 0xFFFF
                    wire = encode_frame(MsgType.INFER, seq, tensor)
                    outstanding[seq] = _Pending(next_index, wire, now)
                    batch.append(wire)
                    next_index += 1
                if batch:
                    self.link.write(b"".join(batch))
                    stats.sent += len(batch)
                if exhausted and not outstanding:
                    break

                for frame in self._read_frames():
                    kind = frame.type
                    if kind == MsgType.RESULT:
                        pending = outstanding.pop(frame.seq, None)
                        if pending is None:
                            stats.duplicates += 1
                            continue
                        on_result(pending.index, Inference.parse(frame.payload, frame.seq))
                        delivered += 1
                        t = time.monotonic()
                        if rounds == 0 and delivered > 1:
                            gap_ewma = 0.8 * gap_ewma + 0.2 * (t - last_progress)
                        last_progress = t
                        rounds = 0
                    elif kind == MsgType.NAK:
                        stats.naks += 1
                        nak_pending = True
                    elif kind == MsgType.ERROR and frame.seq in outstanding:
                        raise self._device_error(frame, {"beat": outstanding[frame.seq].index})
                    # anything else is a stale answer to an earlier command: ignore it

                if not outstanding:
                    nak_pending = False  # nothing left that a NAK could have been about
                    continue
                now = time.monotonic()
                oldest = next(iter(outstanding.values()))
                if now - last_progress >= self.timeout_s:
                    raise self._stream_timeout(delivered, total, next_index, exhausted, oldest,
                                               (base + oldest.index) & 0xFFFF)
                in_flight = sum(len(p.wire) for p in outstanding.values())
                patience = min(max(self.resend_after_s, 3 * gap_ewma) + self._wire_s(in_flight),
                               self.timeout_s / 2)
                quiet = now - max(last_progress, oldest.sent_at) >= patience
                # NAKs come one per damaged frame; one resend answers all NAKs for frames sent before it.
                nak_due = nak_pending and now - last_resend >= self._wire_s(in_flight) + 0.005
                if (nak_due or quiet) and rounds < self.max_resends:
                    self.link.write(b"".join(p.wire for p in outstanding.values()))
                    for p in outstanding.values():
                        p.sent_at = now
                    stats.resent += len(outstanding)
                    self.resends += len(outstanding)
                    rounds += 1
                    last_resend = now
                    nak_pending = False
        finally:
            self._seq = (base + next_index) & 0xFFFF
            stats.garbage_bytes = self.decoder.garbage_bytes - garbage0
            stats.bad_frames = self.decoder.bad_frames - bad0
            stats.wall_s = time.monotonic() - started
        return stats

    def reset(self) -> None:
        """Ask the firmware to restart (RESET → RESET_ACK). The board then boots; call hello() next, it
        waits for the boot. Only resent on NAK: a second RESET would land in the middle of the boot."""
        self._exchange(MsgType.RESET, protocol.reset(), MsgType.RESET_ACK, budget_s=self.timeout_s,
                       resend_every_s=self.timeout_s * 2)
        self.last_hello = None

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
        code = err.code if 0 < err.code < 100 else 99
        request = type_name(err.request_type)
        where = f" at beat {context['beat']}" if "beat" in context else ""
        return BoardError(f"{self.name} refused {request}{where}: {err.name}: {err.message}",
                          _hint(err.code, context), device_code=err.code, code=f"HIL4{code:02d}")


def _hint(code: int, context: dict) -> str:
    size, capacity, arena = context.get("size"), context.get("capacity"), context.get("arena")
    if code == DeviceErrorCode.TOO_LARGE:
        if size == 0:
            return "the model file is empty: rebuild or re-download it"
        return (f"model is {size} bytes, the board's model store holds {capacity}: shrink the model or use a "
                "profile with a larger model partition")
    if code == DeviceErrorCode.ARENA_TOO_SMALL:
        return (f"the firmware reserves {arena} bytes of tensor arena: raise arena_bytes in the device profile "
                "and rebuild the firmware, or use a smaller model")
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
