# cython: boundscheck=False, wraparound=False, auto_pickle=False, autotestdict=False, language_level=3
"""The write transaction's statements, run on the ``sqlite3`` module's own connection
without letting go of the GIL.

The ``sqlite3`` module releases the GIL around every prepare and step. On the group
commit's leader that is the wrong trade: a statement inside an open transaction takes a few
microseconds (the pages are cached; nothing is written before COMMIT), while taking the GIL
back afterwards means waiting behind every other thread of a busy server, a context switch
each time, a dozen times per unit, with every caller of the batch waiting on the leader.
``Writer.execute`` prepares (once, cached), binds, steps and reads the rows of one statement
holding the GIL throughout. BEGIN, COMMIT (the fsync) and everything outside the leader
still go through the ``sqlite3`` module, which lets go of the GIL for them.

A reader connection gets a ``Writer(..., reader=True)``: the same trade for the short
queries of a read snapshot (BEGIN, a lookup by key, ROLLBACK), each a few microseconds on
cached pages. A query that turns out long must not hold every other thread up, so a reader's
statement runs under a budget of SQLite VM instructions (``READ_BUDGET``) and without the
busy timeout; past the budget, or when the file is busy, it is interrupted and
``FallbackError`` says so: a query changes nothing, and the sqlite3 module runs it again in
the same snapshot, letting go of the GIL while it steps.

It works on the connection's ``sqlite3 *`` handle, the first field after the object header
of CPython's connection object (``Modules/_sqlite/connection.h``, 3.11 to 3.13). ``Writer``
checks that handle before trusting it: the same libsqlite3 as the ``sqlite3`` module, the
database file and the transaction state as the connection reports them; when anything
differs, ``Writer`` refuses to be made (``WriterUnavailableError``) and the caller keeps the
``sqlite3`` module's path. Errors are raised as the ``sqlite3`` module raises them: the same
exception classes, messages and ``sqlite_errorcode``.
"""

import os
import sqlite3 as _sqlite3
import sys

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

include "_sqlite3.pxi"


class WriterUnavailableError(Exception):
    """This connection's handle cannot be trusted here: use the sqlite3 module instead."""


class FallbackError(Exception):
    """This statement or its parameters are not for the fast path (several statements, a
    parameter of a type only the sqlite3 module's adapters know): run it there instead."""


# CPython's connection object starts with the object header, then ``sqlite3 *db``.
cdef struct _ConnectionHead:
    Py_ssize_t ob_refcnt
    void *ob_type
    sqlite3 *db

# The sqlite3 module's exception class for each primary result code (its _pysqlite_seterror).
cdef dict _CLASSES = {
    2: _sqlite3.InternalError,  # SQLITE_INTERNAL
    12: _sqlite3.InternalError,  # SQLITE_NOTFOUND
    19: _sqlite3.IntegrityError,  # SQLITE_CONSTRAINT
    20: _sqlite3.IntegrityError,  # SQLITE_MISMATCH
    21: _sqlite3.InterfaceError,  # SQLITE_MISUSE
    25: _sqlite3.InterfaceError,  # SQLITE_RANGE
    11: _sqlite3.DatabaseError,  # SQLITE_CORRUPT
    18: _sqlite3.DataError,  # SQLITE_TOOBIG
}
cdef set _OPERATIONAL = {1, 3, 4, 5, 6, 8, 9, 10, 13, 14, 15, 16, 17}
# A reader's statement may run this many SQLite VM instructions holding the GIL (counted
# in steps of _BUDGET_STEP, across all its rows); past that it goes to the sqlite3 module.
# A lookup by key takes a few hundred.
cdef enum:
    _BUDGET_STEP = 1000
READ_BUDGET = 20_000
cdef int _read_steps = READ_BUDGET // _BUDGET_STEP
_MAX_STATEMENTS = 512  # cached prepared statements; all dropped when full (dynamic IN lists)


cdef object _error(sqlite3 *db, int rc):
    """The sqlite3 module's exception for a failure whose code is ``rc``."""
    cdef int code = sqlite3_extended_errcode(db)
    cdef int primary = code & 0xFF
    if primary == 0:
        code = rc
        primary = rc & 0xFF
    if primary == 7:  # SQLITE_NOMEM
        return MemoryError()
    cls = _CLASSES.get(primary)
    if cls is None:
        cls = _sqlite3.OperationalError if primary in _OPERATIONAL else _sqlite3.DatabaseError
    exc = cls(sqlite3_errmsg(db).decode("utf-8", "replace"))
    exc.sqlite_errorcode = code
    return exc


cdef int _spend(void *left) noexcept nogil:
    """The progress handler of a reader's statement: interrupts it once its budget is spent."""
    cdef int *n = <int *>left
    n[0] -= 1
    return 1 if n[0] <= 0 else 0


cdef class _Statement:
    cdef sqlite3_stmt *stmt
    cdef int params
    cdef int columns
    cdef bint readonly

    def __dealloc__(self):
        if self.stmt != NULL:
            sqlite3_finalize(self.stmt)
            self.stmt = NULL


cdef class Result:
    """What ``execute`` read: the rows (tuples), and ``rowcount`` as the sqlite3 module
    counts it (rows changed by an INSERT/UPDATE/DELETE, -1 for a query)."""

    cdef list _rows
    cdef Py_ssize_t _next
    cdef readonly long long rowcount

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next]
        self._next += 1
        return row

    def fetchall(self):
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        return rows

    def __iter__(self):
        return iter(self.fetchall())


cdef class Writer:
    """Runs statements on ``conn`` (a ``sqlite3.Connection`` on ``path``) holding the GIL.
    One thread at a time, as the connection itself (the group commit's write lock)."""

    cdef object _conn  # keeps the connection, and so its handle, alive
    cdef sqlite3 *_db
    cdef dict _statements
    cdef int _busy_ms
    cdef bint _reader
    cdef int _left  # a reader's statement: budget steps left

    def __cinit__(self, conn, str path, int busy_timeout_ms, *, bint reader=False):
        if type(conn) is not _sqlite3.Connection:
            raise WriterUnavailableError(f"not a sqlite3.Connection: {type(conn).__name__}")
        if not ((3, 11) <= sys.version_info[:2] <= (3, 13)):
            raise WriterUnavailableError(f"connection layout not known for Python {sys.version_info[:2]}")
        if sqlite3_libversion().decode() != _sqlite3.sqlite_version:
            raise WriterUnavailableError(
                f"libsqlite3 {sqlite3_libversion().decode()} here, {_sqlite3.sqlite_version} in the sqlite3 module"
            )
        cdef sqlite3 *db = (<_ConnectionHead *><void *>conn).db
        if db == NULL:
            raise WriterUnavailableError("the connection is closed")
        cdef const char *name = sqlite3_db_filename(db, b"main")
        if name == NULL or os.path.realpath(name.decode()) != os.path.realpath(path):
            raise WriterUnavailableError("the handle does not name this database file")
        if bool(sqlite3_get_autocommit(db)) == bool(conn.in_transaction):
            raise WriterUnavailableError("the handle's transaction state differs from the connection's")
        self._conn = conn
        self._db = db
        self._statements = {}
        self._busy_ms = busy_timeout_ms
        self._reader = reader

    cdef _Statement _prepare(self, str sql):
        cdef object known = self._statements.get(sql, False)
        if known is None:
            raise FallbackError("several statements")
        if known is not False:
            return <_Statement>known
        cdef _Statement st
        cdef Py_ssize_t n
        cdef const char *text = PyUnicode_AsUTF8AndSize(sql, &n)
        cdef const char *tail = NULL
        cdef sqlite3_stmt *stmt = NULL
        cdef int rc = sqlite3_prepare_v2(self._db, text, <int>n + 1, &stmt, &tail)
        if rc != SQLITE_OK:
            if stmt != NULL:
                sqlite3_finalize(stmt)
            raise _error(self._db, rc)
        if stmt == NULL:
            raise FallbackError("no statement")
        while tail != NULL and tail[0] != 0 and tail[0] in b" \t\r\n;":
            tail += 1
        if tail != NULL and tail[0] != 0:
            sqlite3_finalize(stmt)
            self._statements[sql] = None  # known: the sqlite3 module's, from now on
            raise FallbackError("several statements")
        st = _Statement.__new__(_Statement)
        st.stmt = stmt
        st.params = sqlite3_bind_parameter_count(stmt)
        st.columns = sqlite3_column_count(stmt)
        st.readonly = sqlite3_stmt_readonly(stmt) != 0
        if len(self._statements) >= _MAX_STATEMENTS:
            self._statements.clear()
        self._statements[sql] = st
        return st

    cdef int _bind(self, sqlite3_stmt *stmt, int i, object value) except -1:
        cdef Py_ssize_t n
        cdef const char *text
        cdef const unsigned char[:] view
        cdef int rc
        if value is None:
            rc = sqlite3_bind_null(stmt, i)
        elif isinstance(value, int):  # bool and IntEnum too, as the sqlite3 module binds them
            rc = sqlite3_bind_int64(stmt, i, <long long>value)  # OverflowError past 64 bits, as there
        elif isinstance(value, float):
            rc = sqlite3_bind_double(stmt, i, <double>value)
        elif isinstance(value, str):
            try:
                text = PyUnicode_AsUTF8AndSize(value, &n)
            except UnicodeEncodeError:
                raise FallbackError("text the sqlite3 module encodes its own way") from None
            rc = sqlite3_bind_text(stmt, i, text, <int>n, SQLITE_TRANSIENT)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            view = memoryview(value).cast("B")
            if view.shape[0] == 0:
                rc = sqlite3_bind_blob(stmt, i, b"", 0, SQLITE_TRANSIENT)
            else:
                rc = sqlite3_bind_blob(stmt, i, &view[0], <int>view.shape[0], SQLITE_TRANSIENT)
        else:
            raise FallbackError(f"a parameter of type {type(value).__name__}")
        if rc != SQLITE_OK:
            raise _error(self._db, rc)
        return 0

    cdef object _column(self, sqlite3_stmt *stmt, int i):
        cdef int kind = sqlite3_column_type(stmt, i)
        cdef const char *p
        if kind == SQLITE_INTEGER:
            return sqlite3_column_int64(stmt, i)
        if kind == SQLITE_NULL:
            return None
        if kind == SQLITE_TEXT:
            p = <const char *>sqlite3_column_text(stmt, i)
            try:
                return PyUnicode_DecodeUTF8(p, sqlite3_column_bytes(stmt, i), NULL)
            except UnicodeDecodeError:
                raise _sqlite3.OperationalError(
                    f"Could not decode to UTF-8 column {i} with text {p[:sqlite3_column_bytes(stmt, i)]!r}"
                ) from None
        if kind == SQLITE_FLOAT:
            return sqlite3_column_double(stmt, i)
        p = <const char *>sqlite3_column_blob(stmt, i)
        return PyBytes_FromStringAndSize(p, sqlite3_column_bytes(stmt, i))

    def execute(self, str sql, params=()):
        """Runs ``sql`` with ``params`` (a sequence) to the end; its ``Result``. Raises what
        the sqlite3 module would, or ``FallbackError`` (before any effect) for what only the
        sqlite3 module runs."""
        if self._db == NULL:
            raise _sqlite3.ProgrammingError("the writer is closed")
        if type(params) is not tuple and type(params) is not list:
            raise FallbackError(f"parameters as a {type(params).__name__}")
        cdef _Statement st = self._prepare(sql)
        cdef sqlite3_stmt *stmt = st.stmt
        cdef Py_ssize_t count = len(params)
        cdef int i, rc, c
        cdef Result result
        cdef list rows
        if count != st.params:
            raise _sqlite3.ProgrammingError(
                f"Incorrect number of bindings supplied. The current statement uses {st.params}, "
                f"and there are {count} supplied."
            )
        cdef int autocommit = 0
        if self._reader:
            autocommit = sqlite3_get_autocommit(self._db)
            if not st.readonly:
                raise FallbackError("a reader runs queries only")
            self._left = _read_steps
            sqlite3_busy_timeout(self._db, 0)
            sqlite3_progress_handler(self._db, _BUDGET_STEP, _spend, &self._left)
        try:
            for i in range(count):
                self._bind(stmt, i + 1, params[i])
            rows = []
            while True:
                rc = sqlite3_step(stmt)
                if rc == SQLITE_ROW:
                    rows.append(tuple([self._column(stmt, c) for c in range(st.columns)]))
                elif rc == SQLITE_DONE:
                    break
                elif self._reader and (rc & 0xFF) in (5, 6, 9):  # BUSY, LOCKED, INTERRUPT
                    if sqlite3_get_autocommit(self._db) != autocommit:  # pragma: no cover
                        # A query never ends the transaction; should it, the snapshot is gone.
                        raise _sqlite3.OperationalError("the read transaction ended under an interrupted query")
                    raise FallbackError("over the read budget" if (rc & 0xFF) == 9 else "busy")
                else:
                    raise _error(self._db, rc)
            result = Result.__new__(Result)
            result._rows = rows
            result._next = 0
            result.rowcount = -1 if st.readonly else sqlite3_changes64(self._db)
            return result
        finally:
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
            if self._reader:
                sqlite3_progress_handler(self._db, 0, NULL, NULL)
                sqlite3_busy_timeout(self._db, self._busy_ms)

    def execute_unless_busy(self, str sql):
        """Runs ``sql`` (no parameters) unless the database is locked by another connection
        right now (True), without waiting for it as the busy timeout would, holding the GIL;
        False when it was busy (nothing happened): wait through the sqlite3 module then,
        which lets go of the GIL. For BEGIN IMMEDIATE, which in one process is never busy."""
        sqlite3_busy_timeout(self._db, 0)
        try:
            self.execute(sql)
        except _sqlite3.OperationalError as e:
            if (e.sqlite_errorcode & 0xFF) in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
                return False
            raise
        finally:
            sqlite3_busy_timeout(self._db, self._busy_ms)
        return True

    def close(self):
        """Finalizes the cached statements (before the connection closes)."""
        self._statements.clear()
        self._db = NULL
        self._conn = None
