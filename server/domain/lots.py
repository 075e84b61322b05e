"""Lots: mint N codes for a product, store them all or none, hand the plaintext out once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from cardmint.server.storage import (
    CardBatch,
    ConflictError,
    Lot,
    LotStateError,
    LotStatus,
    NotFoundError,
    Product,
    Role,
    UnitOfWork,
)

from ._context import MAX_AMOUNT, STAFF, Context, detail, int_arg, require
from .auth import Principal
from .errors import (
    Contention,
    ExportNeedsAdmin,
    InvalidArgument,
    LotNotFound,
    LotNotReady,
    LotVoid,
    ProductNotFound,
)
from .keys import display

__all__ = ["LotChunk", "LotService", "LotStatus"]

Progress = Callable[[int, int], None]
SERIAL_WIDTH = 9


@dataclass(frozen=True)
class LotChunk:
    serials: tuple[str, ...]
    codes: tuple[str, ...]


def serial_prefix(product: Product) -> str:
    # One counter per product. Prefixes of different length give card numbers of different
    # length, so two products' numbers can never coincide.
    return str(product.id)


def _check_face_value(product: Product, face_value: object) -> int:
    value = int_arg(face_value, "face_value", 1, MAX_AMOUNT)
    if product.denominations and value not in product.denominations:
        raise InvalidArgument.of("face_value", f"one of {', '.join(map(str, product.denominations))}")
    if product.amount_range is not None and not product.amount_range[0] <= value <= product.amount_range[1]:
        lo, hi = product.amount_range
        raise InvalidArgument.of("face_value", f"between {lo} and {hi}")
    return value


class LotService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def _lot(self, lot_id: int) -> Lot:
        with self._ctx.storage.read() as tx:
            lot = tx.get_lot(lot_id)
        if lot is None:
            raise LotNotFound()
        return lot

    def create_lot(
        self, principal: Principal, *, sku: str, count: int, face_value: int, progress: Progress | None = None
    ) -> Lot:
        require(principal, STAFF)
        ctx = self._ctx
        count = int_arg(count, "count", 1, ctx.config.max_lot)
        with ctx.storage.read() as tx:
            product = tx.get_product_by_sku(sku)
        if product is None:
            raise ProductNotFound()
        value = _check_face_value(product, face_value)
        prefix = serial_prefix(product)
        if len(prefix) + SERIAL_WIDTH + 1 > 64:
            raise InvalidArgument.of("sku", "product id too large for card numbers")

        def open_lot(tx: UnitOfWork) -> Lot:
            start = tx.reserve_serials(prefix, count)
            if start + count > 10**SERIAL_WIDTH:
                raise InvalidArgument.of("count", "this product has run out of card numbers")
            return tx.create_lot(
                product.id, count, value, serial_prefix=prefix, serial_start=start, created_by=principal.actor
            )

        # Step 1 commits on its own: the lot is visibly "minting" while it fills, and a
        # process killed midway leaves a minting lot with no cards for the sweep to void.
        lot = ctx.run(open_lot)
        try:
            done = self._fill(principal, product, lot, progress)
        except BaseException as e:
            self._discard(lot.id)
            if isinstance(e, ConflictError):
                # Two 75-bit codes collided with earlier lots' codes: vanishingly rare and
                # fixed by minting again, so say "retry", not "bug".
                raise Contention("a code collided with an issued one; mint the lot again") from e
            raise
        ctx.index.refresh()
        return done

    def _fill(self, principal: Principal, product: Product, lot: Lot, progress: Progress | None) -> Lot:
        ctx = self._ctx
        kernel, keys = ctx.kernel, ctx.keyring
        with ctx.storage.transaction() as tx:
            expires_at = tx.now() + timedelta(days=product.validity_days) if product.validity_days else None
            minter = kernel.minter(product.code_length)
            stored = 0
            for batch in minter.chunks(lot.count, ctx.config.lot_chunk, key=keys.digest_key):
                assert batch.digests is not None  # keyed take always digests
                sealed = kernel.seal(batch.codes, batch.digests, keys.seal_key)
                serials = kernel.serials(
                    lot.serial_prefix, lot.serial_start + stored, len(batch), SERIAL_WIDTH
                )
                # Only serials, digests and sealed records go down; batch.codes stays here.
                tx.add_cards(lot, CardBatch(serials, batch.digests, sealed, keys.seal_key_id), expires_at)
                stored += len(batch)
                if progress is not None:
                    progress(stored, lot.count)
            completed = tx.complete_lot(lot.id)
            tx.append_audit(
                principal.actor,
                "lot.create",
                f"lot:{lot.id}",
                detail(sku=product.sku, count=lot.count, face_value=lot.face_value, currency=lot.currency),
            )
        return completed

    def _discard(self, lot_id: int) -> None:
        # Already void is fine: the stale-lot sweep got there first.
        with contextlib.suppress(LotStateError):
            self._ctx.storage.run(lambda tx: tx.void_lot(lot_id))

    def stream_lot(self, principal: Principal, lot_id: int) -> Iterator[LotChunk]:
        """Decides and records the export now; the returned iterator only reads."""
        require(principal, STAFF)
        ctx = self._ctx

        def claim(tx: UnitOfWork) -> Lot:
            lot = tx.get_lot(lot_id)
            if lot is None:
                raise LotNotFound()
            if lot.status is LotStatus.MINTING:
                raise LotNotReady()
            if lot.status is LotStatus.VOID:
                raise LotVoid()
            first = tx.mark_lot_exported(lot_id)
            if not first and principal.role is not Role.ADMIN:
                raise ExportNeedsAdmin()
            tx.append_audit(
                principal.actor, "lot.export", f"lot:{lot_id}", detail(first=first, count=lot.count)
            )
            return lot

        lot = ctx.run(claim)
        return self._chunks(lot)

    def _chunks(self, lot: Lot) -> Iterator[LotChunk]:
        ctx = self._ctx
        after = 0
        while True:
            with ctx.storage.read() as tx:
                cards = tx.lot_cards(lot.id, after, ctx.config.stream_chunk)
            if not cards:
                return
            after = cards[-1].id
            serials = tuple(c.serial for c in cards)
            codes: list[str] = []
            # A lot is sealed under one key, but rotation may leave mixed ids: open per id.
            by_key: dict[int, list[int]] = {}
            for i, c in enumerate(cards):
                by_key.setdefault(c.key_id, []).append(i)
            opened: dict[int, str] = {}
            for key_id, rows in by_key.items():
                sealed = np.array([np.frombuffer(cards[i].sealed, np.uint8) for i in rows])
                digests = np.array([np.frombuffer(cards[i].digest, np.uint8) for i in rows])
                plain = ctx.kernel.open(sealed, digests, ctx.keyring.seal_keys[key_id])
                for i, code in zip(rows, plain.tolist(), strict=True):
                    opened[i] = display(code.decode("ascii"))
            codes = [opened[i] for i in range(len(cards))]
            yield LotChunk(serials, tuple(codes))

    def get_lot(self, principal: Principal, lot_id: int) -> Lot:
        require(principal, STAFF)
        return self._lot(lot_id)

    def list_lots(
        self, principal: Principal, *, sku: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Lot]:
        require(principal, STAFF)
        int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        with self._ctx.storage.read() as tx:
            product_id = None
            if sku is not None:
                product = tx.get_product_by_sku(sku)
                if product is None:
                    raise ProductNotFound()
                product_id = product.id
            return tx.list_lots(product_id, after_id, limit)

    def void_lot(self, principal: Principal, lot_id: int) -> Lot:
        require(principal, {Role.ADMIN})

        def work(tx: UnitOfWork) -> Lot:
            try:
                lot = tx.void_lot(lot_id)
            except NotFoundError:
                raise LotNotFound() from None
            except LotStateError:
                raise LotVoid() from None
            tx.append_audit(principal.actor, "lot.void", f"lot:{lot_id}")
            return lot

        lot = self._ctx.run(work)
        self._ctx.index.refresh()
        return lot
