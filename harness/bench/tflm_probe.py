"""Load-time probe of a model with TFLM (the tflite-micro package), run in a child process.

TFLM can crash the whole process on a too-small arena or an odd model, so the virtual board asks this
probe before it loads a model, and harness.bench.model asks it for the arena a model needs (HIL119):
`python -m harness.bench.tflm_probe --arena N MODEL_FILE`. It sits below both (it imports only
harness.bench.flatbuf and harness.errors). It checks the ops against the
firmware's op resolver list, measures the arena the model needs (TFLM's RecordingMicroAllocator, with a
generous arena), then loads it with the firmware's arena and runs one invoke. It prints one JSON object per
finished step on stdout, so the parent still learns the last good step when a later one crashes:

    {"step": "ops", "ops": [...], "inputs": 1, "outputs": 1}
    {"step": "measure", "arena_used": 9216, "input_bytes": 187, "output_bytes": 5}
    {"step": "done", "ok": true, "arena_used": ..., "input_bytes": ..., "output_bytes": ..., "error": null,
     "code": 0}

A refusal (unsupported op, arena too small, TFLM error) ends with `"ok": false`, the HIL_E_* `code` and an
`error` message for the ERROR frame.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

E_LOAD_FAILED = 5
E_ARENA_TOO_SMALL = 11

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class CStderr:
    """Captures what C code prints on fd 2 (TFLM's MicroPrintf) while the block runs."""

    def __enter__(self) -> CStderr:
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def model_ops(data: bytes) -> tuple[list[str], int, int]:
    """Op names as tflite-runtime reports them, and the number of input and output tensors."""
    import tflite_runtime.interpreter as tfl

    interp = tfl.Interpreter(model_content=data, experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_REF)
    ops = [op["op_name"] for op in interp._get_ops_details()]  # noqa: SLF001 - the only op listing it has
    return ops, len(interp.get_input_details()), len(interp.get_output_details())


def tensor_bytes(details: dict) -> int:
    import numpy as np

    return int(np.prod(details["shape"])) * np.dtype(details["dtype"]).itemsize


def load(data: bytes, arena: int):
    """A TFLM interpreter with the allocation recorder on; raises RuntimeError with TFLM's own reason."""
    from tflite_micro import runtime

    with CStderr() as err:
        try:
            return runtime.Interpreter.from_bytes(
                data, arena_size=arena, intrepreter_config=runtime.InterpreterConfig.kAllocationRecording)
        except Exception as exc:  # TFLM raises RuntimeError or ValueError with a generic text
            detail = _last_line(err.text)
            raise RuntimeError(detail or str(exc)) from None


def arena_used(interp) -> int:
    with CStderr() as err:
        interp.print_allocations()
    match = _TOTAL.search(err.text)
    if not match:
        raise RuntimeError(f"TFLM did not report its arena use (got {err.text[:120]!r})")
    return int(match.group(1))


def probe(data: bytes, arena: int, allowed_ops: frozenset[str] | None) -> dict:
    def refuse(code: int, error: str, used: int = 0) -> dict:
        return {"step": "done", "ok": False, "code": code, "error": error, "arena_used": used,
                "input_bytes": 0, "output_bytes": 0}

    # Walk the whole flatbuffer in Python first: the C++ interpreters read a truncated or corrupt file
    # without bounds checks and crash, Python raises.
    if len(data) < 8 or data[4:8] != b"TFL3":
        return refuse(E_LOAD_FAILED, "not a TFLite model (no TFL3 file identifier)")
    try:
        from tflite_micro import runtime

        runtime.convert_bytearray_to_object(bytearray(data))
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged flatbuffer
        return refuse(E_LOAD_FAILED, f"model flatbuffer is truncated or corrupt: {str(exc)[:120]}")
    # A well-formed flatbuffer can still hold indices outside their tables (tensor 999 of 12), which TFLM
    # follows without a check: the probe then "succeeds" on undefined behaviour and the board's own
    # interpreter reads out of bounds. The host's verifier names the broken field.
    from ..errors import ModelError
    from .flatbuf import verify_flatbuffer

    try:
        verify_flatbuffer(data, "stored model")
    except ModelError as exc:
        return refuse(E_LOAD_FAILED, exc.message[:180])
    try:
        ops, n_in, n_out = model_ops(data)
    except Exception as exc:  # noqa: BLE001
        return refuse(E_LOAD_FAILED, f"not a valid TFLite model: {_last_line(str(exc))[:150] or type(exc).__name__}")
    _emit({"step": "ops", "ops": ops, "inputs": n_in, "outputs": n_out})
    if allowed_ops is not None:
        for op in ops:
            if op not in allowed_ops:
                return refuse(E_LOAD_FAILED,
                              f"op {op} is not in the firmware's op resolver (firmware/resolver_ops.def)")
    if n_in != 1 or n_out != 1:
        return refuse(E_LOAD_FAILED, f"model has {n_in} inputs and {n_out} outputs; the firmware runs "
                                     "models with one input and one output tensor")

    # Measure with room to spare (a too-small arena can crash TFLM), then judge against the firmware's.
    roomy = max(4 * arena, 16 * len(data), 1 << 20)
    try:
        interp = load(data, roomy)
        used = arena_used(interp)
        n_in_bytes = tensor_bytes(interp.get_input_details(0))
        n_out_bytes = tensor_bytes(interp.get_output_details(0))
    except RuntimeError as exc:
        return refuse(E_LOAD_FAILED, f"TFLM could not load the model: {str(exc)[:150]}")
    del interp
    _emit({"step": "measure", "arena_used": used, "input_bytes": n_in_bytes, "output_bytes": n_out_bytes})
    if used > arena:
        return refuse(E_ARENA_TOO_SMALL,
                      f"model needs {used} bytes of tensor arena, the firmware has {arena}", used)

    try:
        interp = load(data, arena)
        used = arena_used(interp)
        import numpy as np

        details = interp.get_input_details(0)
        interp.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
        interp.invoke()
    except RuntimeError as exc:
        return refuse(E_ARENA_TOO_SMALL if "alloc" in str(exc).lower() else E_LOAD_FAILED,
                      f"TFLM could not load the model in the firmware's {arena}-byte arena: {str(exc)[:120]}",
                      used)
    return {"step": "done", "ok": True, "code": 0, "error": None, "arena_used": used,
            "input_bytes": n_in_bytes, "output_bytes": n_out_bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench.tflm_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--arena", type=int, required=True, help="the firmware's tensor arena in bytes")
    parser.add_argument("--no-op-check", action="store_true", help="skip the firmware op resolver check")
    parser.add_argument("model", help="the .tflite file")
    args = parser.parse_args(argv)
    with open(args.model, "rb") as f:
        data = f.read()
    allowed = None
    if not args.no_op_check:
        from .flatbuf import firmware_ops

        allowed = firmware_ops()
    _emit(probe(data, args.arena, allowed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
