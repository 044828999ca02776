/*
 * SHA-256 (FIPS 180-4, section 6.2) for verifying an uploaded model against the sha256 the host announced.
 * One-shot over a buffer, because the model store is memory-mapped on every platform; no allocation.
 */
#include "hil_core.h"

#include <string.h>

/* FIPS 180-4 4.2.2: first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t sha_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

/* FIPS 180-4 5.3.3: first 32 bits of the fractional parts of the square roots of the first 8 primes. */
static const uint32_t sha_h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};

static uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32u - n));
}

/* Read big-endian words byte by byte so the result does not depend on the CPU's byte order. */
static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)((v >> 16) & 0xFFu);
    p[2] = (uint8_t)((v >> 8) & 0xFFu);
    p[3] = (uint8_t)(v & 0xFFu);
}

/* One 512-bit block (6.2.2). The 64-word schedule is kept as a 16-word window to save stack. */
static void sha_block(uint32_t h[8], const uint8_t block[64])
{
    uint32_t w[16];
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    unsigned t;

    for (t = 0; t < 16u; t++) {
        w[t] = load_be32(block + 4u * t);
    }
    for (t = 0; t < 64u; t++) {
        uint32_t wt;
        uint32_t t1;
        uint32_t t2;
        if (t < 16u) {
            wt = w[t];
        } else {
            uint32_t w15 = w[(t - 15u) & 15u];
            uint32_t w2 = w[(t - 2u) & 15u];
            uint32_t s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
            uint32_t s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
            wt = s1 + w[(t - 7u) & 15u] + s0 + w[t & 15u];
            w[t & 15u] = wt;
        }
        t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[t] + wt;
        t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

void hil_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    uint32_t h[8];
    uint8_t tail[128];
    size_t full = len / 64u;
    size_t rest = len % 64u;
    size_t tail_len;
    size_t i;
    /* Message length in bits as a 64-bit big-endian number (5.1.1); split so 32-bit size_t cannot overflow. */
    uint32_t bits_hi = (uint32_t)(((uint64_t)len >> 29) & 0xFFFFFFFFu);
    uint32_t bits_lo = (uint32_t)(((uint64_t)len << 3) & 0xFFFFFFFFu);

    memcpy(h, sha_h0, sizeof h);
    for (i = 0; i < full; i++) {
        sha_block(h, data + 64u * i);
    }

    /* Padding: 0x80, zeros, then the length, in one block or two when fewer than 9 bytes are left. */
    memset(tail, 0, sizeof tail);
    if (rest > 0u) {
        memcpy(tail, data + 64u * full, rest);
    }
    tail[rest] = 0x80u;
    tail_len = (rest + 9u <= 64u) ? 64u : 128u;
    store_be32(tail + tail_len - 8u, bits_hi);
    store_be32(tail + tail_len - 4u, bits_lo);
    sha_block(h, tail);
    if (tail_len == 128u) {
        sha_block(h, tail + 64);
    }

    for (i = 0; i < 8u; i++) {
        store_be32(out + 4u * i, h[i]);
    }
}
