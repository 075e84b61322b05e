"""The pool never sells twice (issue 5, item 5), on SQLite and PostgreSQL.

More orders than codes, over gRPC from many clients at once, in rounds. The server's clock is
the test's (``start(clock=...)``: every rule reads time through the storage's clock), so a
reservation expires exactly when the test moves time past its deadline, while the background
sweeper runs (every 0.2 s) and the staff's on-demand sweep races the late payments.

Each order gets a plan drawn from the seed: paid on time with the gateway's notification
sent twice at once; cancelled; cancelled and then paid late (twice at once); paid and
cancelled at the same moment; abandoned; abandoned and then paid late (twice at once). A
hoarding buyer asks for more codes than the reservation cap allows, concurrently, every round.

After each phase, straight in the database: every pool card is available (no order), held by
exactly one reserved order, or sold to exactly one delivered order, and every order holds
exactly its quantity of cards (reserved or delivered) or none. At the end: no serial was
delivered twice (across every answer, first and replayed), delivered + available + reserved =
stocked, every late payment was refunded with exactly one ledger refund entry of the paid
amount, and the hoarder never held more than the cap.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cardmint.client import (
    Client,
    OrderWrongState,
    ReservationLimit,
    SoldOut,
)
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.v1 import order_pb2

from tests.conftest import FakeClock

from .conftest import Report, Sizes, db_query, together

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]

SKU = "POOL"
FACE = 100
TTL = 900  # s: the reservation's deadline (DomainConfig.order_ttl_seconds)
CAP = 50  # codes an account may hold unpaid (DomainConfig.held_codes_per_account)
HOARD_EXTRA = 30  # the hoarder asks for CAP + this many codes per round, one per order
# What happens to an order, and how often.
PLANS = {
    "pay2": 55,  # paid on time, the notification sent twice at once
    "race": 10,  # paid and cancelled at the same moment
    "cancel": 7,  # cancelled on time
    "cancel_pay": 8,  # cancelled, then paid late (twice at once): refunded
    "expire": 8,  # abandoned: expires
    "late": 12,  # abandoned, then paid after its deadline (twice at once): refunded
}
LATE = ("cancel_pay", "late")
DELIVERED = order_pb2.ORDER_STATUS_DELIVERED
REFUNDED = order_pb2.ORDER_STATUS_REFUNDED
CANCELLED = order_pb2.ORDER_STATUS_CANCELLED


@pytest.fixture
def server(storage_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Running]:
    config = DomainConfig(order_ttl_seconds=TTL, held_codes_per_account=CAP, order_sweep_seconds=0.2)
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=32, config=config, clock=clock)
    try:
        yield running
    finally:
        running.stop(grace=0)


@dataclass
class Ledger:
    """Everything the clients saw, recorded under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    plan: dict[int, str] = field(default_factory=dict)  # order id -> plan
    quantity: dict[int, int] = field(default_factory=dict)
    pays: dict[int, list[tuple[int, bool, tuple[str, ...]]]] = field(default_factory=dict)
    cancels: dict[int, list[str]] = field(default_factory=dict)  # "cancelled" or "refused"
    outcomes: Counter[str] = field(default_factory=Counter)
    hoarded: list[int] = field(default_factory=list)  # per round: reservations the hoarder got
    hoard_refused: int = 0
    hoard_sold_out: int = 0

    def note(self, key: str) -> None:
        with self.lock:
            self.outcomes[key] += 1


def _run(pool: list[Client], tasks: list[Callable[[Client], None]], limit_s: float) -> None:
    """``tasks`` pulled in order by every client at once: adjacent tasks run concurrently."""
    nxt = iter(range(len(tasks)))
    lock = threading.Lock()

    def work(w: int) -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            tasks[i](pool[w])

    together(len(pool), work, limit_s)


def _check_pool(url: str, *, live: bool) -> tuple[Counter[str], int]:
    """Straight in the database: every pool card is in the pool, held by one reserved order or
    sold to one delivered order, and every order holds its quantity of cards or none. ``live``:
    no reservation is past its deadline now, so every reserved order still counts as live.
    The pool's counts by state, and the codes reserved in all."""
    cards = db_query(
        url, "SELECT p.card_id, p.state, o.status FROM pool_cards p LEFT JOIN orders o ON o.id = p.order_id"
    )
    by_state: Counter[str] = Counter()
    for card_id, state, status in cards:
        by_state[state] += 1
        expected = {"available": None, "reserved": "reserved", "sold": "delivered"}.get(state, "?")
        assert status == expected, f"pool card {card_id} is {state} but its order is {status}"
    assert len({c for c, _, _ in cards}) == len(cards)
    held = 0
    for order_id, status, quantity, n, states in db_query(
        url,
        "SELECT o.id, o.status, o.quantity, COUNT(p.card_id), COUNT(DISTINCT p.state) FROM orders o"
        " LEFT JOIN pool_cards p ON p.order_id = o.id GROUP BY o.id, o.status, o.quantity",
    ):
        want = quantity if status in ("reserved", "delivered") else 0
        assert n == want and states <= 1, f"order {order_id} ({status}, {quantity} codes) holds {n} cards"
        if status == "reserved":
            assert live, f"order {order_id} is still reserved after its deadline and the sweep"
            held += quantity
    assert held == by_state["reserved"]
    return by_state, held


def _hoarder_held(url: str, account: str) -> int:
    [(n,)] = db_query(
        url,
        "SELECT COALESCE(SUM(o.quantity), 0) FROM orders o JOIN accounts a ON a.id = o.account_id"
        " WHERE a.external_id = ? AND o.status = 'reserved'",
        account,
    )
    return int(n)


@pytest.mark.timeout(3600)  # soak sizes take longer than pytest-timeout's 300 s
def test_pool_never_sells_twice(
    clients: Clients,
    token: Token,
    sizes: Sizes,
    seed: int,
    report: Report,
    storage_url: str,
    clock: FakeClock,
) -> None:
    rng = random.Random(seed)
    admin = clients(token("admin"))[0]
    shop = clients(token("merchant"))  # the storefront: orders for its buyers, and payments
    admin.create_product(sku=SKU, name="Pool card", currency="CNY", denominations=[FACE])
    lot = admin.create_lot(SKU, sizes.pool_codes, FACE)
    stocked = admin.stock_pool(lot.id).stocked
    assert stocked == sizes.pool_codes

    seen = Ledger()
    hoarder = f"hoarder-{seed}"
    buyers = [f"buyer-{seed}-{b}" for b in range(max(1, sizes.pool_orders // 20))]
    names, weights = list(PLANS), list(PLANS.values())
    per_round = sizes.pool_orders // sizes.pool_rounds
    attempted = sold_out = 0
    peak_hoard = 0
    peak_reserved = 0

    def pay(order_id: int) -> Callable[[Client], None]:
        def run(c: Client) -> None:
            amount = seen.quantity[order_id] * FACE
            got = c.confirm_payment(order_id, f"{seed}-pay-{order_id}", amount, "CNY")
            answer = (got.status, got.replayed, tuple(sorted(x.serial for x in got.codes)))
            with seen.lock:
                seen.pays.setdefault(order_id, []).append(answer)

        return run

    def cancel(order_id: int) -> Callable[[Client], None]:
        def run(c: Client) -> None:
            try:
                got = c.cancel_order(order_id)
                outcome = "cancelled" if got.status == CANCELLED else f"status-{got.status}"
            except OrderWrongState:
                outcome = "refused"
            with seen.lock:
                seen.cancels.setdefault(order_id, []).append(outcome)

        return run

    def sweep(c: Client) -> None:
        admin.expire_reservations()

    for rnd in range(sizes.pool_rounds):
        # 1. Orders, and the hoarder, all at once.
        made: list[int] = []
        got_hoard: list[int] = []
        creates: list[Callable[[Client], None]] = []
        for i in range(per_round):
            plan = rng.choices(names, weights)[0]
            quantity = rng.choice((1, 1, 2, 2, 3))
            buyer = rng.choice(buyers)
            rid = f"{seed}-{rnd}-{i}"

            def create(
                c: Client,
                plan: str = plan,
                quantity: int = quantity,
                buyer: str = buyer,
                rid: str = rid,
                made: list[int] = made,
            ) -> None:
                try:
                    got = c.create_order([(SKU, FACE, quantity)], account=buyer, request_id=rid)
                except SoldOut:
                    seen.note("sold_out")
                    return
                with seen.lock:
                    seen.plan[got.id], seen.quantity[got.id] = plan, quantity
                    made.append(got.id)

            creates.append(create)
        for j in range(CAP + HOARD_EXTRA):

            def hoard(c: Client, rid: str = f"{seed}-h{rnd}-{j}", got_hoard: list[int] = got_hoard) -> None:
                try:
                    got = c.create_order([(SKU, FACE, 1)], account=hoarder, request_id=rid)
                except ReservationLimit:
                    with seen.lock:
                        seen.hoard_refused += 1
                    return
                except SoldOut:
                    with seen.lock:
                        seen.hoard_sold_out += 1
                    return
                with seen.lock:
                    got_hoard.append(got.id)

            creates.insert(rng.randrange(len(creates) + 1), hoard)
        before = seen.outcomes["sold_out"]
        _run(shop, creates, sizes.limit_s)
        attempted += per_round
        sold_out += seen.outcomes["sold_out"] - before
        seen.hoarded.append(len(got_hoard))
        held = _hoarder_held(storage_url, hoarder)
        peak_hoard = max(peak_hoard, held)
        assert held == len(got_hoard) <= CAP
        _, reserved = _check_pool(storage_url, live=True)
        peak_reserved = max(peak_reserved, reserved)

        # 2. On time: payments (each sent twice at once), cancels, payment against cancel.
        units: list[list[Callable[[Client], None]]] = []
        for oid in made:
            plan = seen.plan[oid]
            if plan == "pay2":
                units.append([pay(oid), pay(oid)])
            elif plan == "race":
                units.append([pay(oid), cancel(oid)] if rng.random() < 0.5 else [cancel(oid), pay(oid)])
            elif plan in ("cancel", "cancel_pay"):
                units.append([cancel(oid)])
        rng.shuffle(units)
        _run(shop, [t for u in units for t in u], sizes.limit_s)
        _check_pool(storage_url, live=True)

        # 3. Past every deadline: late payments (twice at once) race the sweeps.
        clock.advance(seconds=TTL + 1)
        units = [[pay(oid), pay(oid)] for oid in made if seen.plan[oid] in LATE]
        units += [[sweep] for _ in range(4)]
        rng.shuffle(units)
        _run(shop, [t for u in units for t in u], sizes.limit_s)
        admin.expire_reservations()  # whatever no sweep reached yet
        _check_pool(storage_url, live=False)

    # -- what the clients saw ---------------------------------------------------------------
    delivered_to: dict[str, set[int]] = {}
    late_paid = late_refunded = dup_notifications = 0
    raced_delivered = raced_cancelled = 0
    for oid, answers in seen.pays.items():
        plan = seen.plan[oid]
        statuses = {a[0] for a in answers}
        assert len(statuses) == 1, f"order {oid}: payment answers disagree: {answers}"
        assert len({a[2] for a in answers}) == 1, f"order {oid}: different codes in its answers"
        assert [a[1] for a in answers].count(False) == 1, f"order {oid}: not exactly one first answer"
        dup_notifications += len(answers) - 1
        status, serials = answers[0][0], answers[0][2]
        if status == DELIVERED:
            assert len(serials) == seen.quantity[oid]
            for s in serials:
                delivered_to.setdefault(s, set()).add(oid)
        else:
            assert status == REFUNDED and not serials, f"order {oid} ({plan}) answered {status}"
        if plan in LATE:
            late_paid += 1
            late_refunded += status == REFUNDED
        if plan == "race":
            raced_delivered += status == DELIVERED
            raced_cancelled += status == REFUNDED
            assert seen.cancels[oid] == (["refused"] if status == DELIVERED else ["cancelled"])
        if plan == "pay2":
            assert status == DELIVERED, f"order {oid} paid on time answered {status}"
    twice = {s: o for s, o in delivered_to.items() if len(o) > 1}

    # -- what is stored ---------------------------------------------------------------------
    by_state, reserved = _check_pool(storage_url, live=False)
    delivered_orders = {
        int(o): int(q)
        for o, q in db_query(storage_url, "SELECT id, quantity FROM orders WHERE status = 'delivered'")
    }
    refunded_orders = {
        int(o): int(a)
        for o, a in db_query(storage_url, "SELECT id, paid_amount FROM orders WHERE status = 'refunded'")
    }
    refunds = Counter(
        {
            (str(r), int(a)): int(n)
            for r, a, n in db_query(
                storage_url,
                "SELECT request_id, amount, COUNT(*) FROM ledger_entries WHERE kind = 'refund'"
                " GROUP BY request_id, amount",
            )
        }
    )
    expected_refunds = Counter({(f"order:{o}", a): 1 for o, a in refunded_orders.items()})
    stock = {(s.face_value.minor_units): s for s in admin.stock(SKU).stock}[FACE]
    report(
        "5-pool",
        codes=stocked,
        orders=attempted,
        sold_out=sold_out,
        delivered_orders=len(delivered_orders),
        delivered_codes=by_state["sold"],
        available=by_state["available"],
        reserved=reserved,
        returned=by_state["returned"],
        delivered_twice=len(twice),
        duplicate_notifications=dup_notifications,
        raced_delivered=raced_delivered,
        raced_cancelled=raced_cancelled,
        late_payments=late_paid,
        late_refunded=late_refunded,
        refund_records=sum(refunds.values()),
        hoarder_attempts=sizes.pool_rounds * (CAP + HOARD_EXTRA),
        hoarder_reserved=sum(seen.hoarded),
        hoarder_peak_held=peak_hoard,
        hoarder_refused=seen.hoard_refused,
        cap=CAP,
        peak_reserved=peak_reserved,
    )
    assert not twice, f"codes delivered twice: {twice}"
    assert len(delivered_to) == by_state["sold"] == sum(delivered_orders.values())
    assert set(delivered_orders) == {o for o, a in seen.pays.items() if a[0][0] == DELIVERED}
    assert by_state["sold"] + by_state["available"] + reserved == stocked
    assert by_state["returned"] == 0 and reserved == 0
    assert (stock.sold, stock.available, stock.reserved) == (by_state["sold"], by_state["available"], 0)
    assert late_paid > 0 and late_refunded == late_paid
    assert refunds == expected_refunds  # one refund record per refunded order, of what it paid
    assert set(refunded_orders) == {o for o, a in seen.pays.items() if a[0][0] == REFUNDED}
    assert peak_hoard <= CAP and seen.hoard_refused > 0
    assert sold_out > 0, "make the orders outnumber the codes: nothing sold out"
