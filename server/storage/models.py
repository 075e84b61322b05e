"""Rows as immutable values. Money is an ``int`` of minor units plus an ISO 4217 code."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

__all__ = [
    "Account",
    "AttemptKind",
    "Attempts",
    "AuditEntry",
    "BindOutcome",
    "BindResult",
    "Card",
    "CardBatch",
    "CardStatus",
    "Delivery",
    "Department",
    "DigestKeyRecord",
    "Gauges",
    "IdempotencyClaim",
    "IndexChange",
    "LedgerEntry",
    "LedgerKind",
    "LossReport",
    "LossStatus",
    "Lot",
    "LotStatus",
    "Membership",
    "MoneyOutcome",
    "MoneyResult",
    "NewOrder",
    "NewProduct",
    "Order",
    "OrderItem",
    "OrderStatus",
    "OrgRole",
    "Organization",
    "PoolCard",
    "PoolCardState",
    "PoolStock",
    "Product",
    "RehashRow",
    "Reissue",
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
    # A card-to-card transfer (migration 13): the pair is linked like a reissue's.
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"


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
class Attempts:
    """The failed attempts counted against one subject in its current fixed window and in
    the window before it, judged together: ``recent`` is what a limit is held to.

    Judging two windows, not one, keeps a limit true over any span as long as a window
    (any such span lies within some window and the one before it): with the current window
    alone a counter drops to 0 at each edge, and guesses timed across an edge get twice
    the limit, or a lock ends a second after it began.
    """

    current: int
    previous: int
    ends: datetime  # the current window's end
    window_seconds: int

    @property
    def recent(self) -> int:
        return self.current + self.previous

    def until(self, limit: int) -> datetime:
        """When a subject at or past ``limit`` is under it again, unless it fails more:
        when the previous window drops out, or, if the current window alone reaches the
        limit, when that one drops out too."""
        if self.current < limit:
            return self.ends
        return self.ends + timedelta(seconds=self.window_seconds)


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
    registered: bool = False  # cards sold to a holder on record (else anonymous, bearer)


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
    registered: bool = False
    # When staff retired it (no new orders, lots or pool stock; its cards stay good); None
    # while it is on sale.
    retired_at: datetime | None = None


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
    profile: str | None = None  # the compliance profile that judged it (name@version)


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
    expires_at: datetime | None = None  # None: never


@dataclass(frozen=True)
class Report:
    """An AML report record or a risk alert, kept for compliance staff."""

    id: int
    at: datetime
    kind: str  # "aml" or "alert"
    subject: str
    amount: int | None
    currency: str | None
    detail: str  # JSON object
    profile: str


@dataclass(frozen=True)
class Event:
    """One outbox event: ``detail`` is a JSON object (never a secret code)."""

    id: int
    at: datetime
    kind: str
    subject: str
    detail: str


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
class AuditColumns:
    """A page of the audit chain column-wise, for the verifier (no object per event):
    event i has id ``ids[i]``, time ``at_us[i]`` (µs since the epoch), the text fields
    actor, action, subject, detail as rows ``4i .. 4i + 3`` of ``text`` cut at ``offsets``
    (``4n + 1`` of them, UTF-8), and ``prev_hashes``/``hashes`` bytes ``32i .. 32i + 32``."""

    ids: npt.NDArray[np.int64]
    at_us: npt.NDArray[np.int64]
    text: bytes | npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]
    prev_hashes: bytes
    hashes: bytes

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def last_id(self) -> int:
        return int(self.ids[-1]) if len(self.ids) else 0


@dataclass(frozen=True)
class IssuedCards:
    """Issued cards as the in-memory index keeps them, row i for card i of a chunk.

    ``digests``: the cards' digests, concatenated (fixed width). ``states``: one
    ``CardState`` byte (ACTIVE, FROZEN or VOID: expiry is judged when asked, against
    ``expires_us``). ``expires_us``: expiry in microseconds since the Unix epoch, 0 = never.
    ``seq``: for a ``card_changes`` batch, the newest change it covers (0 otherwise).
    """

    digests: bytes
    states: npt.NDArray[np.uint8]
    expires_us: npt.NDArray[np.int64]
    seq: int = 0

    def __len__(self) -> int:
        return len(self.states)


@dataclass(frozen=True)
class DigestKeyRecord:
    """A digest key the database knows (never the key: a fingerprint of it) and its state:
    ``pending``, ``current`` (new lots), ``previous`` (still looked up) or ``retired``."""

    key_id: int
    fingerprint: bytes
    state: str


@dataclass(frozen=True)
class RehashRow:
    """A card digested under a key that is not the current one, as ``keys rehash`` needs it.
    ``announce``: its lot is complete, so the issued-codes index must learn the new digest."""

    card_id: int
    digest: bytes
    sealed: bytes
    seal_key_id: int
    digest_key_id: int
    announce: bool


@dataclass(frozen=True)
class IndexChange:
    """A lot's codes joined (``add``) or left (``remove``) the issued-codes index."""

    seq: int
    lot_id: int
    change: str
    at: datetime


# -- orders (the card-shop flow; docs/storage.md "Orders and the pool")


class OrderStatus(enum.StrEnum):
    RESERVED = "reserved"  # codes locked, waiting for payment until expires_at
    REVIEW = "review"  # paid; a product with manual review waits for staff until deliver_by
    DELIVERED = "delivered"  # paid and the codes are the buyer's
    CANCELLED = "cancelled"  # given up before payment; codes back in the pool
    EXPIRED = "expired"  # not paid in time; codes back in the pool
    REFUNDED = "refunded"  # paid but not delivered (in time), or delivered codes returned


class PoolCardState(enum.StrEnum):
    AVAILABLE = "available"  # for sale
    RESERVED = "reserved"  # held by order_id (waiting for payment or review)
    SOLD = "sold"  # delivered to order_id's buyer
    RETURNED = "returned"  # delivered, then refunded: the card is void, never sold again


@dataclass(frozen=True)
class OrderItem:
    product_id: int
    face_value: int
    quantity: int


# How an order is paid: "online" (card, wallet: the gateway notifies at once) or
# "bank_transfer" (which compliance profiles require above a threshold).
PAYMENT_METHODS = ("online", "bank_transfer")


@dataclass(frozen=True)
class NewOrder:
    account_id: int
    request_id: str
    items: tuple[OrderItem, ...]
    amount: int  # total price in minor units (the sum of face values)
    currency: str
    client_address: str
    expires_at: datetime
    payment_method: str = "online"  # PAYMENT_METHODS


@dataclass(frozen=True)
class Order:
    id: int
    account_id: int
    request_id: str
    items: tuple[OrderItem, ...]
    amount: int
    currency: str
    status: OrderStatus
    client_address: str
    created_at: datetime
    expires_at: datetime  # the reservation's deadline
    payment_id: str | None
    paid_amount: int | None
    paid_at: datetime | None
    deliver_by: datetime | None  # set when paid: a refund follows if not delivered by then
    delivered_at: datetime | None
    closed_at: datetime | None  # cancelled, expired or refunded
    close_reason: str | None
    payment_method: str = "online"  # how the buyer pays: PAYMENT_METHODS

    @property
    def quantity(self) -> int:
        return sum(i.quantity for i in self.items)


@dataclass(frozen=True)
class PoolCard:
    """A card of the pool with the order that holds it (None while available)."""

    card: Card
    state: PoolCardState
    order_id: int | None


@dataclass(frozen=True)
class PoolStock:
    """Cards of one product and face value in the pool, by state."""

    face_value: int
    currency: str
    available: int
    reserved: int
    sold: int
    returned: int
    # What ``available`` would count were the product on sale: its pool while it is retired
    # (the domain moves the count here); 0 otherwise.
    withdrawn: int = 0


# -- organizations (enterprise accounts; docs/accounts.md)


class OrgRole(enum.StrEnum):
    """A member's role in its organization (docs/accounts.md has the permission table)."""

    ORG_ADMIN = "org_admin"
    DEPT_MANAGER = "dept_manager"
    MEMBER = "member"


@dataclass(frozen=True)
class Organization:
    id: int
    name: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class Department:
    id: int
    organization_id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Membership:
    """An account's place in an organization: a department, or the whole organization
    (``department_id`` None)."""

    account_id: int
    account: str  # the account's external id
    organization_id: int
    organization: str
    department_id: int | None
    department: str | None
    role: OrgRole
    added_at: datetime


# -- loss reports (ComplianceService.ReportLoss / ReviewLoss)


class LossStatus(enum.StrEnum):
    PENDING = "pending"  # reported; the card is frozen and waits for staff
    APPROVED = "approved"  # the remaining balance moved to new_card_id; the card is void
    REJECTED = "rejected"  # the card stays frozen (staff may unfreeze it)


@dataclass(frozen=True)
class LossReport:
    id: int
    card_id: int
    account_id: int  # the holder who reported it (the account the card was bound to)
    status: LossStatus
    reason: str
    reported_by: str  # actor
    reported_at: datetime
    reviewed_by: str | None
    reviewed_at: datetime | None
    note: str | None  # the reviewer's note
    new_card_id: int | None  # approved: the card the balance moved to
    amount: int | None  # approved: the balance moved (minor units of the card's currency)


@dataclass(frozen=True)
class Reissue:
    """A balance moved from a lost card to its replacement: both ledger entries."""

    moved_out: LedgerEntry  # reissue_out on the old card (-amount, balance_after 0)
    moved_in: LedgerEntry  # reissue_in on the new card (+amount); reverses_id = moved_out.id


# -- observability (server/observe.py reads these at scrape time)


@dataclass(frozen=True)
class Gauges:
    """A snapshot of what the metrics report from the database, read in one transaction.

    ``pool``: (product sku, pool state) -> cards. ``reservations``/``reserved_codes``: live
    reservations (unpaid, deadline ahead) and the codes they hold. ``audit_length``: the last
    chained audit id. ``attempts``/``locked``: per attempt kind, the failures counted in the
    current lock window and the subjects at or past their lock limit in it.
    """

    pool: dict[tuple[str, str], int]
    reservations: int
    reserved_codes: int
    audit_length: int
    attempts: dict[str, int]
    locked: dict[str, int]
