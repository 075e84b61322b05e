"""Backups that restore (docs/backup.md).

SQLite: ``cardmint backup`` runs while clients keep redeeming; the copy, put in a new var
directory, serves again: its audit chain verifies, every card's balance plus what its ledger
says was spent is its face value, the copy holds every redemption committed before the
backup started, and every code is found with the copied digest key and shown again with
the copied sealing key. PostgreSQL: ``pg_dump`` and ``pg_restore`` into a new database give
a server whose audit chain verifies and whose cards are found, with the same balances.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cardmint.client import Client, InternalError
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig, KeyringError
from cardmint.v1 import balance_pb2

from tests.cli_server.conftest import CLI_TIMEOUT, cli_env
from tests.conftest import PgServer, _pg_bin

FACE = 10_000  # 100.00 CNY
CARDS = 120
WRITERS = 2
MAX_REDEEMS = 1_500  # per writer: the loop's bound whatever the backup's speed
CONFIG = DomainConfig(lot_chunk=64, stream_chunk=64, order_sweep_seconds=0)


def _serve(db: str | None, var: Path) -> Running:
    return start(db, "127.0.0.1:0", var, workers=8, config=CONFIG)


def _stock(running: Running) -> tuple[int, dict[str, str]]:
    """A product and a lot; some cards bound. (lot id, serial -> code)"""
    token = running.domain.auth.create_token("admin").token
    with Client(f"127.0.0.1:{running.port}", token, timeout=60.0) as c:
        c.create_product(sku="BK-100", name="Backup card", currency="CNY", denominations=[FACE])
        lot = c.create_lot("BK-100", CARDS, FACE)
        codes = dict(c.stream_lot(lot.id))
        for i, code in enumerate(list(codes.values())[:10]):
            c.bind_card(code, account=f"holder-{i}")
    return lot.id, codes


class Writers:
    """Threads redeeming 1.00 CNY at a time on random cards until told to stop."""

    def __init__(self, running: Running, serials: list[str], seed: int) -> None:
        self.addr = f"127.0.0.1:{running.port}"
        self.tokens = [running.domain.auth.create_token("merchant").token for _ in range(WRITERS)]
        self.serials = serials
        self.seed = seed
        self.stop = threading.Event()
        self.warm = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(WRITERS)]

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed * 100 + i)
        try:
            with Client(self.addr, self.tokens[i], timeout=60.0) as c:
                for n in range(MAX_REDEEMS):
                    if self.stop.is_set():
                        return
                    c.redeem(rng.choice(self.serials), 100, "CNY", request_id=f"w{i}-{n}")
                    with self.lock:
                        self.done += 1
                        if self.done >= 20:
                            self.warm.set()
        except BaseException as e:  # reported by the test, not lost in a thread
            self.errors.append(e)
            self.warm.set()

    def count(self) -> int:
        with self.lock:
            return self.done

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def _check_restored(running: Running, lot_id: int, codes: dict[str, str]) -> int:
    """The integrity checks of a restored server; returns the redemptions it holds."""
    token = running.domain.auth.create_token("admin").token
    with Client(f"127.0.0.1:{running.port}", token, timeout=60.0) as c:
        verdict = c.verify_audit()
        assert verdict.ok, verdict.problem
        assert verdict.events > 0
        found = list(c.check(codes.values()))
        assert [r.status for r in found] == ["ok"] * len(codes)  # the digest key finds them all
        assert dict(c.stream_lot(lot_id)) == codes  # the sealing key shows them again
        redeems = 0
        for serial in codes:
            card = c.get_card(serial)
            spent = [
                -t.amount.minor_units  # the ledger writes money out as negative
                for t in c.transactions(serial=serial, page_size=500)
                if t.kind == balance_pb2.TRANSACTION_KIND_REDEEM
            ]
            assert card.balance.minor_units + sum(spent) == FACE, serial
            redeems += len(spent)
    return redeems


def test_sqlite_backup_while_writing_restores_whole(bindir: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    out = tmp_path / "backup"
    seed = int(os.environ.get("CARDMINT_SEED", "5"))
    running = _serve(None, var)  # SQLite at var/cardmint.db, as `cardmint serve`
    try:
        lot_id, codes = _stock(running)
        with Writers(running, list(codes), seed) as writers:
            assert writers.warm.wait(120), "the writers never got going"
            before = writers.count()
            done = subprocess.run(
                ["cardmint", "backup", "--out", str(out), "--var", str(var)],
                env=cli_env(bindir), capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
            )  # fmt: skip
            during = writers.count()
        assert writers.errors == []
        total = writers.count()
    finally:
        running.stop(grace=0)
    assert done.returncode == 0, done.stderr
    assert during > before, "no redemption committed while the backup ran"
    assert done.stdout.startswith(f"backup {out}: cardmint.db ")
    assert "keys: digest.key, seal-1.key" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cardmint.db", "keys"]  # no -wal, no .part
    assert stat.S_IMODE((out / "cardmint.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "keys").stat().st_mode) == 0o700
    assert {(p.name, stat.S_IMODE(p.stat().st_mode)) for p in (out / "keys").iterdir()} == {
        ("digest.key", 0o600),
        ("seal-1.key", 0o600),
    }

    restored = tmp_path / "restored"
    shutil.copytree(out, restored)
    running = _serve(None, restored)
    try:
        held = _check_restored(running, lot_id, codes)
    finally:
        running.stop(grace=0)
    # One snapshot: everything committed before the backup began, nothing never committed.
    assert before <= held <= total
    print(f"backup: {held} of {total} redemptions in the copy ({before} before it began)")


def test_backup_of_a_stopped_server_and_its_refusals(bindir: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    running = _serve(None, var)
    running.stop(grace=0)
    env = cli_env(bindir)

    def backup(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["cardmint", "backup", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    ok = backup("--out", str(tmp_path / "b1"), "--var", str(var))
    assert ok.returncode == 0, ok.stderr
    again = backup("--out", str(tmp_path / "b1"), "--var", str(var))
    assert again.returncode == 2 and "not an empty directory" in again.stderr
    bare = backup("--out", str(tmp_path / "b2"), "--var", str(var), "--no-keys")
    assert bare.returncode == 0 and "warning: no keys" in bare.stderr
    assert sorted(p.name for p in (tmp_path / "b2").iterdir()) == ["cardmint.db"]
    (tmp_path / "nokeys").mkdir()
    shutil.copy(var / "cardmint.db", tmp_path / "nokeys" / "cardmint.db")
    lost = backup("--out", str(tmp_path / "b3"), "--var", str(tmp_path / "nokeys"))
    assert lost.returncode == 2 and "no keys in" in lost.stderr
    assert not (tmp_path / "b3").exists()  # nothing half-written left behind
    pg = backup("--out", str(tmp_path / "b4"), "--db", "postgresql://u@127.0.0.1/x")
    assert pg.returncode == 2 and "pg_dump" in pg.stderr
    for bad in (ok, again, bare, lost, pg):
        assert "Traceback" not in bad.stderr


def test_postgres_dump_and_restore_into_a_new_database(pg_server: PgServer, tmp_path: Path) -> None:
    bindir = _pg_bin()
    var = tmp_path / "var"
    source = pg_server.create_database()
    target = pg_server.create_database()
    try:
        running = _serve(pg_server.dsn_for(source), var)
        try:
            lot_id, codes = _stock(running)
            rng = random.Random(int(os.environ.get("CARDMINT_SEED", "5")))
            token = running.domain.auth.create_token("merchant").token
            with Client(f"127.0.0.1:{running.port}", token, timeout=60.0) as c:
                for n in range(60):
                    c.redeem(rng.choice(list(codes)), 100, "CNY", request_id=f"pg-{n}")
        finally:
            running.stop(grace=0)
        dump = tmp_path / "cardmint.dump"
        for cmd in (
            [
                str(bindir / "pg_dump"),
                "--format=custom",
                "--no-owner",
                "-f",
                str(dump),
                "-d",
                pg_server.dsn_for(source),
            ],
            [
                str(bindir / "pg_restore"),
                "--no-owner",
                "--exit-on-error",
                "-d",
                pg_server.dsn_for(target),
                str(dump),
            ],
        ):
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            assert run.returncode == 0, f"{cmd[0]}: {run.stderr}"
        keys = tmp_path / "restored-var"
        shutil.copytree(var / "keys", keys / "keys")  # the keys travel with the dump
        running = _serve(pg_server.dsn_for(target), keys)
        try:
            assert _check_restored(running, lot_id, codes) == 60
        finally:
            running.stop(grace=0)
    finally:
        pg_server.drop_database(source)
        pg_server.drop_database(target)


@pytest.mark.parametrize("kind", ["digest", "seal"])
def test_a_restore_without_its_keys_finds_nothing(tmp_path: Path, kind: str) -> None:
    """Why the keys are part of the backup: with a fresh sealing key the copy's codes can no
    longer be shown; with a fresh digest key the server refuses to start at all (the
    database records each digest key's fingerprint), rather than find nothing."""
    var = tmp_path / "var"
    running = _serve(None, var)
    try:
        lot_id, codes = _stock(running)
    finally:
        running.stop(grace=0)
    (var / "keys" / ("digest.key" if kind == "digest" else "seal-1.key")).unlink()  # a new one on start
    if kind == "digest":
        with pytest.raises(KeyringError, match="not the key this database knows"):
            _serve(None, var)
        return
    running = _serve(None, var)
    try:
        token = running.domain.auth.create_token("admin").token
        with Client(f"127.0.0.1:{running.port}", token, timeout=60.0) as c:
            statuses = {r.status for r in c.check(codes.values())}
            assert statuses == {"ok"}
            with pytest.raises(InternalError):  # sealed under a key that is gone
                dict(c.stream_lot(lot_id))
    finally:
        running.stop(grace=0)
