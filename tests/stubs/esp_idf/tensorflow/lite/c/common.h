// Stands in for tensorflow/lite/c/common.h (tflite-micro, via esp-tflite-micro), for a syntax check
// without ESP-IDF. Only the TfLiteTensor fields and enums firmware/main uses.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

typedef enum {
    kTfLiteNoType = 0,
    kTfLiteFloat32 = 1,
    kTfLiteInt32 = 2,
    kTfLiteUInt8 = 3,
    kTfLiteInt64 = 4,
    kTfLiteInt16 = 7,
    kTfLiteInt8 = 9,
} TfLiteType;

typedef union TfLitePtrUnion {
    int32_t *i32;
    float *f;
    char *raw;
    const char *raw_const;
    uint8_t *uint8;
    int8_t *int8;
    void *data;
} TfLitePtrUnion;

typedef struct TfLiteIntArray {
    int size;
    int data[1];
} TfLiteIntArray;

// What GetTensor returns: a tensor's data, shape and type during and after Invoke.
typedef struct TfLiteEvalTensor {
    TfLitePtrUnion data;
    TfLiteIntArray *dims;
    TfLiteType type;
} TfLiteEvalTensor;

typedef struct TfLiteTensor {
    TfLiteType type;
    TfLitePtrUnion data;
    size_t bytes;
} TfLiteTensor;

const char *TfLiteTypeGetName(TfLiteType type);

#ifdef __cplusplus
}
#endif
