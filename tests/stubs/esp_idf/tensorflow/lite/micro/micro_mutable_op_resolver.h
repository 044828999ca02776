// Stands in for tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro), for a syntax check
// without ESP-IDF. Declares the Add<Op>() methods firmware/resolver_ops.def names (the real ones take a
// registration with a default argument); an op added to the def file needs its method added here.
#pragma once

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_op_resolver.h"

namespace tflite {

template <unsigned int tOpCount>
class MicroMutableOpResolver : public MicroOpResolver {
 public:
    MicroMutableOpResolver() {}
    const TFLMRegistration *FindOp(BuiltinOperator op) const override;
    const TFLMRegistration *FindOp(const char *op) const override;

    TfLiteStatus AddAdd();
    TfLiteStatus AddAveragePool2D();
    TfLiteStatus AddConcatenation();
    TfLiteStatus AddConv2D();
    TfLiteStatus AddDepthwiseConv2D();
    TfLiteStatus AddDequantize();
    TfLiteStatus AddExpandDims();
    TfLiteStatus AddFullyConnected();
    TfLiteStatus AddLogistic();
    TfLiteStatus AddMaxPool2D();
    TfLiteStatus AddMean();
    TfLiteStatus AddMul();
    TfLiteStatus AddPad();
    TfLiteStatus AddQuantize();
    TfLiteStatus AddRelu();
    TfLiteStatus AddRelu6();
    TfLiteStatus AddReshape();
    TfLiteStatus AddSoftmax();
    TfLiteStatus AddSqueeze();
    TfLiteStatus AddStridedSlice();
    TfLiteStatus AddSub();
    TfLiteStatus AddTanh();
    TfLiteStatus AddTransposeConv();
};

}  // namespace tflite
