"""Catalog: products with fixed denominations or a custom range, a currency, a validity."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from cardmint.server.storage import ConflictError, Delivery, NewProduct, Product, Role, UnitOfWork

from ._context import MAX_AMOUNT, STAFF, Context, detail, require
from .auth import Principal
from .currencies import ISO_4217
from .errors import FieldViolation, InvalidArgument, ProductExists, ProductNotFound, ProductRetired
from .events import EventKind, emit
from .profiles import Profile

__all__ = ["CatalogService", "Delivery", "Product", "retired"]

_SKU = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The hard cap on validity whatever the profile says (a profile's 0 means "no maximum").
MAX_VALIDITY_DAYS = 36_500
_ANY_ROLE = frozenset(Role)


def _int_in(v: object, lo: int, hi: int) -> bool:
    # bool is an int subclass; True must not pass as an amount of 1.
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def validate_product(
    *,
    sku: object,
    name: object,
    currency: object,
    denominations: Sequence[object],
    amount_range: object,
    validity_days: object,
    delivery: object,
    code_length: object,
    registered: object = False,
    profile: Profile | None = None,
) -> NewProduct:
    """Every rule at once, so a caller fixes all its mistakes in one round trip.

    ``profile`` (the deployment's compliance profile) adds its bounds: currencies, face
    values and validity per card kind (anonymous or registered).
    """
    bad: list[FieldViolation] = []

    def fail(field: str, why: str) -> None:
        bad.append(FieldViolation(field, why))

    if not isinstance(sku, str) or not _SKU.fullmatch(sku):
        fail("sku", "1-64 characters of A-Z a-z 0-9 . _ -")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        fail("name", "1-200 characters")
    if not isinstance(currency, str) or currency not in ISO_4217:
        fail("currency", "an ISO 4217 currency code such as CNY, USD, EUR (upper-case)")
    denoms: tuple[int, ...] = ()
    rng: tuple[int, int] | None = None
    if denominations and amount_range is not None:
        fail("amount_range", "give denominations or an amount range, not both")
    elif not denominations and amount_range is None:
        fail("denominations", "give fixed denominations or an amount range")
    elif denominations:
        if not all(_int_in(d, 1, MAX_AMOUNT) for d in denominations):
            fail("denominations", f"whole minor units between 1 and {MAX_AMOUNT}")
        elif len(set(denominations)) != len(denominations) or len(denominations) > 20:
            fail("denominations", "1-20 distinct amounts")
        else:
            denoms = tuple(sorted(d for d in denominations if isinstance(d, int)))
    elif (
        not isinstance(amount_range, tuple)
        or len(amount_range) != 2
        or not all(_int_in(a, 1, MAX_AMOUNT) for a in amount_range)
        or amount_range[0] > amount_range[1]
    ):
        fail("amount_range", f"(min, max) whole minor units with 1 <= min <= max <= {MAX_AMOUNT}")
    else:
        rng = (int(amount_range[0]), int(amount_range[1]))
    if validity_days is not None and not _int_in(validity_days, 1, MAX_VALIDITY_DAYS):
        fail("validity_days", f"none (no expiry) or 1-{MAX_VALIDITY_DAYS} days")
    if not isinstance(registered, bool):
        fail("registered", "true (a holder on record) or false (anonymous)")
    elif profile is not None:  # the profile's bounds on whatever passed the checks above
        field = "amount_range" if rng is not None else "denominations"
        _profile_bounds(
            profile, str(currency), field, (*denoms, *(rng or ())), validity_days, registered, fail
        )
    mode: Delivery | None = None
    if isinstance(delivery, str):
        mode = {"auto": Delivery.AUTO, "review": Delivery.REVIEW, "manual": Delivery.REVIEW}.get(
            delivery.lower()
        )
    if mode is None:
        fail("delivery", "auto or review (manual review before delivery)")
    if not _int_in(code_length, 8, 31):
        fail("code_length", "8-31 symbols")
    if bad:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad), violations=tuple(bad))
    assert mode is not None  # for mypy: `bad` is non-empty otherwise
    return NewProduct(
        sku=str(sku),
        name=str(name).strip(),
        currency=str(currency),
        denominations=denoms,
        amount_range=rng,
        validity_days=validity_days if isinstance(validity_days, int) else None,
        delivery=mode,
        code_length=code_length if isinstance(code_length, int) else 16,
        registered=registered is True,
    )


def _profile_bounds(
    profile: Profile,
    currency: str,
    field: str,
    amounts: tuple[int, ...],
    validity_days: object,
    registered: bool,
    fail: Callable[[str, str], None],
) -> None:
    under = f"under the {profile.tag} compliance profile"
    kind = "registered" if registered else "anonymous"
    rules = profile.cards(registered)
    if currency not in ISO_4217:
        pass  # already reported
    elif profile.currencies and currency not in profile.currencies:
        fail("currency", f"one of {', '.join(sorted(profile.currencies))} {under}")
    elif amounts:
        lo, hi = profile.face_value_min.minor(currency), rules.face_value_max.minor(currency)
        if lo is not None and min(amounts) < lo:
            fail(field, f"at least {lo} minor units per card {under}")
        if hi is not None and max(amounts) > hi:
            fail(field, f"at most {hi} minor units per {kind} card {under}")
    if validity_days is None:
        if rules.expiry_required:
            fail(
                "validity_days",
                f"{kind} cards need an expiry of at least {rules.validity_days_min} days {under}",
            )
        return
    if not _int_in(validity_days, 1, MAX_VALIDITY_DAYS):
        return  # already reported
    assert isinstance(validity_days, int)
    if not rules.expiry_allowed:
        fail("validity_days", f"{kind} cards carry no expiry {under}")
    elif validity_days < rules.validity_days_min:
        fail("validity_days", f"at least {rules.validity_days_min} days for {kind} cards {under}")
    elif profile.validity_days_max and validity_days > profile.validity_days_max:
        fail("validity_days", f"at most {profile.validity_days_max} days {under}")


MAX_REASON = 200  # characters of a retirement's reason


def retired(product: Product) -> ProductRetired:
    """The refusal of a new order, lot or pool stock for ``product`` (retired)."""
    at = product.retired_at
    return ProductRetired(
        metadata={"sku": product.sku, "retired_at": at.isoformat() if at is not None else ""}
    )


def _reason_arg(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise InvalidArgument.of("reason", f"at most {MAX_REASON} printable characters")
    return reason.strip()


class CatalogService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create_product(
        self,
        principal: Principal,
        *,
        sku: str,
        name: str,
        currency: str,
        denominations: Sequence[int] = (),
        amount_range: tuple[int, int] | None = None,
        validity_days: int | None = None,
        delivery: Delivery | str = "auto",
        code_length: int = 16,
        registered: bool = False,
    ) -> Product:
        require(principal, STAFF)
        new = validate_product(
            sku=sku,
            name=name,
            currency=currency,
            denominations=tuple(denominations),
            amount_range=amount_range,
            validity_days=validity_days,
            delivery=delivery,
            code_length=code_length,
            registered=registered,
            profile=self._ctx.profile,
        )
        # Checked first because a failed INSERT would doom the transaction; the ConflictError
        # below still catches the race with a concurrent create of the same sku.
        with self._ctx.storage.read() as tx:
            if tx.get_product_by_sku(new.sku) is not None:
                raise ProductExists()

        def work(tx: UnitOfWork) -> Product:
            product = tx.create_product(new)
            tx.append_audit(principal.actor, "product.create", f"product:{product.id}", detail(sku=new.sku))
            return product

        try:
            return self._ctx.run(work)
        except ConflictError as e:
            raise ProductExists() from e

    def get_product(self, principal: Principal, sku: str) -> Product:
        require(principal, _ANY_ROLE)
        with self._ctx.storage.read() as tx:
            product = tx.get_product_by_sku(sku)
        if product is None:
            raise ProductNotFound()
        return product

    def retire_product(self, principal: Principal, sku: str, *, reason: str = "") -> Product:
        """Stop selling ``sku``: from its commit on, no order reserves its codes (the pool's
        picks read the retirement in the claiming statement, in every server process), and
        no lot is minted or stocked for it. Cards already issued stay good (bind, redeem,
        view), and orders that reserved codes before it are paid and delivered as usual.

        Idempotent: retiring a retired product changes nothing and answers it as it is
        (retired when it first was, with no second audit event)."""
        return self._set_retired(principal, sku, retire=True, reason=_reason_arg(reason))

    def reinstate_product(self, principal: Principal, sku: str) -> Product:
        """Put a retired product back on sale; its pool's unsold codes are sellable again.
        Idempotent like ``retire_product``."""
        return self._set_retired(principal, sku, retire=False, reason="")

    def _set_retired(self, principal: Principal, sku: str, *, retire: bool, reason: str) -> Product:
        require(principal, STAFF)
        if not isinstance(sku, str) or not _SKU.fullmatch(sku):
            raise ProductNotFound()

        def work(tx: UnitOfWork) -> Product:
            product = tx.get_product_by_sku(sku)
            if product is None:
                raise ProductNotFound()
            if not tx.set_product_retired(product.id, tx.now() if retire else None):
                return product  # already so: nothing changed
            after = tx.get_product(product.id)
            assert after is not None  # products are never deleted
            subject = f"product:{product.id}"
            if retire:
                tx.append_audit(principal.actor, "product.retire", subject, detail(sku=sku, reason=reason))
                emit(tx, EventKind.PRODUCT_RETIRED, subject, sku=sku)
            else:
                tx.append_audit(principal.actor, "product.reinstate", subject, detail(sku=sku))
                emit(tx, EventKind.PRODUCT_REINSTATED, subject, sku=sku)
            return after

        product = self._ctx.run(work)
        self._ctx.wake()  # an event may have been committed
        return product

    def list_products(
        self, principal: Principal, *, after_id: int = 0, limit: int = 100, on_sale_only: bool = False
    ) -> list[Product]:
        """Products in creation order; ``on_sale_only``: not the retired ones."""
        require(principal, _ANY_ROLE)
        if not 1 <= limit <= self._ctx.config.page_limit_max:
            raise InvalidArgument.of("limit", f"1-{self._ctx.config.page_limit_max}")
        with self._ctx.storage.read() as tx:
            return tx.list_products(after_id, limit, on_sale_only=on_sale_only)
