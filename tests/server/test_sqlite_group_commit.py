"""SQLite group commit: concurrent units share one transaction and one fsync, yet each is
still all-or-nothing, sees the writes of the units before it, and hears only its own fate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cardmint.server.storage import Storage, StorageError, UnitOfWork
from cardmint.server.storage.sqlite import SQLiteStorage

from .helpers import one_card

UNITS = 40


class RefusedError(Exception):
    pass


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteStorage]:
    s = SQLiteStorage(tmp_path / "gc.db")
    yield s
    s.close()


def _wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_queued_units_commit_together_and_fail_alone(sqlite: SQLiteStorage) -> None:
    card = one_card(sqlite, face=10_000)
    gate = threading.Event()
    holding = threading.Event()

    def blocker(tx: UnitOfWork) -> str:
        holding.set()
        assert gate.wait(10)
        return "first"

    def unit(i: int) -> Callable[[UnitOfWork], int]:
        def work(tx: UnitOfWork) -> int:
            res = tx.redeem(card, 1, "CNY", request_id=f"u{i}")
            if i % 4 == 0:  # wrote, then refused: its redeem must vanish, the others stay
                raise RefusedError(i)
            if i % 4 == 1:  # a statement fails inside the unit: it is rolled back alone
                tx.get_product_by_sku("x")
                tx._execute("INSERT INTO nowhere VALUES (1)")  # type: ignore[attr-defined]
            assert res.entry is not None
            return res.entry.id

        return work

    results: dict[int, object] = {}
    with ThreadPoolExecutor(max_workers=UNITS + 1) as pool:
        first = pool.submit(sqlite.run, blocker)
        assert holding.wait(10)
        commits_before = sqlite.group_commits

        def call(i: int) -> None:
            try:
                results[i] = sqlite.run(unit(i))
            except Exception as e:  # each caller hears its own unit's fate
                results[i] = e

        futures = [pool.submit(call, i) for i in range(UNITS)]
        _wait_for(lambda: len(sqlite._queue) == UNITS)
        gate.set()
        assert first.result(10) == "first"
        for f in futures:
            f.result(10)
    # The blocker's transaction, then ONE for all forty units queued behind it.
    assert sqlite.group_commits - commits_before == 2
    refused = [i for i in range(UNITS) if isinstance(results[i], RefusedError)]
    broken = [i for i in range(UNITS) if isinstance(results[i], StorageError)]
    assert refused == [i for i in range(UNITS) if i % 4 == 0]
    assert broken == [i for i in range(UNITS) if i % 4 == 1]
    ok = {i: results[i] for i in range(UNITS) if i % 4 > 1}
    with sqlite.read() as tx:
        entries = tx.list_ledger(card_id=card, limit=1000)
        balance = tx.get_card(card).balance  # type: ignore[union-attr]
    redeems = {e.request_id: e.id for e in entries if e.request_id}
    assert redeems == {f"u{i}": entry for i, entry in ok.items()}
    assert balance == 10_000 - len(ok)


def test_audit_and_event_heads_survive_units_rolled_back_in_a_batch(sqlite: SQLiteStorage) -> None:
    """Units of one group commit chain audit events and outbox events on the head the unit
    before them left (kept in the transaction, not read again); a unit that appended and
    was then rolled back puts the head back, so the next unit chains onto the right one:
    the chain verifies and the outbox ids run without a gap, across several batches."""
    from cardmint.server.domain.audit import verify_storage

    sqlite.run(lambda tx: tx.append_audit("test", "seed", "x:0"))
    gate, holding = threading.Event(), threading.Event()

    def blocker(tx: UnitOfWork) -> None:
        holding.set()
        assert gate.wait(10)
        tx.append_audit("test", "blocker", "x:b")

    def unit(i: int) -> Callable[[UnitOfWork], int]:
        def work(tx: UnitOfWork) -> int:
            tx.emit_event("test.event", f"x:{i}")
            entry = tx.append_audit("test", "unit", f"x:{i}")
            if i % 3 == 0:  # appended both, then refused: both vanish, the head goes back
                raise RefusedError(i)
            tx.emit_event("test.event", f"x:{i}:second")
            return entry.id

        return work

    kept: list[int] = []
    for batch in range(3):
        gate.clear()
        holding.clear()
        with ThreadPoolExecutor(max_workers=UNITS + 1) as pool:
            first = pool.submit(sqlite.run, blocker)
            assert holding.wait(10)
            futures = {i: pool.submit(sqlite.run, unit(batch * UNITS + i)) for i in range(UNITS)}
            _wait_for(lambda: len(sqlite._queue) == UNITS)
            gate.set()
            first.result(10)
            for i, f in futures.items():
                if (batch * UNITS + i) % 3 == 0:
                    with pytest.raises(RefusedError):
                        f.result(10)
                else:
                    kept.append(f.result(10))
    verdict = verify_storage(sqlite)
    assert verdict.ok, verdict
    assert verdict.events == 1 + 3 + len(kept)  # the seed, three blockers, the units kept
    assert len(set(kept)) == len(kept)
    with sqlite.read() as tx:
        events = tx.events_after(0, 10_000)
    assert [e.id for e in events] == list(range(1, 2 * len(kept) + 1))


def test_a_unit_alone_that_fails_leaves_nothing(sqlite: SQLiteStorage) -> None:
    """A unit alone in its transaction runs without a savepoint: when it fails after
    writing (a refusal it raised, or a statement that failed), the transaction is rolled
    back, its writes and audit event with it, and the next unit chains onto the old head."""
    from cardmint.server.domain.audit import verify_storage

    card = one_card(sqlite, face=100)
    before = sqlite.group_commits

    def refused(tx: UnitOfWork) -> None:
        tx.redeem(card, 7, "CNY", request_id="gone")
        tx.append_audit("test", "refused", "x:1")
        tx.emit_event("test.event", "x:1")
        raise RefusedError()

    def broken(tx: UnitOfWork) -> None:
        tx.redeem(card, 9, "CNY", request_id="gone-too")
        tx._execute("INSERT INTO nowhere VALUES (1)")  # type: ignore[attr-defined]

    with pytest.raises(RefusedError):
        sqlite.run(refused)
    with pytest.raises(StorageError):
        sqlite.run(broken)
    assert sqlite.group_commits == before  # neither committed
    kept = sqlite.run(lambda tx: tx.append_audit("test", "kept", "x:2"))
    with sqlite.read() as tx:
        assert tx.get_card(card).balance == 100  # type: ignore[union-attr]
        assert all(e.request_id not in ("gone", "gone-too") for e in tx.list_ledger(card_id=card, limit=100))
        assert tx.events_after(0, 100) == []
    verdict = verify_storage(sqlite)
    assert verdict.ok and verdict.head_hash == kept.hash, verdict


def test_units_in_one_batch_see_each_other(sqlite: SQLiteStorage) -> None:
    card = one_card(sqlite, face=UNITS // 2)
    with ThreadPoolExecutor(max_workers=UNITS) as pool:
        outcomes = list(
            pool.map(
                lambda i: sqlite.run(lambda tx: tx.redeem(card, 1, "CNY", f"s{i}")).outcome, range(UNITS)
            )
        )
    assert sum(o.value == "ok" for o in outcomes) == UNITS // 2
    with sqlite.read() as tx:
        assert tx.get_card(card).balance == 0  # type: ignore[union-attr]


def test_nothing_is_acknowledged_when_the_commit_fails(sqlite: SQLiteStorage) -> None:
    card = one_card(sqlite, face=100)
    real = sqlite._writer
    calls: list[str] = []

    class FailingCommit:
        """The writer connection, except that COMMIT fails like a full disk would."""

        def execute(self, sql: str, *args: Any) -> object:
            calls.append(sql)
            if sql == "COMMIT":
                raise sqlite3_error("database or disk is full")
            return real.execute(sql, *args)

    sqlite._writer = FailingCommit()  # type: ignore[assignment]
    try:
        with pytest.raises(StorageError, match="disk is full"):
            sqlite.run(lambda tx: tx.redeem(card, 5, "CNY", "lost"))
    finally:
        sqlite._writer = real
    assert "ROLLBACK" in calls
    with sqlite.read() as tx:
        assert tx.get_card(card).balance == 100  # type: ignore[union-attr]
        assert all(e.request_id != "lost" for e in tx.list_ledger(card_id=card, limit=100))


def test_run_inside_a_transaction_is_refused(sqlite: Storage) -> None:
    with sqlite.transaction(), pytest.raises(StorageError, match="do not nest"):
        sqlite.run(lambda tx: 1)


def sqlite3_error(message: str) -> Exception:
    import sqlite3

    return sqlite3.OperationalError(message)
