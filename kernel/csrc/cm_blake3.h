/* BLAKE3 restricted to inputs of at most one block (64 bytes).
 *
 * Every BLAKE3 input the kernel hashes in a hot loop is short: codes (<= 31 bytes) and the
 * minting domain string (16 bytes). Such an input is one chunk made of one block, so the
 * whole tree collapses to a single compression whose output can be extended by varying the
 * block counter (BLAKE3 spec, section 2.6). Longer inputs (the index file checksum) go to the
 * `blake3` Python package instead of growing this file into a full implementation.
 */
#ifndef CM_BLAKE3_H
#define CM_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

#define CM_B3_KEY_LEN 32
#define CM_B3_BLOCK_LEN 64
#define CM_B3_CHUNK_LEN 1024

#define CM_B3_CHUNK_START 1u
#define CM_B3_CHUNK_END 2u
#define CM_B3_ROOT 8u
#define CM_B3_KEYED_HASH 16u

/* A single-block root node, ready to emit any output block: the chaining value (key words,
 * or the IV for the unkeyed hash), the zero-padded message words, its length and flags. */
typedef struct {
    uint32_t cv[8];
    uint32_t block[16];
    uint32_t block_len;
    uint32_t flags;
} cm_b3_root;

/* Prepare the root of BLAKE3(msg) (key == NULL) or BLAKE3_keyed(key, msg).
 * Returns -1 when msg_len > 64, else 0. */
int cm_b3_root_init(cm_b3_root *root, const uint8_t *key, const uint8_t *msg, size_t msg_len);

/* Output block `counter` of the root (64 bytes of the extendable output). */
void cm_b3_root_block(const cm_b3_root *root, uint64_t counter, uint8_t out[64]);

/* Four consecutive output blocks counter .. counter+3 (256 bytes), computed lane-parallel. */
void cm_b3_root_block4(const cm_b3_root *root, uint64_t counter, uint8_t out[256]);

/* Extendable output bytes [offset, offset + out_len) of the root. */
void cm_b3_root_xof(const cm_b3_root *root, uint64_t offset, uint8_t *out, size_t out_len);

/* Keyed hash of a short message, first out_len <= 32 bytes of output. key_words are the key
 * already loaded as 8 little-endian words so bulk callers parse it once. */
void cm_b3_keyed_short(const uint32_t key_words[8], const uint8_t *msg, size_t msg_len,
                       uint8_t *out, size_t out_len);

/* Keyed digests of n messages of len <= 64 bytes packed back to back: out_len <= 32 bytes
 * each, out is n * out_len bytes. */
void cm_b3_keyed_many(const uint8_t key[32], const uint8_t *msgs, size_t n, size_t len,
                      uint8_t *out, size_t out_len);

/* Unkeyed BLAKE3 of a message of at most one chunk (1024 bytes): the blocks of one chunk
 * chained, the last one as the root (the audit chain's events). Returns -1 when msg_len >
 * 1024 (the caller hashes such a message elsewhere), else 0. */
int cm_b3_hash_chunk(const uint8_t *msg, size_t msg_len, uint8_t out[32]);

/* The key as 8 little-endian words. */
void cm_b3_key_words(const uint8_t key[32], uint32_t words[8]);

#endif
