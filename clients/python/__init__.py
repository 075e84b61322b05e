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
server answers a repeated id with the first answer. BindCard is never retried: every
failed attempt counts against the account's limit.

A failed call raises a ``CardmintError`` subclass chosen by the ``ErrorInfo.reason`` of the
status details: the server's table read backwards. The client imports nothing of the server.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from cardmint.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    card_pb2,
    card_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    lot_pb2,
    lot_pb2_grpc,
)
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

__all__ = [
    "ERRORS",
    "AccountLocked",
    "BadCheck",
    "CardAlreadyBound",
    "CardExpired",
    "CardFrozen",
    "CardLocked",
    "CardNotFound",
    "CardVoid",
    "CardmintError",
    "CheckResult",
    "Client",
    "Contention",
    "CurrencyMismatch",
    "ExportNeedsAdmin",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InternalError",
    "InvalidArgument",
    "LotNotFound",
    "LotNotReady",
    "LotVoid",
    "MalformedCode",
    "NotReversible",
    "PermissionDenied",
    "ProductExists",
    "ProductNotFound",
    "TransactionNotFound",
    "TransferLimitReached",
    "Unauthenticated",
    "Unavailable",
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


class InsufficientFunds(FailedPrecondition):
    reason = "INSUFFICIENT_FUNDS"


class CurrencyMismatch(FailedPrecondition):
    reason = "CURRENCY_MISMATCH"


class NotReversible(FailedPrecondition):
    reason = "NOT_REVERSIBLE"


class IdempotencyKeyReused(FailedPrecondition):
    reason = "IDEMPOTENCY_KEY_REUSED"


class Locked(CardmintError):  # noqa: N818 - named after the status, like the server's
    """Too many failed attempts; ``retry_after`` says when to try again (seconds)."""

    reason = "RESOURCE_EXHAUSTED"


class CardLocked(Locked):
    reason = "CARD_LOCKED"


class AccountLocked(Locked):
    reason = "ACCOUNT_LOCKED"


class Contention(CardmintError):  # noqa: N818 - named after the status, like the server's
    reason = "CONTENTION"


class InternalError(CardmintError):
    reason = "INTERNAL"


class Unavailable(CardmintError):  # noqa: N818 - named after the status, like the server's
    """The server could not be reached (or is shutting down); safe calls were retried."""

    reason = "UNAVAILABLE"


ERRORS: dict[str, type[CardmintError]] = {
    cls.reason: cls
    for cls in (
        InvalidArgument,
        MalformedCode,
        BadCheck,
        Unauthenticated,
        PermissionDenied,
        ExportNeedsAdmin,
        ProductNotFound,
        ProductExists,
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
        InsufficientFunds,
        CurrencyMismatch,
        TransactionNotFound,
        NotReversible,
        IdempotencyKeyReused,
        Contention,
        InternalError,
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
    cls = ERRORS.get(reason) or _BY_CODE.get(code, CardmintError)
    return cls(
        message, code=code, reason=reason, metadata=metadata, violations=violations, retry_after=retry_after
    )


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
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


def _pack(strings: Sequence[str]) -> common_pb2.PackedStrings:
    encoded = [s.encode("utf-8") for s in strings]
    return common_pb2.PackedStrings(data=b"".join(encoded), lengths=[len(e) for e in encoded])


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
    data = packed.data
    if packed.width:
        if len(data) % packed.width:
            raise InternalError(
                "packed strings whose data is not a multiple of their width", code=grpc.StatusCode.INTERNAL
            )
        return np.frombuffer(data, dtype=f"S{packed.width}")
    items = [s.encode("utf-8") for s in _unpack(packed)]
    return np.array(items, dtype=np.bytes_) if items else np.empty(0, dtype="S1")


class Client:
    """A connection to one cardmint server, acting as the holder of ``token``."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        timeout: float = 10.0,
        bulk_timeout: float = 600.0,
        retries: int = 3,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(
            addr,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self.bulk_timeout = bulk_timeout
        self.retries = retries
        self.keys = keys_pb2_grpc.KeyServiceStub(self._channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        self.lots = lot_pb2_grpc.LotServiceStub(self._channel)
        self.cards = card_pb2_grpc.CardServiceStub(self._channel)
        self.balances = balance_pb2_grpc.BalanceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any, *, retry: bool = False) -> T:
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                err = error_from(e)
                if not retry or err.code not in _RETRYABLE or attempt >= self.retries:
                    raise err from None
            attempt += 1
            # Jittered exponential backoff: 64 clients retrying a hot card must not stay in step.
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))

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
            normalized, suggestions = _unpack(resp.normalized), _unpack(resp.suggestions)
            for code, st, norm, sug in zip(sent[i], resp.status, normalized, suggestions, strict=True):
                yield CheckResult(code, _CHECK_STATUS.get(st, "unspecified"), norm, sug or None)

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
        )
        return self._call(self.catalog.CreateProduct, request)

    def get_product(self, sku: str) -> catalog_pb2.Product:
        return self._call(self.catalog.GetProduct, catalog_pb2.GetProductRequest(sku=sku), retry=True)

    def list_products(self, *, page_size: int = 100) -> Iterator[catalog_pb2.Product]:
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=page_size, page_token=token)
            resp = self._call(
                self.catalog.ListProducts, catalog_pb2.ListProductsRequest(page=page), retry=True
            )
            yield from resp.products
            token = resp.page.next_page_token
            if not token:
                return

    # -- lots -----------------------------------------------------------------------------

    def create_lot(
        self, sku: str, count: int, face_value: int, *, progress: Callable[[int, int], None] | None = None
    ) -> lot_pb2.Lot:
        """Mint a lot; ``progress(done, total)`` is called as the server reports it. Not retried."""
        request = lot_pb2.CreateLotRequest(sku=sku, count=count, face_value_minor_units=face_value)
        call = self.lots.CreateLot(request, timeout=self.bulk_timeout, metadata=self._metadata)
        for event in self._stream(call):
            if progress is not None:
                progress(event.done, event.total)
            if event.HasField("lot"):
                return event.lot
        raise InternalError("the server ended CreateLot without the lot", code=grpc.StatusCode.INTERNAL)

    def get_lot(self, lot_id: int) -> lot_pb2.Lot:
        return self._call(self.lots.GetLot, lot_pb2.GetLotRequest(lot_id=lot_id), retry=True)

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

    def bind_card(self, code: str, *, account: str = "", serial: str = "") -> card_pb2.BindCardResponse:
        request = card_pb2.BindCardRequest(code=code, account=account, serial=serial)
        return self._call(self.cards.BindCard, request)

    def unbind_card(self, serial: str, *, account: str = "") -> card_pb2.Card:
        return self._call(self.cards.UnbindCard, card_pb2.UnbindCardRequest(serial=serial, account=account))

    def get_card(self, serial: str) -> card_pb2.Card:
        return self._call(self.cards.GetCard, card_pb2.GetCardRequest(serial=serial), retry=True)

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
