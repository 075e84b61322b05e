"""Who is calling: the ``authorization: Bearer <token>`` of every call, resolved once.

``AuthInterceptor`` authenticates every call before its handler runs, except the standard
health and reflection services (read-only, and tools like grpcurl and load balancers call
them without credentials). A missing or bad token is refused before any servicer code runs,
so no anonymous call can change anything. The resolved principal is handed to the servicer
through a context variable; the domain then checks the role for each operation.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from cardmint.server.domain.auth import Principal

from .errors import Behavior, WrappingInterceptor, rewrap

__all__ = ["OPEN_SERVICES", "AuthInterceptor", "current_principal"]

# Services anyone may call: standard, read-only, and needed by tools before they hold a token.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("cardmint_principal")


def current_principal() -> Principal:
    """The caller of the call being handled (set by ``AuthInterceptor``)."""
    return _principal.get()


def _authorization(metadata: Any) -> str | None:
    """The call's one ``authorization`` value; None (refused) when it has none or several:
    a second header is never silently ignored, whichever of them a proxy would have read."""
    found: str | None = None
    for key, value in metadata or ():
        if key == "authorization":
            if found is not None:
                return None
            found = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return found


class AuthInterceptor(WrappingInterceptor):
    """Resolves the caller's principal with ``authenticate`` (raises ``Unauthenticated``)."""

    def __init__(self, authenticate: Callable[[str | None], Principal]) -> None:
        super().__init__(skip=OPEN_SERVICES)
        self._authenticate = authenticate

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        authenticate = self._authenticate

        def unary(behavior: Behavior) -> Behavior:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                # Inside the handler, so ErrorInterceptor (outside) turns a refusal into
                # UNAUTHENTICATED like any other domain error.
                principal = authenticate(_authorization(context.invocation_metadata()))
                token = _principal.set(principal)
                try:
                    return behavior(request, context)
                finally:
                    _principal.reset(token)

            return call

        def streaming(behavior: Behavior) -> Behavior:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                principal = authenticate(_authorization(context.invocation_metadata()))
                return _as(principal, behavior, request, context)

            return call

        return rewrap(handler, unary, streaming)


def _as(
    principal: Principal, behavior: Behavior, request: Any, context: grpc.ServicerContext
) -> Iterator[Any]:
    # A streaming handler's body runs on each next(), after the interceptor returned: set
    # the principal around every step rather than once, so it is never left behind in the
    # worker thread for the next call.
    token = _principal.set(principal)
    try:
        responses = iter(behavior(request, context))
    finally:
        _principal.reset(token)
    try:
        while True:
            token = _principal.set(principal)
            try:
                item = next(responses)
            except StopIteration:
                return
            finally:
                _principal.reset(token)
            yield item
    finally:
        close = getattr(responses, "close", None)
        if close is not None:
            close()
