"""Storage errors: plain Python, so the domain can catch them without knowing the backend."""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "IdempotencyConflictError",
    "LotStateError",
    "MigrationError",
    "NotFoundError",
    "StorageError",
    "TransientError",
]


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class NotFoundError(StorageError):
    """The row an operation needs does not exist."""


class ConflictError(StorageError):
    """A uniqueness or integrity rule refused the change (duplicate SKU, digest, token...)."""


class IdempotencyConflictError(StorageError):
    """An idempotency key was reused with different request parameters."""

    def __init__(self, scope: str, key: str) -> None:
        super().__init__(f"idempotency key {key!r} for {scope} was used with different parameters")
        self.scope = scope
        self.key = key


class LotStateError(StorageError):
    """A lot is not in the state the operation needs (e.g. completing a voided lot)."""


class TransientError(StorageError):
    """Lost a race the database resolves by aborting (deadlock, busy); retrying may succeed."""


class StorageUnavailableError(StorageError):
    """The database could not be read or written (I/O error, disk full, connection lost):
    the unit of work did not commit, or (a failed commit) its outcome is unknown."""


class MigrationError(StorageError):
    """The database schema is newer than this code, or an applied migration was edited."""
