"""Two servers on one PostgreSQL (issue 5, "several server processes"): the redeem race
(item 1), brute force (item 9) and the pool (item 5) again, with every client channel
spreading its calls round-robin over two real ``cardmint serve`` processes. Locks, rate
limits and reservations live in the database, so they must hold across processes exactly
as within one. The pool's reservations expire in real (short) time, each process sweeping
them with its own background sweeper.

Each server writes its access log (JSON) to a file; the counts per process show both
really served the attack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cardmint.client import Client
from cardmint.server.app import open_domain

from . import test_brute_force as brute
from . import test_pool as pool
from . import test_races as races
from .conftest import OWN_CONNECTION, Report, Sizes, db_query

pytestmark = pytest.mark.parametrize("backend", ["postgres"])

START_S = 60.0


@dataclass
class Pair:
    """Two ``cardmint serve`` processes on one database and one key directory."""

    ports: list[int]
    logs: list[Path]
    token: Callable[..., str]
    procs: list[subprocess.Popen[bytes]]
    channels: list[grpc.Channel] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM both and wait: their in-flight calls and sweeps done, their logs complete."""
        _stop(self.procs)

    @property
    def target(self) -> str:
        # gRPC's ipv4 resolver takes a list of addresses; round_robin spreads calls over them.
        return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def channel(self, process: int | None = None) -> grpc.Channel:
        """A channel spreading its calls round-robin over both processes, or to one only;
        with connections of its own (not grpc's global subchannel pool, shared by channels)."""
        ch = (
            grpc.insecure_channel(
                self.target, options=[("grpc.lb_policy_name", "round_robin"), OWN_CONNECTION]
            )
            if process is None
            else grpc.insecure_channel(f"127.0.0.1:{self.ports[process]}", options=[OWN_CONNECTION])
        )
        grpc.channel_ready_future(ch).result(timeout=10)
        self.channels.append(ch)
        return ch

    def client(
        self, bearer: str, device_id: str | None = None, channel: grpc.Channel | None = None
    ) -> Client:
        return Client(
            self.target, bearer, timeout=30.0, device_id=device_id, channel=channel or self.channel()
        )

    def clients(self, bearer: str, sizes: Sizes) -> list[Client]:
        """``sizes.clients`` clients over ``sizes.channels`` round-robin channels."""
        chans = [self.channel() for _ in range(sizes.channels)]
        return [self.client(bearer, channel=chans[i % len(chans)]) for i in range(sizes.clients)]

    def records(self) -> list[list[dict[str, Any]]]:
        """Each process's log records (its access log and its other log lines)."""
        return [
            [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            for log in self.logs
        ]

    def served(self, *methods: str) -> list[int]:
        """Calls of ``methods`` (e.g. ``BalanceService/Redeem``) each process logged."""
        want = {f"/cardmint.v1.{m}" for m in methods}
        return [sum(1 for r in records if r.get("method") in want) for records in self.records()]


def _spawn(url: str, var: Path, log: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardmint.cli", "serve", "--db", url, "--var", str(var),
         "--listen", "127.0.0.1:0", "--log-format", "json", "--workers", "32", "--grace", "5", *flags],
        stderr=out, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    out.close()
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if "serving on 127.0.0.1:" in line:
                port = line.split("serving on 127.0.0.1:", 1)[1].split(" ", 1)[0]
                return proc, int(port)
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    pytest.fail(f"server did not start: {log.read_text()[-2000:]}")


@contextmanager
def _pair(storage_url: str, tmp_path: Path, *flags: str) -> Iterator[Pair]:
    """Two ``cardmint serve`` processes started with ``flags``; stopped on leaving."""
    var = tmp_path / "var"
    procs: list[subprocess.Popen[bytes]] = []
    ports, logs = [], []
    # One after the other: the first creates the keys in var/, the second reads them.
    try:
        for i in range(2):
            logs.append(tmp_path / f"server{i}.log")
            proc, port = _spawn(storage_url, var, logs[-1], *flags)
            procs.append(proc)
            ports.append(port)
        storage, domain = open_domain(storage_url, var)  # for tokens only: same database, same keys
        try:

            def token(role: str = "admin", account: str | None = None) -> str:
                return domain.auth.create_token(role, account=account).token

            made = Pair(ports, logs, token, procs)
            yield made
        finally:
            for ch in made.channels:
                ch.close()
            domain.close()
            storage.close()
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()  # nothing if it has exited
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def pair(storage_url: str, tmp_path: Path) -> Iterator[Pair]:
    with _pair(storage_url, tmp_path) as made:
        yield made


def _two(report: Report, pair: Pair, method: str) -> Report:
    def line(test_id: str, **figures: object) -> str:
        per = pair.served(method)
        return report(f"{test_id}-2-servers", **figures, served_per_process="/".join(map(str, per)))

    return line


def test_redeem_race_across_two_servers(pair: Pair, sizes: Sizes, seed: int, report: Report) -> None:
    """Item 1 with the clients' calls spread over two processes: exactly the balance is
    spent (the card row lock is the database's, not a process's)."""

    def clients(bearer: str) -> list[Client]:
        return pair.clients(bearer, sizes)

    races.test_redeem_race(clients, pair.token, sizes, seed, _two(report, pair, "BalanceService/Redeem"))
    per = pair.served("BalanceService/Redeem")
    attempts = sizes.race_attempts // sizes.clients * sizes.clients
    assert min(per) > 0 and sum(per) == attempts  # both served, every attempt logged once


def test_brute_force_across_two_servers(pair: Pair, sizes: Sizes, seed: int, report: Report) -> None:
    """Item 9 with every guesser's calls spread over two processes: the per-card,
    per-account and per-address limits are counted in the database, so they hold."""
    brute.brute_force(pair.client, pair.token, sizes, seed, _two(report, pair, "CardService/BindCard"))
    per = pair.served("CardService/BindCard")
    assert min(per) > 0  # both processes judged guesses


# -- item 5 on two server processes --------------------------------------------------------
#
# The pool's rounds (test_pool.py) with reservations that expire in real time: both
# processes start with a short order TTL and a fast background sweeper, so each round's
# abandoned reservations are given back by whichever process's sweeper reaches them first,
# racing the late payments coming in through both (no staff sweep: every abandoned
# reservation is left to the background sweepers).
# The two copies of every payment notification, and the payment and the cancel of a raced
# order, each reach a different process.

SWEEP_S = 0.25  # the background sweepers' period


@dataclass
class WallClock:
    """Real time, as both processes read it (the same machine's clock)."""

    url: str
    limit_s: float
    exact = False

    def now(self) -> datetime:
        return datetime.now(UTC)

    def _until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.limit_s
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {self.limit_s} s: {what}")
            time.sleep(0.05)

    def pass_deadlines(self) -> None:
        [(last,)] = db_query(self.url, "SELECT MAX(expires_at) FROM orders")
        self._until(lambda: self.now() > last, "every reservation past its deadline")

    def settle(self, admin: Client) -> None:
        # Nothing else is asked of the servers here: the background sweepers must do it.
        self._until(
            lambda: db_query(self.url, "SELECT COUNT(*) FROM orders WHERE status = 'reserved'") == [(0,)],
            "the sweepers expired every reservation past its deadline",
        )


@pytest.fixture
def pool_pair(storage_url: str, tmp_path: Path, sizes: Sizes) -> Iterator[Pair]:
    flags = {
        "order-ttl-seconds": sizes.pool2_ttl,
        "order-sweep-seconds": SWEEP_S,
        "held-codes-per-account": pool.CAP,
    }
    with _pair(storage_url, tmp_path, *(x for k, v in flags.items() for x in (f"--{k}", str(v)))) as made:
        yield made


def _swept(pair: Pair) -> list[int]:
    """Reservations each process's background sweeper expired (from its log)."""
    prefix = "order sweep: "
    return [
        sum(
            int(r["msg"][len(prefix) :].split(" ", 1)[0])
            for r in records
            if r.get("msg", "").startswith(prefix)
        )
        for records in pair.records()
    ]


@pytest.mark.timeout(3600)  # soak sizes take longer than pytest-timeout's 300 s
def test_pool_never_sells_twice_across_two_processes(
    pool_pair: Pair, sizes: Sizes, seed: int, report: Report, storage_url: str
) -> None:
    """Item 5 over two processes, each with its own reservation sweeper, in real time: no
    code sold twice, none delivered past its deadline, every late payment refunded once,
    the cap held at every moment, both processes serving and sweeping."""
    methods = ("OrderService/CreateOrder", "OrderService/ConfirmPayment", "OrderService/CancelOrder")

    def line(test_id: str, **figures: object) -> str:
        # The figures come after the last call: stop both processes first, so that every
        # sweep they made is in their logs.
        pool_pair.stop()
        served = pool_pair.served(*methods)
        return report(
            f"{test_id}-2-processes",
            **figures,
            ttl_s=sizes.pool2_ttl,
            swept_per_process="/".join(map(str, _swept(pool_pair))),
            served_per_process="/".join(map(str, served)),
        )

    figures = pool.never_sells_twice(
        lambda bearer: pool_pair.clients(bearer, sizes),
        pool_pair.token,
        line,
        storage_url,
        WallClock(storage_url, sizes.limit_s),
        seed=seed,
        limit_s=sizes.limit_s,
        codes=sizes.pool2_codes,
        orders=sizes.pool2_orders,
        rounds=sizes.pool2_rounds,
        senders=lambda bearer: [pool_pair.client(bearer, channel=pool_pair.channel(p)) for p in (0, 1)],
        staff_sweeps=0,
    )
    swept = _swept(pool_pair)
    # Every reservation given back was given back once, by a process's sweeper (some were
    # paid late afterwards: refunded now).
    expiries = db_query(
        storage_url,
        "SELECT subject, actor FROM audit_log WHERE action = 'order.expire'"
        " UNION ALL SELECT subject, actor FROM audit_pending WHERE action = 'order.expire'",
    )
    assert len({s for s, _ in expiries}) == len(expiries) == sum(swept) >= figures["expired"] > 0
    assert {a for _, a in expiries} == {"sweeper"}
    for method in methods:
        assert min(pool_pair.served(method)) > 0, f"a process served no {method}"
