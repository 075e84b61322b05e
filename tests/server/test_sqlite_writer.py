"""The native write-statement runner (server/storage/_sqlite_writer.pyx) answers exactly as
the sqlite3 module does: the same rows, row counts, exceptions (class, message, error code)
for the same statements, whatever the values; it refuses a handle it cannot trust; and a
storage run with it leaves the same database as one run without it."""

from __future__ import annotations

import sqlite3
import threading
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
