"""Every intermediate tensor of one inference on the virtual board: DUMP and the `corrupt-layer:K` fault.

DUMP (docs/protocol.md) wants the model input and each op's outputs, in execution order. TFLM keeps them
all only with `InterpreterConfig.kPreserveAllTensors`, and its `GetTensor` crashes the process on an index
the model does not have, so the list of tensors comes from the flatbuffer first (`dump_plan`) and only
those indices are ever asked for.

`corrupt-layer:K` stands for a kernel bug in op K: element 0 of op K's first output is changed by one bit,
and everything after op K is computed from the changed tensor. TFLM cannot stop between ops, so the ops
after K run in a second interpreter on a "tail" model (the same flatbuffer with ops 0..K removed and the
tensors they handed on as its inputs). The INFER output and the dump come from the same run, so a host
that localises the mismatch must land on op K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.link.protocol import DUMP_INPUT_OP, TFLITE_TYPES

_TYPE_CODES = {name: code for code, name in TFLITE_TYPES.items()}


@dataclass(frozen=True)
class PlannedTensor:
    tensor_index: int
    op_index: int  # DUMP_INPUT_OP for a model input
    type: int  # noqa: A003 - TfLiteType code
    nbytes: int


def dump_plan(model_data: bytes) -> tuple[list[PlannedTensor], list[tuple[int, list[int]]], int]:
    """(tensors in dump order, [(op index, input tensor indices)], model output tensor index).

    Read with tflite-runtime (after the flatbuffer check of harness.bench.model), which never crashes on an index.
    """
    from harness.bench.model import open_interpreter

    interp = open_interpreter(model_data, "model")
    interp.allocate_tensors()
    details = {t["index"]: t for t in interp.get_tensor_details()}

    def planned(index: int, op: int) -> PlannedTensor:
        d = details[index]
        dtype = np.dtype(d["dtype"])
        return PlannedTensor(index, op, _TYPE_CODES.get(dtype.name, 0), int(np.prod(d["shape"])) * dtype.itemsize)

    plan = [planned(int(d["index"]), DUMP_INPUT_OP) for d in interp.get_input_details()]
    seen = {p.tensor_index for p in plan}
    ops = []
    for op_index, op in enumerate(interp._get_ops_details()):  # noqa: SLF001 - the only op listing it has
        ops.append((op_index, [int(i) for i in op["inputs"] if i >= 0]))
        for out in op["outputs"]:
            if out >= 0 and out not in seen:
                seen.add(int(out))
                plan.append(planned(int(out), op_index))
    return plan, ops, int(interp.get_output_details()[0]["index"])


def corrupt(values: np.ndarray) -> np.ndarray:
    """Element 0 with one bit flipped, chosen to raise it (bit 7 of a negative int8, else its highest clear
    bit), so the change survives max-pooling and ReLU and reaches the output on most inputs."""
    out = np.array(values, copy=True)
    flat = out.reshape(-1).view(np.uint8)
    if out.dtype == np.int8:
        v = int(flat[0])
        if v & 0x80:
            bit = 7
        else:
            bit = next((b for b in range(6, -1, -1) if not v & (1 << b)), 0)
        flat[0] = v ^ (1 << bit)
    elif flat.size:
        flat[0] ^= 0x01
    return out


def tail_model(model_data: bytes, after_op: int, inputs: list[int]) -> bytes:
    """The model with ops 0..after_op removed; `inputs` (tensors those ops handed on) become its inputs."""
    import flatbuffers

    from harness.bench.flatbuf import schema as _schema

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_data, 0))
    graph = model.subgraphs[0]
    graph.operators = graph.operators[after_op + 1:]
    graph.inputs = list(inputs)
    builder = flatbuffers.Builder(len(model_data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class LayerRunner:
    """One inference with every tensor kept; optionally with op `corrupt_op`'s output corrupted.

    Also quacks like the TFLM interpreter for the virtual board's INFER path (set_input, invoke,
    get_output), so a board with `corrupt-layer:K` answers INFER from exactly the same computation.
    """

    def __init__(self, model_data: bytes, arena_bytes: int, corrupt_op: int | None = None):
        from tflite_micro import runtime

        self.plan, ops, self.output_index = dump_plan(model_data)
        if corrupt_op is not None and not 0 <= corrupt_op < len(ops):
            raise ValueError(f"corrupt-layer:{corrupt_op}, but the model has ops 0..{len(ops) - 1}")
        self.corrupt_op = corrupt_op
        total = sum(p.nbytes for p in self.plan)
        # Preserving every tensor needs up to all activations on top of the normal plan; be generous, since
        # TFLM crashes rather than fails on a too-small arena.
        self._arena = max(1 << 20, 2 * (arena_bytes + total))
        config = runtime.InterpreterConfig.kPreserveAllTensors
        self._full = runtime.Interpreter.from_bytes(model_data, arena_size=self._arena, intrepreter_config=config)
        self._tail = None
        self._tail_inputs: list[int] = []
        if corrupt_op is not None and corrupt_op < len(ops) - 1:
            produced_late = {p.tensor_index for p in self.plan if p.op_index != DUMP_INPUT_OP
                             and p.op_index > corrupt_op}
            early = {p.tensor_index for p in self.plan} - produced_late
            for _, inputs in ops[corrupt_op + 1:]:
                for t in inputs:
                    if t in early and t not in self._tail_inputs:
                        self._tail_inputs.append(t)
            self._tail = runtime.Interpreter.from_bytes(tail_model(model_data, corrupt_op, self._tail_inputs),
                                                        arena_size=self._arena, intrepreter_config=config)
        self._input = None
        self._output = None

    def run(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """tensor index → values, for every tensor of the plan."""
        self._full.set_input(x, 0)
        self._full.invoke()
        k = self.corrupt_op
        values = {}
        for p in self.plan:
            if k is None or p.op_index == DUMP_INPUT_OP or p.op_index <= k:
                values[p.tensor_index] = np.array(self._full.GetTensor(p.tensor_index, 0)["tensor_data"])
        if k is not None:
            target = next(p.tensor_index for p in self.plan if p.op_index == k)
            values[target] = corrupt(values[target])
            if self._tail is not None:
                for i, t in enumerate(self._tail_inputs):
                    self._tail.set_input(values[t], i)
                self._tail.invoke()
                for p in self.plan:
                    if p.op_index != DUMP_INPUT_OP and p.op_index > k:
                        values[p.tensor_index] = np.array(self._tail.GetTensor(p.tensor_index, 0)["tensor_data"])
        return values

    def dump(self, x: np.ndarray) -> list[tuple[PlannedTensor, bytes]]:
        values = self.run(x)
        return [(p, values[p.tensor_index].tobytes()) for p in self.plan]

    # -- the interpreter's INFER interface ----------------------------------------------------------------
    def set_input(self, x: np.ndarray, _index: int = 0) -> None:
        self._input = x

    def invoke(self) -> None:
        self._output = self.run(self._input)[self.output_index]

    def get_output(self, _index: int = 0) -> np.ndarray:
        return self._output
