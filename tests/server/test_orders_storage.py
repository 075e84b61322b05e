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
    IdempotencyConflictError,
    NewOrder,
    Order,
    OrderItem,
    OrderStatus,
    PoolCardState,
    Storage,
    StorageError,
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


def _new(
    tx: UnitOfWork, items: tuple[OrderItem, ...], account: str, address: str = "ipv4:10.0.0.1"
) -> NewOrder:
    return NewOrder(
        account_id=tx.ensure_account(account).id,
        request_id=f"r-{account}-{time.perf_counter_ns()}",
        items=items,
        amount=sum(i.face_value * i.quantity for i in items),
        currency="CNY",
        client_address=address,
        expires_at=tx.now() + timedelta(minutes=15),
    )


def test_place_order_claims_whole_lines_and_answers_the_claim(storage: Storage) -> None:
    """The order, its items, its claims and its request id's answer in one call (one
    statement on PostgreSQL): a line found short claims nothing; the answer is written only
    when every line was filled."""
    product = new_product(storage)
    lot, _ = mint_lot(storage, 5, product=product)
    small, _ = mint_lot(storage, 2, product=product, face=500)
    with storage.transaction() as tx:
        tx.stock_pool(lot.id)
        tx.stock_pool(small.id)
    with storage.transaction() as tx:
        tx.claim_idempotency("order.create", "k-1", b"f")
        items = (OrderItem(product.id, 1000, 3), OrderItem(product.id, 500, 2))
        order, got = tx.place_order(_new(tx, items, "ann"), complete=("order.create", "k-1"))
        assert got == [3, 2] and order.items == items and order.status is OrderStatus.RESERVED
        assert tx.get_order(order.id) == order  # items read back with the order, in line order
        held = tx.order_cards(order.id)
        assert len(held) == 5 and {pc.state for pc in held} == {PoolCardState.RESERVED}
        replay = tx.claim_idempotency("order.create", "k-1", b"f").replay
        assert replay == f'{{"order_id": {order.id}}}'.encode()
    with storage.transaction() as tx:
        tx.claim_idempotency("order.create", "k-2", b"f")
        items = (OrderItem(product.id, 1000, 1), OrderItem(product.id, 500, 1))
        short, got = tx.place_order(_new(tx, items, "bob"), complete=("order.create", "k-2"))
        assert got == [1, 0]  # two left of 1000 (one taken now), none of 500
        assert [pc.card.face_value for pc in tx.order_cards(short.id)] == [1000]  # the full line only
        (stock_500,) = [s for s in tx.pool_stock(product.id) if s.face_value == 500]
        assert (stock_500.available, stock_500.reserved) == (0, 2)
        # Not every line filled: the claim stays open (the caller rolls back).
        with pytest.raises(StorageError, match="claimed but never completed"):
            tx.claim_idempotency("order.create", "k-2", b"f")


def test_held_codes_of_account_and_address_at_once(storage: Storage, clock: FakeClock) -> None:
    product = new_product(storage)
    with storage.transaction() as tx:
        a = tx.place_order(_new(tx, (OrderItem(product.id, 1000, 2),), "ann", "ipv4:10.0.0.1"))[0]
        tx.place_order(_new(tx, (OrderItem(product.id, 1000, 3),), "ann", "ipv4:10.0.0.2"))
        tx.place_order(_new(tx, (OrderItem(product.id, 1000, 4),), "bob", "ipv4:10.0.0.1"))
        tx.lock_subjects(("account", str(a.account_id)), ("address", "ipv4:10.0.0.1"))
        (mine, first), (there, first_there) = tx.held_codes_both(a.account_id, "ipv4:10.0.0.1")
        assert (mine, there) == (5, 6)
        assert first == first_there == a.expires_at
        assert (mine, first) == tx.held_codes(account_id=a.account_id)
        assert (there, first_there) == tx.held_codes(client_address="ipv4:10.0.0.1")
        assert tx.held_codes_both(a.account_id, "ipv4:10.0.0.9") == ((5, first), (0, None))
        tx.update_order(a.id, expect=(OrderStatus.RESERVED,), status=OrderStatus.CANCELLED)
        assert tx.held_codes_both(a.account_id, "ipv4:10.0.0.1") == ((3, first), (4, first))
    clock.advance(minutes=16)
    with storage.read() as tx:
        assert tx.held_codes_both(a.account_id, "ipv4:10.0.0.1") == ((0, None), (0, None))


def test_sell_order_cards_all_or_nothing(storage: Storage) -> None:
    product = new_product(storage)
    lot, _ = mint_lot(storage, 4, product=product)
    with storage.transaction() as tx:
        tx.stock_pool(lot.id)
        ok, _ = tx.place_order(_new(tx, (OrderItem(product.id, 1000, 2),), "ann"))
        bad, _ = tx.place_order(_new(tx, (OrderItem(product.id, 1000, 2),), "bob"))
    with storage.transaction() as tx:
        sold = tx.sell_order_cards(ok.id, 2)
        assert sold is not None and {pc.state for pc in sold} == {PoolCardState.SOLD}
        assert [pc.card.id for pc in sold] == [pc.card.id for pc in tx.order_cards(ok.id)]
        assert tx.sell_order_cards(ok.id, 2) is None  # nothing reserved is left to sell
        # One of bob's cards was frozen meanwhile: none of them is sold.
        frozen = tx.order_cards(bad.id)[0].card.id
        tx.set_card_status(frozen, CardStatus.FROZEN, only_from=(CardStatus.ACTIVE,))
        assert tx.sell_order_cards(bad.id, 2) is None
        assert tx.sell_order_cards(bad.id, 3) is None  # and a count that is not the order's
        assert {pc.state for pc in tx.order_cards(bad.id)} == {PoolCardState.RESERVED}
        known = tx.update_order(
            ok.id, expect=(OrderStatus.RESERVED,), status=OrderStatus.DELIVERED, known_items=ok.items
        )
        assert known is not None and known.items == ok.items
        assert known == tx.get_order(ok.id, lock=True)


def test_claim_with_response(storage: Storage) -> None:
    with storage.transaction() as tx:
        assert tx.claim_with_response("order.pay", "gw-1", b"f1", b'{"order_id": 7}').replay is None
        assert (
            tx.claim_with_response("order.pay", "gw-1", b"f1", b'{"order_id": 7}').replay
            == b'{"order_id": 7}'
        )
        assert tx.claim_idempotency("order.pay", "gw-1", b"f1").replay == b'{"order_id": 7}'
    with storage.transaction() as tx, pytest.raises(IdempotencyConflictError):
        tx.claim_with_response("order.pay", "gw-1", b"f2", b'{"order_id": 8}')


def test_concurrent_place_order_never_overlaps(opener: Callable[[], Storage]) -> None:
    """Buyers on two handles place 3-code orders on a pool of 20 at once: six filled, no
    card twice, and every short order, rolled back, leaves the pool as it was."""
    handles = [opener(), opener()]
    product = new_product(handles[0])
    lot, _ = mint_lot(handles[0], 20, product=product)
    with handles[0].transaction() as tx:
        tx.stock_pool(lot.id)
    buyers = 16
    go = threading.Barrier(buyers)

    class ShortError(Exception):
        pass

    def buy(i: int) -> list[int]:
        go.wait(30)

        def work(tx: UnitOfWork) -> list[int]:
            order, got = tx.place_order(_new(tx, (OrderItem(product.id, 1000, 3),), f"b{i}"))
            if got != [3]:
                raise ShortError()
            return [pc.card.id for pc in tx.order_cards(order.id)]

        try:
            return handles[i % 2].run(work)
        except ShortError:
            return []

    with ThreadPoolExecutor(max_workers=buyers) as pool:
        results = list(pool.map(buy, range(buyers)))
    got = [c for cards in results for c in cards]
    assert len(got) == len(set(got)) == 3 * sum(1 for r in results if r)
    assert sum(1 for r in results if r) == 6
    with handles[0].read() as tx:
        (stock,) = tx.pool_stock(product.id)
        assert (stock.available, stock.reserved) == (2, 18)
