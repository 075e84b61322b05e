"""``card_states``: the batch read behind bulk checks, on both backends."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from cardmint.server.storage import CardState, CardStatus, Storage, _sql

from .conftest import FakeClock
from .helpers import mint_lot, new_product, random_batch, start_lot


def test_card_states_in_input_order(
    storage: Storage, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sql, "STATES_CHUNK", 7)  # several chunks, some with no hit at all
    product = new_product(storage, validity_days=30)
    lot = start_lot(storage, product, 20)
    batch = random_batch(20, lot.serial_prefix, lot.serial_start)
    batch.digests[0, -2:] = 0  # trailing NUL bytes must not confuse the matching
    with storage.transaction() as tx:
        tx.add_cards(lot, batch, clock() + timedelta(days=1))
        tx.complete_lot(lot.id)
    _, forever = mint_lot(storage, 5, product=product)
    with storage.transaction() as tx:
        cards = {c.digest: c.id for c in tx.lot_cards(lot.id)}
        ids = [cards[batch.digests[i].tobytes()] for i in range(20)]
        # frozen-and-expired reads frozen; void wins over everything
        assert tx.set_card_status(ids[1], CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
        assert tx.set_card_status(ids[2], CardStatus.VOID, only_from=[CardStatus.ACTIVE])

    missing = np.frombuffer(bytes(16) + b"\xff" * 16 + bytes(15) + b"\x01", np.uint8).reshape(3, 16)
    query = np.concatenate([missing[:1], batch.digests, missing[1:], forever.digests, batch.digests[:3]])
    with storage.read() as tx:
        got = tx.card_states(query)
    active, frozen, void = CardState.ACTIVE, CardState.FROZEN, CardState.VOID
    want = [CardState.MISSING, active, frozen, void, *[active] * 17, CardState.MISSING, CardState.MISSING]
    want += [active] * 5 + [active, frozen, void]
    assert got.dtype == np.uint8 and got.tolist() == [int(s) for s in want]

    clock.advance(days=2)
    with storage.read() as tx:
        got = tx.card_states(query)
    expired = CardState.EXPIRED
    want = [CardState.MISSING, expired, frozen, void, *[expired] * 17, CardState.MISSING, CardState.MISSING]
    want += [active] * 5 + [expired, frozen, void]
    assert got.tolist() == [int(s) for s in want]


def test_card_states_edges(storage: Storage) -> None:
    with storage.read() as tx:
        assert tx.card_states(np.zeros((0, 16), np.uint8)).shape == (0,)
        assert tx.card_states(np.zeros((3, 16), np.uint8)).tolist() == [0, 0, 0]
        with pytest.raises(ValueError, match="shape"):
            tx.card_states(np.zeros(16, np.uint8))


def test_card_states_many(storage: Storage) -> None:
    """More digests than one query takes (the default chunk), hits and misses interleaved."""
    n = _sql.STATES_CHUNK + 5_000
    _, batch = mint_lot(storage, n)
    rng = np.random.default_rng(7)
    strangers = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    query = np.empty((2 * n, 16), np.uint8)
    query[0::2], query[1::2] = batch.digests, strangers
    with storage.read() as tx:
        got = tx.card_states(query)
    assert (got[0::2] == CardState.ACTIVE).all() and (got[1::2] == CardState.MISSING).all()


def test_card_states_repeated_digests(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    _, batch = mint_lot(storage, 2)
    query = batch.digests[[1, 0, 1, 1, 0, 1]]
    stranger = np.full((1, 16), 0xEE, np.uint8)
    query = np.concatenate([query, stranger, query[:2]])
    for chunk in (3, 32_000):  # runs of one digest split across queries, and within one
        monkeypatch.setattr(_sql, "STATES_CHUNK", chunk)
        with storage.read() as tx:
            assert tx.card_states(query).tolist() == [1] * 6 + [0] + [1] * 2
