"""`cardmint bench --server`: the gRPC server against a bare grpcio echo server, in one run.

Everything runs in this process on 127.0.0.1: an echo server (one trivial unary method, bytes
in and out, no protobuf) as the baseline, and a cardmint server on SQLite in a temporary
directory (and on PostgreSQL when ``--pg DSN`` is given). Unary rows are measured with many
concurrent client threads over a few channels; 'x echo' is a row's calls/s over the echo
server's calls/s measured in the same run with the same client layout. ``--apart`` adds
echo, GetBalance, Redeem and BindCard with each server in a spawned process of its own (the
clients stay here), with each server process's CPU per call, and the durable write floor:
servers whose one method commits one row through cardmint's storage (group commit, fsync,
the writers' gate) and nothing else, the least a durable write call can cost here.

The issue's targets (2 cores): Bind and Redeem with 64 clients >= 50% of echo calls/s and
p99 <= 25 ms; bulk Check >= 2M codes/s; a lot of 10^6 minted, stored and exported <= 20 s;
redeem race: 64 clients, 10,000 attempts on one card spend exactly its balance.

Bind and Redeem are measured twice. Closed loop: each client sends its next call as soon as
the last is answered, which finds the saturation rate; its latencies are queueing (64
callers always waiting: on average 64 / rate, 28-38 ms at echo's own 1,700-2,300 calls/s),
so no server reaches a 25 ms p99 that way, echo included. Paced: the same 64 clients offer
half of echo's calls/s (measured in the same run) on a fixed schedule; the row is met when
the server carries all of it with a p99 <= 25 ms, counted from each call's due time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, overload

import grpc
import numpy as np
import numpy.typing as npt

from .bench import Row, _median, table

CURRENCY = "CNY"
FACE = 10_000_000  # minor units on the unary cards: never runs out at one unit a call
ECHO_METHOD = "/cardmint.bench.Echo/Echo"
FLOOR_METHOD = "/cardmint.bench.Floor/Write"


@dataclass(frozen=True)
class ServerSizes:
    calls: int  # unary calls per row
    threads: int  # concurrent clients
    channels: int  # channels the clients share
    lot: int  # codes minted, stored and exported
    check: int  # codes in the bulk Check
    issued: int  # codes issued in all when the bulk Check runs (more lots minted first)
    race: int  # redeem attempts on one card
    limit_s: float  # every concurrent phase stops after this long, done or not
    repeats: int  # timed bulk Checks; the median counts


# A bulk Check of 10^6 codes takes ~0.4 s: one timing of it moved 1.8-2.8M codes/s between
# runs in one hour, so the reports take the median of three.
FULL = ServerSizes(10_000, 64, 4, 1_000_000, 1_000_000, 10_000_000, 10_000, 120.0, 3)
QUICK = ServerSizes(1_000, 64, 4, 100_000, 1_000_000, 1_000_000, 1_000, 60.0, 3)
TINY = ServerSizes(64, 8, 2, 300, 1_000, 600, 300, 30.0, 1)


@dataclass
class ServerRow(Row):
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Load:
    """What a concurrent phase did: calls finished (ok or refused), wall time, latencies."""

    done: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else float("inf")


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _latency(load: Load) -> str:
    return f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms"


def run_concurrent(call: Callable[[int, int], object], total: int, threads: int, limit_s: float) -> Load:
    """``call(thread, i)`` for i in 0..total-1 spread over ``threads`` threads, all started
    together; a thread stops early once ``limit_s`` has passed. An exception counts as a
    finished (refused) call; the caller's ``call`` handles the refusals it expects."""
    threads = max(1, min(threads, total))
    per = [total // threads + (1 if t < total % threads else 0) for t in range(threads)]
    first = [sum(per[:t]) for t in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    go = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(t: int) -> None:
        go.wait()
        lat = latencies[t]
        for i in range(first[t], first[t] + per[t]):
            if time.perf_counter() > deadline[0]:
                break
            s = time.perf_counter()
            try:
                call(t, i)
            except Exception:  # counted; the phase goes on
                errors[t] += 1
            lat.append(time.perf_counter() - s)

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    deadline[0] = time.perf_counter() + limit_s
    started = time.perf_counter()
    go.wait()
    for th in pool:
        th.join(timeout=limit_s + 60)
    seconds = time.perf_counter() - started
    flat = sorted(x for lat in latencies for x in lat)
    return Load(len(flat), sum(errors), seconds, _percentile(flat, 0.5) * 1e3, _percentile(flat, 0.99) * 1e3)


def run_paced(
    call: Callable[[int, int], object], rate: float, total: int, threads: int, limit_s: float
) -> Load:
    """``call(thread, i)`` for i in 0..total-1 on a fixed schedule: call i is due at
    ``i / rate`` seconds after the start and goes to thread ``i % threads``, so the
    ``threads`` clients together offer ``rate`` calls/s whatever the answers' speed (an
    open loop per client). A latency runs from the moment a call was due, not from when
    its client got round to sending it: a client held up by a slow answer makes its next
    calls late, and that lateness counts (no coordinated omission). ``Load.seconds`` runs
    from the start to the last answer, so ``Load.rate`` falls below ``rate`` when the
    server cannot keep up. A thread stops sending once ``limit_s`` has passed."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    threads = max(1, min(threads, total))
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    ends = [0.0] * threads
    go = threading.Barrier(threads + 1)
    start = [0.0]

    def worker(t: int) -> None:
        go.wait()
        lat = latencies[t]
        t0 = start[0]
        for i in range(t, total, threads):
            due = t0 + i / rate
            now = time.perf_counter()
            if now - t0 > limit_s:
                break
            if due > now:
                time.sleep(due - now)
            try:
                call(t, i)
            except Exception:  # counted; the phase goes on
                errors[t] += 1
            ends[t] = time.perf_counter()
            lat.append(ends[t] - due)

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    start[0] = time.perf_counter() + 0.05  # every client is waiting on the barrier by then
    go.wait()
    for th in pool:
        th.join(timeout=limit_s + 60)
    seconds = max(ends) - start[0]
    flat = sorted(x for lat in latencies for x in lat)
    return Load(len(flat), sum(errors), seconds, _percentile(flat, 0.5) * 1e3, _percentile(flat, 0.99) * 1e3)


@dataclass(frozen=True)
class Knee:
    """The highest offered rate a paced phase carried within a p99 (``highest_paced``)."""

    rate: float  # calls/s offered and carried within the p99; 0 when none was
    p99_ms: float
    tried: tuple[tuple[float, Load], ...]  # every phase: (offered rate, what it did)

    @property
    def phases(self) -> str:
        return "; ".join(
            f"{r:.0f}/s {'within' if _within(load, self.p99_ms) else 'over'} (p99 {load.p99_ms:.0f} ms)"
            for r, load in self.tried
        )


def _within(load: Load, p99_ms: float) -> bool:
    """A paced phase whose every call succeeded within ``p99_ms`` of its due time, 99 in
    100 of them. (A server that falls behind the offered rate makes every later call late,
    which its p99 shows: no rate check needed, which a short phase would fail anyway, its
    wall time ending with the last call's latency.)"""
    return load.errors == 0 and load.p99_ms <= p99_ms


def highest_paced(phase: Callable[[float, int], Load], ceiling: float, p99_ms: float, steps: int = 5) -> Knee:
    """The highest rate up to ``ceiling`` at which ``phase(rate, k)`` (the k-th phase: a
    paced run at ``rate``, fresh work each time) keeps its p99 within ``p99_ms`` with no
    errors: ``ceiling`` itself if it passes, else the last passing rate of ``steps``
    bisections between 0 and it (within ``ceiling / 2**steps`` of the true one). A rate
    that fails is tried once more before it counts as failed, twice in a search at most
    (a pause of another process on a shared machine is not the server's limit)."""
    tried: list[tuple[float, Load]] = []
    good, bad = 0.0, ceiling
    rate, bisections, retries, retried = ceiling, 0, 0, False
    while True:
        load = phase(rate, len(tried))
        tried.append((rate, load))
        if _within(load, p99_ms):
            good, retried = rate, False
            if rate >= ceiling:
                break
        elif not retried and retries < _KNEE_RETRIES:
            retried, retries = True, retries + 1
            continue
        else:
            bad, retried = rate, False
        if bisections == steps:
            break
        bisections += 1
        rate = (good + bad) / 2
    return Knee(good, p99_ms, tuple(tried))


# -- the echo baseline ----------------------------------------------------------------------


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


@contextmanager
def bytes_server(
    method: str, fn: Callable[[bytes, grpc.ServicerContext], bytes], workers: int
) -> Iterator[str]:
    """A bare grpcio server on 127.0.0.1 with one unary bytes-in/bytes-out ``method``
    (``/service/Method``) answered by ``fn``; yields its address."""
    service, name = method.strip("/").split("/")
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name.lower()))
    handler = grpc.method_handlers_generic_handler(service, {name: grpc.unary_unary_rpc_method_handler(fn)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


def echo_server(workers: int = 32) -> AbstractContextManager[str]:
    """The echo baseline: ``bytes_server`` answering each request with itself."""
    return bytes_server(ECHO_METHOD, _echo, workers)


@contextmanager
def channels(addr: str, n: int) -> Iterator[list[grpc.Channel]]:
    """``n`` channels to ``addr`` (several comma-separated: round robin over them, as
    ``cardmint.client.Client``). Channels to one target share grpc's subchannels: one
    connection per server address, whatever ``n``."""
    from cardmint.client import channel_target

    target, options = channel_target(addr)
    opened = [grpc.insecure_channel(target, options=options) for _ in range(max(1, n))]
    try:
        for ch in opened:
            grpc.channel_ready_future(ch).result(timeout=10)
        yield opened
    finally:
        for ch in opened:
            ch.close()


@contextmanager
def _bytes_stubs(addr: str, sizes: ServerSizes, method: str) -> Iterator[Callable[[int], bytes]]:
    """``call(t)``: client t's call of a bytes-in/bytes-out ``method`` (no protobuf), over
    ``sizes.channels`` channels, each warmed up."""
    with channels(addr, sizes.channels) as chans:
        stubs = [ch.unary_unary(method, None, None) for ch in chans]  # bytes as they are
        payload = b"x" * 32
        for s in stubs:  # warm up
            s(payload, timeout=10)
        yield lambda t: stubs[t % len(stubs)](payload, timeout=10)


def measure_echo(addr: str, sizes: ServerSizes, method: str = ECHO_METHOD) -> Load:
    """``sizes.threads`` clients calling ``method`` closed loop (the echo server's, or the
    durable write floor's)."""
    with _bytes_stubs(addr, sizes, method) as call:
        return run_concurrent(lambda t, i: call(t), sizes.calls, sizes.threads, sizes.limit_s)


# -- the cardmint server --------------------------------------------------------------------


@dataclass
class Prepared:
    """A started server with a product, a lot and its export, and an admin token."""

    addr: str
    token: str
    rows: Sequence[tuple[str, str]]  # (serial, code) of the lot
    lot_seconds: float


@contextmanager
def cardmint_server(db_url: str | None, var_dir: Path) -> Iterator[tuple[str, str]]:
    """An in-process cardmint server on 127.0.0.1, as shipped (its default threads and
    in-flight limit); yields (address, admin token)."""
    from cardmint.server.app import start

    running = start(db_url, "127.0.0.1:0", var_dir)
    try:
        token = running.domain.auth.create_token("admin", label="bench").token
        yield f"127.0.0.1:{running.port}", token
    finally:
        running.stop(grace=0)


class LotRows(Sequence[tuple[str, str]]):
    """A lot's (serial, code) rows, kept as two numpy byte-string arrays: a row becomes a
    tuple of str only when asked for. A list of 10^6 tuples is 10^6 objects the cyclic
    garbage collector walks on every full collection in this process, which runs the
    clients and the server being measured: pauses the echo baseline (measured before the
    lot exists) never had."""

    def __init__(self, serials: npt.NDArray[np.bytes_], codes: npt.NDArray[np.bytes_]) -> None:
        if len(serials) != len(codes):
            raise ValueError(f"{len(serials)} serials but {len(codes)} codes")
        self._serials, self._codes = serials, codes

    def __len__(self) -> int:
        return len(self._serials)

    @overload
    def __getitem__(self, i: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, i: slice) -> LotRows: ...
    def __getitem__(self, i: int | slice) -> tuple[str, str] | LotRows:
        if isinstance(i, slice):
            return LotRows(self._serials[i], self._codes[i])
        return self._serials[i].decode(), self._codes[i].decode()


def make_lot(addr: str, token: str, sku: str, count: int, face: int = FACE) -> tuple[LotRows, float]:
    """Create a product (once per sku) and a lot of ``count``, export it; (rows, seconds).

    The seconds cover minting and storing the lot and streaming all its codes to this client
    as arrays, the form ``cardmint lot create`` writes its file from. The rows the later
    measurements work from are those arrays joined (``LotRows``), after the clock stops."""
    from cardmint.client import Client, ProductExists

    with Client(addr, token, timeout=60.0, bulk_timeout=1800.0) as c:
        with suppress(ProductExists):
            c.create_product(sku=sku, name="bench card", currency=CURRENCY, amount_range=(100, FACE))
        t = time.perf_counter()
        lot = c.create_lot(sku, count, face)
        chunks = list(c.stream_lot_arrays(lot.id))
        seconds = time.perf_counter() - t
    if not chunks:
        return LotRows(np.zeros(0, "S1"), np.zeros(0, "S1")), seconds
    return LotRows(np.concatenate([s for s, _ in chunks]), np.concatenate([c for _, c in chunks])), seconds


def _as_is(op: str, phase: Callable[[], Load]) -> Load:
    return phase()


def measure_unary(
    addr: str,
    token: str,
    rows: Sequence[tuple[str, str]],
    sizes: ServerSizes,
    tag: str,
    paced_rate: float | None = None,
    around: Callable[[str, Callable[[], Load]], Load] = _as_is,
) -> dict[str, Load]:
    """GetBalance, Redeem and BindCard with ``sizes.threads`` concurrent clients, each as
    fast as answers come (closed loop: the server's saturation rate; its latencies are
    mostly queueing, ``threads`` / rate on average). With ``paced_rate``, Redeem and
    BindCard again as "Redeem paced" and "BindCard paced": the same clients offering
    ``paced_rate`` calls/s between them on a fixed schedule (``run_paced``), the latency a
    caller sees while the server carries that rate.

    Each client redeems one unit at a time from a card of its own; binds take fresh cards
    (after the redeem cards) onto fresh accounts. ``around(op, phase)`` runs each phase
    (``phase()`` measures it), for a caller that measures something around it."""
    from cardmint.client import Client

    threads = sizes.threads
    need = threads + sizes.calls * (2 if paced_rate else 1)
    if len(rows) < need:
        raise ValueError(f"need {need} cards, the lot has {len(rows)}")
    out: dict[str, Load] = {}
    with channels(addr, sizes.channels) as chans:
        clients = [Client(addr, token, timeout=30.0, channel=chans[t % len(chans)]) for t in range(threads)]
        own = [rows[t][0] for t in range(threads)]
        clients[0].balance(serial=own[0])  # warm up
        out["GetBalance"] = around(
            "GetBalance",
            lambda: run_concurrent(
                lambda t, i: clients[t].balance(serial=own[t]), sizes.calls, threads, sizes.limit_s
            ),
        )

        def redeem(label: str) -> Callable[[int, int], object]:
            return lambda t, i: clients[t].redeem(own[t], 1, CURRENCY, request_id=f"{tag}-{label}{i}")

        def bind(first: int, label: str) -> Callable[[int, int], object]:
            cards = rows[first:]
            return lambda t, i: clients[t].bind_card(cards[i][1], account=f"{tag}-{label}-{i}")

        out["Redeem"] = around(
            "Redeem", lambda: run_concurrent(redeem("r"), sizes.calls, threads, sizes.limit_s)
        )
        out["BindCard"] = around(
            "BindCard", lambda: run_concurrent(bind(threads, "acct"), sizes.calls, threads, sizes.limit_s)
        )
        if paced_rate:
            out["Redeem paced"] = run_paced(redeem("pr"), paced_rate, sizes.calls, threads, sizes.limit_s)
            out["BindCard paced"] = run_paced(
                bind(threads + sizes.calls, "pacct"), paced_rate, sizes.calls, threads, sizes.limit_s
            )
    return out


UNARY_SHARE = 0.5  # Bind and Redeem: carry this share of echo's calls/s ...
UNARY_P99_MS = 25.0  # ... with 64 clients, at this p99
KNEE_SECONDS = 3.0  # a phase of the knee search offers about this many seconds of calls ...
KNEE_STEPS = 5  # ... over this many bisection steps at most
_KNEE_RETRIES = 2  # failed phases tried again in one search


def _knee_calls(rate: float, most: int, threads: int) -> int:
    return max(threads, min(most, int(rate * KNEE_SECONDS)))


def measure_knees(
    addr: str,
    token: str,
    rows: Sequence[tuple[str, str]],
    sizes: ServerSizes,
    tag: str,
    ceiling: float,
    bind_from: int,
    p99_ms: float = UNARY_P99_MS,
) -> dict[str, Knee]:
    """Redeem and BindCard: the highest rate up to ``ceiling`` the ``sizes.threads``
    clients can offer paced with the p99 within ``p99_ms`` (``highest_paced``). Redeems
    come from the first ``sizes.threads`` cards, one each; binds take fresh cards from
    ``rows[bind_from:]`` onto fresh accounts."""
    from cardmint.client import Client

    threads = sizes.threads
    out: dict[str, Knee] = {}
    with channels(addr, sizes.channels) as chans:
        clients = [Client(addr, token, timeout=30.0, channel=chans[t % len(chans)]) for t in range(threads)]
        own = [rows[t][0] for t in range(threads)]

        def redeem(rate: float, k: int) -> Load:
            return run_paced(
                lambda t, i: clients[t].redeem(own[t], 1, CURRENCY, request_id=f"{tag}-k{k}-{i}"),
                rate,
                _knee_calls(rate, sizes.calls, threads),
                threads,
                sizes.limit_s,
            )

        out["Redeem"] = highest_paced(redeem, ceiling, p99_ms, KNEE_STEPS)
        used = [bind_from]

        def bind(rate: float, k: int) -> Load:
            n = _knee_calls(rate, sizes.calls, threads)
            first, used[0] = used[0], used[0] + n
            if used[0] > len(rows):
                raise ValueError(f"the lot has {len(rows)} cards, the binds need {used[0]}")
            cards = rows[first : first + n]
            return run_paced(
                lambda t, i: clients[t].bind_card(cards[i][1], account=f"{tag}-k{k}-{i}"),
                rate,
                n,
                threads,
                sizes.limit_s,
            )

        out["BindCard"] = highest_paced(bind, ceiling, p99_ms, KNEE_STEPS)
    return out


def knee_row(
    op: str, label: str, knee: Knee, echo_rate: float, per: int = 1, unit: str = "calls"
) -> ServerRow:
    """A knee's row: its rate the highest within the p99 (in ``unit``s of ``per`` calls
    each), 'x echo' its calls/s over echo's."""
    passed = [load for rate, load in knee.tried if rate == knee.rate and _within(load, knee.p99_ms)]
    best = passed[-1] if passed else None
    return ServerRow(
        op,
        label,
        best.done if best else 0,
        best.seconds if best else 0.0,
        knee.rate,
        per * knee.rate / echo_rate,
        note=f"highest paced rate within p99 {knee.p99_ms:g} ms: {knee.rate:.0f} {unit}/s "
        f"({per * knee.rate / echo_rate:.0%} of echo calls/s); tried {knee.phases}",
        p50_ms=round(best.p50_ms, 3) if best else None,
        p99_ms=round(best.p99_ms, 3) if best else None,
    )


@dataclass(frozen=True)
class Race:
    attempts: int
    done: int
    succeeded: int
    refused: int
    other: int
    face: int
    balance_after: int
    seconds: float

    @property
    def exact(self) -> bool:
        return self.succeeded == self.face and self.balance_after == 0


def measure_race(addr: str, token: str, sizes: ServerSizes, sku: str, tag: str) -> Race:
    """``sizes.threads`` clients, ``sizes.race`` attempts of one unit on one card holding half
    as many units: exactly the balance must be spent, the rest refused."""
    from cardmint.client import Client, InsufficientFunds

    face = max(1, sizes.race // 2)
    (serial, _code), *_ = make_lot(addr, token, sku, 1, face)[0]
    ok = [0] * sizes.threads
    refused = [0] * sizes.threads
    with channels(addr, sizes.channels) as chans:
        clients = [
            Client(addr, token, timeout=30.0, channel=chans[t % len(chans)]) for t in range(sizes.threads)
        ]

        def attempt(t: int, i: int) -> None:
            try:
                clients[t].redeem(serial, 1, CURRENCY, request_id=f"{tag}-race-{i}")
                ok[t] += 1
            except InsufficientFunds:
                refused[t] += 1

        load = run_concurrent(attempt, sizes.race, sizes.threads, sizes.limit_s)
        bal = clients[0].balance(serial=serial)
        after = sum(m.minor_units for m in bal.balances)
    return Race(sizes.race, load.done, sum(ok), sum(refused), load.errors, face, after, load.seconds)


def fill_issued(addr: str, token: str, sku: str, have: int, want: int, lot: int) -> tuple[int, float]:
    """Mint lots of at most ``lot`` codes (not exported) until ``want`` codes are issued;
    (codes issued now, seconds spent)."""
    from cardmint.client import Client

    t = time.perf_counter()
    with Client(addr, token, timeout=60.0, bulk_timeout=3600.0) as c:
        while have < want:
            have += c.create_lot(sku, min(lot, want - have), FACE).count
    return have, time.perf_counter() - t


def measure_check(
    addr: str, token: str, issued: Sequence[tuple[str, str]], n: int, repeats: int = 1
) -> tuple[float, int, int]:
    """Bulk Check of ``n`` codes, half issued ones (cycled) and half never issued, through
    ``Client.check_many`` (verdicts as arrays); (median seconds, codes answered, codes found
    issued and usable). The first call also loads the server's index with every lot
    minted since its last check, so one warm-up call runs before the timed ones."""
    from cardmint.client import CheckBatch, Client
    from cardmint.kernel import Kernel, available_backends

    k = Kernel("rust" if "rust" in available_backends() else "python")
    strangers = [
        c.decode() for c in k.display(k.generate(n - n // 2, seed=bytes([7] * 32)).codes, 4).tolist()
    ]
    known = [issued[i % len(issued)][1] for i in range(n // 2)]
    codes = [c for pair in zip(known, strangers, strict=False) for c in pair] + strangers[len(known) :]
    ok = CheckBatch.code("ok")
    with Client(addr, token, timeout=60.0, bulk_timeout=1800.0) as c:
        c.check_many(codes[:1000])  # warm-up: the index catches up with the lots minted
        counts = [0, 0]

        def once() -> None:
            batch = c.check_many(codes, chunk=min(len(codes), 1 << 18))
            counts[:] = [len(batch), int((batch.status == ok).sum())]

        secs = _median(once, repeats)
        return secs, counts[0], counts[1]


# -- the card shop (OrderService) -------------------------------------------------------------


@dataclass(frozen=True)
class OrderSizes:
    round_trips: int  # CreateOrder + ConfirmPayment pairs in the round-trip row
    threads: int
    channels: int
    buyers: int  # concurrent buyers in the race
    pool: int  # codes they race for
    limit_s: float


ORDERS_FULL = OrderSizes(5_000, 64, 4, 200, 1_000, 120.0)
ORDERS_TINY = OrderSizes(64, 8, 2, 20, 100, 30.0)


def stock_pool(addr: str, token: str, sku: str, count: int, face: int = 500) -> None:
    """A product (once per sku) with a lot of ``count`` codes of ``face`` in the pool (the
    lot is minted and stocked, never exported)."""
    from cardmint.client import Client, ProductExists

    with Client(addr, token, timeout=60.0, bulk_timeout=1800.0) as c:
        with suppress(ProductExists):
            c.create_product(sku=sku, name="shop card", currency=CURRENCY, denominations=[face])
        lot = c.create_lot(sku, count, face)
        c.stock_pool(lot.id)


def measure_orders(
    addr: str,
    token: str,
    sizes: OrderSizes,
    sku: str,
    tag: str,
    face: int = 500,
    paced_rate: float | None = None,
) -> Load:
    """Order round trips: CreateOrder (one code) then ConfirmPayment, which delivers it, by
    ``sizes.threads`` concurrent clients acting as a storefront for one buyer (account and
    client address) each, as fast as answers come, or with ``paced_rate`` offering that
    many round trips/s between them on a fixed schedule (``run_paced``). ``Load.done``
    counts round trips (two calls each). The pool must hold ``sizes.round_trips`` codes of
    ``sku``."""
    from cardmint.client import Client

    with channels(addr, sizes.channels) as chans:
        clients = [
            Client(addr, token, timeout=30.0, channel=chans[t % len(chans)]) for t in range(sizes.threads)
        ]
        clients[0].stock(sku)  # warm up

        def round_trip(t: int, i: int) -> None:
            c = clients[t]
            order = c.create_order(
                [(sku, face, 1)],
                account=f"{tag}-buyer-{t}",
                request_id=f"{tag}-o{i}",
                client_address=f"bench:{t}",
            )
            paid = c.confirm_payment(order.id, f"{tag}-p{i}", face, CURRENCY)
            if len(paid.codes) != 1:
                raise AssertionError(f"order {order.id} delivered {len(paid.codes)} codes")

        if paced_rate:
            return run_paced(round_trip, paced_rate, sizes.round_trips, sizes.threads, sizes.limit_s)
        return run_concurrent(round_trip, sizes.round_trips, sizes.threads, sizes.limit_s)


@dataclass(frozen=True)
class OrderRace:
    buyers: int
    pool: int
    delivered: int  # codes delivered, all buyers together
    distinct: int  # distinct serials among them
    sold_out: int  # buyers who ended on a clean SoldOut
    other: int  # buyers who ended on anything else
    seconds: float

    @property
    def exact(self) -> bool:
        return (
            self.delivered == self.distinct == self.pool and self.sold_out == self.buyers and self.other == 0
        )


def measure_order_race(
    addr: str, token: str, buyers: int, pool: int, sku: str, tag: str, face: int = 500, limit_s: float = 120.0
) -> OrderRace:
    """``buyers`` concurrent buyers each buy one code at a time (order, then payment) until
    the pool of ``pool`` codes of ``sku`` is sold out. Every code must be delivered exactly
    once and every buyer must end on SoldOut."""
    from cardmint.client import Client, SoldOut

    stock_pool(addr, token, sku, pool, face)
    chans_n = max(1, min(8, buyers // 25))
    got: list[list[str]] = [[] for _ in range(buyers)]
    ended: list[str] = ["" for _ in range(buyers)]
    go = threading.Barrier(buyers + 1)
    with channels(addr, chans_n) as chans:
        clients = [Client(addr, token, timeout=60.0, channel=chans[b % len(chans)]) for b in range(buyers)]

        def buyer(b: int) -> None:
            c = clients[b]
            go.wait()
            stop = time.perf_counter() + limit_s
            try:
                while time.perf_counter() < stop:
                    try:
                        order = c.create_order(
                            [(sku, face, 1)], account=f"{tag}-racer-{b}", client_address=f"race:{b}"
                        )
                    except SoldOut:
                        ended[b] = "sold out"
                        return
                    paid = c.confirm_payment(order.id, f"{tag}-race-{order.id}", face, CURRENCY)
                    got[b].extend(code.serial for code in paid.codes)
                ended[b] = "time limit"
            except Exception as e:  # reported, not raised: the race's figure says it
                ended[b] = type(e).__name__

        pool_threads = [threading.Thread(target=buyer, args=(b,), daemon=True) for b in range(buyers)]
        for th in pool_threads:
            th.start()
        started = time.perf_counter()
        go.wait()
        for th in pool_threads:
            th.join(limit_s + 60)
        seconds = time.perf_counter() - started
    serials = [s for mine in got for s in mine]
    sold_out = sum(e == "sold out" for e in ended)
    return OrderRace(buyers, pool, len(serials), len(set(serials)), sold_out, buyers - sold_out, seconds)


ORDER_SHARE = 0.4  # order round trips: this share of echo's calls/s ...
ORDER_P99_MS = 40.0  # ... at this p99 (a round trip: two calls)


def _order_rows(
    label: str, db_url: str | None, sizes: OrderSizes, echo_rate: float
) -> tuple[list[ServerRow], OrderRace]:
    with tempfile.TemporaryDirectory(prefix="cardmint-bench-") as tmp:
        url = db_url or f"sqlite://{Path(tmp) / 'cardmint.db'}"
        with cardmint_server(url, Path(tmp) / "var") as (addr, token):
            return _order_rows_at(label, addr, token, sizes, echo_rate)


def _order_rows_at(
    label: str,
    addr: str,
    token: str,
    sizes: OrderSizes,
    echo_rate: float,
    where: str = "",
    knee: bool = False,
) -> tuple[list[ServerRow], OrderRace]:
    """The card shop's rows against the server at ``addr``: the round trip closed loop and
    paced, with ``knee`` the highest paced rate within the p99 (``highest_paced``), and
    the buyers' race."""
    tag = f"o{os.getpid()}-{time.time_ns()}"
    sku = f"SHOP-{tag}"[:32]
    stock_pool(addr, token, sku, (2 + (KNEE_STEPS + 1 + _KNEE_RETRIES if knee else 0)) * sizes.round_trips)
    load = measure_orders(addr, token, sizes, sku, tag)
    share = 2 * load.rate / echo_rate  # calls/s over echo calls/s
    trip = _row(
        f"order round trip ({sizes.threads} clients{_also(where)})",
        label,
        load.done,
        load.seconds,
        target="saturation (closed loop)",
        p50_ms=round(load.p50_ms, 3),
        p99_ms=round(load.p99_ms, 3),
        note=f"{load.rate:.0f} round trips/s = {2 * load.rate:.0f} calls/s ({share:.0%} of echo calls/s);"
        f" {_latency(load)}, {load.errors} failed",
    )
    trip.vs_baseline = share
    offered = ORDER_SHARE * echo_rate / 2  # round trips/s: two calls each
    paced = measure_orders(addr, token, sizes, sku, f"{tag}p", paced_rate=offered)
    kept = paced.rate >= 0.99 * offered and paced.errors == 0
    paced_row = _row(
        f"order round trip ({sizes.threads} clients, paced{_also(where)})",
        label,
        paced.done,
        paced.seconds,
        target=f">= {ORDER_SHARE:.0%} echo at p99 <= {ORDER_P99_MS:g} ms",
        met=kept and paced.p99_ms <= ORDER_P99_MS if sizes.threads >= 64 else None,
        p50_ms=round(paced.p50_ms, 3),
        p99_ms=round(paced.p99_ms, 3),
        note=f"offered {offered:.0f} round trips/s = {2 * offered:.0f} calls/s ({ORDER_SHARE:.0%} of echo"
        f" calls/s), carried {paced.rate:.0f}/s; {_latency(paced)}"
        f" from each round trip's due time, {paced.errors} failed",
    )
    paced_row.vs_baseline = 2 * paced.rate / echo_rate
    knees: list[ServerRow] = []
    if knee:

        def phase(rate: float, k: int) -> Load:
            n = _knee_calls(rate, sizes.round_trips, sizes.threads)
            return measure_orders(
                addr, token, replace(sizes, round_trips=n), sku, f"{tag}k{k}", paced_rate=rate
            )

        found = highest_paced(phase, offered, ORDER_P99_MS, KNEE_STEPS)
        name = f"order round trip ({sizes.threads} clients, p99 <= {ORDER_P99_MS:g} ms{_also(where)})"
        knees.append(knee_row(name, label, found, echo_rate, per=2, unit="round trips"))
    race = measure_order_race(
        addr, token, sizes.buyers, sizes.pool, f"{sku}-R"[:32], tag, limit_s=sizes.limit_s
    )
    done = _row(
        f"order race ({race.buyers} buyers{_also(where)})",
        label,
        race.delivered,
        race.seconds,
        target="pool sold once, rest sold out",
        met=race.exact,
        note=f"{race.delivered} delivered of {race.pool} ({race.distinct} distinct), "
        f"{race.sold_out} sold out, {race.other} other endings",
    )
    return [trip, paced_row, *knees, done], race


def measure_orders_rows(
    sizes: OrderSizes, pg_dsn: str | None = None
) -> tuple[list[ServerRow], list[OrderRace]]:
    """The card shop's figures: the echo baseline, then per backend the order round trip
    ('x echo' compares calls/s, two calls per round trip) and the buyers' race."""
    with echo_server() as addr:
        echo = measure_echo(
            addr,
            ServerSizes(sizes.round_trips * 2, sizes.threads, sizes.channels, 0, 0, 0, 0, sizes.limit_s, 1),
        )
    base = _row(f"echo ({sizes.threads} clients)", "bare grpcio", echo.done, echo.seconds)
    base.vs_baseline = 1.0
    rows, races = [base], []
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if pg_dsn:
        backends.append(("postgres", pg_dsn))
    for label, url in backends:
        more, race = _order_rows(label, url, sizes, echo.rate)
        rows += more
        races.append(race)
    return rows, races


# -- servers apart: in processes of their own ------------------------------------------------


def _serve_echo(conn: Any) -> None:
    """A spawned child's body: the echo server on 127.0.0.1, its address sent up ``conn``;
    serves until the parent says stop or goes away (the pipe's end)."""
    with echo_server() as addr:
        conn.send(addr)
        with suppress(EOFError):
            conn.recv()


@dataclass
class Apart:
    """Servers in processes of their own: the address clients name (several
    comma-separated), an admin token (cardmint), the pids."""

    addr: str
    token: str
    pids: tuple[int, ...]

    def cpu_seconds(self) -> float | None:
        """The processes' user + system CPU so far (Linux /proc); None where there is none."""
        total = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


@contextmanager
def echo_apart(processes: int = 1) -> Iterator[Apart]:
    """``processes`` echo servers, each a spawned process on a port of its own
    (cardmint.server.fleet's ``Fleet``); stopped and joined on the way out."""
    from cardmint.server.fleet import Fleet

    fleet = Fleet.spawn("127.0.0.1", _serve_echo, [()] * processes, "bench-echo")
    try:
        addrs = fleet.reports(120.0)
        yield Apart(",".join(addrs), "", tuple(fleet.pids))
    finally:
        fleet.stop(5.0)


def _serve_floor(db_url: str, workers: int, conn: Any) -> None:
    """A spawned child's body: a grpcio server whose one method commits one write through
    cardmint's storage and answers its bytes; its address sent up ``conn``. The write is
    ``Storage.probe`` (the health probe's one-row upsert): a unit of work group-committed
    and fsynced like every write call's, behind the same writers' gate. No interceptors,
    no protobuf, no domain: the least a durable write call costs on this machine."""
    from cardmint.server.storage import open_storage

    storage = open_storage(db_url)

    def write(request: bytes, context: grpc.ServicerContext) -> bytes:
        storage.probe(timeout=10.0)
        return request

    try:
        with bytes_server(FLOOR_METHOD, write, workers) as addr:
            conn.send(addr)
            with suppress(EOFError):
                conn.recv()
    finally:
        storage.close()


@contextmanager
def floor_apart(var_dir: Path, processes: int = 1) -> Iterator[Apart]:
    """``processes`` durable-write floor servers (``_serve_floor``) on one SQLite file
    under ``var_dir``, each with cardmint's unary worker count; stopped on the way out."""
    from cardmint.server.app import DEFAULT_WORKERS, default_db_url
    from cardmint.server.fleet import Fleet
    from cardmint.server.storage import open_storage

    var_dir.mkdir(parents=True, exist_ok=True)
    url = default_db_url(var_dir)
    open_storage(url).close()  # migrated once, before the processes start
    fleet = Fleet.spawn("127.0.0.1", _serve_floor, [(url, DEFAULT_WORKERS)] * processes, "bench-floor")
    try:
        yield Apart(",".join(fleet.reports(120.0)), "", tuple(fleet.pids))
    finally:
        fleet.stop(5.0)


FLOOR_NOTE = "one group-committed, fsynced row per call; no interceptors, protobuf or domain"


def floor_rows(sizes: ServerSizes, processes: int, echo_rate: float) -> list[ServerRow]:
    """The durable write floor's two rows: closed loop ('x echo', CPU per call) and the
    highest paced rate up to echo's own within the unary p99."""
    with tempfile.TemporaryDirectory(prefix="cardmint-bench-") as tmp:
        closed, cpu, knee = measure_floor(sizes, processes, echo_rate, Path(tmp) / "var")
    where = _apart(processes)
    note = f"{_latency(closed)}, {closed.errors} refused; {FLOOR_NOTE}{_cpu_note(cpu)}"
    r = load_row(f"durable write floor ({sizes.threads} clients, {where})", "sqlite", closed, note)
    r.vs_baseline = closed.rate / echo_rate
    name = f"durable write floor ({sizes.threads} clients, p99 <= {UNARY_P99_MS:g} ms, {where})"
    return [r, knee_row(name, "sqlite", knee, echo_rate)]


def measure_floor(
    sizes: ServerSizes, processes: int, ceiling: float, var_dir: Path
) -> tuple[Load, float | None, Knee]:
    """The durable write floor of ``processes`` processes: closed loop (its load and the
    server processes' CPU per call), then the highest paced rate up to ``ceiling`` within
    the unary p99 (``highest_paced``)."""
    with floor_apart(var_dir, processes) as srv:
        probe = _CpuPerCall(srv)
        closed = probe("floor", lambda: measure_echo(srv.addr, sizes, FLOOR_METHOD))
        with _bytes_stubs(srv.addr, sizes, FLOOR_METHOD) as call:

            def phase(rate: float, k: int) -> Load:
                calls = _knee_calls(rate, sizes.calls, sizes.threads)
                return run_paced(lambda t, i: call(t), rate, calls, sizes.threads, sizes.limit_s)

            knee = highest_paced(phase, ceiling, UNARY_P99_MS, KNEE_STEPS)
    return closed, probe.per_call["floor"], knee


@contextmanager
def cardmint_apart(var_dir: Path, db_url: str | None = None, processes: int = 1) -> Iterator[Apart]:
    """A cardmint server of ``processes`` processes (``cardmint serve --processes``,
    cardmint.server.fleet) on 127.0.0.1, free ports, the database ``db_url`` (default
    SQLite under ``var_dir``); with an admin token. Drained and joined on the way out."""
    from cardmint.server.app import open_domain
    from cardmint.server.config import ServeConfig, default_config
    from cardmint.server.fleet import start_fleet

    defaults = default_config()
    values = dict(defaults.values)
    values.update(db=db_url, var=str(var_dir), listen="127.0.0.1:0", processes=processes, log_level="warning")
    cfg = ServeConfig(values, dict(defaults.sources))
    storage, domain = open_domain(db_url, var_dir)
    try:
        token = domain.auth.create_token("admin", label="bench apart").token
    finally:
        storage.close()
    fleet = start_fleet(cfg)
    try:
        yield Apart(fleet.target, token, tuple(fleet.pids))
    finally:
        fleet.stop(5.0)


class _CpuPerCall:
    """``around`` for measure_unary: the server processes' CPU seconds per phase."""

    def __init__(self, server: Apart) -> None:
        self.server = server
        self.per_call: dict[str, float | None] = {}

    def __call__(self, op: str, phase: Callable[[], Load]) -> Load:
        before = self.server.cpu_seconds()
        load = phase()
        after = self.server.cpu_seconds()
        self.per_call[op] = (
            (after - before) / load.done if before is not None and after is not None and load.done else None
        )
        return load


def _cpu_note(seconds: float | None) -> str:
    return "" if seconds is None else f"; server processes {seconds * 1e6:.0f} us CPU per call"


def _apart(processes: int) -> str:
    return f"{processes} server process{'es' if processes > 1 else ''} apart"


def fleet_sizes() -> tuple[int, ...]:
    """The server process counts ``--apart`` measures: 1, and one per core."""
    return tuple(sorted({1, os.cpu_count() or 1}))


def measure_apart(
    sizes: ServerSizes,
    fleets: Sequence[int] | None = None,
    order_sizes: OrderSizes | None = None,
    order_races: list[tuple[str, OrderRace]] | None = None,
) -> list[ServerRow]:
    """Servers in processes of their own, the clients in this one, as other services reach
    a deployed server. For each count in ``fleets`` (default: 1 and one per core): echo
    servers of that many processes, then a cardmint server (SQLite, a temporary directory)
    of that many processes, GetBalance, Redeem and BindCard closed loop, each with the
    server processes' CPU per call. The clients spread their calls over the processes
    round robin. One GIL per process here; in the in-process rows the clients share the
    server's, which holds echo back more than the cardmint calls.

    'x echo' compares with the fastest echo of the run, whatever its process count. After
    the echoes, the durable write floor of the largest count (``floor_rows``): what a write
    call costs with nothing of cardmint's but the storage's group commit. The largest
    fleet also carries the judged rows: Redeem and BindCard paced at half of that
    echo's calls/s and, with ``order_sizes``, the card shop's rows (round trip, paced round
    trip at 40% of echo's calls/s, the buyers' race; the race lands in ``order_races``)."""
    counts = sorted(set(fleets or fleet_sizes()))
    rows: list[ServerRow] = []
    echoes: dict[int, Load] = {}
    cpu: dict[int, float | None] = {}
    for n in counts:
        with echo_apart(n) as echo_srv:
            probe = _CpuPerCall(echo_srv)
            echoes[n] = probe("echo", lambda: measure_echo(echo_srv.addr, sizes))
            cpu[n] = probe.per_call["echo"]
    best = max(echoes.values(), key=lambda load: load.rate)
    for n in counts:
        r = echo_row(f"echo ({sizes.threads} clients, {_apart(n)})", echoes[n], _cpu_note(cpu[n]))
        r.vs_baseline = echoes[n].rate / best.rate
        rows.append(r)
    rows += floor_rows(sizes, counts[-1], best.rate)
    for n in counts:
        judged = n == counts[-1]
        paced = UNARY_SHARE * best.rate if judged else None
        with (
            tempfile.TemporaryDirectory(prefix="cardmint-bench-") as tmp,
            cardmint_apart(Path(tmp) / "var", processes=n) as srv,
        ):
            tag = f"a{n}-{os.getpid()}-{time.time_ns()}"
            sku = f"APART-{tag}"[:32]
            unary = sizes.threads + sizes.calls * (2 if paced else 1)
            need = unary + (sizes.calls * (KNEE_STEPS + 1 + _KNEE_RETRIES) if paced else 0)
            lot_rows, _ = make_lot(srv.addr, srv.token, sku, need)
            probe = _CpuPerCall(srv)
            loads = measure_unary(srv.addr, srv.token, lot_rows, sizes, tag, paced_rate=paced, around=probe)
            for op, load in loads.items():
                r = _unary_row(op, "sqlite", load, sizes.threads, best.rate, paced or 0.0, where=_apart(n))
                r.note += _cpu_note(probe.per_call.get(op))
                rows.append(r)
            if paced:
                knees = measure_knees(srv.addr, srv.token, lot_rows, sizes, tag, paced, bind_from=unary)
                for op, knee in knees.items():
                    name = f"{op} ({sizes.threads} clients, p99 <= {UNARY_P99_MS:g} ms, {_apart(n)})"
                    rows.append(knee_row(name, "sqlite", knee, best.rate))
            if judged and order_sizes is not None:
                more, race = _order_rows_at(
                    "sqlite", srv.addr, srv.token, order_sizes, best.rate, where=_apart(n), knee=True
                )
                rows += more
                if order_races is not None:
                    order_races.append((f"sqlite, {_apart(n)}", race))
    return rows


# -- the table ------------------------------------------------------------------------------


def _row(
    op: str,
    backend: str,
    n: int,
    secs: float,
    *,
    target: str = "",
    met: bool | None = None,
    p50_ms: float | None = None,
    p99_ms: float | None = None,
    note: str = "",
) -> ServerRow:
    rate = n / secs if secs > 0 else float("inf")
    return ServerRow(op, backend, n, secs, rate, None, target, met, p50_ms, p99_ms, note)


def load_row(op: str, backend: str, load: Load, note: str) -> ServerRow:
    """A row of a measured phase: its calls, time and latencies."""
    return _row(
        op,
        backend,
        load.done,
        load.seconds,
        p50_ms=round(load.p50_ms, 3),
        p99_ms=round(load.p99_ms, 3),
        note=note,
    )


def echo_row(op: str, load: Load, extra: str = "") -> ServerRow:
    """The echo baseline's row (``vs_baseline`` 1)."""
    base = load_row(op, "bare grpcio", load, f"{_latency(load)}{extra}")
    base.vs_baseline = 1.0
    return base


def _also(where: str) -> str:
    return f", {where}" if where else ""


def _unary_row(
    op: str, label: str, load: Load, threads: int, echo_rate: float, paced: float, where: str = ""
) -> ServerRow:
    """One unary row. The targets are judged on the paced rows: the clients offer half of
    echo's calls/s, and the server must carry all of it (no errors, the rate kept) at the
    p99. The closed-loop rows show the saturation rate; at saturation, 64 callers always
    waiting keep a queue whose wait (64 / rate) no server of that rate can avoid, so their
    p99 is reported, not judged. Runs with fewer than 64 clients judge nothing."""
    ratio = load.rate / echo_rate
    target, met = "", None
    judged = threads >= 64
    if op.endswith(" paced"):
        target = f">= {UNARY_SHARE:.0%} echo at p99 <= {UNARY_P99_MS:g} ms"
        kept = load.rate >= 0.99 * paced and load.errors == 0
        met = kept and load.p99_ms <= UNARY_P99_MS if judged else None
        note = (
            f"offered {paced:.0f}/s ({UNARY_SHARE:.0%} of echo), carried {load.rate:.0f}/s; "
            f"{_latency(load)} from each call's due time, "
            f"{load.errors} refused"
        )
        name = f"{op.removesuffix(' paced')} ({threads} clients, paced{_also(where)})"
    else:
        if op in ("Redeem", "BindCard"):
            target = "saturation (closed loop)"
        note = f"{_latency(load)}, {load.errors} refused"
        name = f"{op} ({threads} clients{_also(where)})"
    r = _row(
        name,
        label,
        load.done,
        load.seconds,
        target=target,
        met=met,
        p50_ms=round(load.p50_ms, 3),
        p99_ms=round(load.p99_ms, 3),
        note=note,
    )
    r.vs_baseline = ratio
    return r


def _backend_rows(
    label: str, db_url: str | None, sizes: ServerSizes, echo_rate: float, races: list[tuple[str, Race]]
) -> list[ServerRow]:
    rows: list[ServerRow] = []
    with tempfile.TemporaryDirectory(prefix="cardmint-bench-") as tmp:
        url = db_url or f"sqlite://{Path(tmp) / 'cardmint.db'}"
        with cardmint_server(url, Path(tmp) / "var") as (addr, token):
            tag = f"b{os.getpid()}-{time.time_ns()}"
            sku = f"BENCH-{tag}"[:32]
            lot_rows, lot_secs = make_lot(addr, token, sku, sizes.lot)
            scaled = lot_secs * 1_000_000 / sizes.lot
            rows.append(
                _row(
                    "lot create+export",
                    label,
                    len(lot_rows),
                    lot_secs,
                    target="10^6 <= 20 s",
                    met=scaled <= 20.0 if sizes.lot >= 1_000_000 else None,
                    note=f"{scaled:.1f} s per 10^6 (linear)",
                )
            )
            paced = UNARY_SHARE * echo_rate
            loads = measure_unary(addr, token, lot_rows, sizes, tag, paced_rate=paced)
            for op, load in loads.items():
                rows.append(_unary_row(op, label, load, sizes.threads, echo_rate, paced))
            issued, fill_secs = fill_issued(addr, token, sku, len(lot_rows), sizes.issued, sizes.lot)
            secs, answered, found = measure_check(addr, token, lot_rows, sizes.check, sizes.repeats)
            rows.append(
                _row(
                    "bulk Check (codes)",
                    label,
                    answered,
                    secs,
                    target=">= 2M/s vs 10^7 issued",
                    met=answered / secs >= 2e6 if secs > 0 and issued >= 10_000_000 else None,
                    note=f"against {issued:,} issued codes ({issued - len(lot_rows):,} minted for it in "
                    f"{fill_secs:.0f} s); half issued ({found:,} ok), half never issued",
                )
            )
            race = measure_race(addr, token, sizes, sku, tag)
            races.append((label, race))
            rows.append(
                _row(
                    f"redeem race ({sizes.threads} clients)",
                    label,
                    race.done,
                    race.seconds,
                    target="spent == balance",
                    met=race.exact,
                    note=f"{race.succeeded}/{race.attempts} succeeded, face {race.face}, "
                    f"balance after {race.balance_after}, {race.refused} refused, {race.other} other errors",
                )
            )
    return rows


def measure_server(
    sizes: ServerSizes,
    pg_dsn: str | None = None,
    races: list[tuple[str, Race]] | None = None,
    order_sizes: OrderSizes | None = None,
    order_races: list[tuple[str, OrderRace]] | None = None,
) -> list[ServerRow]:
    """Every server row plus the echo baseline (``vs_baseline`` = calls/s over echo's),
    and with ``order_sizes`` the card shop's rows (``_order_rows``) against the same echo."""
    races = races if races is not None else []
    order_races = order_races if order_races is not None else []
    with echo_server() as addr:
        echo = measure_echo(addr, sizes)
    rows = [echo_row(f"echo ({sizes.threads} clients)", echo)]
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if pg_dsn:
        backends.append(("postgres", pg_dsn))
    for label, url in backends:
        rows += _backend_rows(label, url, sizes, echo.rate, races)
        if order_sizes is not None:
            more, order_race = _order_rows(label, url, order_sizes, echo.rate)
            rows += more
            order_races.append((label, order_race))
    return rows


def run(args: argparse.Namespace) -> int:
    tiny = os.environ.get("CARDMINT_BENCH_SIZE") == "tiny"
    sizes = TINY if tiny else (QUICK if args.quick else FULL)
    started = time.time()
    races: list[tuple[str, Race]] = []
    order_races: list[tuple[str, OrderRace]] = []
    order_sizes = ORDERS_TINY if tiny else ORDERS_FULL
    rows = measure_server(sizes, getattr(args, "pg", None), races, order_sizes, order_races)
    if getattr(args, "apart", False):
        rows += measure_apart(sizes, order_sizes=order_sizes, order_races=order_races)
    print(
        f"cardmint bench --server ({'tiny' if tiny else 'quick' if args.quick else 'full'}): "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"{sizes.threads} client threads over {sizes.channels} channels"
    )
    print(table(list(rows)))
    print()
    for r in rows:
        if r.note:
            print(f"  {r.operation} [{r.backend}]: {r.note}")
    for label, race in races:
        print(
            f"redeem race [{label}]: {race.succeeded} of {race.attempts} attempts succeeded on a card of "
            f"{race.face}; balance after {race.balance_after} -> "
            f"{'exactly its balance spent' if race.exact else 'NOT EXACT'}"
        )
    for label, o in order_races:
        print(
            f"order race [{label}]: {o.buyers} buyers, {o.delivered} codes delivered of a pool of {o.pool} "
            f"({o.distinct} distinct), {o.sold_out} ended sold out -> "
            f"{'pool sold once, rest sold out' if o.exact else 'NOT EXACT'}"
        )
    print(f"({time.time() - started:.0f} s; 'x plain' = calls/s / echo calls/s, same run, same clients)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": {
                        "cores": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                        "grpcio": grpc.__version__,
                    },
                    "sizes": asdict(sizes),
                    "rows": [asdict(r) for r in rows],
                    "races": [{"backend": b, **asdict(r), "exact": r.exact} for b, r in races],
                    "order_races": [{"backend": b, **asdict(r), "exact": r.exact} for b, r in order_races],
                },
                f,
                indent=1,
            )
    sys.stdout.flush()
    exact = all(r.exact for _, r in races) and all(o.exact for _, o in order_races)
    return 0 if exact else 1


__all__ = [
    "FULL",
    "ORDERS_FULL",
    "ORDERS_TINY",
    "QUICK",
    "TINY",
    "Load",
    "LotRows",
    "OrderRace",
    "OrderSizes",
    "Race",
    "ServerRow",
    "ServerSizes",
    "bytes_server",
    "cardmint_apart",
    "cardmint_server",
    "echo_apart",
    "echo_row",
    "echo_server",
    "fill_issued",
    "fleet_sizes",
    "floor_apart",
    "floor_rows",
    "load_row",
    "make_lot",
    "measure_apart",
    "measure_check",
    "measure_echo",
    "measure_floor",
    "measure_order_race",
    "measure_orders",
    "measure_orders_rows",
    "measure_race",
    "measure_server",
    "measure_unary",
    "run",
    "run_concurrent",
    "run_paced",
    "stock_pool",
]
