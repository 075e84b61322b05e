/* Single-block BLAKE3, written from the BLAKE3 specification (O'Connor, Aumasson, Neves,
 * Wilcox-O'Hearn, 2020), sections 2.2 (compression function) and 2.6 (extendable output). */
#include "cm_blake3.h"

#include <string.h>

static const uint32_t B3_IV[8] = {
    0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
    0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u,
};

/* The 7 rounds, with each round's message word order (the spec's permutation applied r
 * times) written out as constants so that every message word is a fixed register or
 * offset instead of a table lookup. G is the mixing function, scalar or 4-lane. */
#define B3_ROUND(G, v, m, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) \
    do {                                                                                    \
        G(v, 0, 4, 8, 12, m[s0], m[s1]);                                                    \
        G(v, 1, 5, 9, 13, m[s2], m[s3]);                                                    \
        G(v, 2, 6, 10, 14, m[s4], m[s5]);                                                   \
        G(v, 3, 7, 11, 15, m[s6], m[s7]);                                                   \
        G(v, 0, 5, 10, 15, m[s8], m[s9]);                                                   \
        G(v, 1, 6, 11, 12, m[s10], m[s11]);                                                 \
        G(v, 2, 7, 8, 13, m[s12], m[s13]);                                                  \
        G(v, 3, 4, 9, 14, m[s14], m[s15]);                                                  \
    } while (0)
#define B3_ROUNDS(G, v, m) \
    do {               \
        B3_ROUND(G, v, m, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \
        B3_ROUND(G, v, m, 2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8); \
        B3_ROUND(G, v, m, 3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1); \
        B3_ROUND(G, v, m, 10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6); \
        B3_ROUND(G, v, m, 12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4); \
        B3_ROUND(G, v, m, 9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7); \
        B3_ROUND(G, v, m, 11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13); \
    } while (0)

static inline uint32_t rotr32(uint32_t w, unsigned c) { return (w >> c) | (w << (32 - c)); }

static inline uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline void store32(uint8_t *p, uint32_t w) {
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

#define B3_G(v, a, b, c, d, mx, my)           \
    do {                                      \
        v[a] = v[a] + v[b] + (mx);            \
        v[d] = rotr32(v[d] ^ v[a], 16);       \
        v[c] = v[c] + v[d];                   \
        v[b] = rotr32(v[b] ^ v[c], 12);       \
        v[a] = v[a] + v[b] + (my);            \
        v[d] = rotr32(v[d] ^ v[a], 8);        \
        v[c] = v[c] + v[d];                   \
        v[b] = rotr32(v[b] ^ v[c], 7);        \
    } while (0)

/* The compression function; `full` selects whether the second half of the output (only
 * needed past byte 32 of the extendable output) is computed. */
static inline void b3_compress(const uint32_t cv[8], const uint32_t m[16], uint64_t counter,
                               uint32_t block_len, uint32_t flags, uint32_t out[16], int full) {
    uint32_t v[16];
    for (int i = 0; i < 8; i++) v[i] = cv[i];
    v[8] = B3_IV[0];
    v[9] = B3_IV[1];
    v[10] = B3_IV[2];
    v[11] = B3_IV[3];
    v[12] = (uint32_t)counter;
    v[13] = (uint32_t)(counter >> 32);
    v[14] = block_len;
    v[15] = flags;
    B3_ROUNDS(B3_G, v, m);
    for (int i = 0; i < 8; i++) out[i] = v[i] ^ v[i + 8];
    if (full)
        for (int i = 0; i < 8; i++) out[i + 8] = v[i + 8] ^ cv[i];
}

/* Four compressions side by side: state word i of lane l is lane l of v[i]. The chaining
 * value and flags are shared, message words, counters and lengths are per lane. With SSE2
 * (every x86-64) a lane is a 32-bit element of one register; elsewhere the lanes simply run
 * one after the other through the scalar function. out[i][l] = output word i of lane l
 * (all 16 words). */
#if defined(__SSE2__)
#include <emmintrin.h>

static inline __m128i rotr16_x4(__m128i x) {
    return _mm_shufflehi_epi16(_mm_shufflelo_epi16(x, 0xB1), 0xB1);
}
#define ROTR_X4(x, c) _mm_or_si128(_mm_srli_epi32((x), (c)), _mm_slli_epi32((x), 32 - (c)))

#define B3_G4(v, a, b, c, d, mx, my)                                      \
    do {                                                                  \
        v[a] = _mm_add_epi32(_mm_add_epi32(v[a], v[b]), (mx));            \
        v[d] = rotr16_x4(_mm_xor_si128(v[d], v[a]));                      \
        v[c] = _mm_add_epi32(v[c], v[d]);                                 \
        v[b] = ROTR_X4(_mm_xor_si128(v[b], v[c]), 12);                    \
        v[a] = _mm_add_epi32(_mm_add_epi32(v[a], v[b]), (my));            \
        v[d] = ROTR_X4(_mm_xor_si128(v[d], v[a]), 8);                     \
        v[c] = _mm_add_epi32(v[c], v[d]);                                 \
        v[b] = ROTR_X4(_mm_xor_si128(v[b], v[c]), 7);                     \
    } while (0)

static void b3_compress4(const uint32_t cv[8], uint32_t m[16][4], const uint64_t ctr[4],
                         const uint32_t block_len[4], uint32_t flags, uint32_t out[16][4]) {
    __m128i v[16], mm[16], h[8];
    for (int i = 0; i < 16; i++) mm[i] = _mm_loadu_si128((const __m128i *)m[i]);
    for (int i = 0; i < 8; i++) v[i] = h[i] = _mm_set1_epi32((int)cv[i]);
    for (int i = 0; i < 4; i++) v[8 + i] = _mm_set1_epi32((int)B3_IV[i]);
    v[12] = _mm_setr_epi32((int)(uint32_t)ctr[0], (int)(uint32_t)ctr[1], (int)(uint32_t)ctr[2],
                           (int)(uint32_t)ctr[3]);
    v[13] = _mm_setr_epi32((int)(uint32_t)(ctr[0] >> 32), (int)(uint32_t)(ctr[1] >> 32),
                           (int)(uint32_t)(ctr[2] >> 32), (int)(uint32_t)(ctr[3] >> 32));
    v[14] = _mm_loadu_si128((const __m128i *)block_len);
    v[15] = _mm_set1_epi32((int)flags);
    B3_ROUNDS(B3_G4, v, mm);
    for (int i = 0; i < 8; i++) {
        _mm_storeu_si128((__m128i *)out[i], _mm_xor_si128(v[i], v[i + 8]));
        _mm_storeu_si128((__m128i *)out[i + 8], _mm_xor_si128(v[i + 8], h[i]));
    }
}
#else
static void b3_compress4(const uint32_t cv[8], uint32_t m[16][4], const uint64_t ctr[4],
                         const uint32_t block_len[4], uint32_t flags, uint32_t out[16][4]) {
    for (int l = 0; l < 4; l++) {
        uint32_t ml[16], o[16];
        for (int i = 0; i < 16; i++) ml[i] = m[i][l];
        b3_compress(cv, ml, ctr[l], block_len[l], flags, o, 1);
        for (int i = 0; i < 16; i++) out[i][l] = o[i];
    }
}
#endif

void cm_b3_key_words(const uint8_t key[32], uint32_t words[8]) {
    for (int i = 0; i < 8; i++) words[i] = load32(key + 4 * i);
}

static void load_block(const uint8_t *msg, size_t msg_len, uint32_t m[16]) {
    uint8_t buf[CM_B3_BLOCK_LEN];
    memset(buf, 0, sizeof buf);
    if (msg_len) memcpy(buf, msg, msg_len);
    for (int i = 0; i < 16; i++) m[i] = load32(buf + 4 * i);
}

int cm_b3_root_init(cm_b3_root *root, const uint8_t *key, const uint8_t *msg, size_t msg_len) {
    if (msg_len > CM_B3_BLOCK_LEN) return -1;
    if (key) {
        cm_b3_key_words(key, root->cv);
        root->flags = CM_B3_CHUNK_START | CM_B3_CHUNK_END | CM_B3_ROOT | CM_B3_KEYED_HASH;
    } else {
        memcpy(root->cv, B3_IV, sizeof B3_IV);
        root->flags = CM_B3_CHUNK_START | CM_B3_CHUNK_END | CM_B3_ROOT;
    }
    load_block(msg, msg_len, root->block);
    root->block_len = (uint32_t)msg_len;
    return 0;
}

void cm_b3_root_block(const cm_b3_root *root, uint64_t counter, uint8_t out[64]) {
    uint32_t w[16];
    b3_compress(root->cv, root->block, counter, root->block_len, root->flags, w, 1);
    for (int i = 0; i < 16; i++) store32(out + 4 * i, w[i]);
}

void cm_b3_root_block4(const cm_b3_root *root, uint64_t counter, uint8_t out[256]) {
    uint32_t m[16][4], o[16][4], len[4];
    uint64_t ctr[4];
    for (int l = 0; l < 4; l++) {
        for (int i = 0; i < 16; i++) m[i][l] = root->block[i];
        ctr[l] = counter + (uint64_t)l;
        len[l] = root->block_len;
    }
    b3_compress4(root->cv, m, ctr, len, root->flags, o);
    for (int l = 0; l < 4; l++)
        for (int i = 0; i < 16; i++) store32(out + 64 * l + 4 * i, o[i][l]);
}

void cm_b3_root_xof(const cm_b3_root *root, uint64_t offset, uint8_t *out, size_t out_len) {
    uint64_t counter = offset / CM_B3_BLOCK_LEN;
    size_t skip = (size_t)(offset % CM_B3_BLOCK_LEN);
    uint8_t block[CM_B3_BLOCK_LEN];
    while (out_len > 0) {
        cm_b3_root_block(root, counter, block);
        size_t take = CM_B3_BLOCK_LEN - skip;
        if (take > out_len) take = out_len;
        memcpy(out, block + skip, take);
        out += take;
        out_len -= take;
        skip = 0;
        counter++;
    }
}

void cm_b3_keyed_short(const uint32_t key_words[8], const uint8_t *msg, size_t msg_len,
                       uint8_t *out, size_t out_len) {
    uint32_t m[16], w[16];
    uint8_t bytes[32];
    load_block(msg, msg_len, m);
    b3_compress(key_words, m, 0, (uint32_t)msg_len,
                CM_B3_CHUNK_START | CM_B3_CHUNK_END | CM_B3_ROOT | CM_B3_KEYED_HASH, w, 0);
    for (int i = 0; i < 8; i++) store32(bytes + 4 * i, w[i]);
    memcpy(out, bytes, out_len);
}

void cm_b3_keyed_many(const uint8_t key[32], const uint8_t *msgs, size_t n, size_t len,
                      uint8_t *out, size_t out_len) {
    const uint32_t flags = CM_B3_CHUNK_START | CM_B3_CHUNK_END | CM_B3_ROOT | CM_B3_KEYED_HASH;
    uint32_t kw[8], m[16][4], o[16][4], lens[4];
    uint64_t ctr[4] = {0, 0, 0, 0};
    uint8_t bytes[32];
    size_t i = 0;
    cm_b3_key_words(key, kw);
    for (int l = 0; l < 4; l++) lens[l] = (uint32_t)len;
    /* Four messages per compress4 call: each lane hashes its own code, counter 0. */
    for (; i + 4 <= n; i += 4) {
        for (int l = 0; l < 4; l++) {
            uint8_t buf[CM_B3_BLOCK_LEN];
            memset(buf, 0, sizeof buf);
            memcpy(buf, msgs + (i + (size_t)l) * len, len);
            for (int w = 0; w < 16; w++) m[w][l] = load32(buf + 4 * w);
        }
        b3_compress4(kw, m, ctr, lens, flags, o);
        for (int l = 0; l < 4; l++) {
            for (int w = 0; w < 8; w++) store32(bytes + 4 * w, o[w][l]);
            memcpy(out + (i + (size_t)l) * out_len, bytes, out_len);
        }
    }
    for (; i < n; i++) cm_b3_keyed_short(kw, msgs + i * len, len, out + i * out_len, out_len);
}

int cm_b3_hash_chunk(const uint8_t *msg, size_t msg_len, uint8_t out[32]) {
    if (msg_len > CM_B3_CHUNK_LEN) return -1;
    uint32_t cv[8], m[16], w[16];
    memcpy(cv, B3_IV, sizeof B3_IV);
    size_t blocks = msg_len ? (msg_len + CM_B3_BLOCK_LEN - 1) / CM_B3_BLOCK_LEN : 1;
    for (size_t b = 0; b < blocks; b++) {
        size_t at = b * CM_B3_BLOCK_LEN;
        size_t len = msg_len - at < CM_B3_BLOCK_LEN ? msg_len - at : CM_B3_BLOCK_LEN;
        uint32_t flags = (b == 0 ? CM_B3_CHUNK_START : 0u) |
                         (b == blocks - 1 ? CM_B3_CHUNK_END | CM_B3_ROOT : 0u);
        load_block(msg + at, len, m);
        b3_compress(cv, m, 0, (uint32_t)len, flags, w, 0);
        memcpy(cv, w, sizeof cv);
    }
    for (int i = 0; i < 8; i++) store32(out + 4 * i, cv[i]);
    return 0;
}
