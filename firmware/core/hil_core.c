/*
 * Device side of the HIL protocol (docs/protocol.md): finds frames in the received byte stream, answers
 * each request, runs the model upload state machine and reloads a committed model at start-up. Everything
 * the platform does (bytes out, flash, interpreter, clocks) goes through the hooks in hil_port_t, so the
 * ESP32 app and the virtual board run exactly this code.
 *
 * Hooks that may be NULL: store_committed (no model is ever found at start-up), clock_ns (wall_ns is 0),
 * reset (RESET is acknowledged only), write (replies are dropped), dump (DUMP is refused as UNKNOWN_TYPE).
 * A NULL store or interpreter hook turns the request that needs it into an ERROR instead of a crash.
 */
#include "hil_core.h"

#include <string.h>

#define RESULT_HEADER_BYTES 20u
#define HELLO_FIXED_BYTES 56u
#define HELLO_EXT_BYTES 7u /* v1.1: proto_minor u8, rx_buffer u32, reset_ms u16 */
#define INFO_STRING_MAX 63u

/* Error text is built in place in the tx payload, right after ERROR's code and request_type fields, so a
 * hook's message reaches the wire without an extra buffer. */
#define ERROR_TEXT_OFFSET 3u

/* ---- little-endian fields, byte by byte so the core does not depend on the CPU's byte order ---- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v & 0xFFFFFFFFu));
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* strlen that never reads past `max`, for strings from hooks that may forget the terminator. */
static uint32_t bounded_len(const char *s, uint32_t max)
{
    uint32_t n = 0;
    if (s == NULL) {
        return 0;
    }
    while (n < max && s[n] != '\0') {
        n++;
    }
    return n;
}

/* ---- error text, built without stdio ---- */

typedef struct {
    char *buf;
    uint32_t len;
} text_t;

static void text_add(text_t *t, const char *s)
{
    while (*s != '\0' && t->len < HIL_MSG_MAX) {
        t->buf[t->len++] = *s++;
    }
    t->buf[t->len] = '\0';
}

static void text_add_u32(text_t *t, uint32_t v)
{
    char digits[11];
    uint32_t n = 0;
    do {
        digits[n++] = (char)('0' + (char)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (n > 0u && t->len < HIL_MSG_MAX) {
        t->buf[t->len++] = digits[--n];
    }
    t->buf[t->len] = '\0';
}

static void text_add_hex8(text_t *t, uint8_t v)
{
    static const char hex[] = "0123456789abcdef";
    char s[3];
    s[0] = hex[v >> 4];
    s[1] = hex[v & 0x0Fu];
    s[2] = '\0';
    text_add(t, s);
}

/* ---- transmit ---- */

static uint8_t *tx_payload(hil_core_t *core)
{
    return core->tx_body + HIL_HEADER_BYTES;
}

static char *error_text(hil_core_t *core)
{
    return (char *)(tx_payload(core) + ERROR_TEXT_OFFSET);
}

/* Frames the first `len` bytes of the tx payload and writes them out. */
static void send_frame(hil_core_t *core, uint8_t type, uint16_t seq, uint32_t len)
{
    const hil_port_t *port = core->port;
    size_t n = hil_frame_encode(type, seq, tx_payload(core), len, core->tx_wire, sizeof core->tx_wire);
    if (n > 0u && port->write != NULL) {
        (void)port->write(port->ctx, core->tx_wire, (uint32_t)n);
    }
}

static void send_empty(hil_core_t *core, uint8_t type, uint16_t seq)
{
    send_frame(core, type, seq, 0);
}

/* Sends ERROR with whatever text is already at error_text(). */
static void send_error_in_place(hil_core_t *core, uint16_t seq, uint8_t request_type, uint16_t code)
{
    uint8_t *p = tx_payload(core);
    uint32_t text_len = bounded_len(error_text(core), HIL_MSG_MAX);
    put_u16(p, code);
    p[2] = request_type;
    send_frame(core, HIL_T_ERROR, seq, ERROR_TEXT_OFFSET + text_len);
}

static void send_error(hil_core_t *core, uint16_t seq, uint8_t request_type, uint16_t code, const char *text)
{
    text_t t;
    t.buf = error_text(core);
    t.len = 0;
    text_add(&t, text);
    send_error_in_place(core, seq, request_type, code);
}

static text_t start_text(hil_core_t *core)
{
    text_t t;
    t.buf = error_text(core);
    t.len = 0;
    t.buf[0] = '\0';
    return t;
}

static void send_nak(hil_core_t *core, uint8_t reason)
{
    tx_payload(core)[0] = reason;
    send_frame(core, HIL_T_NAK, 0xFFFFu, 1);
}

/* ---- model state ---- */

static void forget_model(hil_core_t *core)
{
    core->model_state = HIL_MODEL_NONE;
    core->model_size = 0;
    memset(core->model_sha, 0, sizeof core->model_sha);
    memset(&core->model, 0, sizeof core->model);
}

/*
 * Asks the platform to load the stored model (model_size and model_sha already set). Returns 0, or the
 * HIL_E_* code with its message left at error_text(). Also refuses a model whose tensors cannot travel in
 * one frame, because every INFER would otherwise fail later with a less obvious error.
 */
static uint16_t load_model(hil_core_t *core)
{
    const hil_port_t *port = core->port;
    text_t t = start_text(core);
    hil_model_info_t info;
    const uint8_t *data = NULL;
    uint16_t code = 0;
    int rc;

    memset(&info, 0, sizeof info);
    if (port->store_data != NULL) {
        data = port->store_data(port->ctx);
    }
    if (port->model_load == NULL || data == NULL) {
        text_add(&t, "platform cannot read or load the stored model");
        code = HIL_E_LOAD_FAILED;
    } else {
        rc = port->model_load(port->ctx, data, core->model_size, &info, t.buf, HIL_MSG_MAX + 1u);
        if (rc != 0) {
            /* model_state then says "failed to load"; any other code would contradict it. */
            code = (rc == HIL_E_ARENA_TOO_SMALL) ? (uint16_t)HIL_E_ARENA_TOO_SMALL : (uint16_t)HIL_E_LOAD_FAILED;
            if (bounded_len(t.buf, HIL_MSG_MAX) == 0u) {
                text_add(&t, "model load failed (platform gave no reason)");
            }
        } else if (info.input_bytes > HIL_MAX_PAYLOAD) {
            text_add(&t, "model input is ");
            text_add_u32(&t, info.input_bytes);
            text_add(&t, " bytes; one INFER frame carries at most ");
            text_add_u32(&t, HIL_MAX_PAYLOAD);
            code = HIL_E_LOAD_FAILED;
        } else if (info.output_bytes > HIL_MAX_PAYLOAD - RESULT_HEADER_BYTES) {
            text_add(&t, "model output is ");
            text_add_u32(&t, info.output_bytes);
            text_add(&t, " bytes; one RESULT frame carries at most ");
            text_add_u32(&t, HIL_MAX_PAYLOAD - RESULT_HEADER_BYTES);
            code = HIL_E_LOAD_FAILED;
        }
    }

    if (code != 0u) {
        core->model_state = HIL_MODEL_LOAD_FAILED;
        memset(&core->model, 0, sizeof core->model);
    } else {
        core->model_state = HIL_MODEL_LOADED;
        core->model = info;
    }
    return code;
}

void hil_core_init(hil_core_t *core, const hil_port_t *port)
{
    uint32_t size = 0;
    uint8_t sha[32];
    uint8_t actual[32];
    const uint8_t *data;

    memset(core, 0, sizeof *core);
    core->port = port;
    if (port->store_committed == NULL || port->store_data == NULL) {
        return;
    }
    memset(sha, 0, sizeof sha);
    if (port->store_committed(port->ctx, &size, sha) != 0 || size == 0u) {
        return;
    }
    data = port->store_data(port->ctx);
    if (data == NULL) {
        return;
    }
    /* A store that no longer matches its own sha256 (torn write, flash wear) holds no usable model: report
     * none, so the host uploads again rather than trusting it. */
    hil_sha256(data, size, actual);
    if (memcmp(actual, sha, sizeof sha) != 0) {
        return;
    }
    core->model_size = size;
    memcpy(core->model_sha, sha, sizeof sha);
    (void)load_model(core);
}

size_t hil_core_sizeof(void)
{
    return sizeof(hil_core_t);
}

/* ---- requests ---- */

static uint32_t put_info_string(uint8_t *p, const char *s)
{
    uint32_t n = bounded_len(s, INFO_STRING_MAX);
    p[0] = (uint8_t)n;
    if (n > 0u) {
        memcpy(p + 1, s, n);
    }
    return n + 1u;
}

/* HELLO's payload (v1.1) is the highest minor version the host speaks; a v1 host sends none. The v1.1
 * extension of HELLO_ACK goes only to a host that asked for it, so a v1 host gets exactly the v1 layout. */
static void on_hello(hil_core_t *core, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_device_info_t *info = &core->port->info;
    uint8_t *p = tx_payload(core);
    uint32_t len = HELLO_FIXED_BYTES;
    uint8_t host_minor = n > 0u ? pl[0] : 0u;

    /* HELLO starts a session: resends are only meaningful within one. An upload in progress stays open. */
    memset(core->seen_valid, 0, sizeof core->seen_valid);
    core->session_minor = host_minor < HIL_PROTO_MINOR ? host_minor : (uint8_t)HIL_PROTO_MINOR;

    memset(p, 0, HELLO_FIXED_BYTES);
    p[0] = (uint8_t)HIL_PROTO_VERSION;
    p[1] = info->kernel_mode;
    p[2] = info->timing_source;
    p[3] = core->model_state;
    put_u16(p + 4, info->cpu_mhz);
    put_u16(p + 6, (uint16_t)HIL_MAX_PAYLOAD);
    put_u32(p + 8, info->arena_size);
    put_u32(p + 12, info->store_capacity);
    if (core->model_state != HIL_MODEL_NONE) {
        put_u32(p + 16, core->model_size);
        memcpy(p + 20, core->model_sha, 32);
        put_u32(p + 52, core->model.arena_used);
    }
    len += put_info_string(p + len, info->fw_version);
    len += put_info_string(p + len, info->chip);
    len += put_info_string(p + len, info->build_hash);
    if (core->session_minor >= 1u) {
        p[len] = core->session_minor;
        put_u32(p + len + 1u, info->rx_buffer);
        put_u16(p + len + 5u, info->reset_ms);
        len += HELLO_EXT_BYTES;
    }
    send_frame(core, HIL_T_HELLO_ACK, seq, len);
}

static void on_model_begin(hil_core_t *core, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_port_t *port = core->port;
    uint32_t size;
    text_t t;

    if (n < 36u) {
        send_error(core, seq, HIL_T_MODEL_BEGIN, HIL_E_BAD_LENGTH, "MODEL_BEGIN needs size u32 and sha256[32]");
        return;
    }
    size = get_u32(pl);
    if (size == 0u || size > port->info.store_capacity) {
        t = start_text(core);
        text_add(&t, "model of ");
        text_add_u32(&t, size);
        text_add(&t, " bytes does not fit the model store (1 to ");
        text_add_u32(&t, port->info.store_capacity);
        text_add(&t, " bytes)");
        send_error_in_place(core, seq, HIL_T_MODEL_BEGIN, HIL_E_TOO_LARGE);
        return;
    }

    /* The store is about to be erased, so whatever model was loaded from it is gone too. */
    forget_model(core);
    core->upload_active = 0;
    core->end_state = 0;
    if (port->store_begin == NULL || port->store_begin(port->ctx, size) != 0) {
        send_error(core, seq, HIL_T_MODEL_BEGIN, HIL_E_STORE_FAILED, "model store could not be erased");
        return;
    }
    core->upload_active = 1;
    core->upload_size = size;
    core->upload_next = 0;
    memcpy(core->upload_sha, pl + 4, 32);
    send_empty(core, HIL_T_MODEL_BEGIN_ACK, seq);
}

static void send_chunk_ack(hil_core_t *core, uint16_t seq)
{
    put_u32(tx_payload(core), core->upload_next);
    send_frame(core, HIL_T_CHUNK_ACK, seq, 4);
}

static void on_model_chunk(hil_core_t *core, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_port_t *port = core->port;
    uint32_t offset;
    uint32_t len;
    text_t t;

    if (n < 4u) {
        send_error(core, seq, HIL_T_MODEL_CHUNK, HIL_E_BAD_LENGTH, "MODEL_CHUNK needs offset u32");
        return;
    }
    if (!core->upload_active) {
        send_error(core, seq, HIL_T_MODEL_CHUNK, HIL_E_BAD_STATE, "MODEL_CHUNK without MODEL_BEGIN");
        return;
    }
    offset = get_u32(pl);
    len = n - 4u;
    /* Resends and lost acks: tell the host where to resume instead of failing the upload. */
    if (offset != core->upload_next) {
        send_chunk_ack(core, seq);
        return;
    }
    if (len > core->upload_size - core->upload_next) {
        t = start_text(core);
        text_add(&t, "chunk at ");
        text_add_u32(&t, offset);
        text_add(&t, " with ");
        text_add_u32(&t, len);
        text_add(&t, " bytes runs past the announced model size ");
        text_add_u32(&t, core->upload_size);
        send_error_in_place(core, seq, HIL_T_MODEL_CHUNK, HIL_E_BAD_LENGTH);
        return;
    }
    if (len > 0u) {
        if (port->store_write == NULL || port->store_write(port->ctx, offset, pl + 4, len) != 0) {
            t = start_text(core);
            text_add(&t, "model store write failed at offset ");
            text_add_u32(&t, offset);
            send_error_in_place(core, seq, HIL_T_MODEL_CHUNK, HIL_E_STORE_FAILED);
            return;
        }
        core->upload_next += len;
    }
    send_chunk_ack(core, seq);
}

static void send_model_info(hil_core_t *core, uint16_t seq)
{
    uint8_t *p = tx_payload(core);
    put_u32(p, core->model.arena_used);
    put_u32(p + 4, core->model.input_bytes);
    put_u32(p + 8, core->model.output_bytes);
    put_u32(p + 12, core->model_size);
    memcpy(p + 16, core->model_sha, 32);
    send_frame(core, HIL_T_MODEL_INFO, seq, 48);
}

/* Closes the upload with an ERROR and remembers it for a repeated MODEL_END. Text is at error_text(). */
static void end_failed(hil_core_t *core, uint16_t seq, uint16_t code)
{
    core->end_state = 2;
    core->end_code = code;
    send_error_in_place(core, seq, HIL_T_MODEL_END, code);
}

static void on_model_end(hil_core_t *core, uint16_t seq)
{
    const hil_port_t *port = core->port;
    const uint8_t *data = NULL;
    uint8_t actual[32];
    uint16_t code;
    text_t t;

    if (!core->upload_active) {
        /* v1.1: a MODEL_END resent because its answer was lost gets that answer again (chunk resends are
         * harmless, so the end of an upload must be too). */
        if (core->end_state == 1u && core->model_state == HIL_MODEL_LOADED) {
            send_model_info(core, seq);
        } else if (core->end_state == 2u) {
            send_error(core, seq, HIL_T_MODEL_END, core->end_code,
                       "repeated MODEL_END: the upload already ended with this error; start again with MODEL_BEGIN");
        } else {
            send_error(core, seq, HIL_T_MODEL_END, HIL_E_BAD_STATE, "MODEL_END without MODEL_BEGIN");
        }
        return;
    }
    if (core->upload_next != core->upload_size) {
        /* The upload stays open: the host continues from next_offset (docs/protocol.md). */
        t = start_text(core);
        text_add(&t, "upload incomplete: ");
        text_add_u32(&t, core->upload_next);
        text_add(&t, " of ");
        text_add_u32(&t, core->upload_size);
        text_add(&t, " bytes stored");
        send_error_in_place(core, seq, HIL_T_MODEL_END, HIL_E_BAD_LENGTH);
        return;
    }
    /* From here on the upload is finished either way; a retry starts again with MODEL_BEGIN. */
    core->upload_active = 0;
    if (port->store_data != NULL) {
        data = port->store_data(port->ctx);
    }
    if (data == NULL) {
        t = start_text(core);
        text_add(&t, "model store cannot be read back");
        end_failed(core, seq, HIL_E_STORE_FAILED);
        return;
    }
    /* Hash what the store actually holds, not what was received, so flash write errors are caught too. */
    hil_sha256(data, core->upload_size, actual);
    if (memcmp(actual, core->upload_sha, sizeof actual) != 0) {
        t = start_text(core);
        text_add(&t, "stored model does not hash to the sha256 announced in MODEL_BEGIN");
        end_failed(core, seq, HIL_E_SHA_MISMATCH);
        return;
    }
    if (port->store_commit == NULL || port->store_commit(port->ctx, core->upload_size, actual) != 0) {
        t = start_text(core);
        text_add(&t, "model store could not be committed");
        end_failed(core, seq, HIL_E_STORE_FAILED);
        return;
    }
    core->model_size = core->upload_size;
    memcpy(core->model_sha, actual, sizeof actual);
    code = load_model(core);
    if (code != 0u) {
        end_failed(core, seq, code);
        return;
    }
    core->end_state = 1;
    send_model_info(core, seq);
}

/* INFER and DUMP both need a loaded model and exactly its input size; otherwise answer ERROR. */
static int input_acceptable(hil_core_t *core, uint16_t seq, uint8_t type, uint32_t n)
{
    text_t t;

    if (core->model_state != HIL_MODEL_LOADED) {
        send_error(core, seq, type, HIL_E_BAD_STATE,
                   core->model_state == HIL_MODEL_NONE ? "no model loaded" : "the stored model failed to load");
        return 0;
    }
    if (n != core->model.input_bytes) {
        t = start_text(core);
        text_add(&t, "input is ");
        text_add_u32(&t, n);
        text_add(&t, " bytes, the model expects ");
        text_add_u32(&t, core->model.input_bytes);
        send_error_in_place(core, seq, type, HIL_E_BAD_INPUT_SIZE);
        return 0;
    }
    return 1;
}

static void on_infer(hil_core_t *core, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_port_t *port = core->port;
    /* Direct-mapped by seq: the host numbers INFERs consecutively with at most 64 in flight, so the last
     * 64 seqs land in distinct slots and the table behaves as a ring without a write index. */
    uint32_t slot = (uint32_t)seq % HIL_REPEAT_HISTORY;
    char msg[HIL_MSG_MAX + 1u];
    uint64_t cycles = 0;
    uint64_t t0 = 0;
    uint64_t t1 = 0;
    uint8_t repeat;
    uint8_t *p;
    int rc;

    if (!input_acceptable(core, seq, HIL_T_INFER, n)) {
        return;
    }
    if (port->invoke == NULL) {
        send_error(core, seq, HIL_T_INFER, HIL_E_INVOKE_FAILED, "platform has no interpreter");
        return;
    }

    p = tx_payload(core);
    msg[0] = '\0';
    if (port->clock_ns != NULL) {
        t0 = port->clock_ns(port->ctx);
    }
    /* The output goes straight into the reply frame: no copy of the tensor in the hot path. */
    rc = port->invoke(port->ctx, pl, n, p + RESULT_HEADER_BYTES, core->model.output_bytes, &cycles, msg,
                      (uint32_t)sizeof msg);
    if (port->clock_ns != NULL) {
        t1 = port->clock_ns(port->ctx);
    }
    if (rc != 0) {
        uint16_t code = (rc > 0 && rc <= HIL_E_ARENA_TOO_SMALL) ? (uint16_t)rc : (uint16_t)HIL_E_INVOKE_FAILED;
        msg[HIL_MSG_MAX] = '\0';
        send_error(core, seq, HIL_T_INFER, code, msg[0] != '\0' ? msg : "invoke failed (platform gave no reason)");
        return;
    }

    repeat = (uint8_t)(core->seen_valid[slot] && core->seen_seq[slot] == seq);
    core->seen_seq[slot] = seq;
    core->seen_valid[slot] = 1;
    core->stats.infers++;
    if (repeat) {
        core->stats.repeats++;
    }

    p[0] = repeat;
    p[1] = 0;
    p[2] = 0;
    p[3] = 0;
    put_u64(p + 4, cycles);
    put_u64(p + 12, t1 >= t0 ? t1 - t0 : 0u);
    send_frame(core, HIL_T_RESULT, seq, RESULT_HEADER_BYTES + core->model.output_bytes);
}

/* ---- DUMP: every intermediate tensor of one inference ---- */

typedef struct {
    hil_core_t *core;
    uint16_t seq;
    uint16_t count;
    uint32_t sent; /* tensors sent so far */
} dump_sink_t;

/* Cuts one tensor into DUMP_TENSOR frames (the header is repeated in each, with the chunk's offset). The
 * core checks the order itself so the host can rely on `index` and `count` whatever the platform does. */
static int dump_sink(void *sink_ctx, const hil_dump_tensor_t *tensor)
{
    dump_sink_t *d = (dump_sink_t *)sink_ctx;
    uint8_t *p = tx_payload(d->core);
    const uint32_t room = HIL_MAX_PAYLOAD - HIL_DUMP_HEADER_BYTES;
    uint32_t offset = 0;

    if (tensor == NULL || tensor->index != d->sent || tensor->count == 0u || tensor->index >= tensor->count ||
        (d->sent > 0u && tensor->count != d->count) || (tensor->bytes > 0u && tensor->data == NULL)) {
        return -1;
    }
    d->count = tensor->count;
    do {
        uint32_t n = tensor->bytes - offset;
        if (n > room) {
            n = room;
        }
        put_u16(p, tensor->index);
        put_u16(p + 2, tensor->count);
        put_u16(p + 4, tensor->tensor_index);
        put_u16(p + 6, tensor->op_index);
        p[8] = tensor->type;
        p[9] = 0;
        put_u32(p + 10, tensor->bytes);
        put_u32(p + 14, offset);
        if (n > 0u) {
            memcpy(p + HIL_DUMP_HEADER_BYTES, tensor->data + offset, n);
        }
        send_frame(d->core, HIL_T_DUMP_TENSOR, d->seq, HIL_DUMP_HEADER_BYTES + n);
        offset += n;
    } while (offset < tensor->bytes);
    d->sent++;
    return 0;
}

static void on_dump(hil_core_t *core, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_port_t *port = core->port;
    char msg[HIL_MSG_MAX + 1u];
    dump_sink_t sink;
    uint8_t *p;
    int rc;
    text_t t;

    if (!input_acceptable(core, seq, HIL_T_DUMP, n)) {
        return;
    }
    sink.core = core;
    sink.seq = seq;
    sink.count = 0;
    sink.sent = 0;
    msg[0] = '\0';
    /* The request payload lives in core->body, which the sink never touches: no copy of the input. */
    rc = port->dump(port->ctx, pl, n, dump_sink, &sink, msg, (uint32_t)sizeof msg);
    if (rc == 0 && (sink.sent == 0u || sink.sent != sink.count)) {
        t = start_text(core);
        text_add(&t, "platform dumped ");
        text_add_u32(&t, sink.sent);
        text_add(&t, " of ");
        text_add_u32(&t, sink.count);
        text_add(&t, " tensors");
        send_error_in_place(core, seq, HIL_T_DUMP, HIL_E_INVOKE_FAILED);
        return;
    }
    if (rc != 0) {
        uint16_t code = (rc > 0 && rc <= HIL_E_ARENA_TOO_SMALL) ? (uint16_t)rc : (uint16_t)HIL_E_INVOKE_FAILED;
        msg[HIL_MSG_MAX] = '\0';
        send_error(core, seq, HIL_T_DUMP, code, msg[0] != '\0' ? msg : "dump failed (platform gave no reason)");
        return;
    }
    p = tx_payload(core);
    put_u16(p, (uint16_t)sink.sent);
    send_frame(core, HIL_T_DUMP_END, seq, 2);
}

/* ---- OP_PROFILE: per-op cycles of one inference (docs/protocol.md §12) ---- */

typedef struct {
    hil_core_t *core;
    uint32_t count;
} op_sink_t;

/* Packs each op's record straight into the OP_TIMES payload after its 12-byte header. */
static int op_sink(void *sink_ctx, uint16_t op_index, uint16_t builtin_code, uint32_t cycles)
{
    op_sink_t *s = (op_sink_t *)sink_ctx;
    uint8_t *p;

    if (s->count >= HIL_MAX_OP_TIMES) {
        s->count = HIL_MAX_OP_TIMES + 1u; /* remembered: the answer becomes an error */
        return -1;
    }
    p = tx_payload(s->core) + HIL_OP_TIMES_HEADER_BYTES + s->count * HIL_OP_TIME_BYTES;
    put_u16(p, op_index);
    put_u16(p + 2, builtin_code);
    put_u32(p + 4, cycles);
    s->count++;
    return 0;
}

static void on_op_profile(hil_core_t *core, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_port_t *port = core->port;
    char msg[HIL_MSG_MAX + 1u];
    uint64_t cycles = 0;
    op_sink_t sink;
    uint8_t *p;
    int rc;
    text_t t;

    if (!input_acceptable(core, seq, HIL_T_OP_PROFILE, n)) {
        return;
    }
    sink.core = core;
    sink.count = 0;
    msg[0] = '\0';
    rc = port->profile(port->ctx, pl, n, op_sink, &sink, &cycles, msg, (uint32_t)sizeof msg);
    if (rc == 0 && sink.count > HIL_MAX_OP_TIMES) {
        t = start_text(core);
        text_add(&t, "model has more than ");
        text_add_u32(&t, HIL_MAX_OP_TIMES);
        text_add(&t, " ops, more than one OP_TIMES frame carries");
        send_error_in_place(core, seq, HIL_T_OP_PROFILE, HIL_E_INVOKE_FAILED);
        return;
    }
    if (rc != 0) {
        uint16_t code = (rc > 0 && rc <= HIL_E_ARENA_TOO_SMALL) ? (uint16_t)rc : (uint16_t)HIL_E_INVOKE_FAILED;
        msg[HIL_MSG_MAX] = '\0';
        send_error(core, seq, HIL_T_OP_PROFILE, code, msg[0] != '\0' ? msg : "profile failed (platform gave no reason)");
        return;
    }
    p = tx_payload(core);
    put_u16(p, (uint16_t)sink.count);
    put_u16(p + 2, 0);
    put_u64(p + 4, cycles);
    send_frame(core, HIL_T_OP_TIMES, seq, HIL_OP_TIMES_HEADER_BYTES + sink.count * HIL_OP_TIME_BYTES);
}

/* ---- STATS: device health (docs/protocol.md §13) ---- */

#define STATS_ACK_BYTES 32u

static void on_stats(hil_core_t *core, uint16_t seq)
{
    const hil_port_t *port = core->port;
    hil_health_t h;
    uint8_t *p;

    memset(&h, 0, sizeof h);
    h.stack_high_water = h.stack_size = HIL_UNKNOWN_U32;
    h.heap_internal_free = h.heap_internal_min_free = h.psram_free = HIL_UNKNOWN_U32;
    if (port->health(port->ctx, &h) != 0) {
        send_error(core, seq, HIL_T_STATS, HIL_E_INVOKE_FAILED, "platform could not read its health figures");
        return;
    }
    p = tx_payload(core);
    memset(p, 0, STATS_ACK_BYTES);
    p[0] = h.source;
    put_u32(p + 4, h.stack_high_water);
    put_u32(p + 8, h.stack_size);
    put_u32(p + 12, h.heap_internal_free);
    put_u32(p + 16, h.heap_internal_min_free);
    put_u32(p + 20, h.psram_free);
    put_u32(p + 24, core->model_state == HIL_MODEL_LOADED ? core->model.arena_used : 0u);
    put_u32(p + 28, port->info.arena_size);
    send_frame(core, HIL_T_STATS_ACK, seq, STATS_ACK_BYTES);
}

/* Returns 1 when the platform was reset and the caller must not touch the core or the input any more. */
static int dispatch(hil_core_t *core, uint8_t type, uint16_t seq, const uint8_t *pl, uint32_t n)
{
    const hil_port_t *port = core->port;
    text_t t;

    switch (type) {
    case HIL_T_HELLO:
        on_hello(core, seq, pl, n);
        return 0;
    case HIL_T_MODEL_BEGIN:
        on_model_begin(core, seq, pl, n);
        return 0;
    case HIL_T_MODEL_CHUNK:
        on_model_chunk(core, seq, pl, n);
        return 0;
    case HIL_T_MODEL_END:
        on_model_end(core, seq);
        return 0;
    case HIL_T_INFER:
        on_infer(core, seq, pl, n);
        return 0;
    case HIL_T_DUMP:
        if (port->dump == NULL) {
            break; /* refused below, as any type this device does not handle */
        }
        on_dump(core, seq, pl, n);
        return 0;
    case HIL_T_OP_PROFILE:
        if (port->profile == NULL) {
            break;
        }
        on_op_profile(core, seq, pl, n);
        return 0;
    case HIL_T_STATS:
        if (port->health == NULL) {
            break;
        }
        on_stats(core, seq);
        return 0;
    case HIL_T_RESET:
        send_empty(core, HIL_T_RESET_ACK, seq);
        /* Bytes after RESET would be lost on a real board too, so they are dropped even without a hook. */
        if (port->reset != NULL) {
            port->reset(port->ctx);
        }
        return 1;
    default:
        break;
    }
    t = start_text(core);
    text_add(&t, "request type 0x");
    text_add_hex8(&t, type);
    text_add(&t, type == HIL_T_DUMP ? " (DUMP) is not supported by this firmware"
                 : type == HIL_T_OP_PROFILE ? " (OP_PROFILE) is not supported by this firmware"
                 : type == HIL_T_STATS ? " (STATS) is not supported by this firmware"
                                       : " is unknown");
    send_error_in_place(core, seq, type, HIL_E_UNKNOWN_TYPE);
    return 0;
}

/* ---- receive ---- */

/* Decoded length of a COBS candidate without writing it, or -1 when its code bytes overrun the data, so a
 * body that is too long is told apart (NAK bad length) from one that is malformed (NAK bad COBS). The
 * candidate holds no zero bytes by construction. */
static long cobs_decoded_len(const uint8_t *in, uint32_t len)
{
    uint32_t i = 0;
    long n = 0;
    while (i < len) {
        uint8_t code = in[i++];
        uint32_t run = (uint32_t)code - 1u;
        if (run > len - i) {
            return -1;
        }
        i += run;
        n += (long)run;
        if (code != 0xFFu && i < len) {
            n++;
        }
    }
    return n;
}

/* Returns 1 when feeding must stop (RESET). */
static int on_candidate(hil_core_t *core, uint32_t wire_len)
{
    uint8_t reason = 0;
    long body_len = 0;
    uint16_t seq;

    if (wire_len > sizeof core->rx) {
        reason = HIL_NAK_BAD_LENGTH;
    } else {
        body_len = cobs_decoded_len(core->rx, wire_len);
        if (body_len < 0) {
            reason = HIL_NAK_BAD_COBS;
        } else if (body_len < (long)(HIL_HEADER_BYTES + HIL_CRC_BYTES) || body_len > (long)HIL_MAX_BODY) {
            reason = HIL_NAK_BAD_LENGTH;
        } else if (hil_cobs_decode(core->rx, wire_len, core->body, sizeof core->body) != body_len) {
            reason = HIL_NAK_BAD_COBS;
        } else if (core->body[0] != HIL_PROTO_VERSION) {
            reason = HIL_NAK_BAD_VERSION;
        } else {
            uint32_t n = (uint32_t)body_len - HIL_CRC_BYTES;
            if (hil_crc32(core->body, n) != get_u32(core->body + n)) {
                reason = HIL_NAK_BAD_CRC;
            }
        }
    }
    if (reason != 0u) {
        core->stats.frames_bad++;
        core->stats.garbage_bytes += wire_len;
        send_nak(core, reason);
        return 0;
    }
    core->stats.frames_ok++;
    seq = (uint16_t)(core->body[2] | (core->body[3] << 8));
    return dispatch(core, core->body[1], seq, core->body + HIL_HEADER_BYTES,
                    (uint32_t)body_len - HIL_HEADER_BYTES - HIL_CRC_BYTES);
}

void hil_core_feed(hil_core_t *core, const uint8_t *data, uint32_t len)
{
    uint32_t i;
    for (i = 0; i < len; i++) {
        uint8_t b = data[i];
        uint32_t wire_len;
        if (b != 0u) {
            /* Keep counting past the buffer so an over-long run is reported with its real size. */
            if (core->rx_len < sizeof core->rx) {
                core->rx[core->rx_len] = b;
            }
            if (core->rx_len < 0xFFFFFFFFu) {
                core->rx_len++;
            }
            continue;
        }
        if (core->rx_len == 0u) {
            continue;
        }
        wire_len = core->rx_len;
        core->rx_len = 0;
        if (on_candidate(core, wire_len)) {
            return;
        }
    }
}
