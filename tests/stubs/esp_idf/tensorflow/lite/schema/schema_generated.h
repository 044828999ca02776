// Stands in for tensorflow/lite/schema/schema_generated.h (tflite-micro), for a syntax check without
// ESP-IDF. BuiltinOperator values are the real ones for the ops listed.
#pragma once

#include <cstdint>

#include "flatbuffers/flatbuffers.h"

namespace tflite {

enum BuiltinOperator : int32_t {
    BuiltinOperator_ADD = 0,
    BuiltinOperator_AVERAGE_POOL_2D = 1,
    BuiltinOperator_CONCATENATION = 2,
    BuiltinOperator_CONV_2D = 3,
    BuiltinOperator_DEPTHWISE_CONV_2D = 4,
    BuiltinOperator_DEQUANTIZE = 6,
    BuiltinOperator_FULLY_CONNECTED = 9,
    BuiltinOperator_LOGISTIC = 14,
    BuiltinOperator_MAX_POOL_2D = 17,
    BuiltinOperator_MUL = 18,
    BuiltinOperator_RELU = 19,
    BuiltinOperator_RELU6 = 21,
    BuiltinOperator_RESHAPE = 22,
    BuiltinOperator_SOFTMAX = 25,
    BuiltinOperator_TANH = 28,
    BuiltinOperator_CUSTOM = 32,
    BuiltinOperator_PAD = 34,
    BuiltinOperator_MEAN = 40,
    BuiltinOperator_SUB = 41,
    BuiltinOperator_SQUEEZE = 43,
    BuiltinOperator_STRIDED_SLICE = 45,
    BuiltinOperator_TRANSPOSE_CONV = 67,
    BuiltinOperator_EXPAND_DIMS = 70,
    BuiltinOperator_QUANTIZE = 114,
};

const char *EnumNameBuiltinOperator(BuiltinOperator e);

struct OperatorCode {
    int8_t deprecated_builtin_code() const;
    const flatbuffers::String *custom_code() const;
    BuiltinOperator builtin_code() const;
};

struct Operator {
    uint32_t opcode_index() const;
    const flatbuffers::Vector<int32_t> *inputs() const;
    const flatbuffers::Vector<int32_t> *outputs() const;
};

struct Tensor {
    uint32_t buffer() const;
};

struct Buffer {
    const flatbuffers::Vector<uint8_t> *data() const;
};

struct SubGraph {
    const flatbuffers::Vector<flatbuffers::Offset<Tensor>> *tensors() const;
    const flatbuffers::Vector<int32_t> *inputs() const;
    const flatbuffers::Vector<int32_t> *outputs() const;
    const flatbuffers::Vector<flatbuffers::Offset<Operator>> *operators() const;
};

struct Model {
    uint32_t version() const;
    const flatbuffers::Vector<flatbuffers::Offset<OperatorCode>> *operator_codes() const;
    const flatbuffers::Vector<flatbuffers::Offset<SubGraph>> *subgraphs() const;
    const flatbuffers::Vector<flatbuffers::Offset<Buffer>> *buffers() const;
};

const Model *GetModel(const void *buf);
bool VerifyModelBuffer(flatbuffers::Verifier &verifier);

}  // namespace tflite
