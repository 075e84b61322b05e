"""Money: balances, idempotent redeem/reverse, paging, and a redeem race."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from cardmint.server.domain import (
    CardFrozen,
    CardNotFound,
    CurrencyMismatch,
    Domain,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidArgument,
    NotReversible,
    PermissionDenied,
    TransactionNotFound,
)
from cardmint.server.storage import CardStatus, Storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Callers, MintedLot


def test_redeem_is_idempotent_and_never_negative(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    serial, code = make_lot(1).pairs[0]
    domain.cards.bind(who.alice, code)
    first = domain.balances.redeem(who.merchant, serial=serial, amount=300, currency="CNY", request_id="r1")
    assert (first.balance_after, first.replayed) == (200, False)
    again = domain.balances.redeem(who.merchant, serial=serial, amount=300, currency="CNY", request_id="r1")
    assert again.replayed and again.entry_id == first.entry_id and again.balance_after == 200
    with pytest.raises(IdempotencyKeyReused):
        domain.balances.redeem(who.merchant, serial=serial, amount=301, currency="CNY", request_id="r1")
    with pytest.raises(InsufficientFunds) as short:
        domain.balances.redeem(who.merchant, serial=serial, amount=201, currency="CNY", request_id="r2")
    assert short.value.metadata["balance"] == "200"
    # A refused request stored nothing: the same id may now succeed.
    assert (
        domain.balances.redeem(
            who.alice, serial=serial, amount=200, currency="CNY", request_id="r2"
        ).balance_after
        == 0
    )
    with pytest.raises(CurrencyMismatch):
        domain.balances.redeem(who.merchant, serial=serial, amount=1, currency="USD", request_id="r3")
    with pytest.raises(InvalidArgument):
        domain.balances.redeem(who.merchant, serial=serial, amount=1.5, currency="CNY", request_id="r4")  # type: ignore[arg-type]
    with pytest.raises(CardNotFound):
        domain.balances.redeem(who.bob, serial=serial, amount=1, currency="CNY", request_id="r5")
    assert domain.balances.card_balance(who.alice, serial, amount=1).sufficient is False


def test_reverse_gives_back_at_most_what_was_taken(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    serial, _ = make_lot(1).pairs[0]
    taken = domain.balances.redeem(who.merchant, serial=serial, amount=400, currency="CNY", request_id="a")
    back = domain.balances.reverse(who.merchant, entry_id=taken.entry_id, amount=150, request_id="b")
    assert back.balance_after == 250
    assert domain.balances.reverse(who.merchant, entry_id=taken.entry_id, amount=150, request_id="b").replayed
    with pytest.raises(IdempotencyKeyReused):
        domain.balances.reverse(who.merchant, entry_id=taken.entry_id, amount=100, request_id="b")
    with pytest.raises(NotReversible):
        domain.balances.reverse(who.merchant, entry_id=taken.entry_id, amount=251, request_id="c")
    with pytest.raises(NotReversible):
        domain.balances.reverse(who.merchant, entry_id=back.entry_id, amount=1, request_id="d")
    with pytest.raises(TransactionNotFound):
        domain.balances.reverse(who.merchant, entry_id=10**9, amount=1, request_id="e")
    with pytest.raises(PermissionDenied):
        domain.balances.reverse(who.alice, entry_id=taken.entry_id, amount=1, request_id="f")
    assert (
        domain.balances.reverse(
            who.merchant, entry_id=taken.entry_id, amount=250, request_id="g"
        ).balance_after
        == 500
    )


def test_frozen_card_cannot_pay(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage
) -> None:
    serial, _ = make_lot(1).pairs[0]
    with storage.transaction() as tx:
        card = tx.get_card_by_serial(serial)
        assert card is not None
        tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
    with pytest.raises(CardFrozen):
        domain.balances.redeem(who.merchant, serial=serial, amount=1, currency="CNY", request_id="z")
    assert domain.balances.card_balance(who.merchant, serial, amount=1).sufficient is False


def test_account_balance_and_paged_history(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    pairs = make_lot(3).pairs
    for _, code in pairs:
        domain.cards.bind(who.alice, code)
    bal = domain.balances.account_balance(who.alice, amount=1500, currency="CNY")
    assert [(m.amount, m.currency) for m in bal.balances] == [(1500, "CNY")] and bal.sufficient is True
    assert (
        domain.balances.account_balance(who.operator, "alice", amount=1501, currency="CNY").sufficient
        is False
    )
    with pytest.raises(PermissionDenied):
        domain.balances.account_balance(who.merchant, "alice")
    for i in range(4):
        domain.balances.redeem(
            who.merchant, serial=pairs[0][0], amount=10, currency="CNY", request_id=f"p{i}"
        )
    seen: list[int] = []
    before = None
    while True:
        page = domain.balances.list_transactions(who.alice, before_id=before, limit=2)
        seen += [t.id for t in page.items]
        if page.next_before_id is None:
            break
        before = page.next_before_id
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)  # 3 binds + 4 redeems, newest first
    card_page = domain.balances.list_transactions(who.merchant, serial=pairs[0][0], limit=50)
    assert [t.kind for t in card_page.items] == ["redeem"] * 4 + ["bind"]
    assert all(t.serial == pairs[0][0] for t in card_page.items)
    assert sum(t.amount for t in card_page.items) == -40


def test_redeem_race_spends_exactly_the_balance(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    serial, _ = make_lot(1, face_value=1000).pairs[0]
    ok: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(4):
            try:
                r = domain.balances.redeem(
                    who.merchant, serial=serial, amount=70, currency="CNY", request_id=f"t{t}-{i % 2}"
                )
            except InsufficientFunds as e:
                with lock:
                    refused.append(e.reason)
            else:
                with lock:
                    if not r.replayed:
                        ok.append(r.balance_after)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # 1000 // 70 = 14 redemptions fit; every other first attempt is refused, never overdrawn.
    assert len(ok) == 14 and sorted(ok, reverse=True) == [1000 - 70 * k for k in range(1, 15)]
    assert domain.balances.card_balance(who.merchant, serial).balance.amount == 1000 - 14 * 70


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=8))
def test_money_is_conserved(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], amounts: list[int]
) -> None:
    """Whatever sequence of redeems and full reversals runs, balance = face - net taken, >= 0."""
    serial, _ = make_lot(1).pairs[0]
    balance = 500
    for i, amount in enumerate(amounts):
        rid = f"{serial}-{i}"
        try:
            r = domain.balances.redeem(
                who.merchant, serial=serial, amount=amount, currency="CNY", request_id=rid
            )
        except InsufficientFunds:
            assert amount > balance
            continue
        balance -= amount
        assert r.balance_after == balance >= 0
        if i % 2:
            back = domain.balances.reverse(
                who.merchant, entry_id=r.entry_id, amount=amount, request_id=rid + "r"
            )
            balance += amount
            assert back.balance_after == balance <= 500
    assert domain.balances.card_balance(who.merchant, serial).balance.amount == balance


def test_every_money_movement_is_audited_once(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage
) -> None:
    """Redeem and reverse each chain one audit event (who, what, the ledger entry) in their
    own transaction; a replay adds none, a refusal none; the chain verifies."""
    from cardmint.server.domain.audit import verify_storage

    serial, _ = make_lot(1).pairs[0]
    card_id = storage.run(lambda tx: tx.get_card_by_serial(serial)).id  # type: ignore[union-attr]

    def money_events() -> list[tuple[str, str, str]]:
        with storage.read() as tx:
            entries = tx.audit_entries(0, 10_000)
        return [(e.actor, e.action, e.subject) for e in entries if e.action.startswith("balance.")]

    spent = domain.balances.redeem(who.merchant, serial=serial, amount=120, currency="CNY", request_id="a1")
    domain.balances.redeem(who.merchant, serial=serial, amount=120, currency="CNY", request_id="a1")  # replay
    with pytest.raises(InsufficientFunds):
        domain.balances.redeem(who.merchant, serial=serial, amount=10_000, currency="CNY", request_id="a2")
    domain.balances.reverse(who.operator, entry_id=spent.entry_id, amount=20, request_id="a3")
    domain.balances.reverse(who.operator, entry_id=spent.entry_id, amount=20, request_id="a3")  # replay
    assert money_events() == [
        (who.merchant.actor, "balance.redeem", f"card:{card_id}"),
        (who.operator.actor, "balance.reverse", f"card:{card_id}"),
    ]
    assert verify_storage(storage).ok


def test_a_call_whose_deadline_passed_is_not_even_started(
    domain: Domain,
    who: Callers,
    make_lot: Callable[..., MintedLot],
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under overload a call can reach a worker after its caller gave up: it is answered
    DEADLINE_PASSED without its unit of work ever running (no writer time spent on it), and
    its request id stays free."""
    import time

    from cardmint.server.domain._context import CALL_DEADLINE
    from cardmint.server.domain.errors import DeadlinePassed

    serial, _ = make_lot(1).pairs[0]
    ran: list[int] = []
    real_run = storage.run

    def counted(*args: object, **kwargs: object) -> object:
        ran.append(1)
        return real_run(*args, **kwargs)  # type: ignore[arg-type]

    mark = CALL_DEADLINE.set(time.monotonic() - 0.001)
    try:
        with monkeypatch.context() as m:
            m.setattr(storage, "run", counted)
            with pytest.raises(DeadlinePassed):
                domain.balances.redeem(
                    who.merchant, serial=serial, amount=5, currency="CNY", request_id="late"
                )
    finally:
        CALL_DEADLINE.reset(mark)
    assert ran == []
    done = domain.balances.redeem(who.merchant, serial=serial, amount=5, currency="CNY", request_id="late")
    assert (done.replayed, done.balance_after) == (False, 495)
