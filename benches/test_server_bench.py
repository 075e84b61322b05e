"""The gRPC server against a bare grpcio echo server, measured in the same run.

One group per operation; in each unary group the ``echo`` entry is the baseline (a trivial
bytes-in/bytes-out method on a plain ``grpc.server``, same client threads and channels), so
the ratio between entries is what to read. Rates, p50 and p99 are in ``extra_info``.

    make bench                                                   # 64 clients, 10^6-code lots
    CARDMINT_BENCH_SIZE=tiny pytest benches --benchmark-disable  # what `make test` runs

SQLite always; PostgreSQL (the throwaway cluster of tests/conftest.py) for the lot
and redeem rows when its binaries or ``CARDMINT_TEST_PG_DSN`` are there. `cardmint bench
--server` prints the same operations as one table with the targets.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import pytest
from cardmint.cli.bench_server import (
    FULL,
    TINY,
    Load,
    cardmint_server,
    echo_server,
    fill_issued,
    make_lot,
    measure_check,
    measure_echo,
    measure_race,
    run_concurrent,
)
from cardmint.client import Client
from pytest_benchmark.fixture import BenchmarkFixture

from tests.conftest import PgServer, pg_server

__all__ = ["pg_server"]  # the throwaway PostgreSQL cluster of tests/conftest.py

SIZES = TINY if os.environ.get("CARDMINT_BENCH_SIZE") == "tiny" else FULL
_ids = itertools.count()
T = TypeVar("T")


def _pg_available() -> bool:
    if os.environ.get("CARDMINT_TEST_PG_DSN"):
        return True
    override = os.environ.get("CARDMINT_PG_BIN")
    if override:
        return (Path(override) / "initdb").is_file()
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@dataclass
class Server:
    addr: str
    token: str
    sku: str
    rows: Sequence[tuple[str, str]]  # (serial, code) of a lot big enough for the unary rows


@pytest.fixture(scope="module")
def server_for(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Server]]:
    """``server_for("sqlite"|"postgres")``: one started server per backend for the module,
    with a product and a lot; all stopped (and the PostgreSQL database dropped) at the end."""
    started: dict[str, Server] = {}
    with ExitStack() as stack:

        def get(backend: str) -> Server:
            if backend in started:
                return started[backend]
            tmp = tmp_path_factory.mktemp(f"bench-{backend}")
            if backend == "sqlite":
                url = f"sqlite://{tmp / 'cardmint.db'}"
            else:
                if not _pg_available():
                    # make test installs PostgreSQL; a PostgreSQL row that cannot run is a failure.
                    pytest.fail(
                        "no PostgreSQL binaries and no CARDMINT_TEST_PG_DSN (apt-get install postgresql)"
                    )
                pg: PgServer = request.getfixturevalue("pg_server")
                name = pg.create_database()
                stack.callback(pg.drop_database, name)
                url = pg.dsn_for(name)
            addr, token = stack.enter_context(cardmint_server(url, tmp / "var"))
            sku = f"BENCH-{backend}"
            rows, _ = make_lot(addr, token, sku, SIZES.threads + 2 * SIZES.calls)
            started[backend] = Server(addr, token, sku, rows)
            return started[backend]

        yield get


@pytest.fixture(scope="module")
def echo_addr() -> Iterator[str]:
    with echo_server() as addr:
        yield addr


def _once(benchmark: BenchmarkFixture, fn: Callable[..., T], *args: object) -> T:
    """One timed round: every call changes the database (binds, redeems, lots)."""
    return cast(T, benchmark.pedantic(fn, args=args, rounds=1, iterations=1))  # type: ignore[no-untyped-call]


def _record(benchmark: BenchmarkFixture, load: Load) -> None:
    benchmark.extra_info.update(
        calls=load.done,
        refused=load.errors,
        seconds=round(load.seconds, 4),
        calls_per_s=round(load.rate, 1),
        p50_ms=round(load.p50_ms, 3),
        p99_ms=round(load.p99_ms, 3),
        clients=SIZES.threads,
        channels=SIZES.channels,
    )


UNARY = [
    ("GetBalance", "sqlite"),
    ("Redeem", "sqlite"),
    ("Redeem", "postgres"),
    ("BindCard", "sqlite"),
]


@pytest.mark.parametrize("op", ["GetBalance", "Redeem", "BindCard"])
def test_echo_baseline(benchmark: BenchmarkFixture, echo_addr: str, op: str) -> None:
    benchmark.group = f"{op} ({SIZES.threads} clients) vs echo"
    load = _once(benchmark, measure_echo, echo_addr, SIZES)
    _record(benchmark, load)
    assert load.done == SIZES.calls and load.errors == 0


@pytest.mark.parametrize(("op", "backend"), UNARY)
def test_unary(
    benchmark: BenchmarkFixture, server_for: Callable[[str], Server], op: str, backend: str
) -> None:
    benchmark.group = f"{op} ({SIZES.threads} clients) vs echo"
    s = server_for(backend)
    tag = f"u{os.getpid()}-{next(_ids)}"
    clients = [Client(s.addr, s.token, timeout=30.0) for _ in range(SIZES.channels)]
    try:
        mine = [clients[t % len(clients)] for t in range(SIZES.threads)]
        own = [s.rows[t][0] for t in range(SIZES.threads)]
        fresh = s.rows[SIZES.threads + (SIZES.calls if op == "BindCard" else 0) :]
        calls: dict[str, Callable[[int, int], object]] = {
            "GetBalance": lambda t, i: mine[t].balance(serial=own[t]),
            "Redeem": lambda t, i: mine[t].redeem(own[t], 1, "CNY", request_id=f"{tag}-{i}"),
            "BindCard": lambda t, i: mine[t].bind_card(fresh[i][1], account=f"{tag}-{i}"),
        }
        mine[0].balance(serial=own[0])  # warm up the channel
        load = _once(benchmark, run_concurrent, calls[op], SIZES.calls, SIZES.threads, SIZES.limit_s)
    finally:
        for c in clients:
            c.close()
    _record(benchmark, load)
    benchmark.extra_info["backend"] = backend
    assert load.done == SIZES.calls and load.errors == 0


@pytest.mark.benchmark(group="bulk Check (codes)")
def test_bulk_check(benchmark: BenchmarkFixture, server_for: Callable[[str], Server]) -> None:
    s = server_for("sqlite")
    n = SIZES.check
    # The target is against 10^7 issued codes: mint (not export) lots up to SIZES.issued.
    issued, _ = fill_issued(s.addr, s.token, s.sku, len(s.rows), SIZES.issued, SIZES.lot)
    secs, answered, found = _once(benchmark, measure_check, s.addr, s.token, s.rows, n)
    benchmark.extra_info.update(
        codes=answered, issued=issued, found_ok=found, codes_per_s=round(answered / secs, 1)
    )
    assert answered == n and found == n // 2


@pytest.mark.benchmark(group="lot create+export")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_lot(benchmark: BenchmarkFixture, server_for: Callable[[str], Server], backend: str) -> None:
    s = server_for(backend)
    n = SIZES.lot
    rows, secs = _once(benchmark, make_lot, s.addr, s.token, s.sku, n)
    benchmark.extra_info.update(codes=len(rows), seconds=round(secs, 3), codes_per_s=round(n / secs, 1))
    assert len(rows) == n and len({code for _, code in rows}) == n


@pytest.mark.benchmark(group="redeem race")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_redeem_race(benchmark: BenchmarkFixture, server_for: Callable[[str], Server], backend: str) -> None:
    s = server_for(backend)
    tag = f"race{os.getpid()}-{next(_ids)}"
    race = _once(benchmark, measure_race, s.addr, s.token, SIZES, s.sku, tag)
    benchmark.extra_info.update(
        attempts=race.attempts,
        succeeded=race.succeeded,
        refused=race.refused,
        other_errors=race.other,
        face=race.face,
        balance_after=race.balance_after,
    )
    # A correctness figure, not a timing: exactly the card's balance is spent.
    assert race.exact, race
