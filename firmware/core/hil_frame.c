/*
 * Frame codec of the HIL wire protocol (docs/protocol.md): CRC-32, COBS and whole-frame encoding.
 * Byte-for-byte compatible with zlib.crc32 and the Python `cobs` package, which made the golden vectors.
 */
#include "hil_core.h"

#include <string.h>

/*
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) four bits at a time: a 16-entry table is 64 bytes of
 * flash instead of 1 KiB and still does a 4 KiB frame in well under a millisecond on an ESP32.
 * Entry i is the CRC register after shifting the nibble i through four rounds of the bitwise algorithm.
 */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

uint32_t hil_crc32(const uint8_t *data, size_t len)
{
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    }
    return crc ^ 0xFFFFFFFFu;
}

/*
 * Streaming COBS writer, so a frame can be encoded from header, payload and CRC without first copying
 * them into one body buffer. A block that fills up (254 data bytes, code 0xFF) is closed at once but the
 * next one is opened only when another byte arrives: the `cobs` package ends such input without the extra
 * 0x01 block, and the golden vectors follow it.
 */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;
    size_t code_pos;
    uint8_t code;
    uint8_t need_open;
    uint8_t overflow;
} cobs_writer_t;

static void cw_open(cobs_writer_t *w)
{
    if (w->pos >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->code_pos = w->pos++;
    w->code = 1;
    w->need_open = 0;
}

static void cw_start(cobs_writer_t *w, uint8_t *out, size_t cap)
{
    w->out = out;
    w->cap = cap;
    w->pos = 0;
    w->code_pos = 0;
    w->code = 1;
    w->need_open = 0;
    w->overflow = 0;
    cw_open(w);
}

static void cw_put(cobs_writer_t *w, uint8_t b)
{
    if (w->overflow) {
        return;
    }
    if (w->need_open) {
        cw_open(w);
        if (w->overflow) {
            return;
        }
    }
    if (b == 0) {
        w->out[w->code_pos] = w->code;
        cw_open(w);
        return;
    }
    if (w->pos >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->out[w->pos++] = b;
    w->code++;
    if (w->code == 0xFFu) {
        w->out[w->code_pos] = 0xFFu;
        w->need_open = 1;
    }
}

/* Returns the encoded length, or 0 when the output did not fit (a valid encoding is never empty). */
static size_t cw_finish(cobs_writer_t *w)
{
    if (w->overflow) {
        return 0;
    }
    if (!w->need_open) {
        w->out[w->code_pos] = w->code;
    }
    return w->pos;
}

size_t hil_cobs_encode(const uint8_t *in, size_t len, uint8_t *out)
{
    cobs_writer_t w;
    size_t i;
    /* The header promises the caller sized `out` for the worst case, so the cap cannot be hit. */
    cw_start(&w, out, len + len / 254u + 1u);
    for (i = 0; i < len; i++) {
        cw_put(&w, in[i]);
    }
    return cw_finish(&w);
}

long hil_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    size_t i = 0;
    size_t n = 0;
    while (i < len) {
        uint8_t code = in[i++];
        size_t run;
        size_t k;
        if (code == 0) {
            return -1;
        }
        run = (size_t)code - 1u;
        if (run > len - i) {
            return -1;
        }
        if (run > cap - n) {
            return -1;
        }
        for (k = 0; k < run; k++) {
            uint8_t b = in[i + k];
            /* A zero inside the data means the input was cut at the wrong place, not a valid encoding. */
            if (b == 0) {
                return -1;
            }
            out[n++] = b;
        }
        i += run;
        /* A short block stands for its data plus a zero, except at the very end where that zero is implied. */
        if (code != 0xFFu && i < len) {
            if (n >= cap) {
                return -1;
            }
            out[n++] = 0;
        }
    }
    return (long)n;
}

size_t hil_frame_encode(uint8_t type, uint16_t seq, const uint8_t *payload, size_t payload_len, uint8_t *out,
                        size_t cap)
{
    uint8_t header[HIL_HEADER_BYTES];
    uint8_t trailer[HIL_CRC_BYTES];
    cobs_writer_t w;
    uint32_t crc;
    size_t i;
    size_t n;

    if (payload_len > HIL_MAX_PAYLOAD || cap < 3u) {
        return 0;
    }
    header[0] = (uint8_t)HIL_PROTO_VERSION;
    header[1] = type;
    header[2] = (uint8_t)(seq & 0xFFu);
    header[3] = (uint8_t)(seq >> 8);

    /* CRC over header then payload, continued by undoing and redoing the final xor. */
    crc = hil_crc32(header, sizeof header) ^ 0xFFFFFFFFu;
    for (i = 0; i < payload_len; i++) {
        crc ^= payload[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    }
    crc ^= 0xFFFFFFFFu;
    trailer[0] = (uint8_t)(crc & 0xFFu);
    trailer[1] = (uint8_t)((crc >> 8) & 0xFFu);
    trailer[2] = (uint8_t)((crc >> 16) & 0xFFu);
    trailer[3] = (uint8_t)(crc >> 24);

    out[0] = 0;
    cw_start(&w, out + 1, cap - 2u);
    for (i = 0; i < sizeof header; i++) {
        cw_put(&w, header[i]);
    }
    for (i = 0; i < payload_len; i++) {
        cw_put(&w, payload[i]);
    }
    for (i = 0; i < sizeof trailer; i++) {
        cw_put(&w, trailer[i]);
    }
    n = cw_finish(&w);
    if (n == 0) {
        return 0;
    }
    out[n + 1u] = 0;
    return n + 2u;
}
