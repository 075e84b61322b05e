"""OrderService through gRPC and the Python client, on SQLite and on PostgreSQL: the card
shop's workflows end to end, the typed errors, the sweeper (on demand and in the
background, driven by a fake clock instead of sleeping), the caps with the caller's real
network address, and buyers racing for a pool."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import grpc
import pytest
from cardmint import client
from cardmint.client import Client
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.v1 import card_pb2, order_pb2

from tests.server.conftest import FakeClock

_ids = itertools.count(1)
RESERVED, REVIEW, DELIVERED = (
    order_pb2.ORDER_STATUS_RESERVED,
    order_pb2.ORDER_STATUS_REVIEW,
    order_pb2.ORDER_STATUS_DELIVERED,
)
CANCELLED, EXPIRED, REFUNDED = (
    order_pb2.ORDER_STATUS_CANCELLED,
    order_pb2.ORDER_STATUS_EXPIRED,
    order_pb2.ORDER_STATUS_REFUNDED,
)


@dataclass
class Shop:
    running: Running
    clock: FakeClock
    connect: Callable[..., Client]

    def stock(self, count: int, *, face: int = 500, review: bool = False) -> str:
        """A product with ``count`` codes of ``face`` in the pool; its sku."""
        admin = self.connect("admin")
        sku = f"SHOP-{next(_ids)}"
        admin.create_product(
            sku=sku,
            name="shop card",
            currency="CNY",
            denominations=[100, 500, 1000],
            validity_days=365,
            review=review,
        )
        lot = admin.create_lot(sku, count, face)
        assert admin.stock_pool(lot.id).stocked == count
        return sku


def _open_shop(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: DomainConfig
) -> Iterator[Shop]:
    clock = FakeClock()
    # The server keeps time by its storage's clock: hand it the test's fake one.
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=32, config=config, clock=clock)
    clients: list[Client] = []

    def connect(role: str, account: str | None = None) -> Client:
        token = running.domain.auth.create_token(role, account=account).token
        c = Client(f"127.0.0.1:{running.port}", token, timeout=30.0)
        clients.append(c)
        return c

    try:
        yield Shop(running, clock, connect)
    finally:
        for c in clients:
            c.close()
        running.stop(grace=0)


@pytest.fixture
def shop(storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    yield from _open_shop(storage_url, tmp_path, monkeypatch, DomainConfig(order_sweep_seconds=0))


def test_order_pay_deliver_view(shop: Shop) -> None:
    sku = shop.stock(5)
    alice, merchant = shop.connect("customer", "alice"), shop.connect("merchant")
    order = alice.create_order([(sku, 500, 3)], request_id="o-1")
    assert order.status == RESERVED and order.account == "alice" and order.total.minor_units == 1500
    assert order.expires_at.ToDatetime() > order.created_at.ToDatetime() and not order.codes
    stock = alice.stock(sku).stock[0]
    assert (stock.face_value.minor_units, stock.available, stock.reserved) == (500, 2, 3)

    paid = merchant.confirm_payment(order.id, "gw-1", 1500, "CNY")
    assert paid.status == DELIVERED and paid.paid.minor_units == 1500 and paid.payment_id == "gw-1"
    assert len(paid.codes) == 3 and all(c.code.startswith("****-") and not c.revealed for c in paid.codes)
    seen = alice.get_order(order.id, reveal=True)
    assert all(c.revealed and "*" not in c.code for c in seen.codes)
    assert all(c.status == card_pb2.CARD_STATUS_ACTIVE for c in seen.codes)
    # The delivered codes are real: the buyer binds one.
    bound = alice.bind_card(seen.codes[0].code)
    assert bound.card.serial == seen.codes[0].serial
    assert [o.id for o in alice.list_orders()] == [order.id]
    assert [o.id for o in merchant.list_orders(account="alice", status="delivered")] == [order.id]
    assert list(merchant.list_orders(status="reserved")) == []


def test_errors_reach_the_client_typed(shop: Shop) -> None:
    sku = shop.stock(3)
    alice, bob = shop.connect("customer", "alice"), shop.connect("customer", "bob")
    merchant, operator = shop.connect("merchant"), shop.connect("operator")
    with pytest.raises(client.SoldOut) as sold:
        alice.create_order([(sku, 500, 4)])
    assert sold.value.metadata == {"sku": sku, "face_value": "500", "available": "3"}
    assert sold.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert alice.stock(sku).stock[0].available == 3  # nothing half-reserved

    order = alice.create_order([(sku, 500, 2)], request_id="same")
    again = alice.create_order([(sku, 500, 2)], request_id="same")
    assert again.id == order.id and again.replayed
    with pytest.raises(client.IdempotencyKeyReused):
        alice.create_order([(sku, 500, 1)], request_id="same")
    with pytest.raises(client.OrderNotFound):
        bob.get_order(order.id)
    with pytest.raises(client.PermissionDenied):
        alice.confirm_payment(order.id, "gw-self", 1000, "CNY")
    with pytest.raises(client.PaymentMismatch):
        merchant.confirm_payment(order.id, "gw-1", 999, "CNY")
    first = merchant.confirm_payment(order.id, "gw-1", 1000, "CNY")
    repeat = merchant.confirm_payment(order.id, "gw-1", 1000, "CNY")
    assert repeat.replayed and [c.serial for c in repeat.codes] == [c.serial for c in first.codes]
    assert alice.stock(sku).stock[0].sold == 2  # the repeat delivered nothing more
    with pytest.raises(client.IdempotencyKeyReused):
        merchant.confirm_payment(order.id, "gw-1", 500, "CNY")
    with pytest.raises(client.OrderWrongState) as wrong:
        merchant.confirm_payment(order.id, "gw-2", 1000, "CNY")
    assert wrong.value.metadata == {"status": "delivered"}
    with pytest.raises(client.OrderWrongState):
        alice.cancel_order(order.id)
    with pytest.raises(client.PermissionDenied):
        operator.get_order(order.id, reveal=True)
    with pytest.raises(client.InvalidArgument):
        alice.create_order([(sku, 700, 1)])
    with pytest.raises(client.ProductNotFound):
        alice.create_order([("NO-SUCH", 500, 1)])
    # A lot whose plaintext went out cannot be sold; a stocked lot cannot go out again.
    admin = shop.connect("admin")
    lot = admin.create_lot(sku, 2, 500)
    list(operator.stream_lot(lot.id))
    with pytest.raises(client.LotExported):
        operator.stock_pool(lot.id)


def test_expiry_sweeper_and_refund_record(shop: Shop) -> None:
    sku = shop.stock(3)
    alice, merchant, operator = (
        shop.connect("customer", "alice"),
        shop.connect("merchant"),
        shop.connect("operator"),
    )
    order = alice.create_order([(sku, 500, 2)])
    kept = alice.create_order([(sku, 500, 1)])
    with pytest.raises(client.SoldOut):
        alice.create_order([(sku, 500, 1)])
    shop.clock.advance(seconds=899)
    assert operator.expire_reservations().expired == 0
    shop.clock.advance(seconds=1)
    swept = operator.expire_reservations()
    assert (swept.expired, swept.refunded) == (2, 0)
    assert alice.get_order(order.id).status == EXPIRED and alice.stock(sku).stock[0].available == 3
    # The payment arrives late: refunded automatically, and the refund is on the ledger.
    late = merchant.confirm_payment(order.id, "gw-late", 1000, "CNY")
    assert late.status == REFUNDED and late.close_reason == "paid after the reservation expired"
    refunds = [t for t in alice.transactions() if t.kind == 9]  # TRANSACTION_KIND_REFUND
    assert [(t.amount.minor_units, t.request_id) for t in refunds] == [(1000, f"order:{order.id}")]
    assert alice.cancel_order(kept.id).status == EXPIRED  # already expired: answered as is


def test_background_sweeper(storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = DomainConfig(order_sweep_seconds=0.05)
    for s in _open_shop(storage_url, tmp_path, monkeypatch, config):
        sku = s.stock(2)
        alice = s.connect("customer", "alice")
        order = alice.create_order([(sku, 500, 2)])
        time.sleep(0.2)  # a few sweeps run: nothing is due yet
        assert alice.get_order(order.id).status == RESERVED
        s.clock.advance(minutes=15)
        deadline = time.monotonic() + 10
        while alice.get_order(order.id).status != EXPIRED:
            assert time.monotonic() < deadline, "the background sweeper did not expire the order"
            time.sleep(0.05)
        assert alice.stock(sku).stock[0].available == 2
        # The sweeper's change is visible at its commit; on PostgreSQL its audit event joins
        # the chain a moment later (docs/storage.md, "Journals").
        audit = s.running.domain.storage
        while True:
            with audit.read() as tx:
                if any(e.actor == "sweeper" and e.action == "order.expire" for e in tx.audit_entries()):
                    break
            assert time.monotonic() < deadline, "the expiry was never audited"
            time.sleep(0.05)


def test_review_cancel_refund(shop: Shop) -> None:
    sku = shop.stock(6, review=True)
    alice, merchant, operator = (
        shop.connect("customer", "alice"),
        shop.connect("merchant"),
        shop.connect("operator"),
    )
    a, b, c = (alice.create_order([(sku, 500, 2)]) for _ in range(3))
    assert alice.cancel_order(c.id).status == CANCELLED
    parked = merchant.confirm_payment(a.id, "gw-a", 1000, "CNY")
    assert parked.status == REVIEW and parked.deliver_by.ToDatetime() > parked.paid_at.ToDatetime()
    assert merchant.confirm_payment(b.id, "gw-b", 1000, "CNY").status == REVIEW
    done = operator.review_order(a.id, approve=True)
    assert done.status == DELIVERED and len(done.codes) == 2
    # The buyer asks for the refund of the one still waiting: at once, codes back for sale.
    assert alice.refund_order(b.id).status == REFUNDED
    # Delivered codes: refundable while unbound and unspent; they are void afterwards.
    codes = alice.get_order(a.id, reveal=True).codes
    alice.bind_card(codes[0].code)
    with pytest.raises(client.NotRefundable) as info:
        alice.refund_order(a.id)
    assert info.value.metadata == {"serial": codes[0].serial, "problem": "bound"}
    alice.unbind_card(codes[0].serial)
    refunded = alice.refund_order(a.id, reason="not needed")
    assert refunded.status == REFUNDED and {x.status for x in refunded.codes} == {card_pb2.CARD_STATUS_VOID}
    assert refunded.close_reason == "refund requested by customer: not needed"
    with pytest.raises(client.CardVoid):
        shop.connect("customer", "bob").bind_card(codes[1].code)
    stock = alice.stock(sku).stock[0]
    assert (stock.available, stock.reserved, stock.sold, stock.returned) == (4, 0, 0, 2)


def test_caps_count_the_callers_address(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DomainConfig(order_sweep_seconds=0, held_codes_per_account=3, held_codes_per_address=4)
    for s in _open_shop(storage_url, tmp_path, monkeypatch, config):
        sku = s.stock(20)
        alice, bob = s.connect("customer", "alice"), s.connect("customer", "bob")
        first = alice.create_order([(sku, 500, 2)])
        with pytest.raises(client.ReservationLimit) as info:
            alice.create_order([(sku, 500, 2)])
        assert info.value.metadata == {"subject": "account", "limit": "3", "held": "2"}
        assert info.value.retry_after == 900 and info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        bob.create_order([(sku, 500, 2)])
        # Both customers connect from 127.0.0.1: four codes held there, the address cap.
        with pytest.raises(client.ReservationLimit) as info:
            s.connect("customer", "carol").create_order([(sku, 500, 1)])
        assert info.value.metadata["subject"] == "address"
        # A storefront passing each buyer's address on: counted per buyer address.
        store = s.connect("merchant")
        store.create_order([(sku, 500, 2)], account="dave", client_address="ipv4:203.0.113.7")
        alice.cancel_order(first.id)
        s.connect("customer", "carol").create_order([(sku, 500, 1)])


def test_buyers_race_for_the_pool(shop: Shop, backend: str) -> None:
    """Concurrent buyers (customer tokens, one account each, all from 127.0.0.1) buy one
    code at a time until sold out, the storefront confirming each payment: the whole pool
    is delivered, no code twice, and every buyer ends with a clean SoldOut. Full size (200
    buyers, 1,000 codes) on SQLite; half on PostgreSQL, whose run takes ~3x as long here
    (benches/test_orders_bench.py races the full size on both)."""
    buyers, pool = (200, 1000) if backend == "sqlite" else (100, 500)
    sku = shop.stock(pool)
    clients = [shop.connect("customer", f"racer-{i}") for i in range(buyers)]
    merchant = shop.connect("merchant")
    go = threading.Barrier(buyers)

    def buyer(i: int) -> tuple[list[str], str]:
        me = clients[i]
        got: list[str] = []
        go.wait(60)
        while True:
            try:
                order = me.create_order([(sku, 500, 1)])
            except client.SoldOut:
                return got, "sold out"
            paid = merchant.confirm_payment(order.id, f"race-{order.id}", 500, "CNY")
            assert paid.status == DELIVERED, paid
            got += [c.serial for c in paid.codes]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=buyers) as ex:
        results = list(ex.map(buyer, range(buyers)))
    seconds = time.perf_counter() - started
    serials = [s for got, _ in results for s in got]
    assert len(serials) == pool and len(set(serials)) == pool
    assert {why for _, why in results} == {"sold out"}
    stock = merchant.stock(sku).stock[0]
    assert (stock.available, stock.reserved, stock.sold) == (0, 0, pool)
    print(f"\n[{backend}] {buyers} buyers, pool {pool}: all delivered once in {seconds:.1f} s")


def test_a_retired_product_through_the_api(shop: Shop) -> None:
    sku = shop.stock(4)
    admin, operator = shop.connect("admin"), shop.connect("operator")
    alice, merchant = shop.connect("customer", "alice"), shop.connect("merchant")
    held = alice.create_order([(sku, 500, 1)], request_id="before-retire")
    spare = admin.create_lot(sku, 2, 500)

    with pytest.raises(client.PermissionDenied):
        alice.retire_product(sku)
    with pytest.raises(client.ProductNotFound):
        operator.retire_product("NO-SUCH-SKU")
    with pytest.raises(client.InvalidArgument) as bad:
        operator.retire_product(sku, reason="r" * 201)
    assert [v.field for v in bad.value.violations] == ["reason"]

    product = operator.retire_product(sku, reason="issuer withdrew it")
    assert product.sku == sku and product.HasField("retired_at")
    assert operator.retire_product(sku).retired_at == product.retired_at  # idempotent
    assert alice.get_product(sku).retired_at == product.retired_at
    assert sku not in {p.sku for p in alice.list_products(on_sale_only=True)}
    assert sku in {p.sku for p in alice.list_products()}

    when = product.retired_at.ToDatetime().replace(tzinfo=UTC).isoformat()
    with pytest.raises(client.ProductRetired) as refused:
        alice.create_order([(sku, 500, 1)])
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.metadata == {"sku": sku, "retired_at": when}
    with pytest.raises(client.ProductRetired):
        admin.create_lot(sku, 1, 500)
    with pytest.raises(client.ProductRetired):
        admin.stock_pool(spare.id)
    stock = alice.stock(sku)
    assert stock.retired_at == product.retired_at
    assert [(s.available, s.withdrawn, s.reserved) for s in stock.stock] == [(0, 3, 1)]

    # Reserved before: paid and delivered as usual.
    paid = merchant.confirm_payment(held.id, "gw-retired", 500, "CNY")
    assert paid.status == DELIVERED and len(paid.codes) == 1

    back = operator.reinstate_product(sku)
    assert not back.HasField("retired_at") and not alice.stock(sku).HasField("retired_at")
    assert alice.create_order([(sku, 500, 3)]).status == RESERVED
