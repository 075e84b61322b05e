"""cardmint.client: the Python gRPC client of the cardmint server.

    from cardmint.client import Client, CardNotFound
    with Client("127.0.0.1:50051", token) as c:
        product = c.create_product(sku="GC-100", name="Gift card", currency="CNY", denominations=[10000])
        lot = c.create_lot("GC-100", count=1000, face_value=10000)
        for serial, code in c.stream_lot(lot.id): ...
        try:
            c.bind_card(code, account="alice")
        except CardNotFound: ...

Every call has a deadline (``timeout``, default 10 s; bulk and streaming calls take their
own). Only calls that cannot change anything twice are retried, on UNAVAILABLE and on
ABORTED (database contention): reads, and Redeem/Reverse, which carry a request id — the
client makes one up when the caller gives none and reuses it for every retry, and the
server answers a repeated id with the first answer; likewise ReportLoss, ReviewLoss and
CreateOrder (request id), ConfirmPayment (payment id), and CancelOrder and RefundOrder,
whose repeat answers the state the first reached. BindCard is never retried: every failed attempt counts against the
account's limit; nor is a GetOrder that reveals codes (each counts against the buyer's).

A failed call raises a ``CardmintError`` subclass chosen by the ``ErrorInfo.reason`` of the
status details: the server's table read backwards. The client imports nothing of the server.
"""

from __future__ import annotations

import ipaddress
import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import grpc
from cardmint.v1 import (
    account_pb2,
    account_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    card_pb2,
    card_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    compliance_pb2,
    compliance_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    lot_pb2,
    lot_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
)
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

if TYPE_CHECKING:  # numpy is imported by the calls that move packed codes, when first made
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "ERRORS",
    "AccountLocked",
    "AccountUnavailable",
    "BadCheck",
    "BankTransferRequired",
    "BulkBindResult",
    "CardAlreadyBound",
    "CardExpired",
    "CardFrozen",
    "CardLocked",
    "CardNotBound",
    "CardNotFound",
    "CardSpent",
    "CardVoid",
    "CardmintError",
    "ChallengeRequired",
    "CheckBatch",
    "CheckResult",
    "Client",
    "ClientLocked",
    "Contention",
    "CurrencyMismatch",
    "DailyLimitReached",
    "DeadlineExceeded",
    "DepartmentExists",
    "DepartmentNotFound",
    "ExportNeedsAdmin",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InternalError",
    "InvalidArgument",
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
    "Unavailable",
    "channel_target",
    "tls_credentials",
]

T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class CardmintError(Exception):
    """A call failed. ``reason`` is the server's ErrorInfo reason (UPPER_SNAKE)."""

    reason: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason or type(self).reason  # type: ignore[misc]
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations = tuple(violations)
        self.retry_after = retry_after


# One class per server reason (docs/api.md). Grouped under a few bases by status code, so a
# caller can catch "any not-found" as well as exactly CardNotFound.
class InvalidArgument(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "INVALID_ARGUMENT"


class MalformedCode(InvalidArgument):
    reason = "CODE_MALFORMED"


class BadCheck(InvalidArgument):
    """A typo in the code; ``suggestion`` is set when exactly one issued code is one edit away."""

    reason = "CODE_BAD_CHECK"

    @property
    def suggestion(self) -> str | None:
        return self.metadata.get("suggestion")


class Unauthenticated(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "UNAUTHENTICATED"


class TokenExpired(Unauthenticated):
    """The token's lifetime is over (``metadata["expired_at"]``, ISO 8601): get a new one."""

    reason = "TOKEN_EXPIRED"


class PermissionDenied(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "PERMISSION_DENIED"


class ExportNeedsAdmin(PermissionDenied):
    reason = "EXPORT_NEEDS_ADMIN"


class NotFound(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "NOT_FOUND"


class ProductNotFound(NotFound):
    reason = "PRODUCT_NOT_FOUND"


class LotNotFound(NotFound):
    reason = "LOT_NOT_FOUND"


class CardNotFound(NotFound):
    reason = "CARD_NOT_FOUND"


class TransactionNotFound(NotFound):
    reason = "TRANSACTION_NOT_FOUND"


class AlreadyExists(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "ALREADY_EXISTS"


class ProductExists(AlreadyExists):
    reason = "PRODUCT_EXISTS"


class CardAlreadyBound(AlreadyExists):
    reason = "CARD_ALREADY_BOUND"


class FailedPrecondition(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "FAILED_PRECONDITION"


class LotNotReady(FailedPrecondition):
    reason = "LOT_NOT_READY"


class LotVoid(FailedPrecondition):
    reason = "LOT_VOID"


class CardFrozen(FailedPrecondition):
    reason = "CARD_FROZEN"


class CardExpired(FailedPrecondition):
    reason = "CARD_EXPIRED"


class CardVoid(FailedPrecondition):
    reason = "CARD_VOID"


class TransferLimitReached(FailedPrecondition):
    reason = "TRANSFER_LIMIT_REACHED"


class DailyLimitReached(CardmintError):  # noqa: N818 - named after the reason, like the server's
    """Redemptions on this account today would pass the compliance profile's daily limit;
    ``retry_after`` is the time until the day (UTC) ends."""

    reason = "DAILY_LIMIT_REACHED"


class InsufficientFunds(FailedPrecondition):
    reason = "INSUFFICIENT_FUNDS"


class CurrencyMismatch(FailedPrecondition):
    reason = "CURRENCY_MISMATCH"


class NotReversible(FailedPrecondition):
    reason = "NOT_REVERSIBLE"


class NotSameHolder(FailedPrecondition):
    """A transfer between cards of two holders (or a bound and a bearer card): refused."""

    reason = "NOT_SAME_HOLDER"


class OverFaceValue(FailedPrecondition):
    """A transfer would take the target card past its face value; metadata ``room``."""

    reason = "OVER_FACE_VALUE"


class IdempotencyKeyReused(FailedPrecondition):
    reason = "IDEMPOTENCY_KEY_REUSED"


class OrderNotFound(NotFound):
    reason = "ORDER_NOT_FOUND"


class ProductRetired(FailedPrecondition):
    """The product is no longer sold (no new orders, lots or pool stock); cards already
    issued stay good. Metadata: ``sku``, ``retired_at``."""

    reason = "PRODUCT_RETIRED"


class SoldOut(FailedPrecondition):
    """Not enough codes left for a line of the order; nothing was reserved. Metadata:
    ``sku``, ``face_value``, ``available``."""

    reason = "SOLD_OUT"


class PaymentMismatch(FailedPrecondition):
    """Amount, currency or payment method differ from the order's; metadata has the order's."""

    reason = "PAYMENT_MISMATCH"


class RealNameRequired(FailedPrecondition):
    """The order reaches the profile's real-name threshold and the buyer's real name is not
    verified (staff: AccountService.VerifyRealName); metadata ``threshold``, ``currency``."""

    reason = "REAL_NAME_REQUIRED"


class BankTransferRequired(FailedPrecondition):
    """The order reaches the profile's bank-transfer threshold: create it with
    ``payment_method="bank_transfer"``; metadata ``threshold``, ``currency``, ``buyer``."""

    reason = "BANK_TRANSFER_REQUIRED"


class OrderWrongState(FailedPrecondition):
    """The order is not in a state that allows the call; metadata ``status``."""

    reason = "ORDER_WRONG_STATE"


class NotRefundable(FailedPrecondition):
    reason = "NOT_REFUNDABLE"


class LotExported(FailedPrecondition):
    reason = "LOT_EXPORTED"


class OrganizationNotFound(NotFound):
    reason = "ORGANIZATION_NOT_FOUND"


class OrganizationExists(AlreadyExists):
    reason = "ORGANIZATION_EXISTS"


class DepartmentNotFound(NotFound):
    reason = "DEPARTMENT_NOT_FOUND"


class DepartmentExists(AlreadyExists):
    reason = "DEPARTMENT_EXISTS"


class MemberNotFound(NotFound):
    reason = "MEMBER_NOT_FOUND"


class AccountUnavailable(FailedPrecondition):
    """The account cannot be made a member by this caller (another organization's, or an
    existing account only staff may link)."""

    reason = "ACCOUNT_UNAVAILABLE"


class ChallengeRequired(FailedPrecondition):
    """Too many failed binds: the guess was not evaluated. Have the person pass a challenge
    and call again with ``challenge_passed=True``; metadata ``subject`` names the counter
    (card, account, address or device) that asked."""

    reason = "CHALLENGE_REQUIRED"


class CardNotBound(FailedPrecondition):
    reason = "CARD_NOT_BOUND"


class NotCardHolder(FailedPrecondition):
    reason = "NOT_CARD_HOLDER"


class CardSpent(FailedPrecondition):
    """Nothing left on the card to reissue."""

    reason = "CARD_SPENT"


class LossReportingNotAllowed(FailedPrecondition):
    """The compliance profile forbids loss reports for this kind of card; metadata
    ``profile``, ``card_kind``."""

    reason = "LOSS_REPORTING_NOT_ALLOWED"


class LossReportPending(AlreadyExists):
    """A report on the card already waits for review; metadata ``report_id``."""

    reason = "LOSS_REPORT_PENDING"


class LossReportDecided(FailedPrecondition):
    """The report was reviewed already; metadata ``status``."""

    reason = "LOSS_REPORT_DECIDED"


class LossReportNotFound(NotFound):
    reason = "LOSS_REPORT_NOT_FOUND"


class Locked(CardmintError):  # noqa: N818 - named after the status, like the server's
    """Too many failed attempts; ``retry_after`` says when to try again (seconds)."""

    reason = "RESOURCE_EXHAUSTED"


class CardLocked(Locked):
    reason = "CARD_LOCKED"


class AccountLocked(Locked):
    reason = "ACCOUNT_LOCKED"


class ClientLocked(Locked):
    """Too many failed attempts from this client address or device id."""

    reason = "CLIENT_LOCKED"


class ReservationLimit(Locked):
    """Too many codes reserved and unpaid for an account or a client address."""

    reason = "RESERVATION_LIMIT"


class RevealLimit(Locked):
    reason = "REVEAL_LIMIT"


class Contention(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "CONTENTION"


class Overloaded(CardmintError):  # noqa: N818 - named after the reason, like the server's
    """The server had its limit of calls in flight and refused this one before doing
    anything; ``retry_after`` (seconds, from RetryInfo, when the server sent one) says when
    to try again. Also raised for a RESOURCE_EXHAUSTED without details: grpc's own
    concurrency limit, the server's usual refusal. ``Client``'s unary calls retry it
    themselves, with backoff, until their timeout: raised only when that ran out."""

    reason = "OVERLOADED"


class InternalError(CardmintError):
    reason = "INTERNAL"


class DeadlineExceeded(CardmintError):  # noqa: N818 - named after the status
    """The call's deadline passed. The server commits nothing after a call's deadline, but
    one that committed just before it is not known here: retry with the same request id
    (it answers the first outcome)."""

    reason = "DEADLINE_PASSED"


class Unavailable(CardmintError):  # noqa: N818 - named after the status, like the server's
    """The server could not be reached, is shutting down, or dropped the call unseen (grpc
    core sheds calls the server's serving thread has not taken in time: the status is then
    CANCELLED, which this client never causes itself). Calls with a request id were retried."""

    reason = "UNAVAILABLE"


class StorageUnavailable(Unavailable):
    """The server's database failed (I/O error, disk full, connection lost). Nothing was
    half-applied; retry with the same request id (it answers the first outcome)."""

    reason = "STORAGE_UNAVAILABLE"


ERRORS: dict[str, type[CardmintError]] = {
    cls.reason: cls
    for cls in (
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
        DailyLimitReached,
        CardLocked,
        AccountLocked,
        ClientLocked,
        ChallengeRequired,
        InsufficientFunds,
        CurrencyMismatch,
        TransactionNotFound,
        NotReversible,
        NotSameHolder,
        OverFaceValue,
        IdempotencyKeyReused,
        Contention,
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
        DeadlineExceeded,
        InternalError,
        StorageUnavailable,
    )
}
# A reason this client does not know yet (a newer server) still gets the right family.
_BY_CODE: dict[grpc.StatusCode, type[CardmintError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Locked,
    grpc.StatusCode.ABORTED: Contention,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,  # only ever the server's side: see Unavailable
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_from(exc: grpc.RpcError) -> CardmintError:
    """The typed exception for a failed call, rebuilt from its google.rpc status details."""
    call: Any = exc
    code: grpc.StatusCode = call.code()
    message: str = call.details() or code.name
    reason, metadata, violations, retry_after = "", {}, [], None
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details inconsistent with the status line: trust the status line
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    if not reason and code == grpc.StatusCode.RESOURCE_EXHAUSTED and message == GRPC_CONCURRENCY_LIMIT:
        reason = Overloaded.reason  # grpc's own backstop refused it (no details), not a lock
    cls = ERRORS.get(reason) or _BY_CODE.get(code, CardmintError)
    return cls(
        message, code=code, reason=reason, metadata=metadata, violations=violations, retry_after=retry_after
    )


@dataclass(frozen=True)
class BulkBindResult:
    """One row's result of a bulk bind: ``ok``, and ``reason`` ("bound", "already bound to
    this recipient", or why it failed); the card's number and the recipient's account id
    when the row got that far."""

    ok: bool
    reason: str
    serial: str
    account: str
    replayed: bool = False


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one code of a bulk check (``status``: ok, unknown, corrected, ...)."""

    code: str
    status: str
    normalized: str
    suggestion: str | None


_CHECK_STATUS = {
    value.number: value.name.removeprefix("CODE_STATUS_").lower()
    for value in keys_pb2.DESCRIPTOR.enum_types_by_name["CodeStatus"].values
}
_CHECK_CODE = {name: number for number, name in _CHECK_STATUS.items()}


class CheckBatch:
    """Verdicts on many codes as arrays (``Client.check_many``), row i for input i.

    ``status`` holds one ``CodeStatus`` number per row: compare it with ``code("ok")``
    and friends, or count with ``counts()``; ``result(i)`` gives one row as a
    ``CheckResult``. No Python object per row is made until asked for.
    """

    def __init__(self, codes: Sequence[str], responses: Sequence[keys_pb2.CheckResponse]) -> None:
        import numpy as np

        self._codes = codes
        self.status: npt.NDArray[np.uint8] = (
            np.concatenate([np.frombuffer(r.status, dtype=np.uint8) for r in responses])
            if responses
            else np.zeros(0, dtype=np.uint8)
        )
        if len(self.status) != len(codes):
            raise CardmintError(
                f"the server answered {len(self.status)} of {len(codes)} codes",
                code=grpc.StatusCode.DATA_LOSS,
            )
        # Per response: (first row, normalized data, its offsets); suggestions are sparse.
        self._normalized: list[tuple[int, bytes, npt.NDArray[np.int64]]] = []
        self.suggestions: dict[int, str] = {}
        row = 0
        for r in responses:
            self._normalized.append((row, r.normalized.data, _offsets(r.normalized)))
            if r.suggestions.data:  # usually empty: decode only the rows that have one
                data, offsets = r.suggestions.data, _offsets(r.suggestions)
                for i in np.flatnonzero(np.diff(offsets)).tolist():
                    self.suggestions[row + i] = data[offsets[i] : offsets[i + 1]].decode("utf-8")
            row += len(r.status)

    @staticmethod
    def code(name: str) -> int:
        """The ``status`` number of a status name (ok, unknown, corrected, bad_check, ...)."""
        return _CHECK_CODE[name]

    def __len__(self) -> int:
        return len(self.status)

    def counts(self) -> dict[str, int]:
        import numpy as np

        numbers, counts = np.unique(self.status, return_counts=True)
        return {
            _CHECK_STATUS.get(int(n), "unspecified"): int(c) for n, c in zip(numbers, counts, strict=True)
        }

    def normalized(self, i: int) -> str:
        for first, data, offsets in reversed(self._normalized):
            if i >= first:
                j = i - first
                return data[offsets[j] : offsets[j + 1]].decode("utf-8")
        raise IndexError(i)

    def result(self, i: int) -> CheckResult:
        return CheckResult(
            self._codes[i],
            _CHECK_STATUS.get(int(self.status[i]), "unspecified"),
            self.normalized(i),
            self.suggestions.get(i),
        )

    def results(self) -> Iterator[CheckResult]:
        return (self.result(i) for i in range(len(self)))


# What grpcio's server answers (RESOURCE_EXHAUSTED, no details) past maximum_concurrent_rpcs.
GRPC_CONCURRENCY_LIMIT = "Concurrent RPC limit exceeded!"
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED)


def _pack(strings: Sequence[str]) -> common_pb2.PackedStrings:
    import numpy as np

    joined = "".join(strings)
    data = joined.encode("utf-8", "surrogatepass")
    if len(data) == len(joined):  # all ASCII (the usual case): byte lengths = str lengths
        lengths = np.fromiter(map(len, strings), dtype=np.uint32, count=len(strings))
        if len(lengths) and int(lengths.min()) == int(lengths.max()) > 0:
            return common_pb2.PackedStrings(data=data, width=int(lengths[0]))
        return common_pb2.PackedStrings(data=data, lengths=lengths.tolist())
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    return common_pb2.PackedStrings(data=b"".join(encoded), lengths=[len(e) for e in encoded])


def _offsets(packed: common_pb2.PackedStrings) -> npt.NDArray[np.int64]:
    import numpy as np

    if packed.width:
        return np.arange(len(packed.data) // packed.width + 1, dtype=np.int64) * packed.width
    offsets = np.zeros(len(packed.lengths) + 1, dtype=np.int64)
    np.cumsum(np.array(packed.lengths, dtype=np.int64), out=offsets[1:])
    return offsets


def _unpack(packed: common_pb2.PackedStrings) -> list[str]:
    data = packed.data
    if packed.width:
        w = packed.width
        return [data[i : i + w].decode("utf-8") for i in range(0, len(data), w)]
    out, start = [], 0
    for n in packed.lengths:
        out.append(data[start : start + n].decode("utf-8"))
        start += n
    return out


def _unpack_array(packed: common_pb2.PackedStrings) -> npt.NDArray[np.bytes_]:
    """``PackedStrings`` as an ``S`` array: the message's buffer itself when fixed-width."""
    import numpy as np

    data = packed.data
    if packed.width:
        if len(data) % packed.width:
            raise InternalError(
                "packed strings whose data is not a multiple of their width", code=grpc.StatusCode.INTERNAL
            )
        return np.frombuffer(data, dtype=f"S{packed.width}")
    items = [s.encode("utf-8") for s in _unpack(packed)]
    return np.array(items, dtype=np.bytes_) if items else np.empty(0, dtype="S1")


def _payment_method(method: str) -> order_pb2.PaymentMethod.ValueType:
    return order_pb2.PaymentMethod.Value(f"PAYMENT_METHOD_{method.upper()}")


_SCHEMES = ("ipv4", "ipv6", "dns", "unix", "unix-abstract", "vsock")


def channel_target(addr: str) -> tuple[str, list[tuple[str, Any]]]:
    """The grpc target and channel options for ``addr``: one ``HOST:PORT`` as it is; several,
    comma-separated (the processes of ``cardmint serve --processes N``, each ``IP:PORT``),
    as one ``ipv4:``/``ipv6:`` target whose calls gRPC's round_robin spreads over all of
    them, skipping any that is down; a target with its own scheme (``dns:…``) as it is,
    round robin when it names several."""
    if "," not in addr:
        return addr, []
    balanced: list[tuple[str, Any]] = [("grpc.lb_policy_name", "round_robin")]
    if addr.split(":", 1)[0] in _SCHEMES:
        return addr, balanced
    parts = [p.strip() for p in addr.split(",") if p.strip()]
    if all(p.startswith("[") for p in parts):
        return "ipv6:" + ",".join(parts), balanced
    if all(_ipv4_port(p) for p in parts):
        return "ipv4:" + ",".join(parts), balanced
    raise ValueError(f"several addresses are IP:PORT each (a host name: one dns: target), not {addr!r}")


def _ipv4_port(part: str) -> bool:
    host, sep, port = part.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return bool(sep) and port.isdigit()


def tls_credentials(
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """Credentials for ``Client(tls=...)``: trust the CA certificate(s) in PEM file ``ca``
    (None: the system's roots) and, for a server that asks for mutual TLS, present the
    client certificate ``cert`` with its private ``key``."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")

    def read(path: str | os.PathLike[str] | None) -> bytes | None:
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


class Client:
    """A connection to a cardmint server, acting as the holder of ``token``. ``addr``:
    ``HOST:PORT``, or several ``IP:PORT`` comma-separated (``channel_target``)."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        timeout: float = 10.0,
        bulk_timeout: float = 600.0,
        retries: int = 3,
        channel: grpc.Channel | None = None,
        device_id: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``tls``: connect over TLS with these credentials (``tls_credentials``), else
        plaintext."""
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if channel is not None:
            self._channel = channel
        else:
            target, balancing = channel_target(addr)
            options += balancing
            if tls is not None:
                self._channel = grpc.secure_channel(target, tls, options=options)
            else:
                self._channel = grpc.insecure_channel(target, options=options)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)
        if device_id:  # lets the server count failed guesses per device as well
            self._metadata += (("x-device-id", device_id),)
        self.timeout = timeout
        self.bulk_timeout = bulk_timeout
        self.retries = retries
        self.keys = keys_pb2_grpc.KeyServiceStub(self._channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        self.lots = lot_pb2_grpc.LotServiceStub(self._channel)
        self.cards = card_pb2_grpc.CardServiceStub(self._channel)
        self.balances = balance_pb2_grpc.BalanceServiceStub(self._channel)
        self.events = event_pb2_grpc.EventServiceStub(self._channel)
        self.compliance = compliance_pb2_grpc.ComplianceServiceStub(self._channel)
        self.accounts = account_pb2_grpc.AccountServiceStub(self._channel)
        self.orders = order_pb2_grpc.OrderServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _call(
        self,
        method: Callable[..., T],
        request: Any,
        *,
        retry: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> T:
        attempt = 0
        give_up = time.monotonic() + self.timeout
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata + extra)
            except grpc.RpcError as e:
                err = error_from(e)
                # Jittered exponential backoff: 64 clients retrying a hot card must not stay in step.
                delay = min(2.0, 0.05 * 2 ** (attempt + 1)) * (0.5 + random.random())
                if isinstance(err, Overloaded):
                    # Refused before it did anything (the server was at its limit of calls in
                    # flight): any call may be sent again, idempotent or not. Retried after the
                    # server's RetryInfo or the backoff, for as long as the call's own timeout
                    # allows; this thread sends nothing else meanwhile, so a crowd of clients
                    # backs off instead of piling on.
                    delay = max(delay, err.retry_after or 0.0)
                    if time.monotonic() + delay >= give_up:
                        raise err from None
                elif not retry or err.code not in _RETRYABLE or attempt >= self.retries:
                    raise err from None
            attempt += 1
            time.sleep(delay)

    def _stream(self, responses: Iterable[T]) -> Iterator[T]:
        try:
            yield from responses
        except grpc.RpcError as e:
            raise error_from(e) from None

    # -- keys -----------------------------------------------------------------------------

    def check(self, codes: Iterable[str], *, length: int = 16, chunk: int = 65_536) -> Iterator[CheckResult]:
        """Bulk-check ``codes`` against the issued ones, in order, streaming in chunks."""
        sent: list[list[str]] = []

        def requests() -> Iterator[keys_pb2.CheckRequest]:
            batch: list[str] = []
            first = True
            for code in codes:
                batch.append(code)
                if len(batch) == chunk:
                    sent.append(batch)
                    yield keys_pb2.CheckRequest(codes=_pack(batch), length=length if first else 0)
                    batch, first = [], False
            if batch:
                sent.append(batch)
                yield keys_pb2.CheckRequest(codes=_pack(batch), length=length if first else 0)

        call = self.keys.Check(requests(), timeout=self.bulk_timeout, metadata=self._metadata)
        for i, resp in enumerate(self._stream(call)):
            normalized = _unpack(resp.normalized)
            # An empty suggestions message means "none in this chunk".
            suggestions = (
                _unpack(resp.suggestions) if len(_offsets(resp.suggestions)) > 1 else [""] * len(normalized)
            )
            for code, st, norm, sug in zip(sent[i], resp.status, normalized, suggestions, strict=True):
                yield CheckResult(code, _CHECK_STATUS.get(st, "unspecified"), norm, sug or None)

    def check_many(self, codes: Sequence[str], *, length: int = 16, chunk: int = 1 << 18) -> CheckBatch:
        """Bulk-check ``codes`` and get the verdicts as arrays (``CheckBatch``): the fast
        path for millions of codes, with no Python object per code on the way back."""
        if chunk < 1:
            raise ValueError("chunk must be >= 1")

        def requests() -> Iterator[keys_pb2.CheckRequest]:
            for start in range(0, len(codes), chunk):
                yield keys_pb2.CheckRequest(
                    codes=_pack(codes[start : start + chunk]), length=length if start == 0 else 0
                )

        call = self.keys.Check(requests(), timeout=self.bulk_timeout, metadata=self._metadata)
        return CheckBatch(codes, list(self._stream(call)))

    def generate(self, count: int, *, length: int = 16, prefix: str = "", group: int = 4) -> list[str]:
        """Fresh codes (display form) for the caller's own use; not stored, not issued."""
        request = keys_pb2.GenerateRequest(count=count, length=length, prefix=prefix, group=group)
        out: list[str] = []
        for resp in self._stream(
            self.keys.Generate(request, timeout=self.bulk_timeout, metadata=self._metadata)
        ):
            out.extend(_unpack(resp.codes))
        return out

    # -- catalog --------------------------------------------------------------------------

    def create_product(
        self,
        *,
        sku: str,
        name: str,
        currency: str,
        denominations: Sequence[int] = (),
        amount_range: tuple[int, int] | None = None,
        validity_days: int | None = None,
        review: bool = False,
        code_length: int = 16,
        registered: bool = False,
    ) -> catalog_pb2.Product:
        request = catalog_pb2.CreateProductRequest(
            sku=sku,
            name=name,
            currency=currency,
            denominations=list(denominations),
            amount_range=(
                catalog_pb2.AmountRange(min_minor_units=amount_range[0], max_minor_units=amount_range[1])
                if amount_range
                else None
            ),
            validity_days=validity_days,
            delivery=catalog_pb2.DELIVERY_REVIEW if review else catalog_pb2.DELIVERY_AUTO,
            code_length=code_length,
            registered=registered,
        )
        return self._call(self.catalog.CreateProduct, request)

    def get_product(self, sku: str) -> catalog_pb2.Product:
        return self._call(self.catalog.GetProduct, catalog_pb2.GetProductRequest(sku=sku), retry=True)

    def list_products(
        self, *, page_size: int = 100, on_sale_only: bool = False
    ) -> Iterator[catalog_pb2.Product]:
        """Every product in creation order (``on_sale_only``: not the retired ones), page by page."""
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=page_size, page_token=token)
            request = catalog_pb2.ListProductsRequest(page=page, on_sale_only=on_sale_only)
            resp = self._call(self.catalog.ListProducts, request, retry=True)
            yield from resp.products
            token = resp.page.next_page_token
            if not token:
                return

    def retire_product(self, sku: str, *, reason: str = "") -> catalog_pb2.Product:
        """Stop selling ``sku`` (no new orders, lots or pool stock; issued cards stay good).
        Retried like a read: retiring a retired product changes nothing."""
        request = catalog_pb2.RetireProductRequest(sku=sku, reason=reason)
        return self._call(self.catalog.RetireProduct, request, retry=True)

    def reinstate_product(self, sku: str) -> catalog_pb2.Product:
        """Put a retired product back on sale. Retried like ``retire_product``."""
        request = catalog_pb2.ReinstateProductRequest(sku=sku)
        return self._call(self.catalog.ReinstateProduct, request, retry=True)

    # -- lots -----------------------------------------------------------------------------

    def create_lot(
        self,
        sku: str,
        count: int,
        face_value: int,
        *,
        progress: Callable[[int, int], None] | None = None,
        request_id: str = "",
    ) -> lot_pb2.Lot:
        """Mint a lot; ``progress(done, total)`` is called as the server reports it. Not
        retried here; with a ``request_id``, calling again after a failure (even the server's
        death midway) completes the lot exactly once."""
        request = lot_pb2.CreateLotRequest(
            sku=sku, count=count, face_value_minor_units=face_value, request_id=request_id
        )
        call = self.lots.CreateLot(request, timeout=self.bulk_timeout, metadata=self._metadata)
        for event in self._stream(call):
            if progress is not None:
                progress(event.done, event.total)
            if event.HasField("lot"):
                return event.lot
        raise InternalError("the server ended CreateLot without the lot", code=grpc.StatusCode.INTERNAL)

    def get_lot(self, lot_id: int) -> lot_pb2.Lot:
        return self._call(self.lots.GetLot, lot_pb2.GetLotRequest(lot_id=lot_id), retry=True)

    def list_lots(self, *, sku: str = "", page_size: int = 100) -> Iterator[lot_pb2.Lot]:
        """Every lot this caller may see (of one product, with ``sku``), oldest first."""
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=page_size, page_token=token)
            resp = self._call(self.lots.ListLots, lot_pb2.ListLotsRequest(sku=sku, page=page), retry=True)
            yield from resp.lots
            token = resp.page.next_page_token
            if not token:
                return

    def stream_lot(self, lot_id: int) -> Iterator[tuple[str, str]]:
        """(serial, code) of every card of a lot, in serial order. Not retried: each export
        is audited."""
        for serials, codes in self.stream_lot_arrays(lot_id):
            yield from zip(
                [s.decode("utf-8") for s in serials.tolist()],
                [c.decode("utf-8") for c in codes.tolist()],
                strict=True,
            )

    def stream_lot_arrays(
        self, lot_id: int
    ) -> Iterator[tuple[npt.NDArray[np.bytes_], npt.NDArray[np.bytes_]]]:
        """``stream_lot`` chunk by chunk as two ``S`` arrays, serials and codes (UTF-8 bytes,
        fixed width as the server sends them), with no Python object per card: for writing
        a 10^6-card lot to a file. Not retried: each export is audited."""
        call = self.lots.StreamLot(
            lot_pb2.StreamLotRequest(lot_id=lot_id), timeout=self.bulk_timeout, metadata=self._metadata
        )
        for chunk in self._stream(call):
            serials, codes = _unpack_array(chunk.serials), _unpack_array(chunk.codes)
            if len(serials) != len(codes):
                raise InternalError(
                    f"a lot chunk with {len(serials)} serials but {len(codes)} codes",
                    code=grpc.StatusCode.INTERNAL,
                )
            yield serials, codes

    def void_lot(self, lot_id: int) -> lot_pb2.Lot:
        return self._call(self.lots.VoidLot, lot_pb2.VoidLotRequest(lot_id=lot_id))

    # -- cards ----------------------------------------------------------------------------

    def bind_card(
        self, code: str, *, account: str = "", serial: str = "", challenge_passed: bool = False
    ) -> card_pb2.BindCardResponse:
        """Bind a code. ``challenge_passed``: the person just passed a challenge (CAPTCHA, SMS
        code), which binds after too many failures need (``ChallengeRequired``)."""
        request = card_pb2.BindCardRequest(code=code, account=account, serial=serial)
        extra = (("x-challenge-passed", "1"),) if challenge_passed else ()
        return self._call(self.cards.BindCard, request, extra=extra)

    def unbind_card(self, serial: str, *, account: str = "") -> card_pb2.Card:
        return self._call(self.cards.UnbindCard, card_pb2.UnbindCardRequest(serial=serial, account=account))

    def get_card(self, serial: str) -> card_pb2.Card:
        return self._call(self.cards.GetCard, card_pb2.GetCardRequest(serial=serial), retry=True)

    def view_secret(self, serial: str, *, step_up: bool = False) -> card_pb2.SecretView:
        """The owner's view of a card's secret code: masked unless ``step_up``. Not retried:
        every full view counts."""
        return self._call(self.cards.ViewSecret, card_pb2.ViewSecretRequest(serial=serial, step_up=step_up))

    # -- balances -------------------------------------------------------------------------

    def balance(
        self,
        *,
        serial: str | None = None,
        account: str | None = None,
        required: tuple[int, str] | None = None,
    ) -> balance_pb2.GetBalanceResponse:
        """A card's (``serial``) or an account's balance; ``required=(amount, currency)`` asks
        whether it covers that. A customer token may give neither (its own account)."""
        request = balance_pb2.GetBalanceRequest(
            required=common_pb2.Money(minor_units=required[0], currency=required[1]) if required else None
        )
        if serial is not None:
            request.serial = serial
        else:
            request.account = account or ""
        return self._call(self.balances.GetBalance, request, retry=True)

    def redeem(
        self, serial: str, amount: int, currency: str, *, request_id: str | None = None
    ) -> balance_pb2.MoneyReceipt:
        request = balance_pb2.RedeemRequest(
            request_id=request_id or uuid.uuid4().hex,
            serial=serial,
            amount=common_pb2.Money(minor_units=amount, currency=currency),
        )
        return self._call(self.balances.Redeem, request, retry=True)

    def reverse(
        self, transaction_id: int, amount: int, *, request_id: str | None = None
    ) -> balance_pb2.MoneyReceipt:
        request = balance_pb2.ReverseRequest(
            request_id=request_id or uuid.uuid4().hex,
            redeem_transaction_id=transaction_id,
            amount_minor_units=amount,
        )
        return self._call(self.balances.Reverse, request, retry=True)

    def transfer(
        self, from_serial: str, to_serial: str, amount: int, currency: str, *, request_id: str | None = None
    ) -> balance_pb2.TransferReceipt:
        """Move ``amount`` from one card onto another of the same holder (idempotent on
        ``request_id``: a retry with the same id answers the first transfer's receipt)."""
        request = balance_pb2.TransferRequest(
            request_id=request_id or uuid.uuid4().hex,
            from_serial=from_serial,
            to_serial=to_serial,
            amount=common_pb2.Money(minor_units=amount, currency=currency),
        )
        return self._call(self.balances.Transfer, request, retry=True)

    def reconcile(self, serials: Sequence[str]) -> balance_pb2.ReconcileResponse:
        """Staff: the cards' balances and ledger totals, read in one snapshot."""
        return self._call(
            self.balances.Reconcile, balance_pb2.ReconcileRequest(serials=list(serials)), retry=True
        )

    def transactions(
        self, *, serial: str | None = None, account: str | None = None, page_size: int = 50
    ) -> Iterator[balance_pb2.Transaction]:
        """History, newest first, fetched page by page as it is consumed."""
        token = ""
        while True:
            request = balance_pb2.ListTransactionsRequest(
                page=common_pb2.PageRequest(page_size=page_size, page_token=token)
            )
            if serial is not None:
                request.serial = serial
            elif account is not None:
                request.account = account
            resp = self._call(self.balances.ListTransactions, request, retry=True)
            yield from resp.transactions
            token = resp.page.next_page_token
            if not token:
                return

    # -- events ---------------------------------------------------------------------------

    def event_head(self) -> int:
        """The newest event id (0 when there is none)."""
        return self.event_feed()[0]

    def event_feed(self) -> tuple[int, list[str]]:
        """The newest event id (0 when there is none) and every kind of event the server
        records (what ``subscribe_events(kinds=...)`` accepts), sorted."""
        resp = self._call(self.events.GetHead, event_pb2.GetHeadRequest(), retry=True)
        return resp.head_id, list(resp.kinds)

    def subscribe_events(
        self,
        after_id: int = 0,
        *,
        kinds: Sequence[str] = (),
        timeout: float | None = None,
        until_id: int = 0,
    ) -> Generator[event_pb2.Event, None, None]:
        """Events after ``after_id`` in commit order, then new ones as they commit, until
        ``timeout`` s pass (None: until the server shuts down or the caller stops
        iterating); with ``until_id``, only up to that id (the stream then ends by itself:
        a catch-up to ``event_head()``, filtered by ``kinds`` on the server). Keep the id
        of the last event handled and resume from it. To stop early,
        ``close()`` the iterator (or use ``contextlib.closing``) rather than dropping it: an
        abandoned stream is cancelled by the garbage collector on an arbitrary thread."""
        call = self.events.Subscribe(
            event_pb2.SubscribeRequest(after_id=after_id, kinds=list(kinds), until_id=until_id),
            timeout=timeout,
            metadata=self._metadata,
        )
        try:
            yield from self._stream(call)
        except CardmintError as e:
            if e.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            # the caller's own time limit: the stream simply ends
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    # -- compliance -----------------------------------------------------------------------

    def freeze(self, serial: str, reason: str) -> card_pb2.Card:
        """Stop a card (staff); a retry of a freeze is harmless."""
        return self._call(
            self.compliance.Freeze, compliance_pb2.FreezeRequest(serial=serial, reason=reason), retry=True
        )

    def unfreeze(self, serial: str, reason: str) -> card_pb2.Card:
        return self._call(
            self.compliance.Unfreeze, compliance_pb2.UnfreezeRequest(serial=serial, reason=reason), retry=True
        )

    def reports(self, kind: str = "", *, page_size: int = 100) -> Iterator[compliance_pb2.Report]:
        """AML records and alerts, oldest first, fetched page by page as consumed."""
        token = ""
        while True:
            request = compliance_pb2.ListReportsRequest(
                kind=kind, page=common_pb2.PageRequest(page_size=page_size, page_token=token)
            )
            resp = self._call(self.compliance.ListReports, request, retry=True)
            yield from resp.reports
            token = resp.page.next_page_token
            if not token:
                return

    # -- orders ---------------------------------------------------------------------------

    def stock_pool(self, lot_id: int) -> order_pb2.StockPoolResponse:
        """Put a lot (never exported) up for sale; a retry answers ``already_stocked``."""
        return self._call(self.orders.StockPool, order_pb2.StockPoolRequest(lot_id=lot_id), retry=True)

    def stock(self, sku: str) -> order_pb2.GetStockResponse:
        return self._call(self.orders.GetStock, order_pb2.GetStockRequest(sku=sku), retry=True)

    def create_order(
        self,
        items: Sequence[tuple[str, int, int]],
        *,
        account: str = "",
        request_id: str | None = None,
        client_address: str = "",
        payment_method: str = "online",
    ) -> order_pb2.Order:
        """Reserve codes: ``items`` are (sku, face value, quantity); ``payment_method`` is
        "online" or "bank_transfer". Retried safely: the request id (made up when not given)
        makes a repeat answer the first order."""
        request = order_pb2.CreateOrderRequest(
            request_id=request_id or uuid.uuid4().hex,
            account=account,
            items=[order_pb2.OrderItem(sku=s, face_value_minor_units=f, quantity=q) for s, f, q in items],
            client_address=client_address,
            payment_method=_payment_method(payment_method),
        )
        return self._call(self.orders.CreateOrder, request, retry=True)

    def confirm_payment(
        self, order_id: int, payment_id: str, amount: int, currency: str, *, payment_method: str = "online"
    ) -> order_pb2.Order:
        """Report a payment (payment service). A repeated ``payment_id`` answers the first
        outcome (``replayed``), never a second delivery, so it is retried safely."""
        request = order_pb2.ConfirmPaymentRequest(
            order_id=order_id,
            payment_id=payment_id,
            amount=common_pb2.Money(minor_units=amount, currency=currency),
            payment_method=_payment_method(payment_method),
        )
        return self._call(self.orders.ConfirmPayment, request, retry=True)

    def get_order(self, order_id: int, *, reveal: bool = False) -> order_pb2.Order:
        """An order; ``reveal`` shows the delivered codes in full (the buyer only, audited)."""
        request = order_pb2.GetOrderRequest(order_id=order_id, reveal_codes=reveal)
        # A reveal counts against the buyer's limit: not retried.
        return self._call(self.orders.GetOrder, request, retry=not reveal)

    def list_orders(
        self, *, account: str = "", status: str | None = None, page_size: int = 50
    ) -> Iterator[order_pb2.Order]:
        """Orders newest first (without codes), page by page; ``status`` e.g. "delivered"."""
        wanted = order_pb2.ORDER_STATUS_UNSPECIFIED
        if status is not None:
            wanted = order_pb2.OrderStatus.Value(f"ORDER_STATUS_{status.upper()}")
        token = ""
        while True:
            request = order_pb2.ListOrdersRequest(
                account=account,
                status=wanted,
                page=common_pb2.PageRequest(page_size=page_size, page_token=token),
            )
            resp = self._call(self.orders.ListOrders, request, retry=True)
            yield from resp.orders
            token = resp.page.next_page_token
            if not token:
                return

    def import_blacklist(
        self, source: str, *, codes: Sequence[str] = (), digests: bytes = b"", length: int = 16
    ) -> compliance_pb2.ImportBlacklistResponse:
        """Report stolen codes (or their 16-byte digests): issued ones are frozen. Safe to
        repeat (an import that already happened changes nothing more)."""
        request = compliance_pb2.ImportBlacklistRequest(source=source, length=length)
        if digests:
            request.digests = digests
        else:
            request.codes.CopyFrom(_pack(codes))
        return self._call(self.compliance.ImportBlacklist, request, retry=True)

    def verify_audit(
        self, *, expect_events: int | None = None, expect_head: bytes = b""
    ) -> compliance_pb2.VerifyAuditResponse:
        """Walk the server's audit chain; ``ok`` or the first broken event."""
        request = compliance_pb2.VerifyAuditRequest(expect_events=expect_events, expect_head=expect_head)
        return self._call(self.compliance.VerifyAudit, request, retry=True)

    # -- tokens ---------------------------------------------------------------------------

    def create_token(
        self, role: str, *, label: str = "", account: str = "", expires_in: int = 0
    ) -> account_pb2.CreateTokenResponse:
        """Mint a token (admin). The secret is in this answer only. Not retried: a retry
        after a lost answer would mint a second token. ``expires_in``: seconds until it
        stops working (0: never); calls with it then raise ``TokenExpired``."""
        request = account_pb2.CreateTokenRequest(
            role=role, label=label, account=account, expires_in_seconds=expires_in
        )
        return self._call(self.accounts.CreateToken, request)

    def tokens(self, *, page_size: int = 100) -> Iterator[account_pb2.TokenInfo]:
        token = ""
        while True:
            request = account_pb2.ListTokensRequest(
                page=common_pb2.PageRequest(page_size=page_size, page_token=token)
            )
            resp = self._call(self.accounts.ListTokens, request, retry=True)
            yield from resp.tokens
            token = resp.page.next_page_token
            if not token:
                return

    def revoke_token(self, token_id: int) -> None:
        self._call(self.accounts.RevokeToken, account_pb2.RevokeTokenRequest(id=token_id), retry=True)

    def cancel_order(self, order_id: int) -> order_pb2.Order:
        # Cancelling a cancelled order answers it as it is: safe to retry.
        return self._call(
            self.orders.CancelOrder, order_pb2.CancelOrderRequest(order_id=order_id), retry=True
        )

    def review_order(self, order_id: int, *, approve: bool, reason: str = "") -> order_pb2.Order:
        request = order_pb2.ReviewOrderRequest(order_id=order_id, approve=approve, reason=reason)
        return self._call(self.orders.ReviewOrder, request)

    def refund_order(self, order_id: int, *, reason: str = "") -> order_pb2.Order:
        # Refunding a refunded order answers it as it is: safe to retry.
        request = order_pb2.RefundOrderRequest(order_id=order_id, reason=reason)
        return self._call(self.orders.RefundOrder, request, retry=True)

    def expire_reservations(self) -> order_pb2.ExpireReservationsResponse:
        """Run the reservation sweeper now (staff)."""
        return self._call(self.orders.ExpireReservations, order_pb2.ExpireReservationsRequest(), retry=True)

    # -- organizations (enterprise accounts) ----------------------------------------------

    def create_organization(self, name: str, *, request_id: str) -> account_pb2.Organization:
        request = account_pb2.CreateOrganizationRequest(name=name, request_id=request_id)
        return self._call(self.accounts.CreateOrganization, request, retry=True)

    def create_department(self, organization: str, name: str, *, request_id: str) -> account_pb2.Department:
        request = account_pb2.CreateDepartmentRequest(
            organization=organization, name=name, request_id=request_id
        )
        return self._call(self.accounts.CreateDepartment, request, retry=True)

    def departments(self, organization: str) -> list[account_pb2.Department]:
        request = account_pb2.ListDepartmentsRequest(organization=organization)
        return list(self._call(self.accounts.ListDepartments, request, retry=True).departments)

    def add_member(
        self,
        organization: str,
        account: str,
        *,
        request_id: str,
        role: str = "member",
        department: str = "",
        with_token: bool = False,
        token_label: str = "",
        token_expires_in: int = 0,
    ) -> account_pb2.AddMemberResponse:
        """Make ``account`` a member (or re-scope it). A retry replays the answer, without the
        token's secret (it is shown once): ask for a token only where a lost answer is fine."""
        request = account_pb2.AddMemberRequest(
            organization=organization,
            account=account,
            role=role,
            department=department,
            request_id=request_id,
            with_token=with_token,
            token_label=token_label,
            token_expires_in_seconds=token_expires_in,
        )
        return self._call(self.accounts.AddMember, request, retry=not with_token)

    def remove_member(self, organization: str, account: str, *, request_id: str) -> None:
        request = account_pb2.RemoveMemberRequest(
            organization=organization, account=account, request_id=request_id
        )
        self._call(self.accounts.RemoveMember, request, retry=True)

    def members(
        self, organization: str, *, department: str = "", page_size: int = 100
    ) -> Iterator[account_pb2.Member]:
        token = ""
        while True:
            request = account_pb2.ListMembersRequest(
                organization=organization,
                department=department,
                page=common_pb2.PageRequest(page_size=page_size, page_token=token),
            )
            resp = self._call(self.accounts.ListMembers, request, retry=True)
            yield from resp.members
            token = resp.page.next_page_token
            if not token:
                return

    def verify_real_name(self, account: str, *, request_id: str) -> account_pb2.AccountFacts:
        request = account_pb2.VerifyRealNameRequest(account=account, request_id=request_id)
        return self._call(self.accounts.VerifyRealName, request, retry=True)

    def get_account(self, account: str = "") -> account_pb2.AccountFacts:
        return self._call(
            self.accounts.GetAccount, account_pb2.GetAccountRequest(account=account), retry=True
        )

    def bulk_bind(
        self, organization: str, rows: Sequence[tuple[str, str]], *, request_id: str
    ) -> list[BulkBindResult]:
        """Bind each (card code or number, recipient account id or email) row; one result
        per row, in order. Safe to retry: the same request id replays the first answer."""
        request = account_pb2.BulkBindRequest(
            organization=organization,
            cards=_pack([c for c, _ in rows]),
            recipients=_pack([r for _, r in rows]),
            request_id=request_id,
        )
        resp = self._call(self.accounts.BulkBind, request, retry=True)
        reasons, serials, accounts = _unpack(resp.reasons), _unpack(resp.serials), _unpack(resp.accounts)
        return [
            BulkBindResult(
                status == account_pb2.BULK_BIND_STATUS_OK, reasons[i], serials[i], accounts[i], resp.replayed
            )
            for i, status in enumerate(resp.status)
        ]

    # -- loss reports (ComplianceService) ------------------------------------------------

    def report_loss(
        self, serial: str, reason: str, *, account: str = "", request_id: str | None = None
    ) -> compliance_pb2.LossReport:
        """Report a bound card lost (its holder, or staff naming the holder's ``account``):
        frozen at once, reissued after review. Retried with one request id."""
        request = compliance_pb2.ReportLossRequest(
            serial=serial, reason=reason, account=account, request_id=request_id or uuid.uuid4().hex
        )
        return self._call(self.compliance.ReportLoss, request, retry=True)

    def review_loss(
        self, report_id: int, *, approve: bool, note: str, request_id: str | None = None
    ) -> compliance_pb2.LossReport:
        """Staff: approve (reissue the remaining balance on a new card) or reject a pending
        loss report. Retried with one request id."""
        request = compliance_pb2.ReviewLossRequest(
            report_id=report_id, approve=approve, note=note, request_id=request_id or uuid.uuid4().hex
        )
        return self._call(self.compliance.ReviewLoss, request, retry=True)

    def loss_reports(self, status: str = "", *, page_size: int = 100) -> Iterator[compliance_pb2.LossReport]:
        """Loss reports (``status``: pending, approved, rejected or "" for all), oldest first;
        staff see all, a customer their own."""
        wanted = (
            compliance_pb2.LossReportStatus.Value(f"LOSS_REPORT_STATUS_{status.upper()}")
            if status
            else compliance_pb2.LOSS_REPORT_STATUS_UNSPECIFIED
        )
        token = ""
        while True:
            request = compliance_pb2.ListLossReportsRequest(
                status=wanted, page=common_pb2.PageRequest(page_size=page_size, page_token=token)
            )
            resp = self._call(self.compliance.ListLossReports, request, retry=True)
            yield from resp.reports
            token = resp.page.next_page_token
            if not token:
                return
