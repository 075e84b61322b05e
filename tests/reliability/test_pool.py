"""The pool never sells twice (issue 5, item 5), on SQLite and PostgreSQL.

More orders than codes, over gRPC from many clients at once, in rounds. The server's clock is
the test's (``start(clock=...)``: every rule reads time through the storage's clock), so a
reservation expires exactly when the test moves time past its deadline, while the background
sweeper runs (every 0.2 s) and the staff's on-demand sweep races the late payments.
(tests/reliability/test_two_servers.py runs the same rounds over two ``cardmint serve``
processes whose reservations expire in real time: ``never_sells_twice`` takes the time.)

Each order gets a plan drawn from the seed: paid on time with the gateway's notification
sent twice at once; cancelled; cancelled and then paid late (twice at once); paid and
cancelled at the same moment; abandoned; abandoned and then paid late (twice at once). A
hoarding buyer asks for more codes than the reservation cap allows, concurrently, every round.

After each phase, straight in the database: every pool card is available (no order), held by
exactly one reserved order, or sold to exactly one delivered order, and every order holds
exactly its quantity of cards (reserved or delivered) or none. At the end: no serial was
delivered twice (across every answer, first and replayed), delivered + available + reserved =
stocked, no order was delivered on a payment at or past its deadline, every late payment was
refunded with exactly one ledger refund entry of the paid amount, and the hoarder never held
more than the cap at any moment (from the live spans of its reservations, as stored).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

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

from .conftest import Report, Sizes, db_query, db_snapshot, together

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]
Task = Callable[[Client], None]

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


class Time(Protocol):
    """The clock the servers judge deadlines by, as the test sees and moves it."""

    exact: bool  # time moves only when the test moves it: no on-time call can be late

    def now(self) -> datetime:
        """The servers' time now."""
        ...

    def pass_deadlines(self) -> None:
        """Return once every reservation made so far is past its deadline."""
        ...

    def settle(self, admin: Client) -> None:
        """After the late payments: return once no order is left reserved."""
        ...


@dataclass
class HandClock:
    """The servers read the test's clock: a deadline passes when the test moves time."""

    clock: FakeClock
    exact = True

    def now(self) -> datetime:
        return self.clock()

    def pass_deadlines(self) -> None:
        self.clock.advance(seconds=TTL + 1)

    def settle(self, admin: Client) -> None:
        admin.expire_reservations()  # whatever no sweep reached yet


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
    expires: dict[int, datetime] = field(default_factory=dict)  # the reservation's deadline
    on_time_done: dict[int, datetime] = field(default_factory=dict)  # its on-time calls all answered
    pays: dict[int, list[tuple[int, bool, tuple[str, ...]]]] = field(default_factory=dict)
    cancels: dict[int, list[str]] = field(default_factory=dict)  # "cancelled" or "refused"
    outcomes: Counter[str] = field(default_factory=Counter)
    hoarded: list[int] = field(default_factory=list)  # per round: reservations the hoarder got
    hoard_refused: int = 0
    hoard_sold_out: int = 0

    def note(self, key: str) -> None:
        with self.lock:
            self.outcomes[key] += 1

    def answered(self, order_id: int, at: datetime) -> None:
        """An on-time call of the order was answered at ``at`` (the servers' time)."""
        with self.lock:
            self.on_time_done[order_id] = max(self.on_time_done.get(order_id, at), at)

    def surely_on_time(self, order_id: int) -> bool:
        """Every on-time call of the order was answered before its deadline, so the servers
        judged each one before it too."""
        done = self.on_time_done.get(order_id)
        return done is not None and done < self.expires[order_id]


def _run(pool: list[Client], tasks: list[Task], limit_s: float) -> float:
    """``tasks`` pulled in order by every client at once: adjacent tasks run concurrently.
    The seconds they took."""
    nxt = iter(range(len(tasks)))
    lock = threading.Lock()

    def work(w: int) -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            tasks[i](pool[w])

    return together(len(pool), work, limit_s)


def _check_pool(url: str, *, live: bool) -> tuple[Counter[str], int]:
    """Straight in the database: every pool card is in the pool, held by one reserved order or
    sold to one delivered order, and every order holds its quantity of cards or none (read
    from one snapshot: the sweepers may be at work). ``live=False``: every deadline has passed
    and been swept, so no order may be left reserved. The pool's counts by state, and the
    codes reserved in all."""
    cards, orders = db_snapshot(
        url,
        "SELECT p.card_id, p.state, o.status FROM pool_cards p LEFT JOIN orders o ON o.id = p.order_id",
        "SELECT o.id, o.status, o.quantity, COUNT(p.card_id), COUNT(DISTINCT p.state) FROM orders o"
        " LEFT JOIN pool_cards p ON p.order_id = o.id GROUP BY o.id, o.status, o.quantity",
    )
    by_state: Counter[str] = Counter()
    for card_id, state, status in cards:
        by_state[state] += 1
        expected = {"available": None, "reserved": "reserved", "sold": "delivered"}.get(state, "?")
        assert status == expected, f"pool card {card_id} is {state} but its order is {status}"
    assert len({c for c, _, _ in cards}) == len(cards)
    held = 0
    for order_id, status, quantity, n, states in orders:
        want = quantity if status in ("reserved", "delivered") else 0
        assert n == want and states <= 1, f"order {order_id} ({status}, {quantity} codes) holds {n} cards"
        if status == "reserved":
            assert live, f"order {order_id} is still reserved after its deadline and the sweep"
            held += quantity
    assert held == by_state["reserved"]
    return by_state, held


_HOARDER_ORDERS = (
    "SELECT o.quantity, o.status, o.created_at, o.expires_at, o.paid_at, o.closed_at FROM orders o"
    " JOIN accounts a ON a.id = o.account_id WHERE a.external_id = ?"
)


def _hoarder_held(url: str, account: str) -> tuple[int, int]:
    """The codes the account's reservations hold now (reserved, whether or not past the
    deadline), and the most its live reservations ever held at one moment: a reservation is
    live from its creation until its deadline, payment or closing, whichever came first."""
    rows = db_query(url, _HOARDER_ORDERS, account)
    now = sum(int(r[0]) for r in rows if r[1] == "reserved")
    events: list[tuple[Any, int, int]] = []  # (time, 0 end / 1 start, codes): ends first
    for quantity, _, created, *ends in rows:
        events += [(created, 1, int(quantity)), (min(e for e in ends if e is not None), 0, -int(quantity))]
    peak = held = 0
    for _, _, codes in sorted(events):
        held += codes
        peak = max(peak, held)
    return now, peak


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
    never_sells_twice(
        clients,
        token,
        report,
        storage_url,
        HandClock(clock),
        seed=seed,
        limit_s=sizes.limit_s,
        codes=sizes.pool_codes,
        orders=sizes.pool_orders,
        rounds=sizes.pool_rounds,
    )


def never_sells_twice(
    clients: Clients,
    token: Token,
    report: Report,
    storage_url: str,
    clock: Time,
    *,
    seed: int,
    limit_s: float,
    codes: int,
    orders: int,
    rounds: int,
    senders: Callable[[str], Sequence[Client]] | None = None,
    staff_sweeps: int = 4,
) -> dict[str, int]:
    """``orders`` orders on ``codes`` codes in ``rounds`` rounds (no phase longer than
    ``limit_s``), as the module says; reports the figures (``5-pool``) and returns them.
    ``senders(bearer)``: the clients the two copies of a notification (and the two sides of a
    pay/cancel race) are sent by, one each; by default each goes by the client of the worker
    that picked it. ``staff_sweeps``: on-demand sweeps racing the late payments each round,
    besides the background sweeper(s)."""
    rng = random.Random(seed)
    admin = clients(token("admin"))[0]
    bearer = token("merchant")
    shop = clients(bearer)  # the storefront: orders for its buyers, and payments
    pinned = senders(bearer) if senders else None
    admin.create_product(sku=SKU, name="Pool card", currency="CNY", denominations=[FACE])
    lot = admin.create_lot(SKU, codes, FACE)
    stocked = admin.stock_pool(lot.id).stocked
    assert stocked == codes

    seen = Ledger()
    hoarder = f"hoarder-{seed}"
    buyers = [f"buyer-{seed}-{b}" for b in range(max(1, orders // 20))]
    names, weights = list(PLANS), list(PLANS.values())
    per_round = orders // rounds
    attempted = sold_out = 0
    peak_hoard = 0
    peak_reserved = 0
    slowest = 0.0  # s: the longest a round's orders and on-time calls took

    def by(c: Client, side: int | None) -> Client:
        return pinned[side % len(pinned)] if pinned and side is not None else c

    def pay(order_id: int, side: int, *, on_time: bool = False) -> Task:
        def run(c: Client) -> None:
            amount = seen.quantity[order_id] * FACE
            got = by(c, side).confirm_payment(order_id, f"{seed}-pay-{order_id}", amount, "CNY")
            answer = (got.status, got.replayed, tuple(sorted(x.serial for x in got.codes)))
            with seen.lock:
                seen.pays.setdefault(order_id, []).append(answer)
            if on_time:
                seen.answered(order_id, clock.now())

        return run

    def cancel(order_id: int, side: int | None = None) -> Task:
        def run(c: Client) -> None:
            try:
                got = by(c, side).cancel_order(order_id)
                outcome = "cancelled" if got.status == CANCELLED else f"status-{got.status}"
            except OrderWrongState:
                outcome = "refused"
            with seen.lock:
                seen.cancels.setdefault(order_id, []).append(outcome)
            seen.answered(order_id, clock.now())

        return run

    def sweep(c: Client) -> None:
        got = admin.expire_reservations()
        with seen.lock:
            seen.outcomes["swept_on_demand"] += got.expired

    for rnd in range(rounds):
        # 1. Orders, and the hoarder, all at once.
        made: list[int] = []
        got_hoard: list[int] = []
        creates: list[Task] = []
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
                    seen.expires[got.id] = got.expires_at.ToDatetime(tzinfo=UTC)
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
        on_time_s = _run(shop, creates, limit_s)
        attempted += per_round
        sold_out += seen.outcomes["sold_out"] - before
        seen.hoarded.append(len(got_hoard))
        held, peak_hoard = _hoarder_held(storage_url, hoarder)
        # With the test's clock none of them can have lapsed yet; in real time some may have.
        assert held == len(got_hoard) if clock.exact else held <= len(got_hoard)
        assert peak_hoard <= CAP, f"the hoarder held {peak_hoard} codes at once, the cap is {CAP}"
        _, reserved = _check_pool(storage_url, live=True)
        peak_reserved = max(peak_reserved, reserved)

        # 2. On time: payments (each sent twice at once), cancels, payment against cancel.
        units: list[list[Task]] = []
        for oid in made:
            plan = seen.plan[oid]
            if plan == "pay2":
                units.append([pay(oid, 0, on_time=True), pay(oid, 1, on_time=True)])
            elif plan == "race":
                units.append(
                    [pay(oid, 0, on_time=True), cancel(oid, 1)]
                    if rng.random() < 0.5
                    else [cancel(oid, 0), pay(oid, 1, on_time=True)]
                )
            elif plan in ("cancel", "cancel_pay"):
                units.append([cancel(oid)])
        rng.shuffle(units)
        on_time_s += _run(shop, [t for u in units for t in u], limit_s)
        slowest = max(slowest, on_time_s)
        _check_pool(storage_url, live=True)

        # 3. Past every deadline: late payments (twice at once) race the sweeps.
        clock.pass_deadlines()
        units = [[pay(oid, 0), pay(oid, 1)] for oid in made if seen.plan[oid] in LATE]
        units += [[sweep] for _ in range(staff_sweeps)]
        rng.shuffle(units)
        _run(shop, [t for u in units for t in u], limit_s)
        clock.settle(admin)
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
        # An on-time call answered only after the deadline may have been judged late by the
        # server (real time on a slow machine): then either outcome is right.
        on_time = seen.surely_on_time(oid)
        if plan == "race":
            raced_delivered += status == DELIVERED
            raced_cancelled += status == REFUNDED
            if on_time or status == DELIVERED:
                assert seen.cancels[oid] == (["refused"] if status == DELIVERED else ["cancelled"])
        if plan == "pay2" and on_time:
            assert status == DELIVERED, f"order {oid} paid on time answered {status}"
    twice = {s: o for s, o in delivered_to.items() if len(o) > 1}
    late_on_time = sum(
        1
        for oid, plan in seen.plan.items()
        if plan not in ("expire", "late") and not seen.surely_on_time(oid)
    )

    # -- what is stored ---------------------------------------------------------------------
    by_state, reserved = _check_pool(storage_url, live=False)
    delivered_orders = {
        int(o): int(q)
        for o, q in db_query(storage_url, "SELECT id, quantity FROM orders WHERE status = 'delivered'")
    }
    [(delivered_late,)] = db_query(
        storage_url, "SELECT COUNT(*) FROM orders WHERE status = 'delivered' AND paid_at >= expires_at"
    )
    refunded_orders = {
        int(o): int(a)
        for o, a in db_query(storage_url, "SELECT id, paid_amount FROM orders WHERE status = 'refunded'")
    }
    [(expired,)] = db_query(storage_url, "SELECT COUNT(*) FROM orders WHERE status = 'expired'")
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
    figures = {
        "codes": stocked,
        "orders": attempted,
        "sold_out": sold_out,
        "delivered_orders": len(delivered_orders),
        "delivered_codes": by_state["sold"],
        "delivered_after_deadline": int(delivered_late),
        "available": by_state["available"],
        "reserved": reserved,
        "returned": by_state["returned"],
        "delivered_twice": len(twice),
        "duplicate_notifications": dup_notifications,
        "raced_delivered": raced_delivered,
        "raced_cancelled": raced_cancelled,
        "on_time_answered_late": late_on_time,
        "late_payments": late_paid,
        "late_refunded": late_refunded,
        "refund_records": sum(refunds.values()),
        "expired": int(expired),
        "expired_on_demand": seen.outcomes["swept_on_demand"],
        "hoarder_attempts": rounds * (CAP + HOARD_EXTRA),
        "hoarder_reserved": sum(seen.hoarded),
        "hoarder_peak_held": peak_hoard,
        "hoarder_refused": seen.hoard_refused,
        "cap": CAP,
        "peak_reserved": peak_reserved,
        "on_time_phases_max_ms": round(slowest * 1000),
    }
    report("5-pool", **figures)
    assert not twice, f"codes delivered twice: {twice}"
    assert delivered_late == 0, "orders delivered on a payment at or past their deadline"
    assert len(delivered_to) == by_state["sold"] == sum(delivered_orders.values())
    assert set(delivered_orders) == {o for o, a in seen.pays.items() if a[0][0] == DELIVERED}
    assert by_state["sold"] + by_state["available"] + reserved == stocked
    assert by_state["returned"] == 0 and reserved == 0
    assert (stock.sold, stock.available, stock.reserved) == (by_state["sold"], by_state["available"], 0)
    assert late_paid > 0 and late_refunded == late_paid
    assert refunds == expected_refunds  # one refund record per refunded order, of what it paid
    assert set(refunded_orders) == {o for o, a in seen.pays.items() if a[0][0] == REFUNDED}
    assert peak_hoard <= CAP
    assert late_on_time == 0 or not clock.exact  # with the test's clock, nothing on time is late
    # The sizes' doing, not the server's: the hoarder reaches the cap and the orders outrun
    # the codes. In real time that needs a round's orders and on-time calls to take less
    # than the reservation's TTL (``on_time_phases_max_ms``), or reservations lapse first.
    assert seen.hoard_refused > 0, "the hoarder never reached the cap: the sizes need the TTL"
    assert sold_out > 0, "make the orders outnumber the codes: nothing sold out"
    return figures
