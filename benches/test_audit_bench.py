"""Verifying the audit chain: the kernel alone, and a stored chain end to end.

* **audit verify kernel**: ``verify_audit`` over 10^6 events held in memory (10^5 for the
  Python reference), per backend.
* **audit verify stored**: ``verify_storage`` over a chain of 10^6 events in SQLite and in
  PostgreSQL: the database read (packed columns, a page at a time) and the check together,
  what ``cardmint audit verify`` does. The chain is bulk-inserted, hashed beforehand.

``extra_info["events_per_s"]`` holds the rate of the fastest round.

    make bench                                                         # full size
    CARDMINT_BENCH_SIZE=tiny pytest benches/test_audit_bench.py --benchmark-disable
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from cardmint.kernel import Kernel, Packed
from cardmint.server.domain.audit import verify_storage
from cardmint.server.storage import Storage, audit_hash_us, open_storage
from pytest_benchmark.fixture import BenchmarkFixture

from tests.conftest import PgServer, pg_server

from .conftest import TINY, size

__all__ = ["pg_server"]  # the session's throwaway PostgreSQL, shared with tests/server

STORED = 1_000 if TINY else 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def chain(n: int) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """``n`` chained events as rows (id, at_us, actor, action, subject, detail, prev, hash)
    and as the kernel's columns (ids, at_us, fields, prev_hashes, hashes)."""
    rows, head = [], bytes(32)
    fields: list[bytes] = []
    for i in range(1, n + 1):
        at_us = 1_764_000_000_000_000 + 137 * i
        actor, action = f"token:{i % 11}", ("card.bind", "card.redeem", "lot.mint")[i % 3]
        subject, detail = f"card:{i * 7919 % 1_000_003}", f'{{"amount":{i % 5000},"currency":"EUR"}}'
        digest = audit_hash_us(head, i, at_us, actor, action, subject, detail)
        rows.append((i, at_us, actor, action, subject, detail, head, digest))
        fields += (actor.encode(), action.encode(), subject.encode(), detail.encode())
        head = digest
    offsets = np.zeros(len(fields) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in fields], out=offsets[1:])
    cols = (
        np.arange(1, n + 1, dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        Packed(b"".join(fields), offsets),
        b"".join(r[6] for r in rows),
        b"".join(r[7] for r in rows),
    )
    return rows, cols


def fill(storage: Storage, backend: str, rows: list[tuple[Any, ...]]) -> None:
    """Bulk-insert a chain (executemany on SQLite, COPY on PostgreSQL)."""
    with storage.transaction() as tx:
        if backend == "sqlite":
            tx._executemany(  # type: ignore[attr-defined]
                "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return
        sql = "COPY audit_log (id, at, actor, action, subject, detail, prev_hash, hash) FROM STDIN"
        with tx._conn.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[attr-defined]
            for r in rows:
                copy.write_row((r[0], _EPOCH + timedelta(microseconds=r[1]), *r[2:]))


def settle(url: str) -> None:
    """VACUUM ANALYZE a freshly loaded PostgreSQL table, as autovacuum does to a long-lived
    one: the first reads after a bulk load otherwise also write every row's hint bits."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_log")


@pytest.fixture(scope="module")
def stored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Storage]]:
    """``stored("sqlite"|"postgres")``: a storage holding the ``STORED``-event chain."""
    opened: dict[str, Storage] = {}
    drops: list[Callable[[], None]] = []
    rows, _ = chain(STORED)

    def get(backend: str) -> Storage:
        if backend not in opened:
            if backend == "sqlite":
                url = f"sqlite://{tmp_path_factory.mktemp('audit') / 'cardmint.db'}"
            else:
                pg: PgServer = request.getfixturevalue("pg_server")
                name = pg.create_database()
                drops.append(functools.partial(pg.drop_database, name))
                url = pg.dsn_for(name)
            opened[backend] = storage = open_storage(url)
            fill(storage, backend, rows)
            if backend == "postgres":
                settle(url)
        return opened[backend]

    yield get
    for storage in opened.values():
        storage.close()
    for drop in drops:
        drop()


def _timed(fn: Callable[[], Any], best: list[float]) -> Callable[[], Any]:
    def run() -> Any:
        started = time.perf_counter()
        out = fn()
        best.append(time.perf_counter() - started)
        return out

    return run


@pytest.mark.benchmark(group="audit verify kernel")
def test_verify_kernel(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel)
    rows, cols = chain(n)
    times: list[float] = []
    res = benchmark.pedantic(_timed(lambda: kernel.verify_audit(*cols), times), rounds=3, iterations=1)
    assert res.ok and res.checked == n and res.head == rows[-1][7]
    benchmark.extra_info["events"] = n
    benchmark.extra_info["events_per_s"] = round(n / min(times))


@pytest.mark.benchmark(group="audit verify stored")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_verify_stored(benchmark: BenchmarkFixture, stored: Callable[[str], Storage], backend: str) -> None:
    storage = stored(backend)
    rows, _ = chain(STORED)
    times: list[float] = []
    verdict = benchmark.pedantic(_timed(lambda: verify_storage(storage), times), rounds=3, iterations=1)
    assert verdict.ok and verdict.events == STORED and verdict.head_hash == rows[-1][7]
    benchmark.extra_info["events"] = STORED
    benchmark.extra_info["events_per_s"] = round(STORED / min(times))
    if os.environ.get("CARDMINT_BENCH_PRINT"):
        print(f"\n{backend}: {STORED / min(times):,.0f} events/s")
