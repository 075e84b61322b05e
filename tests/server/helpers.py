"""Test data for storage tests: lots of cards without the kernel's cost.

The storage layer never looks inside digests or sealed records, so random bytes of the
right shape stand in for them here; the plaintext test mints real codes with the kernel.
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime

import numpy as np
from cardmint.server.storage import CardBatch, Lot, NewProduct, Product, Storage

_skus = itertools.count(1)


def random_batch(n: int, prefix: str, start: int) -> CardBatch:
    digests = np.frombuffer(bytearray(os.urandom(16 * n)), dtype=np.uint8).reshape(n, 16)
    sealed = np.frombuffer(os.urandom(44 * n), dtype=np.uint8).reshape(n, 44)
    return CardBatch([f"{prefix}{start + i:09d}" for i in range(n)], digests, sealed)


def new_product(storage: Storage, currency: str = "CNY", validity_days: int | None = None) -> Product:
    new = NewProduct(
        f"SKU-{next(_skus)}", "Test card", currency, (100, 500, 1000), validity_days=validity_days
    )
    with storage.transaction() as tx:
        return tx.create_product(new)


def start_lot(storage: Storage, product: Product, n: int, face: int = 1000, prefix: str = "8") -> Lot:
    with storage.transaction() as tx:
        start = tx.reserve_serials(prefix, n)
        return tx.create_lot(product.id, n, face, serial_prefix=prefix, serial_start=start, created_by="test")


def mint_lot(
    storage: Storage,
    n: int,
    *,
    face: int = 1000,
    product: Product | None = None,
    expires_at: datetime | None = None,
    chunk: int = 50_000,
) -> tuple[Lot, CardBatch]:
    """A complete lot of ``n`` cards; returns it and all its cards' columns."""
    product = product or new_product(storage)
    lot = start_lot(storage, product, n, face)
    batch = random_batch(n, lot.serial_prefix, lot.serial_start)
    with storage.transaction() as tx:
        for lo in range(0, n, chunk):
            part = CardBatch(
                list(batch.serials[lo : lo + chunk]),
                batch.digests[lo : lo + chunk],
                batch.sealed[lo : lo + chunk],
            )
            tx.add_cards(lot, part, expires_at)
        lot = tx.complete_lot(lot.id)
    return lot, batch


def fill_lot(storage: Storage, lot: Lot, batch: CardBatch) -> Lot:
    with storage.transaction() as tx:
        tx.add_cards(lot, batch, None)
        return tx.complete_lot(lot.id)


def one_card(
    storage: Storage, face: int = 1000, product: Product | None = None, expires_at: datetime | None = None
) -> int:
    lot, _ = mint_lot(storage, 1, face=face, product=product, expires_at=expires_at)
    with storage.read() as tx:
        return tx.lot_cards(lot.id)[0].id
