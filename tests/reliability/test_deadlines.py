"""Deadlines (issue 5, item 13), over gRPC, on SQLite and PostgreSQL: a change whose
transaction ends after the caller's deadline is rolled back, never committed; a retry with
the same request id then makes it once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cardmint.client import Client, DeadlineExceeded
from cardmint.server.app import Running

from .conftest import Report, Sizes, together
from .test_races import _lot, _spent

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]


def test_nothing_is_committed_after_the_deadline(
    server: Running, clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report, backend: str
) -> None:
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    [(serial, _)] = _lot(admin, "DEADLINE", 10_000, 1)
    storage = server.domain.storage
    n, hold_s, deadline_s = 8, 1.5, 0.4
    callers = [
        Client(f"127.0.0.1:{server.port}", admin_token, timeout=deadline_s, retries=0) for _ in range(n)
    ]
    held = threading.Event()
    release = threading.Event()

    def block() -> None:
        # Stall every redemption of the card past its callers' deadlines: SQLite's one
        # writer held, PostgreSQL's card row locked.
        with storage.transaction() as tx:
            if backend == "postgres":
                tx._execute("SELECT id FROM cards WHERE serial = ? FOR UPDATE", (serial,))  # type: ignore[attr-defined]
            held.set()
            release.wait(timeout=30)

    blocker = threading.Thread(target=block)
    blocker.start()
    assert held.wait(timeout=30)
    outcomes: list[str] = [""] * n

    def late(w: int) -> None:
        try:
            callers[w].redeem(serial, 1, "CNY", request_id=f"{seed}-late-{w}")
            outcomes[w] = "ok"
        except DeadlineExceeded:
            outcomes[w] = "deadline"

    threading.Timer(hold_s, release.set).start()
    together(n, late, sizes.limit_s)
    blocker.join(timeout=30)
    # The stalled units run once the block lifts; give them time to finish (and roll back).
    time.sleep(hold_s)
    ledger_after_deadline, entries, _ = _spent(admin, serial)
    # A retry with the same request ids and time to spare commits each exactly once.
    for w in range(n):
        again = admin.redeem(serial, 1, "CNY", request_id=f"{seed}-late-{w}")
        assert not again.replayed
    ledger_after_retry, retried_entries, _ = _spent(admin, serial)
    for c in callers:
        c.close()
    report(
        "13-deadlines",
        calls=n,
        deadline_ms=int(deadline_s * 1000),
        stalled_ms=int(hold_s * 1000),
        answered_deadline=outcomes.count("deadline"),
        committed_after_deadline=entries,
        retried_committed=retried_entries,
    )
    assert outcomes.count("deadline") == n
    assert entries == 0 and ledger_after_deadline == 0
    assert retried_entries == n and ledger_after_retry == -n
    assert admin.balance(serial=serial).balances[0].minor_units == 10_000 - n


def test_no_reservation_outlives_a_deadline(
    server: Running, clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report, backend: str
) -> None:
    """Item 13 for orders: CreateOrder calls stalled past their deadline leave no order and
    hold no code; retried with the same request ids they reserve once; cancelled, those
    codes are all back in the pool (no reservation outlives its order)."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    sku = f"DL-ORDER-{seed}"
    admin.create_product(sku=sku, name=sku, currency="CNY", denominations=[500])
    lot = admin.create_lot(sku, 64, 500)
    assert admin.stock_pool(lot.id).stocked == 64
    storage = server.domain.storage
    n, hold_s, deadline_s = 8, 1.5, 0.4
    buyers = [token("customer", account=f"{seed}-buyer{w}") for w in range(n)]
    callers = [Client(f"127.0.0.1:{server.port}", buyers[w], timeout=deadline_s, retries=0) for w in range(n)]
    held, release = threading.Event(), threading.Event()

    def block() -> None:
        # SQLite: the one writer held. PostgreSQL: orders locked against inserts (reads go on).
        with storage.transaction() as tx:
            if backend == "postgres":
                tx._execute("LOCK TABLE orders IN EXCLUSIVE MODE")  # type: ignore[attr-defined]
            held.set()
            release.wait(timeout=30)

    blocker = threading.Thread(target=block)
    blocker.start()
    assert held.wait(timeout=30)
    outcomes = [""] * n

    def late(w: int) -> None:
        try:
            callers[w].create_order([(sku, 500, 2)], request_id=f"{seed}-order-{w}")
            outcomes[w] = "ok"
        except DeadlineExceeded:
            outcomes[w] = "deadline"

    threading.Timer(hold_s, release.set).start()
    together(n, late, sizes.limit_s)
    blocker.join(timeout=30)
    time.sleep(hold_s)  # the stalled units run once the block lifts, and roll back

    def pool() -> tuple[int, int]:
        [row] = admin.stock(sku).stock
        return int(row.available), int(row.reserved)

    orders_after_deadline = sum(len(list(admin.list_orders(account=f"{seed}-buyer{w}"))) for w in range(n))
    after_deadline = pool()
    retried = []
    for w in range(n):  # same request ids, time to spare: one reservation each
        with Client(f"127.0.0.1:{server.port}", buyers[w], timeout=30.0) as buyer:
            first = buyer.create_order([(sku, 500, 2)], request_id=f"{seed}-order-{w}")
            assert buyer.create_order([(sku, 500, 2)], request_id=f"{seed}-order-{w}").id == first.id
            retried.append(first.id)
    after_retry = pool()
    for w, order_id in enumerate(retried):
        with Client(f"127.0.0.1:{server.port}", buyers[w], timeout=30.0) as buyer:
            buyer.cancel_order(order_id)
    after_cancel = pool()
    for c in callers:
        c.close()
    report(
        "13-order-deadlines",
        calls=n,
        deadline_ms=int(deadline_s * 1000),
        answered_deadline=outcomes.count("deadline"),
        orders_after_deadline=orders_after_deadline,
        reserved_after_deadline=after_deadline[1],
        reserved_after_retry=after_retry[1],
        reserved_after_cancel=after_cancel[1],
        available_after_cancel=after_cancel[0],
    )
    assert outcomes.count("deadline") == n
    assert orders_after_deadline == 0 and after_deadline == (64, 0)
    assert len(set(retried)) == n and after_retry == (64 - 2 * n, 2 * n)
    assert after_cancel == (64, 0)
