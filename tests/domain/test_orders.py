"""OrderService rules on both backends: the pool, reservations, payment, delivery, the
sweeper, caps and refunds; and a state machine that checks the pool's invariants after
every step of random order histories."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest
from cardmint.server.domain import (
    CardVoid,
    Domain,
    DomainConfig,
    ExportNeedsAdmin,
    IdempotencyKeyReused,
    InvalidArgument,
    Keyring,
    LotExported,
    LotNotFound,
    NotRefundable,
    OrderLine,
    OrderNotFound,
    OrderStatus,
    OrderView,
    OrderWrongState,
    PaymentMismatch,
    PermissionDenied,
    Principal,
    ProductNotFound,
    ProductRetired,
    ReservationLimit,
    RevealLimit,
    SoldOut,
)
from cardmint.server.storage import LedgerKind, Storage
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .conftest import Callers, FakeClock

_ids = itertools.count(1)


def _rid(tag: str = "r") -> str:
    return f"{tag}-{next(_ids)}"


@dataclass(frozen=True)
class Shop:
    sku: str
    face: int
    lot_id: int


def _stock(
    domain: Domain,
    who: Callers,
    *,
    count: int = 10,
    face: int = 500,
    review: bool = False,
    code_length: int = 16,
) -> Shop:
    sku = f"SHOP-{next(_ids)}"
    domain.catalog.create_product(
        who.operator,
        sku=sku,
        name="shop card",
        currency="CNY",
        denominations=(100, 500, 1000),
        validity_days=365,
        delivery="review" if review else "auto",
        code_length=code_length,
    )
    lot = domain.lots.create_lot(who.operator, sku=sku, count=count, face_value=face)
    domain.orders.stock_pool(who.operator, lot.id)
    return Shop(sku, face, lot.id)


def _available(domain: Domain, who: Callers, shop: Shop) -> int:
    return sum(
        s.available for s in domain.orders.stock(who.admin, shop.sku).pools if s.face_value == shop.face
    )


def _buy(domain: Domain, who: Callers, buyer: Principal, shop: Shop, n: int = 1) -> OrderView:
    return domain.orders.create_order(
        buyer, [OrderLine(shop.sku, shop.face, n)], request_id=_rid(), peer="ipv4:10.0.0.1"
    )


def _pay(domain: Domain, who: Callers, order: OrderView, payment_id: str | None = None) -> OrderView:
    return domain.orders.confirm_payment(
        who.merchant,
        order.id,
        payment_id=payment_id or _rid("pay"),
        amount=order.amount,
        currency=order.currency,
    )


def test_order_pay_deliver_reveal(domain: Domain, who: Callers, storage: Storage) -> None:
    shop = _stock(domain, who, count=5)
    order = _buy(domain, who, who.alice, shop, 3)
    assert order.status is OrderStatus.RESERVED and order.amount == 1500 and order.account == "alice"
    assert order.codes == () and _available(domain, who, shop) == 2
    paid = _pay(domain, who, order)
    assert paid.status is OrderStatus.DELIVERED and paid.paid_amount == 1500 and len(paid.codes) == 3
    # The payer (a merchant) sees masked codes only.
    assert all(c.code.startswith("****-") and not c.revealed for c in paid.codes)
    (stock,) = domain.orders.stock(who.alice, shop.sku).pools
    assert (stock.available, stock.reserved, stock.sold) == (2, 0, 3)
    seen = domain.orders.get_order(who.alice, order.id, reveal=True)
    assert all(c.revealed and "*" not in c.code for c in seen.codes)
    assert [c.serial for c in seen.codes] == [c.serial for c in paid.codes]
    # The revealed codes are the real ones: the buyer can bind them.
    receipt = domain.cards.bind(who.alice, seen.codes[0].code)
    assert receipt.card.serial == seen.codes[0].serial
    # Audited, and no plaintext code in the audit log.
    with storage.read() as tx:
        entries = tx.audit_entries()
    actions = [e.action for e in entries if e.subject == f"order:{order.id}"]
    assert actions == ["order.create", "order.pay", "order.reveal"]
    text = json.dumps([e.detail for e in entries])
    for c in seen.codes:
        assert c.code not in text and c.code.replace("-", "") not in text


def test_one_order_many_products(domain: Domain, who: Callers) -> None:
    short, long = (
        _stock(domain, who, count=3, face=100, code_length=12),
        _stock(domain, who, count=3, code_length=20),
    )
    order = domain.orders.create_order(
        who.alice, [OrderLine(short.sku, 100, 2), OrderLine(long.sku, 500, 1)], request_id=_rid(), peer="p"
    )
    assert order.amount == 700 and [(i.sku, i.quantity) for i in order.items] == [
        (short.sku, 2),
        (long.sku, 1),
    ]
    _pay(domain, who, order)
    codes = domain.orders.get_order(who.alice, order.id, reveal=True).codes
    assert sorted(len(c.code.replace("-", "")) for c in codes) == [12, 12, 20]
    for c in codes:
        assert domain.cards.bind(who.alice, c.code).card.serial == c.serial


def test_create_is_idempotent_and_all_or_nothing(domain: Domain, who: Callers) -> None:
    a = _stock(domain, who, count=4)
    b = _stock(domain, who, count=2, face=100)
    first = domain.orders.create_order(who.alice, [OrderLine(a.sku, 500, 2)], request_id="c-1", peer="p")
    again = domain.orders.create_order(who.alice, [OrderLine(a.sku, 500, 2)], request_id="c-1", peer="p2")
    assert again.id == first.id and again.replayed and not first.replayed
    assert _available(domain, who, a) == 2
    with pytest.raises(IdempotencyKeyReused):
        domain.orders.create_order(who.alice, [OrderLine(a.sku, 500, 1)], request_id="c-1", peer="p")
    # Two lines, the second short: nothing of the first is reserved either.
    with pytest.raises(SoldOut) as info:
        domain.orders.create_order(
            who.bob, [OrderLine(a.sku, 500, 2), OrderLine(b.sku, 100, 3)], request_id="c-2", peer="p"
        )
    assert info.value.metadata == {"sku": b.sku, "face_value": "100", "available": "2"}
    assert (_available(domain, who, a), _available(domain, who, b)) == (2, 2)
    # A refused request stores nothing: its id may be used again.
    ok = domain.orders.create_order(
        who.bob, [OrderLine(a.sku, 500, 2), OrderLine(b.sku, 100, 2)], request_id="c-2", peer="p"
    )
    assert ok.amount == 1200 and (_available(domain, who, a), _available(domain, who, b)) == (0, 0)


def test_bad_orders_are_refused_before_anything(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=2)
    other = "USD-" + shop.sku
    domain.catalog.create_product(who.operator, sku=other, name="usd", currency="USD", denominations=(500,))
    cases: list[tuple[list[OrderLine], type[Exception]]] = [
        ([], InvalidArgument),
        ([OrderLine(shop.sku, 500, 0)], InvalidArgument),
        ([OrderLine(shop.sku, 500, 51)], InvalidArgument),
        ([OrderLine(shop.sku, 500, 1), OrderLine(shop.sku, 500, 1)], InvalidArgument),
        ([OrderLine(shop.sku, 700, 1)], InvalidArgument),  # not a denomination
        ([OrderLine(shop.sku, True, 1)], InvalidArgument),  # a bool is not a face value
        ([OrderLine("NOPE", 500, 1)], ProductNotFound),
        ([OrderLine(shop.sku, 500, 1), OrderLine(other, 500, 1)], InvalidArgument),  # two currencies
    ]
    for lines, error in cases:
        with pytest.raises(error):
            domain.orders.create_order(who.alice, lines, request_id=_rid(), peer="p")
    with pytest.raises(InvalidArgument):
        domain.orders.create_order(who.alice, [OrderLine(shop.sku, 500, 1)], request_id="", peer="p")
    assert _available(domain, who, shop) == 2


def test_payment_is_idempotent_on_payment_id(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=6)
    order = _buy(domain, who, who.alice, shop, 2)
    first = _pay(domain, who, order, "gw-1")
    again = _pay(domain, who, order, "gw-1")  # the gateway re-sends its notification
    assert again.replayed and again.status is OrderStatus.DELIVERED
    assert [c.serial for c in again.codes] == [c.serial for c in first.codes]
    (stock,) = domain.orders.stock(who.admin, shop.sku).pools
    assert (stock.available, stock.sold) == (4, 2)  # one delivery, not two
    with pytest.raises(IdempotencyKeyReused):
        domain.orders.confirm_payment(who.merchant, order.id, payment_id="gw-1", amount=999, currency="CNY")
    with pytest.raises(OrderWrongState):  # a second payment of a paid order
        _pay(domain, who, order, "gw-2")
    other = _buy(domain, who, who.alice, shop, 1)
    with pytest.raises(PaymentMismatch) as info:
        domain.orders.confirm_payment(who.merchant, other.id, payment_id="gw-3", amount=499, currency="CNY")
    assert info.value.metadata == {"amount": "500", "currency": "CNY", "payment_method": "online"}
    with pytest.raises(PaymentMismatch):
        domain.orders.confirm_payment(who.merchant, other.id, payment_id="gw-3", amount=500, currency="USD")
    with pytest.raises(OrderNotFound):
        domain.orders.confirm_payment(who.merchant, 10**9, payment_id="gw-4", amount=500, currency="CNY")
    # The refused payment ids stored nothing.
    assert _pay(domain, who, other, "gw-3").status is OrderStatus.DELIVERED


def test_expiry_returns_codes_and_late_payment_is_refunded(
    domain: Domain, who: Callers, clock: FakeClock
) -> None:
    shop = _stock(domain, who, count=3)
    swept = _buy(domain, who, who.alice, shop, 2)
    late = _buy(domain, who, who.bob, shop, 1)
    assert _available(domain, who, shop) == 0
    clock.advance(seconds=domain.config.order_ttl_seconds - 1)
    assert domain.orders.sweep().expired == 0
    clock.advance(seconds=1)
    # A payment that arrives after the deadline, before any sweep: refunded, codes freed.
    refunded = _pay(domain, who, late, "gw-late")
    assert (
        refunded.status is OrderStatus.REFUNDED
        and refunded.close_reason == "paid after the reservation expired"
    )
    assert refunded.paid_amount == 500 and refunded.codes == ()
    assert domain.orders.expire_reservations(who.operator).expired == 1
    assert domain.orders.get_order(who.alice, swept.id).status is OrderStatus.EXPIRED
    assert _available(domain, who, shop) == 3
    # Cancelling an expired order answers it as it is.
    assert domain.orders.cancel_order(who.alice, swept.id).status is OrderStatus.EXPIRED
    # A payment for the swept order: refunded as well, with its record on the ledger.
    assert _pay(domain, who, swept, "gw-swept").status is OrderStatus.REFUNDED
    page = domain.balances.list_transactions(who.alice)
    refunds = [t for t in page.items if t.kind == LedgerKind.REFUND.value]
    assert [(t.amount, t.currency, t.request_id) for t in refunds] == [(1000, "CNY", f"order:{swept.id}")]


def test_cancel(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=2)
    order = _buy(domain, who, who.alice, shop, 2)
    with pytest.raises(OrderNotFound):  # not bob's order
        domain.orders.cancel_order(who.bob, order.id)
    done = domain.orders.cancel_order(who.alice, order.id)
    assert done.status is OrderStatus.CANCELLED and done.close_reason == "cancelled by customer"
    assert domain.orders.cancel_order(who.alice, order.id).status is OrderStatus.CANCELLED
    assert _available(domain, who, shop) == 2
    paid = _buy(domain, who, who.alice, shop, 1)
    _pay(domain, who, paid)
    with pytest.raises(OrderWrongState):
        domain.orders.cancel_order(who.merchant, paid.id)
    # Paid after cancelling: the money goes back.
    assert _pay(domain, who, order).status is OrderStatus.REFUNDED


def test_review_products(domain: Domain, who: Callers, clock: FakeClock) -> None:
    shop = _stock(domain, who, count=6, review=True)
    approve, reject, late = (_buy(domain, who, who.alice, shop, 2) for _ in range(3))
    parked = [_pay(domain, who, o) for o in (approve, reject, late)]
    assert {p.status for p in parked} == {OrderStatus.REVIEW} and all(p.codes == () for p in parked)
    deadline = parked[0].deliver_by
    assert deadline is not None and parked[0].paid_at is not None
    assert (deadline - parked[0].paid_at).total_seconds() == domain.config.delivery_deadline_seconds
    with pytest.raises(PermissionDenied):
        domain.orders.review_order(who.merchant, approve.id, approve=True)
    done = domain.orders.review_order(who.operator, approve.id, approve=True)
    assert done.status is OrderStatus.DELIVERED and len(done.codes) == 2
    with pytest.raises(OrderWrongState):
        domain.orders.review_order(who.operator, approve.id, approve=True)
    no = domain.orders.review_order(who.operator, reject.id, approve=False, reason="looks like fraud")
    assert no.status is OrderStatus.REFUNDED and no.close_reason == "rejected in review: looks like fraud"
    assert _available(domain, who, shop) == 2  # never shown to anyone: back for sale
    clock.advance(seconds=domain.config.delivery_deadline_seconds)
    assert domain.orders.sweep().refunded == 1
    gone = domain.orders.get_order(who.alice, late.id)
    assert gone.status is OrderStatus.REFUNDED and gone.close_reason == "not delivered in time"
    assert _available(domain, who, shop) == 4
    refunds = [t for t in domain.balances.list_transactions(who.alice).items if t.kind == "refund"]
    assert sorted(t.request_id or "" for t in refunds) == sorted(f"order:{o.id}" for o in (reject, late))


def test_pay_checks_the_codes_are_still_the_orders(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=4)
    order = _buy(domain, who, who.alice, shop, 2)
    domain.lots.void_lot(who.admin, shop.lot_id)  # the reserved codes are void now
    done = _pay(domain, who, order)
    assert (
        done.status is OrderStatus.REFUNDED and done.close_reason == "the reserved codes became unavailable"
    )
    with pytest.raises(SoldOut):
        _buy(domain, who, who.alice, shop, 1)


def test_refund_delivered_codes_only_while_unbound_and_unspent(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=7)
    ok, bound, spent = (_pay(domain, who, _buy(domain, who, who.alice, shop, 2)) for _ in range(3))
    codes = {o.id: domain.orders.get_order(who.alice, o.id, reveal=True).codes for o in (ok, bound, spent)}
    done = domain.orders.refund_order(who.alice, ok.id, reason="changed my mind")
    assert done.status is OrderStatus.REFUNDED and {c.status for c in done.codes} == {"void"}
    assert done.close_reason == "refund requested by customer: changed my mind"
    assert domain.orders.refund_order(who.alice, ok.id).status is OrderStatus.REFUNDED  # a retry
    with pytest.raises(CardVoid):  # a refunded code can no longer be bound
        domain.cards.bind(who.bob, codes[ok.id][0].code)
    (stock,) = domain.orders.stock(who.admin, shop.sku).pools
    assert (stock.sold, stock.returned) == (4, 2)

    domain.cards.bind(who.alice, codes[bound.id][1].code)
    with pytest.raises(NotRefundable) as info:
        domain.orders.refund_order(who.alice, bound.id)
    assert info.value.metadata == {"serial": codes[bound.id][1].serial, "problem": "bound"}

    card = codes[spent.id][0]
    domain.cards.bind(who.bob, card.code)
    domain.balances.redeem(who.bob, serial=card.serial, amount=1, currency="CNY", request_id=_rid())
    domain.cards.unbind(who.bob, card.serial)
    with pytest.raises(NotRefundable) as info:
        domain.orders.refund_order(who.merchant, spent.id)
    assert info.value.metadata["problem"] == "spent"
    with pytest.raises(OrderWrongState):  # unpaid: cancel it instead
        domain.orders.refund_order(who.alice, _buy(domain, who, who.alice, shop, 1).id)


def test_roles_and_visibility(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=3)
    order = _buy(domain, who, who.alice, shop, 1)
    with pytest.raises(PermissionDenied):  # the buyer never confirms its own payment
        domain.orders.confirm_payment(who.alice, order.id, payment_id="x", amount=500, currency="CNY")
    with pytest.raises(OrderNotFound):
        domain.orders.get_order(who.bob, order.id)
    with pytest.raises(PermissionDenied):
        domain.orders.create_order(who.alice, [OrderLine(shop.sku, 500, 1)], request_id=_rid(), account="bob")
    with pytest.raises(InvalidArgument):  # staff name the account
        domain.orders.create_order(who.merchant, [OrderLine(shop.sku, 500, 1)], request_id=_rid())
    for_carol = domain.orders.create_order(
        who.merchant,
        [OrderLine(shop.sku, 500, 1)],
        request_id=_rid(),
        account="carol",
        client_address="ipv4:1.2.3.4",
    )
    assert for_carol.account == "carol"
    _pay(domain, who, order)
    with pytest.raises(PermissionDenied):  # only the buyer sees codes in full
        domain.orders.get_order(who.admin, order.id, reveal=True)
    with pytest.raises(OrderWrongState):  # nothing delivered yet
        domain.orders.get_order(who.alice, _buy(domain, who, who.alice, shop, 1).id, reveal=True)
    with pytest.raises(PermissionDenied):
        domain.orders.stock_pool(who.merchant, shop.lot_id)
    with pytest.raises(PermissionDenied):
        domain.orders.expire_reservations(who.alice)
    # Listing: customers their own; staff any account or all.
    assert [o.id for o in domain.orders.list_orders(who.bob).items] == []
    mine = domain.orders.list_orders(who.alice).items
    assert order.id in {o.id for o in mine} and all(o.account == "alice" and o.codes == () for o in mine)
    assert [o.id for o in domain.orders.list_orders(who.operator, account="carol").items] == [for_carol.id]
    assert domain.orders.list_orders(who.operator, account="nobody").items == ()
    delivered = domain.orders.list_orders(who.operator, status="delivered").items
    assert [o.id for o in delivered] == [order.id]
    page = domain.orders.list_orders(who.operator, limit=2)
    assert len(page.items) == 2 and page.next_before_id is not None
    rest = domain.orders.list_orders(who.operator, before_id=page.next_before_id, limit=10)
    assert len(page.items) + len(rest.items) == 3 and rest.next_before_id is None


def test_stock_pool_rules(domain: Domain, who: Callers) -> None:
    shop = _stock(domain, who, count=3)
    again = domain.orders.stock_pool(who.operator, shop.lot_id)
    assert again.already and again.stocked == 3
    # A stocked lot's codes are never exported by an operator again (admin: audited).
    with pytest.raises(ExportNeedsAdmin):
        domain.lots.stream_lot(who.operator, shop.lot_id)
    exported = domain.lots.create_lot(who.operator, sku=shop.sku, count=2, face_value=500)
    list(domain.lots.stream_lot(who.operator, exported.id))
    with pytest.raises(LotExported):
        domain.orders.stock_pool(who.operator, exported.id)
    with pytest.raises(LotNotFound):
        domain.orders.stock_pool(who.operator, 10**9)


def test_reservation_caps(storage: Storage, keyring: Keyring, who: Callers) -> None:
    config = DomainConfig(held_codes_per_account=3, held_codes_per_address=4, order_max_codes=3)
    domain = Domain(storage, keyring, config=config)
    shop = _stock(domain, who, count=20)
    line = [OrderLine(shop.sku, 500, 2)]
    first = domain.orders.create_order(who.alice, line, request_id=_rid(), peer="ipv4:10.0.0.9")
    with pytest.raises(ReservationLimit) as info:
        domain.orders.create_order(who.alice, line, request_id=_rid(), peer="ipv4:10.0.0.8")
    assert info.value.metadata == {"subject": "account", "limit": "3", "held": "2"}
    assert info.value.retry_after == config.order_ttl_seconds
    # Another account from the same address: the address cap (4) is reached at 2 + 2 + 2.
    domain.orders.create_order(who.bob, line, request_id=_rid(), peer="ipv4:10.0.0.9")
    with pytest.raises(ReservationLimit) as info:
        domain.orders.create_order(
            who.merchant, line, request_id=_rid(), account="carol", client_address="ipv4:10.0.0.9"
        )
    assert info.value.metadata["subject"] == "address"
    # A storefront that passes no buyer address is capped per account only.
    domain.orders.create_order(who.merchant, line, request_id=_rid(), account="carol")
    # Paying (or cancelling) frees the hold.
    domain.orders.cancel_order(who.alice, first.id)
    domain.orders.create_order(who.alice, line, request_id=_rid(), peer="ipv4:10.0.0.7")


def test_reveal_is_rate_limited(storage: Storage, keyring: Keyring, who: Callers) -> None:
    domain = Domain(storage, keyring, config=DomainConfig(order_reveals_per_hour=2))
    shop = _stock(domain, who, count=1)
    order = _pay(domain, who, _buy(domain, who, who.alice, shop, 1))
    for _ in range(2):
        domain.orders.get_order(who.alice, order.id, reveal=True)
    with pytest.raises(RevealLimit) as info:
        domain.orders.get_order(who.alice, order.id, reveal=True)
    # All three in this hour's window: the limit holds until the next window ends.
    assert info.value.retry_after is not None and 3600 < info.value.retry_after <= 2 * 3600
    assert domain.orders.get_order(who.alice, order.id).codes[0].code.startswith("****")


# -- the state machine --------------------------------------------------------------------


class ShopMachine(RuleBasedStateMachine):
    """Random histories of buyers, payments, cancellations, refunds and time passing against
    one product's pool of POOL codes. After every step: every code is in exactly one place
    (available, or held/sold by exactly one live order), no code was ever delivered twice,
    and the pool's counts agree with the orders; and the notifier events agree with what
    happened to each order, in order, never naming a code or a serial."""

    POOL = 6
    domain: Domain
    who: Callers
    clock: FakeClock

    def __init__(self) -> None:
        super().__init__()
        self.shop = _stock(self.domain, self.who, count=self.POOL)
        self.buyers = [self.who.alice, self.who.bob]
        self.orders: dict[int, OrderStatus] = {}
        self.quantity: dict[int, int] = {}
        self.delivered: dict[int, frozenset[str]] = {}
        self.sold_ever: set[str] = set()
        self.expired_ever: set[int] = set()
        self.retired = False

    @rule(buyer=st.integers(0, 1), n=st.integers(1, 3))
    def buy(self, buyer: int, n: int) -> None:
        try:
            o = _buy(self.domain, self.who, self.buyers[buyer], self.shop, n)
        except ProductRetired:
            assert self.retired
            return
        except SoldOut:
            assert not self.retired and self._held() + n > self.POOL - self._gone()
            return
        assert not self.retired
        self.orders[o.id], self.quantity[o.id] = o.status, n

    @rule(retire=st.booleans())
    def retire_or_reinstate(self, retire: bool) -> None:
        # Orders placed before a retirement are still paid, delivered, expired and refunded
        # as before (the other rules check that); new ones are refused until reinstated.
        catalog = self.domain.catalog
        p = (
            catalog.retire_product(self.who.operator, self.shop.sku, reason="state machine")
            if retire
            else catalog.reinstate_product(self.who.operator, self.shop.sku)
        )
        assert (p.retired_at is not None) is retire
        self.retired = retire

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6), twice=st.booleans())
    def pay(self, pick: int, twice: bool) -> None:
        oid = sorted(self.orders)[pick % len(self.orders)]
        view = self.domain.orders.get_order(self.who.admin, oid)
        try:
            done = _pay(self.domain, self.who, view, f"gw-{oid}")
        except OrderWrongState:
            assert self.orders[oid] in (OrderStatus.DELIVERED, OrderStatus.REFUNDED)
            return
        if twice:
            again = _pay(self.domain, self.who, view, f"gw-{oid}")
            assert again.replayed and [c.serial for c in again.codes] == [c.serial for c in done.codes]
        if done.status is OrderStatus.DELIVERED and not done.replayed:
            serials = frozenset(c.serial for c in done.codes)
            assert len(serials) == self.quantity[oid] and not serials & self.sold_ever
            self.sold_ever |= serials
            self.delivered[oid] = serials
        self.orders[oid] = done.status

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6))
    def cancel(self, pick: int) -> None:
        oid = sorted(self.orders)[pick % len(self.orders)]
        try:
            self.orders[oid] = self.domain.orders.cancel_order(self.who.operator, oid).status
        except OrderWrongState:
            assert self.orders[oid] in (OrderStatus.DELIVERED, OrderStatus.REFUNDED)

    @precondition(lambda self: self.delivered)
    @rule(pick=st.integers(0, 10**6))
    def refund(self, pick: int) -> None:
        oid = sorted(self.delivered)[pick % len(self.delivered)]
        assert self.domain.orders.refund_order(self.who.operator, oid).status is OrderStatus.REFUNDED
        self.orders[oid] = OrderStatus.REFUNDED

    @rule(minutes=st.sampled_from([1, 10, 16]))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        self.domain.orders.sweep()
        for oid in self.orders:
            self.orders[oid] = self.domain.orders.get_order(self.who.admin, oid).status
            if self.orders[oid] is OrderStatus.EXPIRED:
                self.expired_ever.add(oid)

    def _held(self) -> int:
        return sum(self.quantity[o] for o, s in self.orders.items() if s is OrderStatus.RESERVED)

    def _gone(self) -> int:
        # Sold codes (delivered, or delivered then returned: void) never come back.
        return sum(self.quantity[o] for o in self.delivered)

    def teardown(self) -> None:
        # Examples share the database: let go of this one's holds (the caps count them).
        for oid, status in self.orders.items():
            if status is OrderStatus.RESERVED:
                self.domain.orders.cancel_order(self.who.operator, oid)

    @invariant()
    def events_agree(self) -> None:
        with self.domain.storage.read() as tx:
            events = [e for e in tx.events_after(0, 100_000) if e.kind.startswith("order.")]
        mine = {f"order:{oid}": oid for oid in self.orders}
        kinds: dict[int, list[str]] = {oid: [] for oid in self.orders}
        for e in events:
            if e.subject in mine:
                kinds[mine[e.subject]].append(e.kind)
                assert not any(serial in e.detail for serial in self.sold_ever)
        for oid, status in self.orders.items():
            expect = ["order.delivered"] if oid in self.delivered else []
            expect += ["order.expired"] if oid in self.expired_ever else []
            expect += ["order.refunded"] if status is OrderStatus.REFUNDED else []
            assert kinds[oid] == expect, (oid, status)

    @invariant()
    def pool_agrees(self) -> None:
        stock = {s.face_value: s for s in self.domain.orders.stock(self.who.admin, self.shop.sku).pools}
        s = stock[self.shop.face]
        returned = sum(self.quantity[o] for o in self.delivered if self.orders[o] is OrderStatus.REFUNDED)
        assert s.reserved == self._held()
        assert s.sold + s.returned == self._gone() and s.returned == returned
        assert s.available + s.withdrawn + s.reserved + s.sold + s.returned == self.POOL
        assert (s.available if self.retired else s.withdrawn) == 0


def test_shop_state_machine(domain: Domain, who: Callers, clock: FakeClock) -> None:
    ShopMachine.domain, ShopMachine.who, ShopMachine.clock = domain, who, clock
    run_state_machine_as_test(
        ShopMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
