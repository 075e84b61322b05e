# cython: boundscheck=False, wraparound=False, cdivision=True, auto_pickle=False, autotestdict=False
"""A page of the audit chain read straight from the SQLite file, for the verifier.

``read_page(path, after_id, upto_id)`` opens its own read-only connection (libsqlite3, the
same library the ``sqlite3`` module uses) and steps through ``audit_log`` for ids in
``(after_id, upto_id]`` with the GIL released, copying each column into packed buffers:
no Python object per event, so two reader threads run on two cores. The page is returned
only when it is exactly what the verifier's fast path expects (ids ``after_id + 1`` ..
``after_id + n`` with no gap, 32-byte hashes, integer times); anything else returns None and
the caller reads that range row by row, where the verifier names the fault.

The audit log is append-only: a page bounded by an id the caller's own snapshot has seen
holds the same rows whichever snapshot reads it.
"""

from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint8_t

import numpy as np

include "_sqlite3.pxi"


class AuditReadError(Exception):
    """The database could not be opened or read (not a fault in the chain)."""


cdef const char *_SQL = (
    b"SELECT id, at, actor, action, subject, detail, prev_hash, hash FROM audit_log"
    b" WHERE id > ?1 AND id <= ?2 ORDER BY id"
)

# Outcomes of the nogil loop.
cdef enum:
    PAGE_OK = 0
    PAGE_ODD = 1      # not fast-path shaped: the caller reads it row by row
    PAGE_NOMEM = 2
    PAGE_SQLERR = 3


cdef int _grow(uint8_t **buf, size_t *cap, size_t need) noexcept nogil:
    cdef size_t n = cap[0]
    cdef uint8_t *p
    if need <= n:
        return 0
    while n < need:
        n = n * 2 if n else 4096
    p = <uint8_t *>realloc(buf[0], n)
    if p == NULL:
        return -1
    buf[0], cap[0] = p, n
    return 0


cdef int _walk(
    sqlite3_stmt *stmt, int64_t first, int64_t count,
    int64_t *at, int64_t *offsets, uint8_t *prevs, uint8_t *hashes,
    uint8_t **text, size_t *cap, int64_t *rows,
) noexcept nogil:
    cdef int64_t i = 0, k
    cdef int rc, col, size
    cdef size_t used = 0
    cdef const unsigned char *field
    cdef const void *blob
    offsets[0] = 0
    while True:
        rc = sqlite3_step(stmt)
        if rc == SQLITE_DONE:
            break
        if rc != SQLITE_ROW:
            return PAGE_SQLERR
        if i >= count or sqlite3_column_int64(stmt, 0) != first + i:
            return PAGE_ODD
        if sqlite3_column_type(stmt, 1) != SQLITE_INTEGER:
            return PAGE_ODD
        at[i] = sqlite3_column_int64(stmt, 1)
        for col in range(2, 6):
            if sqlite3_column_type(stmt, col) == SQLITE_NULL:
                return PAGE_ODD
            field = sqlite3_column_text(stmt, col)  # UTF-8, as stored
            size = sqlite3_column_bytes(stmt, col)
            if field == NULL and size:
                return PAGE_NOMEM
            if _grow(text, cap, used + <size_t>size) != 0:
                return PAGE_NOMEM
            if size:
                memcpy(text[0] + used, field, size)
            used += size
            k = 4 * i + (col - 1)
            offsets[k] = <int64_t>used
        for col in range(6, 8):
            if sqlite3_column_type(stmt, col) != SQLITE_BLOB:
                return PAGE_ODD
            blob = sqlite3_column_blob(stmt, col)
            if sqlite3_column_bytes(stmt, col) != 32:
                return PAGE_ODD
            memcpy((prevs if col == 6 else hashes) + 32 * i, blob, 32)
        i += 1
    rows[0] = i
    return PAGE_OK


def read_page(str path, long long after_id, long long upto_id):
    """``(ids, at_us, text, offsets, prev_hashes, hashes)`` of the events with ids in
    ``(after_id, upto_id]``, or None when that range is not a gapless run of well-formed
    rows (the caller then reads it row by row)."""
    if upto_id <= after_id:
        return None
    cdef int64_t count = upto_id - after_id, rows = 0
    cdef sqlite3 *db = NULL
    cdef sqlite3_stmt *stmt = NULL
    cdef uint8_t *text = NULL
    cdef size_t cap = 0
    cdef int rc, outcome
    at = np.empty(count, dtype=np.int64)
    offsets = np.empty(4 * count + 1, dtype=np.int64)
    prevs = bytearray(32 * count)
    hashes = bytearray(32 * count)
    cdef int64_t[::1] at_v = at
    cdef int64_t[::1] off_v = offsets
    cdef unsigned char[::1] prev_v = prevs
    cdef unsigned char[::1] hash_v = hashes
    encoded = path.encode("utf-8")
    cdef const char *cpath = encoded
    try:
        rc = sqlite3_open_v2(cpath, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL)
        if rc != SQLITE_OK:
            raise AuditReadError(f"cannot open {path}: " + (sqlite3_errmsg(db) or b"?").decode())
        sqlite3_busy_timeout(db, 30_000)
        if sqlite3_prepare_v2(db, _SQL, -1, &stmt, NULL) != SQLITE_OK:
            raise AuditReadError(f"cannot read audit_log in {path}: " + sqlite3_errmsg(db).decode())
        sqlite3_bind_int64(stmt, 1, after_id)
        sqlite3_bind_int64(stmt, 2, upto_id)
        with nogil:
            outcome = _walk(
                stmt, after_id + 1, count, &at_v[0], &off_v[0], &prev_v[0], &hash_v[0],
                &text, &cap, &rows,
            )
        if outcome == PAGE_SQLERR:
            raise AuditReadError(f"reading audit_log in {path}: " + sqlite3_errmsg(db).decode())
        if outcome == PAGE_NOMEM:
            raise MemoryError("audit page")
        if outcome == PAGE_ODD or rows == 0:
            return None
        packed = (<char *>text)[: off_v[4 * rows]] if text != NULL else b""
        return (
            np.arange(after_id + 1, after_id + rows + 1, dtype=np.int64),
            at[:rows],
            packed,
            offsets[: 4 * rows + 1],
            bytes(prevs[: 32 * rows]),
            bytes(hashes[: 32 * rows]),
        )
    finally:
        if stmt != NULL:
            sqlite3_finalize(stmt)
        if db != NULL:
            sqlite3_close_v2(db)
        free(text)
