#include "cm_aead.h"

#include <limits.h>
#include <openssl/evp.h>

/* One context serves the whole batch: the key is set once and each record only
 * re-initializes with its nonce, which is all EVP needs between messages. The cipher is
 * fetched explicitly once per batch: with OpenSSL 3 the legacy EVP_chacha20_poly1305()
 * handle makes re-initializations go through an implicit provider fetch again. */

static EVP_CIPHER *fetch_cipher(void) {
    return EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

int cm_seal(const uint8_t key[32], const uint8_t *codes, size_t n, size_t len,
            const uint8_t *digests, size_t size, const uint8_t *nonces, uint8_t *out) {
    int rc = -1, outl;
    const size_t rec = len + CM_NONCE_LEN + CM_TAG_LEN;
    uint8_t scratch[32]; /* Final emits no bytes for this stream cipher; never write past out */
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    EVP_CIPHER *cipher = fetch_cipher();
    if (!ctx || !cipher || len > INT_MAX || size > INT_MAX) goto done;
    if (EVP_EncryptInit_ex(ctx, cipher, NULL, key, NULL) != 1) goto done;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *nonce = nonces + i * CM_NONCE_LEN;
        uint8_t *o = out + i * rec;
        if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) goto done;
        if (EVP_EncryptUpdate(ctx, NULL, &outl, digests + i * size, (int)size) != 1) goto done;
        if (EVP_EncryptUpdate(ctx, o + CM_NONCE_LEN, &outl, codes + i * len, (int)len) != 1)
            goto done;
        if (EVP_EncryptFinal_ex(ctx, scratch, &outl) != 1) goto done;
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, CM_TAG_LEN, o + CM_NONCE_LEN + len) !=
            1)
            goto done;
        for (size_t k = 0; k < CM_NONCE_LEN; k++) o[k] = nonce[k];
    }
    rc = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(cipher);
    return rc;
}

int cm_open(const uint8_t key[32], const uint8_t *sealed, size_t n, size_t len,
            const uint8_t *digests, size_t size, uint8_t *out, size_t *bad) {
    int rc = -1, outl;
    const size_t rec = len + CM_NONCE_LEN + CM_TAG_LEN;
    uint8_t tag[CM_TAG_LEN], scratch[32];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    EVP_CIPHER *cipher = fetch_cipher();
    if (!ctx || !cipher || len > INT_MAX || size > INT_MAX) goto done;
    if (EVP_DecryptInit_ex(ctx, cipher, NULL, key, NULL) != 1) goto done;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *r = sealed + i * rec;
        if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, r) != 1) goto done;
        if (EVP_DecryptUpdate(ctx, NULL, &outl, digests + i * size, (int)size) != 1) goto done;
        if (EVP_DecryptUpdate(ctx, out + i * len, &outl, r + CM_NONCE_LEN, (int)len) != 1)
            goto done;
        /* The ctrl takes a non-const buffer, so the tag is copied out of the input. */
        for (size_t k = 0; k < CM_TAG_LEN; k++) tag[k] = r[CM_NONCE_LEN + len + k];
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, CM_TAG_LEN, tag) != 1) goto done;
        if (EVP_DecryptFinal_ex(ctx, scratch, &outl) != 1) {
            *bad = i;
            rc = 1;
            goto done;
        }
    }
    rc = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(cipher);
    return rc;
}
