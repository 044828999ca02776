/*
 * The board's TFLM interpreter. The op resolver holds exactly the ops of firmware/resolver_ops.def (the
 * list the host checks models against), the tensor arena is reserved once at boot from internal RAM (or
 * PSRAM when CONFIG_HIL_ARENA_IN_PSRAM), and cycles are the CPU cycle counter read around Invoke() alone,
 * so tensor copies and protocol work are not in the figure.
 */
#include "inference.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>

#include "sdkconfig.h"
#include "esp_cpu.h"
#include "esp_heap_caps.h"

#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tensorflow/lite/schema/schema_utils.h"

namespace {

// The def file states its own count for MicroMutableOpResolver's template argument; count the lines
// here as well so an op added without bumping HIL_OP_COUNT fails the build instead of AddXxx() at boot.
constexpr unsigned kOpsListed = 0
#define HIL_OP(name, method) +1
#include "resolver_ops.def"
#undef HIL_OP
    ;
static_assert(kOpsListed == HIL_OP_COUNT, "resolver_ops.def: HIL_OP_COUNT differs from the number of HIL_OP lines");

// TFLM wants 16-byte alignment for the arena; arena_used_bytes() excludes that padding.
constexpr size_t kArenaAlign = 16;

using Resolver = tflite::MicroMutableOpResolver<HIL_OP_COUNT>;
Resolver s_resolver;
bool s_resolver_ready = false;

uint8_t *s_arena = nullptr;
size_t s_arena_size = 0;
uint32_t s_arena_caps = 0;

// One interpreter at a time, rebuilt in place for each model: no heap churn between uploads.
alignas(tflite::MicroInterpreter) unsigned char s_interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *s_interpreter = nullptr;
// The loaded model, kept for DUMP, which rebuilds the interpreter with every tensor preserved.
const tflite::Model *s_model = nullptr;

__attribute__((format(printf, 3, 4))) void say(char *msg, uint32_t cap, const char *fmt, ...)
{
    if (msg == nullptr || cap == 0) {
        return;
    }
    va_list args;
    va_start(args, fmt);
    vsnprintf(msg, cap, fmt, args);
    va_end(args);
}

int register_ops()
{
#define HIL_OP(name, method)                   \
    if (s_resolver.method() != kTfLiteOk) {    \
        return -1;                             \
    }
#include "resolver_ops.def"
#undef HIL_OP
    return 0;
}

// Refuse, by name, a model that uses an op the resolver lacks: AllocateTensors would fail too, but only
// with a log line the host never sees.
int check_ops(const tflite::Model *model, char *msg, uint32_t cap)
{
    const auto *codes = model->operator_codes();
    if (codes == nullptr) {
        return 0;
    }
    for (uint32_t i = 0; i < codes->size(); ++i) {
        const tflite::OperatorCode *code = codes->Get(i);
        const tflite::BuiltinOperator op = tflite::GetBuiltinCode(code);
        if (op == tflite::BuiltinOperator_CUSTOM) {
            const char *name = code->custom_code() != nullptr ? code->custom_code()->c_str() : "?";
            if (s_resolver.FindOp(name) == nullptr) {
                say(msg, cap, "model needs custom op %s, which this firmware does not register", name);
                return HIL_E_LOAD_FAILED;
            }
        } else if (s_resolver.FindOp(op) == nullptr) {
            say(msg, cap, "model needs op %s (builtin %d), which is not in this firmware's resolver "
                "(firmware/resolver_ops.def)", tflite::EnumNameBuiltinOperator(op), static_cast<int>(op));
            return HIL_E_LOAD_FAILED;
        }
    }
    return 0;
}

// The flatbuffers Verifier checks the buffer's structure, not that the indices inside it point at
// existing tensors, buffers and op codes; TFLM trusts them and would read out of bounds. A committed model
// is reloaded at every boot, so an unchecked one could become a boot loop.
bool index_ok(int32_t index, uint32_t count)
{
    return index == -1 || (index >= 0 && static_cast<uint32_t>(index) < count);  // -1: optional input
}

bool indices_ok(const flatbuffers::Vector<int32_t> *list, uint32_t count)
{
    if (list == nullptr) {
        return true;
    }
    for (uint32_t i = 0; i < list->size(); ++i) {
        if (!index_ok(list->Get(i), count)) {
            return false;
        }
    }
    return true;
}

int check_indices(const tflite::Model *model, char *msg, uint32_t cap)
{
    const auto *subgraphs = model->subgraphs();
    const uint32_t n_codes = model->operator_codes() != nullptr ? model->operator_codes()->size() : 0;
    const uint32_t n_buffers = model->buffers() != nullptr ? model->buffers()->size() : 0;
    if (subgraphs == nullptr || subgraphs->size() == 0) {
        say(msg, cap, "model has no subgraph");
        return HIL_E_LOAD_FAILED;
    }
    for (uint32_t g = 0; g < subgraphs->size(); ++g) {
        const tflite::SubGraph *graph = subgraphs->Get(g);
        const uint32_t n_tensors = graph->tensors() != nullptr ? graph->tensors()->size() : 0;
        for (uint32_t t = 0; t < n_tensors; ++t) {
            if (graph->tensors()->Get(t)->buffer() >= n_buffers) {
                say(msg, cap, "subgraph %u tensor %u refers to buffer %u, but there are %u", static_cast<unsigned>(g),
                    static_cast<unsigned>(t), static_cast<unsigned>(graph->tensors()->Get(t)->buffer()),
                    static_cast<unsigned>(n_buffers));
                return HIL_E_LOAD_FAILED;
            }
        }
        if (!indices_ok(graph->inputs(), n_tensors) || !indices_ok(graph->outputs(), n_tensors)) {
            say(msg, cap, "subgraph %u inputs or outputs refer to tensors beyond its %u", static_cast<unsigned>(g),
                static_cast<unsigned>(n_tensors));
            return HIL_E_LOAD_FAILED;
        }
        const auto *ops = graph->operators();
        for (uint32_t o = 0; ops != nullptr && o < ops->size(); ++o) {
            const tflite::Operator *op = ops->Get(o);
            if (op->opcode_index() >= n_codes || !indices_ok(op->inputs(), n_tensors)
                || !indices_ok(op->outputs(), n_tensors)) {
                say(msg, cap, "subgraph %u operator %u refers to an op code or tensor that does not exist "
                    "(%u tensors)", static_cast<unsigned>(g), static_cast<unsigned>(o),
                    static_cast<unsigned>(n_tensors));
                return HIL_E_LOAD_FAILED;
            }
        }
    }
    return 0;
}

// Bytes per element of a schema tensor type, 0 for types whose constant size is not shape x element
// (strings, resources, variants, packed INT4).
uint32_t element_bytes(tflite::TensorType type)
{
    switch (type) {
    case tflite::TensorType_INT8:
    case tflite::TensorType_UINT8:
    case tflite::TensorType_BOOL:
        return 1;
    case tflite::TensorType_INT16:
    case tflite::TensorType_UINT16:
    case tflite::TensorType_FLOAT16:
        return 2;
    case tflite::TensorType_INT32:
    case tflite::TensorType_UINT32:
    case tflite::TensorType_FLOAT32:
        return 4;
    case tflite::TensorType_INT64:
    case tflite::TensorType_UINT64:
    case tflite::TensorType_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

// docs/protocol.md §5.9: TFLM trusts a constant tensor's buffer to hold shape x element bytes and reads
// that many; a shorter buffer would be read past its end. Refuse the model, naming the tensor.
int check_constant_buffers(const tflite::Model *model, char *msg, uint32_t cap)
{
    const auto *buffers = model->buffers();
    const auto *subgraphs = model->subgraphs();
    for (uint32_t g = 0; g < subgraphs->size(); ++g) {
        const auto *tensors = subgraphs->Get(g)->tensors();
        for (uint32_t t = 0; tensors != nullptr && t < tensors->size(); ++t) {
            const tflite::Tensor *tensor = tensors->Get(t);
            const tflite::Buffer *buffer = buffers->Get(tensor->buffer());
            const uint32_t have = buffer != nullptr && buffer->data() != nullptr ? buffer->data()->size() : 0;
            const uint32_t element = element_bytes(tensor->type());
            if (have == 0 || element == 0 || tensor->sparsity() != nullptr) {
                continue;  // not a constant, or a layout whose size is not shape x element
            }
            uint64_t need = element;
            const auto *shape = tensor->shape();
            for (uint32_t d = 0; shape != nullptr && d < shape->size(); ++d) {
                need *= shape->Get(d) >= 0 ? static_cast<uint64_t>(shape->Get(d)) : 0u;
            }
            if (need != have) {
                say(msg, cap, "subgraph %u tensor %u has a %u-byte constant buffer, its shape needs %llu bytes",
                    static_cast<unsigned>(g), static_cast<unsigned>(t), static_cast<unsigned>(have),
                    static_cast<unsigned long long>(need));
                return HIL_E_LOAD_FAILED;
            }
        }
    }
    return 0;
}

// AllocateTensors failed in the reserved arena. Measure what the model needs with a probe arena taken
// from the largest free block, so the message can say how much to reserve; the probe is freed at once.
// A plain heap_caps_malloc of exactly that block: TLSF rounds "largest" down to its size class, so an
// aligned request (size + alignment + block header) could never be met there, and TFLM aligns the arena
// start itself. The need reported adds kArenaAlign for that alignment, which a reserved arena may also lose.
int explain_allocation_failure(const tflite::Model *model, char *msg, uint32_t cap)
{
    const size_t largest = heap_caps_get_largest_free_block(s_arena_caps);
    if (largest > s_arena_size) {
        uint8_t *probe = static_cast<uint8_t *>(heap_caps_malloc(largest, s_arena_caps));
        if (probe != nullptr) {
            auto *trial = new (s_interpreter_storage) tflite::MicroInterpreter(model, s_resolver, probe, largest);
            const bool fits = trial->AllocateTensors() == kTfLiteOk;
            const size_t needed = fits ? trial->arena_used_bytes() + kArenaAlign : 0;
            trial->~MicroInterpreter();
            heap_caps_free(probe);
            if (fits) {
                // The host parses "needs N bytes" (harness/boards/board.py) to name the fix.
                say(msg, cap, "model needs %u bytes of tensor arena, this firmware reserves %u: raise "
                    "CONFIG_HIL_ARENA_SIZE to %u and the profile's arena_bytes", static_cast<unsigned>(needed),
                    static_cast<unsigned>(s_arena_size), static_cast<unsigned>(needed));
                return HIL_E_ARENA_TOO_SMALL;
            }
        }
    }
    say(msg, cap, "AllocateTensors failed with a %u-byte arena (largest free block %u): the model needs more "
        "memory than this board has, or a kernel rejected a tensor", static_cast<unsigned>(s_arena_size),
        static_cast<unsigned>(largest));
    return HIL_E_ARENA_TOO_SMALL;
}

}  // namespace

extern "C" int inference_init(void)
{
    if (!s_resolver_ready) {
        if (register_ops() != 0) {
            return -1;
        }
        s_resolver_ready = true;
    }
    if (s_arena != nullptr) {
        return 0;
    }
#if CONFIG_HIL_ARENA_IN_PSRAM
    s_arena_caps = MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT;
#else
    s_arena_caps = MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT;
#endif
    s_arena = static_cast<uint8_t *>(heap_caps_aligned_alloc(kArenaAlign, CONFIG_HIL_ARENA_SIZE, s_arena_caps));
    s_arena_size = s_arena != nullptr ? static_cast<size_t>(CONFIG_HIL_ARENA_SIZE) : 0;
    return s_arena != nullptr ? 0 : -1;
}

extern "C" uint32_t inference_arena_size(void)
{
    return static_cast<uint32_t>(s_arena_size);
}

extern "C" uint8_t inference_kernel_mode(void)
{
#if defined(CONFIG_NN_OPTIMIZED)
    return HIL_KERNELS_ESP_NN;
#elif defined(CONFIG_NN_ANSI_C)
    return HIL_KERNELS_REFERENCE;
#else
    return HIL_KERNELS_UNKNOWN;
#endif
}

extern "C" void inference_unload(void)
{
    if (s_interpreter != nullptr) {
        s_interpreter->~MicroInterpreter();
        s_interpreter = nullptr;
    }
}

extern "C" int inference_load(const uint8_t *model_data, uint32_t size, hil_model_info_t *info, char *msg,
                              uint32_t msg_cap)
{
    inference_unload();
    if (!s_resolver_ready || s_arena == nullptr) {
        say(msg, msg_cap, "firmware could not reserve its %u-byte tensor arena at boot",
            static_cast<unsigned>(CONFIG_HIL_ARENA_SIZE));
        return HIL_E_ARENA_TOO_SMALL;
    }

    // The sha256 proves the bytes are what the host sent, not that the host sent a model.
    flatbuffers::Verifier verifier(model_data, size);
    if (!tflite::VerifyModelBuffer(verifier)) {
        say(msg, msg_cap, "stored %u bytes are not a valid .tflite flatbuffer", static_cast<unsigned>(size));
        return HIL_E_LOAD_FAILED;
    }
    const tflite::Model *model = tflite::GetModel(model_data);
    if (model->version() != TFLITE_SCHEMA_VERSION) {
        say(msg, msg_cap, "model schema version %u, this firmware reads %d", static_cast<unsigned>(model->version()),
            TFLITE_SCHEMA_VERSION);
        return HIL_E_LOAD_FAILED;
    }
    int rc = check_indices(model, msg, msg_cap);
    if (rc == 0) {
        rc = check_constant_buffers(model, msg, msg_cap);
    }
    if (rc == 0) {
        rc = check_ops(model, msg, msg_cap);
    }
    if (rc != 0) {
        return rc;
    }

    s_interpreter = new (s_interpreter_storage) tflite::MicroInterpreter(model, s_resolver, s_arena, s_arena_size);
    if (s_interpreter->AllocateTensors() != kTfLiteOk) {
        inference_unload();
        return explain_allocation_failure(model, msg, msg_cap);
    }
    if (s_interpreter->inputs_size() != 1 || s_interpreter->outputs_size() != 1) {
        say(msg, msg_cap, "model has %u inputs and %u outputs; the bench runs one of each",
            static_cast<unsigned>(s_interpreter->inputs_size()), static_cast<unsigned>(s_interpreter->outputs_size()));
        inference_unload();
        return HIL_E_LOAD_FAILED;
    }
    const TfLiteTensor *input = s_interpreter->input(0);
    const TfLiteTensor *output = s_interpreter->output(0);
    if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8) {
        say(msg, msg_cap, "model input is %s and output %s; the bench sends and reads INT8",
            TfLiteTypeGetName(input->type), TfLiteTypeGetName(output->type));
        inference_unload();
        return HIL_E_LOAD_FAILED;
    }

    s_model = model;
    info->arena_used = static_cast<uint32_t>(s_interpreter->arena_used_bytes());
    info->input_bytes = static_cast<uint32_t>(input->bytes);
    info->output_bytes = static_cast<uint32_t>(output->bytes);
    return 0;
}

// Copies one input into the interpreter's input tensor; the core checked the size, this keeps the
// interpreter safe on its own.
static int set_input(const uint8_t *input, uint32_t input_len, char *msg, uint32_t msg_cap)
{
    TfLiteTensor *in = s_interpreter->input(0);
    if (input_len != in->bytes) {
        say(msg, msg_cap, "input is %u bytes, the model expects %u", static_cast<unsigned>(input_len),
            static_cast<unsigned>(in->bytes));
        return HIL_E_BAD_INPUT_SIZE;
    }
    memcpy(in->data.data, input, input_len);
    return 0;
}


extern "C" int inference_invoke(const uint8_t *input, uint32_t input_len, uint8_t *output, uint32_t output_len,
                                uint64_t *cycles, char *msg, uint32_t msg_cap)
{
    if (s_interpreter == nullptr) {
        say(msg, msg_cap, "no model loaded");
        return HIL_E_BAD_STATE;
    }
    const int in_rc = set_input(input, input_len, msg, msg_cap);
    if (in_rc != 0) {
        return in_rc;
    }

    // The counter is per core and 32 bits wide: the bench task is pinned, and unsigned subtraction is
    // exact across one wrap (17.9 s at 240 MHz, far beyond any invoke the bench times).
    const esp_cpu_cycle_count_t start = esp_cpu_get_cycle_count();
    const TfLiteStatus status = s_interpreter->Invoke();
    const esp_cpu_cycle_count_t end = esp_cpu_get_cycle_count();
    *cycles = static_cast<esp_cpu_cycle_count_t>(end - start);

    if (status != kTfLiteOk) {
        say(msg, msg_cap, "Invoke() failed: a kernel returned an error");
        return HIL_E_INVOKE_FAILED;
    }
    const TfLiteTensor *out = s_interpreter->output(0);
    if (output_len != out->bytes) {
        say(msg, msg_cap, "output is %u bytes, the core asked for %u", static_cast<unsigned>(out->bytes),
            static_cast<unsigned>(output_len));
        return HIL_E_INVOKE_FAILED;
    }
    memcpy(output, out->data.data, output_len);
    return 0;
}

// ---- DUMP: every intermediate tensor of one inference (docs/protocol.md) ----

namespace {

// Builds the interpreter for s_model in place; preserve = keep every tensor (TFLM then plans no buffer
// sharing, so the model needs more arena); profiler = called around every op's invoke (OP_PROFILE).
bool build_interpreter(bool preserve, tflite::MicroProfilerInterface *profiler = nullptr)
{
    s_interpreter = new (s_interpreter_storage)
        tflite::MicroInterpreter(s_model, s_resolver, s_arena, s_arena_size, nullptr, profiler, preserve);
    if (s_interpreter->AllocateTensors() != kTfLiteOk) {
        inference_unload();
        return false;
    }
    return true;
}

int send_tensor(hil_dump_sink_t sink, void *sink_ctx, uint16_t index, uint16_t count, int32_t tensor_index,
                uint16_t op_index, char *msg, uint32_t msg_cap)
{
    const TfLiteEvalTensor *t = s_interpreter->GetTensor(tensor_index);
    size_t bytes = 0;
    if (t == nullptr || tflite::TfLiteEvalTensorByteLength(t, &bytes) != kTfLiteOk) {
        say(msg, msg_cap, "tensor %d has no data to dump", static_cast<int>(tensor_index));
        return HIL_E_INVOKE_FAILED;
    }
    hil_dump_tensor_t out;
    out.index = index;
    out.count = count;
    out.tensor_index = static_cast<uint16_t>(tensor_index);
    out.op_index = op_index;
    out.type = static_cast<uint8_t>(t->type);
    out.data = static_cast<const uint8_t *>(t->data.data);
    out.bytes = static_cast<uint32_t>(bytes);
    if (sink(sink_ctx, &out) != 0) {
        say(msg, msg_cap, "the core refused dump tensor %u", static_cast<unsigned>(index));
        return HIL_E_INVOKE_FAILED;
    }
    return 0;
}

// Runs the preserved-tensor interpreter on the input and sends the input, then each op's outputs.
int run_and_send(const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx, char *msg,
                 uint32_t msg_cap)
{
    const int in_rc = set_input(input, input_len, msg, msg_cap);
    if (in_rc != 0) {
        return in_rc;
    }
    if (s_interpreter->Invoke() != kTfLiteOk) {
        say(msg, msg_cap, "Invoke() failed during DUMP");
        return HIL_E_INVOKE_FAILED;
    }
    const tflite::SubGraph *graph = s_model->subgraphs()->Get(0);
    const auto *ops = graph->operators();
    const uint32_t n_ops = ops != nullptr ? ops->size() : 0;
    uint32_t count = 1;
    for (uint32_t i = 0; i < n_ops; ++i) {
        const auto *outs = ops->Get(i)->outputs();
        for (uint32_t j = 0; outs != nullptr && j < outs->size(); ++j) {
            count += outs->Get(j) >= 0 ? 1u : 0u;
        }
    }
    if (count > 0xFFFFu || n_ops >= HIL_DUMP_INPUT_OP) {
        say(msg, msg_cap, "model has %u tensors to dump, the protocol counts up to 65535", static_cast<unsigned>(count));
        return HIL_E_INVOKE_FAILED;
    }
    uint16_t index = 0;
    int rc = send_tensor(sink, sink_ctx, index++, static_cast<uint16_t>(count), graph->inputs()->Get(0),
                         static_cast<uint16_t>(HIL_DUMP_INPUT_OP), msg, msg_cap);
    for (uint32_t i = 0; rc == 0 && i < n_ops; ++i) {
        const auto *outs = ops->Get(i)->outputs();
        for (uint32_t j = 0; rc == 0 && outs != nullptr && j < outs->size(); ++j) {
            if (outs->Get(j) >= 0) {
                rc = send_tensor(sink, sink_ctx, index++, static_cast<uint16_t>(count), outs->Get(j),
                                 static_cast<uint16_t>(i), msg, msg_cap);
            }
        }
    }
    return rc;
}

}  // namespace

extern "C" int inference_dump(const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx,
                              char *msg, uint32_t msg_cap)
{
    if (s_interpreter == nullptr || s_model == nullptr) {
        say(msg, msg_cap, "no model loaded");
        return HIL_E_BAD_STATE;
    }
    // The normal interpreter reuses tensor memory between ops, so only the preserving one can report every
    // tensor. It lives in the same arena for the duration of the DUMP; the normal one is rebuilt after, so
    // INFER timing is never measured on the preserving layout.
    s_interpreter->~MicroInterpreter();
    int rc;
    if (!build_interpreter(true)) {
        say(msg, msg_cap, "DUMP keeps every tensor, which needs more than this firmware's %u-byte arena: raise "
            "CONFIG_HIL_ARENA_SIZE to localise mismatches of this model", static_cast<unsigned>(s_arena_size));
        rc = HIL_E_ARENA_TOO_SMALL;
    } else {
        rc = run_and_send(input, input_len, sink, sink_ctx, msg, msg_cap);
        s_interpreter->~MicroInterpreter();
    }
    if (!build_interpreter(false) && rc == 0) {
        say(msg, msg_cap, "the model no longer loads after DUMP");
        rc = HIL_E_LOAD_FAILED;
    }
    return rc;
}

// ---- OP_PROFILE: cycles per op of one inference (docs/protocol.md §12) ----

namespace {

// TFLM opens one profiler event around each op's invoke, in execution order (MicroInterpreterGraph), so
// event i is op i of the (single) subgraph. Cycles are the same per-core counter RESULT uses; the
// profiler's own two counter reads per op are inside the figure, a few dozen cycles.
class CycleProfiler : public tflite::MicroProfilerInterface {
public:
    uint32_t BeginEvent(const char *) override
    {
        if (count_ < HIL_MAX_OP_TIMES) {
            start_[count_] = esp_cpu_get_cycle_count();
        }
        return count_++;
    }

    void EndEvent(uint32_t handle) override
    {
        const esp_cpu_cycle_count_t now = esp_cpu_get_cycle_count();
        if (handle < HIL_MAX_OP_TIMES) {
            cycles_[handle] = static_cast<uint32_t>(static_cast<esp_cpu_cycle_count_t>(now - start_[handle]));
        }
    }

    void reset() { count_ = 0; }
    uint32_t count() const { return count_; }
    uint32_t cycles(uint32_t i) const { return cycles_[i]; }

private:
    uint32_t count_ = 0;
    esp_cpu_cycle_count_t start_[HIL_MAX_OP_TIMES] = {};
    uint32_t cycles_[HIL_MAX_OP_TIMES] = {};
};

CycleProfiler s_profiler;

// Runs the input on the profiling interpreter and hands op i's cycles to the sink.
int profile_and_send(const uint8_t *input, uint32_t input_len, hil_op_sink_t sink, void *sink_ctx, uint64_t *cycles,
                     char *msg, uint32_t msg_cap)
{
    const int in_rc = set_input(input, input_len, msg, msg_cap);
    if (in_rc != 0) {
        return in_rc;
    }
    s_profiler.reset();
    const esp_cpu_cycle_count_t start = esp_cpu_get_cycle_count();
    const TfLiteStatus status = s_interpreter->Invoke();
    const esp_cpu_cycle_count_t end = esp_cpu_get_cycle_count();
    *cycles = static_cast<esp_cpu_cycle_count_t>(end - start);
    if (status != kTfLiteOk) {
        say(msg, msg_cap, "Invoke() failed during OP_PROFILE");
        return HIL_E_INVOKE_FAILED;
    }
    const auto *ops = s_model->subgraphs()->Get(0)->operators();
    const uint32_t n_ops = ops != nullptr ? ops->size() : 0;
    if (s_profiler.count() != n_ops) {
        say(msg, msg_cap, "the profiler saw %u events for %u ops (a model with several subgraphs?)",
            static_cast<unsigned>(s_profiler.count()), static_cast<unsigned>(n_ops));
        return HIL_E_INVOKE_FAILED;
    }
    for (uint32_t i = 0; i < n_ops; ++i) {
        const tflite::OperatorCode *code = s_model->operator_codes()->Get(ops->Get(i)->opcode_index());
        if (sink(sink_ctx, static_cast<uint16_t>(i), static_cast<uint16_t>(tflite::GetBuiltinCode(code)),
                 s_profiler.cycles(i)) != 0) {
            say(msg, msg_cap, "model has %u ops, more than OP_TIMES carries", static_cast<unsigned>(n_ops));
            return HIL_E_INVOKE_FAILED;
        }
    }
    return 0;
}

}  // namespace

extern "C" int inference_profile(const uint8_t *input, uint32_t input_len, hil_op_sink_t sink, void *sink_ctx,
                                 uint64_t *cycles, char *msg, uint32_t msg_cap)
{
    if (s_interpreter == nullptr || s_model == nullptr) {
        say(msg, msg_cap, "no model loaded");
        return HIL_E_BAD_STATE;
    }
    // As for DUMP: the profiling interpreter exists only for this request, so INFER never pays for the
    // profiler's calls; the normal one is rebuilt after.
    s_interpreter->~MicroInterpreter();
    int rc;
    if (!build_interpreter(false, &s_profiler)) {
        say(msg, msg_cap, "the model no longer loads with the profiler attached");
        rc = HIL_E_LOAD_FAILED;
    } else {
        rc = profile_and_send(input, input_len, sink, sink_ctx, cycles, msg, msg_cap);
        s_interpreter->~MicroInterpreter();
    }
    if (!build_interpreter(false) && rc == 0) {
        say(msg, msg_cap, "the model no longer loads after OP_PROFILE");
        rc = HIL_E_LOAD_FAILED;
    }
    return rc;
}
