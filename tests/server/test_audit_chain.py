"""The audit chain catches tampering, on SQLite and PostgreSQL: an edited, deleted or
reordered event is named; a chain cut short is caught against a recorded head."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from cardmint.server.domain.audit import verify_storage
from cardmint.server.storage import AuditEntry, Storage, UnitOfWork
from cardmint.server.storage import sqlite as sqlite_backend
from hypothesis import given
from hypothesis import strategies as st

N = 12


def _chain(storage: Storage) -> None:
    for i in range(N):

        def append(tx: UnitOfWork, i: int = i) -> AuditEntry:
            return tx.append_audit(f"token:{i % 3}", "card.bind", f"card:{i}", f'{{"n":{i}}}')

        storage.run(append)


def _tamper(storage: Storage, backend: str, *sql: str) -> None:
    """What someone with write access to the database (and the will to disable the
    append-only triggers) could do."""
    with storage.transaction() as tx:
        if backend == "sqlite":
            tx._execute("DROP TRIGGER IF EXISTS audit_no_update")  # type: ignore[attr-defined]
            tx._execute("DROP TRIGGER IF EXISTS audit_no_delete")  # type: ignore[attr-defined]
        else:
            tx._execute("ALTER TABLE audit_log DISABLE TRIGGER audit_append_only")  # type: ignore[attr-defined]
        for statement in sql:
            tx._execute(statement)  # type: ignore[attr-defined]


def test_an_intact_chain_verifies_and_gives_its_head(storage: Storage) -> None:
    empty = verify_storage(storage)
    assert empty.ok and empty.events == 0
    _chain(storage)
    v = verify_storage(storage)
    assert v.ok and v.events == N and len(v.head_hash) == 32 and "ok: 12 events" in v.line()
    assert verify_storage(storage, expect_events=N, expect_head=v.head_hash).ok


@pytest.mark.parametrize(
    ("sql", "first_bad", "why"),
    [
        (["UPDATE audit_log SET detail = '{\"n\":99}' WHERE id = 5"], 5, "does not match its hash"),
        (["UPDATE audit_log SET actor = 'token:0' WHERE id = 8"], 8, "does not match its hash"),
        (["DELETE FROM audit_log WHERE id = 7"], 7, "missing"),
        # Swap two events' positions (ids), keeping everything else: the hash covers the id.
        (
            [
                "UPDATE audit_log SET id = 1000 WHERE id = 3",
                "UPDATE audit_log SET id = 3 WHERE id = 4",
                "UPDATE audit_log SET id = 4 WHERE id = 1000",
            ],
            3,
            "does not link",
        ),
    ],
)
def test_tampering_is_named(storage: Storage, backend: str, sql: list[str], first_bad: int, why: str) -> None:
    _chain(storage)
    _tamper(storage, backend, *sql)
    v = verify_storage(storage)
    assert not v.ok and v.first_bad == first_bad and why in v.problem and v.events == first_bad - 1


def test_a_chain_cut_short_is_caught_against_its_anchor(storage: Storage, backend: str) -> None:
    _chain(storage)
    anchor = verify_storage(storage)
    _tamper(storage, backend, f"DELETE FROM audit_log WHERE id = {N}")
    assert verify_storage(storage).ok  # what is left still links...
    cut = verify_storage(storage, expect_events=anchor.events, expect_head=anchor.head_hash)
    assert not cut.ok and cut.first_bad == N and "anchor" in cut.problem  # ...but not to the anchor


def test_the_cli_exits_1_on_a_broken_chain(
    storage_url: str, opener: Callable[[], Storage], backend: str
) -> None:
    storage = opener()
    _chain(storage)
    cli = [sys.executable, "-m", "cardmint.cli", "audit", "verify", "--db", storage_url]
    good = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
    assert good.returncode == 0 and good.stdout.startswith(f"ok: {N} events"), good.stderr
    _tamper(storage, backend, "UPDATE audit_log SET subject = 'card:x' WHERE id = 2")
    bad = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and bad.stdout.startswith("BROKEN at event 2"), bad.stdout


@given(
    prev=st.binary(min_size=32, max_size=32),
    seq=st.integers(1, 2**63 - 1),
    at_us=st.integers(-(2**55), 2**55),  # about 1,140 years either side of 1970
    fields=st.lists(st.text(), min_size=4, max_size=4),
)
def test_the_fast_hash_is_the_chain_hash(prev: bytes, seq: int, at_us: int, fields: list[str]) -> None:
    from datetime import UTC, datetime, timedelta

    from cardmint.server.storage import audit_hash, audit_hash_us

    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_us)
    encodable = [f.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for f in fields]
    assert audit_hash(prev, seq, at, *encodable) == audit_hash_us(prev, seq, at_us, *encodable)


@pytest.mark.parametrize("backend", ["postgres"])
def test_journaled_events_a_dead_process_left_are_chained_by_the_next_to_start(
    opener: Callable[[], Storage],
) -> None:
    """PostgreSQL journals audit events and chains them right after the commit; a process
    killed between the two leaves them journaled, and the next process to start chains
    them, in journal order, with nothing lost or doubled."""
    first = opener()
    _chain(first)
    with first.transaction() as tx:  # committed, never sealed: what a kill -9 leaves
        for i in range(3):
            tx._execute(  # type: ignore[attr-defined]
                "INSERT INTO audit_pending (at, actor, action, subject, detail)"
                " VALUES (now(), 'token:9', 'card.bind', ?, '{}')",
                (f"card:late{i}",),
            )
        tx._execute(  # type: ignore[attr-defined]
            "INSERT INTO events_pending (at, kind, subject, detail) VALUES (now(), 'card.frozen', 'card:late', '{}')"
        )
    second = opener()  # its sealer's first round looks for leftovers
    deadline = time.monotonic() + 20
    while verify_storage(second).events < N + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    v = verify_storage(second)
    assert v.ok and v.events == N + 3
    with second.read() as tx:
        late = [e.subject for e in tx.audit_entries(after_id=N)]
        left = tx._one("SELECT count(*) FROM audit_pending")[0]  # type: ignore[attr-defined]
        events = [(e.id, e.subject) for e in tx.events_after(0)]
    assert late == ["card:late0", "card:late1", "card:late2"] and left == 0
    assert events == [(1, "card:late")]  # the outbox's journal too


def test_the_sealer_releases_its_waiters_when_a_round_fails() -> None:
    from cardmint.server.storage.postgres import _Sealer

    rounds: list[frozenset[str]] = []

    def seal(kinds: frozenset[str]) -> None:
        rounds.append(kinds)
        raise OSError("the database went away")

    sealer = _Sealer(seal)
    try:
        for _ in range(3):
            sealer.seal_and_wait({"audit"}, timeout=20)  # returns: the events wait in the journal
    finally:
        sealer.stop()
    assert 2 <= len(rounds) <= 5  # the startup round, then at least one per wait (batched)
    assert rounds[0] == {"audit", "events"}  # the first round looks at every journal
    assert all("audit" in r for r in rounds)  # a failed round's journals are tried again


# -- the column-wise verifier (packed pages, checked by the kernel) ------------------------


_NATIVE = sqlite_backend._native_audit


def _readers(backend: str) -> list[str]:
    """The ways this backend reads pages of columns: on SQLite, the native reader
    (server/storage/_sqlite_audit.pyx) and the SQL aggregate, its fallback without it."""
    assert _NATIVE is not None, "the native SQLite audit reader is not built"
    return ["native", "sql"] if backend == "sqlite" else ["sql"]


def _use(reader: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "sqlite":
        monkeypatch.setattr(sqlite_backend, "_native_audit", _NATIVE if reader == "native" else None)


def _row_walk(storage: Storage) -> object:
    """The verdict of the row-by-row walk (verify_chain over audit_rows), for comparison."""
    from cardmint.server.domain.audit import verify_chain

    with storage.read() as tx:
        return verify_chain([tx.audit_rows(0, 1_000)])


@pytest.mark.parametrize(
    "sql",
    [
        [],
        ["UPDATE audit_log SET detail = '{\"n\":99}' WHERE id = 5"],
        ["UPDATE audit_log SET action = 'card.frozen' WHERE id = 1"],
        ["UPDATE audit_log SET at = at + 1 WHERE id = 9"],
        ["UPDATE audit_log SET hash = randomblob(32) WHERE id = 6"],
        ["UPDATE audit_log SET prev_hash = hash WHERE id = 10"],
        ["DELETE FROM audit_log WHERE id = 6"],
        ["DELETE FROM audit_log WHERE id = 1"],
        ["DELETE FROM audit_log WHERE id IN (5, 6, 7, 8, 9, 10, 11)"],
        ["UPDATE audit_log SET id = 100 WHERE id = 6"],
        [
            "UPDATE audit_log SET id = 1000 WHERE id = 3",
            "UPDATE audit_log SET id = 3 WHERE id = 4",
            "UPDATE audit_log SET id = 4 WHERE id = 1000",
        ],
        ["UPDATE audit_log SET subject = 'card:' || char(31) || '7' WHERE id = 7"],
        ["UPDATE audit_log SET subject = 'carte:é' WHERE id = 8"],
    ],
)
@pytest.mark.parametrize(("page_size", "readers"), [(1, 3), (4, 1), (5, 2), (5, 3), (65_536, 2)])
def test_paged_verdicts_are_the_row_walks(
    storage: Storage,
    backend: str,
    sql: list[str],
    page_size: int,
    readers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever was tampered with, however the chain is paged and read by however many
    threads, the column-wise verifier names the same event, with the same count, head and
    reason, as the row-by-row walk."""
    _chain(storage)
    if backend == "postgres":
        sql = [
            s.replace("char(31)", "chr(31)")
            .replace("at + 1", "at + interval '1 microsecond'")
            .replace("randomblob(32)", "sha256(hash)")
            for s in sql
        ]
    if sql:
        _tamper(storage, backend, *sql)
    want = _row_walk(storage)
    for reader in _readers(backend):
        _use(reader, backend, monkeypatch)
        got = verify_storage(storage, page_size=page_size, readers=readers)
        assert got == want, reader
        assert got.ok == (not sql)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET actor = 7 WHERE id = 3",  # stored as the text '7' (STRICT)
        "UPDATE audit_log SET action = 'x' || char(0) || 'y' WHERE id = 10",  # a NUL inside
        "UPDATE audit_log SET detail = '' WHERE id = 11",
    ],
)
def test_sqlite_readers_agree_on_odd_text(
    storage: Storage, backend: str, sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text the server never writes (a number, a NUL, an empty field) is read the same by
    both page readers and the row walk: the verdict is the row walk's. (audit_log is a
    STRICT table with CHECKs on the hash sizes, so a value of another type cannot be
    stored there at all.)"""
    _chain(storage)
    with storage.read() as tx:
        pristine = tx.audit_rows(0, 1_000)
    _tamper(storage, backend, sql)
    want = _row_walk(storage)
    assert not want.ok  # type: ignore[attr-defined]
    for reader in _readers(backend):
        _use(reader, backend, monkeypatch)
        for page_size, readers in [(1, 1), (4, 2), (65_536, 2)]:
            assert verify_storage(storage, page_size=page_size, readers=readers) == want, (reader, page_size)
    with storage.read() as tx:
        assert tx.audit_rows(0, 1_000) != pristine  # the tampering really happened


def test_columns_hold_what_the_rows_hold(
    storage: Storage, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit_columns gives back the rows column-wise, non-ASCII text and a field holding
    the page separator (read row by row) included, by every page reader."""
    texts = ["plain", "non-ASCII: é ✓ 💳", "sep\x1finside", ""]
    for i, t in enumerate(texts * 3):

        def append(tx: UnitOfWork, i: int = i, t: str = t) -> AuditEntry:
            return tx.append_audit(f"token:{i}", t, f"card:{i}", t)

        storage.run(append)
    for reader in _readers(backend):
        _use(reader, backend, monkeypatch)
        _columns_match_rows(storage)


def _columns_match_rows(storage: Storage) -> None:
    with storage.read() as tx:
        rows = tx.audit_rows(0, 100)
        for page_size in (2, 4, 100):
            after, seen = 0, []
            while len(page := tx.audit_columns(after, page_size)):
                assert len(page) <= page_size
                for j in range(len(page)):
                    fields = [
                        bytes(page.text[page.offsets[4 * j + k] : page.offsets[4 * j + k + 1]]).decode()
                        for k in range(4)
                    ]
                    seen.append(
                        (
                            int(page.ids[j]),
                            int(page.at_us[j]),
                            *fields,
                            page.prev_hashes[32 * j : 32 * j + 32],
                            page.hashes[32 * j : 32 * j + 32],
                        )
                    )
                after = page.last_id
            assert seen == [(r[0], r[1], *r[2:6], bytes(r[6]), bytes(r[7])) for r in rows]
        assert tx.audit_pending() == 0
    assert verify_storage(storage, page_size=5) == _row_walk(storage)


@pytest.mark.parametrize("backend", ["postgres"])
def test_the_verdict_counts_journaled_events_not_yet_chained(storage: Storage) -> None:
    _chain(storage)
    with storage.transaction() as tx:  # committed, never sealed: what a kill -9 leaves
        for i in range(3):
            tx._execute(  # type: ignore[attr-defined]
                "INSERT INTO audit_pending (at, actor, action, subject, detail)"
                " VALUES (now(), 'token:9', 'card.bind', ?, '{}')",
                (f"card:late{i}",),
            )
    v = verify_storage(storage)
    assert v.ok and v.events == N and v.pending == 3
    assert v.line().endswith("; 3 journaled, not yet chained")
