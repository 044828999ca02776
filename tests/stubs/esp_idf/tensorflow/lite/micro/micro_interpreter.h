// Stands in for tensorflow/lite/micro/micro_interpreter.h (tflite-micro), for a syntax check without
// ESP-IDF. Same constructor and methods as the real class, bodies omitted.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#define TFLITE_SCHEMA_VERSION (3)

namespace tflite {

class MicroResourceVariables;
class MicroProfilerInterface;

class MicroInterpreter {
 public:
    MicroInterpreter(const Model *model, const MicroOpResolver &op_resolver, uint8_t *tensor_arena,
                     size_t tensor_arena_size, MicroResourceVariables *resource_variables = nullptr,
                     MicroProfilerInterface *profiler = nullptr, bool preserve_all_tensors = false);
    ~MicroInterpreter();

    TfLiteStatus AllocateTensors();
    TfLiteStatus Invoke();
    TfLiteTensor *input(size_t index);
    size_t inputs_size() const;
    TfLiteTensor *output(size_t index);
    size_t outputs_size() const;
    size_t arena_used_bytes() const;
    // Valid for every tensor only when constructed with preserve_all_tensors = true.
    TfLiteEvalTensor *GetTensor(int tensor_index, int subgraph_index = 0);
};

}  // namespace tflite
