"""The card shop (OrderService) against the bare grpcio echo server, in the same run.

Two figures per backend:

* **order round trip**: CreateOrder (one code, reserved from the pool) then ConfirmPayment
  (delivers it), by many concurrent clients acting as a storefront for one buyer each. In
  the group, the ``echo`` entry is the baseline measured with the same client layout;
  ``extra_info`` holds round trips/s, calls/s (two per round trip) and both ratios to echo.
* **order race**: 200 buyers (full size) buy one code at a time from a pool of 1,000 until it
  is sold out: every code delivered exactly once, every buyer ending on a clean SoldOut.

    make bench                                                         # full size
    CARDMINT_BENCH_SIZE=tiny pytest benches/test_orders_bench.py --benchmark-disable
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TypeVar, cast

import pytest
from cardmint.cli.bench_server import (
    ORDERS_FULL,
    ORDERS_TINY,
    Load,
    ServerSizes,
    cardmint_server,
    echo_server,
    measure_echo,
    measure_order_race,
    measure_orders,
    stock_pool,
)
from pytest_benchmark.fixture import BenchmarkFixture

from tests.conftest import PgServer, pg_server

__all__ = ["pg_server"]  # the session's throwaway PostgreSQL, shared with tests/server

SIZES = ORDERS_TINY if os.environ.get("CARDMINT_BENCH_SIZE") == "tiny" else ORDERS_FULL
GROUP = f"order round trip ({SIZES.threads} clients) vs echo"
_ids = itertools.count()
T = TypeVar("T")
ECHO: dict[str, float] = {}  # calls/s of the echo baseline, for the ratios


@dataclass
class Server:
    addr: str
    token: str


@pytest.fixture(scope="module")
def server_for(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Server]]:
    """``server_for("sqlite"|"postgres")``: one started server per backend for the module."""
    started: dict[str, Server] = {}
    with ExitStack() as stack:

        def get(backend: str) -> Server:
            if backend not in started:
                tmp = tmp_path_factory.mktemp(f"orders-{backend}")
                if backend == "sqlite":
                    url = f"sqlite://{tmp / 'cardmint.db'}"
                else:
                    pg: PgServer = request.getfixturevalue("pg_server")
                    name = pg.create_database()
                    stack.callback(pg.drop_database, name)
                    url = pg.dsn_for(name)
                addr, token = stack.enter_context(cardmint_server(url, tmp / "var"))
                started[backend] = Server(addr, token)
            return started[backend]

        yield get


def _once(benchmark: BenchmarkFixture, fn: Callable[..., T], *args: object) -> T:
    """One timed round: every round trip sells codes for good."""
    return cast(T, benchmark.pedantic(fn, args=args, rounds=1, iterations=1))  # type: ignore[no-untyped-call]


def _record(benchmark: BenchmarkFixture, load: Load, calls_per_item: int) -> None:
    calls = load.rate * calls_per_item
    benchmark.extra_info.update(
        done=load.done,
        failed=load.errors,
        seconds=round(load.seconds, 4),
        per_s=round(load.rate, 1),
        calls_per_s=round(calls, 1),
        p50_ms=round(load.p50_ms, 3),
        p99_ms=round(load.p99_ms, 3),
        clients=SIZES.threads,
        channels=SIZES.channels,
    )
    if "echo" in ECHO and calls_per_item == 2:
        benchmark.extra_info.update(
            calls_vs_echo=round(calls / ECHO["echo"], 3),
            round_trips_vs_echo=round(load.rate / ECHO["echo"], 3),
        )


def test_echo_baseline(benchmark: BenchmarkFixture) -> None:
    benchmark.group = GROUP
    layout = ServerSizes(2 * SIZES.round_trips, SIZES.threads, SIZES.channels, 0, 0, 0, 0, SIZES.limit_s, 1)
    with echo_server() as addr:
        load = _once(benchmark, measure_echo, addr, layout)
    ECHO["echo"] = load.rate
    _record(benchmark, load, 1)
    assert load.done == layout.calls and load.errors == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_order_round_trip(
    benchmark: BenchmarkFixture, server_for: Callable[[str], Server], backend: str
) -> None:
    benchmark.group = GROUP
    s = server_for(backend)
    tag = f"rt{os.getpid()}-{next(_ids)}"
    sku = f"SHOP-{tag}"
    stock_pool(s.addr, s.token, sku, SIZES.round_trips)
    load = _once(benchmark, measure_orders, s.addr, s.token, SIZES, sku, tag)
    _record(benchmark, load, 2)
    benchmark.extra_info["backend"] = backend
    assert load.done == SIZES.round_trips and load.errors == 0


@pytest.mark.benchmark(group="order race")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_order_race(benchmark: BenchmarkFixture, server_for: Callable[[str], Server], backend: str) -> None:
    s = server_for(backend)
    tag = f"race{os.getpid()}-{next(_ids)}"
    race = _once(
        benchmark,
        measure_order_race,
        s.addr,
        s.token,
        SIZES.buyers,
        SIZES.pool,
        f"RACE-{tag}",
        tag,
        500,
        SIZES.limit_s,
    )
    benchmark.extra_info.update(
        backend=backend,
        buyers=race.buyers,
        pool=race.pool,
        delivered=race.delivered,
        distinct=race.distinct,
        sold_out=race.sold_out,
        other_endings=race.other,
        seconds=round(race.seconds, 3),
    )
    # A correctness figure, not a timing: the pool sold exactly once, everyone else sold out.
    assert race.exact, race
