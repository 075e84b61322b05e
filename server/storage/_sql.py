"""The operations, written once in SQL both backends accept; subclasses fill in the rest.

Placeholders are written ``?`` and translated for psycopg. Each backend subclass supplies
how a statement runs, how timestamps travel, the row lock clause, the named transaction
locks and the bulk card insert (executemany on SQLite, COPY on PostgreSQL).
"""

# Every f-string in a statement below only splices the fixed column lists defined in this
# module or a run of "?" placeholders; values always travel as bound parameters.
# ruff: noqa: S608

from __future__ import annotations

import itertools
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import blake3
import numpy as np
import numpy.typing as npt

from .errors import IdempotencyConflictError, LotStateError, NotFoundError, StorageError, TransientError
from .models import (
    Account,
    AttemptKind,
    Attempts,
    AuditColumns,
    AuditEntry,
    BindOutcome,
    BindResult,
    Card,
    CardBatch,
    CardState,
    CardStatus,
    Delivery,
    Department,
    DigestKeyRecord,
    Event,
    Gauges,
    IdempotencyClaim,
    IndexChange,
    IssuedCards,
    LedgerEntry,
    LedgerKind,
    LossReport,
    LossStatus,
    Lot,
    LotStatus,
    Membership,
    MoneyOutcome,
    MoneyResult,
    NewOrder,
    NewProduct,
    Order,
    OrderItem,
    OrderStatus,
    Organization,
    OrgRole,
    PoolCard,
    PoolCardState,
    PoolStock,
    Product,
    RehashRow,
    Reissue,
    Report,
    Role,
    Token,
)

__all__ = ["CARD_COLUMNS", "GENESIS_HASH", "ON_SALE", "CardRows", "Clock", "SqlTx", "audit_hash", "utcnow"]

Clock = Callable[[], datetime]
GENESIS_HASH = bytes(32)
DIGEST_CHUNK = 65_536
# Digests per card_states query: under SQLite's default 32,766 bound parameters (and few
# enough that PostgreSQL plans the ANY() array as an index probe per element).
STATES_CHUNK = 32_000

# Names of the transaction-scoped locks; PostgreSQL maps them to advisory locks, SQLite's
# single writer already holds everything.
LOCK_AUDIT = 1
LOCK_INDEX = 2
LOCK_EVENTS = 3
# Named locks on a subject (an account, a client address) take LOCK_SUBJECTS + a CRC-32
# of the subject: above the fixed names, below any overflow of PostgreSQL's bigint key.
LOCK_SUBJECTS = 1 << 8


_Tx = TypeVar("_Tx")
_T = TypeVar("_T")


def run_retrying(
    transaction: Callable[[], AbstractContextManager[_Tx]], work: Callable[[_Tx], _T], attempts: int
) -> _T:
    """``work`` in a fresh write transaction, again when the database reports a lost race
    (deadlock, serialization failure, busy); the last failure propagates."""
    for attempt in range(attempts):
        try:
            with transaction() as tx:
                return work(tx)
        except TransientError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable: the loop returns or raises")


def utcnow() -> datetime:
    """The wall clock in UTC (the storage's default clock)."""
    return datetime.now(UTC)


def audit_hash(
    prev_hash: bytes, seq: int, at: datetime, actor: str, action: str, subject: str, detail: str
) -> bytes:
    """BLAKE3 over the previous hash and the event, length-prefixed so fields cannot slide."""
    return audit_hash_us(
        prev_hash, seq, (at - _EPOCH) // timedelta(microseconds=1), actor, action, subject, detail
    )


_HEAD = struct.Struct("<QqI")
_LEN = struct.Struct("<I")


def audit_hash_us(
    prev_hash: bytes, seq: int, at_us: int, actor: str, action: str, subject: str, detail: str
) -> bytes:
    """``audit_hash`` with the time in microseconds since the epoch (the verifier's fast path:
    one message, one BLAKE3 call)."""
    a, b, c, d = actor.encode(), action.encode(), subject.encode(), detail.encode()
    msg = b"".join(
        (
            prev_hash,
            _HEAD.pack(seq, at_us, len(a)),
            a,
            _LEN.pack(len(b)),
            b,
            _LEN.pack(len(c)),
            c,
            _LEN.pack(len(d)),
            d,
        )
    )
    return blake3.blake3(msg).digest()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _as_hash32(value: bytes) -> bytes:
    return (
        value if len(value) == 32 else blake3.blake3(b"cardmint audit: not a 32-byte hash " + value).digest()
    )


def _positive(value: int, what: str) -> int:
    # bool is an int subclass and floats sneak in from JSON: refuse both before SQL sees them.
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{what} must be positive, got {value}")
    return value


def _order_response(order_id: int) -> bytes:
    """The stored answer of an order's idempotency claim, as the domain reads it back."""
    return f'{{"order_id": {int(order_id)}}}'.encode()


def _money(value: int, what: str = "amount") -> int:
    """A positive amount in integer minor units (fen, cents), never a float."""
    return _positive(value, what)


def _currency(code: str) -> str:
    if len(code) != 3 or not code.isascii() or not code.isalpha() or not code.isupper():
        raise ValueError(f"currency must be an ISO 4217 code such as 'CNY', got {code!r}")
    return code


@dataclass(frozen=True)
class CardRows:
    """A chunk of new cards, column-wise, for a backend's bulk insert."""

    serials: Sequence[str] | npt.NDArray[np.bytes_]  # str, or ASCII bytes in an ``S`` array
    digests: npt.NDArray[np.uint8]  # (n, digest width), C-contiguous
    sealed: npt.NDArray[np.uint8]  # (n, sealed width), C-contiguous
    key_id: int
    lot: Lot
    expires_at: datetime | None
    created_at: datetime

    def fixed_serials(self) -> npt.NDArray[np.bytes_] | None:
        """The serials as one ``S{width}`` array of ASCII when all have the same length (a
        lot's always do: see ``Kernel.serials``); None otherwise, for a row-by-row insert."""
        serials = self.serials
        n = len(serials)
        if n == 0:
            return None
        if isinstance(serials, np.ndarray):
            if serials.dtype.kind != "S" or serials.ndim != 1 or serials.dtype.itemsize == 0:
                return None
            arr = np.ascontiguousarray(serials)
        else:
            joined = "".join(serials).encode("utf-8")
            if len(joined) % n:
                return None
            width = len(joined) // n
            if width == 0 or any(len(s) != width for s in serials):
                return None
            arr = np.frombuffer(joined, dtype=f"S{width}")
        raw = arr.view(np.uint8).reshape(n, arr.dtype.itemsize)
        # An S array pads a shorter string with NULs: every serial must fill the width, and
        # be ASCII (one byte per character, as the text column will count it).
        if not raw[:, -1].all() or (raw >= 0x80).any():
            return None
        return arr

    def serial_strings(self) -> list[str]:
        if isinstance(self.serials, np.ndarray):
            return [s.decode("ascii") for s in self.serials.tolist()]
        return list(self.serials)

    def tuples(self, ts: Callable[[datetime], Any]) -> Iterator[tuple[Any, ...]]:
        """Row tuples in the column order of ``CARD_COLUMNS``."""
        dw, sw = self.digests.shape[1], self.sealed.shape[1]
        digests, sealed = self.digests.tobytes(), self.sealed.tobytes()
        lot, exp, now = (
            self.lot,
            None if self.expires_at is None else ts(self.expires_at),
            ts(self.created_at),
        )
        for i, serial in enumerate(self.serial_strings()):
            yield (
                serial,
                digests[i * dw : (i + 1) * dw],
                sealed[i * sw : (i + 1) * sw],
                self.key_id,
                lot.id,
                lot.product_id,
                lot.face_value,
                lot.face_value,
                lot.currency,
                "active",
                exp,
                now,
            )


CARD_COLUMNS = (
    "serial, digest, sealed, key_id, lot_id, product_id, face_value, balance, currency, status, expires_at,"
    " created_at"
)


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


# What every pick of sellable pool cards (alias ``p``) adds: not of a retired product. Read in
# the claiming statement itself, so a retirement another process committed counts at once.
ON_SALE = (
    " AND NOT EXISTS (SELECT 1 FROM products pr WHERE pr.id = p.product_id AND pr.retired_at IS NOT NULL)"
)

_PRODUCT = (
    "id, sku, name, currency, min_amount, max_amount, validity_days, delivery, code_length, created_at,"
    " registered, retired_at"
)
_LOT = (
    "id, product_id, count, face_value, currency, status, serial_prefix, serial_start, created_at,"
    " created_by, completed_at, voided_at, plaintext_exported, expires_at"
)
_CARD = (
    "id, serial, digest, sealed, key_id, lot_id, product_id, face_value, balance, currency, status,"
    " expires_at, account_id, bound_at, transfers, created_at"
)
_ENTRY = (
    "id, card_id, account_id, kind, amount, balance_after, currency, request_id, reverses_id, created_at,"
    " profile"
)
_TOKEN_ROW = "id, token_hash, role, label, account_id, created_at, revoked_at, expires_at"  # noqa: S105 - column names, not a secret
_AUDIT = "id, at, actor, action, subject, detail, prev_hash, hash"
_REPORT = "id, at, kind, subject, amount, currency, detail, profile"
_LOSS = (
    "id, card_id, account_id, status, reason, reported_by, reported_at, reviewed_by, reviewed_at, note,"
    " new_card_id, amount"
)
_ORDER = (
    "id, account_id, request_id, amount, currency, status, client_address, created_at, expires_at,"
    " payment_id, paid_amount, paid_at, deliver_by, delivered_at, closed_at, close_reason, payment_method"
)


def _prefixed(alias: str, columns: str) -> str:
    """``columns`` each qualified by the table alias (built once, at import)."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


_ORDER_O = _prefixed("o", _ORDER)
_CARD_C = _prefixed("c", _CARD)
_TOKEN_ROW_T = _prefixed("t", _TOKEN_ROW)
_LOT_L = _prefixed("l", _LOT)

# What update_order may set besides the status; timestamps are converted on the way in.
_ORDER_CHANGES = {
    "payment_id": False,
    "paid_amount": False,
    "paid_at": True,
    "deliver_by": True,
    "delivered_at": True,
    "closed_at": True,
    "close_reason": False,
}


class SqlTx(ABC):
    """One unit of work: every call runs inside the transaction that opened it.

    A failed statement dooms the unit of work on both backends alike: PostgreSQL cannot go
    on after an error inside a transaction, so SQLite is held to the same rule and the
    transaction's exit rolls back and raises even when the caller caught the first error.
    """

    FOR_UPDATE = ""
    # The row lock an UPDATE that keeps the key takes (PostgreSQL: FOR NO KEY UPDATE), for
    # reading rows about to be changed: unlike FOR UPDATE it does not wait for (nor block)
    # transactions that merely insert rows referencing them (ledger rows: FOR KEY SHARE).
    FOR_NO_KEY_UPDATE = ""

    def _claim(self, alias: str) -> str:
        """The clause that makes a SELECT claim rows like a work queue: PostgreSQL locks each
        row of ``alias`` it returns and skips rows another transaction holds; SQLite's single
        writer has nobody to skip."""
        return ""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # The compliance profile (name@version) this unit of work runs under; every ledger
        # row it writes records it. Set by the domain at the start of the unit.
        self.judged_by: str | None = None
        self.failed: StorageError | None = None

    def _fail(self, error: StorageError) -> StorageError:
        self.failed = error
        return error

    # -- what each backend supplies
    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor: ...

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """One statement over many parameter rows; the rows it changed in all."""

    @abstractmethod
    def _ts(self, value: datetime) -> Any: ...

    @abstractmethod
    def _dt(self, value: Any) -> datetime: ...

    @abstractmethod
    def _lock(self, name: int) -> None: ...

    @abstractmethod
    def _insert_cards(self, rows: CardRows) -> None: ...

    # -- helpers
    def now(self) -> datetime:
        return self._clock()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._execute(sql, params).fetchall()

    def _odt(self, value: Any) -> datetime | None:
        return None if value is None else self._dt(value)

    def _product(self, row: Any) -> Product:
        denoms = self._all(
            "SELECT amount FROM product_denominations WHERE product_id = ? ORDER BY amount", (row[0],)
        )
        return Product(
            id=row[0],
            sku=row[1],
            name=row[2],
            currency=row[3],
            denominations=tuple(int(d[0]) for d in denoms),
            amount_range=None if row[4] is None else (int(row[4]), int(row[5])),
            validity_days=row[6],
            delivery=Delivery(row[7]),
            code_length=row[8],
            created_at=self._dt(row[9]),
            registered=bool(row[10]),
            retired_at=self._odt(row[11]),
        )

    def _lot(self, row: Any) -> Lot:
        return Lot(
            id=row[0],
            product_id=row[1],
            count=row[2],
            face_value=row[3],
            currency=row[4],
            status=LotStatus(row[5]),
            serial_prefix=row[6],
            serial_start=row[7],
            created_at=self._dt(row[8]),
            created_by=row[9],
            completed_at=self._odt(row[10]),
            voided_at=self._odt(row[11]),
            plaintext_exported=bool(row[12]),
            expires_at=self._odt(row[13]),
        )

    def _card(self, row: Any) -> Card:
        return Card(
            id=row[0],
            serial=row[1],
            digest=bytes(row[2]),
            sealed=bytes(row[3]),
            key_id=row[4],
            lot_id=row[5],
            product_id=row[6],
            face_value=row[7],
            balance=row[8],
            currency=row[9],
            status=CardStatus(row[10]),
            expires_at=self._odt(row[11]),
            account_id=row[12],
            bound_at=self._odt(row[13]),
            transfers=row[14],
            created_at=self._dt(row[15]),
        )

    def _entry(self, row: Any) -> LedgerEntry:
        return LedgerEntry(
            id=row[0],
            card_id=row[1],
            account_id=row[2],
            kind=LedgerKind(row[3]),
            amount=row[4],
            balance_after=row[5],
            currency=row[6],
            request_id=row[7],
            reverses_id=row[8],
            created_at=self._dt(row[9]),
            profile=row[10],
        )

    def _token(self, row: Any) -> Token:
        return Token(
            id=row[0],
            token_hash=bytes(row[1]),
            role=Role(row[2]),
            label=row[3],
            account_id=row[4],
            created_at=self._dt(row[5]),
            revoked_at=self._odt(row[6]),
            expires_at=self._odt(row[7]),
        )

    def _audit(self, row: Any) -> AuditEntry:
        return AuditEntry(
            id=row[0],
            at=self._dt(row[1]),
            actor=row[2],
            action=row[3],
            subject=row[4],
            detail=row[5],
            prev_hash=bytes(row[6]),
            hash=bytes(row[7]),
        )

    def _ledger(
        self,
        kind: LedgerKind,
        currency: str,
        amount: int,
        *,
        card_id: int | None = None,
        account_id: int | None = None,
        balance_after: int | None = None,
        request_id: str | None = None,
        reverses_id: int | None = None,
    ) -> LedgerEntry:
        row = self._one(
            "INSERT INTO ledger_entries (card_id, account_id, kind, amount, balance_after, currency,"
            f" request_id, reverses_id, created_at, profile) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_ENTRY}",
            (
                card_id,
                account_id,
                kind.value,
                amount,
                balance_after,
                currency,
                request_id,
                reverses_id,
                self._ts(self.now()),
                self.judged_by,
            ),
        )
        return self._entry(row)

    # -- catalog
    def create_product(self, new: NewProduct) -> Product:
        if bool(new.denominations) == (new.amount_range is not None):
            raise ValueError("a product has either fixed denominations or an amount range, not both")
        for d in new.denominations:
            _money(d, "denomination")
        if len(set(new.denominations)) != len(new.denominations):
            raise ValueError(f"duplicate denominations in {new.denominations}")
        if new.validity_days is not None:
            _positive(new.validity_days, "validity_days")
        _positive(new.code_length, "code_length")
        lo, hi = new.amount_range if new.amount_range is not None else (None, None)
        if lo is not None and hi is not None and _money(hi, "max amount") < _money(lo, "min amount"):
            raise ValueError(f"amount range {lo}..{hi} is empty")
        row = self._one(
            "INSERT INTO products (sku, name, currency, min_amount, max_amount, validity_days, delivery,"
            f" code_length, created_at, registered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_PRODUCT}",
            (
                new.sku,
                new.name,
                _currency(new.currency),
                lo,
                hi,
                new.validity_days,
                Delivery(new.delivery).value,
                new.code_length,
                self._ts(self.now()),
                bool(new.registered),
            ),
        )
        for d in new.denominations:
            self._execute("INSERT INTO product_denominations (product_id, amount) VALUES (?, ?)", (row[0], d))
        return self._product(row)

    def get_product(self, product_id: int) -> Product | None:
        row = self._one(f"SELECT {_PRODUCT} FROM products WHERE id = ?", (product_id,))
        return None if row is None else self._product(row)

    def get_product_by_sku(self, sku: str) -> Product | None:
        row = self._one(f"SELECT {_PRODUCT} FROM products WHERE sku = ?", (sku,))
        return None if row is None else self._product(row)

    def set_product_retired(self, product_id: int, retired_at: datetime | None) -> bool:
        """Retire the product at ``retired_at`` (None: put it back on sale); False when it
        already was in that state (nothing changed)."""
        if retired_at is None:
            cur = self._execute(
                "UPDATE products SET retired_at = NULL WHERE id = ? AND retired_at IS NOT NULL", (product_id,)
            )
        else:
            cur = self._execute(
                "UPDATE products SET retired_at = ? WHERE id = ? AND retired_at IS NULL",
                (self._ts(retired_at), product_id),
            )
        return cur.rowcount == 1

    def list_products(
        self, after_id: int = 0, limit: int = 100, *, on_sale_only: bool = False
    ) -> list[Product]:
        """Products after ``after_id`` in id order; ``on_sale_only``: not the retired ones."""
        sale = " AND retired_at IS NULL" if on_sale_only else ""
        rows = self._all(
            f"SELECT {_PRODUCT} FROM products WHERE id > ?{sale} ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [self._product(r) for r in rows]

    def code_lengths(self) -> list[int]:
        """Every code length some product uses, ascending."""
        return [int(r[0]) for r in self._all("SELECT DISTINCT code_length FROM products ORDER BY 1")]

    # -- accounts
    def ensure_account(self, external_id: str) -> Account:
        # Most calls name an account that exists: one read. A new one is inserted; when a
        # concurrent transaction inserted it first (PostgreSQL), the insert returns nothing
        # and the row it committed is read.
        find = "SELECT id, external_id, created_at FROM accounts WHERE external_id = ?"
        row = self._one(find, (external_id,))
        if row is None:
            row = self._one(
                "INSERT INTO accounts (external_id, created_at) VALUES (?, ?) ON CONFLICT (external_id)"
                " DO NOTHING RETURNING id, external_id, created_at",
                (external_id, self._ts(self.now())),
            )
        if row is None:
            row = self._one(find, (external_id,))
        return Account(row[0], row[1], self._dt(row[2]))

    def get_account(self, account_id: int) -> Account | None:
        row = self._one("SELECT id, external_id, created_at FROM accounts WHERE id = ?", (account_id,))
        return None if row is None else Account(row[0], row[1], self._dt(row[2]))

    # -- lots
    def reserve_serials(self, prefix: str, count: int) -> int:
        """The first of ``count`` fresh sequence numbers under ``prefix`` (1-based, never reused)."""
        _positive(count, "count")
        self._execute(
            "INSERT INTO serial_counters (prefix, next_value) VALUES (?, 1) ON CONFLICT (prefix) DO NOTHING",
            (prefix,),
        )
        row = self._one(
            "UPDATE serial_counters SET next_value = next_value + ? WHERE prefix = ? RETURNING next_value",
            (count, prefix),
        )
        return int(row[0]) - count

    def create_lot(
        self,
        product_id: int,
        count: int,
        face_value: int,
        *,
        serial_prefix: str,
        serial_start: int,
        created_by: str,
        valid_for: timedelta | None = None,
    ) -> Lot:
        """A lot in ``minting`` state. Commit it on its own, then fill it (see ``add_cards``).

        Its cards expire ``valid_for`` after the lot's creation (``Lot.expires_at``; None:
        never), the expiry to give ``add_cards``.
        """
        product = self.get_product(product_id)
        if product is None:
            raise NotFoundError(f"product {product_id} does not exist")
        if valid_for is not None and valid_for <= timedelta(0):
            raise ValueError(f"valid_for must be positive, got {valid_for}")
        now = self.now()
        row = self._one(
            "INSERT INTO lots (product_id, count, face_value, currency, status, serial_prefix, serial_start,"
            f" created_at, created_by, expires_at) VALUES (?, ?, ?, ?, 'minting', ?, ?, ?, ?, ?) RETURNING {_LOT}",
            (
                product_id,
                _positive(count, "count"),
                _money(face_value, "face value"),
                product.currency,
                serial_prefix,
                serial_start,
                self._ts(now),
                created_by,
                None if valid_for is None else self._ts(now + valid_for),
            ),
        )
        return self._lot(row)

    def get_lot(self, lot_id: int) -> Lot | None:
        row = self._one(f"SELECT {_LOT} FROM lots WHERE id = ?", (lot_id,))
        return None if row is None else self._lot(row)

    def list_lots(self, product_id: int | None = None, after_id: int = 0, limit: int = 100) -> list[Lot]:
        if product_id is None:
            rows = self._all(f"SELECT {_LOT} FROM lots WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        else:
            rows = self._all(
                f"SELECT {_LOT} FROM lots WHERE product_id = ? AND id > ? ORDER BY id LIMIT ?",
                (product_id, after_id, limit),
            )
        return [self._lot(r) for r in rows]

    def add_cards(self, lot: Lot, batch: CardBatch, expires_at: datetime | None) -> None:
        """Insert one chunk of ``lot``'s cards (call repeatedly, then ``complete_lot``).

        All chunks and ``complete_lot`` belong in one transaction: the cards become visible
        together with the lot's ``complete`` status, or never.
        """
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware (UTC)")
        # Stands in for the foreign keys the cards table does without (migrations.py).
        row = self._one("SELECT product_id, status FROM lots WHERE id = ?", (lot.id,))
        if row is None or row[0] != lot.product_id:
            raise NotFoundError(f"lot {lot.id} of product {lot.product_id} does not exist")
        if row[1] != LotStatus.MINTING.value:
            raise LotStateError(f"lot {lot.id} is {row[1]}, not minting")
        self._insert_cards(
            CardRows(
                serials=batch.serials,
                digests=np.ascontiguousarray(batch.digests),
                sealed=np.ascontiguousarray(batch.sealed),
                key_id=batch.key_id,
                lot=lot,
                expires_at=expires_at,
                created_at=self.now(),
            )
        )

    def complete_lot(self, lot_id: int) -> Lot:
        """Flip a filled lot to ``complete`` and announce its codes to every server's index."""
        row = self._one("SELECT count FROM lots WHERE id = ?", (lot_id,))
        if row is None:
            raise NotFoundError(f"lot {lot_id} does not exist")
        have = self._one("SELECT COUNT(*) FROM cards WHERE lot_id = ?", (lot_id,))[0]
        if have != row[0]:
            raise LotStateError(f"lot {lot_id} holds {have} cards, expected {row[0]}")
        now = self._ts(self.now())
        # Conditional: a recovery sweep may have voided this lot meanwhile; then nothing flips
        # and the whole fill rolls back.
        done = self._one(
            f"UPDATE lots SET status = 'complete', completed_at = ? WHERE id = ? AND status = 'minting'"
            f" RETURNING {_LOT}",
            (now, lot_id),
        )
        if done is None:
            raise LotStateError(f"lot {lot_id} is no longer minting")
        self._index_change(lot_id, "add")
        return self._lot(done)

    def void_lot(self, lot_id: int) -> Lot:
        before = self.get_lot(lot_id)
        if before is None:
            raise NotFoundError(f"lot {lot_id} does not exist")
        row = self._one(
            f"UPDATE lots SET status = 'void', voided_at = ? WHERE id = ? AND status <> 'void' RETURNING {_LOT}",
            (self._ts(self.now()), lot_id),
        )
        if row is None:
            raise LotStateError(f"lot {lot_id} is already void")
        self._execute("UPDATE cards SET status = 'void' WHERE lot_id = ?", (lot_id,))
        if before.status is LotStatus.COMPLETE:
            self._index_change(lot_id, "remove")
        return self._lot(row)

    def hold_lot_for_fill(self, lot_id: int) -> None:
        """First in a lot's fill transaction: while the fill runs, ``lot_filled_elsewhere``
        is True for that lot in every other transaction, of any process, and the hold ends
        with the fill however it ends (a killed process's too). PostgreSQL: the lot's row
        lock. SQLite: nothing to do, the fill holds the one write lock of the database."""
        if self.FOR_UPDATE:
            self._one(f"SELECT id FROM lots WHERE id = ?{self.FOR_UPDATE}", (lot_id,))

    def lot_filled_elsewhere(self, lot_id: int) -> bool:
        """Whether a live fill holds this lot (``hold_lot_for_fill``), without waiting for it.
        PostgreSQL: the row is locked (SKIP LOCKED sees no row; when free, this transaction
        now holds it). SQLite: never, in a write transaction (no fill can be running)."""
        if not self.FOR_UPDATE:
            return False
        return self._one(f"SELECT id FROM lots WHERE id = ?{self._claim('lots')}", (lot_id,)) is None

    def abandon_stale_lots(self, older_than: datetime) -> list[int]:
        """Void lots still ``minting`` that were created before ``older_than``.

        A lot whose filling process died keeps ``minting`` with no cards (the fill rolled
        back with the process). Voiding one that is in fact still being filled is safe:
        that fill's ``complete_lot`` then fails and rolls back.
        """
        rows = self._all(
            "SELECT id FROM lots WHERE status = 'minting' AND created_at < ? ORDER BY id",
            (self._ts(older_than),),
        )
        for (lot_id,) in rows:
            self.void_lot(lot_id)
        return [r[0] for r in rows]

    def mark_lot_exported(self, lot_id: int) -> bool:
        """True exactly once per lot: the caller that gets True may export the plaintext freely."""
        cur = self._execute(
            "UPDATE lots SET plaintext_exported = TRUE WHERE id = ? AND status = 'complete'"
            " AND plaintext_exported = FALSE",
            (lot_id,),
        )
        return cur.rowcount == 1

    def lot_cards(self, lot_id: int, after_id: int = 0, limit: int = 10_000) -> list[Card]:
        rows = self._all(
            f"SELECT {_CARD} FROM cards WHERE lot_id = ? AND id > ? ORDER BY id LIMIT ?",
            (lot_id, after_id, limit),
        )
        return [self._card(r) for r in rows]

    # How a backend concatenates a column over the rows of an aggregate: text, and bytes.
    CONCAT_TEXT = "group_concat({}, '')"
    CONCAT_BYTES = "CAST(group_concat({}, '') AS BLOB)"
    # (lot_id, id) of the first card of lot ?1 with an id above ?2, or of a later lot: one
    # probe of the cards_lot index. SQLite always plans this form so; PostgreSQL overrides it.
    NEXT_LOT_CARD = "SELECT lot_id, id FROM cards WHERE lot_id = ? AND id > ? ORDER BY id LIMIT 1"

    def lot_card_batches(
        self, lot_id: int, after_id: int = 0, limit: int = 10_000
    ) -> tuple[int, list[CardBatch]]:
        """A chunk of a lot's cards column-wise, for an export, sorted by serial: at most
        ``limit`` of them, the lot's cards whose ids lie in ``[first, first + limit)`` where
        ``first`` is the lowest id of the lot's cards above ``after_id``. Returned as runs
        sealed under one key (a single batch unless the lot was minted across a key rotation),
        with the highest id read (the next call's ``after_id``); no batches once the lot is done.

        One aggregate query hands back each column of the chunk concatenated, so no Python
        object is made per card: at 10^6 cards, building ``Card`` rows took most of an export.
        All the aggregates of a query consume the rows in one order, so the columns stay
        aligned whatever that order is; sorting by serial then fixes the order. Cards whose
        widths or keys differ take a row-by-row query instead.

        Both queries are bounded whatever plan the database picks: ``ORDER BY id LIMIT n``
        was not. Right after a large lot, before PostgreSQL has statistics on it, that plan
        read all the lot's remaining cards for every chunk (quadratic: 5-11 s at 10^6); with
        statistics it may walk the primary key through other lots' cards. The first query
        (``NEXT_LOT_CARD``) is a single probe of the ``cards_lot`` index.
        """
        _positive(limit, "limit")
        first = self._one(self.NEXT_LOT_CARD, (lot_id, after_id))
        if first is None or first[0] != lot_id:
            return after_id, []
        chunk = "SELECT id, serial, digest, sealed, key_id FROM cards WHERE lot_id = ? AND id >= ? AND id < ?"
        params = (lot_id, int(first[1]), int(first[1]) + limit)
        row = self._one(
            "SELECT COUNT(*), MAX(id), MIN(key_id), MAX(key_id), MIN(length(serial)), MAX(length(serial)),"
            " MIN(length(digest)), MAX(length(digest)), MIN(length(sealed)), MAX(length(sealed)),"
            f" {self.CONCAT_TEXT.format('serial')}, {self.CONCAT_BYTES.format('digest')},"
            f" {self.CONCAT_BYTES.format('sealed')} FROM ({chunk}) AS chunk",
            params,
        )
        n = int(row[0])
        if n == 0:
            return after_id, []
        last = int(row[1])
        key_id, serial_w, digest_w, sealed_w = int(row[2]), int(row[4]), int(row[6]), int(row[8])
        uniform = (row[3], row[5], row[7], row[9]) == (key_id, serial_w, digest_w, sealed_w)
        if uniform and min(serial_w, digest_w, sealed_w) > 0:
            serials, digests, sealed = str(row[10]).encode("utf-8"), bytes(row[11]), bytes(row[12])
            # Lengths count characters (text) and bytes: a non-ASCII serial shows up here.
            if (len(serials), len(digests), len(sealed)) == (n * serial_w, n * digest_w, n * sealed_w):
                ser = np.frombuffer(serials, dtype=f"S{serial_w}")
                dg = np.frombuffer(digests, dtype=np.uint8).reshape(n, digest_w)
                sl = np.frombuffer(sealed, dtype=np.uint8).reshape(n, sealed_w)
                if not (ser[1:] > ser[:-1]).all():
                    order = np.argsort(ser, kind="stable")
                    ser, dg, sl = ser[order], dg[order], sl[order]
                return last, [CardBatch(ser, dg, sl, key_id)]
        rows = sorted(
            (r[1], bytes(r[2]), bytes(r[3]), int(r[4]))
            for r in self._all(f"SELECT * FROM ({chunk}) AS chunk", params)
        )
        batches = []
        for (key, dw, sw), group in itertools.groupby(rows, lambda r: (r[3], len(r[1]), len(r[2]))):
            run = list(group)
            batches.append(
                CardBatch(
                    [r[0] for r in run],
                    np.frombuffer(b"".join(r[1] for r in run), np.uint8).reshape(len(run), dw),
                    np.frombuffer(b"".join(r[2] for r in run), np.uint8).reshape(len(run), sw),
                    key,
                )
            )
        return last, batches

    def count_lot_cards(self, lot_id: int) -> int:
        return int(self._one("SELECT COUNT(*) FROM cards WHERE lot_id = ?", (lot_id,))[0])

    # -- cards
    def get_card(self, card_id: int) -> Card | None:
        row = self._one(f"SELECT {_CARD} FROM cards WHERE id = ?", (card_id,))
        return None if row is None else self._card(row)

    def get_card_by_digest(self, digest: bytes) -> Card | None:
        row = self._one(f"SELECT {_CARD} FROM cards WHERE digest = ?", (bytes(digest),))
        return None if row is None else self._card(row)

    def _digests_in(self, count: int) -> str:
        """The condition matching ``digest`` against ``count`` bound digests (``_digests_param``)."""
        return f"digest IN ({', '.join('?' * count)})"

    def _digests_param(self, digests: list[bytes]) -> Sequence[Any]:
        return digests

    # A backend's own cap on digests per card_states query (see PostgreSQL's).
    STATES_CHUNK_MAX = STATES_CHUNK

    def card_states(self, digests: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """One ``CardState`` byte per row of ``digests`` (shape (n, width)), same order.

        The digests are queried in sorted order, ``STATES_CHUNK`` (or the backend's
        ``STATES_CHUNK_MAX``) per query: the database
        then walks its digest index forwards instead of jumping around it (about 40% faster
        on SQLite). Expiry is judged against ``now()``.
        """
        arr = np.asarray(digests, dtype=np.uint8)
        if arr.ndim != 2:
            raise ValueError(f"digests must have shape (n, width), got {arr.shape}")
        n, width = arr.shape
        out = np.zeros(n, dtype=np.uint8)
        if n == 0:
            return out
        keys = np.ascontiguousarray(arr).view(f"S{width}").reshape(n)
        order = np.argsort(keys)  # bytewise, like the databases compare blobs
        ordered = keys[order]
        raw = ordered.tobytes()  # not .tolist(): numpy would drop trailing NUL bytes
        states = np.zeros(n, dtype=np.uint8)
        now = self._ts(self.now())
        step = min(STATES_CHUNK, self.STATES_CHUNK_MAX)
        for start in range(0, n, step):
            stop = min(n, start + step)
            params = [raw[i * width : (i + 1) * width] for i in range(start, stop)]
            rows = self._all(
                "SELECT digest, CASE WHEN status = 'void' THEN ? WHEN status = 'frozen' THEN ?"
                " WHEN expires_at IS NOT NULL AND expires_at <= ? THEN ? ELSE ? END"
                f" FROM cards WHERE {self._digests_in(stop - start)}",
                (
                    int(CardState.VOID),
                    int(CardState.FROZEN),
                    now,
                    int(CardState.EXPIRED),
                    int(CardState.ACTIVE),
                    *self._digests_param(params),
                ),
            )
            if not rows:
                continue
            found = np.frombuffer(b"".join(bytes(r[0]) for r in rows), dtype=f"S{width}")
            got = np.fromiter((r[1] for r in rows), dtype=np.uint8, count=len(rows))
            chunk = ordered[start:stop]
            # Equal digests sit side by side: mark the first of each run, then spread.
            first = np.searchsorted(chunk, found, side="left")
            last = np.searchsorted(chunk, found, side="right")
            mark = np.zeros(stop - start + 1, dtype=np.int64)
            np.add.at(mark, first, got.astype(np.int64))
            np.add.at(mark, last, -got.astype(np.int64))
            states[start:stop] = np.cumsum(mark[:-1]).astype(np.uint8)
        out[order] = states
        return out

    def cards_by_digests(self, digests: Sequence[bytes]) -> list[Card]:
        """The cards having any of ``digests`` (in no particular order)."""
        out: list[Card] = []
        step = min(STATES_CHUNK, self.STATES_CHUNK_MAX)
        for start in range(0, len(digests), step):
            part = [bytes(d) for d in digests[start : start + step]]
            rows = self._all(
                f"SELECT {_CARD} FROM cards WHERE {self._digests_in(len(part))}", self._digests_param(part)
            )
            out.extend(self._card(r) for r in rows)
        return out

    def add_to_blacklist(self, entries: Sequence[tuple[bytes, int | None]], source: str) -> int:
        """Record (digest, matching card id or None) pairs; returns how many were new."""
        if not entries:
            return 0
        at = self._ts(self.now())
        return self._executemany(
            "INSERT INTO blacklist (digest, card_id, source, imported_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            [(bytes(d), card_id, source, at) for d, card_id in entries],
        )

    def get_card_by_serial(self, serial: str) -> Card | None:
        row = self._one(f"SELECT {_CARD} FROM cards WHERE serial = ?", (serial,))
        return None if row is None else self._card(row)

    def account_cards(self, account_id: int) -> list[Card]:
        rows = self._all(f"SELECT {_CARD} FROM cards WHERE account_id = ? ORDER BY id", (account_id,))
        return [self._card(r) for r in rows]

    def set_card_status(
        self, card_id: int, status: CardStatus, *, only_from: Iterable[CardStatus]
    ) -> Card | None:
        """Move a card to ``status`` if it is in one of ``only_from``; None when it was not."""
        allowed = [CardStatus(s).value for s in only_from]
        if not allowed:
            raise ValueError("only_from must name at least one status")
        marks = ", ".join("?" * len(allowed))
        row = self._one(
            f"UPDATE cards SET status = ? WHERE id = ? AND status IN ({marks}) RETURNING {_CARD}",
            (CardStatus(status).value, card_id, *allowed),
        )
        if row is None:
            return None
        card = self._card(row)
        self._card_change(card.id)
        kind = {
            CardStatus.FROZEN: LedgerKind.FREEZE,
            CardStatus.ACTIVE: LedgerKind.UNFREEZE,
            CardStatus.VOID: LedgerKind.VOID,
        }[card.status]
        self._ledger(
            kind, card.currency, 0, card_id=card.id, account_id=card.account_id, balance_after=card.balance
        )
        return card

    def _expired(self, card: Card) -> bool:
        return card.expires_at is not None and card.expires_at <= self.now()

    def bind_card(self, card_id: int, account_id: int) -> BindResult:
        now = self._ts(self.now())
        row = self._one(
            "UPDATE cards SET account_id = ?, bound_at = ? WHERE id = ? AND account_id IS NULL"
            f" AND status = 'active' AND (expires_at IS NULL OR expires_at > ?) RETURNING {_CARD}",
            (account_id, now, card_id, now),
        )
        if row is not None:
            card = self._card(row)
            kind = LedgerKind.BIND_TRANSFER if card.transfers > 0 else LedgerKind.BIND
            entry = self._ledger(
                kind, card.currency, 0, card_id=card.id, account_id=account_id, balance_after=card.balance
            )
            return BindResult(BindOutcome.BOUND, card, entry)
        found = self.get_card(card_id)
        if found is None:
            return BindResult(BindOutcome.NOT_FOUND, None)
        card = found
        if card.account_id == account_id:
            return BindResult(BindOutcome.ALREADY_BOUND_HERE, card)
        if card.account_id is not None:
            return BindResult(BindOutcome.ALREADY_BOUND, card)
        if card.status is CardStatus.FROZEN:
            return BindResult(BindOutcome.FROZEN, card)
        if card.status is CardStatus.VOID:
            return BindResult(BindOutcome.VOID, card)
        return BindResult(BindOutcome.EXPIRED, card)

    def unbind_card(self, card_id: int, account_id: int) -> BindResult:
        row = self._one(
            "UPDATE cards SET account_id = NULL, bound_at = NULL, transfers = transfers + 1"
            f" WHERE id = ? AND account_id = ? RETURNING {_CARD}",
            (card_id, account_id),
        )
        if row is None:
            card = self.get_card(card_id)
            return BindResult(BindOutcome.NOT_FOUND if card is None else BindOutcome.NOT_BOUND, card)
        card = self._card(row)
        entry = self._ledger(
            LedgerKind.UNBIND,
            card.currency,
            0,
            card_id=card.id,
            account_id=account_id,
            balance_after=card.balance,
        )
        return BindResult(BindOutcome.BOUND, card, entry)

    def count_binds(self, account_id: int, since: datetime, *, transferred_only: bool = False) -> int:
        kinds = ("bind_transfer",) if transferred_only else ("bind", "bind_transfer")
        marks = ", ".join("?" * len(kinds))
        row = self._one(
            f"SELECT COUNT(*) FROM ledger_entries WHERE account_id = ? AND kind IN ({marks}) AND created_at >= ?",
            (account_id, *kinds, self._ts(since)),
        )
        return int(row[0])

    def account_balances(self, account_id: int) -> dict[str, int]:
        """Spendable balance per currency: active, unexpired cards bound to the account."""
        rows = self._all(
            "SELECT currency, COALESCE(SUM(balance), 0) FROM cards WHERE account_id = ? AND status = 'active'"
            " AND (expires_at IS NULL OR expires_at > ?) GROUP BY currency ORDER BY currency",
            (account_id, self._ts(self.now())),
        )
        return {r[0]: int(r[1]) for r in rows}

    def account_total(self, account_id: int, kind: LedgerKind, since: datetime, currency: str) -> int:
        """Sum of |amount| of ``kind`` movements in ``currency`` since ``since`` (daily limits)."""
        row = self._one(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE account_id = ? AND kind = ?"
            " AND currency = ? AND created_at >= ?",
            (account_id, LedgerKind(kind).value, currency, self._ts(since)),
        )
        return abs(int(row[0]))

    def note_device(self, account_id: int, device: str) -> tuple[bool, int]:
        """Remember that the account used ``device``; (first time?, devices known before)."""
        known = int(self._one("SELECT COUNT(*) FROM account_devices WHERE account_id = ?", (account_id,))[0])
        added = self._execute(
            "INSERT INTO account_devices (account_id, device, first_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (account_id, device) DO NOTHING",
            (account_id, device, self._ts(self.now())),
        ).rowcount
        return added == 1, known

    def lock_account(self, account_id: int) -> None:
        """Hold the account's row until commit, so limit checks on it run one at a time
        (SQLite's single writer already serializes everything)."""
        # FOR NO KEY UPDATE, not FOR UPDATE: every ledger row naming the account takes a
        # FOR KEY SHARE lock on it (the foreign key), which FOR UPDATE would block. A
        # transfer or reversal holding a card and writing its ledger row would then wait
        # for a redemption holding the account and waiting for that card: a deadlock.
        self._one(f"SELECT id FROM accounts WHERE id = ?{self.FOR_NO_KEY_UPDATE}", (account_id,))

    # -- compliance reports
    def add_report(
        self, kind: str, subject: str, detail: str, *, amount: int | None = None, currency: str | None = None
    ) -> Report:
        if self.judged_by is None:
            raise StorageError("a report needs the profile that raised it (judged_by)")
        row = self._one(
            "INSERT INTO reports (at, kind, subject, amount, currency, detail, profile)"
            f" VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_REPORT}",
            (self._ts(self.now()), kind, subject, amount, currency, detail, self.judged_by),
        )
        return self._report(row)

    def list_reports(self, kind: str | None = None, after_id: int = 0, limit: int = 100) -> list[Report]:
        if kind is None:
            rows = self._all(
                f"SELECT {_REPORT} FROM reports WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            )
        else:
            rows = self._all(
                f"SELECT {_REPORT} FROM reports WHERE kind = ? AND id > ? ORDER BY id LIMIT ?",
                (kind, after_id, limit),
            )
        return [self._report(r) for r in rows]

    _DEBIT = (
        "UPDATE cards SET balance = balance - ? WHERE id = ? AND status = 'active' AND currency = ?"
        " AND balance >= ? AND (expires_at IS NULL OR expires_at > ?)"
    )

    def _debit(self, card_id: int, amount: int, currency: str, request_id: str | None) -> LedgerEntry | None:
        """The guarded balance UPDATE and its ledger row, or None when the guard refused.

        Two statements here; a backend that can run both as one overrides this."""
        now = self._ts(self.now())
        row = self._one(
            self._DEBIT + " RETURNING balance, account_id", (amount, card_id, currency, amount, now)
        )
        if row is None:
            return None
        return self._ledger(
            LedgerKind.REDEEM,
            currency,
            -amount,
            card_id=card_id,
            account_id=row[1],
            balance_after=row[0],
            request_id=request_id,
        )

    def _report(self, row: Any) -> Report:
        return Report(row[0], self._dt(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])

    # -- money
    def redeem(self, card_id: int, amount: int, currency: str, request_id: str | None = None) -> MoneyResult:
        """Take ``amount`` off the card if it holds that much; one conditional UPDATE decides.

        The guard ``balance >= amount`` is evaluated against the latest committed balance
        (SQLite: one writer; PostgreSQL: the row lock, then a re-check of the WHERE clause),
        so concurrent redemptions can never take a card below zero.
        """
        _money(amount)
        entry = self._debit(card_id, amount, currency, request_id)
        if entry is not None:
            return MoneyResult(MoneyOutcome.OK, int(entry.balance_after or 0), entry)
        card = self.get_card(card_id)
        if card is None:
            return MoneyResult(MoneyOutcome.NOT_FOUND, None)
        if card.currency != currency:
            outcome = MoneyOutcome.CURRENCY_MISMATCH
        elif card.status is not CardStatus.ACTIVE:
            outcome = MoneyOutcome.NOT_ACTIVE
        elif self._expired(card):
            outcome = MoneyOutcome.EXPIRED
        else:
            outcome = MoneyOutcome.INSUFFICIENT
        return MoneyResult(outcome, card.balance)

    def reverse(self, redeem_entry_id: int, amount: int, request_id: str | None = None) -> MoneyResult:
        """Give back up to what a redemption took, never more in total over all its reversals."""
        _money(amount)
        src = self._one(
            "SELECT card_id, kind, amount, currency, account_id FROM ledger_entries WHERE id = ?",
            (redeem_entry_id,),
        )
        if src is None:
            return MoneyResult(MoneyOutcome.NOT_FOUND, None)
        card_id, kind, taken, currency = src[0], src[1], -int(src[2]), src[3]
        if kind != LedgerKind.REDEEM.value or card_id is None:
            return MoneyResult(MoneyOutcome.NOT_REVERSIBLE, None)
        # Lock the card first so that two reversals of one redemption see each other's rows.
        card_row = self._one(f"SELECT status, balance FROM cards WHERE id = ?{self.FOR_UPDATE}", (card_id,))
        if card_row[0] == CardStatus.VOID.value:
            return MoneyResult(MoneyOutcome.NOT_ACTIVE, int(card_row[1]))
        given = self._one(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE reverses_id = ?", (redeem_entry_id,)
        )[0]
        if amount > taken - int(given):
            return MoneyResult(MoneyOutcome.NOT_REVERSIBLE, int(card_row[1]))
        row = self._one(
            "UPDATE cards SET balance = balance + ? WHERE id = ? AND balance + ? <= face_value"
            " RETURNING balance, account_id",
            (amount, card_id, amount),
        )
        if row is None:
            return MoneyResult(MoneyOutcome.NOT_REVERSIBLE, int(card_row[1]))
        entry = self._ledger(
            LedgerKind.REVERSE,
            currency,
            amount,
            card_id=card_id,
            account_id=row[1],
            balance_after=row[0],
            request_id=request_id,
            reverses_id=redeem_entry_id,
        )
        return MoneyResult(MoneyOutcome.OK, int(row[0]), entry)

    def lock_cards(self, *card_ids: int) -> dict[int, Card]:
        """The cards named, each row locked until commit, taken in ascending id order.

        One fixed order for every caller, so two transactions locking the same cards from
        opposite ends (a transfer A->B against B->A) queue instead of deadlocking on
        PostgreSQL; SQLite's single writer already runs them one at a time. Unknown ids are
        simply absent from the answer."""
        cards: dict[int, Card] = {}
        for card_id in sorted(set(card_ids)):
            row = self._one(f"SELECT {_CARD} FROM cards WHERE id = ?{self.FOR_NO_KEY_UPDATE}", (card_id,))
            if row is not None:
                cards[card_id] = self._card(row)
        return cards

    def transfer_balance(
        self, from_card_id: int, to_card_id: int, amount: int, currency: str, request_id: str | None = None
    ) -> tuple[LedgerEntry, LedgerEntry] | None:
        """Move ``amount`` from one card onto another: two guarded UPDATEs and their linked
        ledger rows (``transfer_out`` -amount on the source, ``transfer_in`` +amount on the
        target, whose ``reverses_id`` names the source's entry), or None and nothing changed.

        The guards hold the rules a move can never break, whatever the caller checked before:
        both cards active, unexpired and of ``currency``, the source holding the amount, the
        target staying within its face value. Call ``lock_cards`` on both first (PostgreSQL):
        the rows are then the ones the caller judged, and the lock order is the fixed one.
        """
        _money(amount)
        if from_card_id == to_card_id:
            raise ValueError("a transfer needs two different cards")
        now = self._ts(self.now())
        out = self._one(
            self._DEBIT + " RETURNING balance, account_id", (amount, from_card_id, currency, amount, now)
        )
        if out is None:
            return None
        into = self._one(
            "UPDATE cards SET balance = balance + ? WHERE id = ? AND status = 'active' AND currency = ?"
            " AND balance + ? <= face_value AND (expires_at IS NULL OR expires_at > ?)"
            " RETURNING balance, account_id",
            (amount, to_card_id, currency, amount, now),
        )
        if into is None:
            # The debit above is undone by the caller's rollback: say so by failing the unit.
            raise self._fail(StorageError("transfer target refused the amount after the source paid it"))
        moved_out = self._ledger(
            LedgerKind.TRANSFER_OUT,
            currency,
            -amount,
            card_id=from_card_id,
            account_id=out[1],
            balance_after=out[0],
            request_id=request_id,
        )
        moved_in = self._ledger(
            LedgerKind.TRANSFER_IN,
            currency,
            amount,
            card_id=to_card_id,
            account_id=into[1],
            balance_after=into[0],
            request_id=request_id,
            reverses_id=moved_out.id,
        )
        return moved_out, moved_in

    def ledger_totals(self, card_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Per card: (the sum of all its ledger amounts, what redemptions took net of
        reversals), in one statement; cards without entries are absent."""
        if not card_ids:
            return {}
        marks = ", ".join("?" * len(card_ids))
        rows = self._all(
            "SELECT card_id, COALESCE(SUM(amount), 0),"
            " COALESCE(SUM(CASE WHEN kind IN ('redeem', 'reverse') THEN -amount ELSE 0 END), 0)"
            f" FROM ledger_entries WHERE card_id IN ({marks}) GROUP BY card_id",
            tuple(card_ids),
        )
        return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def get_ledger_entry(self, entry_id: int) -> LedgerEntry | None:
        row = self._one(f"SELECT {_ENTRY} FROM ledger_entries WHERE id = ?", (entry_id,))
        return None if row is None else self._entry(row)

    def list_ledger(
        self,
        *,
        card_id: int | None = None,
        account_id: int | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[LedgerEntry]:
        """Newest first; pass the last entry's id as ``before_id`` for the next page."""
        if (card_id is None) == (account_id is None):
            raise ValueError("list_ledger needs exactly one of card_id or account_id")
        column, value = ("card_id", card_id) if card_id is not None else ("account_id", account_id)
        bound = before_id if before_id is not None else 2**63 - 1
        rows = self._all(
            f"SELECT {_ENTRY} FROM ledger_entries WHERE {column} = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (value, bound, limit),
        )
        return [self._entry(r) for r in rows]

    # -- idempotency
    def claim_idempotency(self, scope: str, key: str, fingerprint: bytes) -> IdempotencyClaim:
        """Claim ``key`` for this request inside the transaction that will make its effect.

        New key: recorded, ``replay`` None; do the work, then ``complete_idempotency``.
        Known key, same fingerprint: ``replay`` is the stored response; do nothing else.
        Known key, other fingerprint: ``IdempotencyConflictError``. A concurrent first claim of the
        same key waits on the primary key until the other transaction ends.
        """
        cur = self._execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (scope, key) DO NOTHING",
            (scope, key, bytes(fingerprint), self._ts(self.now())),
        )
        if cur.rowcount == 1:
            return IdempotencyClaim(scope, key, None)
        return self._earlier_claim(scope, key, fingerprint)

    def _earlier_claim(self, scope: str, key: str, fingerprint: bytes) -> IdempotencyClaim:
        """The answer stored for a key claimed before: its replay, or IdempotencyConflictError
        when it was claimed with other parameters."""
        row = self._one(
            "SELECT fingerprint, response FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key)
        )
        if bytes(row[0]) != bytes(fingerprint):
            raise IdempotencyConflictError(scope, key)
        if row[1] is None:
            # Claim and response commit together, so only a caller that committed without
            # complete_idempotency can leave this behind: a bug, not a state to replay.
            raise StorageError(f"idempotency key {key!r} for {scope} was claimed but never completed")
        return IdempotencyClaim(scope, key, bytes(row[1]))

    def complete_idempotency(self, scope: str, key: str, response: bytes) -> None:
        cur = self._execute(
            "UPDATE idempotency_keys SET response = ? WHERE scope = ? AND key = ? AND response IS NULL",
            (bytes(response), scope, key),
        )
        if cur.rowcount != 1:
            raise NotFoundError(f"no open idempotency claim {key!r} for {scope}")

    def probe(self) -> None:
        """Rewrite the health probe's row: a small write that has to reach the disk."""
        self._execute(
            "INSERT INTO storage_probe (id, probed_at) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
            (self._ts(self.now()),),
        )

    def replace_idempotency(self, scope: str, key: str, response: bytes) -> None:
        """Point a completed claim at a new answer: a request whose first outcome was never
        finished (a lot whose minting died) and which was done again under the same key."""
        cur = self._execute(
            "UPDATE idempotency_keys SET response = ? WHERE scope = ? AND key = ? AND response IS NOT NULL",
            (bytes(response), scope, key),
        )
        if cur.rowcount != 1:
            raise NotFoundError(f"no completed idempotency claim {key!r} for {scope}")

    def purge_idempotency(self, before: datetime, limit: int | None = None) -> int:
        """Forget request ids recorded before ``before`` (past the idempotency window): at
        most ``limit`` of them, oldest first (None: all), so a purge runs in short
        transactions; how many went."""
        if limit is None:
            return self._execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (self._ts(before),)
            ).rowcount
        _positive(limit, "limit")
        return self._execute(
            "DELETE FROM idempotency_keys WHERE (scope, key) IN (SELECT scope, key FROM idempotency_keys"
            " WHERE created_at < ? ORDER BY created_at LIMIT ?)",
            (self._ts(before), limit),
        ).rowcount

    # -- failed-attempt counters
    def _windows(self, window_seconds: int, at: datetime | None) -> tuple[datetime, datetime]:
        """The starts of the window holding ``at`` (default: now) and of the one before."""
        _positive(window_seconds, "window_seconds")
        secs = ((self.now() if at is None else at) - _EPOCH) // timedelta(seconds=1)
        start = _EPOCH + timedelta(seconds=secs - secs % window_seconds)
        return start - timedelta(seconds=window_seconds), start

    def record_attempt(
        self, kind: AttemptKind, subject: str, window_seconds: int, at: datetime | None = None
    ) -> Attempts:
        """Count one failed attempt in the current window; returns the counts after it.

        One upsert both increments and reads, so N concurrent failures see N distinct counts.
        """
        previous, start = self._windows(window_seconds, at)
        key = (AttemptKind(kind).value, subject, window_seconds)
        row = self._one(
            "INSERT INTO attempt_counters (subject_kind, subject, window_seconds, window_start, count)"
            " VALUES (?, ?, ?, ?, 1) ON CONFLICT (subject_kind, subject, window_seconds, window_start)"
            " DO UPDATE SET count = attempt_counters.count + 1 RETURNING count,"
            " (SELECT p.count FROM attempt_counters p WHERE p.subject_kind = ? AND p.subject = ?"
            " AND p.window_seconds = ? AND p.window_start = ?)",
            (*key, self._ts(start), *key, self._ts(previous)),
        )
        return Attempts(
            int(row[0]), int(row[1] or 0), start + timedelta(seconds=window_seconds), window_seconds
        )

    def hold_attempts(
        self, kind: AttemptKind, subject: str, window_seconds: int, at: datetime | None = None
    ) -> Attempts:
        """The failures counted in the current and the previous window, with both counters'
        rows held until commit: concurrent attempts on one subject then run one at a time,
        so none is judged against a count that is about to grow (PostgreSQL; SQLite's single
        writer serializes them anyway). Both rows, not just the current one: at a window
        edge an attempt judged in the new window must wait for one still recording in the
        old. Rows lock in window order, so two holders never wait on each other in a cycle."""
        previous, start = self._windows(window_seconds, at)
        key = (AttemptKind(kind).value, subject, window_seconds)
        rows = self._all(
            "INSERT INTO attempt_counters (subject_kind, subject, window_seconds, window_start, count)"
            " VALUES (?, ?, ?, ?, 0), (?, ?, ?, ?, 0)"
            " ON CONFLICT (subject_kind, subject, window_seconds, window_start)"
            " DO UPDATE SET count = attempt_counters.count"
            " RETURNING CASE WHEN window_start = ? THEN 1 ELSE 0 END, count",
            (*key, self._ts(previous), *key, self._ts(start), self._ts(start)),
        )
        counts = {int(current): int(n) for current, n in rows}
        return Attempts(counts[1], counts[0], start + timedelta(seconds=window_seconds), window_seconds)

    def attempt_count(
        self, kind: AttemptKind, subject: str, window_seconds: int, at: datetime | None = None
    ) -> Attempts:
        previous, start = self._windows(window_seconds, at)
        row = self._one(
            "SELECT COALESCE(SUM(CASE WHEN window_start = ? THEN count ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN window_start = ? THEN count ELSE 0 END), 0)"
            " FROM attempt_counters WHERE subject_kind = ? AND subject = ? AND window_seconds = ?"
            " AND window_start IN (?, ?)",
            (
                self._ts(start),
                self._ts(previous),
                AttemptKind(kind).value,
                subject,
                window_seconds,
                self._ts(previous),
                self._ts(start),
            ),
        )
        return Attempts(int(row[0]), int(row[1]), start + timedelta(seconds=window_seconds), window_seconds)

    def clear_attempts(self, kind: AttemptKind, subject: str) -> None:
        self._execute(
            "DELETE FROM attempt_counters WHERE subject_kind = ? AND subject = ?",
            (AttemptKind(kind).value, subject),
        )

    def purge_attempts(self, at: datetime, limit: int | None = None) -> int:
        """Forget the counters no judgement made at or after ``at`` reads: those whose
        window is neither the current nor the previous one at ``at``. At most ``limit``
        rows (None: all), so a purge runs in short transactions; how many went."""
        if limit is not None:
            _positive(limit, "limit")
        total = 0
        sizes = [int(w) for (w,) in self._all("SELECT DISTINCT window_seconds FROM attempt_counters")]
        for window_seconds in sorted(sizes):
            if limit is not None and total >= limit:
                break
            oldest_kept = self._ts(self._windows(window_seconds, at)[0])
            if limit is None:
                total += self._execute(
                    "DELETE FROM attempt_counters WHERE window_seconds = ? AND window_start < ?",
                    (window_seconds, oldest_kept),
                ).rowcount
                continue
            total += self._execute(
                "DELETE FROM attempt_counters WHERE (subject_kind, subject, window_seconds, window_start) IN"
                " (SELECT subject_kind, subject, window_seconds, window_start FROM attempt_counters"
                " WHERE window_seconds = ? AND window_start < ? LIMIT ?)",
                (window_seconds, oldest_kept, limit - total),
            ).rowcount
        return total

    # -- metrics
    def gauges(self, tiers: Mapping[AttemptKind, tuple[int, int]]) -> Gauges:
        """What the metrics read from the database at a scrape: four aggregate queries, no
        row locks (server/observe.py). ``tiers``: attempt kind -> (lock window in seconds,
        failures that lock) from the compliance profile."""
        now = self.now()
        pool: dict[tuple[str, str], int] = {}
        for sku, state, n in self._all(
            "SELECT pr.sku, p.state, COUNT(*) FROM pool_cards p JOIN products pr ON pr.id = p.product_id"
            " GROUP BY pr.sku, p.state"
        ):
            pool[(sku, state)] = int(n)
        live = self._one(
            "SELECT COUNT(*), COALESCE(SUM(quantity), 0) FROM orders WHERE status = 'reserved' AND expires_at > ?",
            (self._ts(now),),
        )
        audit = self._one("SELECT COALESCE(MAX(id), 0) FROM audit_log")
        # Per kind: the failures counted in its current lock window, and the subjects whose
        # current and previous windows together reach the limit (locked, as the domain
        # judges it). Account subjects with a ':' are other counters kept in the same table
        # (views, transfer binds), not failures.
        attempts: dict[str, int] = {}
        locked: dict[str, int] = {}
        for kind, (window, lock_after) in sorted(tiers.items()):
            previous, start = self._windows(window, now)
            # No subject of another kind has a ':' to exclude; '' matches nothing.
            other = "%:%" if kind is AttemptKind.ACCOUNT else ""
            row = self._one(
                "SELECT COALESCE(SUM(current), 0), COALESCE(SUM(CASE WHEN recent >= ? THEN 1 ELSE 0 END), 0)"
                " FROM (SELECT SUM(CASE WHEN window_start = ? THEN count ELSE 0 END) AS current,"
                " SUM(count) AS recent FROM attempt_counters WHERE subject_kind = ? AND window_seconds = ?"
                " AND window_start IN (?, ?) AND subject NOT LIKE ? GROUP BY subject) s",
                (lock_after, self._ts(start), kind.value, window, self._ts(previous), self._ts(start), other),
            )
            if int(row[0]) or int(row[1]):
                attempts[kind.value] = int(row[0])
                locked[kind.value] = int(row[1])
        return Gauges(pool, int(live[0]), int(live[1]), int(audit[0]), attempts, locked)

    # -- tokens
    def create_token(
        self,
        token_hash: bytes,
        role: Role,
        label: str = "",
        account_id: int | None = None,
        expires_at: datetime | None = None,
    ) -> Token:
        row = self._one(
            "INSERT INTO tokens (token_hash, role, label, account_id, created_at, expires_at)"
            f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {_TOKEN_ROW}",
            (
                bytes(token_hash),
                Role(role).value,
                label,
                account_id,
                self._ts(self.now()),
                None if expires_at is None else self._ts(expires_at),
            ),
        )
        return self._token(row)

    def find_token(self, token_hash: bytes) -> Token | None:
        row = self._one(f"SELECT {_TOKEN_ROW} FROM tokens WHERE token_hash = ?", (bytes(token_hash),))
        return None if row is None else self._token(row)

    def list_tokens(self, after_id: int = 0, limit: int = 100) -> list[Token]:
        rows = self._all(
            f"SELECT {_TOKEN_ROW} FROM tokens WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [self._token(r) for r in rows]

    def revoke_token(self, token_id: int) -> bool:
        cur = self._execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (self._ts(self.now()), token_id),
        )
        return cur.rowcount == 1

    # -- audit
    def append_audit(self, actor: str, action: str, subject: str, detail: str = "") -> AuditEntry:
        """Chain one event onto the audit log.

        Appends are serialized until commit (PostgreSQL: an advisory lock), so call this
        last in a transaction to keep that window short.
        """
        self._lock(LOCK_AUDIT)
        last_id, prev = self._audit_head()
        seq = last_id + 1
        at = self.now()
        digest = audit_hash(prev, seq, at, actor, action, subject, detail)
        self._execute(
            "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, self._ts(at), actor, action, subject, detail, prev, digest),
        )
        self._audit_appended(seq, digest)
        return AuditEntry(seq, at, actor, action, subject, detail, prev, digest)

    def _audit_head(self) -> tuple[int, bytes]:
        """The chain's last (id, hash), (0, genesis) when empty; the caller holds the audit
        lock."""
        last = self._one("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        return (0, GENESIS_HASH) if last is None else (int(last[0]), bytes(last[1]))

    def _audit_appended(self, seq: int, digest: bytes) -> None:
        """Told of each event this unit of work chained (a backend may keep the head)."""
        return None

    def _events_head(self) -> int:
        """The newest outbox event id (0 when none); the caller holds the events lock."""
        return int(self._one("SELECT COALESCE(MAX(id), 0) FROM events")[0])

    def _event_appended(self, event_id: int) -> None:
        """Told of each outbox event this unit of work wrote."""
        return None

    def audit_rows(self, after_id: int = 0, limit: int = 10_000) -> list[tuple[Any, ...]]:
        """Raw audit rows for the verifier: (id, at in µs since the epoch, actor, action,
        subject, detail, prev_hash, hash), no objects per row."""
        return self._all(
            f"SELECT id, {self._epoch_us('at')}, actor, action, subject, detail, prev_hash, hash FROM audit_log"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )

    # Separates the text fields of one page of audit_columns: a field that contains it is
    # detected (the count of separators is off) and that page is read row by row instead.
    AUDIT_SEP = "\x1f"

    def audit_columns(self, after_id: int = 0, limit: int = 65_536) -> AuditColumns:
        """The events with ids in ``(after_id, after_id + limit]`` column-wise, in id order (a
        range: fewer than ``limit`` where ids are missing, none past ``audit_last_id``). One
        aggregate query returns each column of the range concatenated (``_audit_page``), so
        no Python object is made per event; a range the aggregate cannot represent exactly
        (a text field holding the separator, a hash of the wrong size, ids with a gap) is read
        row by row instead."""
        _positive(limit, "limit")
        page = self._audit_page(after_id, limit)
        return page if page is not None else self._audit_page_rows(after_id, limit)

    def audit_last_id(self) -> int:
        """The highest event id on the chain (0 when empty)."""
        return int(self._one("SELECT COALESCE(MAX(id), 0) FROM audit_log")[0])

    def _audit_page(self, after_id: int, limit: int) -> AuditColumns | None:
        """``audit_columns`` in one aggregate query, or None when only rows will do."""
        return None

    def _audit_page_rows(self, after_id: int, limit: int) -> AuditColumns:
        rows = self._all(
            f"SELECT id, {self._epoch_us('at')}, actor, action, subject, detail, prev_hash, hash FROM audit_log"
            " WHERE id > ? AND id <= ? ORDER BY id",
            (after_id, after_id + limit),
        )
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        at_us = np.array([r[1] for r in rows], dtype=np.int64)
        fields = [str(f).encode("utf-8", "surrogatepass") for r in rows for f in r[2:6]]
        offsets = np.zeros(len(fields) + 1, dtype=np.int64)
        np.cumsum([len(f) for f in fields], out=offsets[1:])
        prevs, hashes = [bytes(r[6]) for r in rows], [bytes(r[7]) for r in rows]
        if any(len(h) != 32 for h in prevs + hashes):
            # A hash cut to another size cannot be packed 32 bytes per event: in its place goes
            # a hash of it, which no event's (or link's) hash matches short of a preimage.
            prevs = [_as_hash32(h) for h in prevs]
            hashes = [_as_hash32(h) for h in hashes]
        return AuditColumns(ids, at_us, b"".join(fields), offsets, b"".join(prevs), b"".join(hashes))

    def _audit_split(self, n: int, text: bytes) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]] | None:
        """The ``4n`` text fields joined by ``AUDIT_SEP`` as (data, offsets), or None when
        the separator count shows one of them contains it."""
        buf = np.frombuffer(text, dtype=np.uint8)
        seps = np.flatnonzero(buf == ord(self.AUDIT_SEP))
        if len(seps) != 4 * n - 1:
            return None
        offsets = np.empty(4 * n + 1, dtype=np.int64)
        offsets[0] = 0
        # Field j ends where separator j sat, once the j separators before it are removed.
        offsets[1:-1] = seps - np.arange(len(seps))
        offsets[-1] = len(buf) - len(seps)
        return buf[buf != ord(self.AUDIT_SEP)], offsets

    def audit_pending(self) -> int:
        """Audit events journaled but not yet chained onto audit_log (0 where none are)."""
        return 0

    def audit_entries(self, after_id: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        rows = self._all(
            f"SELECT {_AUDIT} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [self._audit(r) for r in rows]

    # -- the event outbox
    def emit_event(self, kind: str, subject: str, detail: str = "{}") -> Event:
        """Queue an event for notifiers; it is published when (and only if) this commits.

        Ids are assigned under a lock held to commit, so they are in commit order and a
        subscriber that has seen id N has seen everything before it.
        """
        self._lock(LOCK_EVENTS)
        event = Event(self._events_head() + 1, self.now(), kind, subject, detail)
        self._execute(
            "INSERT INTO events (id, at, kind, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (event.id, self._ts(event.at), kind, subject, detail),
        )
        self._event_appended(event.id)
        return event

    def events_after(self, cursor: int, limit: int = 1000) -> list[Event]:
        rows = self._all(
            "SELECT id, at, kind, subject, detail FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, limit),
        )
        return [Event(r[0], self._dt(r[1]), r[2], r[3], r[4]) for r in rows]

    def events_head(self) -> int:
        """The newest event id (0 when none)."""
        return int(self._one("SELECT COALESCE(MAX(id), 0) FROM events")[0])

    # -- the issued-codes index feed
    def _index_change(self, lot_id: int, change: str) -> None:
        self._lock(LOCK_INDEX)
        row = self._one("SELECT COALESCE(MAX(seq), 0) FROM index_changes")
        self._execute(
            "INSERT INTO index_changes (seq, lot_id, change, at) VALUES (?, ?, ?, ?)",
            (int(row[0]) + 1, lot_id, change, self._ts(self.now())),
        )

    def index_cursor(self) -> int:
        """The newest change seq; read it in the same read transaction as the digests."""
        return int(self._one("SELECT COALESCE(MAX(seq), 0) FROM index_changes")[0])

    def _card_change(self, card_id: int) -> None:
        """Tell every index follower that this card's state changed (same seq discipline)."""
        self._lock(LOCK_INDEX)
        row = self._one("SELECT COALESCE(MAX(seq), 0) FROM card_changes")
        self._execute(
            "INSERT INTO card_changes (seq, card_id, at) VALUES (?, ?, ?)",
            (int(row[0]) + 1, card_id, self._ts(self.now())),
        )

    def card_cursor(self) -> int:
        """The newest card_changes seq; read it in the same snapshot as ``issued_cards``."""
        return int(self._one("SELECT COALESCE(MAX(seq), 0) FROM card_changes")[0])

    # -- digest keys (rotation)
    def digest_keys(self) -> list[DigestKeyRecord]:
        rows = self._all("SELECT id, fingerprint, state FROM digest_keys ORDER BY id")
        return [DigestKeyRecord(int(r[0]), bytes(r[1]), str(r[2])) for r in rows]

    def add_digest_key(self, key_id: int, fingerprint: bytes, state: str) -> bool:
        """Record a digest key unless its id is known already; True if recorded."""
        now = self._ts(self.now())
        return (
            self._execute(
                "INSERT INTO digest_keys (id, fingerprint, state, added_at, changed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (key_id, fingerprint, state, now, now),
            ).rowcount
            == 1
        )

    def set_digest_key_state(self, key_id: int, state: str) -> None:
        self._execute(
            "UPDATE digest_keys SET state = ?, changed_at = ? WHERE id = ?",
            (state, self._ts(self.now()), key_id),
        )

    def set_lot_digest_key(self, lot_id: int, key_id: int) -> None:
        self._execute("UPDATE lots SET digest_key_id = ? WHERE id = ?", (key_id, lot_id))

    def rehash_candidates(self, current: int, after_id: int, limit: int) -> list[RehashRow]:
        """Up to ``limit`` cards after ``after_id`` (id order) whose digest was made under
        another key than ``current``; cards of lots still minting are left for later."""
        rows = self._all(
            "SELECT c.id, c.digest, c.sealed, c.key_id, COALESCE(c.digest_key_id, l.digest_key_id),"
            " l.status FROM cards c JOIN lots l ON l.id = c.lot_id"
            " WHERE c.id > ? AND l.status <> 'minting' AND COALESCE(c.digest_key_id, l.digest_key_id) <> ?"
            " ORDER BY c.id LIMIT ?",
            (after_id, current, limit),
        )
        return [
            RehashRow(int(r[0]), bytes(r[1]), bytes(r[2]), int(r[3]), int(r[4]), r[5] == "complete")
            for r in rows
        ]

    def rekey_cards(
        self, rows: Sequence[tuple[RehashRow, bytes, bytes]], seal_key_id: int, digest_key_id: int
    ) -> int:
        """Give each card (row, new digest, new sealed copy) its new digest and sealed copy,
        unless its digest changed since it was read; the issued-codes index of every server
        learns the new digests of complete lots' cards. The number of cards changed."""
        changed = 0
        for row, digest, sealed in rows:
            done = self._execute(
                "UPDATE cards SET digest = ?, sealed = ?, key_id = ?, digest_key_id = ?"
                " WHERE id = ? AND digest = ?",
                (digest, sealed, seal_key_id, digest_key_id, row.card_id, row.digest),
            ).rowcount
            if done == 1:
                changed += 1
                if row.announce:
                    self._card_change(row.card_id)
        return changed

    def digest_key_usage(self) -> dict[int, int]:
        """Digest key id -> how many cards were digested under it (lots still minting too)."""
        rows = self._all(
            "SELECT COALESCE(c.digest_key_id, l.digest_key_id), COUNT(*) FROM cards c"
            " JOIN lots l ON l.id = c.lot_id GROUP BY COALESCE(c.digest_key_id, l.digest_key_id)"
        )
        return {int(r[0]): int(r[1]) for r in rows}

    @abstractmethod
    def _epoch_us(self, column: str) -> str:
        """SQL for ``column`` (a timestamp, maybe NULL) in microseconds since the epoch, 0 if NULL."""

    def _state_sql(self, card: str) -> str:
        # State and expiry travel packed in one integer column (expiry_us * 4 + state): at
        # 10^7 rows every column fetched costs seconds of per-row Python work.
        return (
            f"{self._epoch_us(f'{card}.expires_at')} * 4 + CASE {card}.status"
            f" WHEN 'active' THEN {int(CardState.ACTIVE)} WHEN 'frozen' THEN {int(CardState.FROZEN)}"
            f" ELSE {int(CardState.VOID)} END"
        )

    @staticmethod
    def _issued(rows: list[Any], digest_col: int, seq: int = 0) -> IssuedCards:
        packed = np.fromiter((r[digest_col + 1] for r in rows), dtype=np.int64, count=len(rows))
        return IssuedCards(
            b"".join(bytes(r[digest_col]) for r in rows),
            (packed & 3).astype(np.uint8),
            packed >> 2,
            seq,
        )

    def issued_cards(self, lot_id: int | None = None, chunk: int = DIGEST_CHUNK) -> Iterator[IssuedCards]:
        """Every card of every complete lot (or of ``lot_id``) with its state, in id order."""
        where, params = ("l.status = 'complete'", ()) if lot_id is None else ("l.id = ?", (lot_id,))
        after = 0
        while True:
            rows = self._all(
                f"SELECT c.id, c.digest, {self._state_sql('c')} FROM cards c JOIN lots l ON l.id = c.lot_id"
                f" WHERE {where} AND c.id > ? ORDER BY c.id LIMIT ?",
                (*params, after, chunk),
            )
            if not rows:
                return
            yield self._issued(rows, 1)
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def card_changes(self, since_seq: int, limit: int = 10_000) -> IssuedCards:
        """Cards of complete lots whose state or digest changed after ``since_seq``, with their
        digest and state now (oldest first; a card changed twice appears twice, both rows
        showing its current state). A digest changes when ``keys rehash`` re-digests a card."""
        rows = self._all(
            f"SELECT cc.seq, c.digest, {self._state_sql('c')} FROM card_changes cc"
            " JOIN cards c ON c.id = cc.card_id JOIN lots l ON l.id = c.lot_id"
            " WHERE cc.seq > ? AND l.status = 'complete' ORDER BY cc.seq LIMIT ?",
            (since_seq, limit),
        )
        return self._issued(rows, 1, rows[-1][0] if rows else since_seq)

    def index_changes(self, since_seq: int, limit: int = 1000) -> list[IndexChange]:
        rows = self._all(
            "SELECT seq, lot_id, change, at FROM index_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (since_seq, limit),
        )
        return [IndexChange(r[0], r[1], r[2], self._dt(r[3])) for r in rows]

    def issued_digests(self, chunk: int = DIGEST_CHUNK) -> Iterator[bytes]:
        """Digests of every card of every complete lot, concatenated, ``chunk`` cards at a time."""
        return (c.digests for c in self.issued_cards(None, chunk))

    def lot_digests(self, lot_id: int, chunk: int = DIGEST_CHUNK) -> Iterator[bytes]:
        return (c.digests for c in self.issued_cards(lot_id, chunk))

    # -- orders and the pool (the card shop)
    def lock_subject(self, kind: str, subject: str) -> None:
        """Serialize, until commit, every transaction that locks the same (kind, subject).

        For read-then-write rules no row can guard, such as "at most N codes reserved per
        client address". PostgreSQL: an advisory lock (a CRC collision only serializes two
        subjects that need not be); SQLite's single writer holds everything already.
        """
        self._lock(LOCK_SUBJECTS + zlib.crc32(f"{kind}\0{subject}".encode()))

    def lock_subjects(self, *subjects: tuple[str, str]) -> None:
        """``lock_subject`` for each (kind, subject), in the order given, in one round trip."""
        self._lock_many(
            [LOCK_SUBJECTS + zlib.crc32(f"{kind}\0{subject}".encode()) for kind, subject in subjects]
        )

    def _lock_many(self, names: Sequence[int]) -> None:
        """``_lock`` each of ``names`` in order (PostgreSQL: in one statement)."""
        for name in names:
            self._lock(name)

    def find_account(self, external_id: str) -> Account | None:
        """The account of ``external_id``, if it exists (``ensure_account`` creates it)."""
        row = self._one(
            "SELECT id, external_id, created_at FROM accounts WHERE external_id = ?", (external_id,)
        )
        return None if row is None else Account(row[0], row[1], self._dt(row[2]))

    def stock_pool(self, lot_id: int) -> int:
        """Put the lot's active, unbound cards up for sale; how many went in."""
        return self._execute(
            "INSERT INTO pool_cards (card_id, lot_id, product_id, face_value, state, stocked_at)"
            " SELECT id, lot_id, product_id, face_value, 'available', ? FROM cards"
            " WHERE lot_id = ? AND status = 'active' AND account_id IS NULL",
            (self._ts(self.now()), lot_id),
        ).rowcount

    def pool_lot_count(self, lot_id: int) -> int:
        return int(self._one("SELECT COUNT(*) FROM pool_cards WHERE lot_id = ?", (lot_id,))[0])

    def pool_stock(self, product_id: int) -> list[PoolStock]:
        """The product's pool by face value. ``available`` counts only cards a buyer could
        get now (active, unbound, unexpired), as ``reserve_pool_cards`` picks them."""
        rows = self._all(
            "SELECT p.face_value, c.currency, p.state, COUNT(*), SUM(CASE WHEN c.status = 'active'"
            " AND c.account_id IS NULL AND (c.expires_at IS NULL OR c.expires_at > ?) THEN 1 ELSE 0 END)"
            " FROM pool_cards p JOIN cards c ON c.id = p.card_id WHERE p.product_id = ?"
            " GROUP BY p.face_value, c.currency, p.state",
            (self._ts(self.now()), product_id),
        )
        by_face: dict[tuple[int, str], dict[str, int]] = {}
        for face, currency, state, n, sellable in rows:
            counts = by_face.setdefault((int(face), currency), {})
            counts[state] = int(sellable if state == PoolCardState.AVAILABLE.value else n)
        return [
            PoolStock(
                face,
                currency,
                counts.get(PoolCardState.AVAILABLE.value, 0),
                counts.get(PoolCardState.RESERVED.value, 0),
                counts.get(PoolCardState.SOLD.value, 0),
                counts.get(PoolCardState.RETURNED.value, 0),
            )
            for (face, currency), counts in sorted(by_face.items())
        ]

    def reserve_pool_cards(self, order_id: int, product_id: int, face_value: int, count: int) -> list[int]:
        """Claim up to ``count`` sellable cards of the pool for ``order_id``; their ids.

        Fewer than ``count`` means the pool ran short: the caller refuses the order and rolls
        back. PostgreSQL: ``FOR UPDATE OF p SKIP LOCKED``, so concurrent buyers neither wait
        on each other's rows nor take the same one (a row another buyer claimed and
        committed meanwhile fails the re-checked ``state = 'available'`` and is skipped).
        SQLite: one writer, nothing to skip.
        """
        _positive(count, "count")
        rows = self._all(
            "SELECT p.card_id FROM pool_cards p JOIN cards c ON c.id = p.card_id"
            " WHERE p.product_id = ? AND p.face_value = ? AND p.state = 'available' AND c.status = 'active'"
            f" AND c.account_id IS NULL AND (c.expires_at IS NULL OR c.expires_at > ?){ON_SALE}"
            f" ORDER BY p.card_id LIMIT ?{self._claim('p')}",
            (product_id, face_value, self._ts(self.now()), count),
        )
        ids = [int(r[0]) for r in rows]
        if len(ids) < count:
            return ids
        marks = ", ".join("?" * len(ids))
        cur = self._execute(
            f"UPDATE pool_cards SET state = 'reserved', order_id = ? WHERE card_id IN ({marks})"
            " AND state = 'available'",
            (order_id, *ids),
        )
        if cur.rowcount != len(ids):
            raise self._fail(StorageError(f"claimed {len(ids)} pool cards but reserved {cur.rowcount}"))
        return ids

    def held_codes(
        self, *, account_id: int | None = None, client_address: str | None = None
    ) -> tuple[int, datetime | None]:
        """Codes held by live reservations (unpaid, deadline ahead) of an account or a client
        address, and the earliest deadline among them (when the first will be released)."""
        if (account_id is None) == (client_address is None):
            raise ValueError("held_codes needs exactly one of account_id or client_address")
        column, value = (
            ("account_id", account_id) if account_id is not None else ("client_address", client_address)
        )
        row = self._one(
            f"SELECT COALESCE(SUM(quantity), 0), MIN(expires_at) FROM orders WHERE {column} = ?"
            " AND status = 'reserved' AND expires_at > ?",
            (value, self._ts(self.now())),
        )
        return int(row[0]), self._odt(row[1])

    def held_codes_both(
        self, account_id: int, client_address: str
    ) -> tuple[tuple[int, datetime | None], tuple[int, datetime | None]]:
        """``held_codes`` of the account and of the client address, in one query."""
        row = self._one(
            "SELECT COALESCE(SUM(CASE WHEN account_id = ? THEN quantity ELSE 0 END), 0),"
            " MIN(CASE WHEN account_id = ? THEN expires_at END),"
            " COALESCE(SUM(CASE WHEN client_address = ? THEN quantity ELSE 0 END), 0),"
            " MIN(CASE WHEN client_address = ? THEN expires_at END)"
            " FROM orders WHERE status = 'reserved' AND expires_at > ? AND (account_id = ? OR client_address = ?)",
            (
                account_id,
                account_id,
                client_address,
                client_address,
                self._ts(self.now()),
                account_id,
                client_address,
            ),
        )
        return (int(row[0]), self._odt(row[1])), (int(row[2]), self._odt(row[3]))

    def place_order(
        self, new: NewOrder, *, complete: tuple[str, str] | None = None
    ) -> tuple[Order, list[int]]:
        """``create_order``, then claim each item's cards as ``reserve_pool_cards`` does;
        with ``complete`` = (scope, key), also ``complete_idempotency`` of that claim with the
        response ``{"order_id": <id>}``.

        Returns the order and, per item, how many sellable cards were found (at most its
        quantity). An item found short claims nothing: the caller refuses the order and
        rolls back. PostgreSQL does it all in one statement.
        """
        order = self.create_order(new)
        got: list[int] = []
        for item in new.items:
            got.append(self._reserve_line(order.id, item.product_id, item.face_value, item.quantity))
        if complete is not None and all(g == i.quantity for g, i in zip(got, new.items, strict=True)):
            self.complete_idempotency(*complete, _order_response(order.id))
        return order, got

    def _reserve_line(self, order_id: int, product_id: int, face_value: int, count: int) -> int:
        """Claim ``count`` sellable cards for the order in one statement if that many are
        free; otherwise claim none and count how many there were."""
        _positive(count, "count")
        now = self._ts(self.now())
        pick = (
            "SELECT p.card_id FROM pool_cards p JOIN cards c ON c.id = p.card_id"
            " WHERE p.product_id = ? AND p.face_value = ? AND p.state = 'available' AND c.status = 'active'"
            f" AND c.account_id IS NULL AND (c.expires_at IS NULL OR c.expires_at > ?){ON_SALE}"
            " ORDER BY p.card_id LIMIT ?"
        )
        args = (product_id, face_value, now, count)
        rows = self._all(
            f"UPDATE pool_cards SET state = 'reserved', order_id = ? WHERE card_id IN ({pick})"
            f" AND state = 'available' AND (SELECT COUNT(*) FROM ({pick}) AS n) = ? RETURNING card_id",
            (order_id, *args, *args, count),
        )
        if rows:
            if len(rows) != count:
                raise self._fail(StorageError(f"claimed {count} pool cards but reserved {len(rows)}"))
            return count
        return int(self._one(f"SELECT COUNT(*) FROM ({pick}) AS n", args)[0])

    def claim_with_response(
        self, scope: str, key: str, fingerprint: bytes, response: bytes
    ) -> IdempotencyClaim:
        """``claim_idempotency`` and ``complete_idempotency`` in one statement, for a request
        whose answer is known before its work (a payment notification answers its order):
        the claim commits with the work or not at all, like the pair would."""
        cur = self._execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, response, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (scope, key) DO NOTHING",
            (scope, key, bytes(fingerprint), bytes(response), self._ts(self.now())),
        )
        if cur.rowcount == 1:
            return IdempotencyClaim(scope, key, None)
        return self._earlier_claim(scope, key, fingerprint)

    def sell_order_cards(self, order_id: int, count: int) -> list[PoolCard] | None:
        """Move the order's ``count`` reserved cards to ``sold`` if it holds exactly that many
        and every one is still sellable (active, unbound, unexpired); their rows are locked
        to commit. None, moving nothing, otherwise. PostgreSQL: one statement."""
        now = self.now()
        held = [pc for pc in self.order_cards(order_id, lock=True) if pc.state is PoolCardState.RESERVED]
        ok = len(held) == count and all(
            c.status is CardStatus.ACTIVE
            and c.account_id is None
            and (c.expires_at is None or c.expires_at > now)
            for c in (pc.card for pc in held)
        )
        if not ok:
            return None
        moved = self.move_pool_cards(order_id, expect=PoolCardState.RESERVED, state=PoolCardState.SOLD)
        if moved != count:
            raise self._fail(StorageError(f"order {order_id}: {moved} of {count} cards sold"))
        return [PoolCard(pc.card, PoolCardState.SOLD, order_id) for pc in held]

    def _orders(self, rows: list[Any], items: dict[int, list[OrderItem]] | None = None) -> list[Order]:
        """Orders from ``_ORDER`` rows, with their items (read here unless given)."""
        if not rows:
            return []
        if items is None:
            items = {}
            ids = [r[0] for r in rows]
            marks = ", ".join("?" * len(ids))
            for oid, product_id, face, qty in self._all(
                f"SELECT order_id, product_id, face_value, quantity FROM order_items WHERE order_id IN ({marks})"
                " ORDER BY order_id, line",
                ids,
            ):
                items.setdefault(oid, []).append(OrderItem(product_id, int(face), int(qty)))
        return [
            Order(
                id=r[0],
                account_id=r[1],
                request_id=r[2],
                items=tuple(items.get(r[0], ())),
                amount=int(r[3]),
                currency=r[4],
                status=OrderStatus(r[5]),
                client_address=r[6],
                created_at=self._dt(r[7]),
                expires_at=self._dt(r[8]),
                payment_id=r[9],
                paid_amount=None if r[10] is None else int(r[10]),
                paid_at=self._odt(r[11]),
                deliver_by=self._odt(r[12]),
                delivered_at=self._odt(r[13]),
                closed_at=self._odt(r[14]),
                close_reason=r[15],
                payment_method=r[16],
            )
            for r in rows
        ]

    def create_order(self, new: NewOrder) -> Order:
        """An order in ``reserved`` state with its items; claim its cards next."""
        if not new.items:
            raise ValueError("an order needs at least one item")
        for item in new.items:
            _money(item.face_value, "face value")
            _positive(item.quantity, "quantity")
        if new.expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware (UTC)")
        quantity = sum(i.quantity for i in new.items)
        row = self._one(
            "INSERT INTO orders (account_id, request_id, quantity, amount, currency, status, client_address,"
            f" created_at, expires_at, payment_method) VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?) RETURNING {_ORDER}",
            (
                new.account_id,
                new.request_id,
                quantity,
                _money(new.amount),
                _currency(new.currency),
                new.client_address,
                self._ts(self.now()),
                self._ts(new.expires_at),
                new.payment_method,
            ),
        )
        for line, item in enumerate(new.items):
            self._execute(
                "INSERT INTO order_items (order_id, line, product_id, face_value, quantity) VALUES (?, ?, ?, ?, ?)",
                (row[0], line, item.product_id, item.face_value, item.quantity),
            )
        return self._orders([row], {row[0]: list(new.items)})[0]

    def get_order(self, order_id: int, *, lock: bool = False) -> Order | None:
        """The order; ``lock`` holds its row to commit (PostgreSQL), so that payment,
        cancellation and the sweeper decide one after the other on the same order."""
        rows = self._all(
            f"SELECT {_ORDER_O}, i.product_id, i.face_value, i.quantity FROM orders o"
            " JOIN order_items i ON i.order_id = o.id WHERE o.id = ? ORDER BY i.line"
            f"{self.FOR_UPDATE + ' OF o' if lock and self.FOR_UPDATE else ''}",
            (order_id,),
        )
        if not rows:
            return None
        items = [OrderItem(r[-3], int(r[-2]), int(r[-1])) for r in rows]
        return self._orders([rows[0][:-3]], {rows[0][0]: items})[0]

    def list_orders(
        self,
        *,
        account_id: int | None = None,
        status: OrderStatus | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[Order]:
        """Newest first; pass the last order's id as ``before_id`` for the next page."""
        where: list[str] = ["id < ?"]
        params: list[Any] = [before_id if before_id is not None else 2**63 - 1]
        if account_id is not None:
            where.append("account_id = ?")
            params.append(account_id)
        if status is not None:
            where.append("status = ?")
            params.append(OrderStatus(status).value)
        rows = self._all(
            f"SELECT {_ORDER} FROM orders WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return self._orders(rows)

    def update_order(
        self,
        order_id: int,
        *,
        expect: Iterable[OrderStatus],
        status: OrderStatus,
        known_items: Sequence[OrderItem] | None = None,
        **changes: str | int | datetime | None,
    ) -> Order | None:
        """Move the order to ``status`` (setting ``changes``) if it is in one of ``expect``;
        None when it was not. ``known_items``: the order's items, when the caller has them
        (they never change), saving their query."""
        allowed = [OrderStatus(s).value for s in expect]
        if not allowed:
            raise ValueError("expect must name at least one status")
        sets: list[str] = ["status = ?"]
        params: list[Any] = [OrderStatus(status).value]
        for name, value in changes.items():
            if name not in _ORDER_CHANGES:
                raise ValueError(f"update_order cannot set {name!r}")
            sets.append(f"{name} = ?")
            if _ORDER_CHANGES[name] and value is not None:
                if not isinstance(value, datetime):
                    raise TypeError(f"{name} must be a datetime")
                params.append(self._ts(value))
            else:
                params.append(value)
        marks = ", ".join("?" * len(allowed))
        rows = self._all(
            f"UPDATE orders SET {', '.join(sets)} WHERE id = ? AND status IN ({marks}) RETURNING {_ORDER}",
            (*params, order_id, *allowed),
        )
        if not rows:
            return None
        return self._orders(rows, None if known_items is None else {rows[0][0]: list(known_items)})[0]

    def order_cards(self, order_id: int, *, lock: bool = False) -> list[PoolCard]:
        """The cards the order holds or bought, by card id. ``lock`` holds the card and pool
        rows to commit (PostgreSQL), so no bind or redeem slips between a check and a change."""
        rows = self._all(
            f"SELECT p.state, p.order_id, {_CARD_C}"
            " FROM pool_cards p JOIN cards c ON c.id = p.card_id WHERE p.order_id = ? ORDER BY p.card_id"
            f"{self.FOR_UPDATE if lock else ''}",
            (order_id,),
        )
        return [PoolCard(self._card(r[2:]), PoolCardState(r[0]), r[1]) for r in rows]

    def move_pool_cards(self, order_id: int, *, expect: PoolCardState, state: PoolCardState) -> int:
        """Move the order's cards in ``expect`` to ``state``; back to ``available`` lets go of
        them (no order). How many moved."""
        if PoolCardState(state) is PoolCardState.AVAILABLE:
            sql = (
                "UPDATE pool_cards SET state = 'available', order_id = NULL WHERE order_id = ? AND state = ?"
            )
            params: tuple[Any, ...] = (order_id, PoolCardState(expect).value)
        else:
            sql = "UPDATE pool_cards SET state = ? WHERE order_id = ? AND state = ?"
            params = (PoolCardState(state).value, order_id, PoolCardState(expect).value)
        return self._execute(sql, params).rowcount

    def due_orders(self, status: OrderStatus, before: datetime, limit: int = 500) -> list[int]:
        """Ids of orders past their deadline: unpaid reservations (``reserved``, by
        ``expires_at``) or paid orders awaiting review (``review``, by ``deliver_by``)."""
        column = {OrderStatus.RESERVED: "expires_at", OrderStatus.REVIEW: "deliver_by"}[OrderStatus(status)]
        # Claimed like a work queue: an order another transaction holds (being paid right
        # now, or taken by another process's sweeper) is skipped, not waited for.
        rows = self._all(
            f"SELECT o.id FROM orders o WHERE o.status = ? AND o.{column} <= ? ORDER BY o.{column}, o.id"
            f" LIMIT ?{self._claim('o')}",
            (OrderStatus(status).value, self._ts(before), limit),
        )
        return [int(r[0]) for r in rows]

    def record_refund(self, order: Order, amount: int, currency: str) -> LedgerEntry:
        """The refund of an order's payment, as an account-level ledger entry (append-only):
        what the payment service pays back. ``request_id`` names the order."""
        return self._ledger(
            LedgerKind.REFUND,
            _currency(currency),
            _money(amount),
            account_id=order.account_id,
            request_id=f"order:{order.id}",
        )

    # -- organizations (enterprise accounts)
    def _organization(self, row: Any) -> Organization:
        return Organization(row[0], row[1], self._dt(row[2]), row[3])

    def _department(self, row: Any) -> Department:
        return Department(row[0], row[1], row[2], self._dt(row[3]))

    def create_organization(self, name: str, created_by: str) -> Organization | None:
        """A new organization, or None when one of that name exists already."""
        row = self._one(
            "INSERT INTO organizations (name, created_at, created_by) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING RETURNING id, name, created_at, created_by",
            (name, self._ts(self.now()), created_by),
        )
        return None if row is None else self._organization(row)

    def find_organization(self, name: str) -> Organization | None:
        row = self._one("SELECT id, name, created_at, created_by FROM organizations WHERE name = ?", (name,))
        return None if row is None else self._organization(row)

    def get_organization(self, organization_id: int) -> Organization | None:
        row = self._one(
            "SELECT id, name, created_at, created_by FROM organizations WHERE id = ?", (organization_id,)
        )
        return None if row is None else self._organization(row)

    def create_department(self, organization_id: int, name: str) -> Department | None:
        """A new department, or None when the organization has one of that name already."""
        row = self._one(
            "INSERT INTO departments (organization_id, name, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (organization_id, name) DO NOTHING RETURNING id, organization_id, name, created_at",
            (organization_id, name, self._ts(self.now())),
        )
        return None if row is None else self._department(row)

    def find_department(self, organization_id: int, name: str) -> Department | None:
        row = self._one(
            "SELECT id, organization_id, name, created_at FROM departments WHERE organization_id = ? AND name = ?",
            (organization_id, name),
        )
        return None if row is None else self._department(row)

    def list_departments(self, organization_id: int) -> list[Department]:
        rows = self._all(
            "SELECT id, organization_id, name, created_at FROM departments WHERE organization_id = ? ORDER BY id",
            (organization_id,),
        )
        return [self._department(r) for r in rows]

    _MEMBER = (
        "SELECT m.account_id, a.external_id, m.organization_id, o.name, m.department_id, d.name, m.role,"
        " m.added_at FROM org_members m JOIN accounts a ON a.id = m.account_id"
        " JOIN organizations o ON o.id = m.organization_id LEFT JOIN departments d ON d.id = m.department_id"
    )

    def _membership(self, row: Any) -> Membership:
        return Membership(row[0], row[1], row[2], row[3], row[4], row[5], OrgRole(row[6]), self._dt(row[7]))

    def get_membership(self, account_id: int) -> Membership | None:
        row = self._one(f"{self._MEMBER} WHERE m.account_id = ?", (account_id,))
        return None if row is None else self._membership(row)

    def set_membership(
        self, account_id: int, organization_id: int, department_id: int | None, role: OrgRole
    ) -> Membership:
        """Make the account a member (or change its department and role, keeping when it joined)."""
        self._execute(
            "INSERT INTO org_members (account_id, organization_id, department_id, role, added_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET organization_id ="
            " excluded.organization_id, department_id = excluded.department_id, role = excluded.role",
            (account_id, organization_id, department_id, OrgRole(role).value, self._ts(self.now())),
        )
        found = self.get_membership(account_id)
        assert found is not None  # written just above, in this transaction
        return found

    def remove_membership(self, account_id: int) -> bool:
        return self._execute("DELETE FROM org_members WHERE account_id = ?", (account_id,)).rowcount == 1

    def list_members(
        self,
        organization_id: int,
        department_id: int | None = None,
        after_account_id: int = 0,
        limit: int = 100,
    ) -> list[Membership]:
        """Members of the organization (only one department's when ``department_id`` is
        given), by account id."""
        if department_id is None:
            rows = self._all(
                f"{self._MEMBER} WHERE m.organization_id = ? AND m.account_id > ? ORDER BY m.account_id LIMIT ?",
                (organization_id, after_account_id, limit),
            )
        else:
            rows = self._all(
                f"{self._MEMBER} WHERE m.organization_id = ? AND m.department_id = ? AND m.account_id > ?"
                " ORDER BY m.account_id LIMIT ?",
                (organization_id, department_id, after_account_id, limit),
            )
        return [self._membership(r) for r in rows]

    def list_member_tokens(
        self, organization_id: int, department_id: int | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Token]:
        """Tokens of the organization's member accounts (one department's, if given), by id."""
        where = "m.organization_id = ?" + ("" if department_id is None else " AND m.department_id = ?")
        params: list[Any] = [organization_id] + ([] if department_id is None else [department_id])
        rows = self._all(
            f"SELECT {_TOKEN_ROW_T} FROM tokens t JOIN org_members m ON m.account_id = t.account_id"
            f" WHERE {where} AND t.id > ? ORDER BY t.id LIMIT ?",
            (*params, after_id, limit),
        )
        return [self._token(r) for r in rows]

    def get_token(self, token_id: int) -> Token | None:
        row = self._one(f"SELECT {_TOKEN_ROW} FROM tokens WHERE id = ?", (token_id,))
        return None if row is None else self._token(row)

    def account_token_ids(self, account_id: int) -> list[int]:
        return [int(r[0]) for r in self._all("SELECT id FROM tokens WHERE account_id = ?", (account_id,))]

    def mark_real_name_verified(self, account_id: int) -> bool:
        """Record that staff verified the account holder's real name; False if it was already."""
        cur = self._execute(
            "UPDATE accounts SET real_name_verified_at = ? WHERE id = ? AND real_name_verified_at IS NULL",
            (self._ts(self.now()), account_id),
        )
        return cur.rowcount == 1

    def real_name_verified_at(self, account_id: int) -> datetime | None:
        row = self._one("SELECT real_name_verified_at FROM accounts WHERE id = ?", (account_id,))
        return None if row is None else self._odt(row[0])

    def set_lot_owner(self, lot_id: int, organization_id: int, department_id: int | None) -> None:
        """The lot belongs to the organization (and the department, if given) from now on."""
        self._execute(
            "INSERT INTO lot_owners (lot_id, organization_id, department_id) VALUES (?, ?, ?)"
            " ON CONFLICT (lot_id) DO UPDATE SET organization_id = excluded.organization_id,"
            " department_id = excluded.department_id",
            (lot_id, organization_id, department_id),
        )

    def lot_owner(self, lot_id: int) -> tuple[int, int | None] | None:
        """(organization id, department id or None) of an organization's lot; None otherwise."""
        row = self._one("SELECT organization_id, department_id FROM lot_owners WHERE lot_id = ?", (lot_id,))
        return None if row is None else (int(row[0]), None if row[1] is None else int(row[1]))

    def list_org_lots(
        self,
        organization_id: int,
        department_id: int | None = None,
        after_id: int = 0,
        limit: int = 100,
        product_id: int | None = None,
    ) -> list[Lot]:
        """The organization's lots (only one department's when ``department_id`` is given,
        only one product's when ``product_id`` is)."""
        where = "o.organization_id = ?" + ("" if department_id is None else " AND o.department_id = ?")
        params: list[Any] = [organization_id] + ([] if department_id is None else [department_id])
        if product_id is not None:
            where += " AND l.product_id = ?"
            params.append(product_id)
        rows = self._all(
            f"SELECT {_LOT_L} FROM lots l JOIN lot_owners o ON o.lot_id = l.id"
            f" WHERE {where} AND l.id > ? ORDER BY l.id LIMIT ?",
            (*params, after_id, limit),
        )
        return [self._lot(r) for r in rows]

    # -- loss reports (the holder reports a card lost; staff approve a reissue or reject)
    def _loss(self, row: Any) -> LossReport:
        return LossReport(
            id=row[0],
            card_id=row[1],
            account_id=row[2],
            status=LossStatus(row[3]),
            reason=row[4],
            reported_by=row[5],
            reported_at=self._dt(row[6]),
            reviewed_by=row[7],
            reviewed_at=self._odt(row[8]),
            note=row[9],
            new_card_id=row[10],
            amount=row[11],
        )

    def add_loss_report(
        self, card_id: int, account_id: int, reason: str, reported_by: str
    ) -> LossReport | None:
        """A pending report on the card; None when one is pending already (the partial unique
        index decides between concurrent reports: the later one inserts nothing)."""
        row = self._one(
            "INSERT INTO loss_reports (card_id, account_id, status, reason, reported_by, reported_at)"
            " VALUES (?, ?, 'pending', ?, ?, ?) ON CONFLICT (card_id) WHERE status = 'pending' DO NOTHING"
            f" RETURNING {_LOSS}",
            (card_id, account_id, reason, reported_by, self._ts(self.now())),
        )
        return None if row is None else self._loss(row)

    def pending_loss_report(self, card_id: int) -> LossReport | None:
        row = self._one(
            f"SELECT {_LOSS} FROM loss_reports WHERE card_id = ? AND status = 'pending'", (card_id,)
        )
        return None if row is None else self._loss(row)

    def get_loss_report(self, report_id: int, *, lock: bool = False) -> LossReport | None:
        row = self._one(
            f"SELECT {_LOSS} FROM loss_reports WHERE id = ?{self.FOR_UPDATE if lock else ''}", (report_id,)
        )
        return None if row is None else self._loss(row)

    def list_loss_reports(
        self,
        *,
        status: LossStatus | None = None,
        account_id: int | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[LossReport]:
        """Oldest first, paged by id; optionally only one status and/or one account's."""
        where: list[str] = ["id > ?"]
        params: list[object] = [after_id]
        if status is not None:
            where.append("status = ?")
            params.append(LossStatus(status).value)
        if account_id is not None:
            where.append("account_id = ?")
            params.append(account_id)
        rows = self._all(
            f"SELECT {_LOSS} FROM loss_reports WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            (*params, limit),
        )
        return [self._loss(r) for r in rows]

    def decide_loss_report(
        self,
        report_id: int,
        status: LossStatus,
        reviewed_by: str,
        note: str,
        *,
        new_card_id: int | None = None,
        amount: int | None = None,
    ) -> LossReport | None:
        """Close a pending report as approved or rejected; None when it is not pending."""
        if LossStatus(status) is LossStatus.PENDING:
            raise ValueError("a decision is approved or rejected")
        row = self._one(
            "UPDATE loss_reports SET status = ?, reviewed_by = ?, reviewed_at = ?, note = ?, new_card_id = ?,"
            f" amount = ? WHERE id = ? AND status = 'pending' RETURNING {_LOSS}",
            (
                LossStatus(status).value,
                reviewed_by,
                self._ts(self.now()),
                note,
                new_card_id,
                amount,
                report_id,
            ),
        )
        return None if row is None else self._loss(row)

    def reissue_balance(self, old_card_id: int, new_card_id: int, request_id: str) -> Reissue | None:
        """Move the old card's whole balance onto the new card and void the old one.

        One ledger entry on each card, linked (the new card's ``reverses_id`` names the old
        card's entry) and both carrying ``request_id``: money is moved, never created. None
        (and nothing changed) when the old card is void or holds nothing, or the cards'
        currencies differ, or the new card cannot take the amount (over its face value).
        """
        old = self._one(
            f"SELECT status, balance, currency, account_id FROM cards WHERE id = ?{self.FOR_UPDATE}",
            (old_card_id,),
        )
        new = self._one(
            f"SELECT currency, face_value, account_id FROM cards WHERE id = ?{self.FOR_UPDATE}",
            (new_card_id,),
        )
        if old is None or new is None or old[0] == CardStatus.VOID.value or int(old[1]) <= 0:
            return None
        amount, currency = int(old[1]), old[2]
        if new[0] != currency or amount > int(new[1]):
            return None
        self._execute("UPDATE cards SET balance = 0, status = 'void' WHERE id = ?", (old_card_id,))
        self._card_change(old_card_id)
        moved_out = self._ledger(
            LedgerKind.REISSUE_OUT,
            currency,
            -amount,
            card_id=old_card_id,
            account_id=old[3],
            balance_after=0,
            request_id=request_id,
        )
        self._execute("UPDATE cards SET balance = ? WHERE id = ?", (amount, new_card_id))
        moved_in = self._ledger(
            LedgerKind.REISSUE_IN,
            currency,
            amount,
            card_id=new_card_id,
            account_id=new[2],
            balance_after=amount,
            request_id=request_id,
            reverses_id=moved_out.id,
        )
        return Reissue(moved_out, moved_in)
