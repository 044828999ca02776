"""The INFER stream as a small state machine: what to send, what an arriving frame means, what a quiet
spell calls for (docs/protocol.md §6). No I/O: `Board.infer_stream` drives it, and tests drive each
transition one by one with a fake board.

State: the outstanding requests (seq → _Pending, oldest first), the recently answered ones (restart
probes), and the resend bookkeeping. Events and their transitions:

- `fill(now)`: draw inputs while fewer than `window` requests (and fewer than the device's receive buffer
  in bytes, §6.6) are in flight and the newest is within `span` of the oldest unanswered → wires to send.
- `on_frame(frame, now)`: RESULT of an outstanding seq → delivered once, overtaken requests resent;
  RESULT of a recently retired seq → duplicate; of a restart probe → verdict on a silence; anything with a
  seq never sent → stray (§11.2, fatal past a limit); RESULT of the wrong length → HIL307 (§6.4); NAK →
  a resend once no result follows it; ERROR of an outstanding beat → recovery (BAD_STATE) or BoardError.
  Returns None, or the recovery to run: `RECOVER_ASK` (ask HELLO) or `RECOVER_RESTARTED`.
- `on_quiet(now)`: nothing (or not enough) arrived → one of `Action.*` below, or a timeout.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import ProtocolError
from .protocol import DeviceError, DeviceErrorCode, Frame, Inference, MsgType, encode_frame

REPEAT_HISTORY = 64   # seqs the device remembers for the RESULT repeat flag (HIL_REPEAT_HISTORY, §6.2)
MAX_RECOVERIES = 3    # HELLO recoveries in a row without a new result before the stream gives up
STRAY_LIMIT = 16      # frames with seqs never sent, per stream, before HIL308 (§11.2)
V1_RX_BUFFER = 16384  # what the host assumes a v1.0 board buffers (§6.6)

RECOVER_ASK = False        # ask the board what happened (HELLO)
RECOVER_RESTARTED = True   # it forgot a seq it had answered: it restarted


@dataclass
class StreamStats:
    """What a stream cost on the link. `sent` counts beats sent once; `resent` every INFER sent again."""

    sent: int = 0
    resent: int = 0
    naks: int = 0
    duplicates: int = 0
    strays: int = 0       # frames with a seq this host never sent (or long ago), §11.2
    garbage_bytes: int = 0
    bad_frames: int = 0
    resets: int = 0       # board restarts seen mid-stream (repeat probe or HELLO showing the model lost)
    reuploads: int = 0    # model uploads to recover from a restart
    recoveries: int = 0   # silences or refusals answered by a HELLO mid-stream
    wall_s: float = 0.0  # host wall time of the whole stream

    def add(self, other: StreamStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Pending:
    # first/last: transmission numbers of its first and latest sending (see overtaken()).
    __slots__ = ("index", "wire", "sent_at", "first", "last")

    def __init__(self, index: int, wire: bytes, sent_at: float, order: int = 0):
        self.index = index
        self.wire = wire
        self.sent_at = sent_at
        self.first = self.last = order


class Action:
    """What on_quiet asks the driver to do."""

    WAIT = "wait"              # nothing yet
    RESEND_OLDEST = "oldest"   # the resent oldest request is overdue: send it once more
    RESEND_ALL = "all"         # a quiet spell or a NAK: resend everything outstanding (and a probe)
    RECOVER = "recover"        # silent through a resend round: ask the board (HELLO)


def overtaken(outstanding: OrderedDict, answered: _Pending) -> list[_Pending]:
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


class InferStream:
    """State of one `Board.infer_stream` call. `board` supplies the link facts and the counters it shares
    with other commands: timeout_s, window, span, resend_after_s, max_resends, name, _order, _wire_s(),
    _model_data, _stream_timeout(), _device_error(), last_hello, note_sent()."""

    def __init__(self, board, inputs: Iterable[bytes], *, total: int | None,
                 on_result: Callable[[int, Inference], None], stats: StreamStats,
                 output_bytes: int | None = None, now: float | None = None):
        self.board = board
        self.total = total
        self.on_result = on_result
        self.stats = stats
        self.output_bytes = output_bytes
        now = time.monotonic() if now is None else now
        self.started = now
        self.source: Iterator[bytes] = iter(inputs)
        self.held: bytes | None = None  # drawn but over the device's buffer: sent by a later fill
        self.exhausted = False
        self.outstanding: OrderedDict[int, _Pending] = OrderedDict()  # seq → request, oldest first
        self.base = board._seq
        self.next_index = 0
        self.delivered = 0
        self.last_progress = now
        self.last_resend = 0.0
        self.rounds = 0  # resend rounds since the last new result
        self.nak_pending = False
        self.nak_at = 0.0
        self.gap_ewma = 0.0  # typical time between results, so a slow model is not mistaken for a lost frame
        # Restart detection (see Board._recover): recently retired requests, resent as probes after a silence.
        self.retired: deque[_Pending] = deque(maxlen=8)
        self.probes: dict[int, int] = {}  # seq of a probe on its way → next_index when it was sent
        self.spare: _Pending | None = None  # a probe kept for when a silence ends without any probe answered
        self.recoveries = 0  # HELLO recoveries since the last new result
        self.quick = 0  # quick resends of the oldest request since the last new result
        hello = board.last_hello
        rx = (hello.rx_buffer if hello is not None and hello.proto_minor >= 1 and hello.rx_buffer
              else V1_RX_BUFFER)
        self.max_inflight_bytes = rx
        self.inflight_bytes = 0
        self.quiet = False  # the last on_quiet found the oldest request past its patience

    # -- helpers ------------------------------------------------------------------------------------
    def seq_of(self, index: int) -> int:
        return (self.base + index) & 0xFFFF

    @property
    def done(self) -> bool:
        return self.exhausted and not self.outstanding

    @property
    def oldest(self) -> _Pending | None:
        return next(iter(self.outstanding.values()), None)

    def _retire(self, seq: int) -> _Pending | None:
        pending = self.outstanding.pop(seq, None)
        if pending is not None:
            self.inflight_bytes -= len(pending.wire)
        return pending

    # -- events ---------------------------------------------------------------------------------------
    def fill(self, now: float) -> list[bytes]:
        """New requests to send: `window` in flight, within `span` of the oldest unanswered beat (the
        device's repeat memory, so repeat flags and restart probes stay true) and within the device's
        receive buffer (§6.6). Inputs are drawn lazily."""
        board = self.board
        batch = []
        while not self.exhausted:
            oldest = self.oldest
            if oldest is not None and (len(self.outstanding) >= board.window
                                       or self.next_index - oldest.index >= board.span):
                break
            tensor, self.held = self.held, None
            if tensor is None:
                try:
                    tensor = next(self.source)
                except StopIteration:
                    self.exhausted = True
                    break
            seq = self.seq_of(self.next_index)
            wire = encode_frame(MsgType.INFER, seq, tensor)
            if oldest is not None and self.inflight_bytes + len(wire) > self.max_inflight_bytes:
                self.held = tensor  # over the device's receive buffer: wait for answers first
                break
            self.outstanding[seq] = _Pending(self.next_index, wire, now, board._order)
            self.inflight_bytes += len(wire)
            board._order += 1
            board.note_sent(seq, MsgType.INFER)
            batch.append(wire)
            self.next_index += 1
        self.stats.sent += len(batch)
        return batch

    def on_frame(self, frame: Frame, now: float) -> bool | None:
        kind = frame.type
        if kind == MsgType.NAK:
            self.stats.naks += 1
            if not self.nak_pending:
                self.nak_at = now
            self.nak_pending = True
            return None
        if kind == MsgType.RESULT:
            return self._on_result(frame, now)
        if kind == MsgType.ERROR and frame.seq in self.outstanding:
            if (self.board._model_data is not None and self.recoveries < MAX_RECOVERIES
                    and _device_code(frame) == DeviceErrorCode.BAD_STATE):
                return RECOVER_ASK  # no model any more: restarted without it? ask, upload again
            raise self.board._device_error(frame, {"beat": self.outstanding[frame.seq].index})
        if not self.board.is_stale(frame):
            self._stray(frame)
        return None  # a stale answer to an earlier command

    def _on_result(self, frame: Frame, now: float) -> bool | None:
        pending = self._retire(frame.seq)
        if pending is None:
            # A probe lost long ago tells nothing now (its seq may be a new beat's by then).
            if self.next_index - self.probes.pop(frame.seq, -REPEAT_HISTORY) < REPEAT_HISTORY:
                self.spare = None  # this answer is the verdict on the silence
                if not Inference.parse(frame.payload).repeat:
                    return RECOVER_RESTARTED
                return None
            if self._sent_recently(frame.seq) or self.board.is_stale(frame):
                self.stats.duplicates += 1
            else:
                self._stray(frame)
            return None
        inference = Inference.parse(frame.payload, frame.seq)
        if self.output_bytes is not None and len(inference.output) != self.output_bytes:
            raise ProtocolError(
                f"{self.board.name} answered beat {pending.index} (seq {frame.seq}) with {len(inference.output)} "
                f"output bytes; the model's output tensor has {self.output_bytes} (docs/protocol.md §6.4)",
                "the board runs another model than the one benchmarked, or its firmware cuts RESULT wrong: run "
                "again (the model is uploaded afresh), and if it repeats reflash the firmware built from this "
                "checkout", code="HIL307")
        self.on_result(pending.index, inference)
        self.delivered += 1
        if self.rounds == 0 and self.delivered > 1:
            self.gap_ewma = 0.8 * self.gap_ewma + 0.2 * (now - self.last_progress)
        self.last_progress = now
        if self.rounds and self.spare is not None:
            # The board is back from a silence but no probe got through: ask once more whether it
            # restarted (no HELLO went since, so the answer is still true).
            self.board.link.write(self.spare.wire)
            self.probes[self.seq_of(self.spare.index)] = self.next_index
            self.spare = None
        self.rounds = 0
        self.recoveries = self.quick = 0
        self.retired.append(pending)
        lost = overtaken(self.outstanding, pending)
        if lost:
            self.board._resend(lost, self.stats)
            self.nak_pending = False  # the NAK was about one of these
        return None

    def _sent_recently(self, seq: int) -> bool:
        """This stream sent an INFER with this seq among its last 256 (a late answer to a resend)."""
        behind = (self.seq_of(self.next_index) - 1 - seq) & 0xFFFF
        return behind < min(self.next_index, 4 * REPEAT_HISTORY)

    def _stray(self, frame: Frame) -> None:
        self.stats.strays += 1
        self.board.strays += 1
        if self.stats.strays > STRAY_LIMIT:
            raise self.board._strays_error(frame, self.stats.strays, "during the stream")

    def on_quiet(self, now: float) -> str:
        """After the frames that arrived: what the silence (or a NAK) calls for. Raises the stream timeout
        when nothing new came for timeout_s."""
        board = self.board
        oldest = self.oldest
        if oldest is None:
            self.nak_pending = False  # nothing left that a NAK could have been about
            return Action.WAIT
        if now - self.last_progress >= board.timeout_s:
            raise self.timeout()
        in_flight = self.inflight_bytes
        wire_s = board._wire_s(in_flight)
        patience = min(max(board.resend_after_s, 3 * self.gap_ewma) + wire_s, board.timeout_s / 2)
        quiet = self.quiet = now - max(self.last_progress, oldest.sent_at) >= patience
        # A NAK is answered by the next result (which shows what was lost, see overtaken()); only a NAK no
        # result follows (the last frame sent was damaged) needs a resend.
        settle = max(wire_s + 0.005, 3 * self.gap_ewma)
        nak_due = self.nak_pending and now - self.last_resend >= settle and now - self.nak_at >= settle
        if quiet and self.rounds >= 1 and self.recoveries < MAX_RECOVERIES:
            return Action.RECOVER  # silent through a resend: ask the board what happened
        if (not quiet and self.quick < 3 and self.rounds == 0
                and self._due_again(oldest, now - max(self.last_progress, oldest.sent_at), in_flight)):
            return Action.RESEND_OLDEST
        if (nak_due or quiet) and self.rounds < board.max_resends:
            return Action.RESEND_ALL
        return Action.WAIT

    def _due_again(self, oldest: _Pending, waited: float, in_flight: int) -> bool:
        """A resent oldest request whose answer is overdue: everything sent before it has been answered,
        so its answer was next, about one result gap after the last. Without this, a resend that is lost
        again would wait the full patience, with the window stuck behind it and nothing to overtake it."""
        gap = self.gap_ewma
        if oldest.last == oldest.first or gap <= 0.0:
            return False  # sent once (the normal patience applies) or no result rhythm yet
        if waited < max(4 * gap, 0.002) + self.board._wire_s(in_flight):
            return False
        return not any(p.last < oldest.last for p in self.outstanding.values() if p is not oldest)

    # -- the driver's side of each action -------------------------------------------------------------
    def resend_oldest(self) -> None:
        self.board._resend([self.oldest], self.stats)
        self.quick += 1

    def resend_all(self, now: float) -> None:
        """A resend round, with a restart probe (a retired request) after a quiet spell (not after a NAK)."""
        probe = None
        if self.quiet and self.retired and self.next_index - self.retired[-1].index < REPEAT_HISTORY:
            probe = self.retired.pop()
            self.probes[self.seq_of(probe.index)] = self.next_index
            if self.rounds == 0 and self.retired:
                self.spare = self.retired.pop()
        self.board._resend(self.outstanding.values(), self.stats, probe)
        self.rounds += 1
        self.last_resend = now
        self.nak_pending = False

    def recover(self, restarted: bool, now: float) -> None:
        """Mid-stream HELLO (Board._recover), then resend what is outstanding."""
        self.recoveries += 1
        probe = self.retired.pop() if self.retired else None
        recent = {seq for seq, at in self.probes.items() if self.next_index - at < REPEAT_HISTORY}
        # The HELLO (and an upload) take seqs the stream will not reach for a while, so their answers are
        # never confused with a beat's, even after the seq wrapped.
        self.board._seq = self.seq_of(self.next_index + 2 * REPEAT_HISTORY)
        outcome = self.board._recover(self.stats, restarted=restarted, probe=probe, probes=recent,
                                      budget_s=self.board.timeout_s - (now - self.last_progress))
        if outcome is None:
            if self.outstanding:
                raise self.timeout()
            return
        if outcome:  # uploaded again: the board is working, give it a full timeout
            self.last_progress = time.monotonic()
        self.retired.clear()  # HELLO cleared the device's repeat history: old probes tell nothing
        self.probes.clear()
        self.spare = None
        self.board._resend(self.outstanding.values(), self.stats)
        self.rounds, self.last_resend, self.nak_pending = self.rounds + 1, time.monotonic(), False

    def timeout(self):
        oldest = self.oldest
        return self.board._stream_timeout(self.delivered, self.total, self.next_index, self.exhausted, oldest,
                                          self.seq_of(oldest.index) if oldest is not None else 0)



def _device_code(frame: Frame) -> int:
    try:
        return DeviceError.parse(frame.payload).code
    except ProtocolError:
        return 0
