"""The pool and orders in storage, on both backends: claims never overlap, a buyer holding
rows never blocks another (PostgreSQL: FOR UPDATE SKIP LOCKED), and the order and pool rows
move as the domain asks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from cardmint.server.storage import (
    CardStatus,
    NewOrder,
    Order,
    OrderItem,
    OrderStatus,
    PoolCardState,
    Storage,
    UnitOfWork,
)

from .conftest import FakeClock
from .helpers import mint_lot, new_product


def _order(tx: UnitOfWork, product_id: int, n: int, face: int = 1000, account: str = "buyer") -> Order:
    acct = tx.ensure_account(account)
    return tx.create_order(
        NewOrder(
            account_id=acct.id,
            request_id=f"r-{account}-{time.perf_counter_ns()}",
            items=(OrderItem(product_id, face, n),),
            amount=face * n,
            currency="CNY",
            client_address="ipv4:127.0.0.1",
            expires_at=tx.now() + timedelta(minutes=15),
        )
    )


def test_stock_reserve_and_move(storage: Storage, clock: FakeClock) -> None:
    product = new_product(storage)
    lot, _ = mint_lot(storage, 10, product=product)
    with storage.transaction() as tx:
        assert tx.stock_pool(lot.id) == 10
        assert tx.pool_lot_count(lot.id) == 10
        order = _order(tx, product.id, 4)
        got = tx.reserve_pool_cards(order.id, product.id, 1000, 4)
        assert len(got) == 4
        # Not enough left: the short answer lists what could be had and claims nothing.
        short = _order(tx, product.id, 7, account="other")
        assert len(tx.reserve_pool_cards(short.id, product.id, 1000, 7)) == 6
    with storage.read() as tx:
        (stock,) = tx.pool_stock(product.id)
        assert (stock.face_value, stock.available, stock.reserved, stock.sold) == (1000, 6, 4, 0)
        held = tx.order_cards(order.id)
        assert [pc.card.id for pc in held] == got and {pc.state for pc in held} == {PoolCardState.RESERVED}
        assert tx.held_codes(account_id=order.account_id)[0] == 4
        assert tx.held_codes(account_id=short.account_id)[0] == 7  # short claims still live
        assert tx.held_codes(client_address="ipv4:127.0.0.1")[0] == 11  # one address, both orders
    with storage.transaction() as tx:
        assert tx.move_pool_cards(order.id, expect=PoolCardState.RESERVED, state=PoolCardState.SOLD) == 4
        done = tx.update_order(
            order.id,
            expect=(OrderStatus.RESERVED,),
            status=OrderStatus.DELIVERED,
            payment_id="p1",
            paid_amount=4000,
            paid_at=tx.now(),
            delivered_at=tx.now(),
        )
        assert done is not None and done.status is OrderStatus.DELIVERED and done.paid_amount == 4000
        # Conditional: a second move from "reserved" finds nothing.
        assert tx.update_order(order.id, expect=(OrderStatus.RESERVED,), status=OrderStatus.EXPIRED) is None
        entry = tx.record_refund(done, 4000, "CNY")
        assert (
            entry.account_id == done.account_id
            and entry.amount == 4000
            and entry.request_id == f"order:{order.id}"
        )
    clock.advance(minutes=16)
    with storage.transaction() as tx:  # due_orders claims its rows: a write transaction
        assert tx.held_codes(account_id=short.account_id) == (0, None)  # its deadline passed
        assert tx.due_orders(OrderStatus.RESERVED, tx.now()) == [short.id]
        assert tx.list_orders(account_id=short.account_id)[0].id == short.id
        assert [o.id for o in tx.list_orders()] == [short.id, order.id]


def test_unsellable_cards_are_never_claimed(storage: Storage, clock: FakeClock) -> None:
    product = new_product(storage)
    lot, _ = mint_lot(storage, 3, product=product, expires_at=clock() + timedelta(days=1))
    with storage.transaction() as tx:
        tx.stock_pool(lot.id)
        a, b, c = (card.id for card in tx.lot_cards(lot.id))
        tx.set_card_status(a, CardStatus.FROZEN, only_from=(CardStatus.ACTIVE,))
        tx.bind_card(b, tx.ensure_account("someone").id)
    with storage.transaction() as tx:
        order = _order(tx, product.id, 3)
        assert tx.reserve_pool_cards(order.id, product.id, 1000, 3) == [c]
    clock.advance(days=2)  # c expires
    with storage.transaction() as tx:
        order = _order(tx, product.id, 1)
        assert tx.reserve_pool_cards(order.id, product.id, 1000, 1) == []
        assert tx.pool_stock(product.id)[0].available == 0


def test_a_buyer_holding_rows_does_not_block_another(opener: Callable[[], Storage], backend: str) -> None:
    """PostgreSQL: while one transaction holds its claimed rows, a second claims the next
    ones at once (SKIP LOCKED) instead of waiting. SQLite has one writer: the second runs
    after the first commits and sees its claim."""
    first, second = opener(), opener()
    product = new_product(first)
    lot, _ = mint_lot(first, 6, product=product)
    with first.transaction() as tx:
        tx.stock_pool(lot.id)
    holding, release = threading.Event(), threading.Event()
    claimed: dict[str, list[int]] = {}

    def slow_buyer() -> None:
        with first.transaction() as tx:
            order = _order(tx, product.id, 3, account="slow")
            claimed["slow"] = tx.reserve_pool_cards(order.id, product.id, 1000, 3)
            holding.set()
            release.wait(30)

    t = threading.Thread(target=slow_buyer)
    t.start()
    assert holding.wait(30)
    if backend == "postgres":
        started = time.perf_counter()
        with second.transaction() as tx:
            order = _order(tx, product.id, 3, account="fast")
            claimed["fast"] = tx.reserve_pool_cards(order.id, product.id, 1000, 3)
        assert time.perf_counter() - started < 5.0  # did not wait for the slow buyer
        release.set()
        t.join(30)
    else:
        release.set()
        t.join(30)
        with second.transaction() as tx:
            order = _order(tx, product.id, 3, account="fast")
            claimed["fast"] = tx.reserve_pool_cards(order.id, product.id, 1000, 3)
    assert len(claimed["slow"]) == len(claimed["fast"]) == 3
    assert not set(claimed["slow"]) & set(claimed["fast"])


@pytest.mark.parametrize("buyers", [24])
def test_concurrent_claims_never_overlap(opener: Callable[[], Storage], buyers: int) -> None:
    """Many buyers on two handles claim 2 codes each from a pool of 30: 15 orders are filled,
    no card twice, and every short claim leaves the pool as it was."""
    handles = [opener(), opener()]
    product = new_product(handles[0])
    lot, _ = mint_lot(handles[0], 30, product=product)
    with handles[0].transaction() as tx:
        tx.stock_pool(lot.id)
    go = threading.Barrier(buyers)

    class ShortError(Exception):
        pass

    def buy(i: int) -> list[int]:
        go.wait(30)
        results: list[int] = []
        for attempt in range(3):
            s = handles[(i + attempt) % 2]

            def work(tx: UnitOfWork) -> list[int]:
                order = _order(tx, product.id, 2, account=f"b{i}")
                got = tx.reserve_pool_cards(order.id, product.id, 1000, 2)
                if len(got) < 2:
                    raise ShortError()  # rolls the order back, as the domain does
                return got

            try:
                results += s.run(work)
            except ShortError:
                break
        return results

    with ThreadPoolExecutor(max_workers=buyers) as pool:
        got = [c for cards in pool.map(buy, range(buyers)) for c in cards]
    assert len(got) == 30 and len(set(got)) == 30
    with handles[0].read() as tx:
        (stock,) = tx.pool_stock(product.id)
        assert (stock.available, stock.reserved) == (0, 30)
