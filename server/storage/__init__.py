"""cardmint.server.storage: where cards, money and their history are kept.

One interface (``Storage`` hands out ``UnitOfWork`` transactions, ``interface.py``), two
backends: SQLite (embedded default) and PostgreSQL (production). ``open_storage(url)``
picks one from a URL. docs/storage.md describes the schema and the locking choices.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._sql import GENESIS_HASH, Clock, audit_hash, audit_hash_us, utcnow
from .errors import (
    ConflictError,
    IdempotencyConflictError,
    LotStateError,
    MigrationError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
    TransientError,
)
from .interface import Storage, UnitOfWork
from .models import (
    PAYMENT_METHODS,
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
    Report,
    Role,
    Token,
)
from .sqlite import SQLiteStorage, sqlite3_failed

__all__ = [
    "GENESIS_HASH",
    "PAYMENT_METHODS",
    "Account",
    "AttemptKind",
    "Attempts",
    "AuditColumns",
    "AuditEntry",
    "BindOutcome",
    "BindResult",
    "Card",
    "CardBatch",
    "CardState",
    "CardStatus",
    "Clock",
    "ConflictError",
    "Delivery",
    "Department",
    "DigestKeyRecord",
    "Event",
    "Gauges",
    "IdempotencyClaim",
    "IdempotencyConflictError",
    "IndexChange",
    "IssuedCards",
    "LedgerEntry",
    "LedgerKind",
    "Lot",
    "LotStateError",
    "LotStatus",
    "Membership",
    "MigrationError",
    "MoneyOutcome",
    "MoneyResult",
    "NewOrder",
    "NewProduct",
    "NotFoundError",
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
    "Report",
    "Role",
    "SQLiteStorage",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "Token",
    "TransientError",
    "UnitOfWork",
    "audit_hash",
    "audit_hash_us",
    "open_storage",
    "storage_failure",
    "utcnow",
]


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database itself failed (I/O error, disk full, connection or
    server lost), as opposed to a bug or a rule: the call is answered UNAVAILABLE, and the
    server's health turns NOT_SERVING until its probe writes again (server/health.py)."""
    if isinstance(exc, StorageUnavailableError):
        return True
    if sqlite3_failed(exc):
        return True
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    pool = sys.modules.get("psycopg_pool")
    return pool is not None and isinstance(exc, pool.PoolTimeout)


def open_storage(
    url: str,
    *,
    clock: Clock = utcnow,
    pool_min_size: int = 1,
    pool_max_size: int = 32,
    busy_timeout_ms: int = 30_000,
) -> Storage:
    """``postgresql://…`` (or ``postgres://…``) → PostgreSQL; ``sqlite:///path`` or a path → SQLite.

    Opening applies any pending schema migrations. ``pool_*``: the PostgreSQL connection
    pool's size; ``busy_timeout_ms``: how long SQLite waits for another process's lock.
    """
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so the embedded SQLite server starts without psycopg installed.
        from .postgres import PostgresStorage

        return PostgresStorage(url, clock=clock, min_size=pool_min_size, max_size=pool_max_size)
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    synchronous = "full"
    if url.startswith("sqlite://") and "?" in path:
        # The one option: ``?synchronous=full|normal|off`` (full, the default, survives a
        # power loss; the others do not: docs/RELIABILITY.md).
        path, _, query = path.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&"))
        synchronous = options.pop("synchronous", "full").lower()
        if options:
            raise StorageError(f"unknown SQLite option(s) {sorted(options)} in {url!r} (known: synchronous)")
    if not path or path == ":memory:":
        raise StorageError("SQLite storage needs a file path (readers use their own connections)")
    if "://" in path or "=" in path:
        # A libpq keyword DSN or another scheme would otherwise become a stray SQLite file.
        raise StorageError(f"not a database URL: {url!r} (use postgresql://... or sqlite:///path)")
    return SQLiteStorage(Path(path), clock=clock, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)


if TYPE_CHECKING:
    # mypy proves both backends satisfy the interface.
    from .postgres import PostgresStorage

    _sqlite_ok: type[Storage] = SQLiteStorage
    _postgres_ok: type[Storage] = PostgresStorage
