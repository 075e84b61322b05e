"""Admission control: a bounded number of calls in flight, the rest refused at once.

A grpcio server hands every call it accepts to its thread pool, whose queue has no bound:
offered more calls than it can answer, a server would queue them until every caller's
deadline had passed, answering nobody in time. Instead, at most ``limit`` calls are in
flight (queued for a worker or running) per server process; a call that arrives while
``limit`` are in flight is refused straight away with RESOURCE_EXHAUSTED, reason
``OVERLOADED``, and a ``RetryInfo`` (``Overloaded`` in the domain's error table). It has
done nothing, so any call may be retried after the delay, on this or another server.

The count is kept by ``AdmissionExecutor``, the server's thread pool: +1 when grpc submits
a call, -1 when the call's work item ends, however it ends (answered, refused, or cancelled
before a worker took it), so it cannot drift. ``AdmissionInterceptor`` reads it when a call
arrives, in grpc's serving thread, before the call is queued. Health and reflection calls
are counted but never refused: a load balancer must see an overloaded server as alive.
Long-lived streams (event subscriptions) hold a worker, and are counted like any call.

Refusals are answered by a worker too (grpcio answers only from its pool), but from a queue
of their own, served in turn with the admitted calls: a refusal waits for about the next free
worker, not behind the whole queue, and takes a fraction of a millisecond. It never reads the
request: grpcio reads a unary request in its serving thread before a worker may run the
handler, a second trip through that one thread (the slowest part of a GIL-bound server under
overload) for a message the refusal does not use, so a refused call's handler is made
request-streaming and answers without it, as grpc's own refusals do. Refusals cost the
server work all the same (the access log, metrics, a status with details); so that a flood
of them cannot take the workers from admitted calls, ``grpc.server(maximum_concurrent_rpcs=
limit + workers)`` is the backstop (``app.start``): past it grpc refuses in its serving
thread itself, cheaply (RESOURCE_EXHAUSTED without details, which the client also maps to
``Overloaded``, with no retry delay).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, Generic, TypeVar, cast

import grpc
from cardmint.server.domain.errors import Overloaded

from .auth import OPEN_SERVICES
from .errors import HandlerCache

__all__ = ["DEFAULT_RETRY_AFTER", "AdmissionExecutor", "AdmissionInterceptor", "CallFuture"]

T = TypeVar("T")
_Item = tuple["CallFuture[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]

# What a refused caller is told to wait (RetryInfo): long enough for the calls in flight to
# finish at a normal pace, short enough not to idle a server that has recovered.
DEFAULT_RETRY_AFTER = 0.1


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)
# Guards the few state changes of every CallFuture (held for a handful of bytecodes).
_STATE = threading.Lock()


class CallFuture(Generic[T]):
    """What ``AdmissionExecutor.submit`` returns: the ``concurrent.futures.Future`` methods
    grpcio and callers use (``add_done_callback``, ``cancel``, ``result``, ...), built on
    two C locks instead of a ``threading.Condition`` per call: a server makes one per call,
    and a Condition's Python-level setup, notify and wait cost more than the call's own
    handoff. Not usable with ``concurrent.futures.wait`` / ``as_completed``."""

    __slots__ = ("_callbacks", "_done", "_error", "_result", "_state")

    def __init__(self) -> None:
        self._state = _PENDING
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[CallFuture[T]], object]] = []
        self._done = threading.Lock()  # held until the future is done, then free for good
        self._done.acquire()

    def cancel(self) -> bool:
        """Cancels a call no worker has started; False once it runs or ran."""
        with _STATE:
            if self._state in (_RUNNING, _FINISHED):
                return False
            first = self._state == _PENDING
            self._state = _CANCELLED
        if first:
            self._finish()
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        return self._state == _RUNNING

    def done(self) -> bool:
        return self._state in (_CANCELLED, _FINISHED)

    def result(self, timeout: float | None = None) -> T:
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._error is not None:
            raise self._error
        return cast(T, self._result)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise CancelledError()
        return self._error

    def add_done_callback(self, fn: Callable[[CallFuture[T]], object]) -> None:
        """``fn(self)`` once done (now, if it is): exactly once, whichever thread gets there."""
        self._callbacks.append(fn)
        if self.done():
            try:  # not yet taken by _finish (list.remove is atomic): it is ours to call
                self._callbacks.remove(fn)
            except ValueError:
                return
            fn(self)

    def set_running_or_notify_cancel(self) -> bool:
        with _STATE:
            if self._state == _CANCELLED:
                return False
            self._state = _RUNNING
        return True

    def set_result(self, result: T) -> None:
        self._result = result
        self._state = _FINISHED
        self._finish()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._state = _FINISHED
        self._finish()

    def _finish(self) -> None:
        self._done.release()
        callbacks = self._callbacks
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:  # add_done_callback took the last one back
                break
            fn(self)

    def _wait(self, timeout: float | None) -> None:
        if self.done():
            return
        if not self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise FuturesTimeoutError()
        self._done.release()  # free again: every waiter passes


class AdmissionExecutor:
    """The server's thread pool: ``workers`` threads, a count of the work items not yet
    finished (queued or running), and a second, first-served queue for refusals.

    grpcio submits each call's work right after running the interceptors for it, in the
    same (serving) thread: ``AdmissionInterceptor`` marks a refused call there (``urgent``),
    and this pool serves marked items and admitted ones in turn, so a refusal is answered
    about when a worker next becomes free, not after every call queued ahead of it.

    Every step a call takes here is a C operation (deque append and pop, a SimpleQueue of
    wake-ups, a list as the in-flight count), not a Python-level Condition: each queued item
    puts one token on the wake-up queue after it is queued, and a worker that takes a token
    takes one item, so a worker that holds a token always finds an item (or, once shut
    down, exits)."""

    def __init__(self, workers: int, thread_name_prefix: str = "cardmint-rpc") -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self._workers = workers
        self._prefix = thread_name_prefix
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._urgent: deque[_Item] = deque()
        self._normal: deque[_Item] = deque()
        self._flight: list[None] = []  # one entry per unfinished item: len() is the count
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._shutdown = False
        self._urgent_turn = True
        self._mark = threading.local()

    @property
    def in_flight(self) -> int:
        return len(self._flight)

    def mark_urgent(self, urgent: bool) -> None:
        """Whether the next item this thread submits is served first (a refusal)."""
        self._mark.urgent = urgent

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> CallFuture[T]:
        urgent = getattr(self._mark, "urgent", False)
        self._mark.urgent = False
        if self._shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        future: CallFuture[T] = CallFuture()
        self._flight.append(None)
        (self._urgent if urgent else self._normal).append((future, fn, args, kwargs))
        if len(self._threads) < self._workers:
            self._add_worker()
        self._wake.put(None)
        return future

    def _add_worker(self) -> None:
        with self._threads_lock:
            if len(self._threads) < self._workers and not self._shutdown:
                t = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()

    def _take(self) -> _Item | None:
        """The next item: refusals and admitted calls take turns, so a refusal waits for a
        free worker, never behind the whole queue, and a flood of refusals cannot starve
        the calls already admitted. (The turn is a hint: two workers may both read it.)"""
        if self._urgent and (self._urgent_turn or not self._normal):
            try:
                item = self._urgent.popleft()
                self._urgent_turn = False
                return item
            except IndexError:
                pass
        try:
            item = self._normal.popleft()
            self._urgent_turn = True
            return item
        except IndexError:
            pass
        try:
            return self._urgent.popleft()
        except IndexError:
            return None  # a shutdown's wake-up, or the token of an item shutdown cancelled

    def _work(self) -> None:
        get, take, flight = self._wake.get, self._take, self._flight
        while True:
            get()
            item = take()
            if item is None:
                if self._shutdown:
                    return
                continue
            future, fn, args, kwargs = item
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as e:  # the future carries it, as ThreadPoolExecutor does
                        future.set_exception(e)
            finally:
                flight.pop()
            del item, future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._threads_lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            for q in (self._urgent, self._normal):
                while True:
                    try:
                        future, *_ = q.popleft()
                    except IndexError:
                        break
                    future.cancel()
                    self._flight.pop()
        for _ in threads:
            self._wake.put(None)  # one wake-up without an item per worker: it exits
        if wait:
            for t in threads:
                t.join()


class AdmissionInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses a call (``Overloaded``) when ``in_flight()`` is at ``limit`` as it arrives.

    Placed inside ``ErrorInterceptor`` (which turns the refusal into its status and
    details) and outside authentication (a refused call costs no token lookup)."""

    def __init__(self, pool: AdmissionExecutor, limit: int, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self._pool = pool
        self.limit = limit
        self.retry_after = retry_after
        self._refused_lock = threading.Lock()
        self.refused = 0  # calls refused since start, for tests and figures
        self._refusals = HandlerCache()

    def refuses(self, method: str) -> bool:
        """Whether a call of ``method`` (one the server has) arriving now is refused. Marks
        the call's place in the executor's queues and counts the refusal: call it once per
        call, in grpc's serving thread, just before grpc hands the call to the executor."""
        refuse = (
            not method.startswith(OPEN_SERVICES)
            # Not under a lock: grpcio calls interceptors from its one serving thread, and
            # a count read a moment early or late moves the limit by a call, never more.
            and self._pool.in_flight >= self.limit
        )
        self._pool.mark_urgent(refuse)  # set for every call: a stale mark never lingers
        if refuse:
            with self._refused_lock:
                self.refused += 1
        return refuse

    def refusal(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """What answers a refused call of ``handler``'s method (built once per method)."""
        return self._refusals.get(handler, "", self._refusal)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED, no worker involved
            return None
        return self.refusal(handler) if self.refuses(handler_call_details.method) else handler

    def _refusal(
        self, handler: grpc.RpcMethodHandler[Any, Any], _method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler``'s stand-in for a refused call (built once per method)."""
        limit, retry_after = self.limit, self.retry_after

        def error() -> Overloaded:
            return Overloaded(
                f"the server has {limit} calls in flight; retry after {retry_after:g} s",
                retry_after=retry_after,
            )

        def unary(requests: Any, context: grpc.ServicerContext) -> Any:
            raise error()

        def streaming(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Raised when called, inside ErrorInterceptor's streaming guard: the same status.
            raise error()

        # Request-streaming whatever the method's shape: grpc then hands the refusal a request
        # iterator it never reads, instead of first reading (and deserializing) the request
        # in its serving thread while the worker waits for it (see the module docstring).
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None or handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary, des, ser)
        return grpc.stream_stream_rpc_method_handler(streaming, des, ser)
