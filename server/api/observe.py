"""The gRPC side of cardmint.server.observe: request ids, the access log, RPC metrics.

``ObserveInterceptor`` is the outermost interceptor (``interceptors`` in this package):
every call gets a request id (the caller's ``x-request-id`` metadata when sane, else a new
one), set in a context variable for the log lines written while handling it and sent back
in the trailing metadata, on success and on error, unary or streaming. When the call ends
it writes one access-log line and, when the server serves metrics, counts the call and its
latency by method and status code. ``PrincipalTap`` (innermost, after authentication) notes
the caller's token id for that line; the token itself is never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc
from cardmint.server.observe import (
    ACCESS_LOG,
    CALL,
    REQUEST_ID_HEADER,
    CallInfo,
    RpcMetrics,
    incoming_request_id,
    new_request_id,
)

from .auth import OPEN_SERVICES
from .errors import Behavior, WrappingInterceptor, rewrap

__all__ = ["ObserveInterceptor", "PrincipalTap"]


def _split(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


def _tag(context: grpc.ServicerContext, request_id: str) -> None:
    """Add the request id to the trailing metadata (what the handler set stays)."""
    current = tuple(context.trailing_metadata() or ())
    if any(k == REQUEST_ID_HEADER for k, _ in current):
        return
    context.set_trailing_metadata((*current, (REQUEST_ID_HEADER, request_id)))


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()  # type: ignore[attr-defined]
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class ObserveInterceptor(WrappingInterceptor):
    """Outermost interceptor: request id, access log and (when given) RPC metrics.

    It wraps ``ErrorInterceptor``, so failures reach it as the status that interceptor set
    (``context.code()``) and the exception grpc's abort raises, which it re-raises.
    """

    def __init__(self, metrics: RpcMetrics | None = None, tracer: Any = None) -> None:
        super().__init__()
        self._metrics = metrics
        # An OpenTelemetry tracer (cardmint.server.tracing), or None: no spans.
        self._tracer = tracer
        if tracer is not None:
            from opentelemetry import trace

            self._trace = trace

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], full: str) -> grpc.RpcMethodHandler[Any, Any]:
        observer = self

        def request_id(context: grpc.ServicerContext) -> str:
            return incoming_request_id(context.invocation_metadata()) or new_request_id()

        def unary(behavior: Behavior) -> Behavior:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                info = CallInfo(request_id(context), full)
                started = time.perf_counter()
                observer.begin(info)
                token = CALL.set(info)
                code = "OK"
                try:
                    with observer.scope(info):
                        answer = behavior(request, context)
                    _tag(context, info.request_id)  # after: what the handler set stays
                    return answer
                except BaseException:
                    code = _code_name(context)
                    _tag(context, info.request_id)
                    raise
                finally:
                    observer.end(info, code, time.perf_counter() - started)
                    CALL.reset(token)

            return call

        def streaming(behavior: Behavior) -> Behavior:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                info = CallInfo(request_id(context), full)
                return observer._stream(info, behavior, request, context)

            return call

        return rewrap(handler, unary, streaming)

    def begin(self, info: CallInfo) -> None:
        if self._metrics is not None:
            self._metrics.in_flight.labels(*_split(info.method)).inc()
        if self._tracer is not None:
            service, method = _split(info.method)
            info.span = self._tracer.start_span(
                f"{service}/{method}",
                kind=self._trace.SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": method,
                    "cardmint.request_id": info.request_id,
                },
            )

    def scope(self, info: CallInfo) -> AbstractContextManager[Any]:
        """The call's span made current (storage spans nest under it), or nothing."""
        if info.span is None:
            return nullcontext()
        use: AbstractContextManager[Any] = self._trace.use_span(
            info.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )
        return use

    def end(self, info: CallInfo, code: str, seconds: float) -> None:
        service, method = _split(info.method)
        if self._metrics is not None:
            self._metrics.in_flight.labels(service, method).dec()
            self._metrics.observe(service, method, code, seconds)
        if info.span is not None:
            span, info.span = info.span, None
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
            if info.token_id is not None:
                span.set_attribute("cardmint.token_id", info.token_id)
            if code != "OK":
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code))
            span.end()
        # Health checks and reflection come every few seconds from load balancers: debug.
        level = logging.DEBUG if info.method.startswith(OPEN_SERVICES) else logging.INFO
        if not ACCESS_LOG.isEnabledFor(level):
            return
        ACCESS_LOG.log(
            level,
            "%s/%s %s %.1f ms",
            service.rsplit(".", 1)[-1],
            method,
            code,
            seconds * 1000,
            extra={
                "cardmint": {
                    "method": info.method,
                    "code": code,
                    "duration_ms": round(seconds * 1000, 3),
                    "token_id": info.token_id,
                }
            },
        )

    def _stream(
        self, info: CallInfo, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        # The body of a streaming handler runs on each next(): the call's context variable is
        # set around every step, never left behind in the worker thread.
        started = time.perf_counter()
        self.begin(info)
        code = "OK"
        try:
            token = CALL.set(info)
            try:
                _tag(context, info.request_id)
                with self.scope(info):
                    responses = iter(behavior(request, context))
            finally:
                CALL.reset(token)
            try:
                while True:
                    token = CALL.set(info)
                    try:
                        with self.scope(info):
                            item = next(responses)
                    except StopIteration:
                        _tag(context, info.request_id)
                        return
                    finally:
                        CALL.reset(token)
                    yield item
            finally:
                close = getattr(responses, "close", None)
                if close is not None:
                    close()
        except GeneratorExit:  # the caller went away (cancelled, deadline) mid-stream
            code = "CANCELLED"
            raise
        except BaseException:
            code = _code_name(context)
            _tag(context, info.request_id)
            raise
        finally:
            token = CALL.set(info)
            try:
                self.end(info, code, time.perf_counter() - started)
            finally:
                CALL.reset(token)


class PrincipalTap(WrappingInterceptor):
    """Innermost interceptor: notes the authenticated caller's token id for the access log."""

    def __init__(self, principal: Callable[[], Any]) -> None:
        super().__init__(skip=OPEN_SERVICES)
        self._principal = principal

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        principal = self._principal

        def tap(behavior: Behavior) -> Behavior:
            # Not a generator: runs when the call starts, where the principal is set.
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                info = CALL.get()
                if info is not None:
                    info.token_id = principal().token_id
                return behavior(request, context)

            return call

        return rewrap(handler, tap, tap)
