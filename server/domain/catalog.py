"""Catalog: products with fixed denominations or a custom range, a currency, a validity."""

from __future__ import annotations

import re
from collections.abc import Sequence

from cardmint.server.storage import ConflictError, Delivery, NewProduct, Product, Role, UnitOfWork

from ._context import MAX_AMOUNT, STAFF, Context, detail, require
from .auth import Principal
from .currencies import ISO_4217
from .errors import FieldViolation, InvalidArgument, ProductExists, ProductNotFound

__all__ = ["CatalogService", "Delivery", "Product"]

_SKU = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The `platform` compliance profile's bound (SPEC §3: validity at most 3 years); profiles
# arrive with the compliance issue and will supply this instead.
MAX_VALIDITY_DAYS = 1095
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
) -> NewProduct:
    """Every rule at once, so a caller fixes all its mistakes in one round trip."""
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
    )


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

    def list_products(self, principal: Principal, *, after_id: int = 0, limit: int = 100) -> list[Product]:
        require(principal, _ANY_ROLE)
        if not 1 <= limit <= self._ctx.config.page_limit_max:
            raise InvalidArgument.of("limit", f"1-{self._ctx.config.page_limit_max}")
        with self._ctx.storage.read() as tx:
            return tx.list_products(after_id, limit)
