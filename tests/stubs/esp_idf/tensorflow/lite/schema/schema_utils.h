// Stands in for tensorflow/lite/schema/schema_utils.h (tflite-micro), for a syntax check without ESP-IDF.
#pragma once

#include "tensorflow/lite/schema/schema_generated.h"

namespace tflite {

BuiltinOperator GetBuiltinCode(const OperatorCode *op_code);

}  // namespace tflite
