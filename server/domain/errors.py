"""Domain errors: plain Python, no grpc. The API layer maps ``kind`` to a status code,
``reason`` to ``google.rpc.ErrorInfo``, ``violations`` to ``BadRequest`` and
``retry_after`` to ``RetryInfo`` (docs/domain-api.md has the table)."""

# The classes are named after the outcome they report (CardFrozen, not CardFrozenError),
# as python-api-core names its exceptions after status codes; the API contract uses them.
# ruff: noqa: N818

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "ALL_ERRORS",
    "AccountLocked",
    "AccountUnavailable",
    "BadCheck",
    "BankTransferRequired",
    "CardAlreadyBound",
    "CardExpired",
    "CardFrozen",
    "CardLocked",
    "CardNotBound",
    "CardNotFound",
    "CardSpent",
    "CardVoid",
    "ChallengeRequired",
    "ClientLocked",
    "Contention",
    "CurrencyMismatch",
    "DailyLimitReached",
    "DeadlinePassed",
    "DepartmentExists",
    "DepartmentNotFound",
    "DomainError",
    "ErrorKind",
    "ExportNeedsAdmin",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InvalidArgument",
    "KeyringError",
    "LossReportDecided",
    "LossReportNotFound",
    "LossReportPending",
    "LossReportingNotAllowed",
    "LotExported",
    "LotNotFound",
    "LotNotReady",
    "LotVoid",
    "MalformedCode",
    "MemberNotFound",
    "NotCardHolder",
    "NotRefundable",
    "NotReversible",
    "NotSameHolder",
    "OrderNotFound",
    "OrderWrongState",
    "OrganizationExists",
    "OrganizationNotFound",
    "OverFaceValue",
    "Overloaded",
    "PaymentMismatch",
    "PermissionDenied",
    "ProductExists",
    "ProductNotFound",
    "ProductRetired",
    "RealNameRequired",
    "ReservationLimit",
    "RevealLimit",
    "SoldOut",
    "StorageUnavailable",
    "TokenExpired",
    "TransactionNotFound",
    "TransferLimitReached",
    "Unauthenticated",
]


class ErrorKind(enum.StrEnum):
    """gRPC status names, spelled out so the domain never imports grpc."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ABORTED = "ABORTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class KeyringError(Exception):
    """Key material is missing, malformed or exposed; a startup failure, not a call's answer."""


class DomainError(Exception):
    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        violations: tuple[FieldViolation, ...] = (),
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)
        self.violations = violations
        self.retry_after = retry_after
        self.metadata: Mapping[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    kind, reason, default_message = ErrorKind.INVALID_ARGUMENT, "INVALID_ARGUMENT", "invalid argument"

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", violations=(FieldViolation(field, description),))


class MalformedCode(DomainError):
    kind, reason, default_message = ErrorKind.INVALID_ARGUMENT, "CODE_MALFORMED", "the code is malformed"


class BadCheck(DomainError):
    kind, reason = ErrorKind.INVALID_ARGUMENT, "CODE_BAD_CHECK"
    default_message = "the code has a typo (its check character does not match)"

    def __init__(self, suggestion: str | None = None) -> None:
        desc = "check character does not match" + (f"; did you mean {suggestion}?" if suggestion else "")
        super().__init__(
            violations=(FieldViolation("code", desc),),
            metadata={"suggestion": suggestion} if suggestion else None,
        )
        self.suggestion = suggestion


class Unauthenticated(DomainError):
    kind, reason, default_message = (
        ErrorKind.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        "a valid 'authorization: Bearer <token>' is required",
    )


class TokenExpired(Unauthenticated):
    # Said to the token's holder only: a guessed token is unknown, whatever its age.
    # Metadata ``expired_at``: when it stopped working (ISO 8601, UTC).
    kind, reason, default_message = (
        ErrorKind.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
        "this token has expired; ask for a new one",
    )


class PermissionDenied(DomainError):
    kind, reason, default_message = (
        ErrorKind.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        "not allowed for this role",
    )


class ExportNeedsAdmin(PermissionDenied):
    reason = "EXPORT_NEEDS_ADMIN"
    default_message = "this lot was exported once; a later export needs the admin role"


class ProductNotFound(DomainError):
    kind, reason, default_message = ErrorKind.NOT_FOUND, "PRODUCT_NOT_FOUND", "no such product"


class ProductExists(DomainError):
    kind, reason, default_message = (
        ErrorKind.ALREADY_EXISTS,
        "PRODUCT_EXISTS",
        "a product with this sku exists",
    )


class ProductRetired(DomainError):
    """The product is no longer sold: no new orders, lots or pool stock for it (its cards
    already issued stay good). Metadata: ``sku``, ``retired_at``."""

    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "PRODUCT_RETIRED",
        "this product is retired: it is no longer sold",
    )


class LotNotFound(DomainError):
    kind, reason, default_message = ErrorKind.NOT_FOUND, "LOT_NOT_FOUND", "no such lot"


class LotNotReady(DomainError):
    kind, reason, default_message = ErrorKind.FAILED_PRECONDITION, "LOT_NOT_READY", "the lot is still minting"


class LotVoid(DomainError):
    kind, reason, default_message = ErrorKind.FAILED_PRECONDITION, "LOT_VOID", "the lot is void"


class CardNotFound(DomainError):
    kind, reason = ErrorKind.NOT_FOUND, "CARD_NOT_FOUND"
    # One message for "no such code", "wrong card number" and "not yours": the answer must
    # not tell a guesser which of those it was.
    default_message = "card number or password does not match"


class CardAlreadyBound(DomainError):
    kind, reason, default_message = (
        ErrorKind.ALREADY_EXISTS,
        "CARD_ALREADY_BOUND",
        "the card is bound to another account",
    )


class CardFrozen(DomainError):
    kind, reason, default_message = ErrorKind.FAILED_PRECONDITION, "CARD_FROZEN", "the card is frozen"


class CardExpired(DomainError):
    kind, reason, default_message = ErrorKind.FAILED_PRECONDITION, "CARD_EXPIRED", "the card has expired"


class CardVoid(DomainError):
    kind, reason, default_message = ErrorKind.FAILED_PRECONDITION, "CARD_VOID", "the card is void"


class TransferLimitReached(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "TRANSFER_LIMIT_REACHED",
        "this account has bound its yearly number of transferred cards",
    )


class CardLocked(DomainError):
    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "CARD_LOCKED",
        "too many failed attempts on this card; try again later",
    )


class AccountLocked(DomainError):
    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "ACCOUNT_LOCKED",
        "too many failed attempts on this account; try again later",
    )


class ClientLocked(DomainError):
    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "CLIENT_LOCKED",
        "too many failed attempts from this client; try again later",
    )


class ChallengeRequired(DomainError):
    # The middle tier between a hint and a lock: the guess was not evaluated (nor counted).
    # Metadata ``subject``: which counter asks for it (card, account, address or device).
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "CHALLENGE_REQUIRED",
        "too many failed attempts: pass a challenge (x-challenge-passed) and try again",
    )


class DailyLimitReached(DomainError):
    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "DAILY_LIMIT_REACHED",
        "this account's redemptions today would pass the daily limit",
    )


class InsufficientFunds(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
        "insufficient balance",
    )


class CurrencyMismatch(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "CURRENCY_MISMATCH",
        "the card holds another currency",
    )


class TransactionNotFound(DomainError):
    kind, reason, default_message = ErrorKind.NOT_FOUND, "TRANSACTION_NOT_FOUND", "no such transaction"


class NotReversible(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "NOT_REVERSIBLE",
        "not a redemption, or more than is left of it",
    )


class NotSameHolder(DomainError):
    # A transfer between cards of two different holders (or from a bound card to a bearer
    # card, or back): money moves between one holder's own cards only (docs/domain-api.md).
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "NOT_SAME_HOLDER",
        "a balance moves only between cards of one holder",
    )


class OverFaceValue(DomainError):
    # Metadata ``room``: what the target card can still take (face value minus balance).
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "OVER_FACE_VALUE",
        "the target card cannot hold more than its face value",
    )


class IdempotencyKeyReused(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
        "this request id was used before with different parameters",
    )


class Contention(DomainError):
    kind, reason, default_message = (
        ErrorKind.ABORTED,
        "CONTENTION",
        "the database aborted the transaction under contention; retry",
    )


class Overloaded(DomainError):
    """The server has as many calls in flight as it admits: this one was refused before it
    did anything (server/api/admission.py); retry after ``retry_after``."""

    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "OVERLOADED",
        "the server is at its limit of calls in flight; retry shortly",
    )


class StorageUnavailable(DomainError):
    # The database failed (I/O error, disk full, connection lost). Nothing half-applied: a
    # unit of work commits whole or not at all; a commit that failed midway may still have
    # reached the disk, so retry with the same request id (it answers the first outcome).
    kind, reason, default_message = (
        ErrorKind.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        "the database cannot be written or read right now; retry with the same request id",
    )


class DeadlinePassed(DomainError):
    kind, reason, default_message = (
        ErrorKind.DEADLINE_EXCEEDED,
        "DEADLINE_PASSED",
        "the call's deadline passed before its change could be committed: nothing changed",
    )


# -- orders (the card shop)


class OrderNotFound(DomainError):
    # Also the answer to a customer naming someone else's order: order ids are sequential,
    # so "exists but not yours" would let anyone count the shop's sales.
    kind, reason, default_message = ErrorKind.NOT_FOUND, "ORDER_NOT_FOUND", "no such order"


class SoldOut(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "SOLD_OUT",
        "not enough codes of this product and value left in the pool; nothing was reserved",
    )


class ReservationLimit(DomainError):
    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "RESERVATION_LIMIT",
        "too many codes reserved and unpaid; pay or cancel an order, or wait for one to expire",
    )


class RevealLimit(DomainError):
    kind, reason, default_message = (
        ErrorKind.RESOURCE_EXHAUSTED,
        "REVEAL_LIMIT",
        "too many full views of delivered codes; try again later",
    )


class PaymentMismatch(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "PAYMENT_MISMATCH",
        "the payment's amount or currency is not the order's",
    )


class RealNameRequired(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "REAL_NAME_REQUIRED",
        "an order this large needs a buyer whose real name was verified",
    )


class BankTransferRequired(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "BANK_TRANSFER_REQUIRED",
        "an order this large can only be paid by bank transfer",
    )


class OrderWrongState(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "ORDER_WRONG_STATE",
        "the order is not in a state that allows this",
    )


class NotRefundable(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "NOT_REFUNDABLE",
        "a delivered code is refundable only while it is unbound, unspent and active",
    )


class LotExported(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "LOT_EXPORTED",
        "the lot's plaintext was exported: its codes cannot be sold from the pool",
    )


class OrganizationNotFound(DomainError):
    kind, reason, default_message = (
        ErrorKind.NOT_FOUND,
        "ORGANIZATION_NOT_FOUND",
        "no such organization",
    )


class OrganizationExists(DomainError):
    kind, reason, default_message = (
        ErrorKind.ALREADY_EXISTS,
        "ORGANIZATION_EXISTS",
        "an organization of that name exists already",
    )


class DepartmentNotFound(DomainError):
    kind, reason, default_message = (ErrorKind.NOT_FOUND, "DEPARTMENT_NOT_FOUND", "no such department")


class DepartmentExists(DomainError):
    kind, reason, default_message = (
        ErrorKind.ALREADY_EXISTS,
        "DEPARTMENT_EXISTS",
        "the organization has a department of that name already",
    )


class MemberNotFound(DomainError):
    kind, reason, default_message = (
        ErrorKind.NOT_FOUND,
        "MEMBER_NOT_FOUND",
        "no such member of this organization",
    )


class AccountUnavailable(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "ACCOUNT_UNAVAILABLE",
        "this account cannot be made a member here (pick a new account id, or ask staff to link it)",
    )


# -- loss reports (ComplianceService.ReportLoss / ReviewLoss)


class CardNotBound(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "CARD_NOT_BOUND",
        "the card is bound to no account: only a holder on record can report it lost",
    )


class NotCardHolder(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "NOT_CARD_HOLDER",
        "the card is not bound to this account",
    )


class CardSpent(DomainError):
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "CARD_SPENT",
        "the card holds nothing: there is no balance to reissue",
    )


class LossReportingNotAllowed(DomainError):
    # Metadata ``profile`` (name@version) and ``card_kind`` (anonymous or registered).
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "LOSS_REPORTING_NOT_ALLOWED",
        "the compliance profile does not allow reporting this kind of card lost",
    )


class LossReportPending(DomainError):
    # Metadata ``report_id``: the report already waiting for review.
    kind, reason, default_message = (
        ErrorKind.ALREADY_EXISTS,
        "LOSS_REPORT_PENDING",
        "a loss report on this card is already waiting for review",
    )


class LossReportDecided(DomainError):
    # Metadata ``status``: approved or rejected.
    kind, reason, default_message = (
        ErrorKind.FAILED_PRECONDITION,
        "LOSS_REPORT_DECIDED",
        "the loss report was reviewed already",
    )


class LossReportNotFound(DomainError):
    kind, reason, default_message = ErrorKind.NOT_FOUND, "LOSS_REPORT_NOT_FOUND", "no such loss report"


ALL_ERRORS: tuple[type[DomainError], ...] = (
    InvalidArgument,
    MalformedCode,
    BadCheck,
    Unauthenticated,
    TokenExpired,
    PermissionDenied,
    ExportNeedsAdmin,
    ProductNotFound,
    ProductExists,
    ProductRetired,
    LotNotFound,
    LotNotReady,
    LotVoid,
    CardNotFound,
    CardAlreadyBound,
    CardFrozen,
    CardExpired,
    CardVoid,
    TransferLimitReached,
    CardLocked,
    AccountLocked,
    ClientLocked,
    ChallengeRequired,
    DailyLimitReached,
    InsufficientFunds,
    CurrencyMismatch,
    TransactionNotFound,
    NotReversible,
    NotSameHolder,
    OverFaceValue,
    IdempotencyKeyReused,
    Contention,
    StorageUnavailable,
    DeadlinePassed,
    Overloaded,
    OrderNotFound,
    SoldOut,
    ReservationLimit,
    RevealLimit,
    PaymentMismatch,
    RealNameRequired,
    BankTransferRequired,
    OrderWrongState,
    NotRefundable,
    LotExported,
    OrganizationNotFound,
    OrganizationExists,
    DepartmentNotFound,
    DepartmentExists,
    MemberNotFound,
    AccountUnavailable,
    CardNotBound,
    NotCardHolder,
    CardSpent,
    LossReportingNotAllowed,
    LossReportPending,
    LossReportDecided,
    LossReportNotFound,
)
