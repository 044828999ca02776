/*
 * Portable device core of the HIL bench: frame codec, command dispatch and model store state machine
 * (docs/protocol.md). C99, no allocation, no platform headers. The ESP-IDF app (firmware/main) and the
 * virtual board (harness/boards/virtual, through ctypes) link this same code and differ only in the hooks of
 * hil_port_t: bytes out, model store, model load/invoke, cycle counter and clock.
 */
#ifndef HIL_CORE_H
#define HIL_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HIL_PROTO_VERSION 1u
/* Highest minor version this core speaks; HELLO negotiates min(host's, this) (docs/protocol.md). */
#define HIL_PROTO_MINOR 1u
#define HIL_MAX_PAYLOAD 4096u
#define HIL_HEADER_BYTES 4u
#define HIL_CRC_BYTES 4u
#define HIL_MAX_BODY (HIL_HEADER_BYTES + HIL_MAX_PAYLOAD + HIL_CRC_BYTES)
/* COBS adds one byte per 254 plus one; two delimiters. */
#define HIL_MAX_WIRE (HIL_MAX_BODY + HIL_MAX_BODY / 254u + 3u)
#define HIL_MSG_MAX 200u
#define HIL_REPEAT_HISTORY 64u

/* Message types (docs/protocol.md). */
enum {
    HIL_T_HELLO = 0x01,
    HIL_T_MODEL_BEGIN = 0x10,
    HIL_T_MODEL_CHUNK = 0x11,
    HIL_T_MODEL_END = 0x12,
    HIL_T_INFER = 0x20,
    HIL_T_RESET = 0x30,
    HIL_T_DUMP = 0x40,
    HIL_T_OP_PROFILE = 0x50, /* v1.1 addition: per-op cycles of one inference (docs/protocol.md §12) */
    HIL_T_STATS = 0x51,      /* v1.1 addition: device health (docs/protocol.md §13) */
    HIL_T_HELLO_ACK = 0x81,
    HIL_T_MODEL_BEGIN_ACK = 0x90,
    HIL_T_CHUNK_ACK = 0x91,
    HIL_T_MODEL_INFO = 0x92,
    HIL_T_RESULT = 0xA0,
    HIL_T_DUMP_TENSOR = 0xA1,
    HIL_T_DUMP_END = 0xA2,
    HIL_T_RESET_ACK = 0xB0,
    HIL_T_OP_TIMES = 0xC0,
    HIL_T_STATS_ACK = 0xC1,
    HIL_T_NAK = 0xE0,
    HIL_T_ERROR = 0xEE
};

enum {
    HIL_NAK_BAD_COBS = 1,
    HIL_NAK_BAD_LENGTH = 2,
    HIL_NAK_BAD_VERSION = 3,
    HIL_NAK_BAD_CRC = 4
};

enum {
    HIL_E_BAD_STATE = 1,
    HIL_E_TOO_LARGE = 2,
    HIL_E_SHA_MISMATCH = 3,
    HIL_E_BAD_OFFSET = 4,
    HIL_E_LOAD_FAILED = 5,
    HIL_E_BAD_INPUT_SIZE = 6,
    HIL_E_INVOKE_FAILED = 7,
    HIL_E_UNKNOWN_TYPE = 8,
    HIL_E_BAD_LENGTH = 9,
    HIL_E_STORE_FAILED = 10,
    HIL_E_ARENA_TOO_SMALL = 11
};

enum { HIL_KERNELS_UNKNOWN = 0, HIL_KERNELS_REFERENCE = 1, HIL_KERNELS_ESP_NN = 2 };
/* HIL_TIMING_HOST_CLOCK (v1.1): no cycle counter and no estimate; `cycles` is 0 and latency is the
 * wall_ns a host-side clock measured (a simulator, an emulator). */
enum { HIL_TIMING_DEVICE_CYCLES = 0, HIL_TIMING_ESTIMATE = 1, HIL_TIMING_HOST_CLOCK = 2 };
enum { HIL_MODEL_NONE = 0, HIL_MODEL_LOADED = 1, HIL_MODEL_LOAD_FAILED = 2 };

/* What the platform learned when it loaded a model. */
typedef struct {
    uint32_t arena_used;
    uint32_t input_bytes;
    uint32_t output_bytes;
} hil_model_info_t;

/* Fixed facts about the platform, reported in HELLO_ACK. Strings are NUL-terminated, ≤ 63 chars. */
typedef struct {
    const char *fw_version;
    const char *chip;       /* lowercase target name, [a-z0-9_-]: "esp32s3" (docs/protocol.md) */
    const char *build_hash; /* lowercase hex commit, 7..40 digits, optional "-dirty" */
    uint16_t cpu_mhz;       /* 0: no meaningful CPU clock (cycles cannot be turned into time) */
    uint8_t kernel_mode;   /* HIL_KERNELS_* */
    uint8_t timing_source; /* HIL_TIMING_* */
    uint32_t arena_size;
    uint32_t store_capacity;
    /* v1.1 (HELLO_ACK extension): bytes of requests the device holds while it is busy (its receive
     * buffer); the host keeps at most this many request bytes in flight. 0: unknown (host assumes 4096). */
    uint32_t rx_buffer;
    /* v1.1: longest time from RESET_ACK until the device answers HELLO again, in ms. 0: unknown. */
    uint16_t reset_ms;
} hil_device_info_t;

/* DUMP (docs/protocol.md): one tensor of a dump, handed by the platform's dump hook to the core's sink,
 * which cuts it into DUMP_TENSOR frames. Tensors come in dump order: index 0, 1, ... count - 1. */
#define HIL_DUMP_INPUT_OP 0xFFFFu /* op_index of the model's input tensor (no op produced it) */
#define HIL_DUMP_HEADER_BYTES 18u  /* DUMP_TENSOR payload before the data */

typedef struct {
    uint16_t index;        /* position in this dump */
    uint16_t count;        /* tensors in this dump; the same for every tensor of one dump */
    uint16_t tensor_index; /* the tensor's index in the model's (first) subgraph */
    uint16_t op_index;     /* the op that wrote it, in execution order; HIL_DUMP_INPUT_OP for the input */
    uint8_t type;          /* TfLiteType: 1 float32, 2 int32, 3 uint8, 7 int16, 9 int8 */
    const uint8_t *data;
    uint32_t bytes;
} hil_dump_tensor_t;

/* Returns 0 when the tensor went out; nonzero (out of order, count changed) means stop dumping. */
typedef int (*hil_dump_sink_t)(void *sink_ctx, const hil_dump_tensor_t *tensor);

/* OP_PROFILE (docs/protocol.md §12): the platform's profile hook hands each op's cycles, in execution
 * order, to the core's sink, which packs them into one OP_TIMES frame. */
#define HIL_OP_TIMES_HEADER_BYTES 12u /* count u16, reserved u16, invoke cycles u64 */
#define HIL_OP_TIME_BYTES 8u          /* op_index u16, builtin u16, cycles u32 */
#define HIL_MAX_OP_TIMES ((HIL_MAX_PAYLOAD - HIL_OP_TIMES_HEADER_BYTES) / HIL_OP_TIME_BYTES)

/* Returns 0 when the op was recorded; nonzero (more than HIL_MAX_OP_TIMES) means stop. */
typedef int (*hil_op_sink_t)(void *sink_ctx, uint16_t op_index, uint16_t builtin_code, uint32_t cycles);

/* STATS (docs/protocol.md §13): health figures the platform measures. HIL_UNKNOWN_U32 where it cannot. */
#define HIL_UNKNOWN_U32 0xFFFFFFFFu
enum { HIL_HEALTH_DEVICE = 0, HIL_HEALTH_VIRTUAL = 1 };
typedef struct {
    uint8_t source;                  /* HIL_HEALTH_*: measured on the device, or the virtual board's own */
    uint32_t stack_high_water;       /* bytes of the bench task's stack never used so far */
    uint32_t stack_size;             /* bytes of the bench task's stack */
    uint32_t heap_internal_free;     /* free internal RAM heap now */
    uint32_t heap_internal_min_free; /* lowest free internal heap since boot */
    uint32_t psram_free;             /* free PSRAM heap now (0 without PSRAM) */
} hil_health_t;

/*
 * Platform hooks. Every int-returning hook returns 0 on success. Hooks get `ctx` back unchanged.
 * model_load and invoke return a HIL_E_* code on failure and may write a message (NUL-terminated) into msg.
 */
typedef struct {
    void *ctx;
    hil_device_info_t info;
    /* Bytes out to the host. Must send all of them (block if needed). */
    int (*write)(void *ctx, const uint8_t *data, uint32_t len);
    /* Model store: erase for `size` bytes, write at offset, read back, persist size+sha, find a committed model. */
    int (*store_begin)(void *ctx, uint32_t size);
    int (*store_write)(void *ctx, uint32_t offset, const uint8_t *data, uint32_t len);
    const uint8_t *(*store_data)(void *ctx);
    int (*store_commit)(void *ctx, uint32_t size, const uint8_t sha256[32]);
    int (*store_committed)(void *ctx, uint32_t *size, uint8_t sha256[32]); /* 0 when one is committed */
    /* Inference. */
    int (*model_load)(void *ctx, const uint8_t *model, uint32_t size, hil_model_info_t *info, char *msg,
                      uint32_t msg_cap);
    int (*invoke)(void *ctx, const uint8_t *input, uint32_t input_len, uint8_t *output, uint32_t output_len,
                  uint64_t *cycles, char *msg, uint32_t msg_cap);
    uint64_t (*clock_ns)(void *ctx);
    /* Restart the platform after RESET_ACK has been written (may return, e.g. on the virtual board). */
    void (*reset)(void *ctx);
    /* DUMP: run one inference on `input` keeping every intermediate tensor and pass each tensor, in dump
     * order, to sink(sink_ctx, ...) before returning. Returns 0, or a HIL_E_* code with a message in msg.
     * May be NULL (DUMP is then refused as UNKNOWN_TYPE). Kept last so the fields above keep their offsets. */
    int (*dump)(void *ctx, const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx,
                char *msg, uint32_t msg_cap);
    /* OP_PROFILE: run one inference on `input` and pass each op's cycles, in execution order, to
     * sink(sink_ctx, ...); *cycles = the whole invoke, as RESULT's. 0, or HIL_E_* with a message. May be
     * NULL (OP_PROFILE is then refused as UNKNOWN_TYPE). */
    int (*profile)(void *ctx, const uint8_t *input, uint32_t input_len, hil_op_sink_t sink, void *sink_ctx,
                   uint64_t *cycles, char *msg, uint32_t msg_cap);
    /* STATS: fill the health figures (the core adds the arena's). May be NULL (STATS refused). Added after
     * dump, so the fields above keep their offsets. */
    int (*health)(void *ctx, hil_health_t *out);
} hil_port_t;

typedef struct {
    uint32_t frames_ok;
    uint32_t frames_bad; /* candidates dropped: COBS, length, version or CRC */
    uint32_t garbage_bytes;
    uint32_t infers;
    uint32_t repeats;
} hil_stats_t;

/* All state lives here; the caller provides the storage (static on the device). */
typedef struct {
    const hil_port_t *port;
    hil_stats_t stats;
    /* receive */
    uint8_t rx[HIL_MAX_WIRE];
    uint32_t rx_len;  /* counts past sizeof rx, so an over-long frame is seen by its length */
    uint8_t body[HIL_MAX_BODY];
    /* transmit */
    uint8_t tx_body[HIL_MAX_BODY];
    uint8_t tx_wire[HIL_MAX_WIRE];
    /* minor version agreed in the last HELLO (0 until a v1.1 host says hello) */
    uint8_t session_minor;
    /* model store state machine */
    uint8_t upload_active;
    /* outcome of the last MODEL_END that closed an upload, so a repeated MODEL_END (its answer was lost)
     * gets the same answer: 0 none since MODEL_BEGIN/boot, 1 MODEL_INFO, 2 ERROR end_code */
    uint8_t end_state;
    uint16_t end_code;
    uint32_t upload_size;
    uint32_t upload_next;
    uint8_t upload_sha[32];
    uint8_t model_state;
    uint32_t model_size;
    uint8_t model_sha[32];
    hil_model_info_t model;
    /* repeat detection for RESULT flags */
    uint16_t seen_seq[HIL_REPEAT_HISTORY];
    uint8_t seen_valid[HIL_REPEAT_HISTORY];
} hil_core_t;

/* Set up the core and load a committed model, if the store has one. */
void hil_core_init(hil_core_t *core, const hil_port_t *port);
/* Feed received bytes; complete frames are dispatched and answered through port->write. */
void hil_core_feed(hil_core_t *core, const uint8_t *data, uint32_t len);
size_t hil_core_sizeof(void);

/* Codec pieces, exported for tests and the fuzzer. */
uint32_t hil_crc32(const uint8_t *data, size_t len);
void hil_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
/* COBS encode `len` bytes into out (no delimiters); returns encoded length. out needs len + len/254 + 1. */
size_t hil_cobs_encode(const uint8_t *in, size_t len, uint8_t *out);
/* COBS decode; returns decoded length or -1 when invalid or longer than cap. */
long hil_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Whole wire frame (0x00 | COBS(body) | 0x00) into out; returns its length or 0 when it does not fit. */
size_t hil_frame_encode(uint8_t type, uint16_t seq, const uint8_t *payload, size_t payload_len, uint8_t *out,
                        size_t cap);

#ifdef __cplusplus
}
#endif

#endif
