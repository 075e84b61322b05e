"""Schema migrations: applied once, recorded, verified, safe when processes start together."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cardmint.server.storage import MigrationError, Storage, StorageError, open_storage
from cardmint.server.storage.migrations import MIGRATIONS
from cardmint.server.storage.sqlite import SQLiteStorage

from .conftest import FakeClock


def _applied(storage: Storage) -> list[tuple[int, str]]:
    with storage.read() as tx:
        # The backends' private query helper, on purpose (not part of UnitOfWork).
        rows = tx._all("SELECT version, name FROM schema_migrations ORDER BY version")  # type: ignore[attr-defined]
        return [(int(r[0]), r[1]) for r in rows]


def test_applied_once_and_recorded(opener: Callable[[], Storage]) -> None:
    first = opener()
    latest = max(m.version for m in MIGRATIONS)
    assert first.schema_version() == latest
    first.close()
    again = opener()  # reopening finds nothing to do
    assert again.schema_version() == latest
    assert _applied(again) == [(m.version, m.name) for m in MIGRATIONS]


def _open_at_once(open_one: Callable[[], Storage], n: int = 8) -> tuple[list[Storage], list[BaseException]]:
    """``n`` threads released together, each opening a handle: the handles, and what failed."""
    barrier = threading.Barrier(n)
    handles: list[Storage] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait(timeout=30)
        try:
            s = open_one()
        except BaseException as e:  # collected and asserted on by the caller
            with lock:
                errors.append(e)
            return
        with lock:
            handles.append(s)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return handles, errors


def test_concurrent_first_open(opener: Callable[[], Storage]) -> None:
    """Eight handles (separate connections, as separate processes have) open one empty database."""
    handles, errors = _open_at_once(opener)
    assert errors == [] and len(handles) == 8
    assert _applied(handles[0]) == [(m.version, m.name) for m in MIGRATIONS]


def test_edited_migration_is_refused(storage: Storage, storage_url: str, clock: FakeClock) -> None:
    with storage.transaction() as tx:
        tx._execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")  # type: ignore[attr-defined]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        open_storage(storage_url, clock=clock)


def test_newer_schema_is_refused(storage: Storage, storage_url: str, clock: FakeClock) -> None:
    with storage.transaction() as tx:
        tx._execute(  # type: ignore[attr-defined]
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
            " SELECT 999, 'from the future', 'x', applied_at FROM schema_migrations WHERE version = 1"
        )
    with pytest.raises(MigrationError, match="v999"):
        open_storage(storage_url, clock=clock)


@pytest.mark.parametrize("url", ["", ":memory:", "host=127.0.0.1 dbname=x", "mysql://h/db"])
def test_open_refuses_what_is_not_a_database_url(url: str) -> None:
    with pytest.raises(StorageError):
        open_storage(url)


def test_ledger_kinds_of_v13_upgrade_a_v12_ledger(
    storage_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 13 widens the ledger's kind CHECK (SQLite: by rebuilding the table): rows
    written at v12, their links included, survive it; the table stays append-only; the new
    kinds go in and an unknown kind is still refused."""
    from cardmint.server.storage import LedgerKind, postgres, sqlite

    for module in (sqlite, postgres):
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:12])
    old = open_storage(storage_url, clock=clock)
    assert old.schema_version() == 12
    with old.transaction() as tx:
        acct = tx.ensure_account("upgrader")
        first = tx._ledger(LedgerKind.BIND, "CNY", 0, account_id=acct.id)  # type: ignore[attr-defined]
        tx._ledger(LedgerKind.UNBIND, "CNY", 0, account_id=acct.id, reverses_id=first.id)  # type: ignore[attr-defined]
    old.close()
    monkeypatch.undo()

    new = open_storage(storage_url, clock=clock)
    try:
        assert new.schema_version() == MIGRATIONS[-1].version  # v13 and everything after it
        with new.transaction() as tx:
            before = tx.list_ledger(account_id=acct.id)
            tx._ledger(LedgerKind.TRANSFER_OUT, "CNY", 0, account_id=acct.id)  # type: ignore[attr-defined]
            tx._ledger(LedgerKind.TRANSFER_IN, "CNY", 0, account_id=acct.id)  # type: ignore[attr-defined]
        assert [(e.kind, e.reverses_id) for e in before] == [
            (LedgerKind.UNBIND, first.id),
            (LedgerKind.BIND, None),
        ]
        with pytest.raises(StorageError), new.transaction() as tx:
            tx._execute("UPDATE ledger_entries SET amount = 1")  # type: ignore[attr-defined]
        with pytest.raises(StorageError), new.transaction() as tx:
            tx._execute("DELETE FROM ledger_entries")  # type: ignore[attr-defined]
        with pytest.raises(StorageError), new.transaction() as tx:
            tx._execute(  # type: ignore[attr-defined]
                "INSERT INTO ledger_entries (account_id, kind, amount, currency, created_at)"
                " SELECT account_id, 'gift', 0, 'CNY', created_at FROM ledger_entries LIMIT 1"
            )
        with new.read() as tx:
            assert len(tx.list_ledger(account_id=acct.id)) == 4
    finally:
        new.close()


def test_concurrent_first_opens_of_new_sqlite_files_all_succeed(tmp_path: Path) -> None:
    """Eight handles opening one new SQLite file at once race for the switch to WAL, and
    SQLite answers the loser "database is locked" at once (no busy handler): 1-2% of such
    opens failed before the switch was retried. 60 new files, eight handles each."""
    failures: list[BaseException] = []
    for n in range(60):
        handles, errors = _open_at_once(functools.partial(SQLiteStorage, tmp_path / f"new-{n}.db"))
        failures += errors
        for s in handles:
            s.close()
    assert failures == []


def _index_shapes(storage: Storage) -> list[tuple[str, ...]]:
    """Each index of the schema as (table, unique, columns, condition), its name left out."""
    with storage.read() as tx:
        run = tx._all  # type: ignore[attr-defined]
        if isinstance(storage, SQLiteStorage):
            shapes: list[tuple[str, ...]] = []
            tables = [r[0] for r in run("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for _, name, unique, _origin, partial in run(f"PRAGMA index_list('{table}')"):
                    cols = ",".join(str(r[2]) for r in run(f"PRAGMA index_info('{name}')"))
                    sql = run("SELECT sql FROM sqlite_master WHERE name = ?", (name,))[0][0] or ""
                    where = sql.upper().partition(" WHERE ")[2].strip() if partial else ""
                    shapes.append((table, str(unique), cols, where))
            return shapes
        rows = run(
            "SELECT t.relname, i.indisunique::text, i.indkey::text,"
            " COALESCE(pg_get_expr(i.indexprs, i.indrelid), '') || '|'"
            " || COALESCE(pg_get_expr(i.indpred, i.indrelid), '')"
            " FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = current_schema()"
        )
        return [tuple(str(v) for v in r) for r in rows]


def test_no_index_duplicates_another(storage: Storage) -> None:
    """Every index is paid for by every insert: two with the same table, columns,
    uniqueness and condition are one too many (v17 once repeated v1's idempotency_age)."""
    shapes = _index_shapes(storage)
    assert len(shapes) > 20  # the query saw the schema's indexes
    assert sorted(s for s in set(shapes) if shapes.count(s) > 1) == []
