/* The minting CSPRNG and its unique-mode fingerprint set (docs/code-format.md section 4). */
#ifndef CM_MINT_H
#define CM_MINT_H

#include <stddef.h>
#include <stdint.h>

#include "cm_blake3.h"
#include "cm_code.h"

#define CM_MINT_MAX_FILL (1ull << 27)
#define CM_MINT_BUF_BLOCKS 16 /* stream window, refilled 4 blocks per compress4 */
#if CM_MINT_BUF_BLOCKS % 4 != 0
#error "CM_MINT_BUF_BLOCKS must be a multiple of 4"
#endif

/* Open-addressing (linear probing) set of 64-bit fingerprints. 0 marks an empty slot, so the
 * fingerprint 0 (a legitimate value) is tracked by its own flag. */
typedef struct {
    uint64_t *slots;
    uint64_t mask;  /* capacity - 1, capacity a power of two (0 when unallocated) */
    uint64_t count; /* non-zero fingerprints stored */
    int has_zero;
} cm_fpset;

typedef struct {
    cm_b3_root root;     /* BLAKE3_keyed(seed, "cardmint mint v1") */
    uint8_t prefix[32];
    size_t len, plen, r; /* code length, prefix symbols, payload symbols */
    size_t draw_bytes;   /* B = ceil(5r / 8) */
    unsigned prefix_sum; /* prefix contribution to the check symbol */
    uint8_t weights[CM_MAX_LEN][32]; /* payload symbol j with value v adds weights[j][v] */
    int unique;
    uint64_t drawn, issued;
    /* window of the output stream: bytes [buf_base, buf_base + sizeof buf) */
    uint64_t buf_base;
    int buf_valid;
    uint8_t buf[CM_B3_BLOCK_LEN * CM_MINT_BUF_BLOCKS];
    cm_fpset set;
} cm_minter;

/* Returns 0, or -1 when the arguments break section 4 (caller validated them already). */
int cm_mint_init(cm_minter *m, size_t len, const uint8_t *prefix, size_t plen,
                 const uint8_t seed[32], int unique);
void cm_mint_free(cm_minter *m);

/* Fill out with the next `count` codes. Returns 0, or -1 when memory for the fingerprint
 * set could not be had (the minter is then unchanged: no draw or code is consumed). */
int cm_mint_fill(cm_minter *m, uint64_t count, uint8_t *out);

/* Bytes of memory held by the fingerprint set. */
uint64_t cm_mint_nbytes(const cm_minter *m);

#endif
