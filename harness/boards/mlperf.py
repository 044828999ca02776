"""Drive a device that runs MLPerf Tiny's benchmark API (EEMBC's ULPMark-ML serial monitor) instead of ours.

The board layer for `--protocol mlperf-tiny`: `MlperfBoard` offers what the bench asks of a Board —
`hello()` (here `name` + `profile`), `ensure_model()` (the model is compiled into MLPerf firmware: it checks
the `m-model-[...]` id instead of uploading) and `infer_stream()` (accuracy mode: per beat `db load N`, `db HH…`
lines, `infer 1 0`, and the `m-results-[...]` it prints) — plus `performance()`, MLPerf's performance mode.

The API as the harness speaks it (mlcommons/tiny `benchmark/api`, `benchmark/runner`): ASCII commands ended
by `%`, answered by lines ended by `\\r\\n`, the last one `m-ready`; `e-[...]` is an error. The monitor keeps
one 80-character command buffer, so commands go one at a time, each after the previous `m-ready`
(stop-and-wait, as MLPerf's runner does), and `db` lines carry 31 bytes (62 hex digits), as the runner sends.

What can be verified bit for bit (docs/mlperf.md): the device prints each output dequantized,
(q − zero_point) × scale, with a few decimals (`%.3f`). A printed v with d decimals only says the real value
lies in [v − ½·10⁻ᵈ, v + ½·10⁻ᵈ]; the INT8 values q consistent with it form an interval [lo, hi]. Every
beat is checked for consistency (the reference's INT8 output inside [lo, hi] for every element: a
different value is a mismatch, HIL501); when 10⁻ᵈ < scale the interval holds one value and the INT8 output
is recovered exactly, which is then a bit-exact check. The arg-max is verified when the printed maximum is
unique. Nothing finer than the printed precision is verifiable in this mode.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .board import StreamStats
from ..errors import BoardError, BoardTimeout, ProtocolError
from ..link.transport import open_link

PROTOCOL = "mlperf-tiny"
TERMINATOR = b"%"
DB_BYTES = 31           # bytes per `db` line: "db " + 62 hex digits + "%" fits the monitor's 80 characters
READY = "m-ready"
VIRTUAL_VENDOR = "hil-bench virtual"  # harness/boards/virtual/mlperf_device.py
MAX_LINE = 4096         # a line longer than this is not MLPerf text
DEFAULT_WARMUP = 10     # the API's default warm-up count for `infer N`

_NAME = re.compile(r"^m-name-(.+)-\[(.*)\]$")
_PROFILE = re.compile(r"^m-profile-\[(.*)\]$")
_MODEL = re.compile(r"^m-model-\[(.*)\]$")
_LAP = re.compile(r"^m-lap-us-(\d+)$")
_RESULTS = re.compile(r"^m-results-\[(.*)\]$")
_EXPECTING = re.compile(r"^m-\[Expecting (\d+) bytes\]$")


def model_id_of(data: bytes) -> str:
    """The model id the virtual MLPerf device prints for `data` (and the default expected id)."""
    return "hb-" + hashlib.sha256(data).hexdigest()[:12]


def exchange_bytes(input_bytes: int, outputs: int, *, decimals: int = 3) -> tuple[int, int]:
    """(out, in) line bytes of one accuracy-mode beat: the commands and the device's answers (results
    printed `%.3f`, laps of 7 digits). The commands go one after the other, so a beat costs their sum."""
    lines = -(-input_bytes // DB_BYTES)
    out = len(f"db load {input_bytes}%") + lines * len("db %") + 2 * input_bytes + len("infer 1 0%")
    back = (len(f"m-[Expecting {input_bytes} bytes]\r\n") + (lines + 2) * len("m-ready\r\n")
            + len("m-load-done\r\n") + len("m-warmup-start-0\r\nm-warmup-done\r\nm-infer-start-1\r\n")
            + len("m-infer-done\r\n") + 2 * len("m-lap-us-1234567\r\n") + len("m-results-[]\r\n")
            + outputs * (decimals + 3))
    return out, back


@dataclass
class Identity:
    """What `name` and `profile` say, in the shape the bench reads from a HELLO_ACK."""

    device: str
    vendor: str
    profile: str
    model_id: str
    protocol: str = PROTOCOL

    @property
    def chip(self) -> str:
        return "virtual" if self.vendor == VIRTUAL_VENDOR else "mlperf-tiny"

    @property
    def fw_version(self) -> str:
        return self.profile

    @property
    def build_hash(self) -> str:
        return ""

    cpu_mhz = None
    kernel_mode = "unknown"
    arena_size = None

    @property
    def timing_source(self) -> str:
        # th_timestamp: the device's own µs timer; the virtual device's clock advances by the cost model.
        return "static_estimate" if self.chip == "virtual" else "device_timer"


@dataclass
class ModelCheck:
    """ensure_model's answer (MODEL_INFO's shape): MLPerf firmware reports no arena use."""

    model_id: str
    input_bytes: int
    output_bytes: int
    arena_used: int | None = None
    sha256: str = ""


@dataclass
class Printed:
    """One `m-results-[...]` line: the values and how many decimals each was printed with."""

    values: list[float]
    decimals: list[int]

    @classmethod
    def parse(cls, text: str) -> "Printed":
        values, decimals = [], []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            value = float(part)  # ValueError for anything that is not a number
            if not np.isfinite(value):
                raise ValueError(f"{part} is not a finite number")
            values.append(value)
            mantissa = part.lower().split("e")[0]
            decimals.append(len(mantissa.split(".", 1)[1]) if "." in mantissa else 0)
        return cls(values, decimals)

    def int8_bounds(self, scale: float, zero_point: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, lo, hi): the INT8 values each printed value allows, assuming printf rounding to its
        decimals. An empty interval (no INT8 value prints like this) gives lo > hi."""
        v = np.asarray(self.values, dtype=np.float64)
        half = 0.5 * np.power(10.0, -np.asarray(self.decimals, dtype=np.float64))
        slack = 1e-6  # float32 arithmetic on the device and decimal conversion: far below one INT8 step
        lo = np.ceil((v - half) / scale + zero_point - slack)
        hi = np.floor((v + half) / scale + zero_point + slack)
        est = np.clip(np.rint(v / scale + zero_point), -128, 127)
        return est.astype(np.int8), np.clip(lo, -128, 128).astype(np.int16), np.clip(hi, -129, 127).astype(np.int16)


@dataclass
class MlperfInference:
    """One beat's answer, shaped like protocol.Inference for the bench, with what the print allows.

    `output` is the INT8 estimate (nearest value); `bounds` = (lo, hi) the INT8 values consistent with the
    printed ones; `resolved` when every element's interval holds one value (then `output` is exact);
    `wall_ns` is the device's lap (th_timestamp µs) around the inference; `cycles` is unknown (0).
    """

    seq: int
    output: bytes
    bounds: tuple[np.ndarray, np.ndarray]
    resolved: bool
    values: list[float]
    elapsed_us: int
    flags: int = 0
    cycles: int = 0

    @property
    def wall_ns(self) -> int:
        return self.elapsed_us * 1000

    @property
    def repeat(self) -> bool:
        return False


@dataclass
class _Reply:
    lines: list[str] = field(default_factory=list)
    error: str | None = None


class MlperfBoard:
    """An MLPerf Tiny device on a Link. `flash(data) -> url`, when given, puts a model on the device by
    starting it again with that model compiled in (the virtual device); then the link is reopened."""

    protocol = PROTOCOL

    def __init__(self, link, *, timeout_s: float = 5.0, name: str = "", expected_model_id: str | None = None,
                 flash: Callable[[bytes], str] | None = None, baud: int | None = None):
        self.link = link
        self.timeout_s = float(timeout_s)
        self.name = name or link.url
        self.expected_model_id = expected_model_id
        self.flash = flash
        self.baud = baud or getattr(link, "baud", 115200)
        self.last_hello: Identity | None = None
        self.resends = 0
        self._rx = bytearray()
        self._bytes_in = 0
        self._quant: tuple[float, int] | None = None
        self._in_bytes = 0
        self._out_count = 0
        self._model_data: bytes | None = None

    @classmethod
    def open(cls, url: str, baud: int, *, link_timeout: float = 0.05, **kwargs) -> "MlperfBoard":
        return cls(open_link(url, baud, timeout=link_timeout), baud=baud, **kwargs)

    # -- the monitor's commands ----------------------------------------------------------------------
    def command(self, text: str, *, budget_s: float | None = None) -> list[str]:
        """Send one command; the lines before its `m-ready`. `e-[...]` → BoardError (HIL335)."""
        return self._reply_lines(self._exchange(text, budget_s), text)

    def hello(self, attempts: int = 3) -> Identity:
        """`name` and `profile`: what the device is and which model its firmware was built with."""
        self._settle()
        name = None
        lines = self.command("name")
        for attempt in range(attempts):
            name = next((m for m in map(_NAME.match, lines) if m), None)
            if name or attempt == attempts - 1:
                break
            # A device just reset prints start-up lines ending in m-ready: that was not the answer to
            # `name`, so the answer is still on its way (sending `name` again would put us one reply behind).
            try:
                lines = self._reply_lines(self._exchange(None, self.timeout_s), "name")
            except BoardTimeout:
                lines = self.command("name")
        if name is None:
            raise ProtocolError(f"{self.name} answers MLPerf Tiny text but no m-name-... line to `name`",
                                "the firmware does not implement MLPerf Tiny's `name` command (benchmark/api): "
                                "rebuild it with the API, or drop --protocol mlperf-tiny", code="HIL331")
        lines = self.command("profile")
        profile = next((m.group(1) for m in map(_PROFILE.match, lines) if m), None)
        model = next((m.group(1) for m in map(_MODEL.match, lines) if m), None)
        if profile is None or model is None:
            raise ProtocolError(f"{self.name} did not print m-profile-[...] and m-model-[...] to `profile`",
                                "the firmware does not implement MLPerf Tiny's `profile` command: rebuild it "
                                "with benchmark/api", code="HIL331")
        self.last_hello = Identity(name.group(1), name.group(2), profile, model)
        return self.last_hello

    def ensure_model(self, data: bytes, *, force: bool = False, on_progress=None) -> tuple[ModelCheck, bool]:
        """The model is compiled into MLPerf firmware: check the device was built with this one.

        The check is the `m-model-[ID]` id against the expected one (`expected_model_id`, default the
        virtual device's `hb-<sha256 prefix>`); the id is a label the firmware's author chose, so the
        accuracy run then checks every beat's printed outputs against the host reference (a different
        model shows as HIL501 on the first beats) and the count of printed values against the model's
        outputs (HIL333). With `flash` (the virtual device) a different model is put on first.
        """
        from ..bench.model import open_interpreter  # the host interpreter reads the output's quantization

        interp = open_interpreter(data)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        scale, zero_point = out["quantization"]
        self._quant = (float(scale), int(zero_point))
        self._in_bytes = int(np.prod(inp["shape"])) * np.dtype(inp["dtype"]).itemsize
        self._out_count = int(np.prod(out["shape"]))
        self._model_data = bytes(data)
        expected = self.expected_model_id or model_id_of(data)
        identity = self.last_hello or self.hello()
        flashed = False
        if identity.model_id != expected or force:
            if self.flash is None:
                raise ProtocolError(
                    f"{self.name} runs MLPerf Tiny model '{identity.model_id}', expected '{expected}'",
                    "flash the MLPerf Tiny firmware built with this model, or pass the id it prints with "
                    "--mlperf-model-id", code="HIL332")
            self._reflash(data)
            identity = self.hello()
            flashed = True
            if identity.model_id != expected:
                raise ProtocolError(f"{self.name} still runs model '{identity.model_id}' after flashing "
                                    f"'{expected}'", "check the device's build", code="HIL332")
        return ModelCheck(identity.model_id, self._in_bytes, self._out_count * 1), flashed

    def selftest(self, data: bytes) -> None:
        """ensure_model(data), then one inference of a zero input through the whole accuracy-mode exchange
        (`db load`, `db`, `infer 1 0`, results), so a device that refuses or garbles any of it is named
        before the run, not after a report was started."""
        self.ensure_model(data)
        self.infer_stream([bytes(self._in_bytes)], total=1, on_result=lambda i, inference: None)

    def load(self, tensor: bytes) -> None:
        """`db load N`, then `db HH…` lines of 31 bytes until the device says m-load-done."""
        lines = self.command(f"db load {len(tensor)}")
        if not any(_EXPECTING.match(line) for line in lines):
            raise BoardError(f"{self.name} did not accept `db load {len(tensor)}`: "
                             f"{' | '.join(lines) or 'no m-[Expecting N bytes] line'}",
                             "the input is larger than the firmware's db buffer (MAX_DB_INPUT_SIZE): raise it "
                             "and rebuild", code="HIL335")
        done = False
        for start in range(0, len(tensor), DB_BYTES):
            lines = self.command("db " + tensor[start:start + DB_BYTES].hex())
            done = done or "m-load-done" in lines
        if not done:
            raise ProtocolError(f"{self.name} never said m-load-done after {len(tensor)} bytes",
                                "the firmware's db buffer handling differs from MLPerf Tiny's API: rebuild it "
                                "with benchmark/api", code="HIL333")

    def infer(self, n: int = 1, warmup: int = 0, *, budget_s: float | None = None) -> tuple[int, Printed]:
        """`infer N W`: (µs between the two laps, the printed results)."""
        lines = self.command(f"infer {n} {warmup}", budget_s=budget_s)
        laps = [int(m.group(1)) for m in map(_LAP.match, lines) if m]
        results = [m.group(1) for m in map(_RESULTS.match, lines) if m]
        if len(laps) < 2 or not results:
            raise ProtocolError(f"{self.name} answered `infer {n} {warmup}` without two m-lap-us lines and an "
                                f"m-results line: {' | '.join(lines)[:160]}",
                                "the firmware's th_timestamp/th_results must print m-lap-us-N and "
                                "m-results-[...] (performance mode, EE_CFG_ENERGY_MODE 0)", code="HIL333")
        try:
            printed = Printed.parse(results[-1])
        except ValueError:
            raise ProtocolError(f"{self.name} printed results that are not numbers: m-results-[{results[-1][:80]}]",
                                "th_results must print comma-separated decimals", code="HIL333") from None
        elapsed = laps[-1] - laps[-2]
        if elapsed < 0:  # th_timestamp prints an unsigned long: a 32-bit µs counter wraps every 71.6 min
            elapsed += 1 << 32
        return elapsed, printed

    def infer_stream(self, inputs: Iterable[bytes], *, total: int | None = None,
                     on_result: Callable[[int, MlperfInference], None], output_bytes: int | None = None,
                     stats: StreamStats | None = None) -> StreamStats:
        """Accuracy mode: per input `db load`, `db` lines, `infer 1 0`; on_result(index, inference).
        `output_bytes` is accepted for Board's signature (the output count is checked against the model
        instead); `stats` is updated as the stream goes, like Board's."""
        if self._quant is None:
            raise ProtocolError("ensure_model() must run before infer_stream() on an MLPerf Tiny device",
                                "a harness bug: report it", code="HIL333")
        scale, zero_point = self._quant
        stats = stats if stats is not None else StreamStats()
        started = time.monotonic()
        done = 0
        for index, tensor in enumerate(inputs):
            try:
                self.load(tensor)
                elapsed_us, printed = self.infer(1, 0)
            except BoardTimeout as err:
                of = total if total is not None else f"{done}+"
                raise BoardTimeout(f"{err.message}; {done} of {of} beats done, stopped at beat {index}", err.hint,
                                   verified=done, total=total or done, stopped_at=f"beat {index}",
                                   code=err.code) from None
            if len(printed.values) != self._out_count:
                raise ProtocolError(f"{self.name} printed {len(printed.values)} result values, the model has "
                                    f"{self._out_count} outputs", "the device runs another model, or its "
                                    "th_results prints a score instead of the output tensor: print every output "
                                    "value (docs/mlperf.md)", code="HIL333")
            est, lo, hi = printed.int8_bounds(scale, zero_point)
            stats.sent += 1
            on_result(index, MlperfInference(index, est.tobytes(), (lo, hi), bool(np.all(lo == hi)),
                                             printed.values, elapsed_us))
            done += 1
        stats.wall_s += time.monotonic() - started
        return stats

    def performance(self, inputs: list[bytes], *, min_window_s: float = 10.0, windows: int = 5,
                    warmup: int = DEFAULT_WARMUP) -> dict:
        """MLPerf Tiny's performance mode (harness/bench/perfrule.py): per window a new input, `infer N W`,
        N grown until the device's laps span at least min_window_s; the median window decides."""
        from ..bench import perfrule

        per_inference_s = [None]

        def window(i: int, n: int) -> float:
            self.load(inputs[i % len(inputs)])
            guess = per_inference_s[0] if per_inference_s[0] is not None else 1.0
            budget = self.timeout_s + 2.0 * (n + warmup) * guess
            elapsed_us, _ = self.infer(n, warmup, budget_s=budget)
            if n:
                per_inference_s[0] = max(elapsed_us / 1e6 / n, 1e-7)
            return elapsed_us / 1e6

        source = self.last_hello.timing_source if self.last_hello else "device_timer"
        return perfrule.windows(window, min_window_s=min_window_s, windows=windows, warmup=warmup, source=source,
                                protocol=PROTOCOL)

    def dump(self, input: bytes):  # noqa: A002 - same signature as Board.dump
        raise BoardError("MLPerf Tiny's API has no per-layer dump", "localise a mismatch with the model on our "
                         "firmware or the virtual board (--protocol hil)", code="HIL335")

    def reset(self) -> None:
        raise BoardError("MLPerf Tiny's API has no reset command", "reset the board by its button or DTR/RTS",
                         code="HIL335")

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> "MlperfBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def _reflash(self, data: bytes) -> None:
        self.link.close()
        url = self.flash(data)
        self.link = open_link(url, self.baud, timeout=0.05)
        self.last_hello = None
        self._rx.clear()

    def _settle(self, quiet_s: float = 0.1, budget_s: float = 1.0) -> None:
        """Drop what the device printed before we ask (start-up lines, answers to an earlier run): wait
        until the line has been quiet for quiet_s (at most budget_s)."""
        self.link.reset_input()
        self._rx.clear()
        started = last = time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() - started < budget_s:
            if self.link.read(65536):
                last = time.monotonic()

    def _reply_lines(self, reply: _Reply, text: str) -> list[str]:
        if reply.error is not None:
            raise BoardError(f"{self.name} refused `{text[:40]}`: {reply.error}", _refusal_hint(text, reply.error),
                             code="HIL335")
        return reply.lines

    def _exchange(self, text: str | None, budget_s: float | None) -> _Reply:
        """Send `text` (None: send nothing, read the next reply) and collect lines up to m-ready."""
        budget = self.timeout_s if budget_s is None else budget_s
        if text is not None:
            self.link.write(text.encode("ascii") + TERMINATOR)
        text = text or "(previous command)"
        reply = _Reply()
        bytes_before = self._bytes_in
        started = time.monotonic()
        while True:
            data = self.link.read(65536)
            now = time.monotonic()
            if data:
                self._bytes_in += len(data)
                self._rx += data
                while True:
                    cut = self._rx.find(b"\n")
                    if cut < 0:
                        break
                    raw = bytes(self._rx[:cut]).rstrip(b"\r")
                    del self._rx[:cut + 1]
                    line = self._text(raw)
                    if line == READY:
                        return reply
                    if line.startswith("e-"):
                        reply.error = reply.error or line
                    elif line:
                        reply.lines.append(line)
                if len(self._rx) > MAX_LINE or not _printable(self._rx):
                    raise self._garbage(bytes(self._rx))
            # A long `infer N` is silent until it ends: the budget runs from the command (callers size it).
            if now - started >= budget:
                if self._bytes_in > bytes_before and not reply.lines and reply.error is None:
                    raise self._garbage(bytes(self._rx))
                raise BoardTimeout(f"no m-ready from {self.name} within {budget:.1f}s (to `{text[:40]}`)",
                                   "check the port and --baud (MLPerf Tiny firmware usually runs at 115200), press "
                                   "reset, and check that the board runs MLPerf Tiny firmware", code="HIL334")

    def _text(self, raw: bytes) -> str:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise self._garbage(raw) from None
        if not _printable(raw):
            raise self._garbage(raw)
        return line.strip()

    def _garbage(self, raw: bytes) -> ProtocolError:
        self._rx.clear()
        baud = getattr(self.link, "baud", None)
        return ProtocolError(f"bytes arrive on {getattr(self.link, 'url', self.name)}"
                             f"{f' at {baud} baud' if baud else ''} but no MLPerf Tiny text "
                             f"(first bytes {raw[:12].hex(' ')})",
                             "wrong baud rate (MLPerf Tiny firmware usually runs at 115200: --baud 115200) or the "
                             "board runs other firmware (ours: drop --protocol mlperf-tiny)", code="HIL330")


def _printable(raw: bytes | bytearray) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in raw)


def _refusal_hint(command: str, error: str) -> str:
    word = command.split(" ", 1)[0]
    if "Unknown command" in error:
        return (f"the firmware does not implement `{word}` of MLPerf Tiny's API (benchmark/api): rebuild it with "
                "the API's internally_implemented.c")
    if word == "db":
        return "the input does not fit the firmware's db buffer (MAX_DB_INPUT_SIZE): raise it and rebuild"
    if word == "infer":
        return "the firmware could not run the input: check that its model takes this input size"
    return "see the device's message; check the firmware against MLPerf Tiny's benchmark/api"

