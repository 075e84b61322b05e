/* Codes: alphabet, GF(32) check symbol, normalization, display form, Verhoeff serials and
 * the candidate generation of correction (docs/code-format.md sections 1-3, 7 and 8).
 * Everything here is pure computation on caller-owned buffers: no allocation, no globals
 * that change, safe to call without the GIL. */
#ifndef CM_CODE_H
#define CM_CODE_H

#include <stddef.h>
#include <stdint.h>

#define CM_MIN_LEN 4
#define CM_MAX_LEN 31
#define CM_MAX_INPUT 1024

/* Normalization / check statuses (section 3.1). */
enum {
    CM_OK = 0,
    CM_EMPTY = 1,
    CM_BAD_LENGTH = 2,
    CM_BAD_CHAR = 3,
    CM_BAD_UTF8 = 4,
    CM_TOO_LONG = 5,
    CM_BAD_CHECK = 6,
};

extern const char CM_ALPHABET[33];

/* Symbol value of a canonical ASCII byte, or -1. */
int cm_symbol_value(uint8_t c);

/* GF(32) helpers: product, and the sum of section 2.1 over n symbol values (Horner). */
unsigned cm_gf_mul(unsigned x, unsigned y);
unsigned cm_gf_inv(unsigned x);
unsigned cm_gf_pow_a(unsigned k);

/* Check symbol (ASCII) of canonical `payload`, or -1 when a byte is not a symbol. */
int cm_check_symbol(const uint8_t *payload, size_t n);

/* Weighted sum of a canonical code (ASCII), or -1 when a byte is not a symbol. */
int cm_code_sum(const uint8_t *code, size_t len);

/* out[i] = 1 when codes[i*len .. +len) is all symbols with a zero sum. */
void cm_validate(const uint8_t *codes, size_t n, size_t len, uint8_t *out);

/* Normalize one input into `out` (len bytes). Returns a status of section 3.1 (never
 * CM_BAD_CHECK). When `erasure` is non-NULL, normalization is lenient (section 8): one `U`
 * is kept as the symbol 'U' and its symbol index stored in *erasure (-1 when none). On any
 * status but CM_OK, `out` is left zeroed. */
int cm_normalize_one(const uint8_t *s, size_t n, size_t len, uint8_t *out, int *erasure);

/* Little-endian 64-bit loads and stores at any alignment (buffers come from Python). */
static inline int64_t cm_load_i64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = (v << 8) | p[k];
    return (int64_t)v;
}
static inline void cm_store_i64le(uint8_t *p, int64_t x) {
    uint64_t v = (uint64_t)x;
    for (int k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (8 * k));
}

/* Check packed-strings offsets (n + 1 int64 LE entries): each >= 0, non-decreasing, the
 * last <= data_len. Returns -1 when they are fine, else the index of the first bad entry. */
int64_t cm_offsets_check(const uint8_t *offsets, size_t n, size_t data_len);

/* Bulk normalize (check != 0: then BAD_CHECK for a wrong check symbol), rows given by
 * offsets that passed cm_offsets_check. out is n*len bytes. */
void cm_normalize(const uint8_t *data, const uint8_t *offsets, size_t n, size_t len, int check,
                  uint8_t *out, uint8_t *status);

/* Display form: '-' after every `group` symbols (group >= 1). */
void cm_display(const uint8_t *codes, size_t n, size_t len, size_t group, uint8_t *out);

/* Verhoeff (section 7). */
int cm_verhoeff_digit(const uint8_t *digits, size_t n); /* check digit value, -1 if not digits */
void cm_serials(const uint8_t *prefix, size_t plen, uint64_t start, size_t count, size_t width,
                uint8_t *out);
void cm_validate_serials(const uint8_t *serials, size_t n, size_t len, uint8_t *out);

/* Correction candidates (section 8) of a normalized code `code` (len symbols, possibly one
 * 'U' at `erasure`, else erasure == -1) whose sum is not zero or that has an erasure.
 * Writes up to 2*len candidates, already in the order of section 8, into cands (len bytes
 * each) and returns their number. */
size_t cm_correction_candidates(const uint8_t *code, size_t len, int erasure, uint8_t *cands);

#endif
