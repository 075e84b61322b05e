"""kill -9 of a real ``cardmint serve`` (issue 5, items 6 and 7), on SQLite and PostgreSQL.

Item 6: a lot is minted with a request id; the server is killed at a random moment (drawn
from the seed, anywhere from before the lot row exists to after the answer), restarted on the
same database and keys, and checked straight in the database: every lot is complete with all
its cards or holds none, no row is an orphan (cards without a lot, ledger entries without a
card or account, pool cards without a card, order items without an order), SQLite's
``integrity_check`` and ``foreign_key_check`` are clean. The same request sent again
completes it, and once more answers the same lot: exactly one complete lot per request.

Item 7: client threads redeem, bind and buy (order + payment) while the server is killed
at random moments; every operation the server acknowledged is recorded with its receipt.
After each restart every acknowledged operation is there (its ledger entry, its binding, its
delivered order), the audit chain verifies, and money is conserved: each card's balance is
its face value plus its ledger, never negative.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cardmint.client import (
    CardAlreadyBound,
    CardmintError,
    Client,
    InsufficientFunds,
    SoldOut,
)
from cardmint.v1 import lot_pb2, order_pb2

from tests.cli_server.conftest import CLI_TIMEOUT, cli_env
from tests.cli_server.test_lot_kill import STOP_TIMEOUT, Server

from . import faultfs
from .conftest import Report, Sizes, db_query

FACE = 500
START_S = 300.0  # for a restart to listen: the soak's database holds millions of cards
SOAK_TIMEOUT = 3600  # s: the whole test at soak sizes (pytest-timeout's default is 300)
CALL_TIMEOUT = 30.0
MINT_TIMEOUT = 300.0


def _token(bindir: Path, url: str, var: Path) -> str:
    made = subprocess.run(
        ["cardmint", "token", "create", "--role", "admin", "--db", url, "--var", str(var)],
        cwd=var.parent, env=cli_env(bindir), capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@contextlib.contextmanager
def _client(server: Server, token: str) -> Iterator[Client]:
    with Client(server.addr, token, timeout=CALL_TIMEOUT, bulk_timeout=MINT_TIMEOUT, retries=0) as c:
        yield c


def _kill(server: Server) -> None:
    server.kill9()
    rc = server.proc.wait(timeout=STOP_TIMEOUT)
    assert rc == -signal.SIGKILL, f"the server exited with {rc}, not by SIGKILL"


def check_stored(url: str) -> dict[str, int]:
    """Straight in the database, with no server running: all-or-nothing lots, no orphan row,
    and (SQLite) a clean integrity and foreign-key check. Counts of what was found."""
    bad: dict[str, list[object]] = {}
    if url.startswith("sqlite://"):
        integrity = db_query(url, "PRAGMA integrity_check")
        if integrity != [("ok",)]:
            bad["integrity_check"] = list(integrity)
        fk = db_query(url, "PRAGMA foreign_key_check")
        if fk:
            bad["foreign_key_check"] = list(fk)
    lots = db_query(
        url,
        "SELECT l.id, l.status, l.count, l.completed_at IS NOT NULL,"
        " (SELECT COUNT(*) FROM cards c WHERE c.lot_id = l.id) FROM lots l",
    )
    for lot_id, status, count, completed, cards in lots:
        whole = completed and cards == count and status in ("complete", "void")
        empty = not completed and cards == 0 and status in ("minting", "void")
        if not (whole or empty):
            bad.setdefault("half_lots", []).append((lot_id, status, count, completed, cards))
    orphans = {
        "cards_without_lot": "SELECT COUNT(*) FROM cards c WHERE NOT EXISTS (SELECT 1 FROM lots l WHERE l.id = c.lot_id)",
        "ledger_without_card": "SELECT COUNT(*) FROM ledger_entries e WHERE e.card_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.id = e.card_id)",
        "ledger_without_account": "SELECT COUNT(*) FROM ledger_entries e WHERE e.account_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id)",
        "cards_without_account": "SELECT COUNT(*) FROM cards c WHERE c.account_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = c.account_id)",
        "pool_without_card": "SELECT COUNT(*) FROM pool_cards p WHERE NOT EXISTS (SELECT 1 FROM cards c WHERE c.id = p.card_id)",
        "pool_without_order": "SELECT COUNT(*) FROM pool_cards p WHERE p.order_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = p.order_id)",
        "items_without_order": "SELECT COUNT(*) FROM order_items i WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = i.order_id)",
        "orders_without_items": "SELECT COUNT(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id)",
        "open_idempotency_keys": "SELECT COUNT(*) FROM idempotency_keys WHERE response IS NULL",
    }
    for name, sql in orphans.items():
        [(n,)] = db_query(url, sql)
        if n:
            bad[name] = [n]
    assert not bad, f"stored state after kill -9: {bad}"
    return {"lots": len(lots), "complete": sum(1 for x in lots if x[3])}


def _lot_of(url: str, request_id: str) -> int | None:
    rows = db_query(
        url, "SELECT response FROM idempotency_keys WHERE scope = 'lot.create' AND key = ?", request_id
    )
    if not rows or rows[0][0] is None:
        return None
    return int(json.loads(bytes(rows[0][0]))["lot_id"])


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_kill9_during_lot_minting(
    bindir: Path, storage_url: str, backend: str, tmp_path: Path, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 6: random kills during a lot; each lot absent or complete; the same request
    completes exactly once."""
    rng = random.Random(seed)
    var, log = tmp_path / "var", tmp_path / "serve.log"
    token = _token(bindir, storage_url, var)
    count = sizes.kill_lot
    server = Server(bindir, storage_url, var, log, start_timeout=START_S)
    try:
        with _client(server, token) as c:
            c.create_product(sku="KILL", name="Kill -9 card", currency="CNY", denominations=(FACE,))
            mint_s = float("inf")
            for n in range(2):  # the first is slower (a cold server): the kills aim by the faster
                t0 = time.monotonic()
                c.create_lot("KILL", count, FACE, request_id=f"{seed}-calibrate-{n}")
                mint_s = min(mint_s, time.monotonic() - t0)
        landed: Counter[str] = Counter()
        client_saw: Counter[str] = Counter()
        for k in range(sizes.kills):
            rid = f"{seed}-lot-{k}"
            delay = rng.uniform(0.0, 1.2) * mint_s  # before, during, or after the answer
            outcome: list[str] = []

            def mint(rid: str = rid, outcome: list[str] = outcome, addr: str = server.addr) -> None:
                try:
                    with Client(addr, token, timeout=CALL_TIMEOUT, bulk_timeout=MINT_TIMEOUT, retries=0) as m:
                        m.create_lot("KILL", count, FACE, request_id=rid)
                    outcome.append("answered")
                except CardmintError as e:
                    outcome.append(type(e).__name__)

            t = threading.Thread(target=mint, daemon=True)
            t.start()
            time.sleep(delay)
            _kill(server)
            t.join(timeout=CALL_TIMEOUT)
            assert not t.is_alive()
            client_saw[outcome[0] if outcome else "nothing"] += 1
            before = _lot_of(storage_url, rid)
            status = (
                "no-lot"
                if before is None
                else str(db_query(storage_url, "SELECT status FROM lots WHERE id = ?", before)[0][0])
            )
            landed[status] += 1
            check_stored(storage_url)

            server = Server(bindir, storage_url, var, log, start_timeout=START_S)
            with _client(server, token) as c:
                again = c.create_lot("KILL", count, FACE, request_id=rid)
                assert again.status == lot_pb2.LOT_STATUS_COMPLETE and again.count == count
                if status == "complete":
                    assert again.id == before  # completed before the kill: answered, not minted
                once_more = c.create_lot("KILL", count, FACE, request_id=rid)
                assert once_more.id == again.id
                got = c.get_lot(again.id)
                assert got.status == lot_pb2.LOT_STATUS_COMPLETE
            assert _lot_of(storage_url, rid) == again.id
            [(cards, serials)] = db_query(
                storage_url, "SELECT COUNT(*), COUNT(DISTINCT serial) FROM cards WHERE lot_id = ?", again.id
            )
            assert cards == serials == count
    finally:
        server.stop()
    found = check_stored(storage_url)
    complete = db_query(storage_url, "SELECT COUNT(*) FROM lots WHERE status = 'complete'")[0][0]
    [(total_cards,)] = db_query(storage_url, "SELECT COUNT(*) FROM cards")
    report(
        "6-kill-lot",
        lot=count,
        kills=sizes.kills,
        killed_before_lot=landed["no-lot"],
        killed_minting=landed["minting"],
        killed_after_complete=landed["complete"],
        client_saw=dict(client_saw),
        lots=found["lots"],
        complete_lots=complete,
        cards=total_cards,
        half_lots=0,
        orphans=0,
        mint_s=round(mint_s, 2),
    )
    assert complete == sizes.kills + 2  # every request once, plus the two calibration lots
    assert total_cards == complete * count


# -- item 7 ------------------------------------------------------------------------------------


@dataclass
class Acked:
    """Operations the server acknowledged, with their receipts."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    redeems: dict[int, tuple[str, int]] = field(default_factory=dict)  # transaction id -> (serial, amount)
    binds: dict[str, str] = field(default_factory=dict)  # serial -> account
    orders: dict[int, tuple[str, ...]] = field(default_factory=dict)  # delivered order -> serials
    in_doubt: int = 0  # calls that ended without an answer (the server died)
    refused: Counter[str] = field(default_factory=Counter)


def _load(
    addr: str,
    token: str,
    cards: list[tuple[str, str]],
    acked: Acked,
    rng: random.Random,
    stop: threading.Event,
    tag: str,
    kinds: tuple[str, ...] = ("redeem", "bind", "order"),
) -> None:
    """Redeems, binds and orders until ``stop`` or the server dies; bounded in count."""
    weights = {"redeem": 6, "bind": 2, "order": 2}
    with Client(addr, token, timeout=5.0, retries=0) as c:
        for i in range(5_000):
            if stop.is_set():
                return
            kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
            serial, code = rng.choice(cards)
            try:
                if kind == "redeem":
                    amount = rng.randint(1, 20)
                    r = c.redeem(serial, amount, "CNY", request_id=f"{tag}-{i}")
                    with acked.lock:
                        acked.redeems[r.transaction_id] = (serial, amount)
                elif kind == "bind":
                    account = f"{tag}-a{rng.randrange(20)}"
                    b = c.bind_card(code, account=account, challenge_passed=True)
                    with acked.lock:
                        acked.binds[b.card.serial] = account
                else:
                    o = c.create_order(
                        [("LOAD-POOL", FACE, 1)], account=f"{tag}-buyer", request_id=f"{tag}-o{i}"
                    )
                    p = c.confirm_payment(o.id, f"{tag}-p{i}", FACE, "CNY")
                    if p.status == order_pb2.ORDER_STATUS_DELIVERED:
                        with acked.lock:
                            acked.orders[p.id] = tuple(x.serial for x in p.codes)
            except (InsufficientFunds, CardAlreadyBound, SoldOut) as e:
                with acked.lock:
                    acked.refused[type(e).__name__] += 1
            except CardmintError as e:
                if e.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"):
                    with acked.lock:
                        acked.in_doubt += 1
                    return  # the server is gone
                with acked.lock:
                    acked.refused[e.reason or type(e).__name__] += 1


def _check_acked(url: str, c: Client, acked: Acked) -> dict[str, int]:
    """Every acknowledged operation is stored; the audit chain verifies; money is conserved."""
    ids = list(acked.redeems)
    stored = {
        int(i): (str(s), -int(a))
        for i, s, a in db_query(
            url,
            "SELECT e.id, c.serial, e.amount FROM ledger_entries e JOIN cards c ON c.id = e.card_id"
            " WHERE e.kind = 'redeem'",
        )
    }
    lost_redeems = [i for i in ids if stored.get(i) != acked.redeems[i]]
    bound = dict(
        db_query(
            url,
            "SELECT c.serial, a.external_id FROM cards c JOIN accounts a ON a.id = c.account_id",
        )
    )
    lost_binds = [s for s, a in acked.binds.items() if bound.get(s) != a]
    delivered: dict[int, set[str]] = {}
    for oid, serial in db_query(
        url,
        "SELECT o.id, c.serial FROM orders o JOIN pool_cards p ON p.order_id = o.id"
        " JOIN cards c ON c.id = p.card_id WHERE o.status = 'delivered' AND p.state = 'sold'",
    ):
        delivered.setdefault(int(oid), set()).add(str(serial))
    lost_orders = [o for o, s in acked.orders.items() if delivered.get(o) != set(s)]
    audit = c.verify_audit()
    # Money: every card's balance is its face value plus its ledger, never below zero.
    unbalanced = db_query(
        url,
        "SELECT c.serial FROM cards c WHERE c.balance < 0 OR c.balance <> c.face_value"
        " + COALESCE((SELECT SUM(e.amount) FROM ledger_entries e WHERE e.card_id = c.id"
        " AND e.kind IN ('redeem', 'reverse')), 0)",
    )
    assert not lost_redeems, f"acknowledged redeems lost: {lost_redeems[:10]}"
    assert not lost_binds, f"acknowledged binds lost: {lost_binds[:10]}"
    assert not lost_orders, f"acknowledged deliveries lost: {lost_orders[:10]}"
    assert audit.ok, f"audit chain broken at {audit.first_bad}: {audit.problem}"
    assert not unbalanced, f"cards whose balance is not face value + ledger: {unbalanced[:10]}"
    return {"audit_events": audit.events}


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_acknowledged_writes_survive_kill9(
    bindir: Path, storage_url: str, backend: str, tmp_path: Path, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 7: kill -9 under mixed load loses no acknowledged operation."""
    rng = random.Random(seed)
    var, log = tmp_path / "var", tmp_path / "serve.log"
    token = _token(bindir, storage_url, var)
    server = Server(bindir, storage_url, var, log, start_timeout=START_S)
    try:
        with _client(server, token) as c:
            c.create_product(sku="LOAD", name="Load card", currency="CNY", denominations=(FACE,))
            c.create_product(sku="LOAD-POOL", name="Load pool card", currency="CNY", denominations=(FACE,))
            lot = c.create_lot("LOAD", 400, FACE)
            cards = list(c.stream_lot(lot.id))
            pool = c.create_lot("LOAD-POOL", sizes.kills_load * 200, FACE)
            c.stock_pool(pool.id)
        acked = Acked()
        audit_events = 0
        for k in range(sizes.kills_load):
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=_load,
                    args=(
                        server.addr,
                        token,
                        cards,
                        acked,
                        random.Random(rng.random()),
                        stop,
                        f"{seed}-{k}-{w}",
                    ),
                    daemon=True,
                )
                for w in range(sizes.load_threads)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))
            _kill(server)
            stop.set()
            for t in threads:
                t.join(timeout=CALL_TIMEOUT)
            assert not any(t.is_alive() for t in threads)
            check_stored(storage_url)
            server = Server(bindir, storage_url, var, log, start_timeout=START_S)
            with _client(server, token) as c:
                audit_events = _check_acked(storage_url, c, acked)["audit_events"]
    finally:
        server.stop()
    report(
        "7-kill-load",
        kills=sizes.kills_load,
        threads=sizes.load_threads,
        acked_redeems=len(acked.redeems),
        acked_binds=len(acked.binds),
        acked_deliveries=len(acked.orders),
        in_doubt=acked.in_doubt,
        lost=0,
        audit_events=audit_events,
        audit_ok=True,
        refused=dict(acked.refused),
    )
    assert acked.redeems and acked.binds and acked.orders


# -- item 7: power loss (SQLite) ---------------------------------------------------------------


def _power_loss_run(
    bindir: Path, shim: Path, root: Path, synchronous: str, cuts: int, rng: random.Random, seed: int
) -> dict[str, int]:
    """Redeems under load on ``?synchronous=...`` through the fault shim, ``cuts`` power cuts
    (kill -9, then every unsynced write undone); after each the database must open clean.
    Counts: acknowledged redeems, and how many of them the cuts lost."""
    var, log, undo = root / "var", root / "serve.log", root / "undo.log"
    db = root / "cardmint.db"
    url = f"sqlite://{db}"
    token = _token(bindir, url, var)
    with _serving(bindir, url, var, log) as server, _client(server, token) as c:
        c.create_product(sku="POWER", name="Power cut card", currency="CNY", denominations=(FACE,))
        lot = c.create_lot("POWER", 64, FACE)
        cards = list(c.stream_lot(lot.id))
    acked = Acked()
    undone = 0
    for k in range(cuts):
        shim_env = faultfs.env(shim, str(db), undo=undo)
        server = Server(bindir, f"{url}?synchronous={synchronous}", var, log, env=shim_env)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_load,
                args=(
                    server.addr,
                    token,
                    cards,
                    acked,
                    random.Random(rng.random()),
                    stop,
                    f"{seed}-{synchronous}-{k}-{w}",
                ),
                kwargs={"kinds": ("redeem",)},
                daemon=True,
            )
            for w in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 1.5))
        _kill(server)
        stop.set()
        for t in threads:
            t.join(timeout=CALL_TIMEOUT)
        assert not any(t.is_alive() for t in threads)
        undone += faultfs.power_cut(undo)["undone"]
        Path(f"{db}-shm").unlink(missing_ok=True)  # the WAL index lives in memory: gone too
        assert db_query(url, "PRAGMA integrity_check") == [("ok",)]
    stored = {int(i) for (i,) in db_query(url, "SELECT id FROM ledger_entries WHERE kind = 'redeem'")}
    lost = sum(1 for i in acked.redeems if i not in stored)
    with _serving(bindir, url, var, log) as server, _client(server, token) as c:
        audit = c.verify_audit()
    assert audit.ok, f"audit chain broken after power cuts at {audit.first_bad}: {audit.problem}"
    return {"acked": len(acked.redeems), "lost": lost, "undone_writes": undone}


@contextlib.contextmanager
def _serving(bindir: Path, url: str, var: Path, log: Path) -> Iterator[Server]:
    server = Server(bindir, url, var, log)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_power_loss_sqlite(bindir: Path, tmp_path: Path, sizes: Sizes, seed: int, report: Report) -> None:
    """Item 7: with ``synchronous=FULL`` a power cut loses no acknowledged redeem and the
    database opens clean; the same harness with ``synchronous=OFF`` does lose some (so the
    test can tell)."""
    rng = random.Random(seed)
    shim = faultfs.build(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "off").mkdir()
    full = _power_loss_run(bindir, shim, tmp_path / "full", "full", sizes.power_cuts, rng, seed)
    off = _power_loss_run(bindir, shim, tmp_path / "off", "off", 1, rng, seed)
    report(
        "7-power-loss",
        backend="sqlite",
        cuts_full=sizes.power_cuts,
        acked_full=full["acked"],
        lost_full=full["lost"],
        undone_writes_full=full["undone_writes"],
        acked_off=off["acked"],
        lost_off=off["lost"],
        integrity="ok",
    )
    assert full["acked"] > 0 and full["lost"] == 0
    assert off["acked"] > 0 and off["lost"] > 0, "synchronous=OFF lost nothing: the harness cannot tell"
