"""PostgreSQL backend: psycopg 3 with a connection pool, COPY for lots.

Isolation: READ COMMITTED plus targeted locking, not SERIALIZABLE. Every money movement is
one conditional UPDATE (``... WHERE balance >= amount``); PostgreSQL takes the row lock and,
if another transaction changed the row meanwhile, re-evaluates the WHERE clause against the
committed row before updating, so the guard always sees the latest balance. The few
read-then-write paths lock what they read (``SELECT ... FOR UPDATE`` on the card for a
reversal; transaction-scoped advisory locks for the audit chain and the index feed, whose
next id depends on the last row). Uniqueness (digests, serials, idempotency keys) is left to
unique indexes, which also wait for the competing transaction to finish. SERIALIZABLE would
give the same answers but make 32 threads hammering one card retry constantly; under it
(e.g. on a distributed SQL engine) the same statements stay correct and ``run`` retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import psycopg
import psycopg.errors
import psycopg.sql
from psycopg_pool import ConnectionPool

from ._sql import (
    _CARD_C,
    _ENTRY,
    _ORDER,
    CARD_COLUMNS,
    GENESIS_HASH,
    LOCK_AUDIT,
    LOCK_EVENTS,
    ON_SALE,
    CardRows,
    Clock,
    SqlTx,
    _currency,
    _money,
    _positive,
    audit_hash,
    run_retrying,
    utcnow,
)
from .errors import (
    ConflictError,
    MigrationError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
    TransientError,
)
from .migrations import MIGRATIONS
from .models import (
    AuditColumns,
    AuditEntry,
    Event,
    LedgerEntry,
    LedgerKind,
    NewOrder,
    Order,
    PoolCard,
    PoolCardState,
)

log = logging.getLogger(__name__)

# The journals (migration 12) and the lock each one's sealing takes, in locking order.
JOURNALS = ("audit", "events")
_JOURNAL_LOCKS = {"audit": LOCK_AUDIT, "events": LOCK_EVENTS}

__all__ = ["PostgresStorage"]

T = TypeVar("T")
# Advisory lock keys live in one 64-bit space shared with anything else on the server;
# derive ours from a fixed name so they are recognisable in pg_locks.
_LOCK_BASE = zlib.crc32(b"cardmint") << 8
_MIGRATION_LOCK = _LOCK_BASE
_CARD_COPY = f"COPY cards ({CARD_COLUMNS}) FROM STDIN (FORMAT BINARY)"
# Types for the row-by-row fallback, in CARD_COLUMNS order.
_CARD_TYPES = [
    "text",
    "bytea",
    "bytea",
    "int4",
    "int8",
    "int8",
    "int8",
    "int8",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
]
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _copy_records(rows: CardRows) -> bytes | None:
    """The cards as COPY BINARY tuples, built column-wise with numpy.

    Row-by-row ``write_row`` costs ~10 us of Python per card; a 10^6-card lot would spend
    10 s there. This fills one packed big-endian record array instead. None when serials
    differ in length or are not ASCII (then the caller falls back to ``write_row``).
    """
    serials = rows.fixed_serials()
    if serials is None:
        return None
    n, width = len(serials), serials.dtype.itemsize
    dw, sw = rows.digests.shape[1], rows.sealed.shape[1]
    cur, status = rows.lot.currency.encode("ascii"), b"active"
    values: list[tuple[str, Any, Any]] = [
        ("serial", f"S{width}", serials),
        ("digest", ("u1", (dw,)), rows.digests),
        ("sealed", ("u1", (sw,)), rows.sealed),
        ("key_id", ">i4", rows.key_id),
        ("lot_id", ">i8", rows.lot.id),
        ("product_id", ">i8", rows.lot.product_id),
        ("face_value", ">i8", rows.lot.face_value),
        ("balance", ">i8", rows.lot.face_value),
        ("currency", f"S{len(cur)}", cur),
        ("status", f"S{len(status)}", status),
    ]
    if rows.expires_at is not None:
        values.append(("expires_at", ">i8", (rows.expires_at - _PG_EPOCH) // _US))
    values.append(("created_at", ">i8", (rows.created_at - _PG_EPOCH) // _US))
    fields: list[tuple[Any, ...]] = [("nfields", ">i2")]
    for name, dtype, _ in values:
        fields.append((f"len_{name}", ">i4"))
        fields.append((name, *dtype) if isinstance(dtype, tuple) else (name, dtype))
        if name == "status" and rows.expires_at is None:
            fields.append(("len_expires_at", ">i4"))  # a NULL is a length of -1 and no data
    rec = np.empty(n, dtype=np.dtype(fields))
    rec["nfields"] = 12
    for name, _, value in values:
        rec[name] = value
        rec[f"len_{name}"] = rec[name].itemsize if rec[name].ndim == 1 else rec[name].shape[1]
    if rows.expires_at is None:
        rec["len_expires_at"] = -1
    return _COPY_HEADER + rec.tobytes() + _COPY_TRAILER


# A committed lot of at least this many cards that grew the table by a tenth or more gets the
# table's statistics refreshed at once (see _refresh_statistics).
_ANALYZE_MIN_CARDS = 10_000


def _refresh_statistics(conn: psycopg.Connection[Any], added: int) -> None:
    """ANALYZE cards after a large lot, instead of waiting up to a minute for autovacuum.

    Without statistics on a large new lot the planner takes it for a handful of rows, and a
    query paging through it (``ORDER BY id LIMIT n``, as the issued-codes index reads a new
    lot) becomes a scan and sort of all its remaining cards for every page: 4.5-13 s instead
    of 1.4-3 s at 10^6 cards. ANALYZE samples 30,000 rows: 0.3-1 s. Best effort: the lot is
    committed already, so a failure (say a lock wait beyond 5 s) is ignored.
    """
    with contextlib.suppress(psycopg.Error):
        row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'cards'::regclass").fetchone()
        if row is not None and row[0] <= added * 10:  # -1: never analyzed
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '5s'")
                conn.execute("ANALYZE cards")


def _translate(exc: psycopg.Error) -> StorageError:
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return TransientError(str(exc))
    if isinstance(exc, psycopg.errors.IntegrityError):
        return ConflictError(str(exc))
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # The connection or the server failed (killed backend, server down, disk full).
        return StorageUnavailableError(f"{type(exc).__name__}: {exc}")
    return StorageError(f"{type(exc).__name__}: {exc}")


def _sql(text: str) -> str:
    # Our statements never contain a literal '?' or '%' (only card_states' "%b", a binary
    # placeholder psycopg reads as such), so this translation is exact.
    return text.replace("?", "%s")


class _Sealer:
    """Moves journaled audit and outbox events in batches, on its own thread: group commit
    for the audit chain and the outbox.

    A committer asks for a seal round of the journals it wrote and waits for one that
    *started* after its request (so after its commit) to finish; however many committers
    ask meanwhile, the next round serves them all with one transaction. A round that fails
    (the database went away) still releases its waiters: their events are durable in the
    journal and the next round, or the next process to start, moves them.
    """

    IDLE_SECONDS = 5.0  # with no requests, look for leftovers this often

    def __init__(self, seal: Callable[[frozenset[str]], object]) -> None:
        self._seal = seal
        self._cond = threading.Condition()
        self._asked = 1  # rounds requested (the first: leftovers from a process that died)
        self._served = 0  # requests the finished rounds covered
        self._kinds: set[str] = set(JOURNALS)  # journals the requests not yet served wrote
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="cardmint-sealer", daemon=True)
        self._thread.start()

    def seal_and_wait(self, kinds: Collection[str], timeout: float = 30.0) -> None:
        with self._cond:
            self._asked += 1
            self._kinds.update(kinds)
            mine = self._asked
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._served >= mine or self._stopping, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                asked = self._cond.wait_for(
                    lambda: self._asked > self._served or self._stopping, self.IDLE_SECONDS
                )
                covers = self._asked
                kinds = frozenset(self._kinds) if asked else frozenset(JOURNALS)
                self._kinds.clear()
            try:
                if kinds:
                    self._seal(kinds)
            except Exception:  # the database is down or refusing: waiters go on, events wait
                log.exception("sealing the journals failed; retrying on the next round")
                with self._cond:
                    self._kinds.update(kinds)
            with self._cond:
                self._served = max(self._served, covers)
                self._cond.notify_all()
                if self._stopping:
                    return


class _PgTx(SqlTx):
    FOR_UPDATE = " FOR UPDATE"
    FOR_NO_KEY_UPDATE = " FOR NO KEY UPDATE"
    CONCAT_TEXT = "string_agg({}, '')"
    CONCAT_BYTES = "string_agg({}, ''::bytea)"
    # Once statistics show a lot as a large share of the cards, PostgreSQL may look for its
    # lowest id by walking the primary key and filtering on lot_id, through every older lot's
    # cards (it does for MIN(id) ... WHERE lot_id = ?). Only cards_lot delivers rows in
    # (lot_id, id) order, so this probe always reads one index entry.
    NEXT_LOT_CARD = "SELECT lot_id, id FROM cards WHERE (lot_id, id) > (?, ?) ORDER BY lot_id, id LIMIT 1"

    def _claim(self, alias: str) -> str:
        return f" FOR UPDATE OF {alias} SKIP LOCKED"

    def __init__(self, conn: psycopg.Connection[Any], clock: Clock) -> None:
        super().__init__(clock)
        self._conn = conn
        # One cursor for the whole unit of work: every statement's result is read before the
        # next one runs, and a cursor per statement costs ~25% of psycopg's CPU per call.
        self._cur: psycopg.Cursor[Any] = conn.cursor()
        self.cards_added = 0
        self.journaled: set[str] = set()  # journals written (JOURNALS): sealed after the commit

    def _debit(self, card_id: int, amount: int, currency: str, request_id: str | None) -> LedgerEntry | None:
        # The guarded UPDATE and the ledger INSERT in one statement: one round trip fewer
        # per redemption. The INSERT reads the UPDATE's RETURNING, so no guard, no row.
        now = self._ts(self.now())
        row = self._one(
            f"WITH moved AS ({self._DEBIT} RETURNING id, balance, account_id)"  # noqa: S608 - constants
            " INSERT INTO ledger_entries (card_id, account_id, kind, amount, balance_after, currency,"
            " request_id, reverses_id, created_at, profile)"
            " SELECT id, account_id, ?, ?, balance, ?, ?, NULL, ?, ? FROM moved"
            f" RETURNING {_ENTRY}",
            (
                amount,
                card_id,
                currency,
                amount,
                now,
                LedgerKind.REDEEM.value,
                -amount,
                currency,
                request_id,
                now,
                self.judged_by,
            ),
        )
        return None if row is None else self._entry(row)

    def append_audit(self, actor: str, action: str, subject: str, detail: str = "") -> AuditEntry:
        """Journal one audit event, with no lock: the storage chains it right after the
        commit, before the caller hears back (see ``_AuditSealer``). The entry returned is
        the journaled one: its chain position and hashes are not known yet (0 and empty)."""
        at = self.now()
        self._execute(
            "INSERT INTO audit_pending (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (self._ts(at), actor, action, subject, detail),
        )
        self.journaled.add("audit")
        return AuditEntry(0, at, actor, action, subject, detail, b"", b"")

    def emit_event(self, kind: str, subject: str, detail: str = "{}") -> Event:
        """Journal one outbox event, with no lock: the storage numbers it right after the
        commit, before the caller hears back, so ids stay in the order events become
        visible. The event returned has no id yet (0)."""
        event = Event(0, self.now(), kind, subject, detail)
        self._execute(
            "INSERT INTO events_pending (at, kind, subject, detail) VALUES (?, ?, ?, ?)",
            (self._ts(event.at), kind, subject, detail),
        )
        self.journaled.add("events")
        return event

    def seal(self, kinds: Collection[str], limit: int) -> bool:
        """Move up to ``limit`` journaled rows of each journal in ``kinds`` (oldest first):
        audit events chained onto audit_log, outbox events numbered onto events. True when a
        journal may hold more.

        Under each table's lock (taken in one fixed order, so sealers never deadlock), so one
        sealer at a time across every server process; the journal rows leave in the same
        transaction as the moved rows arrive, so an event is always in exactly one place."""
        wanted = [k for k in JOURNALS if k in kinds]
        locks = ", ".join(f"pg_advisory_xact_lock({_LOCK_BASE + _JOURNAL_LOCKS[k]})" for k in wanted)
        self._execute(f"SELECT {locks}")
        more = False
        if "audit" in wanted:
            # The head, read after the lock, rides along with every moved row.
            rows = self._all(
                "WITH moved AS (DELETE FROM audit_pending WHERE id IN"
                " (SELECT id FROM audit_pending ORDER BY id LIMIT ?)"
                " RETURNING id, at, actor, action, subject, detail)"
                " SELECT m.id, m.at, m.actor, m.action, m.subject, m.detail, h.id, h.hash FROM moved m"
                " LEFT JOIN (SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1) h ON TRUE",
                (limit,),
            )
            if rows:
                rows.sort(key=lambda r: int(r[0]))
                seq, prev = (0, GENESIS_HASH) if rows[0][6] is None else (int(rows[0][6]), bytes(rows[0][7]))
                chained = []
                for _, at, actor, action, subject, detail, _, _ in rows:
                    seq += 1
                    digest = audit_hash(prev, seq, at, actor, action, subject, detail)
                    chained.append((seq, at, actor, action, subject, detail, prev, digest))
                    prev = digest
                self._executemany(
                    "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    chained,
                )
            more |= len(rows) == limit
        if "events" in wanted:
            rows = self._all(
                "WITH moved AS (DELETE FROM events_pending WHERE id IN"
                " (SELECT id FROM events_pending ORDER BY id LIMIT ?) RETURNING id, at, kind, subject, detail)"
                " SELECT m.id, m.at, m.kind, m.subject, m.detail, h.last FROM moved m"
                " CROSS JOIN (SELECT COALESCE(MAX(id), 0) AS last FROM events) h",
                (limit,),
            )
            if rows:
                rows.sort(key=lambda r: int(r[0]))
                last = int(rows[0][5])
                self._executemany(
                    "INSERT INTO events (id, at, kind, subject, detail) VALUES (?, ?, ?, ?, ?)",
                    [
                        (last + n, at, kind, subject, detail)
                        for n, (_, at, kind, subject, detail, _) in enumerate(rows, 1)
                    ],
                )
            more |= len(rows) == limit
        return more

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        try:
            with self._conn.cursor() as cur:
                cur.executemany(_sql(sql), rows)
                return cur.rowcount
        except psycopg.Error as e:
            raise self._fail(_translate(e)) from e

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        try:
            return self._cur.execute(_sql(sql), params)
        except psycopg.Error as e:
            raise self._fail(_translate(e)) from e

    def _ts(self, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (UTC)")
        return value

    def _dt(self, value: Any) -> datetime:
        dt: datetime = value
        return dt.astimezone(UTC)

    # Past a few thousand elements PostgreSQL plans `digest = ANY(...)` as a (parallel)
    # seq scan of all cards with a hashed array: as fast as the index at 10^6 cards, but
    # every query then reads the whole table, which grows with it. 2,000 keeps the index.
    STATES_CHUNK_MAX = 2_000

    def _digests_in(self, count: int) -> str:
        # One bytea[] parameter, whatever the count, sent in binary (%b): the text form
        # would cost ~5 us per digest to escape, as much as the lookup itself.
        return "digest = ANY(%b)"

    def _digests_param(self, digests: list[bytes]) -> Sequence[Any]:
        return (digests,)

    def _epoch_us(self, column: str) -> str:
        return f"COALESCE((EXTRACT(EPOCH FROM {column}) * 1000000)::bigint, 0)"

    # Fixed-width part of an audit page: the id (int8send) and the time as sent on the wire
    # (timestamptz_send: µs since 2000-01-01 UTC), both big-endian int64. The wire form
    # costs a fraction of EXTRACT(EPOCH ...), which computes in numeric.
    _AUDIT_HEAD = np.dtype([("id", ">i8"), ("at", ">i8")])
    _PG_EPOCH_US = 946_684_800_000_000

    def _audit_page(self, after_id: int, limit: int) -> AuditColumns | None:
        # Ids travel with the rows (the kernel checks their order), so no assumption about
        # the order the aggregates see rows in is needed for a sound verdict; binary results
        # carry the bytea columns as they are, not hex.
        sql = (
            "SELECT count(*), string_agg(int8send(id) || timestamptz_send(at), ''::bytea),"
            " string_agg(prev_hash, ''::bytea), string_agg(hash, ''::bytea),"
            " COALESCE(sum((length(prev_hash) - 32) * (length(prev_hash) - 32)"
            " + (length(hash) - 32) * (length(hash) - 32)), 0)::bigint,"
            " convert_to(string_agg(actor || ?::text || action || ?::text || subject || ?::text || detail,"
            " ?::text), 'UTF8')"
            " FROM (SELECT id, at, actor, action, subject, detail, prev_hash, hash FROM audit_log"
            " WHERE id > ? AND id <= ? ORDER BY id) AS page"
        )
        sep = self.AUDIT_SEP
        try:
            with self._conn.cursor(binary=True) as cur:
                row = cur.execute(_sql(sql), (sep, sep, sep, sep, after_id, after_id + limit)).fetchone()
        except psycopg.Error as e:
            raise self._fail(_translate(e)) from e
        if row is None or not row[0] or row[1] is None or row[4] != 0 or row[5] is None:
            return None
        n = int(row[0])
        head, prevs, hashes = bytes(row[1]), bytes(row[2]), bytes(row[3])
        split = self._audit_split(n, bytes(row[5]))
        if split is None or len(head) != 16 * n or len(prevs) != 32 * n or len(hashes) != 32 * n:
            return None
        fixed = np.frombuffer(head, dtype=self._AUDIT_HEAD)
        ids, at_us = fixed["id"].astype(np.int64), fixed["at"].astype(np.int64) + self._PG_EPOCH_US
        return AuditColumns(ids, at_us, split[0], split[1], prevs, hashes)

    def audit_pending(self) -> int:
        return int(self._one("SELECT count(*) FROM audit_pending")[0])

    def _lock(self, name: int) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_BASE + name,))

    # -- the card shop: one statement where the shared SQL takes several (each round trip
    # costs the server ~70 us of Python in psycopg, and an order's two calls are many)

    def _lock_many(self, names: Sequence[int]) -> None:
        if names:
            locks = ", ".join(["pg_advisory_xact_lock(?)"] * len(names))
            self._execute(f"SELECT {locks}", [_LOCK_BASE + n for n in names])

    def place_order(
        self, new: NewOrder, *, complete: tuple[str, str] | None = None
    ) -> tuple[Order, list[int]]:
        """One statement: the order, its items, each item's claim (``FOR UPDATE OF p SKIP
        LOCKED``: an item claims its cards only if all of them are free) and the
        idempotency answer (only when every item was filled)."""
        if not new.items:
            raise ValueError("an order needs at least one item")
        for item in new.items:
            _money(item.face_value, "face value")
            _positive(item.quantity, "quantity")
        if new.expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware (UTC)")
        now = self._ts(self.now())
        quantity = sum(i.quantity for i in new.items)
        params: list[Any] = [
            new.account_id,
            new.request_id,
            quantity,
            _money(new.amount),
            _currency(new.currency),
            new.client_address,
            now,
            self._ts(new.expires_at),
            new.payment_method,
        ]
        ctes = [
            "o AS (INSERT INTO orders (account_id, request_id, quantity, amount, currency, status,"  # noqa: S608
            " client_address, created_at, expires_at, payment_method)"
            " VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?)"
            f" RETURNING {_ORDER})",
            "i AS (INSERT INTO order_items (order_id, line, product_id, face_value, quantity)"  # noqa: S608
            " SELECT o.id, v.line, v.product_id, v.face_value, v.quantity FROM o, (VALUES "
            + ", ".join(["(?::integer, ?::bigint, ?::bigint, ?::integer)"] * len(new.items))
            + ") AS v (line, product_id, face_value, quantity))",
        ]
        for line, item in enumerate(new.items):
            params += [line, item.product_id, item.face_value, item.quantity]
        full: list[str] = []
        for k, item in enumerate(new.items):
            ctes.append(
                f"c{k} AS (SELECT p.card_id FROM pool_cards p JOIN cards c ON c.id = p.card_id"  # noqa: S608
                " WHERE p.product_id = ? AND p.face_value = ? AND p.state = 'available'"
                " AND c.status = 'active' AND c.account_id IS NULL AND (c.expires_at IS NULL OR c.expires_at > ?)"
                f"{ON_SALE} ORDER BY p.card_id LIMIT ?{self._claim('p')})"
            )
            ctes.append(
                f"r{k} AS (UPDATE pool_cards SET state = 'reserved', order_id = (SELECT id FROM o)"  # noqa: S608
                f" WHERE card_id IN (SELECT card_id FROM c{k}) AND state = 'available'"
                f" AND (SELECT COUNT(*) FROM c{k}) = ? RETURNING card_id)"
            )
            params += [item.product_id, item.face_value, now, item.quantity, item.quantity]
            full.append(f"(SELECT COUNT(*) FROM c{k}) = {int(item.quantity)}")  # noqa: S608
        counts = [f"(SELECT COUNT(*) FROM c{k}), (SELECT COUNT(*) FROM r{k})" for k in range(len(new.items))]  # noqa: S608
        if complete is not None:
            # The answer the domain stores, {"order_id": <id>}, written by the statement
            # that learns the id.
            ctes.append(
                "u AS (UPDATE idempotency_keys SET response = convert_to('{\"order_id\": ' || (SELECT id FROM o)"  # noqa: S608
                " || '}', 'UTF8') WHERE scope = ? AND key = ? AND response IS NULL"
                f" AND {' AND '.join(full)} RETURNING 1)"
            )
            params += [complete[0], complete[1]]
            counts.append("(SELECT COUNT(*) FROM u)")
        row = self._one(f"WITH {', '.join(ctes)} SELECT o.*, {', '.join(counts)} FROM o", params)  # noqa: S608
        width = len(_ORDER.split(","))
        order = self._orders([row[:width]], {row[0]: list(new.items)})[0]
        got: list[int] = []
        for k, item in enumerate(new.items):
            found, reserved = int(row[width + 2 * k]), int(row[width + 2 * k + 1])
            if reserved != (item.quantity if found == item.quantity else 0):
                raise self._fail(StorageError(f"found {found} pool cards but reserved {reserved}"))
            got.append(found)
        if complete is not None:
            filled = all(g == i.quantity for g, i in zip(got, new.items, strict=True))
            if filled and int(row[-1]) != 1:
                raise self._fail(
                    NotFoundError(f"no open idempotency claim {complete[1]!r} for {complete[0]}")
                )
        return order, got

    def sell_order_cards(self, order_id: int, count: int) -> list[PoolCard] | None:
        """One statement: lock the order's reserved cards (pool and card rows), and sell them
        only if there are ``count`` and every one is sellable."""
        rows = self._all(
            f"WITH held AS (SELECT {_CARD_C} FROM pool_cards p JOIN cards c ON c.id = p.card_id"  # noqa: S608
            " WHERE p.order_id = ? AND p.state = 'reserved' FOR UPDATE),"
            " ok AS (SELECT COUNT(*) = ? AND COALESCE(BOOL_AND(status = 'active' AND account_id IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)), FALSE) AS fine FROM held),"
            " sold AS (UPDATE pool_cards p SET state = 'sold' FROM held WHERE p.card_id = held.id"
            " AND p.state = 'reserved' AND (SELECT fine FROM ok) RETURNING p.card_id)"
            " SELECT held.*, (SELECT COUNT(*) FROM sold) FROM held ORDER BY held.id",
            (order_id, count, self._ts(self.now())),
        )
        sold = int(rows[0][-1]) if rows else 0
        if sold == 0:
            return None
        if sold != count or len(rows) != count:
            raise self._fail(StorageError(f"order {order_id}: {sold} of {count} cards sold"))
        return [PoolCard(self._card(r[:-1]), PoolCardState.SOLD, order_id) for r in rows]

    def _insert_cards(self, rows: CardRows) -> None:
        packed = _copy_records(rows)
        self.cards_added += len(rows.serials)
        try:
            with self._conn.cursor() as cur, cur.copy(_CARD_COPY) as copy:
                if packed is not None:
                    copy.write(packed)
                    return
                copy.set_types(_CARD_TYPES)
                for row in rows.tuples(self._ts):
                    copy.write_row(row)
        except psycopg.Error as e:
            raise self._fail(_translate(e)) from e


class PostgresStorage:
    """Storage on a PostgreSQL database; any number of server processes may share it."""

    backend = "postgres"
    # Each read transaction is its own server process: one per core reads in parallel.
    read_parallelism = max(1, min(4, os.cpu_count() or 1))

    def __init__(self, dsn: str, *, clock: Clock = utcnow, min_size: int = 1, max_size: int = 32) -> None:
        self._clock = clock
        # autocommit: each unit of work opens its own explicit transaction block, and no
        # pooled connection ever sits "idle in transaction" between calls.
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "options": "-c timezone=UTC"},
            open=False,
            name="cardmint",
        )
        self._pool.open(wait=True, timeout=30)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise
        # Also chains what a process that died between its commit and the seal left behind.
        self._sealer = _Sealer(self.seal_journals)

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            # Two processes starting at once: the second waits here, then finds nothing to do.
            # (Racing CREATE TABLE IF NOT EXISTS alone can fail on the catalog's unique index.)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            applied = {int(v): c for v, c in rows}
            known = {m.version for m in MIGRATIONS}
            if applied and max(applied) > max(known):
                raise MigrationError(
                    f"the database has schema v{max(applied)}; this cardmint knows v{max(known)}"
                )
            for m in MIGRATIONS:
                if m.version in applied:
                    if applied[m.version] != m.checksum("postgres"):
                        raise MigrationError(f"migration {m.version} ({m.name}) changed after it was applied")
                    continue
                conn.execute(m.sql("postgres"))  # several statements: allowed without parameters
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (%s, %s, %s, %s)",
                    (m.version, m.name, m.checksum("postgres"), self._clock()),
                )

    def now(self) -> datetime:
        """The storage's clock (the one transactions judge expiry by)."""
        return self._clock()

    def schema_version(self) -> int:
        with self.read() as tx:
            return int(tx._one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0])

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        """A READ COMMITTED write transaction: commits on exit, rolls back on error."""
        with self._pool.connection() as conn:
            try:
                with conn.transaction() as block:
                    tx = _PgTx(conn, self._clock)
                    yield tx
                    if tx.failed is not None:
                        # Leaving the block normally would COMMIT an aborted transaction, which
                        # PostgreSQL silently turns into a rollback: make that loud.
                        raise psycopg.Rollback(block)
            except psycopg.Error as e:  # raised by COMMIT itself
                raise _translate(e) from e
            if tx.failed is not None:
                raise StorageError(f"transaction rolled back after an earlier error: {tx.failed}")
            if tx.cards_added >= _ANALYZE_MIN_CARDS:
                _refresh_statistics(conn, tx.cards_added)
        if tx.journaled:
            # The connection is back in the pool; wait (batched with every other committer)
            # until a seal that started after this commit has moved our journaled rows.
            self._sealer.seal_and_wait(tx.journaled)

    @contextmanager
    def read(self) -> Iterator[_PgTx]:
        """A read-only REPEATABLE READ snapshot: every query in it sees the same moment."""
        with self._pool.connection() as conn:
            # Set on the connection, the mode travels in the BEGIN itself: no extra round
            # trip for a SET TRANSACTION. Reset before the connection goes back to the pool.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.transaction():
                    yield _PgTx(conn, self._clock)
            finally:
                conn.isolation_level = None
                conn.read_only = None

    @contextmanager
    def read_shared(self, count: int) -> Iterator[list[_PgTx]]:
        """``count`` read-only transactions on one snapshot, for as many threads: the first
        exports its snapshot (pg_export_snapshot) and the others import it."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(self.read())
            txs = [first]
            if count > 1:
                snapshot = str(first._one("SELECT pg_export_snapshot()")[0])
                for _ in range(count - 1):
                    conn = stack.enter_context(self._pool.connection())
                    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    conn.read_only = True
                    stack.callback(setattr, conn, "read_only", None)
                    stack.callback(setattr, conn, "isolation_level", None)
                    stack.enter_context(conn.transaction())
                    conn.execute(
                        psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(snapshot))
                    )
                    txs.append(_PgTx(conn, self._clock))
            yield txs

    def probe(self, timeout: float) -> None:
        """The health probe's write (``storage_probe``), waiting at most ``timeout`` s for a
        connection: a database refusing connections fails the probe now, not after the
        pool's 30 s."""
        try:
            with self._pool.connection(timeout=timeout) as conn, conn.transaction():
                _PgTx(conn, self._clock).probe()
        except psycopg.Error as e:
            raise _translate(e) from e

    def run(self, work: Callable[[_PgTx], T], attempts: int = 5) -> T:
        """``work`` in a write transaction, retried on deadlock or serialization failure."""
        return run_retrying(self.transaction, work, attempts)

    def seal_journals(self, kinds: Collection[str] = JOURNALS, batch: int = 5_000) -> None:
        """Move every journaled row of the journals in ``kinds`` now (see ``_PgTx.seal``)."""
        while True:
            with self.transaction() as tx:
                more = tx.seal(kinds, batch)
            if not more:
                return

    def stats(self) -> dict[str, int]:
        """The connection pool's counters (psycopg_pool ``get_stats``: pool_size,
        pool_available, requests_waiting, ...), for the metrics; no lock, no query."""
        return self._pool.get_stats()

    def close(self) -> None:
        self._sealer.stop()
        self._pool.close()

    def __enter__(self) -> PostgresStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
