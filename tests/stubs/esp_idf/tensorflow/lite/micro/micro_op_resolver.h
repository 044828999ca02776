// Stands in for tensorflow/lite/micro/micro_op_resolver.h (tflite-micro), for a syntax check without
// ESP-IDF. FindOp returns the registration or nullptr, as in the real interface.
#pragma once

#include "tensorflow/lite/schema/schema_generated.h"

namespace tflite {

struct TFLMRegistration;

class MicroOpResolver {
 public:
    virtual const TFLMRegistration *FindOp(BuiltinOperator op) const = 0;
    virtual const TFLMRegistration *FindOp(const char *op) const = 0;
    virtual ~MicroOpResolver() {}
};

}  // namespace tflite
