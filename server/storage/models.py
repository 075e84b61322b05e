"""Rows as immutable values. Money is an ``int`` of minor units plus an ISO 4217 code."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

__all__ = [
    "Account",
    "AttemptKind",
    "AuditEntry",
    "BindOutcome",
    "BindResult",
    "Card",
    "CardBatch",
    "CardStatus",
    "Delivery",
    "IdempotencyClaim",
    "IndexChange",
    "LedgerEntry",
    "LedgerKind",
    "Lot",
    "LotStatus",
    "MoneyOutcome",
    "MoneyResult",
    "NewProduct",
    "Product",
    "Role",
    "Token",
]


class Delivery(enum.StrEnum):
    AUTO = "auto"
    REVIEW = "review"


class LotStatus(enum.StrEnum):
    MINTING = "minting"
    COMPLETE = "complete"
    VOID = "void"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"
    VOID = "void"


class CardState(enum.IntEnum):
    """A card's state as ``card_states`` reports it, one byte per digest.

    Precedence when several apply: void, then frozen, then expired.
    """

    MISSING = 0  # no card has this digest
    ACTIVE = 1  # active and not expired
    FROZEN = 2
    VOID = 3
    EXPIRED = 4  # active, but its expiry has passed (by the storage's clock)


class LedgerKind(enum.StrEnum):
    REDEEM = "redeem"
    REVERSE = "reverse"
    BIND = "bind"
    BIND_TRANSFER = "bind_transfer"
    UNBIND = "unbind"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    VOID = "void"
    # Written by the next issue (refunds, loss-report reissue, staff adjustments); listed in
    # the schema's CHECK now so SQLite never has to rebuild the ledger table to allow them.
    REFUND = "refund"
    REISSUE_OUT = "reissue_out"
    REISSUE_IN = "reissue_in"


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    MERCHANT = "merchant"
    CUSTOMER = "customer"


class AttemptKind(enum.StrEnum):
    CARD = "card"
    ACCOUNT = "account"
    ADDRESS = "address"
    DEVICE = "device"


@dataclass(frozen=True)
class NewProduct:
    """A product to create: exactly one of ``denominations`` or ``amount_range``."""

    sku: str
    name: str
    currency: str
    denominations: tuple[int, ...] = ()
    amount_range: tuple[int, int] | None = None
    validity_days: int | None = None
    delivery: Delivery = Delivery.AUTO
    code_length: int = 16


@dataclass(frozen=True)
class Product:
    id: int
    sku: str
    name: str
    currency: str
    denominations: tuple[int, ...]
    amount_range: tuple[int, int] | None
    validity_days: int | None
    delivery: Delivery
    code_length: int
    created_at: datetime


@dataclass(frozen=True)
class Lot:
    id: int
    product_id: int
    count: int
    face_value: int
    currency: str
    status: LotStatus
    serial_prefix: str
    serial_start: int
    created_at: datetime
    created_by: str
    completed_at: datetime | None
    voided_at: datetime | None
    plaintext_exported: bool
    # When every card of the lot expires (set at creation from the product's validity);
    # None when the product's cards never expire.
    expires_at: datetime | None = None


@dataclass(frozen=True)
class CardBatch:
    """One chunk of a lot's cards, column-wise as the kernel produces them.

    ``digests`` is ``(n, width)`` uint8 and ``sealed`` ``(n, length + 28)`` uint8; both are
    sliced row by row into ``bytes`` on the way in, never decoded.
    """

    serials: Sequence[str] | npt.NDArray[np.bytes_]
    digests: npt.NDArray[np.uint8]
    sealed: npt.NDArray[np.uint8]
    key_id: int = 1

    def __post_init__(self) -> None:
        n = len(self.serials)
        if self.digests.ndim != 2 or self.sealed.ndim != 2:
            raise ValueError("digests and sealed must be 2-d uint8 arrays")
        if len(self.digests) != n or len(self.sealed) != n:
            raise ValueError(f"{n} serials, {len(self.digests)} digests, {len(self.sealed)} sealed")
        if self.digests.dtype != np.uint8 or self.sealed.dtype != np.uint8:
            raise ValueError("digests and sealed must be uint8")

    def __len__(self) -> int:
        return len(self.serials)


@dataclass(frozen=True)
class Account:
    id: int
    external_id: str
    created_at: datetime


@dataclass(frozen=True)
class Card:
    id: int
    serial: str
    digest: bytes
    sealed: bytes
    key_id: int
    lot_id: int
    product_id: int
    face_value: int
    balance: int
    currency: str
    status: CardStatus
    expires_at: datetime | None
    account_id: int | None
    bound_at: datetime | None
    transfers: int
    created_at: datetime


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    card_id: int | None
    account_id: int | None
    kind: LedgerKind
    amount: int
    balance_after: int | None
    currency: str
    request_id: str | None
    reverses_id: int | None
    created_at: datetime


class BindOutcome(enum.StrEnum):
    BOUND = "bound"
    ALREADY_BOUND = "already_bound"  # to another account
    ALREADY_BOUND_HERE = "already_bound_here"  # to this account: a retry, not an error
    FROZEN = "frozen"
    VOID = "void"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    NOT_BOUND = "not_bound"  # unbind of a card this account does not hold


@dataclass(frozen=True)
class BindResult:
    outcome: BindOutcome
    card: Card | None
    entry: LedgerEntry | None = None


class MoneyOutcome(enum.StrEnum):
    OK = "ok"
    INSUFFICIENT = "insufficient"
    NOT_ACTIVE = "not_active"  # frozen or void
    EXPIRED = "expired"
    CURRENCY_MISMATCH = "currency_mismatch"
    NOT_FOUND = "not_found"
    NOT_REVERSIBLE = "not_reversible"  # not a redeem, or reversing more than is left of it


@dataclass(frozen=True)
class MoneyResult:
    """What a redeem or reverse did; ``balance`` is the card's balance afterwards (or now)."""

    outcome: MoneyOutcome
    balance: int | None
    entry: LedgerEntry | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is MoneyOutcome.OK


@dataclass(frozen=True)
class IdempotencyClaim:
    """``replay`` is the stored response of an earlier identical request, or None when new."""

    scope: str
    key: str
    replay: bytes | None


@dataclass(frozen=True)
class Token:
    id: int
    token_hash: bytes
    role: Role
    label: str
    account_id: int | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    detail: str
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class IndexChange:
    """A lot's codes joined (``add``) or left (``remove``) the issued-codes index."""

    seq: int
    lot_id: int
    change: str
    at: datetime
