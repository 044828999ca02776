"""Many boards in one run: a thread per board, a shared list of work, quarantine for boards that fail.

The plugin hands the farm its boards (slots) and two callables: `connect(slot)` (open, flash as needed,
HELLO) and `run(model, slot, shard)` (one bench run → Result). Each board's thread takes the next piece of
work it may run; the Board objects, links and virtual-board processes of different slots share nothing,
so the threads never touch the same board. How the work is cut (`--spread`):

- `each`: every board runs every model (work pinned to its board);
- `models`: each model runs once, on the next free board;
- `beats`: each model's beats are cut into one contiguous range per board, streamed in parallel, and
  merged (bench.merge) into one Result whose figures are exactly the single-board run's.

A board that fails twice in a row before streaming anything (HELLO or model upload), or fails a piece of
work and then its HELLO, is quarantined: it takes no more work, its unfinished work goes to the other
boards (or, pinned to it under `each`, is reported as not run), and the session summary names it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from ..errors import HarnessError

SPREADS = ("each", "models", "beats")


@dataclass
class Job:
    """One bench run: `model` on one board (`pinned`, or any), optionally one range of its beats."""

    case: object
    model: object
    pinned: object | None = None
    shard: tuple[int, int] | None = None
    result: object | None = None
    shard_state: object | None = None
    not_run: str | None = None      # why no board could run it
    error: Exception | None = None  # the work itself failed (not the board): raised to the case
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Quarantine:
    device: str
    reason: str


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """`total` beats as `parts` contiguous ranges differing in size by at most one."""
    parts = max(1, min(parts, total)) if total else 1
    size, extra = divmod(total, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


class Farm:
    def __init__(self, slots: list, connect: Callable, run: Callable, *, label: Callable = lambda s: str(s),
                 disconnect: Callable = lambda s: None):
        self.slots = slots
        self._connect = connect
        self._run = run
        self._label = label
        self._disconnect = disconnect
        self.jobs: list[Job] = []
        self.quarantined: list[Quarantine] = []
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._healthy = set(range(len(slots)))
        self.started = False

    # -- work -------------------------------------------------------------------------------------------
    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for index, slot in enumerate(self.slots):
            thread = threading.Thread(target=self._worker, args=(index, slot), daemon=True,
                                      name=f"hil-board-{self._label(slot)}")
            thread.start()
            self._threads.append(thread)

    def wait(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.done.wait()

    def all_quarantined(self) -> bool:
        with self._lock:
            return not self._healthy

    def join(self, timeout: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _take(self, index: int, slot) -> Job | None:
        """The next job this board may run; waits while work taken by other boards may still come back."""
        with self._lock:
            while True:
                if index not in self._healthy:
                    return None
                waiting = False
                for job in self.jobs:
                    if job.done.is_set() or (job.pinned is not None and job.pinned is not slot):
                        continue
                    if not getattr(job, "_taken", False):
                        job._taken = True
                        return job
                    waiting = True  # another board has it; it comes back if that board is quarantined
                if not waiting:
                    return None
                self._lock.wait(0.5)

    def _give_back(self, job: Job, slot) -> None:
        """Work a quarantined board could not do: to the others, unless it was pinned to that board."""
        with self._lock:
            if job.pinned is slot or not self._healthy:
                reason = self.quarantined[-1].reason if self.quarantined else "no board left"
                job.not_run = (f"{self._label(slot)} quarantined ({reason})" if job.pinned is slot
                               else f"no healthy board left ({self.summary()})")
                job.done.set()
            else:
                job._taken = False
            self._lock.notify_all()

    def _quarantine(self, index: int, slot, reason: str) -> None:
        with self._lock:
            self._healthy.discard(index)
            self.quarantined.append(Quarantine(self._label(slot), reason))
            orphans = [j for j in self.jobs if not j.done.is_set() and not getattr(j, "_taken", False)
                       and (j.pinned is slot or not self._healthy)]
        for job in orphans:
            job._taken = True
            self._give_back(job, slot)
        try:
            self._disconnect(slot)
        except Exception:  # noqa: BLE001 - closing a broken board must not stop the others
            pass

    def summary(self) -> str:
        return "; ".join(f"{q.device}: {q.reason}" for q in self.quarantined)

    # -- one board --------------------------------------------------------------------------------------
    def _worker(self, index: int, slot) -> None:
        while True:
            job = self._take(index, slot)
            if job is None:
                return
            outcome = self._attempt(slot, job)
            if isinstance(outcome, str):
                self._quarantine(index, slot, outcome)
                self._give_back(job, slot)
                return
            job.result, job.shard_state = outcome  # (None, None) with job.error set when the work failed
            with self._lock:
                job.done.set()
                self._lock.notify_all()

    def _attempt(self, slot, job: Job):
        """(Result, shard state) from this board, or the reason to quarantine it after two failures."""
        reason = ""
        for _ in range(2):
            try:
                self._connect(slot)
            except HarnessError as err:
                reason = f"{err.code} {err.message}"
                self._disconnect(slot)
                continue
            except Exception as exc:  # noqa: BLE001 - a board's crash quarantines it, not the whole run
                reason = f"{type(exc).__name__}: {exc}"
                self._disconnect(slot)
                continue
            try:
                result, state = self._run(job.model, slot, job.shard)
            except HarnessError as err:  # e.g. the host reference refused the model: not the board's fault
                job.error = err
                return None, None
            if result.status != "error":
                return result, state
            # A board that failed this work (upload refused, stopped mid-stream) is asked again from the
            # start; a second failure, or a HELLO that no longer answers, quarantines it.
            reason = (result.failure or {}).get("message", "error")
            self._disconnect(slot)
        return reason
