"""Invariants under contention: two storage handles (as two server processes would hold),
many threads each, on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cardmint.server.storage import (
    GENESIS_HASH,
    AttemptKind,
    IdempotencyConflictError,
    LedgerKind,
    MoneyOutcome,
    Storage,
    UnitOfWork,
    audit_hash,
)

from .conftest import TIMINGS
from .helpers import one_card

THREADS = 32


def _hammer(handles: list[Storage], work: Callable[[Storage, int], object], n: int) -> list[object]:
    """Run ``work`` n times across THREADS threads, alternating storage handles."""
    start = threading.Barrier(min(THREADS, n))

    def one(i: int) -> object:
        if i < THREADS:
            start.wait(timeout=30)  # release the first wave together to maximise overlap
        return work(handles[i % len(handles)], i)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_redeems_spend_exactly_the_balance(opener: Callable[[], Storage], backend: str) -> None:
    handles = [opener(), opener()]
    card = one_card(handles[0], face=100)

    def redeem(s: Storage, i: int) -> MoneyOutcome:
        return s.run(lambda tx: tx.redeem(card, 1 + i % 3, "CNY", request_id=f"r{i}")).outcome

    t0 = time.perf_counter()
    outcomes = _hammer(handles, redeem, 320)
    elapsed = time.perf_counter() - t0
    with handles[0].read() as tx:
        balance = tx.get_card(card).balance  # type: ignore[union-attr]
        entries = tx.list_ledger(card_id=card, limit=1000)
    spent = sum(-e.amount for e in entries if e.kind is LedgerKind.REDEEM)
    ok = sum(o is MoneyOutcome.OK for o in outcomes)
    assert set(outcomes) <= {MoneyOutcome.OK, MoneyOutcome.INSUFFICIENT}
    assert ok == len(entries) and balance >= 0 and spent == 100 - balance
    # 320 attempts could take 640: exactly the 100 on the card went, and nothing more.
    assert balance == 0 and spent == 100
    # Every entry's balance_after is a distinct point on the way down: no lost update.
    afters = sorted(e.balance_after for e in entries)  # type: ignore[type-var]
    assert len(set(afters)) == len(afters) and afters[0] == balance
    TIMINGS.append(
        f"{backend}: 320 contended redeems on one card, 32 threads x 2 handles: {320 / elapsed:,.0f}/s"
    )


def test_concurrent_reversals_never_exceed_the_redemption(opener: Callable[[], Storage]) -> None:
    handles = [opener(), opener()]
    card = one_card(handles[0], face=100)
    with handles[0].transaction() as tx:
        entry = tx.redeem(card, 40, "CNY").entry
    assert entry is not None
    outcomes = _hammer(handles, lambda s, i: s.run(lambda tx: tx.reverse(entry.id, 3)).outcome, 64)
    with handles[1].read() as tx:
        balance = tx.get_card(card).balance  # type: ignore[union-attr]
    assert sum(o is MoneyOutcome.OK for o in outcomes) == 13  # 13 * 3 = 39 <= 40 < 42
    assert balance == 60 + 39


def test_idempotent_redeem_has_one_effect(opener: Callable[[], Storage]) -> None:
    handles = [opener(), opener()]
    card = one_card(handles[0], face=1000)

    def redeem_once(s: Storage, amount: int) -> bytes:
        def work(tx: UnitOfWork) -> bytes:
            claim = tx.claim_idempotency("Redeem", "req-42", f"card={card};amount={amount}".encode())
            if claim.replay is not None:
                return claim.replay
            result = tx.redeem(card, amount, "CNY", request_id="req-42")
            response = f"{result.outcome}:{result.balance}".encode()
            tx.complete_idempotency("Redeem", "req-42", response)
            return response

        return s.run(work)

    answers = _hammer(handles, lambda s, i: redeem_once(s, 70), 48)
    assert set(answers) == {b"ok:930"}
    try:
        redeem_once(handles[0], 71)
        conflict = False
    except IdempotencyConflictError:
        conflict = True
    assert conflict
    with handles[0].read() as tx:
        entries = tx.list_ledger(card_id=card)
        assert [(e.amount, e.request_id) for e in entries] == [(-70, "req-42")]
        assert tx.get_card(card).balance == 930  # type: ignore[union-attr]


def test_attempt_counter_counts_every_concurrent_failure(opener: Callable[[], Storage]) -> None:
    handles = [opener(), opener()]
    counts = _hammer(
        handles,
        lambda s, i: s.run(lambda tx: tx.record_attempt(AttemptKind.CARD, "card-7", 3600)).current,
        64,
    )
    assert sorted(counts) == list(range(1, 65))  # type: ignore[type-var]


def test_concurrent_audit_appends_keep_one_chain(opener: Callable[[], Storage]) -> None:
    handles = [opener(), opener()]
    _hammer(handles, lambda s, i: s.run(lambda tx: tx.append_audit("t", "card.view", f"card:{i}")), 96)
    with handles[0].read() as tx:
        entries = tx.audit_entries()
    assert [e.id for e in entries] == list(range(1, 97))
    prev = GENESIS_HASH
    for e in entries:
        assert e.prev_hash == prev and e.hash == audit_hash(
            prev, e.id, e.at, e.actor, e.action, e.subject, e.detail
        )
        prev = e.hash
    assert sorted(e.subject for e in entries) == sorted(f"card:{i}" for i in range(96))


def test_small_transactions_per_second(storage: Storage, backend: str) -> None:
    """Throughput of the redeem path (one transaction each, one thread); reported, not asserted."""
    card = one_card(storage, face=10**9)
    n = 1000
    t0 = time.perf_counter()
    for i in range(n):
        with storage.transaction() as tx:
            assert tx.redeem(card, 1, "CNY", request_id=f"t{i}").ok
    elapsed = time.perf_counter() - t0
    with storage.read() as tx:
        assert tx.get_card(card).balance == 10**9 - n  # type: ignore[union-attr]
    TIMINGS.append(f"{backend}: redeem transactions, 1 thread: {n / elapsed:,.0f}/s")
