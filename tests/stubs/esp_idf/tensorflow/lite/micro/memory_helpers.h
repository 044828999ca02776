// Stands in for tensorflow/lite/micro/memory_helpers.h (tflite-micro), for a syntax check without
// ESP-IDF. Only the function firmware/main/inference.cc uses.
#pragma once

#include <cstddef>

#include "tensorflow/lite/c/common.h"

namespace tflite {

// How many bytes a TfLiteEvalTensor's data takes (elements × type size).
TfLiteStatus TfLiteEvalTensorByteLength(const TfLiteEvalTensor *eval_tensor, size_t *out_bytes);

}  // namespace tflite
