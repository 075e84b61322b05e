"""The reliability suite (issue 5): races, crashes, hostile input, with figures.

Every test prints one line ``RELIABILITY <id> key=value ...`` (collected and shown at the end
of the run, in the "reliability" section), asserts correctness figures only (counts, zeros,
equalities), reports speed without asserting it, and prints the random seed it ran with:
``CARDMINT_SEED=<seed> pytest tests/reliability -k <test>`` replays it. ``--soak`` runs the
large sizes; CI runs the small ones. Servers listen on 127.0.0.1 only; every loop is bounded
in count and time.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from cardmint.client import Client
from cardmint.server.app import Running, start

from tests.cli_server.conftest import bindir
from tests.conftest import RELIABILITY

__all__ = ["bindir"]  # the `cardmint` shim for tests that run `cardmint serve`


@dataclass(frozen=True)
class Sizes:
    soak: bool
    clients: int = 64
    channels: int = 4
    race_balance: int = 1_000
    race_attempts: int = 10_000
    # card-to-card moves on a ring of 4 cards: every attempt queues on two hot rows, which
    # PostgreSQL serves at ~120 moves/s; the redeem race keeps the full 10,000 at CI size
    transfer_attempts: int = 2_560
    limit_s: float = 120.0  # no phase of a test runs longer than this
    # item 5: codes in the pool, orders placed on them (more than the codes), in rounds
    pool_codes: int = 1_000
    pool_orders: int = 1_200
    pool_rounds: int = 4
    # item 5 over two server processes, where a reservation expires in real time (seconds)
    pool2_codes: int = 400
    pool2_orders: int = 480
    pool2_rounds: int = 4
    pool2_ttl: int = 8
    # item 6: kill -9 during a lot of this many codes, this many times
    kill_lot: int = 50_000
    kills: int = 3
    # item 7: kill -9 under load from this many client threads, this many times
    kills_load: int = 5
    load_threads: int = 8
    power_cuts: int = 3  # item 7: simulated power losses on SQLite
    fault_rounds: int = 1  # item 8: rounds of EIO then ENOSPC


@pytest.fixture(scope="session")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    if request.config.getoption("--soak"):
        return Sizes(
            True,
            race_balance=5_000,
            race_attempts=50_000,
            transfer_attempts=50_000,
            limit_s=600.0,
            pool_codes=10_000,
            pool_orders=12_000,
            pool_rounds=8,
            pool2_codes=4_000,
            pool2_orders=4_800,
            pool2_rounds=8,
            pool2_ttl=15,
            kill_lot=200_000,
            kills=10,
            kills_load=50,
            power_cuts=10,
            fault_rounds=5,
        )
    return Sizes(False)


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    chosen = os.environ.get("CARDMINT_SEED")
    value = int(chosen) if chosen else random.SystemRandom().randrange(2**32)
    # Shown even when the test fails before it reports: pytest prints captured output then.
    print(f"seed={value} (replay: CARDMINT_SEED={value} pytest {request.node.nodeid})")
    return value


Report = Callable[..., str]


@pytest.fixture
def report(request: pytest.FixtureRequest, seed: int) -> Report:
    """``report(id, key=value, ...)``: records this test's RELIABILITY line (with its seed)."""

    def line(test_id: str, **figures: object) -> str:
        backend = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
        parts = [f"RELIABILITY {test_id}"]
        if backend:
            parts.append(f"backend={backend}")
        parts += [f"{k}={v}" for k, v in figures.items()]
        parts.append(f"seed={seed}")
        text = " ".join(parts)
        RELIABILITY.append(text)
        print(text)
        return text

    return line


@pytest.fixture
def server(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=32)
    try:
        yield running
    finally:
        running.stop(grace=0)


@pytest.fixture
def token(server: Running) -> Callable[..., str]:
    def make(role: str = "admin", account: str | None = None) -> str:
        return server.domain.auth.create_token(role, account=account).token

    return make


# A channel option: a TCP connection of the channel's own. Channels to one target otherwise
# share grpc's global subchannel pool, i.e. one connection whatever their number.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


@pytest.fixture
def clients(server: Running, sizes: Sizes) -> Iterator[Callable[[str], list[Client]]]:
    """``clients(token)``: ``sizes.clients`` clients over ``sizes.channels`` channels."""
    opened: list[grpc.Channel] = []
    addr = f"127.0.0.1:{server.port}"

    def make(bearer: str) -> list[Client]:
        chans = [grpc.insecure_channel(addr, options=[OWN_CONNECTION]) for _ in range(sizes.channels)]
        opened.extend(chans)
        for ch in chans:
            grpc.channel_ready_future(ch).result(timeout=10)
        return [
            Client(addr, bearer, timeout=30.0, channel=chans[i % len(chans)]) for i in range(sizes.clients)
        ]

    yield make
    for ch in opened:
        ch.close()


def together(workers: int, work: Callable[[int], None], limit_s: float) -> float:
    """Run ``work(w)`` on ``workers`` threads released at once by a barrier; the seconds
    from release to the last one done. Fails the test if any is still running at ``limit_s``."""
    barrier = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def run(w: int) -> None:
        barrier.wait()
        try:
            work(w)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(timeout=max(0.0, limit_s - (time.perf_counter() - started)))
    if any(t.is_alive() for t in threads):
        pytest.fail(f"workers still running after {limit_s} s")
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def db_query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Straight in the database (``?`` placeholders), not through cardmint: what is stored."""
    return db_snapshot(url, sql, params=params)[0]


def db_snapshot(url: str, *sql: str, params: Sequence[object] = ()) -> list[list[tuple[Any, ...]]]:
    """``db_query`` of each of ``sql`` (the same ``params``), all read from one snapshot of
    the database: consistent with each other while servers keep writing."""
    if url.startswith("sqlite://"):
        with contextlib.closing(
            sqlite3.connect(url.removeprefix("sqlite://"), timeout=30, isolation_level=None)
        ) as conn:
            conn.execute("BEGIN")  # WAL: a read transaction sees one snapshot
            try:
                return [conn.execute(q, params).fetchall() for q in sql]
            finally:
                conn.execute("ROLLBACK")
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            return [conn.execute(q.replace("?", "%s"), params).fetchall() for q in sql]
        finally:
            conn.execute("ROLLBACK")
