# The libsqlite3 declarations the Cython SQLite modules use (included, not imported: each
# module links libsqlite3 itself, the library the sqlite3 module links).

cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3:
        pass
    ctypedef struct sqlite3_stmt:
        pass
    int SQLITE_OK
    int SQLITE_ROW
    int SQLITE_DONE
    int SQLITE_INTEGER
    int SQLITE_FLOAT
    int SQLITE_TEXT
    int SQLITE_BLOB
    int SQLITE_NULL
    int SQLITE_OPEN_READONLY
    int SQLITE_OPEN_NOMUTEX
    void *SQLITE_TRANSIENT
    const char *sqlite3_libversion()
    int sqlite3_open_v2(const char *filename, sqlite3 **db, int flags, const char *vfs)
    int sqlite3_close_v2(sqlite3 *db)
    int sqlite3_busy_timeout(sqlite3 *db, int ms)
    const char *sqlite3_errmsg(sqlite3 *db)
    int sqlite3_extended_errcode(sqlite3 *db)
    int sqlite3_get_autocommit(sqlite3 *db)
    const char *sqlite3_db_filename(sqlite3 *db, const char *name)
    int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **stmt, const char **tail)
    int sqlite3_bind_parameter_count(sqlite3_stmt *stmt)
    int sqlite3_bind_int64(sqlite3_stmt *stmt, int i, long long v)
    int sqlite3_bind_double(sqlite3_stmt *stmt, int i, double v)
    int sqlite3_bind_text(sqlite3_stmt *stmt, int i, const char *v, int n, void *destructor)
    int sqlite3_bind_blob(sqlite3_stmt *stmt, int i, const void *v, int n, void *destructor)
    int sqlite3_bind_null(sqlite3_stmt *stmt, int i)
    int sqlite3_clear_bindings(sqlite3_stmt *stmt)
    int sqlite3_step(sqlite3_stmt *stmt)
    int sqlite3_reset(sqlite3_stmt *stmt)
    int sqlite3_finalize(sqlite3_stmt *stmt)
    int sqlite3_stmt_readonly(sqlite3_stmt *stmt)
    int sqlite3_column_count(sqlite3_stmt *stmt)
    int sqlite3_column_type(sqlite3_stmt *stmt, int i)
    long long sqlite3_column_int64(sqlite3_stmt *stmt, int i)
    double sqlite3_column_double(sqlite3_stmt *stmt, int i)
    const void *sqlite3_column_blob(sqlite3_stmt *stmt, int i)
    const unsigned char *sqlite3_column_text(sqlite3_stmt *stmt, int i)
    int sqlite3_column_bytes(sqlite3_stmt *stmt, int i)
    long long sqlite3_changes64(sqlite3 *db)
    void sqlite3_progress_handler(sqlite3 *db, int n, int (*callback)(void *) noexcept nogil, void *arg)
