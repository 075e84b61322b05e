"""Retiring a product, on both backends: nothing of it is sold from the retirement's commit
on (orders, lots, pool stock), in every server process, while its cards already issued and
the orders that reserved codes before it go on as usual; reinstating puts it back on sale."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest
from cardmint.server.domain import (
    Domain,
    InvalidArgument,
    Keyring,
    OrderLine,
    OrderStatus,
    PermissionDenied,
    ProductNotFound,
    ProductRetired,
    SoldOut,
)
from cardmint.server.storage import Storage

from .conftest import Callers

_ids = itertools.count(1)


def _shop(domain: Domain, who: Callers, count: int = 10) -> tuple[str, int]:
    """A product with ``count`` codes of 500 in its pool: (sku, lot id)."""
    sku = f"RET-{next(_ids)}"
    domain.catalog.create_product(
        who.operator, sku=sku, name="retiring card", currency="CNY", denominations=(500,), validity_days=365
    )
    lot = domain.lots.create_lot(who.operator, sku=sku, count=count, face_value=500)
    domain.orders.stock_pool(who.operator, lot.id)
    return sku, lot.id


def _order(domain: Domain, who: Callers, sku: str, n: int = 1) -> int:
    view = domain.orders.create_order(
        who.alice, [OrderLine(sku, 500, n)], request_id=f"ret-{next(_ids)}", peer="ipv4:10.1.0.1"
    )
    return view.id


def test_a_retired_product_is_no_longer_sold(domain: Domain, who: Callers, storage: Storage) -> None:
    sku, _ = _shop(domain, who, count=10)
    before = _order(domain, who, sku, 2)  # reserved before the retirement: still honoured
    spare = domain.lots.create_lot(who.operator, sku=sku, count=3, face_value=500)  # not stocked yet

    retired = domain.catalog.retire_product(who.operator, sku, reason="discontinued by the issuer")
    assert retired.retired_at is not None and retired.sku == sku
    assert domain.catalog.get_product(who.alice, sku).retired_at == retired.retired_at

    with pytest.raises(ProductRetired) as refused:
        _order(domain, who, sku)
    assert refused.value.metadata == {"sku": sku, "retired_at": retired.retired_at.isoformat()}
    with pytest.raises(ProductRetired):
        domain.lots.create_lot(who.operator, sku=sku, count=1, face_value=500)
    with pytest.raises(ProductRetired):
        domain.orders.stock_pool(who.operator, spare.id)

    stock = domain.orders.stock(who.alice, sku)
    assert stock.retired_at == retired.retired_at
    (pool,) = stock.pools
    assert (pool.available, pool.withdrawn, pool.reserved, pool.sold) == (0, 8, 2, 0)

    # The order that reserved before it is paid and delivered; its cards bind and spend.
    view = domain.orders.get_order(who.admin, before)
    paid = domain.orders.confirm_payment(
        who.merchant, before, payment_id=f"pay-{before}", amount=view.amount, currency=view.currency
    )
    assert paid.status is OrderStatus.DELIVERED and len(paid.codes) == 2
    code = domain.orders.get_order(who.alice, before, reveal=True).codes[0]
    bound = domain.cards.bind(who.alice, code.code)
    receipt = domain.balances.redeem(
        who.alice, serial=bound.card.serial, amount=200, currency="CNY", request_id="r1"
    )
    assert receipt.balance_after == 300

    # Retiring again changes nothing: the first retirement stands, audited once.
    again = domain.catalog.retire_product(who.admin, sku, reason="twice")
    assert again.retired_at == retired.retired_at

    on_sale = {p.sku for p in domain.catalog.list_products(who.alice, on_sale_only=True)}
    everything = {p.sku for p in domain.catalog.list_products(who.alice)}
    assert sku not in on_sale and sku in everything

    # Reinstated: on sale again, the withdrawn codes sellable, the spare lot stockable.
    back = domain.catalog.reinstate_product(who.operator, sku)
    assert back.retired_at is None
    assert domain.catalog.reinstate_product(who.operator, sku).retired_at is None  # idempotent
    _order(domain, who, sku, 8)
    with pytest.raises(SoldOut):
        _order(domain, who, sku)
    assert domain.orders.stock_pool(who.operator, spare.id).stocked == 3
    (pool,) = domain.orders.stock(who.alice, sku).pools
    assert (pool.available, pool.withdrawn, pool.reserved, pool.sold) == (3, 0, 8, 2)

    product_id = retired.id
    with storage.read() as tx:
        audit = [e for e in tx.audit_entries() if e.subject == f"product:{product_id}"]
    assert [e.action for e in audit] == ["product.create", "product.retire", "product.reinstate"]
    assert audit[1].actor == who.operator.actor and "discontinued by the issuer" in audit[1].detail
    with storage.read() as tx:
        events = [e for e in tx.events_after(0, 100_000) if e.subject == f"product:{product_id}"]
    assert [(e.kind, json.loads(e.detail)) for e in events] == [
        ("product.retired", {"sku": sku}),
        ("product.reinstated", {"sku": sku}),
    ]


def test_every_process_sees_a_retirement(storage: Storage, keyring: Keyring, who: Callers) -> None:
    """Another server process's domain remembers the product from earlier orders: the
    retirement must still stop it at once (its pool picks read the product afresh)."""
    here = Domain(storage, keyring)
    there = Domain(storage, keyring)
    sku, _ = _shop(here, who, count=6)
    _order(there, who, sku)  # ``there`` now remembers the product
    here.catalog.retire_product(who.operator, sku)
    with pytest.raises(ProductRetired):
        _order(there, who, sku)
    assert there.orders.stock(who.alice, sku).retired_at is not None
    with pytest.raises(ProductRetired):
        there.lots.create_lot(who.operator, sku=sku, count=1, face_value=500)
    here.catalog.reinstate_product(who.operator, sku)
    _order(there, who, sku)


def test_a_lot_request_repeated_after_retirement_answers_its_lot(domain: Domain, who: Callers) -> None:
    sku, _ = _shop(domain, who, count=1)
    first = domain.lots.create_lot(who.operator, sku=sku, count=2, face_value=500, request_id="lot-ret-1")
    domain.catalog.retire_product(who.operator, sku)
    again = domain.lots.create_lot(who.operator, sku=sku, count=2, face_value=500, request_id="lot-ret-1")
    assert again.id == first.id
    with pytest.raises(ProductRetired):
        domain.lots.create_lot(who.operator, sku=sku, count=2, face_value=500, request_id="lot-ret-2")


def test_who_may_retire_and_what_is_refused(domain: Domain, who: Callers) -> None:
    sku, _ = _shop(domain, who, count=1)
    for caller in (who.alice, who.merchant):
        with pytest.raises(PermissionDenied):
            domain.catalog.retire_product(caller, sku)
        with pytest.raises(PermissionDenied):
            domain.catalog.reinstate_product(caller, sku)
    for missing in ("NO-SUCH-SKU", "", "bad sku!", "x" * 65):
        with pytest.raises(ProductNotFound):
            domain.catalog.retire_product(who.admin, missing)
    with pytest.raises(InvalidArgument) as bad:
        domain.catalog.retire_product(who.admin, sku, reason="x" * 201)
    assert bad.value.violations[0].field == "reason"
    with pytest.raises(InvalidArgument):
        domain.catalog.retire_product(who.admin, sku, reason="line\nbreak")
    assert domain.catalog.get_product(who.admin, sku).retired_at is None  # refused: unchanged


def test_orders_racing_a_retirement(domain: Domain, who: Callers) -> None:
    """Buyers order one code at a time while staff retire the product: every order that
    began after the retirement returned is refused, none half-reserves, and the pool adds
    up (what was not reserved is withdrawn)."""
    pool = 400
    sku, _ = _shop(domain, who, count=pool)
    retired_at: list[float] = []
    placed: list[int] = []
    late: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 20.0

    def buyer(k: int) -> None:
        for i in range(pool):  # bounded in count and in time
            if time.monotonic() > stop:
                return
            started = time.monotonic()
            try:
                oid = domain.orders.create_order(
                    who.merchant,
                    [OrderLine(sku, 500, 1)],
                    request_id=f"race-{sku}-{k}-{i}",
                    account=f"race-{k}-{i}",  # one each: no account's cap is reached
                )
            except ProductRetired:
                return
            with lock:
                placed.append(oid.id)
                if retired_at and started > retired_at[0]:
                    late.append(f"order {oid.id} began after the retirement and was placed")

    threads = [threading.Thread(target=buyer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    while len(placed) < 20 and time.monotonic() < stop:
        time.sleep(0.005)
    domain.catalog.retire_product(who.operator, sku)
    retired_at.append(time.monotonic())
    for t in threads:
        t.join(30.0)
    assert not late
    (stock,) = domain.orders.stock(who.admin, sku).pools
    assert stock.available == 0 and stock.reserved == len(placed) == len(set(placed))
    assert stock.withdrawn == pool - len(placed)
