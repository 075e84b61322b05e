"""Domain errors → gRPC statuses, in one place, for every kind of handler.

The domain raises plain exceptions that carry a ``kind`` (named after a gRPC status code),
a ``reason``, field violations, a retry time and metadata (docs/domain-api.md). This module
turns them into a ``google.rpc.Status`` with ``ErrorInfo`` (always), ``BadRequest`` (when
there are violations) and ``RetryInfo`` (when a lock lifts at a known time), sent in the
``grpc-status-details-bin`` trailer where ``grpc_status`` (and our client) read it.

Anything else that escapes a handler is a server fault: logged with its traceback here and
answered INTERNAL with no detail of its own, so a bug never leaks internals to a caller and
no handler ever ends in grpc's default UNKNOWN.

A request that does not parse (corrupt wire format, invalid UTF-8 in a string field) is the
caller's fault, not ours: grpc would answer it INTERNAL before any handler runs, so the
request deserializer is wrapped to hand the handler an ``Undecodable`` marker instead, which
the guard answers INVALID_ARGUMENT with a ``BadRequest`` field violation. So is a string
field holding a NUL character, refused here for every method at once: no identifier, name or
note means anything with one, and PostgreSQL's text type cannot store it.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from cardmint.server.domain._context import CALL_DEADLINE
from cardmint.server.domain.errors import (
    DeadlinePassed,
    DomainError,
    ErrorKind,
    InvalidArgument,
    StorageUnavailable,
)
from cardmint.server.storage import storage_failure
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

__all__ = [
    "DOMAIN",
    "KIND_TO_CODE",
    "ErrorInterceptor",
    "HandlerCache",
    "Undecodable",
    "WrappingInterceptor",
    "rewrap",
    "status_of",
]

log = logging.getLogger("cardmint.server.api")

DOMAIN = "cardmint"

# The domain names its kinds after gRPC codes; the table still spells each one out so that
# a kind added there without a decision here fails the walk-every-error test, not a caller.
KIND_TO_CODE: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _pack(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def _code_number(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number


def status_of(exc: BaseException) -> status_pb2.Status:
    """The rich status a caller receives for ``exc``."""
    if not isinstance(exc, DomainError):
        info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error", details=[_pack(info)])
    code = KIND_TO_CODE[exc.kind]
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=dict(exc.metadata))
    details = [_pack(info)]
    if exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        details.append(_pack(bad))
    if exc.retry_after is not None:
        # Rounded up: a client that waits exactly this long must find the lock gone. Whole
        # seconds from one second up (locks); milliseconds below (an overloaded server).
        ms = max(0, math.ceil(exc.retry_after * 1000))
        if ms >= 1000:
            delay = duration_pb2.Duration(seconds=math.ceil(exc.retry_after))
        else:
            delay = duration_pb2.Duration(nanos=ms * 1_000_000)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=_code_number(code), message=exc.message, details=details)


def _abort(
    context: grpc.ServicerContext, exc: Exception, on_storage_failure: Callable[[], None] | None = None
) -> NoReturn:
    if not isinstance(exc, DomainError) and storage_failure(exc):
        # The database failed, not the code: UNAVAILABLE (retry), and health hears of it.
        log.warning("storage failure in a handler: %s", exc)
        if on_storage_failure is not None:
            on_storage_failure()
        exc = StorageUnavailable()
    if not isinstance(exc, DomainError):
        log.exception("internal error in a handler", exc_info=exc)
    context.abort_with_status(rpc_status.to_status(status_of(exc)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[Behavior], Behavior],
    streaming: Callable[[Behavior], Behavior],
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behavior wrapped: by ``unary`` when it answers one message, by
    ``streaming`` when it answers a stream (then the wrapper must return an iterator);
    ``deserializer`` replaces its request deserializer when given."""
    des, ser = deserializer or handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), des, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), des, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), des, ser)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), des, ser)
    raise TypeError(f"method handler without a behavior: {handler!r}")


class HandlerCache:
    """Wrapped handlers built once per inner handler, not once per call.

    grpcio runs every interceptor's ``intercept_service`` for every call on its one serving
    thread, the thread that also accepts calls and sends their answers; wrapping there per
    call (closures, a new method handler) made it the server's bottleneck under load. The
    handlers below an interceptor are themselves built once (the servicers' and, through
    this cache, the inner interceptors'), so one wrapped handler per inner handler serves
    every call: whatever a wrapper needs of the call itself (metadata) it reads from the
    call's context when the call runs, on a worker thread."""

    LIMIT = 4096  # inner handlers: methods x variants; a bug making them per call stays bounded

    def __init__(self) -> None:
        self._built: dict[int, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    def get(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        method: str,
        build: Callable[[grpc.RpcMethodHandler[Any, Any], str], grpc.RpcMethodHandler[Any, Any]],
    ) -> grpc.RpcMethodHandler[Any, Any]:
        hit = self._built.get(id(handler))
        if hit is not None and hit[0] is handler:  # the entry holds ``handler``: its id is its own
            return hit[1]
        wrapped = build(handler, method)
        if len(self._built) >= self.LIMIT:
            self._built.clear()
        self._built[id(handler)] = (handler, wrapped)
        return wrapped


class WrappingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """An interceptor that wraps each method's handler once (``HandlerCache``), by
    ``_wrap(handler, method)``; the methods under the ``skip`` prefixes are left as they are."""

    def __init__(self, skip: tuple[str, ...] = ()) -> None:
        self._skip = skip
        self._cache = HandlerCache()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        # None: not a method of this server; grpc answers UNIMPLEMENTED itself.
        if handler is None or (self._skip and method.startswith(self._skip)):
            return handler
        return self._cache.get(handler, method, self._wrap)

    @abc.abstractmethod
    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` wrapped for ``method`` (called once per method)."""


class ErrorInterceptor(WrappingInterceptor):
    """Outermost interceptor: every exception a handler raises becomes a proper status.

    Handlers (and the interceptors inside this one) signal failure by raising, never by
    calling ``context.abort`` themselves: grpcio's abort raises a bare ``Exception`` that
    would be indistinguishable here from a bug. A failure of the database itself (I/O
    error, disk full, connection lost) is ``STORAGE_UNAVAILABLE`` (UNAVAILABLE), reported to
    ``on_storage_failure`` (the storage health probe, which turns health NOT_SERVING).
    """

    def __init__(self, on_storage_failure: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._failed = on_storage_failure

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        des = handler.request_deserializer
        streamed = bool(handler.request_streaming)
        failed = self._failed
        return rewrap(
            handler,
            lambda behavior: _guard_unary(behavior, streamed, failed),
            lambda behavior: _guard_streaming(behavior, streamed, failed),
            None if des is None else _tolerant(des),
        )


class Undecodable:
    """A request message that did not parse, or holds a NUL in a string field: what the
    wrapped deserializer hands on instead of the message."""

    __slots__ = ("field", "problem")

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem

    def error(self) -> InvalidArgument:
        return InvalidArgument.of(self.field, self.problem)


def _nul_field(message: Any, prefix: str = "") -> str | None:
    """The path of the first string field of ``message`` holding a NUL, else None."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        name = prefix + field.name
        items = value if field.is_repeated else (value,)
        for i, item in enumerate(items):
            where = f"{name}[{i}]" if field.is_repeated else name
            if field.type == field.TYPE_STRING and "\x00" in item:
                return where
            if field.type == field.TYPE_MESSAGE and (found := _nul_field(item, where + ".")):
                return found
    return None


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # The generated deserializer is the request class's FromString.
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            message = deserialize(data)
        except Exception as exc:  # google.protobuf.message.DecodeError, in practice
            # The parser's own words, without the type name it repeats ("Error parsing
            # message with type 'x': String field had bad UTF-8").
            why = str(exc).rsplit(": ", 1)[-1] if ": " in str(exc) else "wire format was corrupt"
            return Undecodable("request", f"not a valid {name} message: {why}")
        # A NUL in a string field is a 0x00 byte of the message as sent: without one there
        # is nothing to look for. (This runs on grpc's one serving thread, for every call.)
        if b"\x00" not in data:
            return message
        nul = _nul_field(message)
        if nul is not None:
            return Undecodable(nul, "must not contain a NUL character")
        return message

    return parse


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


def _guard_unary(
    behavior: Behavior, streamed: bool = False, failed: Callable[[], None] | None = None
) -> Behavior:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        # The caller's deadline, for the domain: a change whose transaction ends after it
        # is rolled back instead of committed (the caller has given up on the answer).
        remaining = context.time_remaining()
        mark = CALL_DEADLINE.set(None if remaining is None else time.monotonic() + remaining)
        try:
            if remaining is not None and remaining <= 0:
                # It waited past its deadline for a worker (an overloaded server): the
                # caller has its DEADLINE_EXCEEDED already, and no work is done for nobody.
                raise DeadlinePassed()
            if isinstance(request, Undecodable):
                raise request.error()
            return behavior(_checked(request) if streamed else request, context)
        except Exception as exc:
            _abort(context, exc, failed)
        finally:
            CALL_DEADLINE.reset(mark)

    return call


def _guard_streaming(
    behavior: Behavior, streamed: bool = False, failed: Callable[[], None] | None = None
) -> Behavior:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # Errors can come at any point of a stream, after messages were sent: the status
        # then ends the stream that far.
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            yield from behavior(_checked(request) if streamed else request, context)
        except Exception as exc:
            _abort(context, exc, failed)

    return call
