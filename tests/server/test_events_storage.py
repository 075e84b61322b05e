"""The event outbox in storage, on both backends: an event exists exactly when its
transaction committed, ids follow commit order (a reader never skips one that committed
late), and the table is append-only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from cardmint.server.storage import Storage, StorageError, UnitOfWork


class AbortError(Exception):
    pass


def test_an_event_exists_exactly_when_its_transaction_committed(storage: Storage) -> None:
    with storage.transaction() as tx:
        assert tx.events_head() == 0
        first = tx.emit_event("account.locked", "account:a", '{"n":1}')

    def emit_then_fail(tx: UnitOfWork) -> None:
        tx.emit_event("account.locked", "account:b")
        raise AbortError

    with pytest.raises(AbortError):
        storage.run(emit_then_fail)
    second = storage.run(lambda tx: tx.emit_event("card.locked", "card:1"))
    with storage.read() as tx:
        got = tx.events_after(0)
        assert [(e.id, e.kind, e.subject, e.detail) for e in got] == [
            (1, "account.locked", "account:a", '{"n":1}'),
            (2, "card.locked", "card:1", "{}"),
        ]
        assert tx.events_head() == 2
        assert [e.id for e in tx.events_after(1)] == [2] and tx.events_after(2) == []
        assert [e.id for e in tx.events_after(0, limit=1)] == [1]
    # SQLite numbers an event in its transaction; PostgreSQL right after the commit.
    assert (first.id, second.id) == ((1, 2) if storage.backend == "sqlite" else (0, 0))


def test_events_are_append_only(storage: Storage) -> None:
    storage.run(lambda tx: tx.emit_event("account.locked", "account:a"))
    for sql in ("UPDATE events SET subject = 'x'", "DELETE FROM events"):
        with pytest.raises(StorageError), storage.transaction() as tx:
            tx._execute(sql)  # type: ignore[attr-defined]
    with storage.read() as tx:
        assert [e.subject for e in tx.events_after(0)] == ["account:a"]


def test_a_follower_never_skips_an_event_committed_late(opener: Callable[[], Storage]) -> None:
    # Two handles (two server processes) emit concurrently while a follower reads the feed
    # the way a subscriber does: only ids above its cursor. Had an id committed after a
    # higher one, the follower would have stepped over it.
    writers = [opener(), opener()]
    reader = opener()
    total, done = 160, threading.Event()
    seen: list[tuple[int, str]] = []

    def follow() -> None:
        cursor, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline and (not done.is_set() or cursor < total):
            with reader.read() as tx:
                batch = tx.events_after(cursor, 7)
            seen.extend((e.id, e.subject) for e in batch)
            cursor = batch[-1].id if batch else cursor

    def emit(i: int) -> None:
        writers[i % 2].run(lambda tx: tx.emit_event("account.locked", f"account:{i}"))

    follower = threading.Thread(target=follow)
    follower.start()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(emit, range(total)))
    done.set()
    follower.join(timeout=90)
    assert [i for i, _ in seen] == list(range(1, total + 1))  # every id, once, in order
    assert sorted(subject for _, subject in seen) == sorted(f"account:{i}" for i in range(total))
