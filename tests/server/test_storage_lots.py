"""Lots at scale: a 200,000-card lot in one go, a fill killed with SIGKILL, and no
plaintext code anywhere in the database files."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import cardmint.kernel as kernel
import numpy as np
import psycopg
import pytest
from cardmint.server.storage import CardBatch, CardStatus, LotStatus, Storage, open_storage
from cardmint.server.storage._sql import CardRows
from cardmint.server.storage.migrations import MIGRATIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TIMINGS, FakeClock, PgServer
from .helpers import mint_lot, new_product, random_batch, start_lot

BULK = 200_000


def test_bulk_lot_of_200k_cards(storage: Storage, backend: str) -> None:
    product = new_product(storage)
    lot = start_lot(storage, product, BULK)
    batch = random_batch(BULK, lot.serial_prefix, lot.serial_start)
    t0 = time.perf_counter()
    with storage.transaction() as tx:
        for lo in range(0, BULK, 50_000):
            hi = lo + 50_000
            tx.add_cards(
                lot, CardBatch(batch.serials[lo:hi], batch.digests[lo:hi], batch.sealed[lo:hi]), None
            )
        done = tx.complete_lot(lot.id)
    elapsed = time.perf_counter() - t0
    assert done.status is LotStatus.COMPLETE
    with storage.read() as tx:
        assert tx.count_lot_cards(lot.id) == BULK
        t1 = time.perf_counter()
        loaded = b"".join(tx.issued_digests())
        load_time = time.perf_counter() - t1
        last = tx.get_card_by_digest(batch.digests[-1].tobytes())
    assert loaded == batch.digests.tobytes()
    assert last is not None and last.serial == batch.serials[-1] and last.sealed == batch.sealed[-1].tobytes()
    TIMINGS.append(
        f"{backend}: lot of {BULK:,} cards inserted+completed in {elapsed:.2f} s ({BULK / elapsed:,.0f} cards/s);"
        f" all digests read back in {load_time:.2f} s"
    )


_CHILD = textwrap.dedent(
    """
    import sys
    import time

    from cardmint.server.storage import open_storage
    from tests.server.helpers import random_batch

    url, lot_id = sys.argv[1], int(sys.argv[2])
    storage = open_storage(url)
    with storage.read() as tx:
        lot = tx.get_lot(lot_id)
    with storage.transaction() as tx:
        for lo in range(0, lot.count, 10_000):
            tx.add_cards(lot, random_batch(10_000, lot.serial_prefix, lot.serial_start + lo), None)
            if lo == 30_000:
                print("filling", flush=True)
        # Never reached in the test: the parent kills us mid-fill; if it is slow, we wait here,
        # still before complete_lot and COMMIT.
        time.sleep(120)
        tx.complete_lot(lot.id)
    """
)


def test_lot_fill_killed_with_sigkill_leaves_nothing(
    storage: Storage, storage_url: str, opener: Callable[[], Storage], clock: FakeClock
) -> None:
    product = new_product(storage)
    lot = start_lot(storage, product, BULK)
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, storage_url, str(lot.id)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as child:
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 60)
            line = child.stdout.readline() if ready else b""
            assert line == b"filling\n", "the child never started filling the lot"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()  # no-op after SIGKILL; stops the child if an assertion failed first
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # A fresh handle, as a restarted server would open: the lot exists but holds nothing.
    after = opener()
    with after.read() as tx:
        assert tx.get_lot(lot.id).status is LotStatus.MINTING  # type: ignore[union-attr]
        assert tx.count_lot_cards(lot.id) == 0
        assert list(tx.issued_digests()) == [] and tx.index_cursor() == 0
    with after.transaction() as tx:
        assert tx.abandon_stale_lots(older_than=clock() + timedelta(seconds=1)) == [lot.id]
    # The database is healthy afterwards: the write lock is free and a new lot fills.
    again, _ = mint_lot(after, 1000, product=product)
    with after.read() as tx:
        assert tx.get_lot(lot.id).status is LotStatus.VOID  # type: ignore[union-attr]
        assert tx.count_lot_cards(again.id) == 1000


def _logical_dump(url: str) -> bytes:
    """Every row of every table as COPY text and binary, for a server whose files we cannot read."""
    out = bytearray()
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        for (table,) in tables:
            for fmt in ("text", "binary"):
                with conn.cursor().copy(f'COPY "{table}" TO STDOUT (FORMAT {fmt})') as copy:
                    for block in copy:
                        out += block
    return bytes(out)


def _database_bytes(backend: str, tmp_path: Path, pg: PgServer | None, storage: Storage, url: str) -> bytes:
    if backend == "sqlite":
        files = sorted(tmp_path.glob("cardmint.db*"))
        assert files, "no database file to inspect"
        return b"".join(f.read_bytes() for f in files)
    assert pg is not None
    if pg.data_dir is None:  # an external server (CARDMINT_TEST_PG_DSN): check what SQL can see
        return _logical_dump(url)
    with storage.transaction() as tx:
        tx._execute("CHECKPOINT")  # type: ignore[attr-defined]
        oid = tx._one("SELECT oid FROM pg_database WHERE datname = current_database()")[0]  # type: ignore[attr-defined]
    # This test's database files, and the WAL, where every row passes on its way in.
    chunks = []
    for sub in (pg.data_dir / "base" / str(oid), pg.data_dir / "pg_wal"):
        for dirpath, _dirs, names in os.walk(sub):
            chunks += [(Path(dirpath) / n).read_bytes() for n in names if (Path(dirpath) / n).is_file()]
    return b"".join(chunks)


_RUN = re.compile(rb"[0-9A-Z-]{16,}")


def _codes_in(blob: bytes, wanted: set[bytes]) -> list[bytes]:
    """Every member of ``wanted`` (all 16 or 19 bytes long) that occurs in ``blob``.

    One regex pass finds the runs of code characters; only those are searched, so the scan
    stays linear in the size of the files however many codes there are.
    """
    found = []
    for m in _RUN.finditer(blob):
        run = m.group()
        for width in (16, 19):
            found += [run[i : i + width] for i in range(len(run) - width + 1) if run[i : i + width] in wanted]
    return found


def test_no_plaintext_codes_in_the_database_files(
    storage: Storage, backend: str, tmp_path: Path, request: pytest.FixtureRequest, storage_url: str
) -> None:
    """Real codes from the kernel, stored the way the server stores them, then grep the files."""
    n = 2000
    digest_key, seal_key = os.urandom(32), os.urandom(32)
    minted = kernel.generate(n, key=digest_key)
    assert minted.digests is not None
    sealed = kernel.seal(minted.codes, minted.digests, seal_key)
    product = new_product(storage)
    lot = start_lot(storage, product, n)
    serials = [f"{lot.serial_prefix}{lot.serial_start + i:09d}" for i in range(n)]
    with storage.transaction() as tx:
        tx.add_cards(lot, CardBatch(serials, minted.digests, sealed), None)
        tx.complete_lot(lot.id)
    with storage.read() as tx:  # the sealed copy is there and opens back to the code
        card = tx.get_card_by_serial(serials[5])
    assert card is not None and card.digest
    opened = kernel.open(
        np.frombuffer(card.sealed, np.uint8).reshape(1, -1),
        np.frombuffer(card.digest, np.uint8).reshape(1, -1),
        seal_key,
    )
    assert opened[0] == minted.codes[5]

    pg = request.getfixturevalue("pg_server") if backend == "postgres" else None
    blob = _database_bytes(backend, tmp_path, pg, storage, storage_url)
    wanted = set(minted.codes.tolist()) | set(kernel.display(minted.codes).tolist())
    leaked = _codes_in(blob, wanted)
    assert leaked == [], f"{len(leaked)} plaintext codes found in the {backend} files, e.g. {leaked[:3]}"
    # The search itself works: it finds a planted code, and the serials (in clear by design).
    planted = (
        blob[:1000]
        + b"\x00"
        + minted.codes[7]
        + b"\x01"
        + kernel.display(minted.codes[:1])[0]
        + blob[1000:2000]
    )
    assert sorted(_codes_in(planted, wanted)) == sorted(
        [minted.codes[7], kernel.display(minted.codes[:1])[0]]
    )
    assert all(s.encode() in blob for s in serials[:5])


# -- the column-wise lot paths: the bulk insert and the export


Exported = tuple[str, bytes, bytes, int]  # serial, digest, sealed, key id


def _export(storage: Storage, lot_id: int, limit: int) -> list[list[Exported]]:
    """Every chunk ``lot_card_batches`` hands out for the lot, paging as the domain does."""
    chunks: list[list[Exported]] = []
    after = 0
    while True:
        with storage.read() as tx:
            after, batches = tx.lot_card_batches(lot_id, after, limit)
        if not batches:
            return chunks
        chunk: list[Exported] = []
        for b in batches:
            serials = b.serials.tolist() if isinstance(b.serials, np.ndarray) else list(b.serials)
            assert len(serials) == len(b.digests) == len(b.sealed)
            chunk += [
                (s.decode() if isinstance(s, bytes) else s, d.tobytes(), x.tobytes(), b.key_id)
                for s, d, x in zip(serials, b.digests, b.sealed, strict=True)
            ]
        assert 1 <= len(chunk) <= limit
        assert [c[0] for c in chunk] == sorted(c[0] for c in chunk), "a chunk comes sorted by serial"
        chunks.append(chunk)


def _stored(storage: Storage, lot_id: int) -> list[Exported]:
    with storage.read() as tx:
        return [(c.serial, c.digest, c.sealed, c.key_id) for c in tx.lot_cards(lot_id, limit=10**6)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    fill=st.integers(1, 97),
    limit=st.integers(1, 70),
    rotate=st.booleans(),
)
def test_lot_export_is_every_card_once_in_serial_order(
    storage: Storage, sizes: list[int], fill: int, limit: int, rotate: bool
) -> None:
    """Lots filled in alternation (their ids interleave), optionally with a key rotation
    midway: paging through each lot hands out exactly its cards, in serial order."""
    product = new_product(storage)
    lots = [start_lot(storage, product, n) for n in sizes]
    batches = [
        random_batch(n, lot.serial_prefix, lot.serial_start) for n, lot in zip(sizes, lots, strict=True)
    ]
    with storage.transaction() as tx:
        for lo in range(0, max(sizes), fill):
            for lot, b in zip(lots, batches, strict=True):
                if lo < len(b):
                    hi = min(lo + fill, len(b))
                    key = 2 if rotate and lo >= len(b) // 2 else 1  # rotated: the 2nd half, key 2
                    tx.add_cards(
                        lot, CardBatch(b.serials[lo:hi], b.digests[lo:hi], b.sealed[lo:hi], key), None
                    )
        for lot in lots:
            tx.complete_lot(lot.id)
    for lot in lots:
        stored = _stored(storage, lot.id)
        exported = [c for chunk in _export(storage, lot.id, limit) for c in chunk]
        # Serials grow with ids within a lot, so serial order is also the stored order.
        assert exported == stored
        assert len(exported) == lot.count


def test_lot_export_of_unequal_widths_and_keys(storage: Storage) -> None:
    """Serials of differing lengths (never a minted lot's) and mixed keys in one chunk take
    the row-by-row path: still every card once, sorted by serial, runs split by key."""
    product = new_product(storage)
    lot = start_lot(storage, product, 6)
    b = random_batch(6, "", 0)
    serials = [f"w{lot.id}-{i}" for i in (3, 10, 1, 200, 2, 30)]
    with storage.transaction() as tx:
        tx.add_cards(lot, CardBatch(serials[:3], b.digests[:3], b.sealed[:3], key_id=1), None)
        tx.add_cards(lot, CardBatch(serials[3:], b.digests[3:], b.sealed[3:], key_id=4), None)
        tx.complete_lot(lot.id)
    with storage.read() as tx:
        _, batches = tx.lot_card_batches(lot.id, 0, 100)
    # sorted: -1, -10 (key 1), -2, -200 (key 4), -3 (key 1), -30 (key 4)
    assert [(len(x), x.key_id) for x in batches] == [(2, 1), (2, 4), (1, 1), (1, 4)]
    assert [c[0] for c in _export(storage, lot.id, 100)[0]] == sorted(serials)
    assert sorted(c for chunk in _export(storage, lot.id, 4) for c in chunk) == sorted(
        _stored(storage, lot.id)
    )


def test_bulk_insert_stores_every_column(storage: Storage, backend: str, clock: FakeClock) -> None:
    """The packed insert (SQLite: 256 cards a statement, a short last one; PostgreSQL: COPY)
    stores what the row-by-row insert would, serials as text, for a lot's S-array serials."""
    product = new_product(storage)
    n = 3 * 256 + 17
    lot = start_lot(storage, product, n, face=500)
    expires = clock() + timedelta(days=30, microseconds=7)
    serials = kernel.serials(lot.serial_prefix, lot.serial_start, n, 9)
    b = random_batch(n, "", 0)
    with storage.transaction() as tx:
        tx.add_cards(lot, CardBatch(serials, b.digests, b.sealed, key_id=3), expires)
        done = tx.complete_lot(lot.id)
    assert done.count == n
    with storage.read() as tx:
        cards = tx.lot_cards(lot.id, limit=n)
        by_serial = tx.get_card_by_serial(serials[-1].decode())  # found: the serial is text
        if backend == "sqlite":
            # The backend's private query helper, on purpose (not part of UnitOfWork).
            kinds = tx._all(  # type: ignore[attr-defined]
                "SELECT DISTINCT typeof(serial), typeof(digest) FROM cards WHERE lot_id = ?", (lot.id,)
            )
            assert [tuple(k) for k in kinds] == [("text", "blob")]
    assert [c.serial.encode() for c in cards] == serials.tolist()
    assert [c.digest for c in cards] == [d.tobytes() for d in b.digests]
    assert [c.sealed for c in cards] == [x.tobytes() for x in b.sealed]
    assert by_serial == cards[-1]
    for c in cards:
        assert (c.key_id, c.lot_id, c.product_id, c.face_value, c.balance, c.currency) == (
            3, lot.id, product.id, 500, 500, product.currency,
        )  # fmt: skip
        assert (c.status, c.expires_at, c.account_id, c.bound_at, c.transfers) == (
            CardStatus.ACTIVE, expires, None, None, 0,
        )  # fmt: skip
        assert c.created_at == clock()


def _rows(serials: object) -> CardRows:
    b = random_batch(2, "", 0)
    lot = object()
    return CardRows(serials, b.digests, b.sealed, 1, lot, None, None)  # type: ignore[arg-type]


def test_fixed_serials_only_for_full_width_ascii() -> None:
    fixed = _rows(["123", "456"]).fixed_serials()
    assert fixed is not None and fixed.dtype == np.dtype("S3") and fixed.tolist() == [b"123", b"456"]
    same = _rows(np.array([b"12", b"34"])).fixed_serials()
    assert same is not None and same.tolist() == [b"12", b"34"]
    assert _rows(["12", "345"]).fixed_serials() is None  # unequal lengths
    assert _rows(["1234", "56"]).fixed_serials() is None  # equal total, unequal lengths
    assert _rows(np.array([b"12", b"345"])).fixed_serials() is None  # NUL-padded in the array
    assert _rows(["é1", "é2"]).fixed_serials() is None  # not ASCII
    assert _rows(np.array(["12", "34"])).fixed_serials() is None  # a unicode array, not bytes
    assert _rows(np.array([b"", b""])).fixed_serials() is None
    assert _rows([]).fixed_serials() is None


def test_non_ascii_serials_take_the_row_by_row_insert(storage: Storage) -> None:
    product = new_product(storage)
    lot = start_lot(storage, product, 2)
    b = random_batch(2, "", 0)
    serials = [f"é{lot.id}a", f"é{lot.id}b"]
    with storage.transaction() as tx:
        tx.add_cards(lot, CardBatch(serials, b.digests, b.sealed), None)
        tx.complete_lot(lot.id)
    assert [c[0] for c in _stored(storage, lot.id)] == serials
    assert [c[0] for chunk in _export(storage, lot.id, 10) for c in chunk] == serials


# -- lots.expires_at (migration 3)


def test_lot_expiry_is_stored_and_returned(storage: Storage, clock: FakeClock) -> None:
    product = new_product(storage, validity_days=30)
    with storage.transaction() as tx:
        lot = tx.create_lot(
            product.id,
            2,
            100,
            serial_prefix="5",
            serial_start=1,
            created_by="t",
            valid_for=timedelta(days=30),
        )
        plain = tx.create_lot(product.id, 2, 100, serial_prefix="5", serial_start=3, created_by="t")
        with pytest.raises(ValueError, match="valid_for"):
            tx.create_lot(
                product.id, 2, 100, serial_prefix="5", serial_start=5, created_by="t", valid_for=-DAY
            )
    expires = lot.created_at + timedelta(days=30)
    assert (lot.expires_at, plain.expires_at) == (expires, None)
    clock.advance(days=1)
    with storage.transaction() as tx:
        tx.add_cards(lot, random_batch(2, "5", 1), lot.expires_at)
        assert tx.complete_lot(lot.id).expires_at == expires
    with storage.read() as tx:
        assert tx.get_lot(lot.id).expires_at == expires  # type: ignore[union-attr]
        assert [x.expires_at for x in tx.list_lots(product.id)] == [expires, None]
        assert {c.expires_at for c in tx.lot_cards(lot.id)} == {expires}
    with storage.transaction() as tx:
        assert tx.void_lot(lot.id).expires_at == expires


DAY = timedelta(days=1)


def test_migration_3_gives_old_lots_their_cards_expiry(
    storage_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v1 database: each lot takes the expiry its cards carry; NULL without cards or expiry."""
    import cardmint.server.storage.postgres as pg_mod
    import cardmint.server.storage.sqlite as sqlite_mod

    with monkeypatch.context() as m:
        for mod in (sqlite_mod, pg_mod):
            m.setattr(mod, "MIGRATIONS", MIGRATIONS[:1])
        old = open_storage(storage_url, clock=clock)
        expires = clock() + timedelta(days=90)
        with old.transaction() as tx:
            ts, run = tx._ts, tx._execute  # type: ignore[attr-defined]
            # A v1 product row (today's create_product writes columns v1 does not have).
            product_id = run(
                "INSERT INTO products (sku, name, currency, min_amount, max_amount, validity_days, delivery,"
                " code_length, created_at) VALUES ('OLD', 'old', 'CNY', 100, 1000, 90, 'auto', 16, ?) RETURNING id",
                (ts(clock()),),
            ).fetchone()[0]
            ids = []
            for i in range(3):
                row = run(
                    "INSERT INTO lots (product_id, count, face_value, currency, status, serial_prefix,"
                    " serial_start, created_at, created_by) VALUES (?, 1, 100, 'CNY', 'complete', '9', ?, ?, 't')"
                    " RETURNING id",
                    (product_id, i, ts(clock())),
                ).fetchone()
                ids.append(row[0])
            for lot_id, exp in ((ids[0], expires), (ids[1], None)):
                run(
                    "INSERT INTO cards (serial, digest, sealed, key_id, lot_id, product_id, face_value, balance,"
                    " currency, status, expires_at, created_at) VALUES (?, ?, ?, 1, ?, ?, 100, 100, 'CNY',"
                    " 'active', ?, ?)",
                    (f"m{lot_id}", os.urandom(16), os.urandom(44), lot_id, product_id,
                     None if exp is None else ts(exp), ts(clock())),
                )  # fmt: skip
        assert old.schema_version() == 1
        old.close()
    new = open_storage(storage_url, clock=clock)
    try:
        assert new.schema_version() == max(m.version for m in MIGRATIONS)
        with new.read() as tx:
            assert [tx.get_lot(i).expires_at for i in ids] == [expires, None, None]  # type: ignore[union-attr]
    finally:
        new.close()


# -- PostgreSQL: statistics after a large lot, and plans that stay bounded


def _plan(storage: Storage, sql: str, params: tuple[object, ...]) -> str:
    with storage.read() as tx:
        return "\n".join(r[0] for r in tx._all("EXPLAIN " + sql, params))  # type: ignore[attr-defined]


def test_postgres_analyzes_after_a_large_lot(pg_server: PgServer, clock: FakeClock) -> None:
    name = pg_server.create_database()
    storage = open_storage(pg_server.dsn_for(name), clock=clock)
    try:
        small, _ = mint_lot(storage, 500)
        with storage.read() as tx:
            before = tx._one("SELECT reltuples FROM pg_class WHERE relname = 'cards'")[0]  # type: ignore[attr-defined]
        assert before < 0  # never analyzed: a 500-card lot is below the threshold
        big, _ = mint_lot(storage, 12_000, chunk=5_000)
        with storage.read() as tx:
            after = tx._one("SELECT reltuples FROM pg_class WHERE relname = 'cards'")[0]  # type: ignore[attr-defined]
            probe = tx.NEXT_LOT_CARD  # type: ignore[attr-defined]
        assert after >= 12_000
        # The statistics now say the big lot is nearly the whole table: the probe that starts
        # an export page must still go through cards_lot, not walk the primary key.
        for lot in (small, big):
            plan = _plan(storage, probe.replace("?", "%s"), (lot.id, 0))
            assert "cards_lot" in plan and "cards_pkey" not in plan, plan
        assert [c[0] for c in _export(storage, big.id, 5_000)[0][:2]] == [
            c[0] for c in _stored(storage, big.id)[:2]
        ]
    finally:
        storage.close()
        pg_server.drop_database(name)
