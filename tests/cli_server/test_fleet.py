"""``cardmint serve --processes N``: several server processes on one database.

The fleet is started as a person starts it (the CLI, a subprocess), on SQLite and on
PostgreSQL: every process answers, each sees what the others wrote, money raced through
two processes at once is spent exactly, SIGTERM drains them all (exit 0); a process that
dies takes the fleet down (exit 1), and the processes of a parent that died stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cardmint.client import Client, InsufficientFunds, channel_target
from cardmint.server.config import ServeConfig, default_config
from cardmint.server.fleet import addresses, start_fleet

from .conftest import cli_env, wait_for_line

FLEET_LINE = r"2 server processes \(pids (\d+), (\d+)\); clients reach them all at (\S+)"


def _gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (not a zombie of ours: the fleet's parent reaps its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def _fleet(bindir: Path, work: Path, db_url: str | None = None) -> subprocess.Popen[str]:
    args = ["cardmint", "serve", "--processes", "2", "--listen", "127.0.0.1:0", "--log-format", "text"]
    if db_url is not None:
        args += ["--db", db_url]
    return subprocess.Popen(
        args, cwd=work, env=cli_env(bindir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _admin_token(bindir: Path, work: Path, db_url: str | None = None) -> str:
    args = ["cardmint", "token", "create", "--role", "admin"]
    if db_url is not None:
        args += ["--db", db_url]
    out = subprocess.run(
        args, cwd=work, env=cli_env(bindir), capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split()[-1]


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


def test_fleet_serves_one_database_from_every_process(bindir: Path, tmp_path: Path, storage_url: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    db = None if storage_url.startswith("sqlite") else storage_url  # SQLite: the default, under var/
    proc = _fleet(bindir, work, db)
    try:
        m = wait_for_line(proc, FLEET_LINE, timeout=120)
        pids, target = [int(m.group(1)), int(m.group(2))], m.group(3)
        addrs = target.split(",")
        assert len(set(addrs)) == 2 and all(a.startswith("127.0.0.1:") for a in addrs)
        token = _admin_token(bindir, work, db)
        first, second = Client(addrs[0], token), Client(addrs[1], token)
        # What one process writes, the other sees: a product and lot made through the first,
        # a card bound and spent through the second.
        first.create_product(sku="FLEET-1", name="fleet", currency="CNY", denominations=[200])
        lot = first.create_lot("FLEET-1", 10, 200)
        codes = list(first.stream_lot(lot.id))
        serial, code = codes[0]
        second.bind_card(code, account="alice")
        second.redeem(serial, 50, "CNY", request_id="fleet-r1")
        assert first.balance(serial=serial).balances[0].minor_units == 150
        # The same request id through the other process answers as the first time: once.
        again = first.redeem(serial, 50, "CNY", request_id="fleet-r1")
        assert again.replayed and again.balance_after.minor_units == 150
        assert first.balance(serial=serial).balances[0].minor_units == 150
        # A race through both processes at once spends exactly the balance.
        race_serial = codes[1][0]
        wins, refused, other = [0], [0], []
        lock = threading.Lock()
        go = threading.Barrier(16)

        def spend(t: int) -> None:
            c = first if t % 2 else second
            go.wait()
            for i in range(25):  # 16 x 25 = 400 attempts of 1 on a card of 200
                try:
                    c.redeem(race_serial, 1, "CNY", request_id=f"race-{t}-{i}")
                    with lock:
                        wins[0] += 1
                except InsufficientFunds:
                    with lock:
                        refused[0] += 1
                except Exception as e:
                    with lock:
                        other.append(repr(e))

        threads = [threading.Thread(target=spend, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert other == [] and wins[0] == 200 and refused[0] == 200
        assert first.balance(serial=race_serial).balances[0].minor_units == 0
        # One client naming both addresses reaches both processes (round robin).
        both = Client(target, token)
        for _ in range(8):
            assert both.balance(serial=serial).balances[0].minor_units == 150
        for c in (first, second, both):
            c.close()
    finally:
        rc = _stop(proc)
    assert rc == 0
    assert all(_gone(pid, 30) for pid in pids)


@contextmanager
def _started(bindir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A fleet of 2 on SQLite under ``tmp_path/work``, serving; (parent, children's pids)."""
    work = tmp_path / "work"
    work.mkdir()
    proc = _fleet(bindir, work)
    try:
        m = wait_for_line(proc, FLEET_LINE, timeout=120)
        yield proc, [int(m.group(1)), int(m.group(2))]
    finally:
        _stop(proc)


def test_a_dying_process_takes_the_fleet_down(bindir: Path, tmp_path: Path) -> None:
    with _started(bindir, tmp_path) as (proc, pids):
        os.kill(pids[0], signal.SIGKILL)
        rc = proc.wait(timeout=60)
    assert rc == 1  # for the supervisor to restart the fleet whole
    assert _gone(pids[1], 30)


def test_processes_stop_when_the_parent_is_killed(bindir: Path, tmp_path: Path) -> None:
    with _started(bindir, tmp_path) as (proc, pids):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert all(_gone(pid, 30) for pid in pids)  # each drained and exited on its own


def test_each_process_listens_on_the_next_port() -> None:
    assert addresses("127.0.0.1:50051", 3) == ["127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"]
    assert addresses("127.0.0.1:0", 2) == ["127.0.0.1:0", "127.0.0.1:0"]  # a free port each
    assert addresses("[::1]:7000", 2) == ["[::1]:7000", "[::1]:7001"]
    with pytest.raises(ValueError, match="past port 65535"):
        addresses("127.0.0.1:65535", 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        addresses("nowhere", 2)


@pytest.mark.parametrize("setting", ["listen", "metrics", "health_listen"])
def test_a_port_range_past_65535_fails_before_any_process_starts(tmp_path: Path, setting: str) -> None:
    defaults = default_config()
    values = dict(defaults.values)
    values.update(var=str(tmp_path / "var"), listen="127.0.0.1:0", processes=2)
    values[setting] = "127.0.0.1:65535"
    with pytest.raises(ValueError, match="past port 65535"):
        start_fleet(ServeConfig(values, dict(defaults.sources)))
    assert not (tmp_path / "var").exists()  # nothing prepared, nothing spawned


def test_a_client_spreads_calls_over_several_addresses() -> None:
    balanced = [("grpc.lb_policy_name", "round_robin")]
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert channel_target("localhost:50051") == ("localhost:50051", [])
    assert channel_target("127.0.0.1:1,127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", balanced)
    assert channel_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", balanced)
    assert channel_target("dns:shop.internal:50051,") == ("dns:shop.internal:50051,", balanced)
    with pytest.raises(ValueError, match="IP:PORT each"):
        channel_target("a.internal:1,b.internal:2")
    with pytest.raises(ValueError, match="IP:PORT each"):
        channel_target("127.0.0.1:1,[::1]:2")
