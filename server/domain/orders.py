"""Orders: the card-shop flow (SPEC §3 "Ordering", seed 004).

    create → codes pre-locked from the pool (reserved, TTL) → payment confirmed → delivered
    (or parked for manual review, then delivered) → the buyer views the codes.

Rules, all decided here (storage only claims and moves rows):

* **The pool.** A card is for sale only after ``stock_pool`` put its lot there, which only a
  lot whose plaintext was never exported may do: stocking spends the lot's one free export
  (``mark_lot_exported``), so nobody but an admin can ever export those codes afterwards,
  and an admin's export is audited.
* **Create** claims every code of the order in the transaction that creates it
  (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the single writer): a line that cannot be
  filled is ``SoldOut`` and the whole transaction rolls back, so nothing is half-reserved.
  Idempotent on the caller's request id. Codes held by unpaid reservations are capped per
  account and per client address (denial of inventory), counted under a per-subject lock.
* **Pay** is idempotent on the payment id (gateways re-send notifications): the claim, the
  delivery and the stored answer commit together, so a repeat answers the first outcome and
  never moves a second set of codes. The amount and currency must be the order's. The
  order's cards must still be its own and sellable; otherwise, and when the payment comes
  after the reservation's deadline, the payment is refunded at once (order ``refunded``,
  ledger ``refund`` entry). A product with manual review parks the paid order until staff
  approve, or until ``deliver_by``, when the sweeper refunds it.
* **Refund of delivered codes** (seed 003: refundable while unbound): only if every card is
  still active, unbound and unspent; the cards are then voided (their plaintext was shown
  to the buyer, so they can never be sold again) and the payment refunded.
* **The sweeper** expires unpaid reservations (codes back to the pool) and refunds paid
  orders not delivered by their deadline. ``sweep`` is the on-demand call; the background
  thread (``start_sweeper``) calls the same.

Notifier events (``events.emit``, in the transaction of the change, never with a code or a
serial): ``order.delivered``, ``order.review`` (parked for manual review), ``order.refunded``
(``automatic`` when the service refunded on its own: paid too late, codes gone, not delivered
in time) and ``order.expired`` (an unpaid reservation released). A replayed payment
notification changes nothing, so it emits nothing.

Every state change is audited (never with a code), last in its transaction: on PostgreSQL the
audit chain's lock is held from the append to the commit. Delivered codes are shown in full only
to the buyer (a customer token of the order's account) asking with ``reveal``, which is
rate-limited and audited; everybody else sees them masked.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import blake3
import numpy as np
from cardmint.server.storage import (
    PAYMENT_METHODS,
    AttemptKind,
    Card,
    CardStatus,
    Delivery,
    LotStatus,
    NewOrder,
    Order,
    OrderItem,
    OrderStatus,
    PoolCard,
    PoolCardState,
    PoolStock,
    Product,
    Role,
    UnitOfWork,
)

from ._context import MAX_AMOUNT, STAFF, Context, detail, int_arg, request_id_arg, require, resolve_account
from .accounts import buyer_facts
from .auth import Principal
from .cards import card_state
from .catalog import retired
from .currencies import ISO_4217
from .errors import (
    BankTransferRequired,
    FieldViolation,
    InvalidArgument,
    LotExported,
    LotNotFound,
    LotNotReady,
    LotVoid,
    NotRefundable,
    OrderNotFound,
    OrderWrongState,
    PaymentMismatch,
    PermissionDenied,
    ProductNotFound,
    RealNameRequired,
    ReservationLimit,
    RevealLimit,
    SoldOut,
)
from .events import EventKind, emit
from .keys import display

__all__ = [
    "DeliveredCode",
    "OrderLine",
    "OrderPage",
    "OrderService",
    "OrderStatus",
    "OrderView",
    "PoolStock",
    "Stock",
    "StockResult",
    "SweepResult",
]

log = logging.getLogger("cardmint.server.orders")

_BUYERS = STAFF | {Role.MERCHANT, Role.CUSTOMER}  # create, view, cancel, refund (customers: own)
_PAYERS = STAFF | {Role.MERCHANT}  # the payment service; never the buyer
_SWEEP_BATCH = 500
_MAX_ADDRESS = 128
SWEEPER = "sweeper"  # the audit actor of the background sweeper


@dataclass(frozen=True)
class OrderLine:
    """One line of an order: ``quantity`` codes of ``sku`` at ``face_value`` each."""

    sku: str
    face_value: int
    quantity: int


@dataclass(frozen=True)
class DeliveredCode:
    serial: str
    code: str  # display form; masked ("****-…-AB12") unless revealed to the buyer
    revealed: bool
    face_value: int
    currency: str
    status: str  # the card's state now: active, frozen, void, expired
    expires_at: datetime | None


def _payment_method(value: object) -> str:
    if value not in PAYMENT_METHODS:
        raise InvalidArgument.of("payment_method", f"one of {', '.join(PAYMENT_METHODS)}")
    return str(value)


@dataclass(frozen=True)
class OrderView:
    id: int
    account: str
    status: OrderStatus
    items: tuple[OrderLine, ...]
    amount: int  # what the order costs: the sum of the codes' face values
    currency: str
    created_at: datetime
    expires_at: datetime  # the reservation's deadline (pay before it)
    payment_id: str | None
    paid_amount: int | None
    paid_at: datetime | None
    deliver_by: datetime | None
    delivered_at: datetime | None
    closed_at: datetime | None
    close_reason: str | None
    codes: tuple[DeliveredCode, ...]  # delivered (or delivered, then returned) codes
    replayed: bool = False  # a repeated request answered with the first outcome
    payment_method: str = "online"  # PAYMENT_METHODS: chosen at creation, payments must match


@dataclass(frozen=True)
class OrderPage:
    items: tuple[OrderView, ...]  # newest first, without codes
    next_before_id: int | None


@dataclass(frozen=True)
class StockResult:
    lot_id: int
    sku: str
    stocked: int  # cards the pool holds from this lot
    already: bool  # the lot was stocked before (a retry): nothing changed


@dataclass(frozen=True)
class Stock:
    """A product's pool: by face value, ascending. While the product is retired
    (``retired_at``), nothing is available: what would be counts as ``withdrawn``."""

    sku: str
    retired_at: datetime | None
    pools: tuple[PoolStock, ...]


@dataclass(frozen=True)
class SweepResult:
    expired: int  # unpaid reservations released
    refunded: int  # paid orders refunded for missing their delivery deadline


def _fingerprint(*parts: object) -> bytes:
    return blake3.blake3(json.dumps(parts, default=str).encode()).digest()


def _text_arg(value: object, field: str, limit: int) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= limit
        or not value.isascii()
        or not value.isprintable()
    ):
        raise InvalidArgument.of(field, f"1-{limit} printable ASCII characters")
    return value


def _sellable(card: Card, now: datetime) -> bool:
    return (
        card.status is CardStatus.ACTIVE
        and card.account_id is None
        and (card.expires_at is None or card.expires_at > now)
    )


def _face_ok(product: Product, face_value: int) -> bool:
    if product.denominations:
        return face_value in product.denominations
    return (
        product.amount_range is not None and product.amount_range[0] <= face_value <= product.amount_range[1]
    )


@dataclass(frozen=True)
class _Loaded:
    """An order with what its view needs, read in the transaction; codes open outside it."""

    order: Order
    account: str
    skus: dict[int, str]
    cards: tuple[PoolCard, ...]
    now: datetime
    reveal: bool = False
    replayed: bool = False


_NAMES_MAX = 100_000  # accounts whose external id the service remembers


class OrderService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._sweeper: threading.Thread | None = None
        # Products and account names never change once written (nothing updates or deletes
        # them), so this process remembers them instead of reading them in every order's
        # transaction: a third of an order round trip's statements. A product's retirement
        # is the one exception, and never read from here: the pool's picks read it in the
        # claiming statement, and stocking and the stock report read the product afresh.
        self._products: dict[int, Product] = {}
        self._skus: dict[str, Product] = {}
        self._names: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    def _product(self, tx: UnitOfWork, product_id: int) -> Product | None:
        product = self._products.get(product_id)
        if product is None:
            product = tx.get_product(product_id)
            if product is not None:
                self._products[product.id], self._skus[product.sku] = product, product
        return product

    def _product_by_sku(self, tx: UnitOfWork, sku: str) -> Product | None:
        product = self._skus.get(sku)
        if product is None:
            product = tx.get_product_by_sku(sku)
            if product is not None:
                self._products[product.id], self._skus[product.sku] = product, product
        return product

    def _buyer(self, tx: UnitOfWork, principal: Principal, account: str | None) -> tuple[int, str]:
        """(id, external id) of the account an order is for: ``resolve_account``'s answer,
        without a query when the token (customers) or an earlier order (staff) told us."""
        if principal.role is Role.CUSTOMER:
            if (
                principal.account_id is not None
                and principal.account is not None
                and account in (None, principal.account)
            ):
                return principal.account_id, principal.account
        elif account is not None and (known := self._ids.get(account)) is not None:
            return known, account
        acct = resolve_account(tx, principal, account)  # validates, and creates a staff-named one
        return acct.id, acct.external_id

    def _account_name(self, tx: UnitOfWork, account_id: int) -> str:
        name = self._names.get(account_id)
        if name is None:
            account = tx.get_account(account_id)
            name = account.external_id if account is not None else str(account_id)
        return name

    def _remember(self, loaded: _Loaded) -> _Loaded:
        """Note the order's account once its transaction committed: an account created by
        a transaction that rolled back must not be remembered (SQLite may reuse its id)."""
        if len(self._names) >= _NAMES_MAX:
            self._names.clear()
            self._ids.clear()
        self._names[loaded.order.account_id] = loaded.account
        self._ids[loaded.account] = loaded.order.account_id
        return loaded

    # -- the pool ---------------------------------------------------------------------------

    def stock_pool(self, principal: Principal, lot_id: int) -> StockResult:
        """Put a complete lot's cards up for sale. Refused when its plaintext was exported;
        stocking spends the lot's one free export, so its codes are never handed out in bulk."""
        require(principal, STAFF)
        lot_id = int_arg(lot_id, "lot_id", 1, 2**63 - 1)

        def work(tx: UnitOfWork) -> StockResult:
            lot = tx.get_lot(lot_id)
            if lot is None:
                raise LotNotFound()
            if lot.status is LotStatus.MINTING:
                raise LotNotReady()
            if lot.status is LotStatus.VOID:
                raise LotVoid()
            product = tx.get_product(lot.product_id)  # afresh: it may have been retired
            assert product is not None  # lots are never created without one
            have = tx.pool_lot_count(lot_id)
            if have:
                return StockResult(lot_id, product.sku, have, already=True)
            if product.retired_at is not None:
                raise retired(product)
            if not tx.mark_lot_exported(lot_id):
                raise LotExported()
            stocked = tx.stock_pool(lot_id)
            tx.append_audit(
                principal.actor, "pool.stock", f"lot:{lot_id}", detail(sku=product.sku, cards=stocked)
            )
            return StockResult(lot_id, product.sku, stocked, already=False)

        return self._ctx.run(work)

    def stock(self, principal: Principal, sku: str) -> Stock:
        """The product's pool by face value: available (sellable now), reserved, sold,
        returned; while the product is retired, withdrawn instead of available."""
        require(principal, _BUYERS)
        with self._ctx.storage.read() as tx:
            # Afresh, not from this process's products: the answer tells whether it is retired.
            product = tx.get_product_by_sku(sku) if isinstance(sku, str) and len(sku) <= 64 else None
            if product is None:
                raise ProductNotFound()
            pools = tx.pool_stock(product.id)
        if product.retired_at is not None:
            pools = [replace(p, available=0, withdrawn=p.available) for p in pools]
        return Stock(product.sku, product.retired_at, tuple(pools))

    # -- create -----------------------------------------------------------------------------

    def _lines(self, items: Sequence[OrderLine]) -> tuple[OrderLine, ...]:
        cfg = self._ctx.config
        if not 1 <= len(items) <= cfg.order_max_items:
            raise InvalidArgument.of("items", f"1-{cfg.order_max_items} lines")
        bad: list[FieldViolation] = []
        seen: set[tuple[str, int]] = set()
        total = 0
        for i, line in enumerate(items):
            where = f"items[{i}]"
            if not isinstance(line.sku, str) or not 1 <= len(line.sku) <= 64:
                bad.append(FieldViolation(f"{where}.sku", "a product sku"))
            try:
                int_arg(line.face_value, f"{where}.face_value", 1, MAX_AMOUNT)
                int_arg(line.quantity, f"{where}.quantity", 1, cfg.order_max_codes)
            except InvalidArgument as e:
                bad.extend(e.violations)
                continue
            if (line.sku, line.face_value) in seen:
                bad.append(FieldViolation(where, "each sku and face value once per order"))
            seen.add((line.sku, line.face_value))
            total += line.quantity
        if not bad and total > cfg.order_max_codes:
            bad.append(FieldViolation("items", f"at most {cfg.order_max_codes} codes per order"))
        if bad:
            raise InvalidArgument(bad[0].field + ": " + bad[0].description, violations=tuple(bad))
        return tuple(items)

    def _address(self, principal: Principal, peer: str, client_address: str | None) -> str | None:
        """Whose reservations an order counts against besides the account's: a customer's
        own connection; for a trusted caller (a storefront calling for its buyers) the
        buyer's address it passes on, or none (its own address would lump all its buyers)."""
        if principal.role is Role.CUSTOMER:
            return peer[:_MAX_ADDRESS] or "unknown"
        if client_address:
            return _text_arg(client_address, "client_address", _MAX_ADDRESS)
        return None

    def _cap(
        self, tx: UnitOfWork, kind: str, held: int, first: datetime | None, want: int, limit: int
    ) -> None:
        if held + want > limit:
            retry = None if first is None or want > limit else max(0.0, (first - tx.now()).total_seconds())
            raise ReservationLimit(
                f"{kind}: {held} codes reserved and unpaid, the limit is {limit}",
                retry_after=retry,
                metadata={"subject": kind, "limit": str(limit), "held": str(held)},
            )

    def _purchase_rules(
        self, tx: UnitOfWork, account_id: int, total: int, currency: str, method: str
    ) -> None:
        """The compliance profile's rules on buying: from ``real_name_from`` on, the buyer's
        real name must be verified; from ``bank_transfer_from_*`` on (individuals and
        organizations' members have their own thresholds), only a bank transfer pays."""
        rules = self._ctx.profile
        thresholds = [
            t
            for t in (
                rules.bank_transfer_from_organization.minor(currency),
                rules.bank_transfer_from_individual.minor(currency),
                rules.real_name_from.minor(currency),
            )
            if t is not None
        ]
        if not thresholds or total < min(thresholds):
            return  # no rule reaches this order: no need to read the buyer's facts
        facts = buyer_facts(tx, account_id)
        bank_from = (
            rules.bank_transfer_from_organization
            if facts.organization
            else rules.bank_transfer_from_individual
        ).minor(currency)
        if bank_from is not None and total >= bank_from and method != "bank_transfer":
            raise BankTransferRequired(
                metadata={
                    "threshold": str(bank_from),
                    "currency": currency,
                    "buyer": "organization" if facts.organization else "individual",
                    "profile": rules.tag,
                }
            )
        real_from = rules.real_name_from.minor(currency)
        if real_from is not None and total >= real_from and not facts.real_name_verified:
            raise RealNameRequired(
                metadata={"threshold": str(real_from), "currency": currency, "profile": rules.tag}
            )

    def create_order(
        self,
        principal: Principal,
        items: Sequence[OrderLine],
        *,
        request_id: str,
        account: str | None = None,
        peer: str = "",
        client_address: str | None = None,
        payment_method: str = "online",
    ) -> OrderView:
        """Reserve the codes of ``items`` for ``account`` until the reservation's deadline.

        ``peer`` is the caller's network address (the API layer's); ``client_address`` the
        buyer's, passed on by a trusted caller. Idempotent on ``request_id``.
        """
        require(principal, _BUYERS)
        cfg = self._ctx.config
        request_id = request_id_arg(request_id)
        lines = self._lines(items)
        address = self._address(principal, peer, client_address)
        named = principal.account if principal.role is Role.CUSTOMER else account
        method = _payment_method(payment_method)
        fingerprint = _fingerprint(
            "order.create", named, [(x.sku, x.face_value, x.quantity) for x in lines], method
        )

        def work(tx: UnitOfWork) -> _Loaded:
            acct_id, acct_name = self._buyer(tx, principal, account)
            claim = tx.claim_idempotency("order.create", request_id, fingerprint)
            if claim.replay is not None:
                again = tx.get_order(int(json.loads(claim.replay)["order_id"]))
                assert again is not None  # orders are never deleted
                return self._load(tx, again, replayed=True)
            products: list[Product] = []
            for i, line in enumerate(lines):
                product = self._product_by_sku(tx, line.sku)
                if product is None:
                    raise ProductNotFound(metadata={"sku": line.sku})
                if not _face_ok(product, line.face_value):
                    raise InvalidArgument.of(f"items[{i}].face_value", f"not a face value of {product.sku}")
                products.append(product)
            currencies = {p.currency for p in products}
            if len(currencies) != 1:
                raise InvalidArgument.of("items", "one currency per order (one payment)")
            total = sum(x.face_value * x.quantity for x in lines)
            self._purchase_rules(tx, acct_id, total, next(iter(currencies)), method)
            quantity = sum(x.quantity for x in lines)
            # Caps: the lock makes count-then-insert atomic per subject on PostgreSQL (two
            # orders of one account cannot both slip under the limit). Account first, then
            # address, always: no two transactions wait on each other in a cycle.
            # Both locks in one round trip, then both counts in one query.
            if address is None:
                tx.lock_subject("account", str(acct_id))
                held, first = tx.held_codes(account_id=acct_id)
                self._cap(tx, "account", held, first, quantity, cfg.held_codes_per_account)
            else:
                tx.lock_subjects(("account", str(acct_id)), ("address", address))
                (held, first), (at_address, first_there) = tx.held_codes_both(acct_id, address)
                self._cap(tx, "account", held, first, quantity, cfg.held_codes_per_account)
                self._cap(tx, "address", at_address, first_there, quantity, cfg.held_codes_per_address)
            now = tx.now()
            # The order, its items, its codes claimed and the request id's answer, together
            # (PostgreSQL: in one statement).
            order, found = tx.place_order(
                NewOrder(
                    account_id=acct_id,
                    request_id=request_id,
                    items=tuple(
                        OrderItem(p.id, x.face_value, x.quantity)
                        for p, x in zip(products, lines, strict=True)
                    ),
                    amount=total,
                    currency=currencies.pop(),
                    client_address=address or "",
                    expires_at=now + timedelta(seconds=cfg.order_ttl_seconds),
                    payment_method=method,
                ),
                complete=("order.create", request_id),
            )
            for product, line, got in zip(products, lines, found, strict=True):
                if got < line.quantity:
                    # Raised inside: the order, its other lines' claims and the request id
                    # all roll back with it. Short because retired (the picks skip a retired
                    # product's pool), or sold out.
                    current = tx.get_product(product.id)
                    if current is not None and current.retired_at is not None:
                        raise retired(current)
                    raise SoldOut(
                        metadata={
                            "sku": product.sku,
                            "face_value": str(line.face_value),
                            "available": str(got),
                        }
                    )
            loaded = self._load(tx, order)
            tx.append_audit(
                principal.actor,
                "order.create",
                f"order:{order.id}",
                detail(
                    account=acct_name,
                    codes=quantity,
                    amount=order.amount,
                    currency=order.currency,
                    address=address,
                ),
            )
            return loaded

        return self._view(self._remember(self._ctx.run(work)))

    # -- pay --------------------------------------------------------------------------------

    def confirm_payment(
        self,
        principal: Principal,
        order_id: int,
        *,
        payment_id: str,
        amount: int,
        currency: str,
        payment_method: str = "online",
    ) -> OrderView:
        """The payment service reports ``payment_id`` paid ``amount`` for the order.

        Idempotent on ``payment_id``: a repeat answers the first outcome (``replayed``),
        the same id with other parameters is ``IdempotencyKeyReused``. The outcome is the
        order delivered, parked for review, or (codes gone, deadline passed) refunded.
        """
        require(principal, _PAYERS)
        order_id = int_arg(order_id, "order_id", 1, 2**63 - 1)
        payment_id = _text_arg(payment_id, "payment_id", 128)
        amount = int_arg(amount, "amount", 1, 2**63 - 1)
        if not isinstance(currency, str) or currency not in ISO_4217:
            raise InvalidArgument.of("currency", "an ISO 4217 currency code")
        method = _payment_method(payment_method)
        fingerprint = _fingerprint("order.pay", order_id, amount, currency, method)

        def work(tx: UnitOfWork) -> _Loaded:
            # The answer names the order whatever the outcome: claimed with it, one statement.
            claim = tx.claim_with_response(
                "order.pay", payment_id, fingerprint, json.dumps({"order_id": order_id}).encode()
            )
            if claim.replay is not None:
                again = tx.get_order(order_id)
                assert again is not None
                return self._load(tx, again, replayed=True)
            order = tx.get_order(order_id, lock=True)
            if order is None:
                raise OrderNotFound()
            if amount != order.amount or currency != order.currency or method != order.payment_method:
                raise PaymentMismatch(
                    metadata={
                        "amount": str(order.amount),
                        "currency": order.currency,
                        "payment_method": order.payment_method,
                    }
                )
            now = tx.now()
            paid: dict[str, str | int | datetime] = {
                "payment_id": payment_id,
                "paid_amount": amount,
                "paid_at": now,
            }
            sold: list[PoolCard] | None = None  # the cards delivered now, if any
            if order.status in (OrderStatus.EXPIRED, OrderStatus.CANCELLED):
                # Money for codes already given back: return it, on the record.
                why = (
                    "paid after the reservation expired"
                    if order.status is OrderStatus.EXPIRED
                    else "paid after cancellation"
                )
                done = self._refund(tx, order, why, actor=principal.actor, expect=(order.status,), paid=paid)
            elif order.status is not OrderStatus.RESERVED:
                # Paid before (another payment id): the gateway must return this one.
                raise OrderWrongState(
                    f"the order is {order.status.value}; it was paid before",
                    metadata={"status": order.status.value},
                )
            elif order.expires_at <= now:
                # The deadline holds whether or not the sweeper got here first.
                tx.move_pool_cards(order.id, expect=PoolCardState.RESERVED, state=PoolCardState.AVAILABLE)
                done = self._refund(
                    tx, order, "paid after the reservation expired", actor=principal.actor, paid=paid
                )
            else:
                done, sold = self._pay_reserved(tx, order, now, principal.actor, paid)
            loaded = self._load(tx, done, cards=sold)
            tx.append_audit(
                principal.actor,
                "order.pay",
                f"order:{order.id}",
                detail(payment_id=payment_id, amount=amount, currency=currency, outcome=done.status.value),
            )
            return loaded

        return self._view(self._ctx.run(work))

    def _pay_reserved(
        self,
        tx: UnitOfWork,
        order: Order,
        now: datetime,
        actor: str,
        paid: Mapping[str, str | int | datetime],
    ) -> tuple[Order, list[PoolCard] | None]:
        """A live reservation paid: its codes are sold to it at once (their rows locked), or,
        for a product with manual review, checked to be still its own and parked for staff.
        Codes gone meanwhile: back to the pool, and the payment refunded. Returns the order
        and the cards delivered now, if any."""
        review = self._needs_review(tx, order)
        sold = None if review else tx.sell_order_cards(order.id, order.quantity)
        if (self._still_ours(tx, order, now) is None) if review else (sold is None):
            tx.move_pool_cards(order.id, expect=PoolCardState.RESERVED, state=PoolCardState.AVAILABLE)
            return self._refund(
                tx, order, "the reserved codes became unavailable", actor=actor, paid=paid
            ), None
        if not review:
            return self._deliver(tx, order, now, actor=actor, expect=OrderStatus.RESERVED, paid=paid), sold
        deadline = now + timedelta(seconds=self._ctx.config.delivery_deadline_seconds)
        parked = tx.update_order(
            order.id,
            expect=(OrderStatus.RESERVED,),
            status=OrderStatus.REVIEW,
            known_items=order.items,
            deliver_by=deadline,
            **paid,
        )
        assert parked is not None  # the row is locked and was reserved
        emit(
            tx,
            EventKind.ORDER_REVIEW,
            f"order:{order.id}",
            account=self._account_name(tx, order.account_id),
            codes=order.quantity,
            amount=order.amount,
            currency=order.currency,
            deliver_by=deadline.isoformat(),
        )
        return parked, None

    def _still_ours(self, tx: UnitOfWork, order: Order, now: datetime) -> list[PoolCard] | None:
        """The codes the order reserved, if every one is still held by it and sellable."""
        held = [pc for pc in tx.order_cards(order.id, lock=True) if pc.state is PoolCardState.RESERVED]
        ok = len(held) == order.quantity and all(_sellable(pc.card, now) for pc in held)
        return held if ok else None

    def _needs_review(self, tx: UnitOfWork, order: Order) -> bool:
        for item in order.items:
            product = self._product(tx, item.product_id)
            if product is not None and product.delivery is Delivery.REVIEW:
                return True
        return False

    def _deliver(
        self,
        tx: UnitOfWork,
        order: Order,
        now: datetime,
        *,
        expect: OrderStatus,
        actor: str,
        paid: Mapping[str, str | int | datetime] | None = None,
    ) -> Order:
        """Record the delivery of an order whose codes ``sell_order_cards`` just sold it."""
        done = tx.update_order(
            order.id,
            expect=(expect,),
            status=OrderStatus.DELIVERED,
            known_items=order.items,
            delivered_at=now,
            **(paid or {}),
        )
        assert done is not None  # the row is locked and was in ``expect``
        emit(
            tx,
            EventKind.ORDER_DELIVERED,
            f"order:{order.id}",
            account=self._account_name(tx, order.account_id),
            codes=order.quantity,
            amount=order.amount,
            currency=order.currency,
            by=actor,
        )
        return done

    def _refund(
        self,
        tx: UnitOfWork,
        order: Order,
        reason: str,
        *,
        actor: str,
        automatic: bool = True,
        expect: Sequence[OrderStatus] = (OrderStatus.RESERVED,),
        paid: Mapping[str, str | int | datetime] | None = None,
    ) -> Order:
        """Close a paid order as refunded and record the refund (account ledger entry) and
        its event; ``automatic``: the service refunded it (nobody asked)."""
        done = tx.update_order(
            order.id,
            expect=expect,
            status=OrderStatus.REFUNDED,
            known_items=order.items,
            closed_at=tx.now(),
            close_reason=reason,
            **(paid or {}),
        )
        if done is None or done.paid_amount is None:
            raise AssertionError(f"order {order.id} could not be refunded from {order.status.value}")
        tx.record_refund(done, done.paid_amount, done.currency)
        emit(
            tx,
            EventKind.ORDER_REFUNDED,
            f"order:{order.id}",
            account=self._account_name(tx, order.account_id),
            codes=order.quantity,
            amount=done.paid_amount,
            currency=done.currency,
            reason=reason,
            automatic=automatic,
            by=actor,
        )
        return done

    # -- view -------------------------------------------------------------------------------

    def _visible(
        self, tx: UnitOfWork, principal: Principal, order_id: object, *, lock: bool = False
    ) -> Order:
        require(principal, _BUYERS)
        if isinstance(order_id, bool) or not isinstance(order_id, int) or not 1 <= order_id < 2**63:
            raise OrderNotFound()
        order = tx.get_order(order_id, lock=lock)
        if order is None or (principal.role is Role.CUSTOMER and order.account_id != principal.account_id):
            raise OrderNotFound()
        return order

    def _load(
        self,
        tx: UnitOfWork,
        order: Order,
        *,
        replayed: bool = False,
        reveal: bool = False,
        cards: Sequence[PoolCard] | None = None,
    ) -> _Loaded:
        """What the order's view needs; ``cards``: its delivered cards, when the caller has them."""
        skus: dict[int, str] = {}
        for item in order.items:
            product = self._product(tx, item.product_id)
            skus[item.product_id] = product.sku if product is not None else str(item.product_id)
        if cards is None:
            # Only a delivered order, or one refunded after delivery, has codes to show.
            had = order.status in (OrderStatus.DELIVERED, OrderStatus.REFUNDED)
            cards = tx.order_cards(order.id) if had else []
        shown = tuple(pc for pc in cards if pc.state in (PoolCardState.SOLD, PoolCardState.RETURNED))
        return _Loaded(
            order, self._account_name(tx, order.account_id), skus, shown, tx.now(), reveal, replayed
        )

    def _view(self, loaded: _Loaded, *, with_codes: bool = True) -> OrderView:
        o = loaded.order
        codes: tuple[DeliveredCode, ...] = ()
        if with_codes and loaded.cards:
            plain = self._open([pc.card for pc in loaded.cards])
            codes = tuple(
                DeliveredCode(
                    serial=pc.card.serial,
                    code=display(code) if loaded.reveal else display("*" * (len(code) - 4) + code[-4:]),
                    revealed=loaded.reveal,
                    face_value=pc.card.face_value,
                    currency=pc.card.currency,
                    status=card_state(pc.card, loaded.now),
                    expires_at=pc.card.expires_at,
                )
                for pc, code in zip(loaded.cards, plain, strict=True)
            )
        return OrderView(
            id=o.id,
            account=loaded.account,
            status=o.status,
            items=tuple(OrderLine(loaded.skus[i.product_id], i.face_value, i.quantity) for i in o.items),
            amount=o.amount,
            currency=o.currency,
            created_at=o.created_at,
            expires_at=o.expires_at,
            payment_id=o.payment_id,
            paid_amount=o.paid_amount,
            paid_at=o.paid_at,
            deliver_by=o.deliver_by,
            delivered_at=o.delivered_at,
            closed_at=o.closed_at,
            close_reason=o.close_reason,
            codes=codes,
            replayed=loaded.replayed,
            payment_method=o.payment_method,
        )

    def _open(self, cards: Sequence[Card]) -> list[str]:
        """The cards' codes (canonical symbols), opened from their sealed records in one
        kernel call per sealing key and record shape (an order may mix code lengths)."""
        ctx = self._ctx
        out = [""] * len(cards)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, c in enumerate(cards):
            groups.setdefault((c.key_id, len(c.sealed), len(c.digest)), []).append(i)
        for (key_id, _, _), rows in groups.items():
            sealed = np.frombuffer(b"".join(cards[i].sealed for i in rows), np.uint8).reshape(len(rows), -1)
            digests = np.frombuffer(b"".join(cards[i].digest for i in rows), np.uint8).reshape(len(rows), -1)
            plain = ctx.kernel.open(sealed, digests, ctx.keyring.seal_keys[key_id])
            for i, code in zip(rows, plain.tolist(), strict=True):
                out[i] = code.decode("ascii")
        return out

    def get_order(self, principal: Principal, order_id: int, *, reveal: bool = False) -> OrderView:
        """The order. ``reveal``: the delivered codes in full, for the buyer only (a customer
        token of the order's account); rate-limited per account and audited."""
        if not reveal:
            with self._ctx.storage.read() as tx:
                return self._view(self._load(tx, self._visible(tx, principal, order_id)))
        if principal.role is not Role.CUSTOMER:
            raise PermissionDenied(
                "only the buyer may view delivered codes in full", metadata={"role": principal.role.value}
            )
        cfg = self._ctx.config

        def work(tx: UnitOfWork) -> _Loaded | RevealLimit:
            order = self._visible(tx, principal, order_id)
            if order.status is not OrderStatus.DELIVERED:
                raise OrderWrongState(
                    f"the order is {order.status.value}; codes are shown once delivered",
                    metadata={"status": order.status.value},
                )
            now = tx.now()
            tries = tx.record_attempt(AttemptKind.ACCOUNT, f"order-reveal:{order.account_id}", 3600, now)
            if tries.recent > cfg.order_reveals_per_hour:
                # Returned, not raised: the counted attempt commits.
                return RevealLimit(
                    retry_after=(tries.until(cfg.order_reveals_per_hour + 1) - now).total_seconds(),
                    metadata={"limit": str(cfg.order_reveals_per_hour)},
                )
            loaded = self._load(tx, order, reveal=True)
            tx.append_audit(
                principal.actor, "order.reveal", f"order:{order.id}", detail(codes=order.quantity)
            )
            return loaded

        loaded = self._ctx.run(work)
        if isinstance(loaded, RevealLimit):
            raise loaded
        return self._view(loaded)

    def list_orders(
        self,
        principal: Principal,
        *,
        account: str | None = None,
        status: OrderStatus | str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> OrderPage:
        """Orders newest first (without their codes: ``get_order`` has them). Customers see
        their own; staff and merchants one account's or everybody's."""
        require(principal, _BUYERS)
        limit = int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        if before_id is not None:
            int_arg(before_id, "before_id", 1, 2**63 - 1)
        try:
            wanted = None if status is None else OrderStatus(status)
        except ValueError:
            raise InvalidArgument.of("status", f"one of {', '.join(s.value for s in OrderStatus)}") from None

        with self._ctx.storage.read() as tx:
            if principal.role is Role.CUSTOMER:
                if account is not None and account != principal.account:
                    raise PermissionDenied(
                        "customers see their own orders only", metadata={"role": "customer"}
                    )
                account_id: int | None = principal.account_id
            elif account is not None:
                found = tx.find_account(account)
                if found is None:
                    return OrderPage((), None)
                account_id = found.id
            else:
                account_id = None
            orders = tx.list_orders(
                account_id=account_id, status=wanted, before_id=before_id, limit=limit + 1
            )
            loaded = [self._load(tx, o) for o in orders[:limit]]
        views = tuple(self._view(x, with_codes=False) for x in loaded)
        more = len(orders) > limit
        return OrderPage(views, views[-1].id if more and views else None)

    # -- cancel, review, refund -------------------------------------------------------------

    def cancel_order(self, principal: Principal, order_id: int) -> OrderView:
        """Give up an unpaid order: its codes go back to the pool. Cancelling a cancelled or
        expired order answers it as it is; a paid one is ``OrderWrongState`` (refund it)."""

        def work(tx: UnitOfWork) -> _Loaded:
            order = self._visible(tx, principal, order_id, lock=True)
            if order.status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED):
                return self._load(tx, order)
            if order.status is not OrderStatus.RESERVED:
                raise OrderWrongState(
                    f"the order is {order.status.value}; refund it instead",
                    metadata={"status": order.status.value},
                )
            tx.move_pool_cards(order.id, expect=PoolCardState.RESERVED, state=PoolCardState.AVAILABLE)
            done = tx.update_order(
                order.id,
                expect=(OrderStatus.RESERVED,),
                status=OrderStatus.CANCELLED,
                known_items=order.items,
                closed_at=tx.now(),
                close_reason=f"cancelled by {principal.role.value}",
            )
            assert done is not None
            loaded = self._load(tx, done)
            tx.append_audit(
                principal.actor, "order.cancel", f"order:{order.id}", detail(codes=order.quantity)
            )
            return loaded

        return self._view(self._ctx.run(work))

    def review_order(
        self, principal: Principal, order_id: int, *, approve: bool, reason: str = ""
    ) -> OrderView:
        """Staff decide a paid order parked for review: approve delivers its codes, reject
        refunds it (the codes, never shown, go back to the pool). Past its delivery deadline
        it is refunded whatever the decision, as the sweeper would."""
        require(principal, STAFF)
        if reason:
            _text_arg(reason, "reason", 200)

        def work(tx: UnitOfWork) -> _Loaded:
            order = self._visible(tx, principal, order_id, lock=True)
            if order.status is not OrderStatus.REVIEW:
                raise OrderWrongState(
                    f"the order is {order.status.value}, not waiting for review",
                    metadata={"status": order.status.value},
                )
            now = tx.now()
            actor = principal.actor
            if order.deliver_by is not None and order.deliver_by <= now:
                done = self._release_and_refund(tx, order, "not delivered in time", actor=actor)
            elif not approve:
                done = self._release_and_refund(
                    tx, order, f"rejected in review: {reason}".rstrip(": "), actor=actor, automatic=False
                )
            elif tx.sell_order_cards(order.id, order.quantity) is None:
                done = self._release_and_refund(
                    tx, order, "the reserved codes became unavailable", actor=actor
                )
            else:
                done = self._deliver(tx, order, now, actor=actor, expect=OrderStatus.REVIEW)
            loaded = self._load(tx, done)
            tx.append_audit(
                principal.actor,
                "order.review",
                f"order:{order.id}",
                detail(approve=approve, reason=reason, outcome=done.status.value),
            )
            return loaded

        return self._view(self._ctx.run(work))

    def _release_and_refund(
        self, tx: UnitOfWork, order: Order, reason: str, *, actor: str, automatic: bool = True
    ) -> Order:
        tx.move_pool_cards(order.id, expect=PoolCardState.RESERVED, state=PoolCardState.AVAILABLE)
        return self._refund(tx, order, reason, actor=actor, automatic=automatic, expect=(order.status,))

    def refund_order(self, principal: Principal, order_id: int, *, reason: str = "") -> OrderView:
        """Refund a paid order. Waiting for review: refunded, codes back to the pool.
        Delivered: only while every code is active, unbound and unspent (seed 003); the codes
        are voided, since the buyer has seen them. Already refunded: answered as it is."""
        require(principal, _BUYERS)
        if reason:
            _text_arg(reason, "reason", 200)

        def work(tx: UnitOfWork) -> _Loaded:
            order = self._visible(tx, principal, order_id, lock=True)
            if order.status is OrderStatus.REFUNDED:
                return self._load(tx, order)
            why = f"refund requested by {principal.role.value}" + (f": {reason}" if reason else "")
            if order.status is OrderStatus.REVIEW:
                done = self._release_and_refund(tx, order, why, actor=principal.actor, automatic=False)
            elif order.status is OrderStatus.DELIVERED:
                now = tx.now()
                sold = [pc for pc in tx.order_cards(order.id, lock=True) if pc.state is PoolCardState.SOLD]
                for pc in sold:
                    c = pc.card
                    if not _sellable(c, now) or c.balance != c.face_value:
                        problem = (
                            "bound"
                            if c.account_id is not None
                            else "spent"
                            if c.balance != c.face_value
                            else card_state(c, now)
                        )
                        raise NotRefundable(
                            f"card {c.serial} is {problem}", metadata={"serial": c.serial, "problem": problem}
                        )
                for pc in sold:
                    if (
                        tx.set_card_status(pc.card.id, CardStatus.VOID, only_from=(CardStatus.ACTIVE,))
                        is None
                    ):
                        raise AssertionError(f"card {pc.card.id} changed under its row lock")
                tx.move_pool_cards(order.id, expect=PoolCardState.SOLD, state=PoolCardState.RETURNED)
                done = self._refund(
                    tx, order, why, actor=principal.actor, automatic=False, expect=(OrderStatus.DELIVERED,)
                )
            else:
                raise OrderWrongState(
                    f"the order is {order.status.value}; only paid orders are refunded",
                    metadata={"status": order.status.value},
                )
            loaded = self._load(tx, done)
            tx.append_audit(
                principal.actor, "order.refund", f"order:{order.id}", detail(reason=why, codes=order.quantity)
            )
            return loaded

        view = self._view(self._ctx.run(work))
        self._ctx.index.refresh()  # voided cards: every index follower learns from the feed
        return view

    # -- the sweeper ------------------------------------------------------------------------

    def expire_reservations(self, principal: Principal) -> SweepResult:
        """The sweep, on demand (staff)."""
        require(principal, STAFF)
        return self.sweep(principal.actor)

    def sweep(self, actor: str = SWEEPER) -> SweepResult:
        """Expire unpaid reservations past their deadline (codes back to the pool) and refund
        paid orders past their delivery deadline; in batches until none is due."""
        expired = refunded = 0
        while True:
            n, due = self._ctx.run(lambda tx: self._sweep_batch(tx, actor, OrderStatus.RESERVED))
            expired += n
            if due < _SWEEP_BATCH:
                break
        while True:
            n, due = self._ctx.run(lambda tx: self._sweep_batch(tx, actor, OrderStatus.REVIEW))
            refunded += n
            if due < _SWEEP_BATCH:
                break
        return SweepResult(expired, refunded)

    def _sweep_batch(self, tx: UnitOfWork, actor: str, status: OrderStatus) -> tuple[int, int]:
        now = tx.now()
        # Claimed with SKIP LOCKED on PostgreSQL: an order being paid right now is left to
        # its payment, and two server processes sweeping at once split the work.
        due = tx.due_orders(status, now, _SWEEP_BATCH)
        done = 0
        for order_id in due:
            order = tx.get_order(order_id)
            if order is None or order.status is not status:
                continue
            if status is OrderStatus.RESERVED:
                tx.move_pool_cards(order.id, expect=PoolCardState.RESERVED, state=PoolCardState.AVAILABLE)
                closed = tx.update_order(
                    order.id,
                    expect=(OrderStatus.RESERVED,),
                    status=OrderStatus.EXPIRED,
                    known_items=order.items,
                    closed_at=now,
                    close_reason="not paid in time",
                )
                if closed is None:
                    continue
                emit(
                    tx,
                    EventKind.ORDER_EXPIRED,
                    f"order:{order.id}",
                    account=self._account_name(tx, order.account_id),
                    codes=order.quantity,
                )
                tx.append_audit(actor, "order.expire", f"order:{order.id}", detail(codes=order.quantity))
            else:
                self._release_and_refund(tx, order, "not delivered in time", actor=actor)
                tx.append_audit(
                    actor, "order.refund", f"order:{order.id}", detail(reason="not delivered in time")
                )
            done += 1
        return done, len(due)

    def start_sweeper(self, period: float) -> threading.Thread:
        """Run ``sweep`` every ``period`` seconds on a background thread until the domain
        closes (``Domain.close``), which also waits for it."""
        closing = self._ctx.closing

        def loop() -> None:
            while not closing.wait(period):
                try:
                    result = self.sweep()
                except Exception:  # a failed sweep is retried next period
                    log.exception("order sweep failed")
                    continue
                if result.expired or result.refunded:
                    log.info("order sweep: %d expired, %d refunded", result.expired, result.refunded)

        thread = threading.Thread(target=loop, name="cardmint-order-sweeper", daemon=True)
        thread.start()
        self._sweeper = thread
        return thread

    def stop_sweeper(self, timeout: float = 30.0) -> None:
        """Wait for the sweeper to finish its current sweep (the domain is closing)."""
        if self._sweeper is not None:
            self._sweeper.join(timeout)
            self._sweeper = None
