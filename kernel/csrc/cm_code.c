#include "cm_code.h"

#include <string.h>

#include "normtable.h"

const char CM_ALPHABET[33] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Constant tables, derived from sections 1-3 (a table lookup beats branching in every
 * per-byte loop):
 *   SYM_VALUE   canonical ASCII byte -> symbol value, 255 for anything else;
 *   NORM_ASCII  byte -> what normalization makes of it: the canonical symbol byte (upper-cased,
 *               O/I/L aliased), 'U' (bad, or the erasure), NB_DROP, NB_BAD, or NB_MULTI for
 *               the lead/continuation bytes of a multi-byte UTF-8 sequence;
 *   POW_A       a^k in GF(32) = GF(2)[x]/(x^5 + x^2 + 1), a = x;
 *   WEIGHTED    a^k * v, so a code's sum is an XOR of independent lookups;
 *   GF_INV      multiplicative inverses. */
#define NB_BAD 0
#define NB_DROP 1
#define NB_MULTI 2
static const uint8_t SYM_VALUE[256] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 255, 255, 255, 255, 255,
    255, 10, 11, 12, 13, 14, 15, 16, 17, 255, 18, 19, 255, 20, 21, 255,
    22, 23, 24, 25, 26, 255, 27, 28, 29, 30, 31, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
};
static const uint8_t NORM_ASCII[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0,
    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 0, 0, 0, 0, 0, 0,
    0, 65, 66, 67, 68, 69, 70, 71, 72, 49, 74, 75, 49, 77, 78, 48,
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 0, 0, 0, 0, 0,
    0, 65, 66, 67, 68, 69, 70, 71, 72, 49, 74, 75, 49, 77, 78, 48,
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 0, 0, 0, 0, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};
static const uint8_t POW_A[31] = {
    1, 2, 4, 8, 16, 5, 10, 20, 13, 26, 17, 7, 14, 28, 29, 31,
    27, 19, 3, 6, 12, 24, 21, 15, 30, 25, 23, 11, 22, 9, 18,
};
/* WEIGHTED[k * 32 + v] = a^k * v (k = 31 wraps to a^0, never used for L <= 31) */
static const uint8_t WEIGHTED[1024] = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
    0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 5, 7, 1, 3, 13, 15, 9, 11, 21, 23, 17, 19, 29, 31, 25, 27,
    0, 4, 8, 12, 16, 20, 24, 28, 5, 1, 13, 9, 21, 17, 29, 25, 10, 14, 2, 6, 26, 30, 18, 22, 15, 11, 7, 3, 31, 27, 23, 19,
    0, 8, 16, 24, 5, 13, 21, 29, 10, 2, 26, 18, 15, 7, 31, 23, 20, 28, 4, 12, 17, 25, 1, 9, 30, 22, 14, 6, 27, 19, 11, 3,
    0, 16, 5, 21, 10, 26, 15, 31, 20, 4, 17, 1, 30, 14, 27, 11, 13, 29, 8, 24, 7, 23, 2, 18, 25, 9, 28, 12, 19, 3, 22, 6,
    0, 5, 10, 15, 20, 17, 30, 27, 13, 8, 7, 2, 25, 28, 19, 22, 26, 31, 16, 21, 14, 11, 4, 1, 23, 18, 29, 24, 3, 6, 9, 12,
    0, 10, 20, 30, 13, 7, 25, 19, 26, 16, 14, 4, 23, 29, 3, 9, 17, 27, 5, 15, 28, 22, 8, 2, 11, 1, 31, 21, 6, 12, 18, 24,
    0, 20, 13, 25, 26, 14, 23, 3, 17, 5, 28, 8, 11, 31, 6, 18, 7, 19, 10, 30, 29, 9, 16, 4, 22, 2, 27, 15, 12, 24, 1, 21,
    0, 13, 26, 23, 17, 28, 11, 6, 7, 10, 29, 16, 22, 27, 12, 1, 14, 3, 20, 25, 31, 18, 5, 8, 9, 4, 19, 30, 24, 21, 2, 15,
    0, 26, 17, 11, 7, 29, 22, 12, 14, 20, 31, 5, 9, 19, 24, 2, 28, 6, 13, 23, 27, 1, 10, 16, 18, 8, 3, 25, 21, 15, 4, 30,
    0, 17, 7, 22, 14, 31, 9, 24, 28, 13, 27, 10, 18, 3, 21, 4, 29, 12, 26, 11, 19, 2, 20, 5, 1, 16, 6, 23, 15, 30, 8, 25,
    0, 7, 14, 9, 28, 27, 18, 21, 29, 26, 19, 20, 1, 6, 15, 8, 31, 24, 17, 22, 3, 4, 13, 10, 2, 5, 12, 11, 30, 25, 16, 23,
    0, 14, 28, 18, 29, 19, 1, 15, 31, 17, 3, 13, 2, 12, 30, 16, 27, 21, 7, 9, 6, 8, 26, 20, 4, 10, 24, 22, 25, 23, 5, 11,
    0, 28, 29, 1, 31, 3, 2, 30, 27, 7, 6, 26, 4, 24, 25, 5, 19, 15, 14, 18, 12, 16, 17, 13, 8, 20, 21, 9, 23, 11, 10, 22,
    0, 29, 31, 2, 27, 6, 4, 25, 19, 14, 12, 17, 8, 21, 23, 10, 3, 30, 28, 1, 24, 5, 7, 26, 16, 13, 15, 18, 11, 22, 20, 9,
    0, 31, 27, 4, 19, 12, 8, 23, 3, 28, 24, 7, 16, 15, 11, 20, 6, 25, 29, 2, 21, 10, 14, 17, 5, 26, 30, 1, 22, 9, 13, 18,
    0, 27, 19, 8, 3, 24, 16, 11, 6, 29, 21, 14, 5, 30, 22, 13, 12, 23, 31, 4, 15, 20, 28, 7, 10, 17, 25, 2, 9, 18, 26, 1,
    0, 19, 3, 16, 6, 21, 5, 22, 12, 31, 15, 28, 10, 25, 9, 26, 24, 11, 27, 8, 30, 13, 29, 14, 20, 7, 23, 4, 18, 1, 17, 2,
    0, 3, 6, 5, 12, 15, 10, 9, 24, 27, 30, 29, 20, 23, 18, 17, 21, 22, 19, 16, 25, 26, 31, 28, 13, 14, 11, 8, 1, 2, 7, 4,
    0, 6, 12, 10, 24, 30, 20, 18, 21, 19, 25, 31, 13, 11, 1, 7, 15, 9, 3, 5, 23, 17, 27, 29, 26, 28, 22, 16, 2, 4, 14, 8,
    0, 12, 24, 20, 21, 25, 13, 1, 15, 3, 23, 27, 26, 22, 2, 14, 30, 18, 6, 10, 11, 7, 19, 31, 17, 29, 9, 5, 4, 8, 28, 16,
    0, 24, 21, 13, 15, 23, 26, 2, 30, 6, 11, 19, 17, 9, 4, 28, 25, 1, 12, 20, 22, 14, 3, 27, 7, 31, 18, 10, 8, 16, 29, 5,
    0, 21, 15, 26, 30, 11, 17, 4, 25, 12, 22, 3, 7, 18, 8, 29, 23, 2, 24, 13, 9, 28, 6, 19, 14, 27, 1, 20, 16, 5, 31, 10,
    0, 15, 30, 17, 25, 22, 7, 8, 23, 24, 9, 6, 14, 1, 16, 31, 11, 4, 21, 26, 18, 29, 12, 3, 28, 19, 2, 13, 5, 10, 27, 20,
    0, 30, 25, 7, 23, 9, 14, 16, 11, 21, 18, 12, 28, 2, 5, 27, 22, 8, 15, 17, 1, 31, 24, 6, 29, 3, 4, 26, 10, 20, 19, 13,
    0, 25, 23, 14, 11, 18, 28, 5, 22, 15, 1, 24, 29, 4, 10, 19, 9, 16, 30, 7, 2, 27, 21, 12, 31, 6, 8, 17, 20, 13, 3, 26,
    0, 23, 11, 28, 22, 1, 29, 10, 9, 30, 2, 21, 31, 8, 20, 3, 18, 5, 25, 14, 4, 19, 15, 24, 27, 12, 16, 7, 13, 26, 6, 17,
    0, 11, 22, 29, 9, 2, 31, 20, 18, 25, 4, 15, 27, 16, 13, 6, 1, 10, 23, 28, 8, 3, 30, 21, 19, 24, 5, 14, 26, 17, 12, 7,
    0, 22, 9, 31, 18, 4, 27, 13, 1, 23, 8, 30, 19, 5, 26, 12, 2, 20, 11, 29, 16, 6, 25, 15, 3, 21, 10, 28, 17, 7, 24, 14,
    0, 9, 18, 27, 1, 8, 19, 26, 2, 11, 16, 25, 3, 10, 17, 24, 4, 13, 22, 31, 5, 12, 23, 30, 6, 15, 20, 29, 7, 14, 21, 28,
    0, 18, 1, 19, 2, 16, 3, 17, 4, 22, 5, 23, 6, 20, 7, 21, 8, 26, 9, 27, 10, 24, 11, 25, 12, 30, 13, 31, 14, 28, 15, 29,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
};
static const uint8_t GF_INV[32] = {
    0, 1, 18, 28, 9, 23, 14, 12, 22, 4, 25, 16, 7, 15, 6, 13,
    11, 24, 2, 29, 30, 26, 8, 5, 17, 10, 21, 31, 3, 19, 20, 27,
};

int cm_symbol_value(uint8_t c) { return SYM_VALUE[c] == 255 ? -1 : (int)SYM_VALUE[c]; }

/* Carry-less product reduced by x^5 + x^2 + 1; scalar paths only, hot loops use WEIGHTED. */
unsigned cm_gf_mul(unsigned x, unsigned y) {
    unsigned r = 0;
    x &= 31;
    y &= 31;
    while (y) {
        if (y & 1) r ^= x;
        y >>= 1;
        x <<= 1;
        if (x & 32) x ^= 0x25;
    }
    return r;
}

unsigned cm_gf_inv(unsigned x) { return GF_INV[x & 31]; }

unsigned cm_gf_pow_a(unsigned k) { return POW_A[k % 31]; }

/* Sum of section 2.1 over symbol values; the weight of position i is a^(n-1-i). The lookups
 * are independent of one another, unlike Horner's rule, so they pipeline. */
static inline unsigned weighted_sum(const uint8_t *vals, size_t n) {
    unsigned acc = 0;
    for (size_t i = 0; i < n; i++) acc ^= WEIGHTED[(n - 1 - i) * 32 + vals[i]];
    return acc;
}

int cm_code_sum(const uint8_t *code, size_t len) {
    unsigned acc = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t v = SYM_VALUE[code[i]];
        if (v == 255) return -1;
        acc ^= WEIGHTED[(len - 1 - i) * 32 + v];
    }
    return (int)acc;
}

int cm_check_symbol(const uint8_t *payload, size_t n) {
    /* The check symbol has weight a^0 and the payload weights a^n .. a^1, so the check is the
     * sum of the payload taken as a code of length n + 1 with a zero last symbol. */
    unsigned acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t v = SYM_VALUE[payload[i]];
        if (v == 255) return -1;
        acc ^= WEIGHTED[(n - i) * 32 + v];
    }
    return (unsigned char)CM_ALPHABET[acc];
}

void cm_validate(const uint8_t *codes, size_t n, size_t len, uint8_t *out) {
    for (size_t k = 0; k < n; k++) {
        const uint8_t *c = codes + k * len;
        unsigned acc = 0, bad = 0;
        for (size_t i = 0; i < len; i++) {
            unsigned v = SYM_VALUE[c[i]];
            bad |= v;
            acc ^= WEIGHTED[(len - 1 - i) * 32 + (v & 31)];
        }
        out[k] = (uint8_t)(((bad & 0x80) == 0) & (acc == 0));
    }
}

/* ---- strict UTF-8 (Unicode 14, table 3-7; identical to CPython's strict decoder) ---- */

/* Decode the sequence starting at s[*i] (a byte >= 0x80). On success stores the code point,
 * advances *i and returns 0; returns -1 for any ill-formed or truncated sequence. */
static inline int utf8_decode(const uint8_t *s, size_t n, size_t *i, uint32_t *cp) {
    size_t p = *i;
    uint8_t b0 = s[p];
    uint8_t lo = 0x80, hi = 0xBF;
    size_t need;
    uint32_t c;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        c = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;      /* overlong */
        else if (b0 == 0xED) hi = 0x9F; /* surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        c = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;      /* overlong */
        else if (b0 == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        return -1; /* continuation byte, C0/C1 or F5..FF as a lead */
    }
    if (n - p - 1 < need) return -1;
    uint8_t b1 = s[p + 1];
    if (b1 < lo || b1 > hi) return -1;
    c = (c << 6) | (b1 & 0x3F);
    for (size_t k = 2; k <= need; k++) {
        uint8_t b = s[p + k];
        if (b < 0x80 || b > 0xBF) return -1;
        c = (c << 6) | (b & 0x3F);
    }
    *cp = c;
    *i = p + 1 + need;
    return 0;
}

static int utf8_valid(const uint8_t *s, size_t n, size_t i) {
    uint32_t cp;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
        } else if (utf8_decode(s, n, &i, &cp) != 0) {
            return 0;
        }
    }
    return 1;
}

static int is_ignorable(uint32_t cp) {
    size_t lo = 0, hi = CM_IGNORABLE_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < CM_IGNORABLE[mid][0]) hi = mid;
        else if (cp > CM_IGNORABLE[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static long mapped_index(uint32_t cp) {
    size_t lo = 0, hi = CM_MAPPED_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < CM_MAPPED_CP[mid]) hi = mid;
        else if (cp > CM_MAPPED_CP[mid]) lo = mid + 1;
        else return (long)mid;
    }
    return -1;
}

int cm_normalize_one(const uint8_t *s, size_t n, size_t len, uint8_t *out, int *erasure) {
    size_t count = 0, i = 0;
    long er = -1;
    int status;
    if (erasure) *erasure = -1;
    if (n > CM_MAX_INPUT) return CM_TOO_LONG;
    while (i < n) {
        uint8_t k = NORM_ASCII[s[i]];
        if (k > NB_MULTI) {
            if (k == 'U') {
                if (!erasure || er >= 0) goto bad_char;
                er = (long)count;
            }
            if (count < len) out[count] = k;
            count++;
            i++;
            continue;
        }
        if (k == NB_DROP) {
            i++;
            continue;
        }
        if (k == NB_BAD) {
            i++;
            goto bad_char;
        }
        uint32_t cp;
        if (utf8_decode(s, n, &i, &cp) != 0) {
            status = CM_BAD_UTF8;
            goto fail;
        }
        if (is_ignorable(cp)) continue;
        long m = mapped_index(cp);
        if (m < 0) goto bad_char;
        for (unsigned j = CM_MAPPED_OFF[m]; j < CM_MAPPED_OFF[m + 1]; j++) {
            /* Table entries are upper-case ASCII letters and digits, so NORM_ASCII only adds
             * the O/I/L aliases and flags 'U'. */
            uint8_t km = NORM_ASCII[(uint8_t)CM_MAPPED_CHARS[j]];
            if (km == 'U') {
                if (!erasure || er >= 0) goto bad_char;
                er = (long)count;
            }
            if (count < len) out[count] = km;
            count++;
        }
    }
    if (count == 0) {
        status = CM_EMPTY;
        goto fail;
    }
    if (count != len) {
        status = CM_BAD_LENGTH;
        goto fail;
    }
    if (erasure) *erasure = (int)er;
    return CM_OK;

bad_char:
    /* BAD_UTF8 outranks BAD_CHAR, so the rest of the input must still be decoded. */
    status = utf8_valid(s, n, i) ? CM_BAD_CHAR : CM_BAD_UTF8;
fail:
    memset(out, 0, len);
    if (erasure) *erasure = -1;
    return status;
}

int64_t cm_offsets_check(const uint8_t *offsets, size_t n, size_t data_len) {
    int64_t prev = 0;
    for (size_t k = 0; k <= n; k++) {
        int64_t o = cm_load_i64le(offsets + 8 * k);
        if (o < prev || (uint64_t)o > (uint64_t)data_len) return (int64_t)k;
        prev = o;
    }
    return -1;
}

void cm_normalize(const uint8_t *data, const uint8_t *offsets, size_t n, size_t len, int check,
                  uint8_t *out, uint8_t *status) {
    int64_t start = cm_load_i64le(offsets);
    for (size_t k = 0; k < n; k++) {
        uint8_t *o = out + k * len;
        int64_t end = cm_load_i64le(offsets + 8 * (k + 1));
        int st = cm_normalize_one(data + start, (size_t)(end - start), len, o, NULL);
        start = end;
        if (st == CM_OK && check) {
            unsigned acc = 0;
            for (size_t i = 0; i < len; i++) acc ^= WEIGHTED[(len - 1 - i) * 32 + SYM_VALUE[o[i]]];
            if (acc != 0) st = CM_BAD_CHECK;
        }
        status[k] = (uint8_t)st;
    }
}

void cm_display(const uint8_t *codes, size_t n, size_t len, size_t group, uint8_t *out) {
    size_t row = len + (len - 1) / group;
    for (size_t k = 0; k < n; k++) {
        const uint8_t *c = codes + k * len;
        uint8_t *o = out + k * row;
        size_t w = 0;
        for (size_t i = 0; i < len; i++) {
            if (i && i % group == 0) o[w++] = '-';
            o[w++] = c[i];
        }
    }
}

/* ---- Verhoeff (section 7): tables expanded from the formulas given there ---- */

static const uint8_t VH_D[10][10] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 2, 3, 4, 0, 6, 7, 8, 9, 5},
    {2, 3, 4, 0, 1, 7, 8, 9, 5, 6}, {3, 4, 0, 1, 2, 8, 9, 5, 6, 7},
    {4, 0, 1, 2, 3, 9, 5, 6, 7, 8}, {5, 9, 8, 7, 6, 0, 4, 3, 2, 1},
    {6, 5, 9, 8, 7, 1, 0, 4, 3, 2}, {7, 6, 5, 9, 8, 2, 1, 0, 4, 3},
    {8, 7, 6, 5, 9, 3, 2, 1, 0, 4}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
};
static const uint8_t VH_P[8][10] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 5, 7, 6, 2, 8, 3, 0, 9, 4},
    {5, 8, 0, 3, 7, 9, 6, 1, 4, 2}, {8, 9, 1, 6, 0, 4, 3, 5, 2, 7},
    {9, 4, 5, 3, 1, 2, 6, 8, 7, 0}, {4, 2, 8, 6, 5, 7, 3, 9, 0, 1},
    {2, 7, 9, 3, 8, 0, 6, 4, 1, 5}, {7, 0, 4, 6, 9, 1, 3, 2, 5, 8},
};
static const uint8_t VH_INV[10] = {0, 4, 3, 2, 1, 5, 6, 7, 8, 9};

int cm_verhoeff_digit(const uint8_t *digits, size_t n) {
    unsigned c = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)digits[n - 1 - i] - '0';
        if (d > 9) return -1;
        c = VH_D[c][VH_P[(i + 1) % 8][d]];
    }
    return VH_INV[c];
}

void cm_serials(const uint8_t *prefix, size_t plen, uint64_t start, size_t count, size_t width,
                uint8_t *out) {
    size_t row = plen + width + 1;
    for (size_t k = 0; k < count; k++) {
        uint8_t *o = out + k * row;
        uint64_t v = start + k;
        memcpy(o, prefix, plen);
        for (size_t j = 0; j < width; j++) {
            o[plen + width - 1 - j] = (uint8_t)('0' + v % 10);
            v /= 10;
        }
        o[row - 1] = (uint8_t)('0' + cm_verhoeff_digit(o, row - 1));
    }
}

void cm_validate_serials(const uint8_t *serials, size_t n, size_t len, uint8_t *out) {
    for (size_t k = 0; k < n; k++) {
        const uint8_t *s = serials + k * len;
        unsigned c = 0, ok = 1;
        for (size_t i = 0; i < len; i++) {
            unsigned d = (unsigned)s[len - 1 - i] - '0';
            if (d > 9) {
                ok = 0;
                break;
            }
            c = VH_D[c][VH_P[i % 8][d]];
        }
        out[k] = (uint8_t)(ok && c == 0);
    }
}

/* ---- correction (section 8) ---- */

static int lookalike(uint8_t x, uint8_t y) {
    static const char PAIRS[][2] = {{'8', 'B'}, {'5', 'S'}, {'2', 'Z'}, {'6', 'G'}, {'0', 'D'},
                                    {'0', 'Q'}, {'1', 'J'}, {'1', '7'}, {'M', 'N'}, {'V', 'Y'}};
    for (size_t i = 0; i < sizeof PAIRS / sizeof PAIRS[0]; i++) {
        if ((x == (uint8_t)PAIRS[i][0] && y == (uint8_t)PAIRS[i][1]) ||
            (x == (uint8_t)PAIRS[i][1] && y == (uint8_t)PAIRS[i][0]))
            return 1;
    }
    return 0;
}

size_t cm_correction_candidates(const uint8_t *code, size_t len, int erasure, uint8_t *cands) {
    uint8_t vals[CM_MAX_LEN];
    uint8_t sub[CM_MAX_LEN]; /* the fixing symbol per position */
    uint8_t is_sub[CM_MAX_LEN], is_look[CM_MAX_LEN], is_swap[CM_MAX_LEN];
    size_t nc = 0;
    for (size_t i = 0; i < len; i++) vals[i] = (int)i == erasure ? 0 : SYM_VALUE[code[i]];
    unsigned s = weighted_sum(vals, len);
    for (size_t i = 0; i < len; i++) {
        is_sub[i] = is_look[i] = is_swap[i] = 0;
        if (erasure >= 0 && (int)i != erasure) continue;
        /* Replacing v by x changes the sum by a^k (v ^ x); that cancels s for exactly one x. */
        unsigned x = vals[i] ^ cm_gf_mul(s, GF_INV[POW_A[(len - 1 - i) % 31]]);
        if (erasure < 0 && x == vals[i]) continue; /* s == 0: nothing to fix */
        is_sub[i] = 1;
        sub[i] = (uint8_t)CM_ALPHABET[x];
        is_look[i] = (int)i == erasure || lookalike(code[i], sub[i]);
    }
    if (erasure < 0) {
        for (size_t i = 0; i + 1 < len; i++) {
            unsigned u = vals[i], v = vals[i + 1];
            if (u == v) continue;
            unsigned delta = WEIGHTED[(len - 1 - i) * 32 + (u ^ v)] ^
                             WEIGHTED[(len - 2 - i) * 32 + (u ^ v)];
            is_swap[i] = (s ^ delta) == 0;
        }
    }
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < len; i++) {
            uint8_t *c = cands + nc * len;
            if (pass == 1) {
                if (!is_swap[i]) continue;
                memcpy(c, code, len);
                c[i] = code[i + 1];
                c[i + 1] = code[i];
            } else {
                if (!is_sub[i] || is_look[i] != (pass == 0)) continue;
                memcpy(c, code, len);
                c[i] = sub[i];
            }
            nc++;
        }
    }
    return nc;
}
