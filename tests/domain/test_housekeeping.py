"""Housekeeping: request ids are forgotten after the idempotency window, in short batches;
within it a retry is answered as the first call (both backends, the storage's fake clock)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from cardmint.server.domain import Domain, DomainConfig, Keyring
from cardmint.server.storage import IdempotencyClaim, Storage, UnitOfWork

from .conftest import Callers, FakeClock, MintedLot


def _keys(storage: Storage) -> int:
    with storage.read() as tx:
        return int(tx._one("SELECT count(*) FROM idempotency_keys")[0])  # type: ignore[attr-defined]


def test_request_ids_are_answered_within_the_window_and_forgotten_after(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], clock: FakeClock, storage: Storage
) -> None:
    serial, _ = make_lot(1, face_value=1000).pairs[0]
    first = domain.balances.redeem(who.admin, serial=serial, amount=5, currency="CNY", request_id="r-old")
    clock.advance(days=domain.config.idempotency_days - 1)
    domain.balances.redeem(who.admin, serial=serial, amount=7, currency="CNY", request_id="r-new")
    before = _keys(storage)
    assert domain.housekeeping().purged_request_ids == 0  # nothing is past the window yet
    again = domain.balances.redeem(who.admin, serial=serial, amount=5, currency="CNY", request_id="r-old")
    assert again.replayed and again.entry_id == first.entry_id
    clock.advance(days=2)  # r-old is now past the window, r-new is not
    done = domain.housekeeping()
    assert done.purged_request_ids >= 1 and _keys(storage) == before - done.purged_request_ids
    assert domain.balances.redeem(
        who.admin, serial=serial, amount=7, currency="CNY", request_id="r-new"
    ).replayed  # still inside its window
    # Past its window, the same request id is a new request: documented, not a replay.
    late = domain.balances.redeem(who.admin, serial=serial, amount=5, currency="CNY", request_id="r-old")
    assert not late.replayed and late.entry_id != first.entry_id


def test_purges_run_in_batches_oldest_first(storage: Storage, keyring: Keyring, clock: FakeClock) -> None:
    domain = Domain(storage, keyring, config=DomainConfig(idempotency_days=1))
    for i in range(25):

        def claim(tx: UnitOfWork, i: int = i) -> IdempotencyClaim:
            return tx.claim_idempotency("test", f"k{i}", b"x")

        def complete(tx: UnitOfWork, i: int = i) -> None:
            tx.complete_idempotency("test", f"k{i}", b"ok")

        storage.run(claim)
        storage.run(complete)
        clock.advance(seconds=60)
    # Keys k0..k24 were made a minute apart; the window now ends between k21 and k22.
    clock.advance(days=1, seconds=-200)
    with storage.transaction() as tx:
        assert tx.purge_idempotency(clock() - timedelta(days=1), limit=4) == 4
        assert tx.claim_idempotency("test", "k0", b"y").replay is None  # the oldest went first
        assert tx.claim_idempotency("test", "k4", b"x").replay == b"ok"  # the fifth is still there
    storage.run(lambda tx: tx.complete_idempotency("test", "k0", b"again"))
    assert domain.purge_idempotency(batch=5) == 22 - 4  # k4..k21, in several batches
    assert _keys(storage) == 3 + 1  # k22..k24 and the new k0
    assert Domain(storage, keyring, config=DomainConfig(idempotency_days=0)).purge_idempotency() == 0


def _counters(storage: Storage, window_seconds: int) -> int:
    with storage.read() as tx:
        return int(
            tx._one(  # type: ignore[attr-defined]
                "SELECT count(*) FROM attempt_counters WHERE window_seconds = ?", (window_seconds,)
            )[0]
        )


def test_attempt_counters_are_forgotten_once_no_limit_reads_them(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], clock: FakeClock, storage: Storage
) -> None:
    from cardmint.server.domain import CardLocked, CardNotFound, Origin
    from cardmint.server.storage import AttemptKind

    from .test_cards import _unknown

    risk = domain.profile.risk
    assert (risk.account.lock_seconds, risk.card.lock_seconds) == (900, 3600)
    serial, code = make_lot(1).pairs[0]
    wrong = _unknown(code)
    for answer in (CardNotFound, CardNotFound, CardLocked):  # one card guessed until it locks
        with pytest.raises(answer):
            domain.cards.bind(who.alice, wrong, serial=serial, origin=Origin(challenged=True))
    account_rows = _counters(storage, 900)
    assert account_rows >= 1 and _counters(storage, 3600) >= 1
    # An hour on: the account's 15-minute windows are long past and go; the card's failures
    # are the previous window's now, still judged, and stay.
    clock.advance(seconds=3600)
    assert domain.housekeeping().purged_attempt_counters >= account_rows
    assert _counters(storage, 900) == 0
    with storage.read() as tx:
        assert tx.attempt_count(AttemptKind.CARD, serial, 3600).previous == 3
    # Two windows on, no limit reads them: gone, in batches of one.
    clock.advance(seconds=3600)
    left = _counters(storage, 3600)
    assert left >= 1 and domain.purge_attempts(batch=1) == left
    assert _counters(storage, 3600) == 0
    assert domain.housekeeping().purged_attempt_counters == 0
