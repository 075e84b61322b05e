#include "cm_index.h"

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define CM_PREFETCH(p) __builtin_prefetch(p)
#else
#define CM_PREFETCH(p) ((void)(p))
#endif

/* Bulk operations look PF_AHEAD rows ahead and prefetch the slot a row will probe first:
 * at 10^7 entries the table is far larger than the caches, and without it every row
 * waits for one (lookups: two) memory round trips in turn. */
#define PF_AHEAD 8

/* Load at most 4/5 of the slots: with tags a probe is a 4-byte read in a line already
 * fetched, and 2^24 slots still hold 10^7 digests (4/5 of 2^24 = 13.4M). */
static inline uint64_t cap_for(uint64_t n, unsigned *bits) {
    unsigned b = 4;
    while (((uint64_t)1 << b) * 4 < n * 5 + 5) b++;
    *bits = b;
    return (uint64_t)1 << b;
}

/* Digests are keyed BLAKE3 output, but the index also takes whatever a caller inserts, so
 * the first (up to) 8 bytes are still mixed (the murmur3 finalizer) before use. */
static inline uint64_t digest_hash(const uint8_t *d, size_t width) {
    uint64_t h = 0;
    size_t n = width < 8 ? width : 8;
    memcpy(&h, d, n);
    h ^= (uint64_t)width;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

void cm_index_init(cm_index *ix, size_t width) {
    memset(ix, 0, sizeof *ix);
    ix->width = width;
}

void cm_index_free(cm_index *ix) {
    free(ix->digests);
    free(ix->slots);
    ix->digests = NULL;
    ix->slots = NULL;
    ix->count = ix->dcap = 0;
    ix->bits = 0;
}

void cm_index_clear(cm_index *ix) { cm_index_free(ix); }

uint64_t cm_index_nbytes(const cm_index *ix) {
    uint64_t t = ix->slots ? ((uint64_t)1 << ix->bits) * sizeof(uint32_t) : 0;
    return ix->dcap * ix->width + t;
}

/* Slot of digest d if present (returns its position), else -1 with *empty = the free slot
 * where it would go. */
static inline int64_t probe(const cm_index *ix, const uint8_t *d, uint64_t h, uint64_t *empty) {
    const uint64_t mask = ((uint64_t)1 << ix->bits) - 1;
    const uint32_t tagmask = (uint32_t)~mask;
    const uint32_t tag = (uint32_t)h & tagmask;
    uint64_t j = (h >> 32) & mask;
    for (;;) {
        uint32_t s = ix->slots[j];
        if (s == 0) {
            *empty = j;
            return -1;
        }
        if ((s & tagmask) == tag) {
            uint64_t p = (uint64_t)(s & (uint32_t)mask) - 1;
            if (memcmp(ix->digests + p * ix->width, d, ix->width) == 0) return (int64_t)p;
        }
        j = (j + 1) & mask;
    }
}

static inline const uint32_t *home_slot(const cm_index *ix, uint64_t h) {
    return ix->slots + ((h >> 32) & (((uint64_t)1 << ix->bits) - 1));
}

static inline void place(cm_index *ix, uint64_t j, uint64_t h, uint64_t p) {
    const uint64_t mask = ((uint64_t)1 << ix->bits) - 1;
    ix->slots[j] = ((uint32_t)h & (uint32_t)~mask) | (uint32_t)(p + 1);
}

/* Make room for `total` digests: the digest array grows by at least half (amortized
 * appends), the table is rebuilt from the digest array when its load would pass 4/5. */
static int reserve(cm_index *ix, uint64_t total, int exact) {
    if (total > CM_INDEX_MAX_COUNT) return -1;
    if (total > ix->dcap) {
        uint64_t ncap = total;
        if (!exact && ncap < ix->dcap + ix->dcap / 2) ncap = ix->dcap + ix->dcap / 2;
        if (ncap > CM_INDEX_MAX_COUNT) ncap = CM_INDEX_MAX_COUNT;
        size_t bytes = (size_t)(ncap * ix->width);
        uint8_t *nd = realloc(ix->digests, bytes > 0 ? bytes : 1);
        if (!nd) return -1;
        ix->digests = nd;
        ix->dcap = ncap;
    }
    unsigned bits;
    uint64_t cap = cap_for(total, &bits);
    if (ix->slots && bits <= ix->bits) return 0;
    uint32_t *ns = calloc(cap, sizeof *ns);
    if (!ns) return -1;
    free(ix->slots);
    ix->slots = ns;
    ix->bits = bits;
    for (uint64_t p = 0; p < ix->count; p++) {
        const uint8_t *d = ix->digests + p * ix->width;
        uint64_t h = digest_hash(d, ix->width), j = 0;
        /* Existing digests are distinct, so this only looks for the free slot. */
        probe(ix, d, h, &j);
        place(ix, j, h, p);
    }
    return 0;
}

int cm_index_insert(cm_index *ix, const uint8_t *d, uint64_t n, int64_t *pos) {
    if (n > CM_INDEX_MAX_COUNT - ix->count) return -1;
    if (reserve(ix, ix->count + n, 0) != 0) return -1;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *di = d + i * ix->width;
        if (i + PF_AHEAD < n) {
            const uint8_t *da = di + PF_AHEAD * ix->width;
            CM_PREFETCH(home_slot(ix, digest_hash(da, ix->width)));
        }
        uint64_t h = digest_hash(di, ix->width), j = 0;
        int64_t p = probe(ix, di, h, &j);
        if (p < 0) {
            p = (int64_t)ix->count;
            memcpy(ix->digests + ix->count * ix->width, di, ix->width);
            place(ix, j, h, ix->count);
            ix->count++;
        }
        pos[i] = p;
    }
    return 0;
}

int cm_index_build(cm_index *ix, const uint8_t *d, uint64_t n, uint64_t *first,
                   uint64_t *second) {
    cm_index_free(ix);
    if (n == 0) return 0;
    if (reserve(ix, n, 1) != 0) {
        cm_index_free(ix);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *di = d + i * ix->width;
        if (i + PF_AHEAD < n) {
            const uint8_t *da = di + PF_AHEAD * ix->width;
            CM_PREFETCH(home_slot(ix, digest_hash(da, ix->width)));
        }
        uint64_t h = digest_hash(di, ix->width), j = 0;
        int64_t p = probe(ix, di, h, &j);
        if (p >= 0) {
            *first = (uint64_t)p;
            *second = i;
            cm_index_free(ix);
            return 1;
        }
        memcpy(ix->digests + i * ix->width, di, ix->width);
        place(ix, j, h, i);
        ix->count++;
    }
    return 0;
}

void cm_index_lookup(const cm_index *ix, const uint8_t *d, uint64_t n, int64_t *pos) {
    if (!ix->slots) {
        for (uint64_t i = 0; i < n; i++) pos[i] = -1;
        return;
    }
    const uint64_t mask = ((uint64_t)1 << ix->bits) - 1;
    const uint32_t tagmask = (uint32_t)~mask;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *di = d + i * ix->width;
        /* Two stages: the slot 2*PF_AHEAD rows ahead, then, once that slot is likely cached,
         * the digest row its entry points at when the tag already matches. */
        if (i + 2 * PF_AHEAD < n)
            CM_PREFETCH(home_slot(ix, digest_hash(di + 2 * PF_AHEAD * ix->width, ix->width)));
        if (i + PF_AHEAD < n) {
            const uint8_t *da = di + PF_AHEAD * ix->width;
            uint64_t ha = digest_hash(da, ix->width);
            uint32_t sa = *home_slot(ix, ha);
            if (sa && (sa & tagmask) == ((uint32_t)ha & tagmask))
                CM_PREFETCH(ix->digests + ((uint64_t)(sa & (uint32_t)mask) - 1) * ix->width);
        }
        uint64_t j = 0;
        pos[i] = probe(ix, di, digest_hash(di, ix->width), &j);
    }
}
