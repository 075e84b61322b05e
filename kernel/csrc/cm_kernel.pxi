# C declarations of kernel/csrc/*.h for _cy.pyx, which pulls them in with `include`.
#
# Not a _cy.pxd: setup.py builds the module as "cardmint.kernel._cy" from kernel/_cy.pyx,
# and Cython looks for that module's .pxd at cardmint/kernel/_cy.pxd, a path this source
# tree does not have, so a same-named .pxd would be silently ignored. `include` resolves
# relative to the .pyx and works however the tree is laid out.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "cm_blake3.h" nogil:
    ctypedef struct cm_b3_root:
        pass
    int cm_b3_root_init(cm_b3_root *root, const uint8_t *key, const uint8_t *msg, size_t msg_len)
    void cm_b3_root_xof(const cm_b3_root *root, uint64_t offset, uint8_t *out, size_t out_len)
    void cm_b3_keyed_many(const uint8_t *key, const uint8_t *msgs, size_t n, size_t length,
                          uint8_t *out, size_t out_len)
    int cm_b3_hash_chunk(const uint8_t *msg, size_t msg_len, uint8_t *out)


cdef extern from "cm_code.h" nogil:
    enum:
        CM_MIN_LEN
        CM_MAX_LEN
        CM_MAX_INPUT
        CM_OK
        CM_EMPTY
        CM_BAD_LENGTH
        CM_BAD_CHAR
        CM_BAD_UTF8
        CM_TOO_LONG
        CM_BAD_CHECK
    const char CM_ALPHABET[33]
    int cm_symbol_value(uint8_t c)
    int cm_check_symbol(const uint8_t *payload, size_t n)
    int cm_code_sum(const uint8_t *code, size_t length)
    void cm_validate(const uint8_t *codes, size_t n, size_t length, uint8_t *out)
    int cm_normalize_one(const uint8_t *s, size_t n, size_t length, uint8_t *out, int *erasure)
    int64_t cm_offsets_check(const uint8_t *offsets, size_t n, size_t data_len)
    void cm_normalize(const uint8_t *data, const uint8_t *offsets, size_t n, size_t length,
                      int check, uint8_t *out, uint8_t *status)
    void cm_display(const uint8_t *codes, size_t n, size_t length, size_t group, uint8_t *out)
    int cm_verhoeff_digit(const uint8_t *digits, size_t n)
    void cm_serials(const uint8_t *prefix, size_t plen, uint64_t start, size_t count,
                    size_t width, uint8_t *out)
    void cm_validate_serials(const uint8_t *serials, size_t n, size_t length, uint8_t *out)
    size_t cm_correction_candidates(const uint8_t *code, size_t length, int erasure,
                                    uint8_t *cands)
    int64_t cm_load_i64le(const uint8_t *p)
    void cm_store_i64le(uint8_t *p, int64_t x)


cdef extern from "cm_mint.h" nogil:
    const uint64_t CM_MINT_MAX_FILL
    ctypedef struct cm_fpset:
        uint64_t count
    ctypedef struct cm_minter:
        size_t len
        size_t r
        int unique
        uint64_t drawn
        uint64_t issued
    int cm_mint_init(cm_minter *m, size_t length, const uint8_t *prefix, size_t plen,
                     const uint8_t *seed, int unique)
    void cm_mint_free(cm_minter *m)
    int cm_mint_fill(cm_minter *m, uint64_t count, uint8_t *out)
    uint64_t cm_mint_nbytes(const cm_minter *m)


cdef extern from "cm_index.h" nogil:
    const uint64_t CM_INDEX_MAX_COUNT
    ctypedef struct cm_index:
        size_t width
        uint64_t count
        uint8_t *digests
    void cm_index_init(cm_index *ix, size_t width)
    void cm_index_free(cm_index *ix)
    int cm_index_insert(cm_index *ix, const uint8_t *d, uint64_t n, int64_t *pos)
    int cm_index_build(cm_index *ix, const uint8_t *d, uint64_t n, uint64_t *first,
                       uint64_t *second)
    void cm_index_lookup(const cm_index *ix, const uint8_t *d, uint64_t n, int64_t *pos)
    uint64_t cm_index_nbytes(const cm_index *ix)


cdef extern from "cm_aead.h" nogil:
    int cm_seal(const uint8_t *key, const uint8_t *codes, size_t n, size_t length,
                const uint8_t *digests, size_t size, const uint8_t *nonces, uint8_t *out)
    int cm_open(const uint8_t *key, const uint8_t *sealed, size_t n, size_t length,
                const uint8_t *digests, size_t size, uint8_t *out, size_t *bad)

