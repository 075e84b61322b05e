"""Two servers on one PostgreSQL (issue 5, "several server processes"): the redeem race
(item 1) and brute force (item 9) again, with every client channel spreading its calls
round-robin over two real ``cardmint serve`` processes; and the pool (item 5) over two
servers that share the test's clock (see the note above that test). Locks and rate limits
live in the database, so they must hold across processes exactly as within one.

Each server writes its access log (JSON) to a file; the counts per process show both
really served the attack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cardmint.client import Client
from cardmint.server.app import Running, open_domain, start
from cardmint.server.domain import DomainConfig

from tests.conftest import FakeClock

from . import test_brute_force as brute
from . import test_pool as pool
from . import test_races as races
from .conftest import Report, Sizes

pytestmark = pytest.mark.parametrize("backend", ["postgres"])

START_S = 60.0


@dataclass
class Pair:
    """Two ``cardmint serve`` processes on one database and one key directory."""

    ports: list[int]
    logs: list[Path]
    token: Callable[..., str]
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        # gRPC's ipv4 resolver takes a list of addresses; round_robin spreads calls over them.
        return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.target, options=[("grpc.lb_policy_name", "round_robin")])
        grpc.channel_ready_future(ch).result(timeout=10)
        self.channels.append(ch)
        return ch

    def client(
        self, bearer: str, device_id: str | None = None, channel: grpc.Channel | None = None
    ) -> Client:
        return Client(
            self.target, bearer, timeout=30.0, device_id=device_id, channel=channel or self.channel()
        )

    def served(self, method: str) -> list[int]:
        """Calls of ``method`` (e.g. ``BalanceService/Redeem``) each process logged."""
        want = f"/cardmint.v1.{method}"
        return [
            sum(
                1
                for line in log.read_text().splitlines()
                if line.startswith("{") and json.loads(line).get("method") == want
            )
            for log in self.logs
        ]


def _spawn(url: str, var: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardmint.cli", "serve", "--db", url, "--var", str(var),
         "--listen", "127.0.0.1:0", "--log-format", "json", "--workers", "32", "--grace", "5"],
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


@pytest.fixture
def pair(storage_url: str, tmp_path: Path) -> Iterator[Pair]:
    var = tmp_path / "var"
    procs: list[subprocess.Popen[bytes]] = []
    ports, logs = [], []
    # One after the other: the first creates the keys in var/, the second reads them.
    try:
        for i in range(2):
            logs.append(tmp_path / f"server{i}.log")
            proc, port = _spawn(storage_url, var, logs[-1])
            procs.append(proc)
            ports.append(port)
        storage, domain = open_domain(storage_url, var)  # for tokens only: same database, same keys
        try:

            def token(role: str = "admin", account: str | None = None) -> str:
                return domain.auth.create_token(role, account=account).token

            made = Pair(ports, logs, token)
            yield made
        finally:
            for ch in made.channels:
                ch.close()
            domain.close()
            storage.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _two(report: Report, pair: Pair, method: str) -> Report:
    def line(test_id: str, **figures: object) -> str:
        per = pair.served(method)
        return report(f"{test_id}-2-servers", **figures, served_per_process="/".join(map(str, per)))

    return line


def test_redeem_race_across_two_servers(pair: Pair, sizes: Sizes, seed: int, report: Report) -> None:
    """Item 1 with the clients' calls spread over two processes: exactly the balance is
    spent (the card row lock is the database's, not a process's)."""

    def clients(bearer: str) -> list[Client]:
        chans = [pair.channel() for _ in range(sizes.channels)]
        return [pair.client(bearer, channel=chans[i % len(chans)]) for i in range(sizes.clients)]

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


# -- item 5 on two servers -----------------------------------------------------------------
#
# The pool test drives time: reservations expire when it moves the clock. Two server
# processes cannot share a clock the test moves, so here the two servers run in this
# process, each its own server (its own gRPC port, thread pool, connection pool, domain,
# sweeper thread and caches) on the one database, both reading the test's clock. Locks
# and limits live in PostgreSQL, so a second process would change nothing they depend on.


@pytest.fixture
def pool_pair(storage_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[list[Running]]:
    config = DomainConfig(
        order_ttl_seconds=pool.TTL, held_codes_per_account=pool.CAP, order_sweep_seconds=0.2
    )
    running: list[Running] = []
    try:
        for _ in range(2):  # one var dir: the second server reads the keys the first made
            running.append(
                start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=32, config=config, clock=clock)
            )
        yield running
    finally:
        for r in running:
            r.stop(grace=0)


def test_pool_never_sells_twice_across_two_servers(
    pool_pair: list[Running],
    sizes: Sizes,
    seed: int,
    report: Report,
    storage_url: str,
    clock: FakeClock,
) -> None:
    """Item 5 with every client's calls spread round-robin over two servers, each with its
    own reservation sweeper: no code sold twice, the cap held, every late payment refunded."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in pool_pair)
    opened: list[grpc.Channel] = []

    def clients(bearer: str) -> list[Client]:
        chans = []
        for _ in range(sizes.channels):
            ch = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
            grpc.channel_ready_future(ch).result(timeout=10)
            chans.append(ch)
        opened.extend(chans)
        return [
            Client(target, bearer, timeout=30.0, channel=chans[i % len(chans)]) for i in range(sizes.clients)
        ]

    def token(role: str = "admin", account: str | None = None) -> str:
        return pool_pair[0].domain.auth.create_token(role, account=account).token

    def line(test_id: str, **figures: object) -> str:
        return report(f"{test_id}-2-servers", **figures)

    try:
        pool.test_pool_never_sells_twice(clients, token, sizes, seed, line, storage_url, clock)
    finally:
        for ch in opened:
            ch.close()
