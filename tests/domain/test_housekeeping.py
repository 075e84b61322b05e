"""Housekeeping: request ids are forgotten after the idempotency window, in short batches;
within it a retry is answered as the first call (both backends, the storage's fake clock)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

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
