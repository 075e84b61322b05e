"""Admission control (server/api/admission.py): at most ``limit`` calls in flight, the next
refused at once with RESOURCE_EXHAUSTED / OVERLOADED / RetryInfo, health never refused,
the count back to zero however calls end; grpc's backstop refusal read as ``Overloaded``.

The servers here are bare grpcio servers with handlers that wait on an event, so "in
flight" is under the test's control: nothing depends on timing but bounded waits."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError
from pathlib import Path
from typing import Any

import grpc
import pytest
from cardmint import client
from cardmint.server.api import ErrorInterceptor
from cardmint.server.api.admission import AdmissionExecutor, AdmissionInterceptor, CallFuture
from cardmint.server.api.errors import status_of
from cardmint.server.app import start
from cardmint.server.domain import Overloaded
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc

WAIT = "/test.Slow/Wait"
HEALTH = "/grpc.health.v1.Health/Check"


class Slow:
    """Handlers that block until ``release`` is set; ``started`` counts the ones running."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self.lock = threading.Lock()

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.started += 1
        self.release.wait(timeout=30)
        return request

    def until_started(self, n: int) -> None:
        deadline = time.monotonic() + 30
        while self.started < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.started >= n


def _server(
    slow: Slow, limit: int, workers: int
) -> tuple[grpc.Server, AdmissionExecutor, AdmissionInterceptor, int]:
    pool = AdmissionExecutor(workers)
    admission = AdmissionInterceptor(pool, limit)
    server = grpc.server(
        pool,  # type: ignore[arg-type]  # grpc only calls submit(); its stub names ThreadPoolExecutor
        interceptors=[ErrorInterceptor(), admission],
        maximum_concurrent_rpcs=limit + workers,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Slow", {"Wait": grpc.unary_unary_rpc_method_handler(slow.wait)}
            ),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health",
                {"Check": grpc.unary_unary_rpc_method_handler(lambda r, c: b"SERVING")},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, pool, admission, port


@pytest.fixture
def slow() -> Iterator[Slow]:
    s = Slow()
    yield s
    s.release.set()


def test_the_call_past_the_limit_is_refused_with_retry_info(slow: Slow) -> None:
    server, pool, admission, port = _server(slow, limit=2, workers=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            wait = ch.unary_unary(WAIT, None, None)
            held = [wait.future(b"held", timeout=30) for _ in range(2)]
            slow.until_started(2)
            assert pool.in_flight == 2
            with pytest.raises(grpc.RpcError) as info:
                wait(b"one too many", timeout=30)
            err = client.error_from(info.value)
            assert isinstance(err, client.Overloaded)
            assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "OVERLOADED"
            assert err.retry_after == pytest.approx(0.1)
            assert slow.started == 2  # the refused call never reached the handler
            # Health is counted but never refused: a balancer must see the server alive.
            assert ch.unary_unary(HEALTH, None, None)(b"", timeout=30) == b"SERVING"
            assert admission.refused == 1
            slow.release.set()
            assert [f.result(timeout=30) for f in held] == [b"held", b"held"]
            deadline = time.monotonic() + 30
            while pool.in_flight and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pool.in_flight == 0
            assert wait(b"again", timeout=30) == b"again"  # admitted again once below the limit
    finally:
        server.stop(0).wait()
        pool.shutdown()


def test_a_refusal_never_reads_the_request(slow: Slow) -> None:
    """A refused call is answered without grpc reading (and deserializing) its request first,
    unary or server-streaming: no second trip through grpc's serving thread."""
    read: list[bytes] = []

    def counted(data: bytes) -> wrappers_pb2.BytesValue:
        read.append(data)
        return wrappers_pb2.BytesValue.FromString(data)

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield request

    ser = wrappers_pb2.BytesValue.SerializeToString
    handlers = {
        "Wait": grpc.unary_unary_rpc_method_handler(slow.wait, counted, ser),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, counted, ser),
    }
    pool = AdmissionExecutor(4)
    server = grpc.server(
        pool,  # type: ignore[arg-type]  # grpc only calls submit(); its stub names ThreadPoolExecutor
        interceptors=[ErrorInterceptor(), AdmissionInterceptor(pool, 2)],
        maximum_concurrent_rpcs=6,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Slow", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    held_msg, refused_msg = (wrappers_pb2.BytesValue(value=v).SerializeToString() for v in (b"held", b"no"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            held = [ch.unary_unary(WAIT, None, None).future(held_msg, timeout=30) for _ in range(2)]
            slow.until_started(2)
            with pytest.raises(grpc.RpcError) as unary:
                ch.unary_unary(WAIT, None, None)(refused_msg, timeout=30)
            with pytest.raises(grpc.RpcError) as streamed:
                list(ch.unary_stream("/test.Slow/Stream", None, None)(refused_msg, timeout=30))
            for info in (unary, streamed):
                err = client.error_from(info.value)
                assert isinstance(err, client.Overloaded) and err.reason == "OVERLOADED"
                assert err.retry_after == pytest.approx(0.1)
            assert read == [held_msg, held_msg]  # the refused requests were never read
            slow.release.set()
            assert [f.result(timeout=30) for f in held] == [held_msg, held_msg]
    finally:
        server.stop(0).wait()
        pool.shutdown()


def test_grpc_backstop_refusal_reads_as_overloaded(slow: Slow) -> None:
    """Past ``limit + workers``, grpc refuses by itself (no details): still ``Overloaded``."""
    pool = AdmissionExecutor(1)
    server = grpc.server(
        pool,  # type: ignore[arg-type]  # grpc only calls submit(); its stub names ThreadPoolExecutor
        maximum_concurrent_rpcs=1,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Slow", {"Wait": grpc.unary_unary_rpc_method_handler(slow.wait)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            held = ch.unary_unary(WAIT, None, None).future(b"held", timeout=30)
            slow.until_started(1)
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(WAIT, None, None)(b"x", timeout=30)
            err = client.error_from(info.value)
            assert isinstance(err, client.Overloaded) and err.retry_after is None
            slow.release.set()
            assert held.result(timeout=30) == b"held"
    finally:
        server.stop(0).wait()
        pool.shutdown()


def test_grpc_sheds_calls_its_serving_thread_has_not_taken_as_cancelled() -> None:
    """Why a few calls end CANCELLED under heavy overload (item 12), on a bare grpcio server:
    grpc core holds the calls that arrive while grpcio's one serving thread is busy (it runs
    the interceptors and takes one call per method at a time), and past
    ``grpc.server.max_pending_requests`` it drops some of them at random, all past
    ``..._hard_limit`` (1000 and 3000 by default). The client hears CANCELLED although nobody
    cancelled, and no Python code of the server ever saw the call. Here the serving thread is
    held in an interceptor and the limits are 0 and 1: the first waiting call is kept, the
    next ones are dropped."""
    entered, release = threading.Event(), threading.Event()
    seen: list[bytes] = []

    class Hold(grpc.ServerInterceptor):  # type: ignore[type-arg]
        def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
            n = dict(details.invocation_metadata or ())["n"]
            assert isinstance(n, str)
            seen.append(n.encode())
            if len(seen) == 1:  # the serving thread stays here until released
                entered.set()
                release.wait(30)
            return continuation(details)

    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server = grpc.server(
        ThreadPoolExecutor(2),
        handlers=[grpc.method_handlers_generic_handler("test.Echo", {"Echo": echo})],
        interceptors=[Hold()],
        options=[("grpc.server.max_pending_requests", 0), ("grpc.server.max_pending_requests_hard_limit", 1)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/test.Echo/Echo", None, None)
            first = call.future(b"1", timeout=30, metadata=(("n", "1"),))
            assert entered.wait(30)
            kept = call.future(b"2", timeout=30, metadata=(("n", "2"),))
            dropped = [call.future(b"x", timeout=30, metadata=(("n", str(i)),)) for i in (3, 4)]
            for f in dropped:  # answered while the serving thread is still held
                with pytest.raises(grpc.RpcError) as cancelled:
                    f.result(timeout=30)
                assert cancelled.value.code() == grpc.StatusCode.CANCELLED
            release.set()
            assert first.result(timeout=30) == b"1" and kept.result(timeout=30) == b"2"
        assert seen == [b"1", b"2"]  # the dropped calls never reached the server's Python
    finally:
        release.set()
        server.stop(0).wait()


@pytest.mark.parametrize(("max_unserved", "dropped"), [(1, True), (0, False)])
def test_a_call_grpc_core_held_past_max_unserved_seconds_is_dropped_unseen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, max_unserved: int, dropped: bool
) -> None:
    """The one queue admission control cannot count: calls grpc core holds while the
    serving thread is busy. On the shipped server (``start``), with the serving thread held
    2.5 s in the admission check, the calls that waited behind it are dropped once older
    than ``max_unserved_seconds`` (CANCELLED, never seen by the server), instead of waiting
    as long as their deadline allows; with 0 (grpc's default, 30 s) they are all served."""
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []
    refuses = AdmissionInterceptor.refuses

    def held(self: AdmissionInterceptor, method: str, stream: bool = False) -> bool:
        seen.append(method)
        if len(seen) == 1:  # grpc's serving thread stays here until released
            entered.set()
            release.wait(30)
        return refuses(self, method, stream)

    monkeypatch.setattr(AdmissionInterceptor, "refuses", held)
    running = start(None, "127.0.0.1:0", tmp_path / "var", workers=2, max_unserved_seconds=max_unserved)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            first = check.future(health_pb2.HealthCheckRequest(), timeout=30)
            assert entered.wait(30)
            waiting = [check.future(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(3)]
            time.sleep(2.5)  # the waiting calls age past 1 s (setup, not a measurement)
            release.set()
            assert first.result(timeout=30).status == health_pb2.HealthCheckResponse.SERVING
            codes = [f.exception(timeout=30) for f in waiting]
            if dropped:
                assert [e.code() if e else None for e in codes] == [grpc.StatusCode.CANCELLED] * 3
                # The client reads it as Unavailable: retried, with its request id, like one.
                assert all(isinstance(client.error_from(e), client.Unavailable) for e in codes if e)
                assert len(seen) == 1  # the dropped calls never reached any code of the server
            else:
                assert codes == [None] * 3
                assert len(seen) == 4
    finally:
        release.set()
        running.stop(grace=0)


@pytest.mark.parametrize(
    ("after", "sent"),
    [(0.1, (0, 100_000_000)), (0.0001, (0, 1_000_000)), (0.9999, (1, 0)), (1.5, (2, 0)), (-1.0, (0, 0))],
)
def test_a_retry_delay_is_rounded_up_to_milliseconds_below_a_second(
    after: float, sent: tuple[int, int]
) -> None:
    [_, retry] = status_of(Overloaded(retry_after=after)).details
    info = error_details_pb2.RetryInfo()
    assert retry.Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == sent


def test_executor_counts_every_ending_and_serves_refusals_in_turn() -> None:
    pool = AdmissionExecutor(1)
    gate = threading.Event()
    order: list[str] = []
    try:
        running = threading.Event()

        def block() -> None:
            running.set()
            gate.wait(30)

        blocker = pool.submit(block)
        assert running.wait(30)  # the one worker is busy: everything below queues
        normal = [pool.submit(order.append, name) for name in ("a", "b")]
        pool.mark_call(urgent=True)
        urgent = pool.submit(order.append, "refusal")
        failing = pool.submit(lambda: 1 // 0)
        cancelled: CallFuture[None] = pool.submit(order.append, "never")
        assert cancelled.cancel()
        assert pool.in_flight == 6
        gate.set()
        for f in (blocker, *normal, urgent):
            f.result(timeout=30)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=30)
        deadline = time.monotonic() + 30
        while pool.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.in_flight == 0
        # The refusal, submitted after "a" and "b", is served as soon as the worker is free.
        assert order == ["refusal", "a", "b"]
    finally:
        gate.set()
        pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(order.append, "late")


def test_call_future_answers_like_a_future() -> None:
    done: CallFuture[int] = CallFuture()
    seen: list[object] = []
    done.add_done_callback(seen.append)
    with pytest.raises(FuturesTimeoutError):
        done.result(timeout=0.01)
    assert not done.done() and seen == []
    assert done.set_running_or_notify_cancel() and done.running()
    assert not done.cancel()  # running: too late
    done.set_result(7)
    assert done.result() == 7 and done.exception() is None and seen == [done]
    done.add_done_callback(seen.append)  # already done: called at once
    assert seen == [done, done]

    failed: CallFuture[int] = CallFuture()
    assert failed.set_running_or_notify_cancel()
    failed.set_exception(ValueError("no"))
    assert isinstance(failed.exception(), ValueError)
    with pytest.raises(ValueError, match="no"):
        failed.result()

    cancelled: CallFuture[int] = CallFuture()
    cancelled.add_done_callback(seen.append)
    assert cancelled.cancel() and cancelled.cancel() and cancelled.cancelled() and cancelled.done()
    assert seen[-1] is cancelled and len(seen) == 3  # the callback ran once
    assert not cancelled.set_running_or_notify_cancel()
    with pytest.raises(CancelledError):
        cancelled.result()


def _finish_while_callbacks_race() -> tuple[list[int], list[str]]:
    f: CallFuture[str] = CallFuture()
    calls: list[int] = []
    results: list[str] = []
    start = threading.Barrier(17)

    def add(i: int) -> None:
        start.wait(30)
        f.add_done_callback(lambda _f: calls.append(i))

    def wait() -> None:
        start.wait(30)
        results.append(f.result(timeout=30))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=wait) for _ in range(8)]
    for t in threads:
        t.start()
    assert f.set_running_or_notify_cancel()
    start.wait(30)
    f.set_result("ok")
    for t in threads:
        t.join(30)
    return calls, results


def test_call_future_callbacks_run_exactly_once_and_waiters_all_wake() -> None:
    """Callbacks added by 8 threads while the worker finishes: each runs exactly once; 8
    threads blocked in result() all get the result (200 rounds)."""
    for _ in range(200):
        calls, results = _finish_while_callbacks_race()
        assert sorted(calls) == list(range(8))
        assert results == ["ok"] * 8


def test_executor_shuts_down_with_queued_work_cancelled_or_done() -> None:
    pool = AdmissionExecutor(2)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> bool:
        started.release()
        return gate.wait(30)

    busy = [pool.submit(hold) for _ in range(2)]
    assert started.acquire(timeout=30) and started.acquire(timeout=30)  # both workers busy
    queued = [pool.submit(time.sleep, 0) for _ in range(5)]
    threading.Timer(0.05, gate.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.result(timeout=0) is True for f in busy)
    assert all(f.cancelled() or f.done() for f in queued)
    assert pool.in_flight == 0

    drained = AdmissionExecutor(2)
    ran = [drained.submit(time.sleep, 0.001) for _ in range(20)]
    drained.shutdown(wait=True)  # without cancel_futures: every queued item still runs
    assert all(f.done() and not f.cancelled() for f in ran) and drained.in_flight == 0


def test_streams_run_on_threads_of_their_own() -> None:
    """A streaming call holds its thread for as long as it lasts: the stream lane's, so
    a handful of streams never takes the few unary workers."""
    pool = AdmissionExecutor(1, stream_workers=2)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> str:
        started.release()
        gate.wait(30)
        return "held"

    try:
        pool.mark_call(urgent=False, stream=True)
        streams = [pool.submit(hold)]
        pool.mark_call(urgent=False, stream=True)
        streams.append(pool.submit(hold))
        assert started.acquire(timeout=30) and started.acquire(timeout=30)  # both stream threads busy
        # The one unary worker is free all the same; the mark is spent by one submit.
        assert pool.submit(lambda: "unary").result(timeout=30) == "unary"
        assert pool.in_flight == 2
        pool.mark_call(urgent=True, stream=True)  # a refused stream: answered on the unary lane
        assert pool.submit(lambda: "refusal").result(timeout=30) == "refusal"
        gate.set()
        assert [f.result(timeout=30) for f in streams] == ["held", "held"]
    finally:
        gate.set()
        pool.shutdown()


def _subscriptions(ch: grpc.Channel, token: str, n: int) -> list[Any]:
    from cardmint.v1 import event_pb2, event_pb2_grpc

    stub = event_pb2_grpc.EventServiceStub(ch)
    auth = (("authorization", f"Bearer {token}"),)
    return [stub.Subscribe(event_pb2.SubscribeRequest(), metadata=auth, timeout=60) for _ in range(n)]


def _until(cond: Any) -> None:
    deadline = time.monotonic() + 30
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def test_the_shipped_server_keeps_unary_calls_going_beside_open_streams(tmp_path: Path) -> None:
    """On ``start``: three subscriptions held open, the one unary worker still answers."""
    from cardmint.v1 import event_pb2, event_pb2_grpc

    running = start(None, "127.0.0.1:0", tmp_path / "var", workers=1, stream_workers=4)
    try:
        assert running.pool is not None
        token = running.domain.auth.create_token("admin").token
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            subs = _subscriptions(ch, token, 3)
            pool = running.pool
            _until(lambda: pool.in_flight == 3)
            head = event_pb2_grpc.EventServiceStub(ch).GetHead(
                event_pb2.GetHeadRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
            assert head.head_id >= 0
            for s in subs:
                s.cancel()
    finally:
        running.stop(grace=0)


def test_the_shipped_server_refuses_past_its_limit_in_grpcs_serving_thread(tmp_path: Path) -> None:
    """On ``start``: the limit is grpc's own (``maximum_concurrent_rpcs``), so a call past it
    is refused before any handler or worker (RESOURCE_EXHAUSTED, read as ``Overloaded``),
    health included: at its limit a server says so. The refusal is counted."""
    from cardmint.v1 import event_pb2, event_pb2_grpc

    running = start(None, "127.0.0.1:0", tmp_path / "var", workers=1, max_in_flight=2)
    try:
        assert running.pool is not None and running.admission is not None
        token = running.domain.auth.create_token("admin").token
        auth = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            subs = _subscriptions(ch, token, 2)
            pool = running.pool
            _until(lambda: pool.in_flight == 2)
            head = event_pb2_grpc.EventServiceStub(ch).GetHead
            with pytest.raises(grpc.RpcError) as refused:
                head(event_pb2.GetHeadRequest(), metadata=auth, timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert isinstance(client.error_from(refused.value), client.Overloaded)
            with pytest.raises(grpc.RpcError) as health_refused:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert running.admission.refused == 1  # health is never counted as refused by us
            assert pool.in_flight == 2  # neither refusal reached a worker
            subs[0].cancel()
            _until(lambda: pool.in_flight == 1)
            assert head(event_pb2.GetHeadRequest(), metadata=auth, timeout=30).head_id >= 0
            subs[1].cancel()
    finally:
        running.stop(grace=0)


def test_the_health_port_answers_while_the_main_port_refuses_at_its_limit(tmp_path: Path) -> None:
    """``health_listen``: Check on a port of its own, outside the in-flight limit. At the
    limit the main port refuses health checks; the health port answers what the servicer
    says, for the server and each service, NOT_SERVING once shutting down, and only Check
    (Watch would hold one of its few threads). It closes with the server."""
    from cardmint.server.api import SERVICE_NAMES
    from cardmint.v1 import event_pb2, event_pb2_grpc

    running = start(
        None, "127.0.0.1:0", tmp_path / "var", workers=1, max_in_flight=2, health_listen="127.0.0.1:0"
    )
    stopped = False
    try:
        assert running.pool is not None and running.health_port not in (None, running.port)
        token = running.domain.auth.create_token("admin").token
        with (
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch,
            grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as hch,
        ):
            subs = _subscriptions(ch, token, 2)
            pool = running.pool
            _until(lambda: pool.in_flight == 2)
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            check = health_pb2_grpc.HealthStub(hch).Check
            for name in ("", *SERVICE_NAMES):
                answer = check(health_pb2.HealthCheckRequest(service=name), timeout=30)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
            with pytest.raises(grpc.RpcError) as unknown:
                check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            watch = health_pb2_grpc.HealthStub(hch).Watch(health_pb2.HealthCheckRequest(), timeout=30)
            with pytest.raises(grpc.RpcError) as watched:
                next(watch)
            assert watched.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.RpcError) as other:  # nothing but health there
                event_pb2_grpc.EventServiceStub(hch).GetHead(
                    event_pb2.GetHeadRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
                )
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert pool.in_flight == 2  # the health port's calls took no worker of the main port
            running.health.enter_graceful_shutdown()  # what stop() does first
            assert check(health_pb2.HealthCheckRequest(), timeout=30).status == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for sub in subs:
                sub.cancel()
            running.stop(grace=0)
            stopped = True
            with pytest.raises(grpc.RpcError) as closed:
                check(health_pb2.HealthCheckRequest(), timeout=5)
            assert closed.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            running.stop(grace=0)


def test_a_health_port_that_cannot_be_bound_stops_the_start(tmp_path: Path) -> None:
    """A taken health port fails ``start`` (OSError naming it) and leaves nothing behind:
    no thread of its own (the storage probe's included) and the storage closed, so the
    same var directory starts again at once."""
    running = start(None, "127.0.0.1:0", tmp_path / "var", workers=1)
    try:
        taken = f"127.0.0.1:{running.port}"

        def ours() -> Counter[str]:  # a server's own threads (other tests' may come and go)
            return Counter(t.name for t in threading.enumerate() if t.name.startswith("cardmint-"))

        before = ours()
        with pytest.raises(OSError, match="cannot serve health on"):
            start(None, "127.0.0.1:0", tmp_path / "other", workers=1, health_listen=taken)
        _until(lambda: not ours() - before)  # none left behind: no probe writing to a closed storage
    finally:
        running.stop(grace=0)
    again = start(None, "127.0.0.1:0", tmp_path / "other", workers=1, health_listen="127.0.0.1:0")
    again.stop(grace=0)


def test_the_client_sends_a_refused_call_again_until_its_timeout() -> None:
    """``Client`` unary calls retry ``Overloaded`` (refused before anything was done: safe
    for any call) with backoff, within the call's timeout; past it they raise it."""
    from cardmint.v1 import event_pb2

    refusals = [2]  # the first two calls are refused as grpc's own limit refuses them
    seen: list[float] = []

    def head(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(time.monotonic())
        if refusals[0] != 0:
            refusals[0] -= 1
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, client.GRPC_CONCURRENCY_LIMIT)
        return event_pb2.GetHeadResponse(head_id=7).SerializeToString()

    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "cardmint.v1.EventService", {"GetHead": grpc.unary_unary_rpc_method_handler(head)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with client.Client(f"127.0.0.1:{port}", "t", timeout=30) as c:
            assert c.event_head() == 7
            assert len(seen) == 3 and seen[1] > seen[0] and seen[2] > seen[1]
            refusals[0] = -1  # refused for good: the client gives up within its timeout
        with client.Client(f"127.0.0.1:{port}", "t", timeout=1.0) as c:
            before = len(seen)
            with pytest.raises(client.Overloaded):
                c.event_head()
            assert len(seen) - before >= 2  # tried again before giving up
    finally:
        server.stop(0).wait()
