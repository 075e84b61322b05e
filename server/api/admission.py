"""Admission control: a bounded number of calls in flight, the rest refused at once.

A grpcio server hands every call it accepts to its thread pool, whose queue has no bound:
offered more calls than it can answer, a server would queue them until every caller's
deadline had passed, answering nobody in time. Instead, at most ``limit`` calls are in
flight (queued for a worker or running) per server process; a call that arrives while
``limit`` are in flight is refused straight away with RESOURCE_EXHAUSTED. It has done
nothing, so any call may be retried, on this or another server.

The count is kept by ``AdmissionExecutor``, the server's thread pool: +1 when grpc submits
a call, -1 when the call's work item ends, however it ends (answered, refused, or cancelled
before a worker took it), so it cannot drift. grpcio keeps the same count
(``active_rpc_count``: +1 at submit, -1 when the work item is done), and the shipped server
(``app.start``) sets grpc's ``maximum_concurrent_rpcs`` to the limit: grpc then refuses
in its serving thread, before the interceptors' handler runs, with no worker and no second
trip through that thread. That is the cheapest refusal a grpcio server has, and under
several times the load a server answers, the only one fast enough: measured, a refusal
of ours (below) halved what an overloaded server answered and left refusals waiting ~2 s
(docs/operations.md, Load and overload). It carries no details; the client reads it as
``Overloaded`` all the same.

``AdmissionInterceptor`` runs on every call, in grpc's serving thread, just before grpc
hands the call to the executor. It routes the call to its lane (unary or stream, see
``AdmissionExecutor``), counts the refusals, and refuses itself when its count is at the
limit while grpc's is not (the moment a finished item has left grpc's count but not yet
ours; or always, on a server built without grpc's limit): then with reason ``OVERLOADED``
and a ``RetryInfo`` (``Overloaded`` in the domain's error table), health and reflection
exempt. Those refusals are answered by a worker (grpcio answers only from its pool), but
from a queue of their own, served in turn with the admitted calls, and never read the
request: grpcio reads a unary request in its serving thread before a worker may run the
handler, so a refused call's handler is made request-streaming and answers without it.
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


class _Lane:
    """Threads and queues for one kind of call: a queue for admitted calls, a first-served
    one for refusals, and a SimpleQueue of wake-ups (one token per queued item). Refusals
    all go to the unary lane (``AdmissionExecutor.submit``): the stream lane's is empty."""

    def __init__(self, threads: int, name: str) -> None:
        self.max_threads = threads
        self.name = name
        self.wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.urgent: deque[_Item] = deque()
        self.normal: deque[_Item] = deque()
        self.threads: list[threading.Thread] = []
        self.urgent_turn = True

    def take(self) -> _Item | None:
        """The next item: refusals and admitted calls take turns, so a refusal waits for a
        free worker, never behind the whole queue, and a flood of refusals cannot starve
        the calls already admitted. (The turn is a hint: two workers may both read it.)"""
        if self.urgent and (self.urgent_turn or not self.normal):
            try:
                item = self.urgent.popleft()
                self.urgent_turn = False
                return item
            except IndexError:
                pass
        try:
            item = self.normal.popleft()
            self.urgent_turn = True
            return item
        except IndexError:
            pass
        try:
            return self.urgent.popleft()
        except IndexError:
            return None  # a shutdown's wake-up, or the token of an item shutdown cancelled


class AdmissionExecutor:
    """The server's thread pool: ``workers`` threads for unary calls, ``stream_workers``
    more for calls that stream (event subscriptions, bulk checks, lot minting and export),
    a count of the work items not yet finished (queued or running), and a first-served
    queue for refusals.

    Few unary workers, on purpose: a grpcio server is one process under one GIL, and
    grpcio's one serving thread (the thread that takes every call from grpc core and
    dispatches every answer) needs the GIL several times per call. Each more runnable
    worker is one more thread it queues behind for the GIL: with 32 workers, a server
    offered 3x what it answers took calls from grpc core at a fraction of its rate, and
    the rest waited there until dropped; with 4 it keeps up, and the limit refuses the
    excess at once (docs/operations.md, Load and overload). Streams get threads of their
    own: they hold one for as long as they last (a subscription, for hours) and mostly
    wait, so they neither starve unary calls of workers nor compete for the GIL.

    grpcio submits each call's work right after running the interceptors for it, in the
    same (serving) thread: ``AdmissionInterceptor`` marks the call there (refused, or a
    stream), and this pool serves marked refusals and admitted calls of the unary lane in
    turn, so a refusal is answered about when a worker next becomes free, not after every
    call queued ahead of it.

    Every step a call takes here is a C operation (deque append and pop, a SimpleQueue of
    wake-ups per lane, a list as the in-flight count), not a Python-level Condition: each
    queued item puts one token on its lane's wake-up queue after it is queued, and a worker
    that takes a token takes one item, so a worker that holds a token always finds an item
    (or, once shut down, exits)."""

    def __init__(
        self, workers: int, thread_name_prefix: str = "cardmint-rpc", stream_workers: int = 0
    ) -> None:
        """``stream_workers``: threads for streaming calls; 0: they share the ``workers``."""
        if workers < 1 or stream_workers < 0:
            raise ValueError("at least one worker (and no negative count of stream workers)")
        self._unary = _Lane(workers, thread_name_prefix)
        self._streams = _Lane(stream_workers, f"{thread_name_prefix}-stream") if stream_workers else None
        self._flight: list[None] = []  # one entry per unfinished item: len() is the count
        self._threads_lock = threading.Lock()
        self._shutdown = False
        self._mark = threading.local()

    @property
    def in_flight(self) -> int:
        return len(self._flight)

    def mark_call(self, *, urgent: bool, stream: bool = False) -> None:
        """What the next item this thread submits is: a refusal (served first) or a
        streaming call (served by the stream workers)."""
        self._mark.urgent = urgent
        self._mark.stream = stream

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> CallFuture[T]:
        mark = self._mark
        urgent, stream = getattr(mark, "urgent", False), getattr(mark, "stream", False)
        mark.urgent = mark.stream = False
        if self._shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        # A refusal is answered at once whatever the call's shape: the unary lane serves it.
        lane = self._streams if stream and not urgent and self._streams is not None else self._unary
        future: CallFuture[T] = CallFuture()
        self._flight.append(None)
        (lane.urgent if urgent else lane.normal).append((future, fn, args, kwargs))
        if len(lane.threads) < lane.max_threads:
            self._add_worker(lane)
        lane.wake.put(None)
        return future

    def _add_worker(self, lane: _Lane) -> None:
        with self._threads_lock:
            if len(lane.threads) < lane.max_threads and not self._shutdown:
                t = threading.Thread(
                    target=self._work, args=(lane,), name=f"{lane.name}_{len(lane.threads)}", daemon=True
                )
                lane.threads.append(t)
                t.start()

    def _work(self, lane: _Lane) -> None:
        get, take, flight = lane.wake.get, lane.take, self._flight
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
        lanes = [lane for lane in (self._unary, self._streams) if lane is not None]
        with self._threads_lock:
            self._shutdown = True
            threads = [(lane, list(lane.threads)) for lane in lanes]
        if cancel_futures:
            for lane in lanes:
                for q in (lane.urgent, lane.normal):
                    while True:
                        try:
                            future, *_ = q.popleft()
                        except IndexError:
                            break
                        future.cancel()
                        self._flight.pop()
        for lane, ts in threads:
            for _ in ts:
                lane.wake.put(None)  # one wake-up without an item per worker: it exits
        if wait:
            for _, ts in threads:
                for t in ts:
                    t.join()


class AdmissionInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses a call (``Overloaded``) when ``in_flight()`` is at ``limit`` as it arrives.

    Placed inside ``ErrorInterceptor`` (which turns the refusal into its status and
    details) and outside authentication (a refused call costs no token lookup)."""

    def __init__(
        self, pool: AdmissionExecutor, limit: int | None, retry_after: float = DEFAULT_RETRY_AFTER
    ) -> None:
        """``limit`` None: no call is refused; calls are only routed to their lane."""
        if limit is not None and limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self._pool = pool
        self.limit = limit
        self.retry_after = retry_after
        self._refused_lock = threading.Lock()
        self.refused = 0  # calls refused since start, for tests and figures
        self._refusals = HandlerCache()

    def refuses(self, method: str, stream: bool = False) -> bool:
        """Whether a call of ``method`` (one the server has; ``stream``: it streams requests
        or answers) arriving now is refused. Marks the call's place in the executor's
        queues and counts the refusal: call it once per call, in grpc's serving thread,
        just before grpc hands the call to the executor.

        A call grpc itself refuses (``maximum_concurrent_rpcs``, the same limit on the same
        count, checked just before the interceptors run) is counted here too: it arrived
        with as many calls in flight."""
        limit = self.limit
        refuse = (
            limit is not None
            and not method.startswith(OPEN_SERVICES)
            # Not under a lock: grpcio calls interceptors from its one serving thread, and
            # a count read a moment early or late moves the limit by a call, never more.
            and self._pool.in_flight >= limit
        )
        self._pool.mark_call(urgent=refuse, stream=stream)  # set for every call: never stale
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
        stream = handler.request_streaming or handler.response_streaming
        return self.refusal(handler) if self.refuses(handler_call_details.method, stream) else handler

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
