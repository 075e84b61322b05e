"""cardmint.server.storage: where cards, money and their history are kept.

One interface (``Storage`` hands out ``UnitOfWork`` transactions, ``interface.py``), two
backends: SQLite (embedded default) and PostgreSQL (production). ``open_storage(url)``
picks one from a URL. docs/storage.md describes the schema and the locking choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._sql import GENESIS_HASH, audit_hash, audit_hash_us, utcnow
from .errors import (
    ConflictError,
    IdempotencyConflictError,
    LotStateError,
    MigrationError,
    NotFoundError,
    StorageError,
    TransientError,
)
from .interface import Storage, UnitOfWork
from .models import (
    PAYMENT_METHODS,
    Account,
    AttemptKind,
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
from .sqlite import SQLiteStorage

if TYPE_CHECKING:
    from ._sql import Clock

__all__ = [
    "GENESIS_HASH",
    "PAYMENT_METHODS",
    "Account",
    "AttemptKind",
    "AuditColumns",
    "AuditEntry",
    "BindOutcome",
    "BindResult",
    "Card",
    "CardBatch",
    "CardState",
    "CardStatus",
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
    "Token",
    "TransientError",
    "UnitOfWork",
    "audit_hash",
    "audit_hash_us",
    "open_storage",
    "utcnow",
]


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
    if not path or path == ":memory:":
        raise StorageError("SQLite storage needs a file path (readers use their own connections)")
    if "://" in path or "=" in path:
        # A libpq keyword DSN or another scheme would otherwise become a stray SQLite file.
        raise StorageError(f"not a database URL: {url!r} (use postgresql://... or sqlite:///path)")
    return SQLiteStorage(Path(path), clock=clock, busy_timeout_ms=busy_timeout_ms)


if TYPE_CHECKING:
    # mypy proves both backends satisfy the interface.
    from .postgres import PostgresStorage

    _sqlite_ok: type[Storage] = SQLiteStorage
    _postgres_ok: type[Storage] = PostgresStorage
