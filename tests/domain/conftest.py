"""Domain fixtures: a ``Domain`` over each storage backend, callers of every role, and a
product with a small lot whose plaintext codes the test holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cardmint.server.domain import Domain, DomainConfig, Keyring, Lot, Principal, ProductNotFound, Role
from cardmint.server.storage import Storage

# The storage fixtures (both backends, the session's PostgreSQL cluster, the fake clock)
# come from tests/conftest.py; only the class is imported, for the tests' annotations.
from tests.conftest import FakeClock

__all__ = ["FakeClock"]


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def domain(storage: Storage, keyring: Keyring) -> Domain:
    return Domain(storage, keyring, config=DomainConfig(lot_chunk=7, stream_chunk=5))


@dataclass(frozen=True)
class Callers:
    admin: Principal
    operator: Principal
    merchant: Principal
    alice: Principal
    bob: Principal


@pytest.fixture
def who(domain: Domain) -> Callers:
    def mint(role: Role, account: str | None = None) -> Principal:
        issued = domain.auth.create_token(role, label=role.value, account=account)
        return domain.auth.authenticate(f"Bearer {issued.token}")

    return Callers(
        mint(Role.ADMIN),
        mint(Role.OPERATOR),
        mint(Role.MERCHANT),
        mint(Role.CUSTOMER, "alice"),
        mint(Role.CUSTOMER, "bob"),
    )


@dataclass(frozen=True)
class MintedLot:
    lot: Lot
    cards: dict[str, str]  # serial -> code (display form)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(self.cards.items())


@pytest.fixture
def make_lot(domain: Domain, who: Callers) -> Callable[..., MintedLot]:
    def make(
        count: int = 10, face_value: int = 500, sku: str = "GC-500", validity_days: int | None = 365
    ) -> MintedLot:
        try:
            domain.catalog.get_product(who.admin, sku)
        except ProductNotFound:
            domain.catalog.create_product(
                who.operator,
                sku=sku,
                name=f"Gift card {sku}",
                currency="CNY",
                denominations=(100, 500, 1000),
                validity_days=validity_days,
            )
        lot = domain.lots.create_lot(who.operator, sku=sku, count=count, face_value=face_value)
        cards: dict[str, str] = {}
        for chunk in domain.lots.stream_lot(who.operator, lot.id):
            cards.update(zip(chunk.serials, chunk.codes, strict=True))
        return MintedLot(lot, cards)

    return make
