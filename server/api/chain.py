"""The server's interceptors, run as one.

grpcio runs a server's interceptors for every call on its one serving thread, the thread
that also accepts calls and sends their answers, through a Python pipeline of its own (a
few calls per interceptor per call). Every interceptor here judges a call's method alone
when it builds the call's handler (what a call carries, its metadata, is read by the
wrapped behavior when the call runs, on a worker thread), except admission control, which
decides per call from the calls in flight. So ``Chain`` builds each method's handler
through all of them once, in two variants (admitted; refused, when admission control is
among them), and for a call only asks admission control and looks the handler up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from .admission import AdmissionInterceptor

__all__ = ["Chain"]

if TYPE_CHECKING:  # grpc's stubs make the handler generic; the runtime class is not
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Handler | None]


class Chain(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """``interceptors`` (outermost first) as one interceptor; ``admission``, when given, is
    one of them, asked once per call."""

    LIMIT = 4096  # (method, refused) pairs kept: the server's methods, twice

    def __init__(
        self,
        interceptors: Sequence[grpc.ServerInterceptor],  # type: ignore[type-arg]
        admission: AdmissionInterceptor | None = None,
    ) -> None:
        if admission is not None and admission not in interceptors:
            raise ValueError("admission control must be one of the interceptors")
        self._chain = tuple(interceptors)
        self._admission = admission
        self._built: dict[tuple[str, bool], Handler] = {}

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        admitted = self._built.get((method, False))
        if admitted is None:
            admitted = self._handler(continuation, handler_call_details, refused=False)
            if admitted is None:  # not a method of this server: grpc answers UNIMPLEMENTED
                return None
        stream = admitted.request_streaming or admitted.response_streaming
        if self._admission is None or not self._admission.refuses(method, stream):
            return admitted
        refused = self._built.get((method, True))
        return (
            refused
            if refused is not None
            else self._handler(continuation, handler_call_details, refused=True)
        )

    def _handler(
        self, continuation: Continuation, details: grpc.HandlerCallDetails, *, refused: bool
    ) -> Handler | None:
        """The method's handler through every interceptor, kept for the next calls."""
        chain, admission = self._chain, self._admission

        def at(i: int, d: grpc.HandlerCallDetails) -> Handler | None:
            if i == len(chain):
                return continuation(d)
            interceptor = chain[i]
            if interceptor is admission:
                inner = at(i + 1, d)
                return admission.refusal(inner) if refused and inner is not None else inner
            return interceptor.intercept_service(lambda d2: at(i + 1, d2), d)

        handler = at(0, details)
        if handler is not None and len(self._built) < self.LIMIT:
            self._built[(details.method, refused)] = handler
        return handler
