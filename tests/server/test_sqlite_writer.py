"""The native write-statement runner (server/storage/_sqlite_writer.pyx) answers exactly as
the sqlite3 module does: the same rows, row counts, exceptions (class, message, error code)
for the same statements, whatever the values; it refuses a handle it cannot trust; and a
storage run with it leaves the same database as one run without it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cardmint.server.storage import _sqlite_writer as native
from cardmint.server.storage.sqlite import SQLiteStorage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import one_card

SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, n INTEGER, r REAL, b BLOB,"
    " c INTEGER CHECK (c IS NULL OR c >= 0))"
)

values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(),  # NUL and any other code point (lone surrogates: see test_fallback)
    st.binary(max_size=64),
)
rows = st.lists(
    st.tuples(st.text(max_size=3), values, values, values, st.integers(-2, 2) | st.none()), max_size=12
)


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(SCHEMA)
    return conn


def _outcome(run: Any, sql: str, params: Any) -> tuple[str, Any]:
    try:
        cur = run(sql, params)
        return "ok", (cur.fetchall(), cur.rowcount)
    except sqlite3.Error as e:
        return type(e).__name__, (str(e), getattr(e, "sqlite_errorcode", None))
    except (OverflowError, ValueError, TypeError) as e:
        return type(e).__name__, None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=rows, threshold=st.integers(-3, 3))
def test_same_answers_as_the_sqlite3_module(
    tmp_path_factory: pytest.TempPathFactory, batch: list[Any], threshold: int
) -> None:
    d = tmp_path_factory.mktemp("w")
    ours, theirs = _open(d / "a.db"), _open(d / "b.db")
    writer = native.Writer(ours, str(d / "a.db"), 1000)
    try:
        for conn in (ours, theirs):
            conn.execute("BEGIN IMMEDIATE")
        statements: list[tuple[str, Any]] = [
            ("INSERT INTO t (k, n, r, b, c) VALUES (?, ?, ?, ?, ?)", row) for row in batch
        ]
        statements += [
            ("INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT (k) DO NOTHING RETURNING id, k", ("x", 1)),
            ("UPDATE t SET c = c + ? WHERE c IS NOT NULL", (threshold,)),  # may break the CHECK
            ("UPDATE t SET n = ? WHERE id > ?", (None, threshold)),
            ("DELETE FROM t WHERE c < ? RETURNING id", [threshold]),
            ("SELECT id, k, n, r, b, c, typeof(n), length(b) FROM t ORDER BY id", ()),
            ("SELECT count(*), total(r) FROM t WHERE k > ?", ("",)),
            ("SELECT ?", (1, 2)),  # the wrong number of bindings
            ("SELEKT 1", ()),  # a syntax error
        ]
        for sql, params in statements:
            assert _outcome(writer.execute, sql, params) == _outcome(theirs.execute, sql, params), sql
        for conn in (ours, theirs):
            conn.execute("COMMIT")
        dump = "SELECT * FROM t ORDER BY id"
        assert ours.execute(dump).fetchall() == theirs.execute(dump).fetchall()
    finally:
        writer.close()
        ours.close()
        theirs.close()


def test_fallback_before_any_effect(tmp_path: Path) -> None:
    """What only the sqlite3 module runs (its adapters, several statements, named
    parameters, text it encodes its own way) raises FallbackError before anything happened."""
    conn = _open(tmp_path / "f.db")
    writer = native.Writer(conn, str(tmp_path / "f.db"), 1000)
    try:
        for sql, params in [
            ("INSERT INTO t (k, r) VALUES (?, ?)", ("d", Decimal("1.5"))),
            ("INSERT INTO t (k, n) VALUES (?, ?)", ("when", datetime.now(UTC))),
            ("INSERT INTO t (k) VALUES (?)", ("\ud800",)),
            ("INSERT INTO t (k) VALUES (:k)", {"k": "named"}),
            ("INSERT INTO t (k) VALUES ('a'); INSERT INTO t (k) VALUES ('b')", ()),
        ]:
            with pytest.raises(native.FallbackError):
                writer.execute(sql, params)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        with pytest.raises(native.FallbackError):  # known now: refused without preparing again
            writer.execute("INSERT INTO t (k) VALUES ('a'); INSERT INTO t (k) VALUES ('b')")
    finally:
        writer.close()
        conn.close()


def test_a_handle_it_cannot_trust_is_refused(tmp_path: Path) -> None:
    conn = _open(tmp_path / "a.db")
    try:
        with pytest.raises(native.WriterUnavailableError):
            native.Writer(conn, str(tmp_path / "other.db"), 1000)  # not this file
        with pytest.raises(native.WriterUnavailableError):
            native.Writer(object(), str(tmp_path / "a.db"), 1000)  # type: ignore[arg-type]
    finally:
        conn.close()
    with pytest.raises(native.WriterUnavailableError):
        native.Writer(conn, str(tmp_path / "a.db"), 1000)  # closed


def test_begin_unless_busy_does_not_wait_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    conn = _open(path)
    conn.execute("PRAGMA journal_mode=WAL")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer = native.Writer(conn, str(path), 30_000)
    try:
        other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
        assert writer.execute_unless_busy("BEGIN IMMEDIATE") is False
        assert not _in_transaction(conn)
        other.execute("COMMIT")
        assert writer.execute_unless_busy("BEGIN IMMEDIATE") is True
        assert _in_transaction(conn)
        conn.execute("COMMIT")
        # The busy timeout is back: a writer that waits still waits (here, for 0.2 s).
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.2, lambda: other.execute("COMMIT")).start()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
    finally:
        writer.close()
        other.close()
        conn.close()


def _in_transaction(conn: sqlite3.Connection) -> bool:
    """Read afresh: the writer changes it behind the checker's back."""
    return conn.in_transaction


def _work_both_ways(path: Path, native_writer: bool) -> tuple[list[Any], list[Any]]:
    """Redeems (one refused, one in a unit that fails after writing), reversals and audit
    events, from 16 threads at once so units share group commits; the answers, then the
    rows that do not depend on the clock."""
    storage = SQLiteStorage(path, native_writer=native_writer)
    try:
        assert (storage._fast is not None) is native_writer
        card = one_card(storage, face=1_000)

        class UndoError(Exception):
            pass

        def spend(i: int) -> Any:
            def unit(tx: Any) -> Any:
                done = tx.redeem(card, 10 + i, "CNY", f"r{i}")
                tx.append_audit("test", "redeem", f"card:{card}", f"{i}")
                if i % 5 == 4:
                    raise UndoError(i)  # written, then undone to the unit's savepoint
                return done.outcome.name, done.entry.amount if done.entry else None

            try:
                return storage.run(unit)
            except UndoError:
                return "undone"

        answers: list[Any] = [None] * 16
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, spend(i))) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        answers.append(storage.run(lambda tx: tx.redeem(card, 5_000, "CNY", "too-much").outcome.name))
        with storage.read() as tx:
            got = tx.get_card(card)
            assert got is not None
            final = [got.balance, tx.ledger_totals([card])]
            final.append(
                [(r[2], r[3], r[4], r[5]) for r in tx.audit_rows()]
            )  # actor, action, subject, detail
        return answers, final
    finally:
        storage.close()


def test_storage_with_and_without_the_native_writer_answers_and_writes_alike(tmp_path: Path) -> None:
    with_it = _work_both_ways(tmp_path / "a.db", True)
    without = _work_both_ways(tmp_path / "b.db", False)
    assert with_it[0] == without[0]
    assert sorted(map(repr, with_it[1][2])) == sorted(map(repr, without[1][2]))  # order: the race's
    assert with_it[1][:2] == without[1][:2]
    assert with_it[1][0] == 1_000 - sum(10 + i for i in range(16) if i % 5 != 4)


# -- readers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _reader(
    path: Path, *, wal: bool = True, busy_timeout_ms: int = 1000
) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection, Any]]:
    """A writable connection that made the file (table t, WAL unless told), a read-only one
    on it and its native reader; all closed afterwards."""
    conn = _open(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    ro = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    reader = native.Writer(ro, str(path), busy_timeout_ms, reader=True)
    try:
        yield conn, ro, reader
    finally:
        reader.close()
        ro.close()
        conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=rows, threshold=st.integers(-3, 3))
def test_a_reader_answers_queries_as_the_sqlite3_module(
    tmp_path_factory: pytest.TempPathFactory, batch: list[Any], threshold: int
) -> None:
    path = tmp_path_factory.mktemp("r") / "r.db"
    with _reader(path) as (conn, ro, reader):
        for row in batch:
            with contextlib.suppress(sqlite3.IntegrityError):  # a repeated k, a negative c
                conn.execute("INSERT INTO t (k, n, r, b, c) VALUES (?, ?, ?, ?, ?)", row)
        reader.execute("BEGIN")
        for sql, params in [
            ("SELECT id, k, n, r, b, c, typeof(n), length(b) FROM t ORDER BY id", ()),
            ("SELECT count(*), total(r) FROM t WHERE c > ?", (threshold,)),
            ("SELECT k FROM t WHERE id = ?", (threshold,)),
            ("SELECT ?", (1, 2)),  # the wrong number of bindings
            ("SELEKT 1", ()),  # a syntax error
        ]:
            assert _outcome(reader.execute, sql, params) == _outcome(ro.execute, sql, params), sql
        assert ro.in_transaction
        reader.execute("ROLLBACK")
        assert not ro.in_transaction


def test_a_long_query_goes_back_to_the_sqlite3_module_in_the_same_snapshot(tmp_path: Path) -> None:
    """Past the instruction budget a reader's query is interrupted (FallbackError): nothing
    was read for the caller and the snapshot is still open, so the sqlite3 module answers it
    from the same moment; a short query never is."""
    path = tmp_path / "long.db"
    with _reader(path) as (conn, ro, reader):
        conn.executemany("INSERT INTO t (k, n) VALUES (?, ?)", [(f"k{i}", i) for i in range(5_000)])
        reader.execute("BEGIN")
        assert reader.execute("SELECT max(id) FROM t WHERE id >= ?", (0,)).fetchall() == [(5_000,)]
        conn.execute("INSERT INTO t (k, n) VALUES ('later', 1)")  # after the snapshot began
        long = "SELECT sum(a.n % 7) FROM t AS a, (SELECT n FROM t LIMIT 50) AS b"
        assert native.READ_BUDGET < 5_000 * 50  # this query runs at least that many instructions
        with pytest.raises(native.FallbackError, match="budget"):
            reader.execute(long)
        assert ro.in_transaction
        expected = 50 * sum(i % 7 for i in range(5_000))
        assert ro.execute(long).fetchone() == (expected,)  # the snapshot without 'later'
        assert reader.execute("SELECT max(id) FROM t").fetchall() == [(5_000,)]
        assert reader.execute("SELECT k FROM t WHERE id = 1").fetchall() == [("k0",)]
        reader.execute("ROLLBACK")
        assert reader.execute("SELECT max(id) FROM t").fetchall() == [(5_001,)]


def test_a_reader_does_not_wait_holding_the_gil(tmp_path: Path) -> None:
    """When the file is locked against readers the reader says so at once (FallbackError)
    and leaves the waiting to the sqlite3 module (GIL released, busy timeout intact); it
    never writes. (A WAL file shuts readers out only in rare moments, a rollback journal's
    whenever a writer commits: the lock is made that way here.)"""
    path = tmp_path / "locked.db"
    with _reader(path, wal=False, busy_timeout_ms=5_000) as (conn, ro, reader):
        conn.execute("INSERT INTO t (k) VALUES ('a')")
        with pytest.raises(native.FallbackError):
            reader.execute("INSERT INTO t (k) VALUES ('b')")
        conn.execute("BEGIN EXCLUSIVE")  # readers are shut out until COMMIT
        conn.execute("INSERT INTO t (k) VALUES ('c')")
        started = time.monotonic()
        with pytest.raises(native.FallbackError, match="busy"):
            reader.execute("SELECT count(*) FROM t")
        assert time.monotonic() - started < 1.0  # no busy wait
        assert not ro.in_transaction
        timer = threading.Timer(0.3, lambda: conn.execute("COMMIT"))
        timer.start()
        assert ro.execute("SELECT count(*) FROM t").fetchone() == (2,)  # the module waited
        timer.join()
        assert reader.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


def test_storage_reads_go_native_and_fall_back_unseen(tmp_path: Path) -> None:
    """A storage's snapshots use the native reader; a read past its budget is answered by
    the sqlite3 module all the same."""
    storage = SQLiteStorage(tmp_path / "s.db")
    try:
        card = one_card(storage, face=500)
        with storage.read() as tx:
            assert tx._fast is not None
            got = tx.get_card(card)
            assert got is not None and got.balance == 500
            n = tx._one(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000) SELECT count(*) FROM c"
            )
            assert n == (100_000,)
            assert tx.failed is None
    finally:
        storage.close()
