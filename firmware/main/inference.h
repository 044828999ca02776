/*
 * The TFLM interpreter of the board: one model at a time, a tensor arena reserved once at boot, the ops
 * of firmware/resolver_ops.def and nothing else. Callable from C; return codes are HIL_E_* (0 = success)
 * with a one-line reason in `msg`, as hil_port_t's model_load and invoke hooks expect.
 */
#ifndef HIL_INFERENCE_H
#define HIL_INFERENCE_H

#include <stdint.h>

#include "hil_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reserve the tensor arena (CONFIG_HIL_ARENA_SIZE bytes). 0 on success. */
int inference_init(void);
/* Bytes actually reserved (0 if the reservation failed). */
uint32_t inference_arena_size(void);
/* HIL_KERNELS_ESP_NN or HIL_KERNELS_REFERENCE, from ESP-NN's Kconfig choice. */
uint8_t inference_kernel_mode(void);

/* Build an interpreter for the model at `model` (which must stay readable until inference_unload). */
int inference_load(const uint8_t *model, uint32_t size, hil_model_info_t *info, char *msg, uint32_t msg_cap);
/* Copy the input in, Invoke, copy the output out; cycles = CPU cycles counted around Invoke alone. */
int inference_invoke(const uint8_t *input, uint32_t input_len, uint8_t *output, uint32_t output_len,
                     uint64_t *cycles, char *msg, uint32_t msg_cap);
/* Drop the interpreter (before the model's bytes are erased). */
void inference_unload(void);
/* DUMP: run the input with every tensor preserved and pass the input, then each op's outputs, to sink. */
int inference_dump(const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx, char *msg,
                   uint32_t msg_cap);

/* OP_PROFILE: run the input with TFLM's profiler hook attached and pass each op's cycles to sink. */
int inference_profile(const uint8_t *input, uint32_t input_len, hil_op_sink_t sink, void *sink_ctx, uint64_t *cycles,
                      char *msg, uint32_t msg_cap);

#ifdef __cplusplus
}
#endif

#endif
