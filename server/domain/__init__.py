"""cardmint.server.domain: the business rules (catalog, lots, cards, balances, auth) in plain
Python. No grpc, no SQL: it calls cardmint.server.storage and raises domain errors.

docs/domain-api.md is the contract with the API layer.
"""

from cardmint.server.storage import Delivery, Lot, LotStatus, Product, Role

from ._context import DomainConfig
from .auth import AuthService, IssuedToken, Principal
from .balances import AccountBalance, CardBalance, Money, MoneyReceipt, Transaction, TransactionPage
from .cards import BindReceipt, CardView, Origin
from .errors import (
    ALL_ERRORS,
    AccountLocked,
    BadCheck,
    CardAlreadyBound,
    CardExpired,
    CardFrozen,
    CardLocked,
    CardNotFound,
    CardVoid,
    ClientLocked,
    Contention,
    CurrencyMismatch,
    DailyLimitReached,
    DomainError,
    ErrorKind,
    ExportNeedsAdmin,
    FieldViolation,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidArgument,
    KeyringError,
    LotNotFound,
    LotNotReady,
    LotVoid,
    MalformedCode,
    NotReversible,
    PermissionDenied,
    ProductExists,
    ProductNotFound,
    TransactionNotFound,
    TransferLimitReached,
    Unauthenticated,
)
from .issued_index import IssuedIndex
from .keyring import Keyring
from .keys import CheckResult, CheckStatus
from .lots import LotChunk
from .service import Domain

__all__ = [
    "ALL_ERRORS",
    "AccountBalance",
    "AccountLocked",
    "AuthService",
    "BadCheck",
    "BindReceipt",
    "CardAlreadyBound",
    "CardBalance",
    "CardExpired",
    "CardFrozen",
    "CardLocked",
    "CardNotFound",
    "CardView",
    "CardVoid",
    "CheckResult",
    "CheckStatus",
    "ClientLocked",
    "Contention",
    "CurrencyMismatch",
    "DailyLimitReached",
    "Delivery",
    "Domain",
    "DomainConfig",
    "DomainError",
    "ErrorKind",
    "ExportNeedsAdmin",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InvalidArgument",
    "IssuedIndex",
    "IssuedToken",
    "Keyring",
    "KeyringError",
    "Lot",
    "LotChunk",
    "LotNotFound",
    "LotNotReady",
    "LotStatus",
    "LotVoid",
    "MalformedCode",
    "Money",
    "MoneyReceipt",
    "NotReversible",
    "Origin",
    "PermissionDenied",
    "Principal",
    "Product",
    "ProductExists",
    "ProductNotFound",
    "Role",
    "Transaction",
    "TransactionNotFound",
    "TransactionPage",
    "TransferLimitReached",
    "Unauthenticated",
]
