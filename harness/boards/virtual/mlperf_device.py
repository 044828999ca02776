"""A virtual MLPerf Tiny device: the benchmark API's serial monitor, written from its description, in front
of the same TFLM reference kernels as the virtual board (Platform.load_model / Platform.invoke_bytes).

It takes the place of the C core behind the virtual board's Server (same pty, same UART throttle), so our
protocol and MLPerf Tiny's can be measured over the same simulated link. What it implements, as MLPerf
Tiny's `benchmark/api` describes the device side (EEMBC's ULPMark-ML monitor):

- Commands are ASCII, end with `%`, words separated by spaces; at most 80 characters are kept (longer
  commands are cut, as the monitor's fixed buffer cuts them). Every command ends with `m-ready\r\n`.
- `name` → `m-name-dut-[VENDOR]`; `profile` → `m-profile-[...]` and `m-model-[MODEL]`; `timestamp` →
  `m-lap-us-N`; `help`; unknown → `e-[Unknown command: X]`.
- `db load N` → `m-[Expecting N bytes]`; `db HH…` appends hex bytes, `m-load-done` once N arrived;
  `db print`; errors as `e-[...]`.
- `infer N [W=10]`: loads the buffer into the input tensor, W warm-up runs, then `m-infer-start-N`,
  a timestamp, N runs, a timestamp, `m-infer-done`, and the results.
- `results` → `m-results-[v0,v1,...]`: the output tensor dequantized with its scale and zero point,
  printed `%.3f` as the reference submissions print it.

The model is compiled in, as in MLPerf firmware: given at start (`--model`); `m-model-[...]` is the model
id it was "built" with (default `hb-` + the first 12 hex digits of the model's sha256).

Time: `m-lap-us-N` reads a virtual device clock that advances by the cost model's estimate of one
inference on the profile (harness/bench/costmodel.py) per inference and by nothing else, so the laps the harness
reads are static estimates, labelled as such (the `m-profile` line says so), never host timings.

Faults for tests (`--fault`): `mlperf-error:CMD` answers `e-[...]` to the command word CMD;
`mlperf-garbage` answers every command with bytes that are not MLPerf text (a wrong baud rate, say);
`mlperf-skew:N` prints output 0 of the N-th `infer` (0-based, counted from boot) one INT8 step too high,
as a device computing a wrong value would.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .platform import Platform

CMD_SIZE = 80
TERMINATOR = ord("%")
MAX_DB_INPUT_SIZE = 96 * 96 * 3  # the API's default input buffer
VENDOR = "hil-bench virtual"
PROFILE_TEXT = "hil-bench virtual MLPerf Tiny device; timestamps: static estimate"
FAULT_KINDS = ("mlperf-error", "mlperf-garbage", "mlperf-skew")


def default_model_id(data: bytes) -> str:
    """The id a virtual MLPerf device built with `data` prints in `m-model-[...]`."""
    return "hb-" + hashlib.sha256(data).hexdigest()[:12]


def parse_fault(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind == "mlperf-garbage" and not arg:
        return kind, ""
    if kind == "mlperf-error" and arg:
        return kind, arg
    if kind == "mlperf-skew" and arg.isdigit():
        return kind, arg
    raise ValueError(f"bad MLPerf device fault '{spec}': use mlperf-error:CMD, mlperf-garbage or mlperf-skew:N")


class MlperfDevice:
    """feed(bytes)/init(): what the Server drives; the replies go to platform.outbox like the core's."""

    def __init__(self, platform: Platform, model: bytes, *, model_id: str | None = None, faults=()):
        self.platform = platform
        self.model = model
        self.model_id = model_id or default_model_id(model)
        self.faults = [parse_fault(f) for f in faults]
        self.cmd = bytearray()
        self.buf = bytearray(MAX_DB_INPUT_SIZE)
        self.buf_size = 0
        self.buf_pos = 0
        self.clock_us = 0.0
        self._loaded = False
        self._out_scale = 0.0
        self._out_zp = 0
        self._in_bytes = 0
        self._infer_us = 0.0
        self._infers = 0  # `infer` commands run since boot (the mlperf-skew fault counts them)

    # -- the Server's interface ------------------------------------------------------------------------
    def init(self) -> None:
        """Power on: load the compiled-in model, print the monitor's start-up lines."""
        if not self._loaded:
            _arena, in_bytes, _out = self.platform.load_model(self.model)
            from harness.bench.model import open_interpreter  # host interpreter only to read the output quantization

            detail = open_interpreter(self.model).get_output_details()[0]
            self._out_scale, self._out_zp = (float(v) for v in detail["quantization"])
            self._out_zp = int(self._out_zp)
            self._in_bytes = int(in_bytes)
            self._infer_us = self.platform.estimated_cycles / self.platform.profile.cpu_mhz
            self._loaded = True
        self.cmd.clear()
        self.buf_size = self.buf_pos = 0
        self._print("m-timestamp-mode-performance\r\n")
        self._print("m-init-done\r\n")
        self._print("m-ready\r\n")

    def feed(self, data: bytes) -> None:
        for c in data:
            if c == TERMINATOR:
                line = self.cmd.decode("ascii", "replace")
                self.cmd.clear()
                self._command(line)
            elif len(self.cmd) < CMD_SIZE:
                self.cmd.append(c)
            else:
                self.cmd[-1] = c  # the monitor's buffer is full: the last position is overwritten

    # -- the monitor -----------------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        self.platform.outbox.append(text.encode("ascii"))

    def _command(self, line: str) -> None:
        words = line.split()
        word = words[0] if words else ""
        for kind, arg in self.faults:
            if kind == "mlperf-garbage":
                self.platform.outbox.append(bytes(range(0x80, 0xC0)))
                return
            if kind == "mlperf-error" and arg == word:
                self._print(f"e-[{word} refused by fault switch]\r\n")
                self._print("m-ready\r\n")
                return
        if word == "name":
            self._print(f"m-name-dut-[{VENDOR}]\r\n")
        elif word == "timestamp":
            self._timestamp()
        elif word == "profile":
            self._print(f"m-profile-[{PROFILE_TEXT}]\r\n")
            self._print(f"m-model-[{self.model_id}]\r\n")
        elif word == "help":
            self._print(f"{PROFILE_TEXT}\r\n\r\nname, timestamp, profile, help, db load N, db HH.., db print, "
                        "infer N [W], results\r\n")
        elif word == "db":
            self._db(words[1:])
        elif word == "infer":
            self._infer(words[1:])
        elif word == "results":
            self._results()
        else:
            self._print(f"e-[Unknown command: {word}]\r\n")
        self._print("m-ready\r\n")

    def _timestamp(self) -> None:
        self._print(f"m-lap-us-{int(self.clock_us)}\r\n")

    def _db(self, args: list[str]) -> None:
        if not args:
            self._print("e-[Command 'db' requires a subcommand]\r\n")
        elif args[0] == "load":
            if len(args) < 2:
                self._print("e-[Command 'db load' requires the # of bytes]\r\n")
                return
            size = _atoi(args[1])
            if size <= 0:
                self._print("e-[Command 'db load' must be >0 bytes]\r\n")
                return
            if size > MAX_DB_INPUT_SIZE:
                self._print(f"e-[Supplied buffer size {size} exceeds maximum of {MAX_DB_INPUT_SIZE}]\r\n")
                return
            self.buf_size, self.buf_pos = size, 0
            self._print(f"m-[Expecting {size} bytes]\r\n")
        elif args[0] == "print":
            for start in range(0, self.buf_size, 8):
                row = "-".join(f"{b:02x}" for b in self.buf[start:min(start + 8, self.buf_size)])
                self._print(f"m-buffer-{row}\r\n")
        else:
            digits = args[0]
            if len(digits) % 2:
                self._print("e-[Insufficent number of hex digits]\r\n")
                return
            for i in range(0, len(digits), 2):
                pair = digits[i:i + 2]
                try:
                    value = int(pair, 16)
                except ValueError:
                    self._print(f"e-[Invalid hex digit '{pair}']\r\n")
                    return
                if self.buf_pos >= self.buf_size:
                    self._print("e-[db buffer is full: send db load N first]\r\n")
                    return
                self.buf[self.buf_pos] = value
                self.buf_pos += 1
                if self.buf_pos == self.buf_size:
                    self._print("m-load-done\r\n")
                    return  # the rest of the digits is disregarded, as the API does

    def _infer(self, args: list[str]) -> None:
        n, w = 1, 10
        if args:
            n = _atoi(args[0])
            if n <= 0:
                self._print("e-[Inference iterations must be >0]\r\n")
                return
            if len(args) > 1:
                w = _atoi(args[1])
                if w < 0:
                    self._print("e-[Inference warmup must be >=0]\r\n")
                    return
        if self.buf_pos != self._in_bytes:
            self._print(f"e-[Input db has {self.buf_pos} bytes, the model takes {self._in_bytes}]\r\n")
            return
        x = bytes(self.buf[:self._in_bytes])
        self._print(f"m-warmup-start-{w}\r\n")
        for _ in range(w):
            self._run(x)
        self._print("m-warmup-done\r\n")
        self._print(f"m-infer-start-{n}\r\n")
        self._timestamp()
        # The outputs of N runs of one input are all the same: running TFLM once and advancing the clock N
        # times would be faster, but a device runs it N times, and so does this one.
        for _ in range(n):
            self._run(x)
        self._timestamp()
        self._print("m-infer-done\r\n")
        if any(kind == "mlperf-skew" and int(arg) == self._infers for kind, arg in self.faults):
            skewed = bytearray(self._last)
            skewed[0] = (skewed[0] + 1) & 0xFF if skewed[0] != 0x7F else skewed[0] - 1
            self._last = bytes(skewed)
        self._infers += 1
        self._results()

    def _run(self, x: bytes) -> None:
        self._last = self.platform.invoke_bytes(x)
        self.clock_us += self._infer_us

    def _results(self) -> None:
        last = getattr(self, "_last", None)
        if last is None:
            self._print("e-[No inference has run]\r\n")
            return
        q = np.frombuffer(last, dtype=np.int8).astype(np.float32)
        # float32 arithmetic as on the device: (q - zero_point) * scale, then printf("%.3f").
        values = (q - np.float32(self._out_zp)) * np.float32(self._out_scale)
        self._print("m-results-[" + ",".join(f"{float(v):.3f}" for v in values) + "]\r\n")


def _atoi(text: str) -> int:
    """C's atoi: leading digits (with a sign), 0 when there are none."""
    sign, i = 1, 0
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        i = 1
    j = i
    while j < len(text) and text[j].isdigit():
        j += 1
    return sign * int(text[i:j]) if j > i else 0
