"""BalanceService.Transfer through the gRPC API, on SQLite and PostgreSQL: the holder rule,
the refusals (nothing moves), idempotency, the linked ledger pair, the audit event and the
notifier event, and opposite transfers between two cards at once (no deadlock)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from cardmint.client import (
    CardExpired,
    CardFrozen,
    CardmintError,
    CardNotFound,
    Client,
    CurrencyMismatch,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidArgument,
    NotSameHolder,
    OverFaceValue,
    PermissionDenied,
)
from cardmint.server.app import Running
from cardmint.v1 import balance_pb2

Connect = Callable[..., Client]


def _cards(admin: Client, sku: str, face: int, n: int, currency: str = "CNY") -> list[tuple[str, str]]:
    admin.create_product(sku=sku, name=sku, currency=currency, denominations=[face])
    lot = admin.create_lot(sku, n, face)
    return list(admin.stream_lot(lot.id))


def _balance(admin: Client, serial: str) -> int:
    return int(admin.get_card(serial).balance.minor_units)


def _audit(server: Running, action: str) -> list[dict[str, object]]:
    with server.storage.read() as tx:
        return [json.loads(e.detail) for e in tx.audit_entries() if e.action == action]


def test_transfer_between_a_holders_cards(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    alice = connect("customer", account="alice")
    bob = connect("customer", account="bob")
    merchant = connect("merchant")
    (a1, c1), (a2, c2), (b1, cb), (loose, _) = _cards(admin, "TR", 10_000, 4)
    for code in (c1, c2):
        alice.bind_card(code, challenge_passed=True)
    bob.bind_card(cb, challenge_passed=True)
    alice.redeem(a2, 6_000, "CNY", request_id="spend-a2")

    got = alice.transfer(a1, a2, 2_500, "CNY", request_id="move-1")
    assert (got.from_serial, got.to_serial, got.amount.minor_units, got.replayed) == (a1, a2, 2_500, False)
    assert (got.from_balance_after.minor_units, got.to_balance_after.minor_units) == (7_500, 6_500)
    assert (_balance(admin, a1), _balance(admin, a2)) == (7_500, 6_500)

    # A retry answers the first receipt and moves nothing; other parameters are refused.
    again = alice.transfer(a1, a2, 2_500, "CNY", request_id="move-1")
    assert again.replayed and again.out_transaction_id == got.out_transaction_id
    assert again.in_transaction_id == got.in_transaction_id
    assert again.to_balance_after == got.to_balance_after
    with pytest.raises(IdempotencyKeyReused):
        alice.transfer(a1, a2, 2_600, "CNY", request_id="move-1")
    with pytest.raises(IdempotencyKeyReused):
        alice.transfer(a2, a1, 2_500, "CNY", request_id="move-1")
    assert (_balance(admin, a1), _balance(admin, a2)) == (7_500, 6_500)

    # The ledger: a linked pair, one on each card, carrying the request id.
    out = next(iter(admin.transactions(serial=a1)))
    into = next(iter(admin.transactions(serial=a2)))
    assert (out.kind, out.amount.minor_units, out.balance_after_minor_units, out.request_id) == (
        balance_pb2.TRANSACTION_KIND_TRANSFER_OUT,
        -2_500,
        7_500,
        "move-1",
    )
    assert (into.kind, into.amount.minor_units, into.reverses_id) == (
        balance_pb2.TRANSACTION_KIND_TRANSFER_IN,
        2_500,
        out.id,
    )
    [audited] = _audit(server, "balance.transfer")
    assert (audited["amount"], audited["out_entry"], audited["in_entry"]) == (2_500, out.id, into.id)
    with server.storage.read() as tx:
        events = [e for e in tx.events_after(0) if e.kind == "card.transferred"]
    assert len(events) == 1 and events[0].subject == f"card:{a1}"
    assert json.loads(events[0].detail)["to"] == a2

    # Refusals: each leaves both balances as they were.
    refusals: list[tuple[type[CardmintError], Callable[[], object]]] = [
        (InsufficientFunds, lambda: alice.transfer(a1, a2, 7_501, "CNY")),
        (OverFaceValue, lambda: alice.transfer(a1, a2, 3_501, "CNY")),
        (CardNotFound, lambda: alice.transfer(a1, b1, 1, "CNY")),
        (CardNotFound, lambda: alice.transfer(b1, a1, 1, "CNY")),
        (CardNotFound, lambda: alice.transfer(a1, loose, 1, "CNY")),
        (NotSameHolder, lambda: admin.transfer(a1, b1, 1, "CNY")),
        (NotSameHolder, lambda: admin.transfer(a1, loose, 1, "CNY")),
        (CurrencyMismatch, lambda: alice.transfer(a1, a2, 1, "USD")),
        (InvalidArgument, lambda: alice.transfer(a1, a1, 1, "CNY")),
        (InvalidArgument, lambda: alice.transfer(a1, a2, 0, "CNY")),
        (PermissionDenied, lambda: merchant.transfer(a1, a2, 1, "CNY")),
    ]
    for error, call in refusals:
        with pytest.raises(error):
            call()
    with pytest.raises(OverFaceValue) as full:
        alice.transfer(a1, a2, 3_501, "CNY")
    assert full.value.metadata["room"] == "3500"
    assert (_balance(admin, a1), _balance(admin, a2), _balance(admin, b1)) == (7_500, 6_500, 10_000)

    # A frozen card neither gives nor takes; staff may move between one holder's cards.
    admin.freeze(a2, "checking")
    with pytest.raises(CardFrozen) as frozen:
        alice.transfer(a1, a2, 1, "CNY")
    assert frozen.value.metadata["card"] == "to"
    admin.unfreeze(a2, "fine")
    staff = admin.transfer(a2, a1, 2_500, "CNY", request_id="staff-1")
    assert (staff.from_balance_after.minor_units, staff.to_balance_after.minor_units) == (4_000, 10_000)
    assert len(_audit(server, "balance.transfer")) == 2


def test_staff_consolidate_bearer_cards(connect: Connect) -> None:
    admin = connect("admin")
    (x, _), (y, _) = _cards(admin, "BEARER", 5_000, 2)
    admin.redeem(y, 5_000, "CNY")
    moved = admin.transfer(x, y, 5_000, "CNY")
    assert (moved.from_balance_after.minor_units, moved.to_balance_after.minor_units) == (0, 5_000)
    with pytest.raises(InsufficientFunds):
        admin.transfer(x, y, 1, "CNY")
    (usd, _) = _cards(admin, "BEARER-USD", 5_000, 1, currency="USD")[0]
    with pytest.raises(CurrencyMismatch):
        admin.transfer(usd, y, 1, "USD")


def test_expired_card_takes_nothing(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    (x, _), (y, _) = _cards(admin, "EXP", 5_000, 2)
    with server.storage.transaction() as tx:  # y expired yesterday
        past = tx.now() - timedelta(days=1)
        tx._execute("UPDATE cards SET expires_at = ? WHERE serial = ?", (tx._ts(past), y))  # type: ignore[attr-defined]
    with pytest.raises(CardExpired) as expired:
        admin.transfer(x, y, 1, "CNY")
    assert expired.value.metadata["card"] == "to"


def test_opposite_transfers_never_deadlock(connect: Connect) -> None:
    """Two cards, 16 clients moving 1 back and forth in both directions at once: every call
    answers OK (no deadlock or contention error leaks out), the total is conserved."""
    admin = connect("admin")
    (x, _), (y, _) = _cards(admin, "PINGPONG", 1_000, 2)
    admin.redeem(x, 500, "CNY")
    admin.redeem(y, 500, "CNY")
    workers = [connect("operator") for _ in range(16)]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(len(workers))

    def run(w: int) -> None:
        src, dst = (x, y) if w % 2 == 0 else (y, x)
        barrier.wait(timeout=30)
        for i in range(20):
            try:
                workers[w].transfer(src, dst, 1, "CNY", request_id=f"pp-{w}-{i}")
                key = "ok"
            except CardmintError as e:
                key = e.reason
            with lock:
                outcomes[key] += 1

    threads = [threading.Thread(target=run, args=(w,)) for w in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert outcomes == Counter({"ok": 16 * 20})
    assert _balance(admin, x) + _balance(admin, y) == 1_000
    assert _balance(admin, x) == 500  # as many moves each way
