"""I/O faults never half-apply (issue 5, item 8), on SQLite and on PostgreSQL.

SQLite: a real ``cardmint serve`` runs with the storage fault shim (faultfs.c, LD_PRELOAD):
while its control file says ``eio`` or ``enospc``, every write, truncate and fsync of the
database fails with that errno. PostgreSQL: the server's connections are killed in the
middle of their transactions (``pg_terminate_backend``), then the database refuses
connections (``ALLOW_CONNECTIONS false``) for a while.

Redeems keep coming from 4 threads meanwhile. Every call must either succeed (and be there
after the server is restarted on the same database) or fail with a clean
``STORAGE_UNAVAILABLE`` (UNAVAILABLE, never UNKNOWN or INTERNAL) and leave no trace. The one
exception no database can rule out is a commit cut off after it reached the disk and before
its answer (a fault between the WAL write and its fsync, a backend killed during COMMIT):
such a call is in doubt, and retried with its request id it must answer ``replayed`` with
the stored transaction, one effect either way; the line reports how many there were. gRPC
health must say NOT_SERVING while the storage fails and SERVING once it recovers; the
database opens clean, the audit chain verifies and every card's balance is its face value
plus its ledger.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import psycopg.sql
import pytest
from cardmint.client import CardmintError, Client
from cardmint.server.app import start
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cli_server.test_lot_kill import Server
from tests.conftest import PgServer

from . import faultfs
from .conftest import Report, Sizes, db_query
from .test_crash import CALL_TIMEOUT, SOAK_TIMEOUT, _client, _serving, _token

WAIT_S = 60.0  # bound on waiting for health to change (not asserted: a failure names it)
FACE = 10_000_000  # 100,000.00 CNY a card: the redeems never run a card dry


def _health(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def _await_health(addr: str, want: int) -> int:
    """Polls health until it answers ``want``; how many checks it took."""
    deadline = time.monotonic() + WAIT_S
    checks = 0
    while time.monotonic() < deadline:
        checks += 1
        if _health(addr) == want:
            return checks
        time.sleep(0.1)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(want)
    raise AssertionError(f"health never answered {name} within {WAIT_S:g} s")


@dataclass
class Outcomes:
    """Every redeem sent: what it answered."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: dict[str, int] = field(default_factory=dict)  # request id -> transaction id
    failed: dict[str, str] = field(default_factory=dict)  # request id -> code/reason
    codes: Counter[str] = field(default_factory=Counter)


def _redeemers(
    addr: str, token: str, cards: list[str], rng: random.Random, tag: str, seen: Outcomes
) -> tuple[threading.Event, list[threading.Thread]]:
    """4 threads redeeming at random until the returned event is set (bounded in count)."""
    stop = threading.Event()

    def load(w: int, mine: random.Random) -> None:
        with Client(addr, token, timeout=CALL_TIMEOUT, retries=0) as c:
            for i in range(5_000):
                if stop.is_set():
                    return
                rid = f"{tag}-{w}-{i}"
                try:
                    got = c.redeem(mine.choice(cards), mine.randint(1, 20), "CNY", request_id=rid)
                    with seen.lock:
                        seen.ok[rid] = got.transaction_id
                        seen.codes["OK"] += 1
                except CardmintError as e:
                    with seen.lock:
                        seen.failed[rid] = f"{e.code.name}/{e.reason}"
                        seen.codes[seen.failed[rid]] += 1
                time.sleep(0.002)

    threads = [
        threading.Thread(target=load, args=(w, random.Random(rng.random())), daemon=True) for w in range(4)
    ]
    for t in threads:
        t.start()
    return stop, threads


def _stop(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        t.join(timeout=2 * CALL_TIMEOUT)
    assert not any(t.is_alive() for t in threads)


def _verify(url: str, c: Client, seen: Outcomes) -> dict[str, object]:
    """After reopening: every success stored; no failure stored, unless in doubt, and then
    its retry answers the stored transaction as replayed; the audit chain and money."""
    stored = dict(db_query(url, "SELECT request_id, id FROM ledger_entries WHERE kind = 'redeem'"))
    missing = [r for r, t in seen.ok.items() if stored.get(r) != t]
    in_doubt = [r for r in seen.failed if r in stored]
    replayed = 0
    for rid in in_doubt:
        [(serial, amount)] = db_query(
            url,
            "SELECT c.serial, -e.amount FROM ledger_entries e JOIN cards c ON c.id = e.card_id"
            " WHERE e.request_id = ? AND e.kind = 'redeem'",
            rid,
        )
        again = c.redeem(serial, amount, "CNY", request_id=rid)
        replayed += again.replayed and again.transaction_id == stored[rid]
    audit = c.verify_audit()
    unbalanced = db_query(
        url,
        "SELECT c.serial FROM cards c WHERE c.balance < 0 OR c.balance <> c.face_value"
        " + COALESCE((SELECT SUM(e.amount) FROM ledger_entries e WHERE e.card_id = c.id"
        " AND e.kind IN ('redeem', 'reverse')), 0)",
    )
    unclean = {k: v for k, v in seen.codes.items() if k not in ("OK", "UNAVAILABLE/STORAGE_UNAVAILABLE")}
    assert not unclean, f"failures that were not a clean STORAGE_UNAVAILABLE: {unclean}"
    assert not missing, f"acknowledged redeems missing after reopening: {missing}"
    assert replayed == len(in_doubt), "a failed request left a trace that its retry does not answer"
    assert audit.ok, f"audit chain broken at {audit.first_bad}: {audit.problem}"
    assert not unbalanced, f"cards whose balance is not face value + ledger: {unbalanced[:10]}"
    assert seen.failed, "no call failed: the faults never reached the storage"
    return {
        "calls": len(seen.ok) + len(seen.failed),
        "succeeded": len(seen.ok),
        "failed_clean": seen.codes["UNAVAILABLE/STORAGE_UNAVAILABLE"],
        "failed_other": sum(unclean.values()),
        "succeeded_missing": len(missing),
        "failed_with_trace": len(in_doubt),
        "in_doubt_replayed": replayed,
        "audit_ok": audit.ok,
    }


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_sqlite_io_faults_never_half_apply(
    bindir: Path, tmp_path: Path, sizes: Sizes, seed: int, report: Report
) -> None:
    """EIO, then ENOSPC, on every write and fsync of the database file, under load."""
    rng = random.Random(seed)
    shim = faultfs.build(tmp_path)
    var, log, ctl = tmp_path / "var", tmp_path / "serve.log", tmp_path / "fault"
    db = tmp_path / "cardmint.db"
    url = f"sqlite://{db}"
    token = _token(bindir, url, var)
    with _serving(bindir, url, var, log) as server, _client(server, token) as c:
        c.create_product(sku="FAULT", name="Fault card", currency="CNY", amount_range=(100, FACE))
        lot = c.create_lot("FAULT", 64, FACE)
        cards = [s for s, _ in c.stream_lot(lot.id)]

    seen = Outcomes()
    faults = 0
    server = Server(
        bindir, url, var, log, env=faultfs.env(shim, str(db), ctl=ctl), args=("--health-probe", "0.2")
    )
    try:
        _await_health(server.addr, health_pb2.HealthCheckResponse.SERVING)
        stop, threads = _redeemers(server.addr, token, cards, rng, str(seed), seen)
        for fault in ("eio", "enospc") * sizes.fault_rounds:
            time.sleep(rng.uniform(0.2, 0.6))
            ctl.write_text(fault)  # lands wherever the writers are: mid-transaction too
            faults += 1
            _await_health(server.addr, health_pb2.HealthCheckResponse.NOT_SERVING)
            time.sleep(rng.uniform(0.1, 0.4))
            ctl.unlink()
            _await_health(server.addr, health_pb2.HealthCheckResponse.SERVING)
        time.sleep(0.3)
        _stop(stop, threads)
    finally:
        ctl.unlink(missing_ok=True)
        server.stop()

    assert db_query(url, "PRAGMA integrity_check") == [("ok",)]
    with _serving(bindir, url, var, log) as server, _client(server, token) as c:
        figures = _verify(url, c, seen)
    report("8-io-faults", backend="sqlite", faults=faults, not_serving_seen=faults, **figures)


def _terminate(admin_dsn: str, dbname: str) -> int:
    """pg_terminate_backend on every connection to ``dbname``: transactions die midway."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


def _allow(admin_dsn: str, dbname: str, allow: bool) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                psycopg.sql.Identifier(dbname), psycopg.sql.SQL("true" if allow else "false")
            )
        )


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_postgres_faults_never_half_apply(
    pg_server: PgServer, tmp_path: Path, sizes: Sizes, seed: int, report: Report
) -> None:
    """Connections killed mid-transaction, then the database refusing connections, under load."""
    rng = random.Random(seed)
    dbname = pg_server.create_database()
    url = pg_server.dsn_for(dbname)
    var = tmp_path / "var"
    seen = Outcomes()
    killed = 0
    try:
        running = start(url, "127.0.0.1:0", var, workers=16, health_probe_seconds=0.2)
        token = running.domain.auth.create_token("admin").token
        addr = f"127.0.0.1:{running.port}"
        try:
            with Client(addr, token, timeout=CALL_TIMEOUT, retries=0) as c:
                c.create_product(sku="PGFAULT", name="Fault card", currency="CNY", amount_range=(100, FACE))
                lot = c.create_lot("PGFAULT", 64, FACE)
                cards = [s for s, _ in c.stream_lot(lot.id)]
            _await_health(addr, health_pb2.HealthCheckResponse.SERVING)
            stop, threads = _redeemers(addr, token, cards, rng, str(seed), seen)
            for _ in range(sizes.fault_rounds):
                time.sleep(rng.uniform(0.2, 0.6))
                for _ in range(3):  # connections killed in the middle of transactions
                    killed += _terminate(pg_server.admin_dsn, dbname)
                    time.sleep(rng.uniform(0.1, 0.3))
                _allow(pg_server.admin_dsn, dbname, False)  # and the database refusing
                killed += _terminate(pg_server.admin_dsn, dbname)
                _await_health(addr, health_pb2.HealthCheckResponse.NOT_SERVING)
                _allow(pg_server.admin_dsn, dbname, True)
                _await_health(addr, health_pb2.HealthCheckResponse.SERVING)
            time.sleep(0.3)
            _stop(stop, threads)
        finally:
            _allow(pg_server.admin_dsn, dbname, True)
            running.stop(grace=0)
        running = start(url, "127.0.0.1:0", var, workers=4, health_probe_seconds=0)
        try:
            with Client(f"127.0.0.1:{running.port}", token, timeout=CALL_TIMEOUT, retries=0) as c:
                figures = _verify(url, c, seen)
        finally:
            running.stop(grace=0)
    finally:
        pg_server.drop_database(dbname)
    report(
        "8-io-faults",
        backend="postgres",
        rounds=sizes.fault_rounds,
        backends_killed=killed,
        not_serving_seen=sizes.fault_rounds,
        **figures,
    )
