"""A lot is all there or not there, even when the server is killed midway: ``kill -9``.

``cardmint serve`` runs as a subprocess on SQLite and on PostgreSQL. The test starts a
CreateLot big enough to take a while, sends SIGKILL to the server as soon as the progress
stream shows half the lot stored, restarts the server on the same database and keys,
and checks through the API and straight in the database that nothing of the lot exists
(the lot row is left ``minting`` with no cards, or voided by a recovery sweep, never
complete), then that the same lot minted again is whole.

Nothing is seeded: the codes come from the server's CSPRNG and the ports are ephemeral. The
test prints (and adds to the "storage figures" summary) where the kill landed and the timings.

The storage-level version (a bare fill transaction killed) is in
tests/server/test_storage_lots.py; this one goes through everything the server does.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cardmint.kernel as kernel
import psycopg
import pytest
from cardmint.client import CardmintError, Client, LotNotReady, LotVoid
from cardmint.v1 import lot_pb2

from tests.cli_server.conftest import CLI_TIMEOUT, cli_env
from tests.conftest import TIMINGS

COUNT = 200_000  # four of the server's 65,536-code chunks: a kill lands with the lot part-way
FACE = 500
START_TIMEOUT = 60.0  # s for `cardmint serve` to print its port
STOP_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
MINT_TIMEOUT = 120.0  # s for one CreateLot (the killed one or the repeat)

NOT_DONE = (lot_pb2.LOT_STATUS_MINTING, lot_pb2.LOT_STATUS_VOID)


class Server:
    """``cardmint serve --db URL --listen 127.0.0.1:0`` as a subprocess; stderr goes to ``log``.

    A file, not a pipe: nobody drains a pipe while the test runs, and a full one would block
    the server. Each start appends to the log, and reads only what it appended.
    """

    def __init__(
        self,
        bindir: Path,
        url: str,
        var: Path,
        log: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        """``env``, ``args``: extra environment variables and options for the server
        (tests/reliability: the fault shim, a faster health probe); ``start_timeout``: how
        long to wait for it to listen (a database of millions of cards takes longer)."""
        self._start_timeout = start_timeout
        self.log = log
        self._from = log.stat().st_size if log.exists() else 0
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                ["cardmint", "serve", "--db", url, "--var", str(var), "--listen", "127.0.0.1:0", "--grace", "0", *args],
                cwd=var.parent, env={**cli_env(bindir), **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip
        self.port = self._wait_for_port()
        self.addr = f"127.0.0.1:{self.port}"

    def output(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self._from)
            return f.read().decode(errors="replace")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            m = re.search(r"serving on 127\.0\.0\.1:(\d+)", self.output())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"cardmint serve did not start within {self._start_timeout:g} s:\n{self.output()}"
        )

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def serving(bindir: Path, url: str, var: Path, log: Path) -> Iterator[Server]:
    server = Server(bindir, url, var, log)
    try:
        yield server
    finally:
        server.stop()


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Straight in the database, not through cardmint: what is really stored."""
    if url.startswith("sqlite://"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite://"), timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        return conn.execute(sql.replace("?", "%s"), params).fetchall()


def test_lot_killed_midway_is_not_there(bindir: Path, storage_url: str, backend: str, tmp_path: Path) -> None:
    t_start = time.monotonic()
    var, log = tmp_path / "var", tmp_path / "serve.log"
    env = cli_env(bindir)
    made = subprocess.run(
        ["cardmint", "token", "create", "--role", "admin", "--db", storage_url, "--var", str(var)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    sku = f"KILL-{backend.upper()}"

    # 1. Mint, and SIGKILL the server once the progress stream shows half the lot stored
    # (inside the fill's transaction, which commits with the last chunk).
    seen: list[tuple[int, int]] = []
    killed_at: list[int] = []
    with serving(bindir, storage_url, var, log) as first:
        t_up = time.monotonic()
        with Client(first.addr, token, timeout=CALL_TIMEOUT, bulk_timeout=MINT_TIMEOUT, retries=0) as c:
            c.create_product(sku=sku, name="Kill -9 test card", currency="CNY", denominations=(FACE,))

            def progress(done: int, total: int) -> None:
                seen.append((done, total))
                if not killed_at and COUNT <= 2 * done < 2 * total:
                    first.kill9()
                    killed_at.append(done)

            t_mint = time.monotonic()
            try:
                lot = c.create_lot(sku, COUNT, FACE, progress=progress)
            except CardmintError as e:  # the connection dies with the server (UNAVAILABLE)
                died_with = type(e).__name__
            else:
                pytest.fail(
                    f"the server finished lot {lot.id} before SIGKILL landed (progress {seen}): "
                    "make COUNT larger so the kill lands midway"
                )
            t_killed = time.monotonic()
        rc = first.proc.wait(timeout=STOP_TIMEOUT)
    assert rc == -signal.SIGKILL, f"the server exited with {rc}, not by SIGKILL"
    assert killed_at and all(total == COUNT for _, total in seen), seen

    # Straight in the database, before any restart: the lot row committed on its own (step 1
    # of create_lot), none of its cards did.
    lots = query(storage_url, "SELECT id, status, count FROM lots")
    assert len(lots) == 1, lots
    lot_id, status, count = lots[0]
    assert status in ("minting", "void") and count == COUNT, lots[0]
    assert query(storage_url, "SELECT COUNT(*) FROM cards") == [(0,)]

    # 2. Restart on the same database and keys: the half lot is nowhere to be seen.
    t_restart = time.monotonic()
    with serving(bindir, storage_url, var, log) as second:
        t_restarted = time.monotonic()
        with Client(second.addr, token, timeout=CALL_TIMEOUT, bulk_timeout=MINT_TIMEOUT, retries=0) as c:
            dead = c.get_lot(lot_id)
            assert dead.status in NOT_DONE, lot_pb2.LotStatus.Name(dead.status)
            assert not dead.HasField("completed_at")
            with pytest.raises((LotNotReady, LotVoid)):
                list(c.stream_lot(lot_id))
            # The recovery on start (server/app.py) voids only lots left minting for an hour:
            # this one may still say "minting", but it holds no cards either way.
            assert query(storage_url, "SELECT COUNT(*) FROM cards WHERE lot_id = ?", lot_id) == [(0,)]
            assert query(storage_url, "SELECT COUNT(*) FROM cards") == [(0,)]

            # 3. The same lot again completes whole.
            t_again = time.monotonic()
            again = c.create_lot(sku, COUNT, FACE)
            t_again_done = time.monotonic()
            assert again.id != lot_id
            assert again.status == lot_pb2.LOT_STATUS_COMPLETE and again.count == COUNT
            assert c.get_lot(again.id).status == lot_pb2.LOT_STATUS_COMPLETE
            assert c.get_lot(lot_id).status in NOT_DONE
        rc = second.stop()
    assert rc == 0, second.output()
    # Every card in the database is the new lot's: exactly COUNT of them, distinct serials and
    # distinct codes (a digest is a keyed hash of its code), and the serials are exactly the
    # lot's own numbers (prefix, serial_start.., Verhoeff digit).
    assert query(
        storage_url,
        "SELECT lot_id, COUNT(*), COUNT(DISTINCT serial), COUNT(DISTINCT digest) FROM cards GROUP BY lot_id",
    ) == [(again.id, COUNT, COUNT, COUNT)]
    serials = sorted(s for (s,) in query(storage_url, "SELECT serial FROM cards"))
    assert serials == kernel.serials(again.serial_prefix, again.serial_start, COUNT).astype(str).tolist()
    statuses = dict(query(storage_url, "SELECT id, status FROM lots"))
    assert len(statuses) == 2 and statuses[again.id] == "complete", statuses
    assert statuses[lot_id] in ("minting", "void"), statuses

    steps = ", ".join(f"{done:,}" for done, _ in seen)
    line = (
        f"{backend}: kill -9 during CreateLot of {COUNT:,}: progress {steps}; killed at {killed_at[0]:,}, "
        f"{t_killed - t_mint:.2f} s into the mint (the client saw {died_with}); lot {lot_id} left "
        f"{lot_pb2.LotStatus.Name(dead.status)} with 0 cards; ports {first.port} then {second.port}; "
        f"token + start {t_up - t_start:.2f} s, restart {t_restarted - t_restart:.2f} s, "
        f"same lot again {t_again_done - t_again:.2f} s, whole test {time.monotonic() - t_start:.2f} s"
    )
    print(line)
    TIMINGS.append(line)
