/*
 * libFuzzer target for the portable device core (docs/protocol.md): the frame finder and decoder, the
 * command dispatch, the model upload state machine and the DUMP sink, driven through hil_core_feed with a
 * fake platform (in-memory store, a fake interpreter whose behaviour the input chooses).
 *
 * One source, two targets (HIL_FUZZ_FRAMES):
 *   0  fuzz_raw:    the input is the byte stream the device receives, after one byte of platform knobs.
 *   1  fuzz_frames: the input is a list of records that become valid frames (hil_frame_encode), whole
 *                   uploads with the right sha256, garbage and corrupted frames, so the fuzzer spends its
 *                   time in dispatch and the state machine rather than on guessing CRCs.
 * With HIL_FUZZ_STANDALONE a main() replays input files without libFuzzer (any C compiler), which is how
 * the kept regression inputs run where clang is missing.
 *
 * Crashes are sanitizer reports or abort() from the oracles below, which check what the protocol promises:
 *   - every frame the core writes is one well-formed frame (delimiters, COBS, version, CRC, size);
 *   - every candidate that ends with a zero gets an answer: a NAK (seq 0xFFFF, the reason a reference
 *     decoder in this file finds) when it is not a frame, else replies with the request's seq and of the
 *     types the request allows, the last one final (nothing lost, nothing silent);
 *   - hooks are called inside the bounds the core promises: store writes within the erased size, a load
 *     of the committed bytes, invoke and dump with the loaded model's tensor sizes.
 */
#include "../hil_core.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef HIL_FUZZ_FRAMES
#define HIL_FUZZ_FRAMES 0
#endif

#define STORE_CAP 8192u
#define MAX_REPLIES 512u

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_core oracle: %s\n", what);
    abort();
}

/* ---- reference codec, independent of the core's ---- */

/* Byte-wise table CRC-32, built at start-up from the polynomial (the core uses a nibble table). */
static uint32_t g_crc_table[256];

static void ref_crc32_init(void)
{
    uint32_t i;
    int k;
    for (i = 0; i < 256u; i++) {
        uint32_t c = i;
        for (k = 0; k < 8; k++) {
            c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        }
        g_crc_table[i] = c;
    }
}

static uint32_t ref_crc32(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < n; i++) {
        crc = (crc >> 8) ^ g_crc_table[(crc ^ p[i]) & 0xFFu];
    }
    return ~crc;
}

/* COBS decode of a zero-free run; -1 when a code byte runs past the end. No capacity limit: out must hold
 * len bytes (decoding never grows). */
static long ref_cobs_decode(const uint8_t *in, size_t len, uint8_t *out)
{
    size_t i = 0;
    size_t n = 0;
    while (i < len) {
        size_t code = in[i];
        size_t end = i + code;
        if (code == 0 || end > len) {
            return -1;
        }
        for (i = i + 1; i < end; i++) {
            out[n++] = in[i];
        }
        if (code < 0xFF && i < len) {
            out[n++] = 0;
        }
    }
    return (long)n;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Judges a candidate as the spec does. Returns 0 and fills type/seq/payload length for a valid frame,
 * else the NAK reason the device must give. */
static uint8_t ref_judge(const uint8_t *run, size_t len, uint8_t *type, uint16_t *seq, uint32_t *payload_len)
{
    static uint8_t body[1u << 17];
    long n;
    if (len > HIL_MAX_WIRE || len > sizeof body) {
        return HIL_NAK_BAD_LENGTH;
    }
    n = ref_cobs_decode(run, len, body);
    if (n < 0) {
        return HIL_NAK_BAD_COBS;
    }
    if (n < (long)(HIL_HEADER_BYTES + HIL_CRC_BYTES) || n > (long)HIL_MAX_BODY) {
        return HIL_NAK_BAD_LENGTH;
    }
    if (body[0] != HIL_PROTO_VERSION) {
        return HIL_NAK_BAD_VERSION;
    }
    if (ref_crc32(body, (size_t)n - 4u) != rd32(body + n - 4)) {
        return HIL_NAK_BAD_CRC;
    }
    *type = body[1];
    *seq = (uint16_t)(body[2] | (body[3] << 8));
    *payload_len = (uint32_t)n - 8u;
    return 0;
}

/* ---- the fake platform ---- */

typedef struct {
    uint8_t type;
    uint16_t seq;
    uint32_t len;
    uint8_t head[4]; /* first payload bytes (NAK reason, ERROR code and request type) */
} reply_t;

/* Knob bits (first input byte): which hooks fail or are missing. */
enum {
    K_BEGIN_FAILS = 0x01,
    K_WRITE_FAILS = 0x02, /* store_write fails at offsets with bit 7 set */
    K_COMMIT_FAILS = 0x04,
    K_NO_STORE_DATA = 0x08,
    K_NO_DUMP = 0x10,
    K_NO_CLOCK = 0x20,
    K_NO_INTERPRETER = 0x40,
    K_DUMP_IGNORES_SINK = 0x80 /* the dump hook keeps going after the sink refused a tensor */
};

typedef struct {
    uint8_t knobs;
    uint32_t erased; /* size of the last store_begin, 0 when none */
    int committed;
    uint32_t committed_size;
    uint8_t committed_sha[32];
    int loaded;
    hil_model_info_t info;
    uint8_t model_head[16]; /* the loaded model's first bytes steer invoke and dump */
    uint64_t clock;
    int reset_requested;
    uint32_t n_replies;
    uint32_t lost_replies; /* beyond MAX_REPLIES (a long dump) */
    /* Not cleared per run: the store is written before it is read, the log is counted by n_replies. */
    uint8_t store[STORE_CAP];
    reply_t replies[MAX_REPLIES];
} fake_t;

static fake_t g_fake;
static hil_port_t g_port;
static hil_core_t g_core;
/* Big enough for a tensor cut into three DUMP_TENSOR frames; more would only slow the fuzzer. */
static uint8_t g_pattern[9000];

static int fake_write(void *ctx, const uint8_t *data, uint32_t len)
{
    static uint8_t body[HIL_MAX_WIRE];
    fake_t *f = (fake_t *)ctx;
    uint32_t i;
    long n;
    reply_t *r;

    if (len < 2u + 1u || data[0] != 0 || data[len - 1u] != 0) {
        fail("a written frame does not start and end with 0x00");
    }
    for (i = 1; i + 1u < len; i++) {
        if (data[i] == 0) {
            fail("a written frame has a zero inside (one write must be one frame)");
        }
    }
    if (len - 2u > HIL_MAX_WIRE) {
        fail("a written frame is longer than HIL_MAX_WIRE");
    }
    n = ref_cobs_decode(data + 1, len - 2u, body);
    if (n < 8 || n > (long)HIL_MAX_BODY) {
        fail("a written frame does not decode to a body of 8..HIL_MAX_BODY bytes");
    }
    if (body[0] != HIL_PROTO_VERSION || ref_crc32(body, (size_t)n - 4u) != rd32(body + n - 4)) {
        fail("a written frame has a wrong version or CRC");
    }
    if (f->n_replies >= MAX_REPLIES) {
        f->lost_replies++;
        return 0;
    }
    r = &f->replies[f->n_replies++];
    r->type = body[1];
    r->seq = (uint16_t)(body[2] | (body[3] << 8));
    r->len = (uint32_t)n - 8u;
    memset(r->head, 0, sizeof r->head);
    memcpy(r->head, body + 4, r->len < 4u ? r->len : 4u);
    return 0;
}

static int fake_store_begin(void *ctx, uint32_t size)
{
    fake_t *f = (fake_t *)ctx;
    if (size == 0u || size > g_port.info.store_capacity) {
        fail("store_begin with a size the core should have refused");
    }
    f->committed = 0;
    f->loaded = 0;
    if (f->knobs & K_BEGIN_FAILS) {
        f->erased = 0;
        return -1;
    }
    memset(f->store, 0xFF, size); /* erased flash reads as 0xFF */
    f->erased = size;
    return 0;
}

static int fake_store_write(void *ctx, uint32_t offset, const uint8_t *data, uint32_t len)
{
    fake_t *f = (fake_t *)ctx;
    if (f->erased == 0u || offset > f->erased || len > f->erased - offset) {
        fail("store_write outside the erased size");
    }
    if ((f->knobs & K_WRITE_FAILS) && (offset & 0x80u)) {
        return -1;
    }
    memcpy(f->store + offset, data, len);
    return 0;
}

static const uint8_t *fake_store_data(void *ctx)
{
    fake_t *f = (fake_t *)ctx;
    return (f->knobs & K_NO_STORE_DATA) ? NULL : f->store;
}

static int fake_store_commit(void *ctx, uint32_t size, const uint8_t sha256[32])
{
    fake_t *f = (fake_t *)ctx;
    uint8_t actual[32];
    if (size != f->erased) {
        fail("store_commit with a size other than the erased one");
    }
    hil_sha256(f->store, size, actual);
    if (memcmp(actual, sha256, 32) != 0) {
        fail("store_commit of bytes that do not hash to the committed sha256");
    }
    if (f->knobs & K_COMMIT_FAILS) {
        return -1;
    }
    f->committed = 1;
    f->committed_size = size;
    memcpy(f->committed_sha, sha256, 32);
    return 0;
}

static int fake_store_committed(void *ctx, uint32_t *size, uint8_t sha256[32])
{
    fake_t *f = (fake_t *)ctx;
    if (!f->committed) {
        return 1;
    }
    *size = f->committed_size;
    memcpy(sha256, f->committed_sha, 32);
    return 0;
}

/* Writes `cap` bytes of text without a terminator when `unterminated`, as a careless platform might. */
static void put_msg(char *msg, uint32_t cap, const char *text, int unterminated)
{
    uint32_t i;
    if (cap == 0u) {
        return;
    }
    if (unterminated) {
        for (i = 0; i < cap; i++) {
            msg[i] = text[i % strlen(text)];
        }
        return;
    }
    for (i = 0; i + 1u < cap && text[i] != '\0'; i++) {
        msg[i] = text[i];
    }
    msg[i] = '\0';
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* The model's bytes choose what the fake interpreter does: byte 0 the outcome, 1..4 the tensor sizes,
 * 5..8 the arena use, 9 invoke's behaviour, 10.. dump's. */
static int fake_model_load(void *ctx, const uint8_t *model, uint32_t size, hil_model_info_t *info, char *msg,
                           uint32_t msg_cap)
{
    fake_t *f = (fake_t *)ctx;
    uint8_t head[16];
    if (model != f->store || !f->committed || size != f->committed_size) {
        fail("model_load of something other than the committed store");
    }
    f->loaded = 0;
    memset(head, 0, sizeof head);
    memcpy(head, model, size < sizeof head ? size : sizeof head);
    if (size < 6u) {
        return HIL_E_LOAD_FAILED; /* and no message */
    }
    info->input_bytes = rd16(head + 1);
    info->output_bytes = rd16(head + 3);
    info->arena_used = rd32(head + 5);
    switch (head[0] % 6u) {
    case 1:
        put_msg(msg, msg_cap, "model needs more arena", 0);
        return HIL_E_ARENA_TOO_SMALL;
    case 2:
        put_msg(msg, msg_cap, "op CONV_3D missing ", 1);
        return HIL_E_LOAD_FAILED;
    case 3:
        /* Any int, negative or out of the HIL_E_* range: the core must still answer LOAD_FAILED. */
        if ((int8_t)head[9] != 0) {
            return (int8_t)head[9];
        }
        break;
    case 4:
        put_msg(msg, msg_cap, "success leaves junk in msg ", 1);
        break;
    default:
        break;
    }
    f->loaded = 1;
    f->info = *info;
    memcpy(f->model_head, head, sizeof head);
    return 0;
}

static int fake_invoke(void *ctx, const uint8_t *input, uint32_t input_len, uint8_t *output, uint32_t output_len,
                       uint64_t *cycles, char *msg, uint32_t msg_cap)
{
    fake_t *f = (fake_t *)ctx;
    uint32_t j;
    if (!f->loaded || input_len != f->info.input_bytes || output_len != f->info.output_bytes) {
        fail("invoke without the loaded model's tensor sizes");
    }
    if (input_len > 0u && input[0] == 0xEEu) {
        int rc = input_len > 1u ? (int8_t)input[1] : 7;
        put_msg(msg, msg_cap, "invoke refused ", input_len > 2u && (input[2] & 1u));
        if (rc != 0) {
            return rc;
        }
    }
    for (j = 0; j < output_len; j++) {
        output[j] = (uint8_t)(j + (input_len > 0u ? input[j % input_len] : 0u));
    }
    *cycles = (uint64_t)f->model_head[9] << 40;
    return 0;
}

static uint64_t fake_clock_ns(void *ctx)
{
    fake_t *f = (fake_t *)ctx;
    /* A clock that sometimes runs backwards: wall_ns must then be 0, not a huge wrap. */
    f->clock += (f->model_head[9] & 1u) ? (uint64_t)-1000 : 1000u;
    return f->clock;
}

static int fake_dump(void *ctx, const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx,
                     char *msg, uint32_t msg_cap)
{
    fake_t *f = (fake_t *)ctx;
    const uint8_t *h = f->model_head;
    uint16_t count = (uint16_t)(1u + h[10] % 5u);
    uint16_t i;
    if (!f->loaded || input_len != f->info.input_bytes) {
        fail("dump without the loaded model's input size");
    }
    for (i = 0; i < count; i++) {
        hil_dump_tensor_t t;
        t.index = i;
        t.count = count;
        t.tensor_index = (uint16_t)(i * 3u);
        t.op_index = i == 0u ? (uint16_t)HIL_DUMP_INPUT_OP : (uint16_t)(i - 1u);
        t.type = 9;
        t.data = i == 0u ? input : g_pattern;
        t.bytes = i == 0u ? input_len : (uint32_t)(h[11] | (h[12] << 8)) % sizeof g_pattern;
        switch (h[13] % 8u) {
        case 1: /* an index skipped */
            if (i == 1u) {
                t.index = 2;
            }
            break;
        case 2: /* count changes mid-dump */
            if (i == 1u) {
                t.count = (uint16_t)(count + 1u);
            }
            break;
        case 3: /* data missing */
            if (i == 1u) {
                t.data = NULL;
            }
            break;
        case 4: /* stops early and claims success */
            if (i == 1u) {
                return 0;
            }
            break;
        case 5: /* fails part-way */
            if (i == 1u) {
                put_msg(msg, msg_cap, "preserving arena too small", h[14] & 1u);
                return (int8_t)h[14] != 0 ? (int8_t)h[14] : HIL_E_ARENA_TOO_SMALL;
            }
            break;
        case 6: /* index beyond count */
            t.index = (uint16_t)(i == 0u ? 0u : count + i);
            break;
        default:
            break;
        }
        if (sink(sink_ctx, &t) != 0 && !(f->knobs & K_DUMP_IGNORES_SINK)) {
            put_msg(msg, msg_cap, "sink refused", 0);
            return HIL_E_INVOKE_FAILED;
        }
    }
    return 0;
}

static void fake_reset(void *ctx)
{
    ((fake_t *)ctx)->reset_requested = 1;
}

static void setup(uint8_t knobs)
{
    memset(&g_fake, 0, offsetof(fake_t, store));
    memset(&g_port, 0, sizeof g_port);
    g_fake.knobs = knobs;
    g_port.ctx = &g_fake;
    g_port.info.fw_version = "fuzz";
    g_port.info.chip = "host";
    g_port.info.build_hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123"; /* > 63 */
    g_port.info.cpu_mhz = 240;
    g_port.info.kernel_mode = HIL_KERNELS_REFERENCE;
    g_port.info.timing_source = HIL_TIMING_ESTIMATE;
    g_port.info.arena_size = 65536;
    g_port.info.store_capacity = STORE_CAP;
    g_port.write = fake_write;
    g_port.store_begin = fake_store_begin;
    g_port.store_write = fake_store_write;
    g_port.store_data = fake_store_data;
    g_port.store_commit = fake_store_commit;
    g_port.store_committed = fake_store_committed;
    if (!(knobs & K_NO_INTERPRETER)) {
        g_port.model_load = fake_model_load;
        g_port.invoke = fake_invoke;
    }
    if (!(knobs & K_NO_CLOCK)) {
        g_port.clock_ns = fake_clock_ns;
    }
    g_port.reset = fake_reset;
    if (!(knobs & K_NO_DUMP)) {
        g_port.dump = fake_dump;
    }
    hil_core_init(&g_core, &g_port);
}

/* The unterminated run carried over from earlier feeds, part of the next candidate; a restart loses it
 * on both sides, as a reboot loses a half-received line. */
static uint8_t pending[HIL_MAX_WIRE + 1u];
static size_t pending_len;
static int pending_long;

/* A restart, as after RESET or a power cycle: the store (and its commit) survives, the core starts over. */
static void restart(void)
{
    pending_len = 0;
    pending_long = 0;
    g_fake.reset_requested = 0;
    g_fake.loaded = 0;
    hil_core_init(&g_core, &g_port);
    if (g_core.model_state == HIL_MODEL_LOADED && !g_fake.loaded) {
        fail("core reports a loaded model the platform never loaded");
    }
}

/* ---- oracles on the replies to one candidate ---- */

static int is_final_for(uint8_t request, uint8_t reply)
{
    if (reply == HIL_T_ERROR) {
        return request != HIL_T_HELLO && request != HIL_T_RESET;
    }
    switch (request) {
    case HIL_T_HELLO:
        return reply == HIL_T_HELLO_ACK;
    case HIL_T_MODEL_BEGIN:
        return reply == HIL_T_MODEL_BEGIN_ACK;
    case HIL_T_MODEL_CHUNK:
        return reply == HIL_T_CHUNK_ACK;
    case HIL_T_MODEL_END:
        return reply == HIL_T_MODEL_INFO;
    case HIL_T_INFER:
        return reply == HIL_T_RESULT;
    case HIL_T_DUMP:
        return reply == HIL_T_DUMP_END;
    case HIL_T_RESET:
        return reply == HIL_T_RESET_ACK;
    default:
        return 0;
    }
}

static void check_replies(const uint8_t *run, size_t len, uint32_t first)
{
    const fake_t *f = &g_fake;
    uint32_t n = f->n_replies - first;
    uint8_t type = 0;
    uint16_t seq = 0;
    uint32_t payload_len = 0;
    uint8_t reason = ref_judge(run, len, &type, &seq, &payload_len);
    const reply_t *last;
    uint32_t i;

    if (f->lost_replies > 0u) {
        return; /* more replies than we keep; the frames themselves were still checked */
    }
    if (reason != 0u) {
        if (n != 1u || f->replies[first].type != HIL_T_NAK || f->replies[first].seq != 0xFFFFu) {
            fprintf(stderr, "candidate of %zu bytes, reference NAK reason %u; %u replies, first type 0x%02x\n",
                    len, reason, n, n > 0u ? f->replies[first].type : 0u);
            fail("a candidate that is not a frame was not answered with exactly one NAK");
        }
        if (f->replies[first].len != 1u || f->replies[first].head[0] != reason) {
            fprintf(stderr, "candidate of %zu bytes: reference NAK reason %u, the core's %u\n", len, reason,
                    f->replies[first].head[0]);
            fail("NAK reason differs from the reference decoder's");
        }
        return;
    }
    if (n == 0u) {
        fail("a valid request got no reply (silent)");
    }
    for (i = first; i < f->n_replies; i++) {
        if (f->replies[i].seq != seq) {
            fail("a reply carries another seq than its request");
        }
    }
    for (i = first; i + 1u < f->n_replies; i++) {
        if (type != HIL_T_DUMP || f->replies[i].type != HIL_T_DUMP_TENSOR) {
            fail("a request got more than one reply (only DUMP sends DUMP_TENSOR frames before its end)");
        }
    }
    last = &f->replies[f->n_replies - 1u];
    if (!is_final_for(type, last->type)) {
        fail("a request's last reply is not of a type it allows");
    }
    if (last->type == HIL_T_ERROR) {
        if (last->len < 3u || last->len > 3u + HIL_MSG_MAX || last->head[2] != type) {
            fail("ERROR payload malformed (length, or request_type not the request's)");
        }
        if (last->head[0] == 0u && last->head[1] == 0u) {
            fail("ERROR with code 0");
        }
        if ((type == HIL_T_MODEL_END && rd16(last->head) == HIL_E_LOAD_FAILED) ||
            (type == HIL_T_MODEL_END && rd16(last->head) == HIL_E_ARENA_TOO_SMALL)) {
            if (g_core.model_state != HIL_MODEL_LOAD_FAILED) {
                fail("MODEL_END answered a load failure but HELLO would not report state 2");
            }
        }
    }
    if (last->type == HIL_T_RESULT && last->len != 20u + g_core.model.output_bytes) {
        fail("RESULT length is not header + the model's output size");
    }
    if (last->type == HIL_T_MODEL_INFO && (last->len != 48u || g_core.model_state != HIL_MODEL_LOADED)) {
        fail("MODEL_INFO without a loaded model");
    }
    (void)payload_len;
}

/* Feeds bytes, one candidate at a time, checking the answer to each one that ends with a zero. */
static void feed_checked(const uint8_t *data, size_t len)
{
    size_t start = 0;
    size_t i;
    for (i = 0; i < len; i++) {
        uint32_t before;
        if (data[i] != 0u) {
            if (pending_len < sizeof pending) {
                pending[pending_len++] = data[i];
            } else {
                pending_long = 1;
            }
            continue;
        }
        before = g_fake.n_replies;
        hil_core_feed(&g_core, data + start, (uint32_t)(i + 1u - start));
        start = i + 1u;
        if (pending_len > 0u || pending_long) {
            /* An over-long run is judged by its length alone; HIL_MAX_WIRE + 1 bytes stand for it. */
            check_replies(pending, pending_long ? sizeof pending : pending_len, before);
        } else if (g_fake.n_replies != before) {
            fail("an empty run (two zeros) was answered");
        }
        pending_len = 0;
        pending_long = 0;
        if (g_fake.reset_requested) {
            restart();
        }
    }
    if (start < len) {
        uint32_t before = g_fake.n_replies;
        hil_core_feed(&g_core, data + start, (uint32_t)(len - start));
        if (g_fake.n_replies != before) {
            fail("the core answered a run before its terminating zero");
        }
    }
}

static void send_frame_checked(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len)
{
    static uint8_t wire[HIL_MAX_WIRE];
    size_t n = hil_frame_encode(type, seq, payload, len > HIL_MAX_PAYLOAD ? HIL_MAX_PAYLOAD : len, wire,
                                sizeof wire);
    if (n == 0u) {
        fail("hil_frame_encode refused a payload within HIL_MAX_PAYLOAD");
    }
    feed_checked(wire, n);
}

/* ---- record mode: valid frames, whole uploads, garbage ---- */

enum { R_UPLOAD = 0xF0, R_GARBAGE = 0xF1, R_CORRUPT = 0xF2, R_KNOBS = 0xF3, R_POWER_CYCLE = 0xF4 };

static void upload(const uint8_t *model, uint32_t size, uint16_t seq, uint16_t chunk_arg)
{
    static uint8_t payload[HIL_MAX_PAYLOAD];
    uint32_t chunk = 1u + (uint32_t)chunk_arg % 1500u;
    uint32_t offset = 0;
    wr32(payload, size);
    hil_sha256(model, size, payload + 4);
    send_frame_checked(HIL_T_MODEL_BEGIN, seq++, payload, 36);
    while (offset < size) {
        uint32_t n = size - offset < chunk ? size - offset : chunk;
        wr32(payload, offset);
        memcpy(payload + 4, model + offset, n);
        send_frame_checked(HIL_T_MODEL_CHUNK, seq++, payload, 4u + n);
        offset += n;
    }
    send_frame_checked(HIL_T_MODEL_END, seq, NULL, 0);
}

static void run_records(const uint8_t *data, size_t size)
{
    static uint8_t wire[HIL_MAX_WIRE];
    size_t pos = 0;
    while (pos + 5u <= size) {
        uint8_t op = data[pos];
        uint16_t seq = (uint16_t)(data[pos + 1] | (data[pos + 2] << 8));
        size_t len = (size_t)(data[pos + 3] | (data[pos + 4] << 8));
        const uint8_t *payload = data + pos + 5u;
        pos += 5u;
        if (len > size - pos) {
            len = size - pos;
        }
        pos += len;
        switch (op) {
        case R_UPLOAD:
            upload(payload, (uint32_t)len, seq, (uint16_t)(len > 0u ? payload[0] * 7u : 1u));
            break;
        case R_GARBAGE:
            feed_checked(payload, len);
            break;
        case R_CORRUPT: {
            size_t n = hil_frame_encode(len > 0u ? payload[0] : 0x01u, seq, payload, len > HIL_MAX_PAYLOAD ?
                                        HIL_MAX_PAYLOAD : len, wire, sizeof wire);
            if (n > 2u) {
                wire[1u + seq % (n - 2u)] ^= (uint8_t)(1u + (seq >> 8) % 255u);
                feed_checked(wire, n);
            }
            break;
        }
        case R_KNOBS:
            g_fake.knobs = (uint8_t)seq;
            break;
        case R_POWER_CYCLE:
            restart();
            break;
        default:
            send_frame_checked(op, seq, payload, len);
            break;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1u) {
        return 0;
    }
    setup(data[0]);
    pending_len = 0;
    pending_long = 0;
    if (HIL_FUZZ_FRAMES) {
        run_records(data + 1, size - 1u);
    } else {
        feed_checked(data + 1, size - 1u);
    }
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    size_t i;
    (void)argc;
    (void)argv;
    ref_crc32_init();
    for (i = 0; i < sizeof g_pattern; i++) {
        g_pattern[i] = (uint8_t)(i * 7u + 3u);
    }
    return 0;
}

#ifdef HIL_FUZZ_STANDALONE
/* Replays input files (the kept regressions) without libFuzzer. */
int main(int argc, char **argv)
{
    static uint8_t buf[1u << 20];
    int i;
    LLVMFuzzerInitialize(&argc, &argv);
    for (i = 1; i < argc; i++) {
        FILE *fp = fopen(argv[i], "rb");
        size_t n;
        if (fp == NULL) {
            fprintf(stderr, "cannot open %s\n", argv[i]);
            return 2;
        }
        n = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        LLVMFuzzerTestOneInput(buf, n);
        printf("ok %s\n", argv[i]);
    }
    return 0;
}
#endif
