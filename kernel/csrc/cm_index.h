/* In-memory hash index of fixed-width digests (the Index of kernel/_protocol.py).
 *
 * Digests live back to back in insertion order, so a position is a row number and the
 * digest array is exactly what the index file stores. The table is open addressing with
 * linear probing over 32-bit slots: a slot holds position + 1 in its low `bits` bits
 * (capacity = 2^bits > count, so it fits) and, in the bits above, a tag taken from the
 * digest's hash. The tag rejects almost every non-matching slot without touching the
 * digest array, which is what keeps probes cheap at ~16 + 4..8 bytes per entry. */
#ifndef CM_INDEX_H
#define CM_INDEX_H

#include <stddef.h>
#include <stdint.h>

/* Positions must fit below the smallest slot capacity that holds them at 4/5 load. */
#define CM_INDEX_MAX_COUNT 3435973835ull /* largest n with 5n + 5 <= 4 * 2^32 */

typedef struct {
    size_t width;
    uint64_t count;    /* digests stored */
    uint64_t dcap;     /* digest rows allocated */
    uint8_t *digests;  /* dcap * width bytes */
    uint32_t *slots;   /* 2^bits entries, or NULL while empty */
    unsigned bits;
} cm_index;

void cm_index_init(cm_index *ix, size_t width);
void cm_index_free(cm_index *ix);
void cm_index_clear(cm_index *ix);

/* Insert n digests in order, pos[i] = position of each (existing ones keep theirs).
 * 0, or -1 when out of memory / past CM_INDEX_MAX_COUNT (then nothing was inserted). */
int cm_index_insert(cm_index *ix, const uint8_t *d, uint64_t n, int64_t *pos);

/* Fill an empty index. 0; 1 when row *second repeats row *first (the lowest such second
 * row), the index then left empty; -1 out of memory / too many (index left empty). */
int cm_index_build(cm_index *ix, const uint8_t *d, uint64_t n, uint64_t *first,
                   uint64_t *second);

void cm_index_lookup(const cm_index *ix, const uint8_t *d, uint64_t n, int64_t *pos);

uint64_t cm_index_nbytes(const cm_index *ix);

#endif
