"""Schema migrations: applied once, recorded, verified, safe when processes start together."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

from cardmint.server.storage import Storage
from cardmint.server.storage.migrations import MIGRATIONS
from cardmint.server.storage.sqlite import SQLiteStorage


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
