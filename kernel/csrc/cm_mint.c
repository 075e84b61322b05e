#include "cm_mint.h"

#include <stdlib.h>
#include <string.h>

#include "cm_code.h"

/* The CSPRNG message of section 4 (16 bytes; the array's terminating NUL is not hashed). */
static const char MINT_DOMAIN[] = "cardmint mint v1";

/* ---- fingerprint set ---- */

/* Fingerprints of short payloads are small integers with structure in the low bits, so mix
 * before taking the top bits as the slot (Fibonacci hashing after a xor-shift). */
static inline uint64_t fp_slot(uint64_t fp, uint64_t mask) {
    fp ^= fp >> 31;
    fp *= 0x9E3779B97F4A7C15ull;
    return (fp >> 17) & mask;
}

static int fpset_grow(cm_fpset *s, uint64_t need) {
    /* Keep the load at most 3/4: linear probing stays short and the table costs about
     * 11-21 bytes per fingerprint, in line with the section 4 estimate. */
    uint64_t cap = s->mask + 1;
    if (s->slots && need * 4 <= cap * 3) return 0;
    uint64_t ncap = s->slots ? cap : 1024;
    while (need * 4 > ncap * 3) ncap *= 2;
    uint64_t *ns = calloc(ncap, sizeof *ns);
    if (!ns) return -1;
    uint64_t nmask = ncap - 1;
    if (s->slots) {
        for (uint64_t i = 0; i < cap; i++) {
            uint64_t fp = s->slots[i];
            if (!fp) continue;
            uint64_t j = fp_slot(fp, nmask);
            while (ns[j]) j = (j + 1) & nmask;
            ns[j] = fp;
        }
        free(s->slots);
    }
    s->slots = ns;
    s->mask = nmask;
    return 0;
}

/* Insert; 1 when new, 0 when already there. Capacity was reserved by the caller. */
static inline int fpset_add(cm_fpset *s, uint64_t fp) {
    if (fp == 0) {
        if (s->has_zero) return 0;
        s->has_zero = 1;
        return 1;
    }
    uint64_t j = fp_slot(fp, s->mask);
    for (;;) {
        uint64_t v = s->slots[j];
        if (v == fp) return 0;
        if (v == 0) {
            s->slots[j] = fp;
            s->count++;
            return 1;
        }
        j = (j + 1) & s->mask;
    }
}

/* ---- minter ---- */

int cm_mint_init(cm_minter *m, size_t len, const uint8_t *prefix, size_t plen,
                 const uint8_t seed[32], int unique) {
    memset(m, 0, sizeof *m);
    if (len < CM_MIN_LEN || len > CM_MAX_LEN || plen + 2 > len) return -1;
    m->len = len;
    m->plen = plen;
    m->r = len - plen - 1;
    m->draw_bytes = (5 * m->r + 7) / 8;
    m->unique = unique;
    memcpy(m->prefix, prefix, plen);
    /* The check symbol is the sum of a^(len-1-i) s[i] over i < len-1; the prefix part of it
     * never changes, so it is computed once. */
    unsigned acc = 0;
    for (size_t i = 0; i < plen; i++) {
        int v = cm_symbol_value(prefix[i]);
        if (v < 0) return -1;
        acc ^= cm_gf_mul(cm_gf_pow_a((unsigned)(len - 1 - i)), (unsigned)v);
    }
    m->prefix_sum = acc;
    for (size_t j = 0; j < m->r; j++)
        for (unsigned v = 0; v < 32; v++)
            m->weights[j][v] = (uint8_t)cm_gf_mul(cm_gf_pow_a((unsigned)(len - 1 - plen - j)), v);
    cm_b3_root_init(&m->root, seed, (const uint8_t *)MINT_DOMAIN, sizeof MINT_DOMAIN - 1);
    return 0;
}

void cm_mint_free(cm_minter *m) {
    free(m->set.slots);
    m->set.slots = NULL;
    m->set.mask = 0;
    m->set.count = 0;
}

uint64_t cm_mint_nbytes(const cm_minter *m) {
    return m->set.slots ? (m->set.mask + 1) * sizeof(uint64_t) : 0;
}

/* Pointer to stream bytes [off, off + n) (n <= 64), refilling the window when needed. */
static inline const uint8_t *stream_at(cm_minter *m, uint64_t off, size_t n) {
    if (!m->buf_valid || off < m->buf_base || off + n > m->buf_base + sizeof m->buf) {
        uint64_t block = off / CM_B3_BLOCK_LEN;
        m->buf_base = block * CM_B3_BLOCK_LEN;
        for (size_t b = 0; b < CM_MINT_BUF_BLOCKS; b += 4)
            cm_b3_root_block4(&m->root, block + b, m->buf + b * CM_B3_BLOCK_LEN);
        m->buf_valid = 1;
    }
    return m->buf + (off - m->buf_base);
}

static inline uint64_t load_be64(const uint8_t *p) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* One unaligned load and a byte swap; the portable loop below is not always fused. */
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap64(v);
#else
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) v = (v << 8) | p[k];
    return v;
#endif
}

#if defined(__GNUC__)
#define CM_PREFETCH(p) __builtin_prefetch(p, 1, 1)
#else
#define CM_PREFETCH(p) ((void)(p))
#endif

/* Draws are examined in batches so that, in unique mode, the fingerprint slots of a whole
 * batch can be prefetched before the (strictly sequential) set insertions walk them: the
 * set outgrows the caches long before a big run ends, and a miss per draw would dominate.
 * Draws of a batch left unused when the fill completes are simply not consumed. */
#define MINT_BATCH 32

int cm_mint_fill(cm_minter *m, uint64_t count, uint8_t *out) {
    const size_t len = m->len, plen = m->plen, r = m->r, B = m->draw_bytes;
    /* Each draw sits zero-padded in 32 bytes: an 8-byte big-endian read at any symbol's
     * first byte (at most byte 18) stays inside, and padding bits are never selected. */
    uint8_t x[MINT_BATCH][32];
    uint64_t fp[MINT_BATCH];
    if (m->unique && fpset_grow(&m->set, m->set.count + count + 1) != 0) return -1;
    uint64_t done = 0;
    while (done < count) {
        uint64_t want = count - done;
        size_t nb = want < MINT_BATCH ? (size_t)want : MINT_BATCH;
        for (size_t k = 0; k < nb; k++) {
            memset(x[k], 0, sizeof x[k]);
            memcpy(x[k], stream_at(m, (m->drawn + k) * B, B), B);
        }
        if (m->unique) {
            for (size_t k = 0; k < nb; k++) {
                /* Fingerprint: the payload V (top 5r bits of the draw) when 5r <= 64 (then
                 * B <= 8), else the top 64 bits of V, which are the draw's first 8 bytes. */
                uint64_t top = load_be64(x[k]);
                fp[k] = 5 * r > 64 ? top : top >> (64 - 5 * r);
                CM_PREFETCH(&m->set.slots[fp_slot(fp[k], m->set.mask)]);
            }
        }
        for (size_t k = 0; k < nb && done < count; k++) {
            m->drawn++;
            if (m->unique && !fpset_add(&m->set, fp[k])) continue;
            uint8_t *o = out + done * len;
            unsigned acc = m->prefix_sum;
            memcpy(o, m->prefix, plen);
            for (size_t j = 0; j < r; j++) {
                size_t bit = 5 * j;
                unsigned v = (unsigned)(load_be64(x[k] + (bit >> 3)) >> (59 - (bit & 7))) & 31;
                o[plen + j] = (uint8_t)CM_ALPHABET[v];
                acc ^= m->weights[j][v];
            }
            o[len - 1] = (uint8_t)CM_ALPHABET[acc];
            done++;
        }
    }
    m->issued += count;
    return 0;
}
