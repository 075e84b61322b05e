"""Lots: mint N codes for a product, store them all or none, hand the plaintext out once."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import blake3
import numpy as np
import numpy.typing as npt
from cardmint.kernel import DEFAULT_GROUP
from cardmint.server.observe import kernel_done
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

from ._context import MAX_AMOUNT, STAFF, Context, detail, int_arg, request_id_arg, require
from .auth import Permission, Principal, may
from .catalog import retired
from .errors import (
    Contention,
    ExportNeedsAdmin,
    InvalidArgument,
    LotNotFound,
    LotNotReady,
    LotVoid,
    PermissionDenied,
    ProductNotFound,
)

__all__ = ["LotChunk", "LotService", "LotStatus"]

Progress = Callable[[int, int], None]
SERIAL_WIDTH = 9
T = TypeVar("T")


@dataclass(frozen=True)
class LotChunk:
    """One chunk of an export, column-wise: row i of both arrays is one card.

    ``serial_array`` holds the serials and ``code_array`` the codes in display form
    (XXXX-XXXX-...), as ASCII in ``S`` arrays: fixed width, no Python object per card.
    """

    serial_array: npt.NDArray[np.bytes_]
    code_array: npt.NDArray[np.bytes_]

    def __len__(self) -> int:
        return len(self.serial_array)

    @property
    def serials(self) -> tuple[str, ...]:
        return tuple(s.decode("utf-8") for s in self.serial_array.tolist())

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.decode("ascii") for c in self.code_array.tolist())


def _digest_order(digests: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """The order that sorts rows of ``digests`` by their first 8 bytes (ties: any order)."""
    head = np.zeros((len(digests), 8), dtype=np.uint8)
    w = min(8, digests.shape[1])
    head[:, :w] = digests[:, :w]
    return np.argsort(head.view(">u8").ravel(), kind="stable")


def _prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced on a worker thread up to ``depth`` ahead of the consumer.

    Minting a chunk (the kernel, which releases the GIL) then overlaps with storing the one
    before (SQLite's and the PostgreSQL socket's C code, which do too); reading and opening
    an export's next chunk overlaps with sending the last. An error on the worker is raised
    here; a consumer that stops early (or is closed) stops the worker.
    """
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))
        else:
            put((False, None))

    worker = threading.Thread(target=work, name="cardmint-lot", daemon=True)
    worker.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def _lot_response(lot_id: int) -> bytes:
    return json.dumps({"lot_id": lot_id}).encode()


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


_LOT_SCOPE = "lot.create"


class LotService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        # Request ids whose CreateLot this process is handling right now: a repeat arriving
        # meanwhile is told to retry instead of voiding the lot being filled.
        self._minting: set[str] = set()
        self._minting_lock = threading.Lock()

    def _lot(self, lot_id: int) -> Lot:
        with self._ctx.storage.read() as tx:
            lot = tx.get_lot(lot_id)
        if lot is None:
            raise LotNotFound()
        return lot

    # -- organization scoping (docs/accounts.md): staff see every lot; an organization
    # member sees its organization's lots in its scope, and any other lot is not found.
    @staticmethod
    def _allow(principal: Principal, permission: Permission) -> None:
        """Staff, or an organization member whose role grants ``permission``."""
        if principal.role in STAFF:
            return
        if not may(principal, permission):
            raise PermissionDenied(metadata={"role": principal.role.value})

    @staticmethod
    def _in_scope(tx: UnitOfWork, principal: Principal, lot: Lot | None) -> Lot:
        if lot is None:
            raise LotNotFound()
        if principal.role in STAFF:
            return lot
        owner = tx.lot_owner(lot.id)
        if owner is None or not principal.in_scope(*owner):
            raise LotNotFound()
        return lot

    def create_lot(
        self,
        principal: Principal,
        *,
        sku: str,
        count: int,
        face_value: int,
        progress: Progress | None = None,
        request_id: str | None = None,
    ) -> Lot:
        """Staff mint lots for the platform; an organization member with MINT mints lots
        that belong to its organization and to its department (none when it is
        organization-wide).

        ``request_id`` (optional) makes the call idempotent: a repeat of a call that
        completed answers its lot and mints nothing; a repeat of one that never completed
        (the server was killed while minting, the fill failed) voids that lot if it is still
        ``minting`` and mints the lot anew, so the request completes exactly once. The same
        id with other parameters is ``IdempotencyKeyReused``; a repeat while a process (this
        one, or another sharing the database) is still minting the first is ``LotNotReady``
        (retry later).
        """
        if request_id is None:
            return self._create_lot(principal, sku, count, face_value, progress, None)
        request_id = request_id_arg(request_id)
        with self._minting_lock:
            if request_id in self._minting:
                raise LotNotReady("a lot for this request id is being minted; retry when it is done")
            self._minting.add(request_id)
        try:
            return self._create_lot(principal, sku, count, face_value, progress, request_id)
        finally:
            with self._minting_lock:
                self._minting.discard(request_id)

    def _create_lot(
        self,
        principal: Principal,
        sku: str,
        count: int,
        face_value: int,
        progress: Progress | None,
        request_id: str | None,
    ) -> Lot:
        self._allow(principal, Permission.MINT)
        owner = (
            (principal.organization_id, principal.department_id)
            if principal.role not in STAFF and principal.organization_id is not None
            else None
        )
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
        fingerprint = blake3.blake3(json.dumps([_LOT_SCOPE, sku, count, value, owner]).encode()).digest()

        def new_lot(tx: UnitOfWork) -> Lot:
            # Judged here, in the transaction: a retirement committed since the read above
            # counts, and a repeated request for a lot minted before it is answered (above).
            current = tx.get_product(product.id)
            if current is not None and current.retired_at is not None:
                raise retired(current)
            start = tx.reserve_serials(prefix, count)
            if start + count > 10**SERIAL_WIDTH:
                raise InvalidArgument.of("count", "this product has run out of card numbers")
            # The product's validity counts from the lot's creation, for every card of it.
            validity = product.validity_days
            lot = tx.create_lot(
                product.id,
                count,
                value,
                serial_prefix=prefix,
                serial_start=start,
                created_by=principal.actor,
                valid_for=timedelta(days=validity) if validity else None,
            )
            if owner is not None:
                tx.set_lot_owner(lot.id, owner[0], owner[1])
            key_id, _ = ctx.rotation.current(tx)  # the lot's codes are digested with it
            tx.set_lot_digest_key(lot.id, key_id)
            lot_keys[lot.id] = key_id
            return lot

        lot_keys: dict[int, int] = {}

        def open_lot(tx: UnitOfWork) -> tuple[Lot, bool]:
            """The lot to fill, or (a repeat of a completed request) the lot it made: done."""
            if request_id is None:
                return new_lot(tx), False
            claim = tx.claim_idempotency(_LOT_SCOPE, request_id, fingerprint)
            if claim.replay is None:
                lot = new_lot(tx)
                tx.complete_idempotency(_LOT_SCOPE, request_id, _lot_response(lot.id))
                return lot, False
            earlier = tx.get_lot(int(json.loads(claim.replay)["lot_id"]))
            assert earlier is not None  # lots are never deleted
            if earlier.completed_at is not None:  # complete (or voided by staff since): answered
                return earlier, True
            if earlier.status is LotStatus.MINTING:
                # Not being minted by this process (``_minting``). Another process may be
                # filling it still (a client retried on another server): then wait for it;
                # else its minter died, and the lot is voided and minted anew.
                if tx.lot_filled_elsewhere(earlier.id):
                    raise LotNotReady("a lot for this request id is being minted; retry when it is done")
                tx.void_lot(earlier.id)
            lot = new_lot(tx)
            tx.replace_idempotency(_LOT_SCOPE, request_id, _lot_response(lot.id))
            tx.append_audit(
                principal.actor,
                "lot.retry",
                f"lot:{lot.id}",
                detail(request_id=request_id, replaces=earlier.id, sku=product.sku, count=count),
            )
            return lot, False

        # Step 1 commits on its own: the lot is visibly "minting" while it fills, and a
        # process killed midway leaves a minting lot with no cards for the sweep to void.
        lot, done_before = ctx.run(open_lot)
        if done_before:
            return lot
        try:
            done = self._fill(principal, product, lot, progress, ctx.keyring.digest_keys[lot_keys[lot.id]])
        except BaseException as e:
            self._discard(lot.id)
            if isinstance(e, ConflictError):
                # Two 75-bit codes collided with earlier lots' codes: vanishingly rare and
                # fixed by minting again, so say "retry", not "bug".
                raise Contention("a code collided with an issued one; mint the lot again") from e
            raise
        ctx.index.refresh()
        return done

    def _fill(
        self, principal: Principal, product: Product, lot: Lot, progress: Progress | None, digest_key: bytes
    ) -> Lot:
        ctx = self._ctx
        with ctx.storage.transaction() as tx:
            tx.hold_lot_for_fill(lot.id)  # a repeat on another server now waits for this fill
            stored = 0
            for batch in _prefetched(self._minted(product, lot, digest_key)):
                tx.add_cards(lot, batch, lot.expires_at)
                stored += len(batch)
                if progress is not None:
                    progress(stored, lot.count)
            completed = tx.complete_lot(lot.id)
            facts: dict[str, object] = {
                "sku": product.sku,
                "count": lot.count,
                "face_value": lot.face_value,
                "currency": lot.currency,
            }
            if principal.member and principal.role not in STAFF:
                facts.update(organization=principal.organization, department=principal.department)
            tx.append_audit(principal.actor, "lot.create", f"lot:{lot.id}", detail(**facts))
        return completed

    def _minted(self, product: Product, lot: Lot, digest_key: bytes) -> Iterator[CardBatch]:
        """The lot's cards chunk by chunk: minted, sealed, numbered. Only serials, digests and
        sealed records leave here; the plaintext codes do not."""
        kernel, keys = self._ctx.kernel, self._ctx.keyring
        seal_key, seal_key_id = keys.seal_key, keys.seal_key_id  # one key for the whole lot
        minter = kernel.minter(product.code_length)
        start = lot.serial_start
        started = time.perf_counter()
        for batch in minter.chunks(lot.count, self._ctx.config.lot_chunk, key=digest_key):
            assert batch.digests is not None  # keyed take always digests
            # Numbered in digest order, so that storing a chunk fills the digest index in
            # order instead of at random (~2x faster on SQLite at 10^6 cards). The order of
            # keyed digests says nothing about the codes.
            order = _digest_order(batch.digests)
            codes, digests = batch.codes[order], np.ascontiguousarray(batch.digests[order])
            sealed = kernel.seal(codes, digests, seal_key)
            serials = kernel.serials(lot.serial_prefix, start, len(codes), SERIAL_WIDTH)
            start += len(codes)
            kernel_done("mint", len(codes), time.perf_counter() - started)
            yield CardBatch(serials, digests, sealed, seal_key_id)
            started = time.perf_counter()

    def _discard(self, lot_id: int) -> None:
        # Already void is fine: the stale-lot sweep got there first.
        with contextlib.suppress(LotStateError):
            self._ctx.storage.run(lambda tx: tx.void_lot(lot_id))

    def stream_lot(self, principal: Principal, lot_id: int) -> Iterator[LotChunk]:
        """Decides and records the export now; the returned iterator only reads."""
        self._allow(principal, Permission.EXPORT)
        ctx = self._ctx

        def claim(tx: UnitOfWork) -> Lot:
            lot = self._in_scope(tx, principal, tx.get_lot(lot_id))
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
        # Reading and opening the next chunks overlaps with sending this one.
        return _prefetched(self._chunks(lot), depth=2)

    def _chunks(self, lot: Lot) -> Iterator[LotChunk]:
        ctx = self._ctx
        kernel, keys = ctx.kernel, ctx.keyring
        after = 0
        while True:
            with ctx.storage.read() as tx:
                after, batches = tx.lot_card_batches(lot.id, after, ctx.config.stream_chunk)
            if not batches:
                return
            serials, codes = [], []
            # A lot is sealed under one key; batches only split where the key id changes.
            for b in batches:
                started = time.perf_counter()
                plain = kernel.open(b.sealed, b.digests, keys.seal_keys[b.key_id])
                codes.append(kernel.display(plain, DEFAULT_GROUP))
                kernel_done("open", len(plain), time.perf_counter() - started)
                if isinstance(b.serials, np.ndarray):
                    serials.append(b.serials)
                else:
                    serials.append(np.array([s.encode("utf-8") for s in b.serials], dtype=np.bytes_))
            if len(batches) == 1:
                yield LotChunk(serials[0], codes[0])
            else:
                yield LotChunk(np.concatenate(serials), np.concatenate(codes))

    def get_lot(self, principal: Principal, lot_id: int) -> Lot:
        self._allow(principal, Permission.READ)
        with self._ctx.storage.read() as tx:
            return self._in_scope(tx, principal, tx.get_lot(lot_id))

    def list_lots(
        self, principal: Principal, *, sku: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Lot]:
        self._allow(principal, Permission.READ)
        int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        with self._ctx.storage.read() as tx:
            product_id = None
            if sku is not None:
                product = tx.get_product_by_sku(sku)
                if product is None:
                    raise ProductNotFound()
                product_id = product.id
            if principal.role in STAFF:
                return tx.list_lots(product_id, after_id, limit)
            assert principal.organization_id is not None  # _allow admits members only
            return tx.list_org_lots(
                principal.organization_id, principal.department_id, after_id, limit, product_id
            )

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
