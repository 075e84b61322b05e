"""SQLite backend: the embedded default.

WAL journal, ``synchronous=FULL`` (a committed redemption survives power loss), foreign
keys on. Every write goes through one writer connection, behind a process-local lock, a
gate shared by every process on the file (``_WriterGate``) and ``BEGIN IMMEDIATE``: the
lock orders this process's threads without spinning on SQLITE_BUSY, the gate orders the
processes' writers the same way, and ``BEGIN IMMEDIATE`` takes the database write lock up
front, so a process without the gate still queues on the busy timeout instead of failing
at its first write (which a deferred ``BEGIN`` that reads first would do). ``run``
group-commits: units of work queued by concurrent callers share one transaction (a
SAVEPOINT each) and one fsync. Readers use their own read-only connections and, under
WAL, see a consistent snapshot while the writer works.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import functools
import os
import sqlite3
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from ._sql import CARD_COLUMNS, CardRows, Clock, SqlTx, utcnow
from .errors import ConflictError, MigrationError, StorageError, StorageUnavailableError, TransientError
from .migrations import MIGRATIONS
from .models import AttemptKind, Attempts, AuditColumns

_native_audit: types.ModuleType | None
try:  # the native audit reader (Cython, libsqlite3); the SQL aggregate path without it
    from . import _sqlite_audit as _native_audit
except ImportError:  # pragma: no cover - a build without the Cython part
    _native_audit = None
_native_writer: types.ModuleType | None
try:  # the group commit's statements holding the GIL (Cython, libsqlite3)
    from . import _sqlite_writer as _native_writer
except ImportError:  # pragma: no cover - a build without the Cython part
    _native_writer = None

__all__ = ["SQLiteStorage"]

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MIN_VERSION = (3, 37, 0)  # STRICT tables; RETURNING needs 3.35
_MAX_BATCH = 256  # units per group commit
_NUDGE_WAIT_S = 0.05  # a queued unit's caller looks at the writer at least this often
_WRITER_CACHE_KIB = 64 * 1024


def _translate(exc: sqlite3.Error) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError):
        return ConflictError(str(exc))
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return TransientError(str(exc))
    if sqlite3_failed(exc):
        return StorageUnavailableError(f"{type(exc).__name__}: {exc}")
    return StorageError(f"{type(exc).__name__}: {exc}")


# The result codes of a failing file (I/O error, disk full, cannot open, read-only, corrupt),
# as ``sqlite_errorcode`` gives them (primary code: low byte).
_FILE_FAILURES = {
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
}


def sqlite3_failed(exc: BaseException) -> bool:
    """Whether an sqlite3 error says the database file failed (not a rule or a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _FILE_FAILURES


class _NoFallbackError(Exception):
    """Never raised: what ``_FallbackError`` is without the native writer."""


_FallbackError: type[Exception] = (
    _native_writer.FallbackError if _native_writer is not None else _NoFallbackError
)


class _WriterGate:
    """Orders the writers of every server process on one database file: an exclusive
    ``flock`` on ``<database>.writers``, taken before ``BEGIN IMMEDIATE`` and let go after
    its COMMIT or ROLLBACK.

    SQLite's own write lock stays the truth (a process without the gate is still kept out
    by it), but a writer that finds it taken polls for it, sleeping 1, 2, 5, 10… ms
    between tries: with two processes writing, each wait cost a millisecond or more after
    the lock was free. A writer waiting here sleeps in the kernel and is woken when the
    lock is let go; the kernel lets go of it when its holder dies (kill -9 included).
    Uncontended (one process), taking it is one system call and keeps the GIL."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".writers")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process writes: wait without the GIL
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Idempotent: a storage closed twice must not close a descriptor number that
        something opened since."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class _Unit:
    """One caller's work waiting for the group commit, and what became of it."""

    __slots__ = ("context", "done", "error", "ready", "result", "work")

    def __init__(self, work: Callable[[_SQLiteTx], Any], context: contextvars.Context) -> None:
        self.work = work
        self.context = context
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        # A one-shot signal, set when the unit is done or as a nudge to lead the next batch
        # (see SQLiteStorage.run): a C lock, held while unset. Waiting takes it (and so
        # clears it); setting an already set signal does nothing. Cheaper than an Event
        # (a Python-level Condition) by a dozen Python calls per unit.
        self.ready = threading.Lock()
        self.ready.acquire()

    def signal(self) -> None:
        try:  # noqa: SIM105 - suppress() is a Python-level context manager, on a hot path
            self.ready.release()
        except RuntimeError:  # already set
            pass


class _SQLiteTx(SqlTx):
    def __init__(
        self,
        conn: sqlite3.Connection,
        clock: Clock,
        path: Path | None = None,
        heads: dict[str, Any] | None = None,
        fast: Any = None,
    ) -> None:
        super().__init__(clock)
        self._conn = conn
        # The group commit leader's statement runner (``_sqlite_writer.Writer``), or None:
        # the sqlite3 module runs every statement.
        self._fast = fast
        self._path = path  # the database file, for the native audit reader (readers only)
        # The audit chain's head and the newest outbox id as this write transaction left
        # them (shared by the units of one group commit): BEGIN IMMEDIATE shuts out every
        # other writer, so once read or written here they stay true until COMMIT, and the
        # next unit's append skips its SELECT. A unit rolled back puts back what it found.
        self._heads: dict[str, Any] = heads if heads is not None else {}

    def _audit_head(self) -> tuple[int, bytes]:
        head: tuple[int, bytes] | None = self._heads.get("audit")
        if head is None:
            head = self._heads["audit"] = super()._audit_head()
        return head

    def _audit_appended(self, seq: int, digest: bytes) -> None:
        self._heads["audit"] = (seq, digest)

    def _events_head(self) -> int:
        head: int | None = self._heads.get("events")
        if head is None:
            head = self._heads["events"] = super()._events_head()
        return head

    def _event_appended(self, event_id: int) -> None:
        self._heads["events"] = event_id

    def hold_attempts(
        self, kind: AttemptKind, subject: str, window_seconds: int, at: datetime | None = None
    ) -> Attempts:
        # Holding the counters' rows is PostgreSQL's need: here the one writer already runs
        # this transaction alone, so a read is the same answer without writing rows.
        return self.attempt_count(kind, subject, window_seconds, at)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        try:
            return self._conn.executemany(sql, rows).rowcount
        except sqlite3.Error as e:
            raise self._fail(_translate(e)) from e

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        fast = self._fast
        try:
            if fast is not None:
                try:
                    return fast.execute(sql, params)
                except _FallbackError:  # nothing ran: the sqlite3 module's turn
                    pass
            return self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise self._fail(_translate(e)) from e

    def _ts(self, value: datetime) -> int:
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (UTC)")
        return (value - _EPOCH) // _US

    def _dt(self, value: Any) -> datetime:
        return _EPOCH + timedelta(microseconds=int(value))

    def _epoch_us(self, column: str) -> str:
        return f"COALESCE({column}, 0)"  # already microseconds since the epoch

    def _audit_page(self, after_id: int, limit: int) -> AuditColumns | None:
        if _native_audit is not None and self._path is not None:
            # Straight from the file, with the GIL released (server/storage/_sqlite_audit.pyx):
            # bounded by the last id this snapshot sees, so it reads what the snapshot holds
            # (the chain is append-only).
            upto = min(after_id + limit, self.audit_last_id())
            page = _native_audit.read_page(str(self._path), after_id, upto)
            return AuditColumns(*page) if page is not None else None
        return self._audit_page_sql(after_id, limit)

    def _audit_page_sql(self, after_id: int, limit: int) -> AuditColumns | None:
        # A range of the rowid, so SQLite walks the table b-tree in id order with no sort;
        # ids are the primary key, so count == max - min + 1 starting at after_id + 1 proves
        # the page holds exactly ids after_id + 1 .. after_id + count (otherwise, a gap: row
        # by row). Each aggregate is one column (fewer, wider ones cost more per row here).
        row = self._one(
            "SELECT count(*), min(id), max(id), group_concat(at),"
            " CAST(group_concat(prev_hash, '') AS BLOB), CAST(group_concat(hash, '') AS BLOB),"
            " total((length(prev_hash) - 32) * (length(prev_hash) - 32)"
            " + (length(hash) - 32) * (length(hash) - 32)),"
            " CAST(group_concat(actor || ?3 || action || ?3 || subject || ?3 || detail, ?3) AS BLOB)"
            " FROM audit_log WHERE id > ?1 AND id <= ?2",
            (after_id, after_id + limit, self.AUDIT_SEP),
        )
        n = int(row[0])
        if n == 0 or (int(row[1]), int(row[2])) != (after_id + 1, after_id + n) or row[6] != 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a malformed list reads short: checked below
            at_us = np.fromstring(str(row[3]), dtype=np.int64, sep=",")
        prevs, hashes, split = bytes(row[4]), bytes(row[5]), self._audit_split(n, bytes(row[7]))
        if split is None or len(at_us) != n or len(prevs) != 32 * n or len(hashes) != 32 * n:
            return None
        ids = np.arange(after_id + 1, after_id + n + 1, dtype=np.int64)
        return AuditColumns(ids, at_us, split[0], split[1], prevs, hashes)

    def _lock(self, name: int) -> None:
        # Inside BEGIN IMMEDIATE this connection already holds the only write lock.
        return

    def _insert_cards(self, rows: CardRows) -> None:
        serials = rows.fixed_serials()
        try:
            if serials is None:  # serials of differing lengths, or not ASCII: never a lot's
                self._conn.executemany(
                    f"INSERT INTO cards ({CARD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    rows.tuples(self._ts),
                )
                return
            n, lot = len(serials), rows.lot
            widths = (serials.dtype.itemsize, rows.digests.shape[1], rows.sealed.shape[1])
            record = sum(widths)
            packed = np.concatenate(
                [serials.view(np.uint8).reshape(n, widths[0]), rows.digests, rows.sealed], axis=1
            )
            data = memoryview(packed.tobytes())
            exp = None if rows.expires_at is None else self._ts(rows.expires_at)
            same = (
                rows.key_id,
                lot.id,
                lot.product_id,
                lot.face_value,
                lot.currency,
                exp,
                self._ts(rows.created_at),
            )
            for lo in range(0, n, _FILL_ROWS):
                k = min(_FILL_ROWS, n - lo)
                self._conn.execute(
                    _fill_statement(k, *widths), (data[lo * record : (lo + k) * record], *same)
                )
        except sqlite3.Error as e:
            raise self._fail(_translate(e)) from e


# Cards per INSERT of a lot fill. Binding is what costs in a bulk insert through sqlite3:
# executemany of 12 values a card stored 10^6 cards in 12-13 s, this in 5-6 s. Each
# statement binds one blob of _FILL_ROWS packed records plus the values every card of the
# chunk shares, and cuts the records apart with substr() inside SQLite. 64 rows a statement
# was slower, 1024 no faster.
_FILL_ROWS = 256


@functools.lru_cache(maxsize=8)
def _fill_statement(rows: int, serial_w: int, digest_w: int, sealed_w: int) -> str:
    """INSERT of ``rows`` cards whose serial, digest and sealed record come packed in ?1
    (``serial_w + digest_w + sealed_w`` bytes per card); ?2..?8 are the shared values."""
    record = serial_w + digest_w + sealed_w
    values = []
    for i in range(rows):
        at = i * record + 1  # substr() counts from 1
        values.append(
            f"(CAST(substr(?1,{at},{serial_w}) AS TEXT),substr(?1,{at + serial_w},{digest_w}),"
            f"substr(?1,{at + serial_w + digest_w},{sealed_w}),?2,?3,?4,?5,?5,?6,'active',?7,?8)"
        )
    # Only integers computed here are spliced in; every value is a bound parameter.
    return f"INSERT INTO cards ({CARD_COLUMNS}) VALUES " + ",".join(values)  # noqa: S608


# ``sqlite:///path?synchronous=...``: when a commit reaches the disk (docs/storage.md).
SYNCHRONOUS = ("full", "normal", "off")


class SQLiteStorage:
    """Storage on one SQLite file; safe to share between threads and between processes."""

    backend = "sqlite"
    # Readers through the sqlite3 module do not scale in one process: every SQLite
    # allocation takes one global mutex (memory statistics), and a page read that way is
    # mostly allocations (two threads took longer than one). The native audit reader
    # allocates next to nothing per row and releases the GIL: two threads, two cores.
    read_parallelism = 2 if _native_audit is not None else 1

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock = utcnow,
        busy_timeout_ms: int = 30_000,
        synchronous: str = "full",
        native_writer: bool = True,
    ) -> None:
        """``native_writer``: run the group commit's statements through
        ``_sqlite_writer`` (holding the GIL) when it is built; False: the sqlite3 module
        runs every statement (the tests compare the two)."""
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise StorageError(f"SQLite {sqlite3.sqlite_version} is too old; cardmint needs 3.37 or newer")
        self.path = Path(path)
        self._clock = clock
        self._busy_ms = busy_timeout_ms
        if synchronous not in SYNCHRONOUS:
            raise StorageError(f"synchronous={synchronous!r}: one of {', '.join(SYNCHRONOUS)}")
        # FULL (the default) is what makes an answered write survive a power loss; NORMAL
        # and OFF trade that away (docs/RELIABILITY.md): for throwaway databases only.
        self.synchronous = synchronous
        self._write_lock = threading.Lock()
        self._queue: list[_Unit] = []  # units waiting for the next group commit
        self._queue_lock = threading.Lock()
        self.group_commits = 0  # transactions ``run`` committed (each covering >= 1 unit)
        self._owner = threading.local()
        # Idle reader connections, each with its native statement runner (or None).
        self._readers: list[tuple[sqlite3.Connection, Any]] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        # The file holds sealed codes, digests and hashed tokens: its owner's only, like the
        # keys. SQLite gives its -wal and -shm files the database file's mode; an existing
        # file keeps the mode it has (an operator may have opened it to a backup group).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._gate = _WriterGate(self.path)
        self._writer = self._connect(readonly=False)
        # WAL is a property of the file: set once, before any transaction.
        mode = self._switch_to_wal()
        if mode != "wal":
            raise StorageError(f"could not switch {self.path} to WAL (journal_mode={mode})")
        # The lot paths move bytes through text functions (CAST, group_concat), which only
        # leave them untouched in a UTF-8 database: the only kind sqlite3 creates by default.
        encoding = self._writer.execute("PRAGMA encoding").fetchone()[0]
        if encoding != "UTF-8":
            raise StorageError(f"{self.path} is a {encoding} database; cardmint needs UTF-8")
        self._migrate()
        self._native = _native_writer is not None and native_writer
        self._fast: Any = None
        if self._native and _native_writer is not None:
            try:
                self._fast = self._runner(self._writer, reader=False)
            except _native_writer.WriterUnavailableError as e:  # pragma: no cover - another Python
                self._native = False
                warnings.warn(f"SQLite statements through the sqlite3 module only: {e}", stacklevel=2)

    def _runner(self, conn: sqlite3.Connection, *, reader: bool) -> Any:
        """The native statement runner on ``conn`` (``_sqlite_writer.Writer``)."""
        assert _native_writer is not None
        return _native_writer.Writer(conn, str(self.path), int(self._busy_ms), reader=reader)

    def _switch_to_wal(self) -> str:
        """``PRAGMA journal_mode=WAL``, retried while another connection holds the file:
        several processes opening a new database at once race for the switch, and SQLite
        answers the loser "database is locked" at once instead of calling the busy handler
        (seen in 1-2% of 8-way first opens). Bounded by the busy timeout."""
        deadline = time.monotonic() + self._busy_ms / 1000
        delay = 0.001
        while True:
            try:
                return str(self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys=ON")
        if not readonly:
            # A lot fill touches every page of the digest index; with the default 2 MiB
            # cache the pages keep being evicted and re-read (1.1x-1.3x slower at 10^6).
            conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
        return conn

    def _migrate(self) -> None:
        with self._gate:
            self._migrate_gated()

    def _migrate_gated(self) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT"
            )
            applied = {int(v): c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")}
            known = {m.version for m in MIGRATIONS}
            if applied and max(applied) > max(known):
                raise MigrationError(
                    f"{self.path} has schema v{max(applied)}; this cardmint knows v{max(known)}"
                )
            for m in MIGRATIONS:
                if m.version in applied:
                    if applied[m.version] != m.checksum("sqlite"):
                        raise MigrationError(f"migration {m.version} ({m.name}) changed after it was applied")
                    continue
                # executescript would COMMIT first; run the statements one by one instead.
                for stmt in _statements(m.sql("sqlite")):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                    (m.version, m.name, m.checksum("sqlite"), (self._clock() - _EPOCH) // _US),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def now(self) -> datetime:
        """The storage's clock (the one transactions judge expiry by)."""
        return self._clock()

    def schema_version(self) -> int:
        with self.read() as tx:
            return int(tx._one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0])

    @contextmanager
    def transaction(self) -> Iterator[_SQLiteTx]:
        """A write transaction (``BEGIN IMMEDIATE``): commits on exit, rolls back on error."""
        if getattr(self._owner, "active", False):
            raise StorageError("transactions do not nest; pass the open one down instead")
        try:
            with self._write_lock, self._gate:
                self._owner.active = True
                conn = self._writer
                try:
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                    except sqlite3.Error as e:
                        raise _translate(e) from e
                    tx = _SQLiteTx(conn, self._clock)
                    try:
                        yield tx
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    if tx.failed is not None:
                        conn.execute("ROLLBACK")
                        raise StorageError(f"transaction rolled back after an earlier error: {tx.failed}")
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.Error as e:
                        conn.execute("ROLLBACK")
                        raise _translate(e) from e
                finally:
                    self._owner.active = False
        finally:
            self._nudge()  # units queued while this held the writer: one of them leads now

    @contextmanager
    def read(self) -> Iterator[_SQLiteTx]:
        """A read-only snapshot on a reader connection; writes in it fail."""
        with self._readers_lock:
            idle = self._readers.pop() if self._readers else None
        if idle is None:
            conn = self._connect(readonly=True)
            fast = None
            if self._native and _native_writer is not None:
                # Queries of a snapshot holding the GIL, under a budget (_sqlite_writer.pyx).
                with contextlib.suppress(_native_writer.WriterUnavailableError):
                    fast = self._runner(conn, reader=True)
        else:
            conn, fast = idle
        tx = _SQLiteTx(conn, self._clock, self.path, fast=fast)
        try:
            tx._execute("BEGIN")
            yield tx
        finally:
            try:
                tx._execute("ROLLBACK")
                keep = True
            except (sqlite3.Error, StorageError):  # BEGIN itself failed: this connection is suspect
                keep = False
            with self._readers_lock:
                if keep and not self._closed:
                    self._readers.append((conn, fast))
                else:
                    if fast is not None:
                        fast.close()
                    conn.close()

    @contextmanager
    def read_shared(self, count: int) -> Iterator[list[_SQLiteTx]]:
        """``count`` read snapshots of one moment, for as many threads. SQLite has no way to
        hand a snapshot to another connection, so no commit may happen while they are taken:
        each reader's snapshot starts (its first read) while this process holds the write
        lock in a BEGIN IMMEDIATE, which shuts out writers of every process."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        with contextlib.ExitStack() as stack:
            txs = []
            # A thread inside a write transaction cannot take the lock again: one reader.
            if count == 1 or getattr(self._owner, "active", False):
                txs.append(stack.enter_context(self.read()))
            else:
                with self.transaction():
                    for _ in range(count):
                        tx = stack.enter_context(self.read())
                        tx._one("SELECT count(*) FROM sqlite_schema")  # starts the snapshot
                        txs.append(tx)
            yield txs

    def probe(self, timeout: float) -> None:
        """The health probe's write (``storage_probe``): committed and fsynced, or it raises.
        ``timeout`` is the busy timeout's business here (another process writing)."""
        self.run(lambda tx: tx.probe(), attempts=1)

    def run(self, work: Callable[[_SQLiteTx], T], attempts: int = 5) -> T:
        """``work`` in a write transaction, retried when the database reports a lost race.

        Group commit: concurrent callers queue their work, and whichever holds the writer
        runs everything queued so far in ONE transaction, each unit inside its own
        SAVEPOINT (a unit that raises is rolled back to it alone), then commits once. With
        ``synchronous=FULL`` a commit is an fsync, so one fsync now covers a whole batch
        instead of one call. Nobody hears back before that COMMIT: a unit is as durable
        and as atomic as with its own transaction, and units still run one at a time.
        """
        if getattr(self._owner, "active", False):
            raise StorageError("transactions do not nest; pass the open one down instead")
        for attempt in range(attempts):
            unit = _Unit(work, contextvars.copy_context())
            with self._queue_lock:
                self._queue.append(unit)
            self._await(unit)
            if unit.error is None:
                return cast(T, unit.result)
            if not isinstance(unit.error, TransientError) or attempt == attempts - 1:
                raise unit.error
        raise AssertionError("unreachable: the loop returns or raises")

    def _await(self, unit: _Unit) -> None:
        """Until ``unit`` is done: lead a batch when nobody is committing, else wait.

        The leader wakes every unit of its batch at once when it has committed (not one
        after another through the lock, which kept the next batch waiting behind all of
        them), then nudges the first unit queued meanwhile to lead the next batch. The wait
        is bounded, so a nudge that went astray costs one short wait, never a stall.

        It wakes them only once it has let go of the gate: woken callers take a core at
        once, and on a busy machine they took it from the leader while the other processes'
        writers waited for the gate (about half a unit's worth of its time per unit)."""
        while not unit.done:
            if self._write_lock.acquire(blocking=False):
                batch: list[_Unit] = []
                try:
                    if not unit.done:  # nobody took it along yet: commit the queue, ours with it
                        with self._gate:
                            self._commit_queued(batch)
                finally:
                    self._write_lock.release()
                    for done in batch:
                        done.signal()
                self._nudge()
            else:
                unit.ready.acquire(timeout=_NUDGE_WAIT_S)  # done is set before the signal

    def _nudge(self) -> None:
        """Wake the first queued unit's caller: the writer is free for its batch."""
        with self._queue_lock:
            first = self._queue[0] if self._queue else None
        if first is not None:
            first.signal()

    def _commit_queued(self, batch: list[_Unit]) -> None:
        """Run the queued units in one transaction; the caller holds ``_write_lock`` and
        wakes the units taken into ``batch`` (each is done when this returns or raises)."""
        with self._queue_lock:
            batch[:], self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
        conn = self._writer
        self._owner.active = True
        try:
            try:
                # Holding the GIL when no other process holds the write lock (the usual
                # case: through the sqlite3 module it cost the leader context switches).
                if self._fast is None or not self._fast.execute_unless_busy("BEGIN IMMEDIATE"):
                    conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                error = _translate(e)
                for unit in batch:
                    unit.error = error
                return
            try:
                heads: dict[str, Any] = {}  # this transaction's chain heads (see _SQLiteTx)
                # A unit alone in its transaction needs no savepoint: if it fails, the
                # transaction is rolled back instead of committed, which undoes as much.
                alone = len(batch) == 1
                for unit in batch:
                    self._run_unit(conn, unit, heads, savepoint=not alone)
                if alone and batch[0].error is not None:
                    conn.execute("ROLLBACK")
                    return
                conn.execute("COMMIT")
                self.group_commits += 1
            except BaseException as e:
                # COMMIT failed (I/O error, disk full) or the process is being interrupted:
                # nothing of the batch happened, and every unit hears so.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                failure: BaseException = _translate(e) if isinstance(e, sqlite3.Error) else e
                for unit in batch:
                    unit.result, unit.error = None, failure
                if not isinstance(e, Exception):
                    raise
        finally:
            for unit in batch:
                unit.done = True
            self._owner.active = False

    def _run_unit(
        self, conn: sqlite3.Connection, unit: _Unit, heads: dict[str, Any], *, savepoint: bool = True
    ) -> None:
        """Run ``unit`` in the open transaction. With ``savepoint``, inside its own SAVEPOINT,
        rolled back to it alone when it fails; without, a failed unit leaves its writes for
        the caller to roll back with the whole transaction."""
        # Savepoints write nothing: through the native writer, holding the GIL (through the
        # sqlite3 module each cost the leader a context switch, about one per statement).
        execute = conn.execute if self._fast is None else self._fast.execute
        if savepoint:
            execute("SAVEPOINT unit")
        found = dict(heads)
        tx = _SQLiteTx(conn, self._clock, heads=heads, fast=self._fast)
        try:
            # In the caller's context (context variables), though on the committing thread.
            unit.result = unit.context.run(unit.work, tx)
        except Exception as e:
            unit.error = e
        if unit.error is None and tx.failed is not None:
            unit.error = StorageError(f"transaction rolled back after an earlier error: {tx.failed}")
        if unit.error is not None:
            unit.result = None
            heads.clear()
            heads.update(found)
            if not savepoint:
                return
            execute("ROLLBACK TO unit")
        if savepoint:
            execute("RELEASE unit")

    def stats(self) -> dict[str, int]:
        """For the metrics: units waiting for the writer, and group commits so far."""
        return {"writer_queue": len(self._queue), "group_commits": self.group_commits}

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            self._closed = True
            for conn, fast in self._readers:
                if fast is not None:
                    fast.close()
                conn.close()
            self._readers.clear()
            if self._fast is not None:
                self._fast.close()  # its statements, before the connection they belong to
            self._writer.close()
            self._gate.close()

    def __enter__(self) -> SQLiteStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _statements(script: str) -> list[str]:
    """Split a migration script on the statement boundaries sqlite3 itself recognises."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:80]}")
    return out
