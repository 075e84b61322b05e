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
from cardmint.server.storage import CardBatch, LotStatus, Storage

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
    assert card is not None
    opened = kernel.open(
        np.frombuffer(card.sealed, np.uint8).reshape(1, -1),
        card.digest and np.frombuffer(card.digest, np.uint8).reshape(1, -1),
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
