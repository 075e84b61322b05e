/* Sealing (docs/code-format.md section 6): ChaCha20-Poly1305 (RFC 8439) via OpenSSL EVP. */
#ifndef CM_AEAD_H
#define CM_AEAD_H

#include <stddef.h>
#include <stdint.h>

#define CM_NONCE_LEN 12
#define CM_TAG_LEN 16

/* Seal n codes of len bytes; record i = nonce | ciphertext | tag (len + 28 bytes), AAD =
 * digest i (size bytes). 0, or -1 when OpenSSL fails (out of memory). */
int cm_seal(const uint8_t key[32], const uint8_t *codes, size_t n, size_t len,
            const uint8_t *digests, size_t size, const uint8_t *nonces, uint8_t *out);

/* Open n records into out (n * len bytes). 0; -1 when OpenSSL fails; else 1 with *bad the
 * lowest record whose tag does not verify. */
int cm_open(const uint8_t key[32], const uint8_t *sealed, size_t n, size_t len,
            const uint8_t *digests, size_t size, uint8_t *out, size_t *bad);

#endif
