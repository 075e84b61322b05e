"""The storage interface, run against SQLite and PostgreSQL alike (fixture ``backend``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from cardmint.server.storage import (
    GENESIS_HASH,
    AttemptKind,
    Attempts,
    BindOutcome,
    CardBatch,
    CardStatus,
    ConflictError,
    LedgerKind,
    LotStateError,
    LotStatus,
    MoneyOutcome,
    NewProduct,
    NotFoundError,
    Role,
    Storage,
    StorageError,
    TransientError,
    UnitOfWork,
    audit_hash,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import FakeClock
from .helpers import fill_lot, mint_lot, new_product, one_card, random_batch, start_lot

# -- catalog


def test_products_fixed_and_range(storage: Storage) -> None:
    with storage.transaction() as tx:
        fixed = tx.create_product(NewProduct("JD-100", "JD card", "CNY", denominations=(500, 100, 200)))
        ranged = tx.create_product(
            NewProduct("YH-ANY", "Yonghui card", "CNY", amount_range=(1, 5000), validity_days=1095)
        )
    with storage.read() as tx:
        got = tx.get_product(fixed.id)
        assert got is not None and got.denominations == (100, 200, 500) and got.amount_range is None
        by_sku = tx.get_product_by_sku("YH-ANY")
        assert by_sku == ranged and by_sku.amount_range == (1, 5000) and by_sku.validity_days == 1095
        assert tx.get_product(10_000) is None and tx.get_product_by_sku("nope") is None
        assert [p.sku for p in tx.list_products()] == ["JD-100", "YH-ANY"]
        assert [p.sku for p in tx.list_products(after_id=fixed.id, limit=5)] == ["YH-ANY"]
        assert tx.code_lengths() == [16]
    with storage.transaction() as tx:
        tx.create_product(NewProduct("SHORT", "Short codes", "CNY", denominations=(1,), code_length=10))
    with storage.read() as tx:
        assert tx.code_lengths() == [10, 16]


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"denominations": (100,), "amount_range": (1, 10)}, ValueError),
        ({}, ValueError),
        ({"denominations": (100.0,)}, TypeError),
        ({"denominations": (0,)}, ValueError),
        ({"denominations": (100, 100)}, ValueError),
        ({"amount_range": (10, 1)}, ValueError),
        ({"denominations": (100,), "currency": "cny"}, ValueError),
        ({"denominations": (100,), "currency": "YUAN"}, ValueError),
    ],
)
def test_bad_products_are_refused(storage: Storage, kw: dict[str, object], error: type[Exception]) -> None:
    kw = dict(kw)  # the parameter dict is shared by both backends' runs
    currency = str(kw.pop("currency", "CNY"))
    with pytest.raises(error), storage.transaction() as tx:
        tx.create_product(NewProduct("BAD", "bad", currency, **kw))  # type: ignore[arg-type]
    with storage.read() as tx:
        assert tx.list_products() == []


def test_duplicate_sku_conflicts_and_rolls_back(storage: Storage) -> None:
    with storage.transaction() as tx:
        tx.create_product(NewProduct("DUP", "one", "CNY", denominations=(100,)))

    def account_then_duplicate(tx: UnitOfWork) -> None:
        tx.ensure_account("should-vanish")
        tx.create_product(NewProduct("DUP", "two", "CNY", denominations=(100,)))

    with pytest.raises(ConflictError):
        storage.run(account_then_duplicate)
    with storage.read() as tx:
        assert len(tx.list_products()) == 1
        assert tx.get_product_by_sku("DUP") is not None and tx.get_product_by_sku("DUP").name == "one"  # type: ignore[union-attr]
        assert tx.get_account(1) is None  # the failed transaction's account went with it


# -- lots and cards


def test_lot_lifecycle_and_lookups(storage: Storage) -> None:
    product = new_product(storage)
    lot, batch = mint_lot(storage, 25, face=500, product=product, chunk=10)
    assert lot.status is LotStatus.COMPLETE and lot.count == 25 and lot.completed_at is not None
    with storage.read() as tx:
        assert tx.count_lot_cards(lot.id) == 25
        serial = str(batch.serials[7])
        digest = batch.digests[7].tobytes()
        by_serial = tx.get_card_by_serial(serial)
        by_digest = tx.get_card_by_digest(digest)
        assert by_serial is not None and by_serial == by_digest
        assert by_serial.sealed == batch.sealed[7].tobytes() and by_serial.digest == digest
        assert by_serial.balance == by_serial.face_value == 500 and by_serial.currency == product.currency
        assert by_serial.status is CardStatus.ACTIVE and by_serial.account_id is None
        assert tx.get_card(by_serial.id) == by_serial
        assert tx.get_card_by_serial("nope") is None and tx.get_card_by_digest(bytes(16)) is None
        page1 = tx.lot_cards(lot.id, limit=10)
        page2 = tx.lot_cards(lot.id, after_id=page1[-1].id, limit=100)
        assert [c.serial for c in page1 + page2] == list(batch.serials)
        assert [x.id for x in tx.list_lots(product_id=product.id)] == [lot.id]
        assert tx.list_lots(product_id=product.id + 99) == []


def test_card_columns_round_trip(storage: Storage, clock: FakeClock) -> None:
    """Both insert paths (PostgreSQL: packed COPY for equal-width serials, row by row
    otherwise) store exactly what they were given, NULL and non-NULL expiry alike."""
    product = new_product(storage)
    expires = clock() + timedelta(days=1095, microseconds=123)
    mixed = start_lot(storage, product, 3)
    fixed = start_lot(storage, product, 3)
    mixed_batch = random_batch(3, "", 0)
    mixed_batch = CardBatch(["7", "77", "777"], mixed_batch.digests, mixed_batch.sealed, key_id=2)
    fixed_batch = random_batch(3, "6", 0)
    fixed_batch = CardBatch(np.array(fixed_batch.serials, dtype="S"), fixed_batch.digests, fixed_batch.sealed)
    with storage.transaction() as tx:
        tx.add_cards(mixed, mixed_batch, None)
        tx.complete_lot(mixed.id)
        tx.add_cards(fixed, fixed_batch, expires)
        tx.complete_lot(fixed.id)
    with storage.read() as tx:
        for lot, batch, exp, key_id in ((mixed, mixed_batch, None, 2), (fixed, fixed_batch, expires, 1)):
            cards = tx.lot_cards(lot.id)
            assert [c.digest for c in cards] == [d.tobytes() for d in batch.digests]
            assert [c.sealed for c in cards] == [x.tobytes() for x in batch.sealed]
            for c in cards:
                assert (c.expires_at, c.key_id, c.lot_id, c.product_id) == (exp, key_id, lot.id, product.id)
                assert (c.face_value, c.balance, c.currency, c.created_at) == (1000, 1000, "CNY", clock())
        assert [c.serial for c in tx.lot_cards(mixed.id)] == ["7", "77", "777"]
        assert [c.serial for c in tx.lot_cards(fixed.id)] == ["6000000000", "6000000001", "6000000002"]


def test_serials_are_reserved_without_overlap(storage: Storage) -> None:
    with storage.transaction() as tx:
        a = tx.reserve_serials("77", 1000)
        b = tx.reserve_serials("77", 5)
        c = tx.reserve_serials("78", 5)
    assert (a, b, c) == (1, 1001, 1)


def test_complete_lot_checks_the_count(storage: Storage) -> None:
    product = new_product(storage)
    lot = start_lot(storage, product, 10)
    with pytest.raises(LotStateError, match="holds 9 cards"):
        fill_lot(storage, lot, random_batch(9, lot.serial_prefix, lot.serial_start))
    with storage.read() as tx:
        assert tx.count_lot_cards(lot.id) == 0  # the partial fill rolled back
        assert tx.get_lot(lot.id).status is LotStatus.MINTING  # type: ignore[union-attr]
    with pytest.raises(NotFoundError), storage.transaction() as tx:
        tx.complete_lot(99_999)


def test_duplicate_digest_fails_the_whole_lot(storage: Storage) -> None:
    first, batch = mint_lot(storage, 5)
    product = new_product(storage)
    lot = start_lot(storage, product, 3)
    clash = random_batch(3, lot.serial_prefix, lot.serial_start)
    clash.digests[2] = batch.digests[0]
    with pytest.raises(ConflictError):
        fill_lot(storage, lot, clash)
    with storage.read() as tx:
        assert tx.count_lot_cards(lot.id) == 0 and tx.count_lot_cards(first.id) == 5


def test_void_lot_and_stale_lot_recovery(storage: Storage, clock: FakeClock) -> None:
    lot, batch = mint_lot(storage, 4)
    with storage.transaction() as tx:
        voided = tx.void_lot(lot.id)
    assert voided.status is LotStatus.VOID and voided.voided_at is not None
    with storage.transaction() as tx:
        card = tx.get_card_by_serial(str(batch.serials[0]))
        assert card is not None and card.status is CardStatus.VOID
        assert tx.redeem(card.id, 1, "CNY").outcome is MoneyOutcome.NOT_ACTIVE
        with pytest.raises(LotStateError):
            tx.void_lot(lot.id)
    stale = start_lot(storage, new_product(storage), 2)
    clock.advance(hours=1)
    fresh = start_lot(storage, new_product(storage), 2)
    with storage.transaction() as tx:
        assert tx.abandon_stale_lots(older_than=clock() - timedelta(minutes=30)) == [stale.id]
    with pytest.raises(LotStateError):
        fill_lot(storage, stale, random_batch(2, stale.serial_prefix, stale.serial_start))
    with storage.read() as tx:
        assert tx.get_lot(stale.id).status is LotStatus.VOID  # type: ignore[union-attr]
        assert tx.get_lot(fresh.id).status is LotStatus.MINTING  # type: ignore[union-attr]
        assert tx.count_lot_cards(stale.id) == 0


def test_plaintext_export_flag_flips_once(storage: Storage) -> None:
    lot, _ = mint_lot(storage, 2)
    minting = start_lot(storage, new_product(storage), 1)
    with storage.transaction() as tx:
        assert tx.mark_lot_exported(minting.id) is False
        assert tx.mark_lot_exported(lot.id) is True
        assert tx.mark_lot_exported(lot.id) is False
        assert tx.get_lot(lot.id).plaintext_exported is True  # type: ignore[union-attr]


def test_index_feed_follows_lots(storage: Storage) -> None:
    with storage.read() as tx:
        assert tx.index_cursor() == 0 and list(tx.issued_digests()) == []
    a, batch_a = mint_lot(storage, 30)
    with storage.read() as tx:
        cursor = tx.index_cursor()
        loaded = b"".join(tx.issued_digests(chunk=7))
    assert cursor == 1 and loaded == batch_a.digests.tobytes()
    start_lot(storage, new_product(storage), 5)  # minting: not issued yet
    b, batch_b = mint_lot(storage, 10)
    with storage.transaction() as tx:
        tx.void_lot(a.id)
    with storage.read() as tx:
        changes = tx.index_changes(cursor)
        assert [(c.lot_id, c.change) for c in changes] == [(b.id, "add"), (a.id, "remove")]
        assert [c.seq for c in changes] == [2, 3] and tx.index_changes(3) == []
        assert b"".join(tx.lot_digests(b.id, chunk=3)) == batch_b.digests.tobytes()
        assert b"".join(tx.issued_digests()) == batch_b.digests.tobytes()


# -- binding


def test_bind_outcomes(storage: Storage, clock: FakeClock) -> None:
    card = one_card(storage)
    with storage.transaction() as tx:
        alice, bob = tx.ensure_account("alice"), tx.ensure_account("bob")
        assert tx.ensure_account("alice") == alice
        bound = tx.bind_card(card, alice.id)
        assert bound.outcome is BindOutcome.BOUND and bound.entry is not None
        assert bound.entry.kind is LedgerKind.BIND and bound.card.account_id == alice.id  # type: ignore[union-attr]
        assert tx.bind_card(card, alice.id).outcome is BindOutcome.ALREADY_BOUND_HERE
        assert tx.bind_card(card, bob.id).outcome is BindOutcome.ALREADY_BOUND
        assert tx.bind_card(99_999, bob.id).outcome is BindOutcome.NOT_FOUND
        assert tx.unbind_card(card, bob.id).outcome is BindOutcome.NOT_BOUND
        assert tx.unbind_card(99_999, bob.id).outcome is BindOutcome.NOT_FOUND
        unbound = tx.unbind_card(card, alice.id)
        assert unbound.card is not None and unbound.card.account_id is None and unbound.card.transfers == 1
        again = tx.bind_card(card, bob.id)
        assert again.entry is not None and again.entry.kind is LedgerKind.BIND_TRANSFER
        since = clock() - timedelta(days=365)
        assert (
            tx.count_binds(bob.id, since) == 1 and tx.count_binds(bob.id, since, transferred_only=True) == 1
        )
        assert (
            tx.count_binds(alice.id, since) == 1
            and tx.count_binds(alice.id, since, transferred_only=True) == 0
        )
        assert [c.id for c in tx.account_cards(bob.id)] == [card] and tx.account_cards(alice.id) == []


def test_frozen_and_expired_cards(storage: Storage, clock: FakeClock) -> None:
    product = new_product(storage, validity_days=30)
    frozen = one_card(storage, product=product)
    expiring = one_card(storage, product=product, expires_at=clock() + timedelta(days=1))
    with storage.transaction() as tx:
        acct = tx.ensure_account("carol")
        card = tx.set_card_status(frozen, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
        assert card is not None and card.status is CardStatus.FROZEN
        assert tx.set_card_status(frozen, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE]) is None
        assert tx.bind_card(frozen, acct.id).outcome is BindOutcome.FROZEN
        assert tx.redeem(frozen, 1, "CNY").outcome is MoneyOutcome.NOT_ACTIVE
        assert tx.set_card_status(frozen, CardStatus.ACTIVE, only_from=[CardStatus.FROZEN]) is not None
        assert tx.bind_card(frozen, acct.id).outcome is BindOutcome.BOUND
        assert tx.bind_card(expiring, acct.id).outcome is BindOutcome.BOUND
        assert tx.account_balances(acct.id) == {"CNY": 2000}
        kinds = [e.kind for e in tx.list_ledger(card_id=frozen)]
        assert kinds == [LedgerKind.BIND, LedgerKind.UNFREEZE, LedgerKind.FREEZE]
        with pytest.raises(ValueError, match="only_from"):
            tx.set_card_status(frozen, CardStatus.VOID, only_from=[])
    clock.advance(days=2)
    with storage.transaction() as tx:
        assert tx.redeem(expiring, 1, "CNY").outcome is MoneyOutcome.EXPIRED
        assert tx.account_balances(acct.id) == {"CNY": 1000}
        tx.unbind_card(expiring, acct.id)
        assert tx.bind_card(expiring, acct.id).outcome is BindOutcome.EXPIRED


def test_balances_per_currency(storage: Storage) -> None:
    cny = one_card(storage, face=1000)
    usd = one_card(storage, face=50, product=new_product(storage, currency="USD"))
    with storage.transaction() as tx:
        acct = tx.ensure_account("dave")
        tx.bind_card(cny, acct.id)
        tx.bind_card(usd, acct.id)
        tx.redeem(usd, 20, "USD")
        assert tx.account_balances(acct.id) == {"CNY": 1000, "USD": 30}
        assert tx.redeem(usd, 1, "CNY").outcome is MoneyOutcome.CURRENCY_MISMATCH


# -- money


def test_redeem_and_reverse(storage: Storage, clock: FakeClock) -> None:
    card = one_card(storage, face=1000)
    with storage.transaction() as tx:
        acct = tx.ensure_account("erin")
        tx.bind_card(card, acct.id)
        spent = tx.redeem(card, 300, "CNY", request_id="r-1")
        assert spent.ok and spent.balance == 700 and spent.entry is not None
        assert (
            spent.entry.amount == -300
            and spent.entry.account_id == acct.id
            and spent.entry.request_id == "r-1"
        )
        short = tx.redeem(card, 701, "CNY")
        assert short.outcome is MoneyOutcome.INSUFFICIENT and short.balance == 700 and short.entry is None
        assert tx.redeem(99_999, 1, "CNY").outcome is MoneyOutcome.NOT_FOUND
        back = tx.reverse(spent.entry.id, 100, request_id="v-1")
        assert back.ok and back.balance == 800 and back.entry.reverses_id == spent.entry.id  # type: ignore[union-attr]
        assert tx.reverse(spent.entry.id, 201, request_id="v-2").outcome is MoneyOutcome.NOT_REVERSIBLE
        assert tx.reverse(spent.entry.id, 200).balance == 1000
        assert tx.reverse(spent.entry.id, 1).outcome is MoneyOutcome.NOT_REVERSIBLE
        assert tx.reverse(back.entry.id, 1).outcome is MoneyOutcome.NOT_REVERSIBLE  # type: ignore[union-attr]
        assert tx.reverse(99_999, 1).outcome is MoneyOutcome.NOT_FOUND
        assert tx.get_ledger_entry(spent.entry.id) == spent.entry
        assert tx.account_total(acct.id, LedgerKind.REDEEM, clock() - timedelta(days=1), "CNY") == 300
        assert tx.account_total(acct.id, LedgerKind.REVERSE, clock() - timedelta(days=1), "CNY") == 300
        assert tx.account_total(acct.id, LedgerKind.REDEEM, clock() - timedelta(days=1), "USD") == 0
        assert tx.account_total(acct.id, LedgerKind.REDEEM, clock() + timedelta(seconds=1), "CNY") == 0
        assert tx.get_card(card).balance == 1000  # type: ignore[union-attr]


@pytest.mark.parametrize("amount", [0, -5, 1.5, True, "10"])
def test_amounts_must_be_positive_ints(storage: Storage, amount: object) -> None:
    card = one_card(storage)
    with pytest.raises((TypeError, ValueError)), storage.transaction() as tx:
        tx.redeem(card, amount, "CNY")  # type: ignore[arg-type]
    with storage.read() as tx:
        assert tx.get_card(card).balance == 1000  # type: ignore[union-attr]
        assert tx.list_ledger(card_id=card) == []


def test_ledger_keyset_paging(storage: Storage) -> None:
    card = one_card(storage, face=1000)
    with storage.transaction() as tx:
        for i in range(25):
            assert tx.redeem(card, 1, "CNY", request_id=f"p-{i}").ok
    seen: list[int] = []
    before = None
    with storage.read() as tx:
        for _ in range(10):  # bounded: 25 entries in pages of 10
            page = tx.list_ledger(card_id=card, before_id=before, limit=10)
            if not page:
                break
            seen += [e.id for e in page]
            before = page[-1].id
        with pytest.raises(ValueError, match="exactly one"):
            tx.list_ledger()
    assert len(seen) == 25 and seen == sorted(seen, reverse=True) and len(set(seen)) == 25


def test_ledger_and_audit_are_append_only(storage: Storage) -> None:
    card = one_card(storage)
    with storage.transaction() as tx:
        entry = tx.redeem(card, 5, "CNY").entry
        tx.append_audit("admin", "card.freeze", f"card:{card}")
    assert entry is not None
    for sql in (
        "UPDATE ledger_entries SET amount = 0",
        "DELETE FROM ledger_entries",
        "UPDATE audit_log SET actor = 'x'",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(StorageError, match="append-only"), storage.transaction() as tx:
            tx._execute(sql)  # type: ignore[attr-defined]
    with storage.read() as tx:
        assert tx.list_ledger(card_id=card) == [entry] and len(tx.audit_entries()) == 1


def test_an_error_dooms_the_transaction(storage: Storage) -> None:
    with storage.transaction() as tx:
        tx.create_product(NewProduct("ONE", "one", "CNY", denominations=(100,)))

    def swallow_the_conflict(tx: UnitOfWork) -> None:
        tx.ensure_account("lost")
        with pytest.raises(ConflictError):
            tx.create_product(NewProduct("ONE", "again", "CNY", denominations=(100,)))

    with pytest.raises(StorageError, match="rolled back after an earlier error"):
        storage.run(swallow_the_conflict)
    with storage.read() as tx:
        assert tx.get_account(1) is None and len(tx.list_products()) == 1


def test_run_retries_lost_races_and_then_gives_up(storage: Storage) -> None:
    calls: list[int] = []

    def flaky(tx: UnitOfWork) -> int:
        calls.append(len(calls))
        tx.ensure_account(f"try-{len(calls)}")
        if len(calls) < 3:
            raise TransientError("deadlock detected (simulated)")
        return len(calls)

    assert storage.run(flaky) == 3
    with storage.read() as tx:  # only the attempt that returned committed anything
        assert [tx.get_account(i) is not None for i in (1, 2, 3)].count(True) == 1

    def always(tx: UnitOfWork) -> None:
        raise TransientError("busy (simulated)")

    with pytest.raises(TransientError):
        storage.run(always, attempts=2)


def test_read_transactions_cannot_write(storage: Storage) -> None:
    with pytest.raises(StorageError), storage.read() as tx:
        tx.ensure_account("nobody")
    with storage.read() as tx:  # the reader connection is still usable
        assert tx.get_account(1) is None


def test_a_read_is_one_snapshot_and_leaves_writers_alone(storage: Storage) -> None:
    with storage.transaction() as tx:
        tx.ensure_account("first")
    with storage.read() as snap:
        before = snap.get_account(1)
        with storage.transaction() as tx:  # commits while the snapshot is open
            tx.ensure_account("second")
        assert snap.get_account(2) is None and snap.get_account(1) == before
    for _ in range(40):  # pooled connections that served reads still write
        with storage.transaction() as tx:
            tx.ensure_account(f"w{_}")
        with storage.read() as snap:
            assert snap.get_account(1) == before
    with storage.read() as snap:
        assert snap.get_account(2) is not None


def test_transactions_do_not_nest(storage: Storage, backend: str) -> None:
    if backend != "sqlite":
        # PostgreSQL hands a nested call a second pooled connection, which is legitimate.
        with storage.transaction() as outer, storage.transaction() as inner:
            outer.ensure_account("o")
            inner.ensure_account("i")
        return
    with storage.transaction(), pytest.raises(StorageError, match="do not nest"), storage.transaction():
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("redeem"), st.integers(1, 400)),
            st.tuples(st.just("reverse"), st.integers(0, 20), st.integers(1, 400)),
        ),
        max_size=20,
    )
)
def test_balance_model(storage: Storage, ops: list[tuple[object, ...]]) -> None:
    """Against a plain-Python model: balance = face - redeemed + reversed, in [0, face]."""
    face = 1000
    card = one_card(storage, face=face)
    balance = face
    redeemed: list[tuple[int, int]] = []  # (entry id, amount still reversible)
    with storage.transaction() as tx:
        for op in ops:
            if op[0] == "redeem":
                amount = int(op[1])  # type: ignore[call-overload]
                result = tx.redeem(card, amount, "CNY")
                assert result.ok == (amount <= balance)
                if result.ok:
                    balance -= amount
                    redeemed.append((result.entry.id, amount))  # type: ignore[union-attr]
            elif redeemed:
                i = int(op[1]) % len(redeemed)  # type: ignore[call-overload]
                amount = int(op[2])  # type: ignore[call-overload]
                entry_id, left = redeemed[i]
                result = tx.reverse(entry_id, amount)
                assert result.ok == (amount <= left)
                if result.ok:
                    balance += amount
                    redeemed[i] = (entry_id, left - amount)
            assert 0 <= balance <= face
            assert tx.get_card(card).balance == balance  # type: ignore[union-attr]
        entries = tx.list_ledger(card_id=card, limit=1000)
        assert face + sum(e.amount for e in entries) == balance


# -- idempotency, attempts, tokens, audit


def test_idempotency_claims(storage: Storage, clock: FakeClock) -> None:
    from cardmint.server.storage import IdempotencyConflictError

    with storage.transaction() as tx:
        first = tx.claim_idempotency("Redeem", "k-1", b"card=1;amount=5")
        assert first.replay is None
        tx.complete_idempotency("Redeem", "k-1", b"ok:995")
        with pytest.raises(NotFoundError):
            tx.complete_idempotency("Redeem", "k-1", b"again")
    with storage.transaction() as tx:
        assert tx.claim_idempotency("Redeem", "k-1", b"card=1;amount=5").replay == b"ok:995"
        assert tx.claim_idempotency("Reverse", "k-1", b"other scope").replay is None
        with pytest.raises(IdempotencyConflictError):
            tx.claim_idempotency("Redeem", "k-1", b"card=1;amount=6")
    with storage.transaction() as tx:  # a caller bug: claimed, committed, never completed
        tx.claim_idempotency("Redeem", "k-2", b"x")
    with pytest.raises(StorageError, match="never completed"):
        storage.run(lambda tx: tx.claim_idempotency("Redeem", "k-2", b"x"))
    clock.advance(days=2)
    with storage.transaction() as tx:
        assert tx.purge_idempotency(clock() - timedelta(days=1)) == 3
        assert tx.claim_idempotency("Redeem", "k-1", b"card=1;amount=6").replay is None


def test_attempt_windows(storage: Storage, clock: FakeClock) -> None:
    acct = AttemptKind.ACCOUNT
    clock.advance(seconds=-(int(clock().timestamp()) % 600) + 30)  # 30 s into a 600 s window
    with storage.transaction() as tx:
        counts = [tx.record_attempt(acct, "acct-1", 600).current for _ in range(3)]
        assert counts == [1, 2, 3]
        tries = tx.attempt_count(acct, "acct-1", 600)
        assert (tries.current, tries.previous, tries.recent) == (3, 0, 3)
        assert tries.ends == clock() + timedelta(seconds=570) and tries.window_seconds == 600
        assert tx.hold_attempts(acct, "acct-1", 600) == tries  # held or read: the same counts
        assert tx.attempt_count(AttemptKind.DEVICE, "acct-1", 600).recent == 0  # kinds are separate
        assert tx.record_attempt(acct, "acct-1", 86_400).current == 1  # so are window sizes
    clock.advance(seconds=600)  # the next window: the earlier failures still count, as previous
    with storage.transaction() as tx:
        tries = tx.attempt_count(acct, "acct-1", 600)
        assert (tries.current, tries.previous) == (0, 3)
        tries = tx.record_attempt(acct, "acct-1", 600)
        assert (tries.current, tries.previous, tries.recent) == (1, 3, 4)
        assert tx.hold_attempts(acct, "acct-1", 600) == tries
        # `at` picks the window: one second before, the counts were the window before's.
        earlier = tx.attempt_count(acct, "acct-1", 600, at=clock() - timedelta(seconds=31))
        assert (earlier.current, earlier.previous) == (3, 0)
    clock.advance(seconds=600)  # two windows on: the first no longer counts
    with storage.transaction() as tx:
        tries = tx.attempt_count(acct, "acct-1", 600)
        assert (tries.current, tries.previous) == (0, 1)
        tx.record_attempt(AttemptKind.CARD, "c-9", 60)
        # Purged: the rows older than the previous window (acct-1's first 600 s window, and
        # on PostgreSQL the empty one before it that holding made); the previous window's
        # row, the current ones and the day window's row stay.
        assert tx.purge_attempts(clock()) in (1, 2)
        assert tx.attempt_count(acct, "acct-1", 600, at=clock() - timedelta(seconds=600)).previous == 0
        assert tx.attempt_count(acct, "acct-1", 600) == tries
        assert tx.attempt_count(acct, "acct-1", 86_400).current == 1
        tx.clear_attempts(acct, "acct-1")
        assert tx.attempt_count(acct, "acct-1", 86_400).recent == 0
        assert tx.attempt_count(acct, "acct-1", 600).recent == 0
    clock.advance(days=2)
    with storage.transaction() as tx:
        assert tx.purge_attempts(clock(), limit=1) == 1  # c-9's row, the last one
        assert tx.purge_attempts(clock()) == 0
        assert tx.attempt_count(AttemptKind.CARD, "c-9", 60, at=clock() - timedelta(days=2)).recent == 0


def test_a_lock_lasts_until_the_two_windows_are_under_the_limit() -> None:
    end = datetime(2026, 1, 15, 12, 15, tzinfo=UTC)
    # Some of the failures are the previous window's: under the limit once it drops out.
    assert Attempts(2, 3, end, 900).until(5) == end
    # The current window alone reached the limit: locked until it drops out too.
    assert Attempts(5, 0, end, 900).until(5) == end + timedelta(seconds=900)
    assert Attempts(4, 9, end, 900).until(5) == end and Attempts(4, 9, end, 900).recent == 13


def test_tokens(storage: Storage) -> None:
    with storage.transaction() as tx:
        acct = tx.ensure_account("merchant-1")
        admin = tx.create_token(b"h" * 32, Role.ADMIN, "ops laptop")
        shop = tx.create_token(b"s" * 32, Role.MERCHANT, account_id=acct.id)
    with pytest.raises(ConflictError):
        storage.run(lambda tx: tx.create_token(b"h" * 32, Role.CUSTOMER))
    with storage.transaction() as tx:
        assert tx.find_token(b"h" * 32) == admin and tx.find_token(b"x" * 32) is None
        assert [t.id for t in tx.list_tokens()] == [admin.id, shop.id]
        assert tx.revoke_token(admin.id) is True and tx.revoke_token(admin.id) is False
        found = tx.find_token(b"h" * 32)
        assert found is not None and found.revoked_at is not None and found.role is Role.ADMIN
        assert tx.find_token(b"s" * 32).account_id == acct.id  # type: ignore[union-attr]


def test_audit_chain_links(storage: Storage, clock: FakeClock) -> None:
    for batch in range(4):
        with storage.transaction() as tx:
            for i in range(5):
                tx.append_audit("staff:1", "card.freeze", f"card:{batch}-{i}", '{"reason": "loss"}')
        clock.advance(seconds=1)
    with storage.read() as tx:
        entries = tx.audit_entries()
    assert [e.id for e in entries] == list(range(1, 21))
    prev = GENESIS_HASH
    for e in entries:
        assert e.prev_hash == prev
        assert e.hash == audit_hash(prev, e.id, e.at, e.actor, e.action, e.subject, e.detail)
        prev = e.hash
    edited = entries[3]
    assert (
        audit_hash(edited.prev_hash, edited.id, edited.at, edited.actor, edited.action, edited.subject, "{}")
        != edited.hash
    )
