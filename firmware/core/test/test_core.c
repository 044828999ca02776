/*
 * Host unit tests of the portable device core: codec against the golden wire vectors and known answers,
 * and the request handling against a fake platform (in-memory store, deterministic fake interpreter).
 * Usage: test_core <path to tests/golden/frames.txt>. Exits 0 when every check passed.
 *
 * Replies are parsed with a COBS decoder and CRC of this file, not the core's, so a bug shared by encoder
 * and decoder in the core cannot hide itself.
 */
#include "../hil_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks;
static int g_failures;

#define CHECK(cond)                                                                                           \
    do {                                                                                                      \
        g_checks++;                                                                                           \
        if (!(cond)) {                                                                                        \
            g_failures++;                                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                          \
        }                                                                                                     \
    } while (0)

#define CHECK_EQ_U(a, b)                                                                                      \
    do {                                                                                                      \
        unsigned long long va_ = (unsigned long long)(a);                                                     \
        unsigned long long vb_ = (unsigned long long)(b);                                                     \
        g_checks++;                                                                                           \
        if (va_ != vb_) {                                                                                     \
            g_failures++;                                                                                     \
            fprintf(stderr, "%s:%d: %s == %s failed: %llu != %llu\n", __FILE__, __LINE__, #a, #b, va_, vb_);  \
        }                                                                                                     \
    } while (0)

/* ------------------------------------------------------------------------------------------------ */
/* Test-side codec, independent of the core's.                                                      */

static uint32_t ref_crc32(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        for (k = 0; k < 8; k++) {
            crc = (crc & 1u) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
        }
    }
    return ~crc;
}

/* Returns the decoded length or -1. */
static long ref_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
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
            if (in[i] == 0 || n >= cap) {
                return -1;
            }
            out[n++] = in[i];
        }
        if (code < 0xFF && i < len) {
            if (n >= cap) {
                return -1;
            }
            out[n++] = 0;
        }
    }
    return (long)n;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

typedef struct {
    uint8_t type;
    uint16_t seq;
    uint32_t len;
    uint8_t payload[HIL_MAX_PAYLOAD + 64];
} reply_t;

#define MAX_REPLIES 16
static reply_t g_replies[MAX_REPLIES];

/* Splits a device→host byte stream into frames; every frame must be valid. Returns the frame count. */
static uint32_t parse_stream(const uint8_t *s, uint32_t len)
{
    static uint8_t body[HIL_MAX_BODY + 64];
    uint32_t count = 0;
    uint32_t i = 0;
    while (i < len) {
        uint32_t start;
        long n;
        if (s[i] == 0) {
            i++;
            continue;
        }
        start = i;
        while (i < len && s[i] != 0) {
            i++;
        }
        CHECK(i < len); /* every frame ends with a zero */
        n = ref_cobs_decode(s + start, i - start, body, sizeof body);
        CHECK(n >= 8);
        if (n < 8 || count >= MAX_REPLIES) {
            continue;
        }
        CHECK_EQ_U(body[0], 1);
        CHECK_EQ_U(ref_crc32(body, (size_t)n - 4u), rd32(body + n - 4));
        g_replies[count].type = body[1];
        g_replies[count].seq = (uint16_t)(body[2] | (body[3] << 8));
        g_replies[count].len = (uint32_t)n - 8u;
        memcpy(g_replies[count].payload, body + 4, (size_t)n - 8u);
        count++;
    }
    return count;
}

/* ------------------------------------------------------------------------------------------------ */
/* Fake platform.                                                                                    */

#define STORE_CAP 65536u
#define OUT_CAP 65536u

typedef struct {
    uint8_t store[STORE_CAP];
    uint32_t store_writes;
    int store_begin_rc;
    int committed;
    uint32_t committed_size;
    uint8_t committed_sha[32];
    hil_model_info_t load_info;
    int load_rc;
    const char *load_msg;
    uint32_t loads;
    int invoke_rc;
    const char *invoke_msg;
    uint64_t cycles;
    uint64_t clock;
    uint64_t clock_step;
    uint32_t resets;
    uint32_t dump_big;  /* 0: op 0's output is 6 fixed bytes; else that many pattern bytes */
    int dump_misorder;  /* 1: skip index 1; 2: report count 2 but return after the first tensor */
    uint8_t out[OUT_CAP];
    uint32_t out_len;
} fake_t;

static int fake_write(void *ctx, const uint8_t *data, uint32_t len)
{
    fake_t *f = (fake_t *)ctx;
    CHECK(f->out_len + len <= OUT_CAP);
    if (f->out_len + len > OUT_CAP) {
        return -1;
    }
    memcpy(f->out + f->out_len, data, len);
    f->out_len += len;
    return 0;
}

static int fake_store_begin(void *ctx, uint32_t size)
{
    fake_t *f = (fake_t *)ctx;
    if (f->store_begin_rc != 0 || size > STORE_CAP) {
        return -1;
    }
    memset(f->store, 0xFF, sizeof f->store); /* erased flash reads as 0xFF */
    f->committed = 0;
    return 0;
}

static int fake_store_write(void *ctx, uint32_t offset, const uint8_t *data, uint32_t len)
{
    fake_t *f = (fake_t *)ctx;
    if (offset > STORE_CAP || len > STORE_CAP - offset) {
        return -1;
    }
    memcpy(f->store + offset, data, len);
    f->store_writes++;
    return 0;
}

static const uint8_t *fake_store_data(void *ctx)
{
    return ((fake_t *)ctx)->store;
}

static int fake_store_commit(void *ctx, uint32_t size, const uint8_t sha256[32])
{
    fake_t *f = (fake_t *)ctx;
    f->committed = 1;
    f->committed_size = size;
    memcpy(f->committed_sha, sha256, 32);
    return 0;
}

static int fake_store_committed(void *ctx, uint32_t *size, uint8_t sha256[32])
{
    fake_t *f = (fake_t *)ctx;
    if (!f->committed) {
        return -1;
    }
    *size = f->committed_size;
    memcpy(sha256, f->committed_sha, 32);
    return 0;
}

static void copy_msg(char *msg, uint32_t cap, const char *text)
{
    size_t n = strlen(text);
    if (n >= cap) {
        n = cap - 1u;
    }
    memcpy(msg, text, n);
    msg[n] = '\0';
}

static int fake_model_load(void *ctx, const uint8_t *model, uint32_t size, hil_model_info_t *info, char *msg,
                           uint32_t msg_cap)
{
    fake_t *f = (fake_t *)ctx;
    (void)model;
    (void)size;
    f->loads++;
    if (f->load_rc != 0) {
        if (f->load_msg != NULL) {
            copy_msg(msg, msg_cap, f->load_msg);
        }
        return f->load_rc;
    }
    *info = f->load_info;
    return 0;
}

/* The fake interpreter's output: a deterministic mix of all input bytes, different for each output byte. */
static uint8_t fake_output_byte(const uint8_t *input, uint32_t input_len, uint32_t j)
{
    uint32_t h = 2166136261u;
    uint32_t i;
    for (i = 0; i < input_len; i++) {
        h = (h ^ input[i]) * 16777619u;
    }
    return (uint8_t)((h >> (8u * (j % 4u))) + j);
}

static int fake_invoke(void *ctx, const uint8_t *input, uint32_t input_len, uint8_t *output, uint32_t output_len,
                       uint64_t *cycles, char *msg, uint32_t msg_cap)
{
    fake_t *f = (fake_t *)ctx;
    uint32_t j;
    if (f->invoke_rc != 0) {
        if (f->invoke_msg != NULL) {
            copy_msg(msg, msg_cap, f->invoke_msg);
        }
        return f->invoke_rc;
    }
    for (j = 0; j < output_len; j++) {
        output[j] = fake_output_byte(input, input_len, j);
    }
    *cycles = f->cycles;
    f->clock += f->clock_step; /* the invoke "takes" clock_step ns */
    return 0;
}

static uint64_t fake_clock_ns(void *ctx)
{
    fake_t *f = (fake_t *)ctx;
    f->clock += 7; /* reading the clock itself costs a little, like a real one */
    return f->clock;
}

static const uint8_t g_dump_small[6] = {0x01, 0x00, 0x80, 0x7F, 0xFF, 0x00};
static uint8_t g_dump_pattern[10000];

/* The fake dump: the input as tensor 0 (no producing op), then op 0's output as tensor 15 — the golden
 * dump_tensor_input and dump_tensor vectors. */
static int fake_dump(void *ctx, const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx,
                     char *msg, uint32_t msg_cap)
{
    fake_t *f = (fake_t *)ctx;
    hil_dump_tensor_t t;
    uint32_t i;
    t.index = 0;
    t.count = 2;
    t.tensor_index = 0;
    t.op_index = HIL_DUMP_INPUT_OP;
    t.type = 9;
    t.data = input;
    t.bytes = input_len;
    if (sink(sink_ctx, &t) != 0) {
        copy_msg(msg, msg_cap, "sink refused the input tensor");
        return HIL_E_INVOKE_FAILED;
    }
    if (f->dump_misorder == 2) {
        return 0;
    }
    t.index = f->dump_misorder == 1 ? 2 : 1;
    t.tensor_index = 15;
    t.op_index = 0;
    if (f->dump_big > 0u) {
        for (i = 0; i < f->dump_big && i < sizeof g_dump_pattern; i++) {
            g_dump_pattern[i] = (uint8_t)(i * 7u + (i >> 8));
        }
        t.data = g_dump_pattern;
        t.bytes = f->dump_big;
    } else {
        t.data = g_dump_small;
        t.bytes = sizeof g_dump_small;
    }
    if (sink(sink_ctx, &t) != 0) {
        copy_msg(msg, msg_cap, "sink refused tensor 15");
        return HIL_E_INVOKE_FAILED;
    }
    return 0;
}

static void fake_reset(void *ctx)
{
    ((fake_t *)ctx)->resets++;
}

static fake_t g_fake;
static hil_port_t g_port;
static hil_core_t g_core;

/* Fresh fake platform with the device facts of the golden hello_ack vector. */
static void fake_setup(void)
{
    memset(&g_fake, 0, sizeof g_fake);
    g_fake.load_info.arena_used = 5120;
    g_fake.load_info.input_bytes = 187;
    g_fake.load_info.output_bytes = 5;
    g_fake.cycles = 1234567;
    g_fake.clock_step = 89000;

    memset(&g_port, 0, sizeof g_port);
    g_port.ctx = &g_fake;
    g_port.info.fw_version = "0.1.0";
    g_port.info.chip = "esp32s3";
    g_port.info.build_hash = "deadbeef";
    g_port.info.cpu_mhz = 240;
    g_port.info.kernel_mode = HIL_KERNELS_ESP_NN;
    g_port.info.timing_source = HIL_TIMING_DEVICE_CYCLES;
    g_port.info.arena_size = 131072;
    g_port.info.store_capacity = 2097152;
    g_port.info.rx_buffer = 16384;
    g_port.info.reset_ms = 3000;
    g_port.write = fake_write;
    g_port.store_begin = fake_store_begin;
    g_port.store_write = fake_store_write;
    g_port.store_data = fake_store_data;
    g_port.store_commit = fake_store_commit;
    g_port.store_committed = fake_store_committed;
    g_port.model_load = fake_model_load;
    g_port.invoke = fake_invoke;
    g_port.clock_ns = fake_clock_ns;
    g_port.reset = fake_reset;
}

/* Feeds raw bytes, parses everything the device wrote, returns the reply count. */
static uint32_t feed_raw(const uint8_t *data, uint32_t len)
{
    uint32_t n;
    g_fake.out_len = 0;
    hil_core_feed(&g_core, data, len);
    n = parse_stream(g_fake.out, g_fake.out_len);
    g_fake.out_len = 0;
    return n;
}

static uint32_t request(uint8_t type, uint16_t seq, const uint8_t *payload, uint32_t len)
{
    static uint8_t wire[HIL_MAX_WIRE];
    size_t n = hil_frame_encode(type, seq, payload, len, wire, sizeof wire);
    CHECK(n > 0u);
    return feed_raw(wire, (uint32_t)n);
}

/* One request that must get exactly one reply of `type` with the request's seq. */
static const reply_t *expect_reply(uint8_t req_type, uint16_t seq, const uint8_t *payload, uint32_t len,
                                   uint8_t reply_type)
{
    uint32_t n = request(req_type, seq, payload, len);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, reply_type);
    CHECK_EQ_U(g_replies[0].seq, seq);
    return &g_replies[0];
}

static void expect_error(uint8_t req_type, uint16_t seq, const uint8_t *payload, uint32_t len, uint16_t code)
{
    const reply_t *r = expect_reply(req_type, seq, payload, len, HIL_T_ERROR);
    CHECK(r->len >= 3u);
    CHECK_EQ_U(r->payload[0] | (r->payload[1] << 8), code);
    CHECK_EQ_U(r->payload[2], req_type);
    CHECK(r->len <= 3u + HIL_MSG_MAX);
    CHECK(r->len > 3u); /* every error says why */
}

/* An ERROR reply's message as a C string. */
static const char *reply_text(const reply_t *r)
{
    static char text[HIL_MSG_MAX + 1u];
    size_t n = r->len > 3u ? r->len - 3u : 0u;
    if (n > HIL_MSG_MAX) {
        n = HIL_MSG_MAX;
    }
    memcpy(text, r->payload + 3, n);
    text[n] = '\0';
    return text;
}

static void begin_payload(uint8_t out[36], uint32_t size, const uint8_t *model)
{
    wr32(out, size);
    hil_sha256(model, size, out + 4);
}

/* Uploads a model in chunks of `chunk` bytes and returns the final reply (MODEL_INFO or ERROR). */
static const reply_t *upload(const uint8_t *model, uint32_t size, uint32_t chunk)
{
    static uint8_t buf[HIL_MAX_PAYLOAD];
    uint8_t begin[36];
    uint32_t off;
    const reply_t *r;
    begin_payload(begin, size, model);
    expect_reply(HIL_T_MODEL_BEGIN, 100, begin, 36, HIL_T_MODEL_BEGIN_ACK);
    for (off = 0; off < size; off += chunk) {
        uint32_t n = size - off < chunk ? size - off : chunk;
        wr32(buf, off);
        memcpy(buf + 4, model + off, n);
        r = expect_reply(HIL_T_MODEL_CHUNK, (uint16_t)(101u + off / chunk), buf, 4u + n, HIL_T_CHUNK_ACK);
        CHECK_EQ_U(rd32(r->payload), off + n);
    }
    CHECK_EQ_U(request(HIL_T_MODEL_END, 99, NULL, 0), 1);
    return &g_replies[0];
}

static uint8_t g_model[3000];

static void make_model(void)
{
    uint32_t i;
    for (i = 0; i < sizeof g_model; i++) {
        /* Zero-heavy like a real flatbuffer, so COBS sees plenty of zeros in chunks. */
        g_model[i] = (uint8_t)((i % 5u == 0u) ? 0u : (i * 37u) & 0xFFu);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Golden vectors.                                                                                   */

typedef struct {
    char name[32];
    uint8_t type;
    uint16_t seq;
    uint8_t *payload;
    uint32_t payload_len;
    uint8_t *wire;
    uint32_t wire_len;
} vector_t;

#define MAX_VECTORS 64
static vector_t g_vectors[MAX_VECTORS];
static uint32_t g_nvectors;
static char g_file[1u << 20];
static uint8_t g_hexbytes[1u << 19];
static size_t g_hexused;

/* rejects.txt: candidates a receiver must drop, with the NAK reason the device answers. */
typedef struct {
    char name[32];
    uint8_t reason;
    uint8_t *wire;
    uint32_t wire_len;
} reject_t;

#define MAX_REJECTS 16
static reject_t g_rejects[MAX_REJECTS];
static uint32_t g_nrejects;

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static uint8_t *parse_hex(const char *tok, uint32_t *len, size_t *used)
{
    uint8_t *start = g_hexbytes + *used;
    size_t n = strlen(tok);
    size_t i;
    *len = 0;
    if (strcmp(tok, "-") == 0) {
        return start;
    }
    if (n % 2u != 0u || *used + n / 2u > sizeof g_hexbytes) {
        return NULL;
    }
    for (i = 0; i < n; i += 2u) {
        int hi = hexval(tok[i]);
        int lo = hexval(tok[i + 1u]);
        if (hi < 0 || lo < 0) {
            return NULL;
        }
        start[i / 2u] = (uint8_t)(hi * 16 + lo);
    }
    *len = (uint32_t)(n / 2u);
    *used += n / 2u;
    return start;
}

/* Reads a golden file whose lines have `ntok` space-separated fields; calls `take` with each line's fields. */
static int load_lines(const char *path, int ntok, int (*take)(char **tok))
{
    FILE *fp = fopen(path, "rb");
    size_t n;
    char *line;
    char *next;
    if (fp == NULL) {
        fprintf(stderr, "cannot open golden file %s\n", path);
        return -1;
    }
    n = fread(g_file, 1, sizeof g_file - 1u, fp);
    fclose(fp);
    g_file[n] = '\0';
    for (line = g_file; line != NULL && *line != '\0'; line = next) {
        char *tok[5];
        int k = 0;
        char *p = line;
        next = strchr(line, '\n');
        if (next != NULL) {
            *next++ = '\0';
        }
        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }
        while (k < ntok && *p != '\0') {
            while (*p == ' ') {
                *p++ = '\0';
            }
            tok[k++] = p;
            while (*p != ' ' && *p != '\0' && *p != '\r') {
                p++;
            }
            if (*p == '\r') {
                *p = '\0';
            }
        }
        if (k != ntok || take(tok) != 0) {
            fprintf(stderr, "bad golden line: %s\n", line);
            return -1;
        }
    }
    return 0;
}

static int take_vector(char **tok)
{
    vector_t *v;
    if (g_nvectors >= MAX_VECTORS || strlen(tok[0]) >= sizeof v->name) {
        return -1;
    }
    v = &g_vectors[g_nvectors++];
    strncpy(v->name, tok[0], sizeof v->name - 1u);
    v->type = (uint8_t)strtoul(tok[1], NULL, 16);
    v->seq = (uint16_t)strtoul(tok[2], NULL, 10);
    v->payload = parse_hex(tok[3], &v->payload_len, &g_hexused);
    v->wire = parse_hex(tok[4], &v->wire_len, &g_hexused);
    return v->payload == NULL || v->wire == NULL ? -1 : 0;
}

static int take_reject(char **tok)
{
    reject_t *r;
    if (g_nrejects >= MAX_REJECTS || strlen(tok[0]) >= sizeof r->name) {
        return -1;
    }
    r = &g_rejects[g_nrejects++];
    strncpy(r->name, tok[0], sizeof r->name - 1u);
    r->reason = (uint8_t)strtoul(tok[1], NULL, 10);
    r->wire = parse_hex(tok[2], &r->wire_len, &g_hexused);
    return r->wire == NULL ? -1 : 0;
}

/* frames.txt, then rejects.txt from the same directory. */
static int load_golden(const char *path)
{
    static char rejects[4096];
    const char *slash = strrchr(path, '/');
    size_t dir = slash != NULL ? (size_t)(slash - path) + 1u : 0u;
    if (load_lines(path, 5, take_vector) != 0) {
        return -1;
    }
    if (dir + sizeof "rejects.txt" > sizeof rejects) {
        return -1;
    }
    memcpy(rejects, path, dir);
    memcpy(rejects + dir, "rejects.txt", sizeof "rejects.txt");
    return load_lines(rejects, 3, take_reject);
}

static const vector_t *vec(const char *name)
{
    uint32_t i;
    for (i = 0; i < g_nvectors; i++) {
        if (strcmp(g_vectors[i].name, name) == 0) {
            return &g_vectors[i];
        }
    }
    fprintf(stderr, "golden vector %s missing\n", name);
    g_failures++;
    exit(1);
}

static void test_golden_encode(void)
{
    static uint8_t wire[HIL_MAX_WIRE];
    static uint8_t body[HIL_MAX_BODY];
    uint32_t i;
    CHECK(g_nvectors >= 18u);
    for (i = 0; i < g_nvectors; i++) {
        const vector_t *v = &g_vectors[i];
        size_t n = hil_frame_encode(v->type, v->seq, v->payload, v->payload_len, wire, sizeof wire);
        long b;
        int decode_only = strncmp(v->name, "accept_", 7) == 0; /* a form receivers accept, never produced */
        if (!decode_only) {
            CHECK_EQ_U(n, v->wire_len);
        }
        if (!decode_only && (n != v->wire_len || memcmp(wire, v->wire, n) != 0)) {
            fprintf(stderr, "  golden vector %s encodes differently\n", v->name);
            g_failures++;
        }
        /* The core's decoder must give back the body the vector was made from. */
        b = hil_cobs_decode(v->wire + 1, v->wire_len - 2u, body, sizeof body);
        CHECK_EQ_U(b, v->payload_len + 8u);
        if (b == (long)(v->payload_len + 8u)) {
            CHECK_EQ_U(body[1], v->type);
            CHECK_EQ_U(body[2] | (body[3] << 8), v->seq);
            CHECK(memcmp(body + 4, v->payload, v->payload_len) == 0);
        }
        /* And the test's own parser agrees with the vector too (it checks every reply below). */
        CHECK_EQ_U(parse_stream(v->wire, v->wire_len), 1);
        CHECK_EQ_U(g_replies[0].type, v->type);
        CHECK_EQ_U(g_replies[0].len, v->payload_len);
    }
}

static void check_wire_equals(const char *name)
{
    const vector_t *v = vec(name);
    if (g_fake.out_len != v->wire_len || memcmp(g_fake.out, v->wire, v->wire_len) != 0) {
        fprintf(stderr, "%s:%d: device reply differs from golden %s\n", __FILE__, __LINE__, name);
        g_failures++;
    }
    g_checks++;
}

/* Feeds every device-bound golden frame into a core, in the order of the story the vectors tell, and
 * checks the answers, byte-exact where the golden file has the answer. */
static void test_golden_dispatch(void)
{
    static const uint8_t model[5] = {'m', 'o', 'd', 'e', 'l'};
    uint8_t sha[32];
    const vector_t *v;
    uint32_t n;
    uint32_t i;
    uint32_t device_bound = 0;
    static uint8_t chunk0[4 + 4092];

    fake_setup();
    /* The golden hello_ack says a 5-byte model "model" is stored and loaded with arena_used 12345. */
    memcpy(g_fake.store, model, 5);
    hil_sha256(model, 5, sha);
    g_fake.committed = 1;
    g_fake.committed_size = 5;
    memcpy(g_fake.committed_sha, sha, 32);
    g_fake.load_info.arena_used = 12345;
    hil_core_init(&g_core, &g_port);

    for (i = 0; i < g_nvectors; i++) {
        if (g_vectors[i].type < 0x80u) {
            device_bound++;
        }
    }
    CHECK_EQ_U(device_bound, 17); /* 15 of 1.1, plus op_profile and stats (§12-13) */

    v = vec("hello");
    hil_core_feed(&g_core, v->wire, v->wire_len);
    check_wire_equals("hello_ack");
    CHECK_EQ_U(parse_stream(g_fake.out, g_fake.out_len), 1);
    g_fake.out_len = 0;

    /* v1.1: a host that says it speaks minor 1 gets the HELLO_ACK extension; a v1 HELLO (above) does not. */
    v = vec("hello_v11");
    hil_core_feed(&g_core, v->wire, v->wire_len);
    check_wire_equals("hello_ack_v11");
    g_fake.out_len = 0;
    CHECK_EQ_U(g_core.session_minor, 1);

    v = vec("hello_seq_max");
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_HELLO_ACK);
    CHECK_EQ_U(g_replies[0].seq, 0xFFFF);

    v = vec("model_begin");
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_MODEL_BEGIN_ACK);
    CHECK_EQ_U(g_replies[0].seq, 1);

    v = vec("model_chunk");
    hil_core_feed(&g_core, v->wire, v->wire_len);
    check_wire_equals("chunk_ack");
    g_fake.out_len = 0;

    g_fake.load_info.arena_used = 5120;
    v = vec("model_end");
    hil_core_feed(&g_core, v->wire, v->wire_len);
    check_wire_equals("model_info");
    g_fake.out_len = 0;

    v = vec("infer_zeros");
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_RESULT);
    CHECK_EQ_U(g_replies[0].seq, 4);
    CHECK_EQ_U(g_replies[0].len, 25);
    CHECK_EQ_U(g_replies[0].payload[0], 0);
    CHECK_EQ_U(rd64(g_replies[0].payload + 4), 1234567);
    CHECK_EQ_U(rd64(g_replies[0].payload + 12), 89000 + 7);
    for (i = 0; i < 5u; i++) {
        CHECK_EQ_U(g_replies[0].payload[20 + i], fake_output_byte(v->payload, 187, i));
    }

    v = vec("infer_ramp");
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_RESULT);
    CHECK_EQ_U(g_replies[0].seq, 5);
    for (i = 0; i < 5u; i++) {
        CHECK_EQ_U(g_replies[0].payload[20 + i], fake_output_byte(v->payload, 187, i));
    }

    v = vec("infer_long_run"); /* 600 bytes for a 187-byte input */
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_ERROR);
    CHECK_EQ_U(g_replies[0].seq, 6);
    CHECK_EQ_U(g_replies[0].payload[0], HIL_E_BAD_INPUT_SIZE);

    /* COBS bodies ending exactly on a 254-byte block (canonical, and with the extra code byte some encoders
     * add): decoded as frames (an input of the wrong size), never NAKed. */
    {
        static const char *const blocks[3] = {"cobs_block_254", "cobs_block_508", "accept_cobs_254_extra_code"};
        for (i = 0; i < 3u; i++) {
            v = vec(blocks[i]);
            n = feed_raw(v->wire, v->wire_len);
            CHECK_EQ_U(n, 1);
            CHECK_EQ_U(g_replies[0].type, HIL_T_ERROR);
            CHECK_EQ_U(g_replies[0].seq, 0x0101);
            CHECK_EQ_U(g_replies[0].payload[0], HIL_E_BAD_INPUT_SIZE);
        }
    }

    v = vec("reset");
    hil_core_feed(&g_core, v->wire, v->wire_len);
    check_wire_equals("reset_ack");
    g_fake.out_len = 0;
    CHECK_EQ_U(g_fake.resets, 1);

    /* After the platform restarted: the model is still there, and a maximum-size frame gets through. */
    hil_core_init(&g_core, &g_port);
    {
        uint8_t begin[36];
        static uint8_t big[8188];
        const reply_t *r;
        for (i = 0; i < sizeof big; i++) {
            big[i] = (uint8_t)((i % 255u) + 1u);
        }
        /* The golden max_payload chunk holds bytes 1..255 repeating, starting at offset 4096. */
        for (i = 0; i < 4092u; i++) {
            big[4096u + i] = (uint8_t)((i % 255u) + 1u);
        }
        begin_payload(begin, sizeof big, big);
        expect_reply(HIL_T_MODEL_BEGIN, 20, begin, 36, HIL_T_MODEL_BEGIN_ACK);
        wr32(chunk0, 0);
        memcpy(chunk0 + 4, big, 4092);
        r = expect_reply(HIL_T_MODEL_CHUNK, 21, chunk0, sizeof chunk0, HIL_T_CHUNK_ACK);
        CHECK_EQ_U(rd32(r->payload), 4092);
        /* The host's chunk at 4096 arrives before the one at 4092: not stored, host told to resume at 4092. */
        v = vec("max_payload");
        n = feed_raw(v->wire, v->wire_len);
        CHECK_EQ_U(n, 1);
        CHECK_EQ_U(g_replies[0].type, HIL_T_CHUNK_ACK);
        CHECK_EQ_U(g_replies[0].seq, 8);
        CHECK_EQ_U(rd32(g_replies[0].payload), 4092);
        wr32(chunk0, 4092);
        memcpy(chunk0 + 4, big + 4092, 4);
        r = expect_reply(HIL_T_MODEL_CHUNK, 22, chunk0, 8, HIL_T_CHUNK_ACK);
        CHECK_EQ_U(rd32(r->payload), 4096);
        n = feed_raw(v->wire, v->wire_len);
        CHECK_EQ_U(n, 1);
        CHECK_EQ_U(g_replies[0].type, HIL_T_CHUNK_ACK);
        CHECK_EQ_U(rd32(g_replies[0].payload), 8188);
        r = expect_reply(HIL_T_MODEL_END, 23, NULL, 0, HIL_T_MODEL_INFO);
        CHECK_EQ_U(rd32(r->payload + 12), 8188);
        CHECK(memcmp(g_fake.store, big, sizeof big) == 0);
    }
    CHECK_EQ_U(g_core.stats.frames_bad, 0);
}

static void test_golden_nak_and_load_error(void)
{
    static uint8_t wire[HIL_MAX_WIRE];
    const vector_t *v = vec("hello");
    static const uint8_t model[5] = {'m', 'o', 'd', 'e', 'l'};
    uint8_t begin[36];
    uint8_t chunk[9];

    fake_setup();
    hil_core_init(&g_core, &g_port);
    /* Flip one bit of the CRC: still valid COBS, wrong checksum. */
    memcpy(wire, v->wire, v->wire_len);
    wire[v->wire_len - 3u] ^= 0x01u;
    hil_core_feed(&g_core, wire, v->wire_len);
    check_wire_equals("nak_crc");
    g_fake.out_len = 0;
    CHECK_EQ_U(g_core.stats.frames_bad, 1);
    CHECK_EQ_U(g_core.stats.garbage_bytes, v->wire_len - 2u);
    CHECK_EQ_U(g_core.stats.frames_ok, 0);

    /* The golden error_load: the platform cannot load the model uploaded by seqs 1..3. */
    g_fake.load_rc = HIL_E_LOAD_FAILED;
    g_fake.load_msg = "op CONV_3D is not in the firmware's op resolver";
    begin_payload(begin, 5, model);
    expect_reply(HIL_T_MODEL_BEGIN, 1, begin, 36, HIL_T_MODEL_BEGIN_ACK);
    wr32(chunk, 0);
    memcpy(chunk + 4, model, 5);
    expect_reply(HIL_T_MODEL_CHUNK, 2, chunk, 9, HIL_T_CHUNK_ACK);
    hil_core_feed(&g_core, vec("model_end")->wire, vec("model_end")->wire_len);
    check_wire_equals("error_load");
    g_fake.out_len = 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Codec pieces.                                                                                     */

static void test_crc(void)
{
    CHECK_EQ_U(hil_crc32((const uint8_t *)"123456789", 9), 0xCBF43926u);
    CHECK_EQ_U(hil_crc32((const uint8_t *)"", 0), 0);
    {
        uint8_t buf[1000];
        uint32_t i;
        for (i = 0; i < sizeof buf; i++) {
            buf[i] = (uint8_t)(i * 131u + 7u);
        }
        CHECK_EQ_U(hil_crc32(buf, sizeof buf), ref_crc32(buf, sizeof buf));
    }
}

static void cobs_round_trip(const uint8_t *data, size_t len)
{
    static uint8_t enc[4096];
    static uint8_t dec[4096];
    size_t n = hil_cobs_encode(data, len, enc);
    long d;
    size_t i;
    CHECK(n >= len + 1u);
    CHECK(n <= len + len / 254u + 1u);
    for (i = 0; i < n; i++) {
        if (enc[i] == 0) {
            CHECK(enc[i] != 0);
            break;
        }
    }
    d = hil_cobs_decode(enc, n, dec, sizeof dec);
    CHECK_EQ_U(d, len);
    CHECK(d == (long)len && memcmp(dec, data, len) == 0);
    d = ref_cobs_decode(enc, n, dec, sizeof dec);
    CHECK(d == (long)len && memcmp(dec, data, len) == 0);
    /* One byte short of room must fail, not overflow. */
    if (len > 0u) {
        CHECK(hil_cobs_decode(enc, n, dec, len - 1u) == -1);
    }
}

static void test_cobs(void)
{
    static uint8_t data[3000];
    static const size_t lengths[] = {0, 1, 2, 253, 254, 255, 256, 507, 508, 509, 1000, 3000};
    uint8_t enc[600];
    size_t i;
    size_t k;

    /* Runs of non-zero bytes around the 254-byte block limit. */
    for (i = 0; i < sizeof data; i++) {
        data[i] = (uint8_t)((i % 255u) + 1u);
    }
    for (k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        cobs_round_trip(data, lengths[k]);
    }
    /* Zero-heavy: all zeros, alternating, and zeros exactly at block boundaries. */
    memset(data, 0, sizeof data);
    for (k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        cobs_round_trip(data, lengths[k]);
    }
    for (i = 0; i < sizeof data; i++) {
        data[i] = (uint8_t)(i % 2u);
    }
    cobs_round_trip(data, 1001);
    for (i = 0; i < sizeof data; i++) {
        data[i] = (uint8_t)((i % 255u == 254u) ? 0u : 0x41u);
    }
    cobs_round_trip(data, 255);
    cobs_round_trip(data, 1020);

    /* Exact forms from the `cobs` package. */
    CHECK_EQ_U(hil_cobs_encode(data, 0, enc), 1);
    CHECK_EQ_U(enc[0], 1);
    data[0] = 0;
    CHECK_EQ_U(hil_cobs_encode(data, 1, enc), 2);
    CHECK(enc[0] == 1 && enc[1] == 1);
    memset(data, 'a', 255);
    CHECK_EQ_U(hil_cobs_encode(data, 254, enc), 255); /* no trailing empty block */
    CHECK_EQ_U(enc[0], 0xFF);
    CHECK_EQ_U(hil_cobs_encode(data, 255, enc), 257);
    CHECK(enc[255] == 2 && enc[256] == 'a');
    data[254] = 0;
    CHECK_EQ_U(hil_cobs_encode(data, 255, enc), 257);
    CHECK(enc[255] == 1 && enc[256] == 1);

    /* Invalid encodings. */
    {
        static const uint8_t overrun[] = {5, 'a', 'b'};
        static const uint8_t zero_code[] = {2, 'a', 0, 1};
        static const uint8_t zero_data[] = {3, 'a', 0};
        uint8_t out[16];
        CHECK(hil_cobs_decode(overrun, sizeof overrun, out, sizeof out) == -1);
        CHECK(hil_cobs_decode(zero_code, sizeof zero_code, out, sizeof out) == -1);
        CHECK(hil_cobs_decode(zero_data, sizeof zero_data, out, sizeof out) == -1);
    }

    /* A frame that does not fit the output buffer is refused, not truncated. */
    {
        uint8_t wire[32];
        CHECK_EQ_U(hil_frame_encode(1, 0, data, 30, wire, sizeof wire), 0);
        CHECK_EQ_U(hil_frame_encode(1, 0, NULL, 0, wire, 11), 11);
        CHECK_EQ_U(hil_frame_encode(1, 0, NULL, 0, wire, 10), 0);
    }
}

static void check_sha(const uint8_t *data, size_t len, const char *hex)
{
    uint8_t got[32];
    uint8_t want[32];
    size_t i;
    for (i = 0; i < 32u; i++) {
        want[i] = (uint8_t)(hexval(hex[2u * i]) * 16 + hexval(hex[2u * i + 1u]));
    }
    hil_sha256(data, len, got);
    g_checks++;
    if (memcmp(got, want, 32) != 0) {
        fprintf(stderr, "%s:%d: sha256 of %lu bytes wrong\n", __FILE__, __LINE__, (unsigned long)len);
        g_failures++;
    }
}

static void test_sha256(void)
{
    static uint8_t million[1000000];
    memset(million, 'a', sizeof million);
    check_sha((const uint8_t *)"", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_sha((const uint8_t *)"abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* 56 bytes: the padding needs a second block. */
    check_sha((const uint8_t *)"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    check_sha(million, sizeof million, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* ------------------------------------------------------------------------------------------------ */
/* Requests against the fake platform.                                                               */

static void test_upload_and_infer(void)
{
    const reply_t *r;
    uint8_t input[187];
    uint8_t sha[32];
    uint32_t i;

    fake_setup();
    hil_core_init(&g_core, &g_port);
    CHECK_EQ_U(g_fake.loads, 0);
    r = expect_reply(HIL_T_HELLO, 1, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_NONE);
    CHECK_EQ_U(rd32(r->payload + 16), 0);

    expect_error(HIL_T_INFER, 2, input, sizeof input, HIL_E_BAD_STATE);

    r = upload(g_model, sizeof g_model, 1000);
    CHECK_EQ_U(r->type, HIL_T_MODEL_INFO);
    CHECK_EQ_U(r->len, 48);
    CHECK_EQ_U(rd32(r->payload), 5120);
    CHECK_EQ_U(rd32(r->payload + 4), 187);
    CHECK_EQ_U(rd32(r->payload + 8), 5);
    CHECK_EQ_U(rd32(r->payload + 12), sizeof g_model);
    hil_sha256(g_model, sizeof g_model, sha);
    CHECK(memcmp(r->payload + 16, sha, 32) == 0);
    CHECK(memcmp(g_fake.store, g_model, sizeof g_model) == 0);
    CHECK_EQ_U(g_fake.committed, 1);
    CHECK_EQ_U(g_fake.committed_size, sizeof g_model);
    CHECK_EQ_U(g_fake.loads, 1);

    r = expect_reply(HIL_T_HELLO, 3, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_LOADED);
    CHECK_EQ_U(rd32(r->payload + 16), sizeof g_model);
    CHECK(memcmp(r->payload + 20, sha, 32) == 0);
    CHECK_EQ_U(rd32(r->payload + 52), 5120);

    for (i = 0; i < sizeof input; i++) {
        input[i] = (uint8_t)(i * 3u);
    }
    g_fake.cycles = 777;
    r = expect_reply(HIL_T_INFER, 4, input, sizeof input, HIL_T_RESULT);
    CHECK_EQ_U(r->len, 25);
    CHECK_EQ_U(r->payload[0], 0);
    CHECK(r->payload[1] == 0 && r->payload[2] == 0 && r->payload[3] == 0);
    CHECK_EQ_U(rd64(r->payload + 4), 777);
    CHECK_EQ_U(rd64(r->payload + 12), 89000 + 7);
    for (i = 0; i < 5u; i++) {
        CHECK_EQ_U(r->payload[20 + i], fake_output_byte(input, sizeof input, i));
    }
    CHECK_EQ_U(g_core.stats.infers, 1);

    expect_error(HIL_T_INFER, 5, input, 186, HIL_E_BAD_INPUT_SIZE);
    expect_error(HIL_T_INFER, 6, input, 0, HIL_E_BAD_INPUT_SIZE);

    /* Invoke failure passes the interpreter's message on. */
    g_fake.invoke_rc = 1;
    g_fake.invoke_msg = "node 3 CONV_2D failed";
    expect_error(HIL_T_INFER, 7, input, sizeof input, HIL_E_BAD_STATE);
    g_fake.invoke_rc = -1;
    expect_error(HIL_T_INFER, 7, input, sizeof input, HIL_E_INVOKE_FAILED);
    CHECK(g_replies[0].len == 3u + strlen("node 3 CONV_2D failed") &&
          memcmp(g_replies[0].payload + 3, "node 3 CONV_2D failed", g_replies[0].len - 3u) == 0);
    g_fake.invoke_rc = 0;

    /* Persistence: a re-initialised core (after a reset) finds, verifies and loads the committed model. */
    hil_core_init(&g_core, &g_port);
    CHECK_EQ_U(g_fake.loads, 2);
    r = expect_reply(HIL_T_HELLO, 8, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_LOADED);
    CHECK_EQ_U(rd32(r->payload + 16), sizeof g_model);
    CHECK(memcmp(r->payload + 20, sha, 32) == 0);
    expect_reply(HIL_T_INFER, 9, input, sizeof input, HIL_T_RESULT);

    /* A store whose bytes no longer match the committed sha256 is not trusted. */
    g_fake.store[10] ^= 0x5Au;
    hil_core_init(&g_core, &g_port);
    CHECK_EQ_U(g_fake.loads, 2);
    r = expect_reply(HIL_T_HELLO, 10, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_NONE);
    CHECK_EQ_U(rd32(r->payload + 16), 0);
}

static void test_upload_errors(void)
{
    uint8_t begin[36];
    uint8_t chunk[1005]; /* room for one byte too many */
    const reply_t *r;

    fake_setup();
    hil_core_init(&g_core, &g_port);

    /* TOO_LARGE: empty and one byte over the store. */
    begin_payload(begin, 0, g_model);
    expect_error(HIL_T_MODEL_BEGIN, 1, begin, 36, HIL_E_TOO_LARGE);
    wr32(begin, 2097153u);
    expect_error(HIL_T_MODEL_BEGIN, 2, begin, 36, HIL_E_TOO_LARGE);
    expect_error(HIL_T_MODEL_BEGIN, 3, begin, 35, HIL_E_BAD_LENGTH);

    /* CHUNK / END without BEGIN. */
    wr32(chunk, 0);
    expect_error(HIL_T_MODEL_CHUNK, 4, chunk, 10, HIL_E_BAD_STATE);
    expect_error(HIL_T_MODEL_END, 5, NULL, 0, HIL_E_BAD_STATE);
    expect_error(HIL_T_MODEL_CHUNK, 6, chunk, 3, HIL_E_BAD_LENGTH);

    g_fake.store_begin_rc = -1;
    begin_payload(begin, 2000, g_model);
    expect_error(HIL_T_MODEL_BEGIN, 7, begin, 36, HIL_E_STORE_FAILED);
    g_fake.store_begin_rc = 0;

    /* Out-of-order chunk: not stored, answered with where to resume. */
    expect_reply(HIL_T_MODEL_BEGIN, 8, begin, 36, HIL_T_MODEL_BEGIN_ACK);
    wr32(chunk, 1000);
    memcpy(chunk + 4, g_model + 1000, 1000);
    r = expect_reply(HIL_T_MODEL_CHUNK, 9, chunk, 1004, HIL_T_CHUNK_ACK);
    CHECK_EQ_U(rd32(r->payload), 0);
    CHECK_EQ_U(g_fake.store_writes, 0);
    CHECK_EQ_U(g_fake.store[1000], 0xFF);

    wr32(chunk, 0);
    memcpy(chunk + 4, g_model, 1000);
    r = expect_reply(HIL_T_MODEL_CHUNK, 10, chunk, 1004, HIL_T_CHUNK_ACK);
    CHECK_EQ_U(rd32(r->payload), 1000);
    /* A resent chunk (its ack was lost) is harmless. */
    r = expect_reply(HIL_T_MODEL_CHUNK, 10, chunk, 1004, HIL_T_CHUNK_ACK);
    CHECK_EQ_U(rd32(r->payload), 1000);
    CHECK_EQ_U(g_fake.store_writes, 1);

    expect_error(HIL_T_MODEL_END, 11, NULL, 0, HIL_E_BAD_LENGTH); /* 1000 of 2000 */

    /* Past the announced size. */
    wr32(chunk, 1000);
    expect_error(HIL_T_MODEL_CHUNK, 12, chunk, 4u + 1001u, HIL_E_BAD_LENGTH);
    memcpy(chunk + 4, g_model + 1000, 1000);
    r = expect_reply(HIL_T_MODEL_CHUNK, 13, chunk, 1004, HIL_T_CHUNK_ACK);
    CHECK_EQ_U(rd32(r->payload), 2000);
    r = expect_reply(HIL_T_MODEL_END, 14, NULL, 0, HIL_T_MODEL_INFO);
    CHECK_EQ_U(rd32(r->payload + 12), 2000);

    /* SHA_MISMATCH: the announced hash is of other bytes. MODEL_BEGIN also forgot the loaded model. */
    begin_payload(begin, 1000, g_model + 1);
    wr32(begin, 1000);
    expect_reply(HIL_T_MODEL_BEGIN, 15, begin, 36, HIL_T_MODEL_BEGIN_ACK);
    wr32(chunk, 0);
    memcpy(chunk + 4, g_model, 1000);
    expect_reply(HIL_T_MODEL_CHUNK, 16, chunk, 1004, HIL_T_CHUNK_ACK);
    expect_error(HIL_T_MODEL_END, 17, NULL, 0, HIL_E_SHA_MISMATCH);
    CHECK_EQ_U(g_fake.committed, 0);
    /* The upload is over; v1.1: a repeat gets the same answer (its ERROR may have been lost). */
    expect_error(HIL_T_MODEL_END, 18, NULL, 0, HIL_E_SHA_MISMATCH);
    r = expect_reply(HIL_T_HELLO, 19, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_NONE);
    expect_error(HIL_T_INFER, 20, g_model, 187, HIL_E_BAD_STATE);
}

static void test_load_failures(void)
{
    const reply_t *r;
    char long_msg[300];
    uint8_t sha[32];

    fake_setup();
    hil_core_init(&g_core, &g_port);
    hil_sha256(g_model, 500, sha);

    /* The platform's code and message reach the host unchanged; HELLO then says "stored but failed". */
    g_fake.load_rc = HIL_E_ARENA_TOO_SMALL;
    g_fake.load_msg = "model needs 200000 bytes of arena, firmware has 131072";
    r = upload(g_model, 500, 200);
    CHECK_EQ_U(r->type, HIL_T_ERROR);
    CHECK_EQ_U(r->seq, 99);
    CHECK_EQ_U(r->payload[0] | (r->payload[1] << 8), HIL_E_ARENA_TOO_SMALL);
    CHECK_EQ_U(r->payload[2], HIL_T_MODEL_END);
    CHECK(r->len == 3u + strlen(g_fake.load_msg) &&
          memcmp(r->payload + 3, g_fake.load_msg, strlen(g_fake.load_msg)) == 0);
    r = expect_reply(HIL_T_HELLO, 1, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_LOAD_FAILED);
    CHECK_EQ_U(rd32(r->payload + 16), 500);
    CHECK(memcmp(r->payload + 20, sha, 32) == 0);
    CHECK_EQ_U(rd32(r->payload + 52), 0);
    expect_error(HIL_T_INFER, 2, g_model, 187, HIL_E_BAD_STATE);

    /* The same after a restart: the committed model is found and fails to load again. */
    hil_core_init(&g_core, &g_port);
    r = expect_reply(HIL_T_HELLO, 3, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_LOAD_FAILED);

    /* Silent platform: the host still gets a reason. Odd codes become LOAD_FAILED. */
    g_fake.load_rc = -3;
    g_fake.load_msg = NULL;
    r = upload(g_model, 500, 500);
    CHECK_EQ_U(r->type, HIL_T_ERROR);
    CHECK_EQ_U(r->payload[0], HIL_E_LOAD_FAILED);
    CHECK(r->len > 3u);

    /* An over-long message is cut to HIL_MSG_MAX. */
    memset(long_msg, 'x', sizeof long_msg - 1u);
    long_msg[sizeof long_msg - 1u] = '\0';
    g_fake.load_rc = HIL_E_LOAD_FAILED;
    g_fake.load_msg = long_msg;
    r = upload(g_model, 500, 500);
    CHECK_EQ_U(r->type, HIL_T_ERROR);
    CHECK_EQ_U(r->len, 3u + HIL_MSG_MAX);

    /* Tensors that cannot travel in one frame are refused at load, with the numbers in the message. */
    g_fake.load_rc = 0;
    g_fake.load_info.input_bytes = 4097;
    r = upload(g_model, 500, 500);
    CHECK_EQ_U(r->type, HIL_T_ERROR);
    CHECK_EQ_U(r->payload[0], HIL_E_LOAD_FAILED);
    CHECK(strstr(reply_text(r), "4097") != NULL);
    g_fake.load_info.input_bytes = 4096;
    g_fake.load_info.output_bytes = 4077;
    r = upload(g_model, 500, 500);
    CHECK_EQ_U(r->type, HIL_T_ERROR);
    CHECK_EQ_U(r->payload[0], HIL_E_LOAD_FAILED);
    g_fake.load_info.output_bytes = 4076;
    r = upload(g_model, 500, 500);
    CHECK_EQ_U(r->type, HIL_T_MODEL_INFO);

    /* Largest tensors both ways make the largest RESULT frame. */
    {
        static uint8_t input[4096];
        uint32_t i;
        memset(input, 0, sizeof input);
        r = expect_reply(HIL_T_INFER, 4, input, sizeof input, HIL_T_RESULT);
        CHECK_EQ_U(r->len, HIL_MAX_PAYLOAD);
        for (i = 0; i < 4076u; i += 509u) {
            CHECK_EQ_U(r->payload[20 + i], fake_output_byte(input, sizeof input, i));
        }
    }
}

static void test_receiver(void)
{
    static uint8_t buf[3 * HIL_MAX_WIRE];
    static const char boot[] = "ets Jun  8 2016 00:22:57\r\nrst:0x1";
    const vector_t *hello = vec("hello");
    uint8_t input[187];
    uint32_t n;
    uint32_t i;
    uint32_t len;
    size_t w;

    fake_setup();
    memcpy(g_fake.store, g_model, 300);
    hil_sha256(g_model, 300, g_fake.committed_sha);
    g_fake.committed = 1;
    g_fake.committed_size = 300;
    hil_core_init(&g_core, &g_port);
    CHECK_EQ_U(g_core.model_state, HIL_MODEL_LOADED);
    memset(input, 3, sizeof input);

    /* Boot ROM text right before a frame: one bad candidate (NAK), then the frame's answer. */
    len = (uint32_t)strlen(boot);
    memcpy(buf, boot, len);
    memcpy(buf + len, hello->wire, hello->wire_len);
    n = feed_raw(buf, len + hello->wire_len);
    CHECK_EQ_U(n, 2);
    CHECK_EQ_U(g_replies[0].type, HIL_T_NAK);
    CHECK_EQ_U(g_replies[0].seq, 0xFFFF);
    CHECK_EQ_U(g_replies[0].payload[0], HIL_NAK_BAD_COBS);
    CHECK_EQ_U(g_replies[1].type, HIL_T_HELLO_ACK);
    CHECK_EQ_U(g_core.stats.garbage_bytes, len);
    CHECK_EQ_U(g_core.stats.frames_bad, 1);
    CHECK_EQ_U(g_core.stats.frames_ok, 1);

    /* Byte by byte. */
    w = hil_frame_encode(HIL_T_INFER, 42, input, sizeof input, buf, sizeof buf);
    g_fake.out_len = 0;
    for (i = 0; i < w; i++) {
        hil_core_feed(&g_core, buf + i, 1);
        if (i + 1u < w) {
            CHECK_EQ_U(g_fake.out_len, 0);
        }
    }
    n = parse_stream(g_fake.out, g_fake.out_len);
    g_fake.out_len = 0;
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_RESULT);
    CHECK_EQ_U(g_replies[0].seq, 42);
    CHECK_EQ_U(g_replies[0].payload[0], 0);

    /* Several frames in one call, one of them a resend of 42: answered in order, the resend flagged. */
    w = hil_frame_encode(HIL_T_INFER, 43, input, sizeof input, buf, sizeof buf);
    w += hil_frame_encode(HIL_T_INFER, 42, input, sizeof input, buf + w, sizeof buf - w);
    w += hil_frame_encode(HIL_T_INFER, 44, input, sizeof input, buf + w, sizeof buf - w);
    n = feed_raw(buf, (uint32_t)w);
    CHECK_EQ_U(n, 3);
    CHECK(g_replies[0].seq == 43 && g_replies[1].seq == 42 && g_replies[2].seq == 44);
    CHECK_EQ_U(g_replies[0].payload[0], 0);
    CHECK_EQ_U(g_replies[1].payload[0], 1);
    CHECK_EQ_U(g_replies[2].payload[0], 0);
    CHECK(memcmp(g_replies[0].payload + 20, g_replies[1].payload + 20, 5) == 0);
    CHECK_EQ_U(g_core.stats.infers, 4);
    CHECK_EQ_U(g_core.stats.repeats, 1);

    /* The history is a window of recent seqs (64 consecutive ones): seq 42 is old again after 64 more. */
    for (i = 45; i < 45u + 64u; i++) {
        expect_reply(HIL_T_INFER, (uint16_t)i, input, sizeof input, HIL_T_RESULT);
    }
    CHECK_EQ_U(g_replies[0].payload[0], 0);
    expect_reply(HIL_T_INFER, 108, input, sizeof input, HIL_T_RESULT);
    CHECK_EQ_U(g_replies[0].payload[0], 1);
    expect_reply(HIL_T_INFER, 42, input, sizeof input, HIL_T_RESULT);
    CHECK_EQ_U(g_replies[0].payload[0], 0);
    /* HELLO starts a new session: nothing is a repeat. */
    expect_reply(HIL_T_HELLO, 0, NULL, 0, HIL_T_HELLO_ACK);
    expect_reply(HIL_T_INFER, 108, input, sizeof input, HIL_T_RESULT);
    CHECK_EQ_U(g_replies[0].payload[0], 0);

    /* Bad candidates and their NAK reasons. */
    {
        uint8_t body[16];
        uint8_t frame[32];
        uint32_t bad_before = g_core.stats.frames_bad;
        size_t m;
        /* Version 2 with a valid CRC. */
        body[0] = 2;
        body[1] = HIL_T_HELLO;
        body[2] = 5;
        body[3] = 0;
        wr32(body + 4, ref_crc32(body, 4));
        frame[0] = 0;
        m = hil_cobs_encode(body, 8, frame + 1);
        frame[m + 1u] = 0;
        n = feed_raw(frame, (uint32_t)m + 2u);
        CHECK_EQ_U(n, 1);
        CHECK_EQ_U(g_replies[0].type, HIL_T_NAK);
        CHECK_EQ_U(g_replies[0].payload[0], HIL_NAK_BAD_VERSION);
        /* A body of 7 bytes. */
        m = hil_cobs_encode(body, 7, frame + 1);
        frame[m + 1u] = 0;
        n = feed_raw(frame, (uint32_t)m + 2u);
        CHECK_EQ_U(n, 1);
        CHECK_EQ_U(g_replies[0].payload[0], HIL_NAK_BAD_LENGTH);
        CHECK_EQ_U(g_core.stats.frames_bad, bad_before + 2u);
    }

    /* A run longer than any frame: dropped at its closing zero with its full length counted. */
    {
        uint32_t garbage_before = g_core.stats.garbage_bytes;
        memset(buf, 0x41, HIL_MAX_WIRE + 10u);
        buf[HIL_MAX_WIRE + 10u] = 0;
        n = feed_raw(buf, HIL_MAX_WIRE + 11u);
        CHECK_EQ_U(n, 1);
        CHECK_EQ_U(g_replies[0].type, HIL_T_NAK);
        CHECK_EQ_U(g_replies[0].payload[0], HIL_NAK_BAD_LENGTH);
        CHECK_EQ_U(g_core.stats.garbage_bytes, garbage_before + HIL_MAX_WIRE + 10u);
        /* And the receiver is clean afterwards. */
        expect_reply(HIL_T_HELLO, 77, NULL, 0, HIL_T_HELLO_ACK);
    }

    /* Valid COBS decoding to one byte more than the largest body. */
    {
        static uint8_t body[HIL_MAX_BODY + 1u];
        memset(body, 1, sizeof body);
        body[0] = 1;
        buf[0] = 0;
        w = hil_cobs_encode(body, sizeof body, buf + 1);
        buf[w + 1u] = 0;
        n = feed_raw(buf, (uint32_t)w + 2u);
        CHECK_EQ_U(n, 1);
        CHECK_EQ_U(g_replies[0].payload[0], HIL_NAK_BAD_LENGTH);
    }

    /* RESET: acknowledged, platform reset, the rest of the buffer dropped. */
    w = hil_frame_encode(HIL_T_RESET, 50, NULL, 0, buf, sizeof buf);
    w += hil_frame_encode(HIL_T_HELLO, 51, NULL, 0, buf + w, sizeof buf - w);
    n = feed_raw(buf, (uint32_t)w);
    CHECK_EQ_U(n, 1);
    CHECK_EQ_U(g_replies[0].type, HIL_T_RESET_ACK);
    CHECK_EQ_U(g_replies[0].seq, 50);
    CHECK_EQ_U(g_fake.resets, 1);

    /* DUMP without a dump hook, and unknown types, are refused by name. */
    expect_error(HIL_T_DUMP, 60, input, sizeof input, HIL_E_UNKNOWN_TYPE);
    expect_error(0x55, 61, NULL, 0, HIL_E_UNKNOWN_TYPE);
    expect_error(HIL_T_HELLO_ACK, 62, NULL, 0, HIL_E_UNKNOWN_TYPE);
}

/* Sets up a core holding the golden 5-byte model (input 187 bytes) with the fake dump hook. */
static void dump_setup(void)
{
    static const uint8_t model[5] = {'m', 'o', 'd', 'e', 'l'};
    fake_setup();
    memcpy(g_fake.store, model, 5);
    hil_sha256(model, 5, g_fake.committed_sha);
    g_fake.committed = 1;
    g_fake.committed_size = 5;
    g_port.dump = fake_dump;
    hil_core_init(&g_core, &g_port);
}

static void test_dump(void)
{
    static uint8_t expected[3 * HIL_MAX_WIRE];
    static uint8_t whole[10000];
    const vector_t *v = vec("dump");
    uint32_t len = 0;
    uint32_t n;
    uint32_t i;
    const char *names[3] = {"dump_tensor_input", "dump_tensor", "dump_end"};

    /* Golden: the request gives exactly the golden tensor frames and DUMP_END, in order, with its seq. */
    dump_setup();
    for (i = 0; i < 3u; i++) {
        const vector_t *r = vec(names[i]);
        memcpy(expected + len, r->wire, r->wire_len);
        len += r->wire_len;
    }
    g_fake.out_len = 0;
    hil_core_feed(&g_core, v->wire, v->wire_len);
    CHECK_EQ_U(g_fake.out_len, len);
    if (g_fake.out_len != len || memcmp(g_fake.out, expected, len) != 0) {
        fprintf(stderr, "%s:%d: DUMP reply differs from golden dump_tensor_input/dump_tensor/dump_end\n",
                __FILE__, __LINE__);
        g_failures++;
    }
    g_fake.out_len = 0;

    /* Golden multi-chunk: a 5000-byte tensor in two DUMP_TENSOR frames, 4078 + 922 data bytes. */
    {
        const char *chunked[4] = {"dump_tensor_input", "dump_chunk_0", "dump_chunk_1", "dump_end"};
        len = 0;
        for (i = 0; i < 4u; i++) {
            const vector_t *r = vec(chunked[i]);
            memcpy(expected + len, r->wire, r->wire_len);
            len += r->wire_len;
        }
        g_fake.dump_big = 5000;
        g_fake.out_len = 0;
        hil_core_feed(&g_core, v->wire, v->wire_len);
        CHECK_EQ_U(g_fake.out_len, len);
        if (g_fake.out_len != len || memcmp(g_fake.out, expected, len) != 0) {
            fprintf(stderr, "%s:%d: DUMP reply differs from golden dump_chunk_0/1\n", __FILE__, __LINE__);
            g_failures++;
        }
        g_fake.out_len = 0;
    }

    /* A tensor larger than a frame is cut into chunks at increasing offsets, each with the full header. */
    g_fake.dump_big = 10000;
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 5); /* input, 3 chunks of tensor 15, DUMP_END */
    memset(whole, 0, sizeof whole);
    for (i = 1; i < 4u && i < n; i++) {
        const reply_t *r = &g_replies[i];
        uint32_t offset = rd32(r->payload + 14);
        uint32_t chunk = r->len - HIL_DUMP_HEADER_BYTES;
        CHECK_EQ_U(r->type, HIL_T_DUMP_TENSOR);
        CHECK_EQ_U(r->seq, 9);
        CHECK_EQ_U(r->payload[0] | (r->payload[1] << 8), 1);
        CHECK_EQ_U(r->payload[2] | (r->payload[3] << 8), 2);
        CHECK_EQ_U(r->payload[4] | (r->payload[5] << 8), 15);
        CHECK_EQ_U(rd32(r->payload + 10), 10000);
        CHECK_EQ_U(offset, (i - 1u) * (HIL_MAX_PAYLOAD - HIL_DUMP_HEADER_BYTES));
        CHECK(r->len <= HIL_MAX_PAYLOAD);
        if (offset + chunk <= sizeof whole) {
            memcpy(whole + offset, r->payload + HIL_DUMP_HEADER_BYTES, chunk);
        }
    }
    CHECK(memcmp(whole, g_dump_pattern, sizeof whole) == 0);
    CHECK_EQ_U(g_replies[4].type, HIL_T_DUMP_END);
    CHECK_EQ_U(g_replies[4].payload[0], 2);
    g_fake.dump_big = 0;

    /* A platform that skips an index is stopped by the sink; one that stops early is caught after it. */
    g_fake.dump_misorder = 1;
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 2);
    CHECK_EQ_U(g_replies[0].type, HIL_T_DUMP_TENSOR);
    CHECK_EQ_U(g_replies[1].type, HIL_T_ERROR);
    CHECK_EQ_U(g_replies[1].payload[0], HIL_E_INVOKE_FAILED);
    CHECK(strstr(reply_text(&g_replies[1]), "tensor 15") != NULL);
    g_fake.dump_misorder = 2;
    n = feed_raw(v->wire, v->wire_len);
    CHECK_EQ_U(n, 2);
    CHECK_EQ_U(g_replies[1].type, HIL_T_ERROR);
    CHECK(strstr(reply_text(&g_replies[1]), "dumped 1 of 2") != NULL);
    g_fake.dump_misorder = 0;

    /* Request checks come before the hook: wrong input size, then no model. */
    expect_error(HIL_T_DUMP, 10, v->payload, 100, HIL_E_BAD_INPUT_SIZE);
    fake_setup();
    g_port.dump = fake_dump;
    hil_core_init(&g_core, &g_port);
    expect_error(HIL_T_DUMP, 11, v->payload, v->payload_len, HIL_E_BAD_STATE);
    CHECK_EQ_U(g_core.stats.infers, 0);
}

static void test_hello_fields(void)
{
    const reply_t *r;
    char long_name[100];
    uint32_t off;

    fake_setup();
    memset(long_name, 'v', sizeof long_name - 1u);
    long_name[sizeof long_name - 1u] = '\0';
    g_port.info.fw_version = long_name;
    g_port.info.chip = NULL;
    g_port.info.timing_source = HIL_TIMING_ESTIMATE;
    g_port.info.kernel_mode = HIL_KERNELS_REFERENCE;
    g_port.store_committed = NULL; /* no store at all: start-up finds no model */
    hil_core_init(&g_core, &g_port);
    r = expect_reply(HIL_T_HELLO, 0x1234, NULL, 0, HIL_T_HELLO_ACK);
    CHECK_EQ_U(r->payload[0], 1);
    CHECK_EQ_U(r->payload[1], HIL_KERNELS_REFERENCE);
    CHECK_EQ_U(r->payload[2], HIL_TIMING_ESTIMATE);
    CHECK_EQ_U(r->payload[3], HIL_MODEL_NONE);
    CHECK_EQ_U(r->payload[4] | (r->payload[5] << 8), 240);
    CHECK_EQ_U(r->payload[6] | (r->payload[7] << 8), HIL_MAX_PAYLOAD);
    CHECK_EQ_U(rd32(r->payload + 8), 131072);
    CHECK_EQ_U(rd32(r->payload + 12), 2097152);
    off = 56;
    CHECK_EQ_U(r->payload[off], 63);
    off += 1u + 63u;
    CHECK_EQ_U(r->payload[off], 0);
    off += 1u;
    CHECK_EQ_U(r->payload[off], 8);
    CHECK(memcmp(r->payload + off + 1u, "deadbeef", 8) == 0);
    CHECK_EQ_U(r->len, off + 9u);
    /* A host asking for minor 7 gets this core's minor (1) and the extension; trailing bytes are ignored. */
    {
        static const uint8_t ask[3] = {7, 0xAA, 0xBB};
        r = expect_reply(HIL_T_HELLO, 0x1235, ask, 3, HIL_T_HELLO_ACK);
        CHECK_EQ_U(r->len, off + 9u + 7u);
        CHECK_EQ_U(r->payload[off + 9u], HIL_PROTO_MINOR);
        CHECK_EQ_U(rd32(r->payload + off + 10u), 16384);
        CHECK_EQ_U(r->payload[off + 14u] | (r->payload[off + 15u] << 8), 3000);
    }
}

/* Every golden reject is dropped and answered with exactly the golden NAK of its reason. */
static void test_golden_rejects(void)
{
    static const char *const naks[5] = {"", "nak_cobs", "nak_length", "nak_version", "nak_crc"};
    uint32_t i;
    uint8_t seen = 0;
    CHECK(g_nrejects >= 5u);
    for (i = 0; i < g_nrejects; i++) {
        const reject_t *r = &g_rejects[i];
        CHECK(r->reason >= 1u && r->reason <= 4u);
        if (r->reason < 1u || r->reason > 4u) {
            continue;
        }
        seen = (uint8_t)(seen | (1u << r->reason));
        fake_setup();
        hil_core_init(&g_core, &g_port);
        g_fake.out_len = 0;
        hil_core_feed(&g_core, r->wire, r->wire_len);
        if (g_fake.out_len != vec(naks[r->reason])->wire_len ||
            memcmp(g_fake.out, vec(naks[r->reason])->wire, g_fake.out_len) != 0) {
            fprintf(stderr, "  golden reject %s: the device did not answer %s\n", r->name, naks[r->reason]);
            g_failures++;
        }
        g_checks++;
        CHECK_EQ_U(g_core.stats.frames_bad, 1);
        CHECK_EQ_U(g_core.stats.frames_ok, 0);
    }
    CHECK_EQ_U(seen, 0x1Eu); /* reasons 1..4 */
}

/* v1.1 upload rules (docs/protocol.md "Model upload"): a repeated MODEL_END gets the same answer, HELLO
 * keeps an upload open, a short MODEL_END and a write past the size keep it open, a refused MODEL_BEGIN
 * changes nothing. */
static void test_upload_v11(void)
{
    uint8_t begin[36];
    uint8_t chunk[4 + 3000];
    const reply_t *r;

    fake_setup();
    hil_core_init(&g_core, &g_port);
    begin_payload(begin, 3000, g_model);
    expect_reply(HIL_T_MODEL_BEGIN, 1, begin, 36, HIL_T_MODEL_BEGIN_ACK);
    wr32(chunk, 0);
    memcpy(chunk + 4, g_model, 1000);
    expect_reply(HIL_T_MODEL_CHUNK, 2, chunk, 4 + 1000, HIL_T_CHUNK_ACK);
    /* HELLO in the middle: the upload stays open. */
    expect_reply(HIL_T_HELLO, 3, NULL, 0, HIL_T_HELLO_ACK);
    /* Short MODEL_END: BAD_LENGTH, and the upload stays open. */
    expect_error(HIL_T_MODEL_END, 4, NULL, 0, HIL_E_BAD_LENGTH);
    /* A refused MODEL_BEGIN (too large) does not abort it. */
    wr32(begin, 3000000);
    expect_error(HIL_T_MODEL_BEGIN, 5, begin, 36, HIL_E_TOO_LARGE);
    /* A write past the announced size is refused and stores nothing; the upload stays open. */
    wr32(chunk, 1000);
    memcpy(chunk + 4, g_model + 1000, 2000);
    expect_error(HIL_T_MODEL_CHUNK, 6, chunk, 4 + 2001, HIL_E_BAD_LENGTH);
    r = expect_reply(HIL_T_MODEL_CHUNK, 7, chunk, 4 + 2000, HIL_T_CHUNK_ACK);
    CHECK_EQ_U(rd32(r->payload), 3000);
    r = expect_reply(HIL_T_MODEL_END, 8, NULL, 0, HIL_T_MODEL_INFO);
    CHECK_EQ_U(rd32(r->payload + 12), 3000);
    /* Its MODEL_INFO was lost: the resent MODEL_END gets it again, also after a HELLO. */
    r = expect_reply(HIL_T_MODEL_END, 8, NULL, 0, HIL_T_MODEL_INFO);
    CHECK_EQ_U(rd32(r->payload + 12), 3000);
    expect_reply(HIL_T_HELLO, 9, NULL, 0, HIL_T_HELLO_ACK);
    expect_reply(HIL_T_MODEL_END, 10, NULL, 0, HIL_T_MODEL_INFO);
    /* An upload that ended in SHA_MISMATCH answers a repeat with SHA_MISMATCH, not BAD_STATE. */
    begin_payload(begin, 3000, g_model);
    begin[4] ^= 0x01u; /* announce another sha256 */
    expect_reply(HIL_T_MODEL_BEGIN, 11, begin, 36, HIL_T_MODEL_BEGIN_ACK);
    wr32(chunk, 0);
    memcpy(chunk + 4, g_model, 3000);
    expect_reply(HIL_T_MODEL_CHUNK, 12, chunk, 4 + 3000, HIL_T_CHUNK_ACK);
    expect_error(HIL_T_MODEL_END, 13, NULL, 0, HIL_E_SHA_MISMATCH);
    expect_error(HIL_T_MODEL_END, 13, NULL, 0, HIL_E_SHA_MISMATCH);
    /* A RESET forgets it: MODEL_END is then out of place. */
    hil_core_init(&g_core, &g_port);
    expect_error(HIL_T_MODEL_END, 14, NULL, 0, HIL_E_BAD_STATE);
}

/* ---- OP_PROFILE and STATS (docs/protocol.md §12-13) ---- */

static uint32_t g_profile_ops; /* how many ops the fake profiler reports */

static int fake_profile(void *ctx, const uint8_t *input, uint32_t input_len, hil_op_sink_t sink, void *sink_ctx,
                        uint64_t *cycles, char *msg, uint32_t msg_cap)
{
    /* The golden op_times vector: RESHAPE, CONV_2D, FULLY_CONNECTED of a 994278-cycle invoke. */
    static const uint16_t builtin[3] = {22, 3, 17};
    static const uint32_t op_cycles[3] = {4122, 74808, 7464};
    uint32_t i;
    (void)ctx;
    (void)input;
    (void)input_len;
    (void)msg;
    (void)msg_cap;
    for (i = 0; i < g_profile_ops; i++) {
        if (sink(sink_ctx, (uint16_t)i, i < 3u ? builtin[i] : 9u, i < 3u ? op_cycles[i] : 1u) != 0) {
            break;
        }
    }
    *cycles = 994278u;
    return 0;
}

static int fake_health(void *ctx, hil_health_t *out)
{
    (void)ctx;
    out->source = HIL_HEALTH_DEVICE;
    out->stack_high_water = 2048;
    out->stack_size = 12288;
    out->heap_internal_free = 201344;
    out->heap_internal_min_free = 187000;
    out->psram_free = 8126464;
    return 0;
}

static void test_op_profile_and_stats(void)
{
    static const uint8_t model[5] = {'m', 'o', 'd', 'e', 'l'};
    static uint8_t input[187];
    const reply_t *r;

    /* Without the hooks: UNKNOWN_TYPE, as any request this device does not handle. */
    fake_setup();
    hil_core_init(&g_core, &g_port);
    expect_error(HIL_T_STATS, 70, NULL, 0, HIL_E_UNKNOWN_TYPE);
    expect_error(HIL_T_OP_PROFILE, 71, input, sizeof input, HIL_E_UNKNOWN_TYPE);

    /* With them, no model: STATS answers (arena_used 0), OP_PROFILE is BAD_STATE like INFER. */
    g_port.profile = fake_profile;
    g_port.health = fake_health;
    r = expect_reply(HIL_T_STATS, 72, NULL, 0, HIL_T_STATS_ACK);
    CHECK_EQ_U(r->len, 32);
    CHECK_EQ_U(rd32(r->payload + 24), 0);
    expect_error(HIL_T_OP_PROFILE, 73, input, sizeof input, HIL_E_BAD_STATE);

    /* A loaded model (arena_used 6352): both answers are the golden frames, byte for byte. */
    fake_setup();
    g_port.profile = fake_profile;
    g_port.health = fake_health;
    memcpy(g_fake.store, model, 5);
    hil_sha256(model, 5, g_fake.committed_sha);
    g_fake.committed = 1;
    g_fake.committed_size = 5;
    g_fake.load_info.arena_used = 6352;
    hil_core_init(&g_core, &g_port);
    g_profile_ops = 3;
    hil_core_feed(&g_core, vec("op_profile")->wire, vec("op_profile")->wire_len);
    check_wire_equals("op_times");
    g_fake.out_len = 0;
    hil_core_feed(&g_core, vec("stats")->wire, vec("stats")->wire_len);
    check_wire_equals("stats_ack");
    g_fake.out_len = 0;

    /* The wrong input size is refused before the platform runs anything. */
    expect_error(HIL_T_OP_PROFILE, 74, input, sizeof input - 1u, HIL_E_BAD_INPUT_SIZE);
    /* A model with more ops than one OP_TIMES frame carries: an error, never a truncated table. */
    g_profile_ops = HIL_MAX_OP_TIMES + 1u;
    expect_error(HIL_T_OP_PROFILE, 75, input, sizeof input, HIL_E_INVOKE_FAILED);
    g_profile_ops = HIL_MAX_OP_TIMES;
    r = expect_reply(HIL_T_OP_PROFILE, 76, input, sizeof input, HIL_T_OP_TIMES);
    CHECK_EQ_U(r->len, HIL_OP_TIMES_HEADER_BYTES + HIL_MAX_OP_TIMES * HIL_OP_TIME_BYTES);
    CHECK_EQ_U(HIL_MAX_OP_TIMES, 510);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s tests/golden/frames.txt\n", argv[0]);
        return 2;
    }
    if (load_golden(argv[1]) != 0) {
        return 2;
    }
    make_model();
    test_crc();
    test_cobs();
    test_sha256();
    test_golden_encode();
    test_golden_dispatch();
    test_golden_nak_and_load_error();
    test_upload_and_infer();
    test_upload_errors();
    test_load_failures();
    test_receiver();
    test_hello_fields();
    test_dump();
    test_golden_rejects();
    test_upload_v11();
    test_op_profile_and_stats();
    printf("%d checks, %d failures, sizeof(hil_core_t) = %lu\n", g_checks, g_failures,
           (unsigned long)hil_core_sizeof());
    return g_failures == 0 ? 0 : 1;
}
