"""Lots (all or nothing, plaintext once, void) and the bulk check against issued codes."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from cardmint.kernel import Packed, get_kernel
from cardmint.server.domain import (
    CheckStatus,
    Domain,
    DomainConfig,
    ExportNeedsAdmin,
    IdempotencyKeyReused,
    InvalidArgument,
    Keyring,
    Lot,
    LotNotFound,
    LotNotReady,
    LotStatus,
    LotVoid,
    PermissionDenied,
    ProductNotFound,
)
from cardmint.server.domain.keys import STATUS_CODE
from cardmint.server.domain.lots import _prefetched
from cardmint.server.storage import CardStatus, Storage

from .conftest import Callers, FakeClock, MintedLot
from .test_cards import _typo, _unknown


def test_lot_mints_stores_and_reports_progress(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    make_lot(1)  # creates the product
    seen: list[tuple[int, int]] = []
    lot = domain.lots.create_lot(
        who.operator, sku="GC-500", count=20, face_value=1000, progress=lambda d, t: seen.append((d, t))
    )
    assert lot.status is LotStatus.COMPLETE and lot.count == 20 and lot.currency == "CNY"
    assert seen == [(7, 20), (14, 20), (20, 20)]  # lot_chunk=7 in the fixture
    assert domain.lots.get_lot(who.admin, lot.id) == lot
    with pytest.raises(LotNotFound):
        domain.lots.get_lot(who.admin, 10**6)
    codes = [c for chunk in domain.lots.stream_lot(who.operator, lot.id) for c in chunk.codes]
    assert len(codes) == len(set(codes)) == 20
    assert all(get_kernel().check_one(c, 16)[0] == 0 for c in codes)
    serials = [s for chunk in domain.lots.stream_lot(who.admin, lot.id) for s in chunk.serials]
    assert len(set(serials)) == 20 and get_kernel().validate_serials([s.encode() for s in serials]).all()
    with pytest.raises(InvalidArgument) as bad:
        domain.lots.create_lot(who.operator, sku="GC-500", count=5, face_value=700)
    assert bad.value.violations[0].field == "face_value"
    with pytest.raises(ProductNotFound):
        domain.lots.create_lot(who.operator, sku="nope", count=5, face_value=100)
    with pytest.raises(PermissionDenied):
        domain.lots.create_lot(who.merchant, sku="GC-500", count=5, face_value=100)


def test_plaintext_once_then_admin_only_and_audited(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    minted = make_lot(4)  # the fixture already streamed it once, as operator
    with pytest.raises(ExportNeedsAdmin):
        domain.lots.stream_lot(who.operator, minted.lot.id)
    again = {
        s: c
        for ch in domain.lots.stream_lot(who.admin, minted.lot.id)
        for s, c in zip(ch.serials, ch.codes, strict=True)
    }
    assert again == minted.cards
    with domain.storage.read() as tx:
        exports = [e for e in tx.audit_entries() if e.action == "lot.export"]
    assert [e.detail for e in exports] == ['{"count": 4, "first": true}', '{"count": 4, "first": false}']
    assert exports[1].actor == who.admin.actor
    with pytest.raises(LotNotFound):
        domain.lots.stream_lot(who.admin, 999)


def test_lot_is_all_or_nothing(domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]) -> None:
    make_lot(1)

    def boom(done: int, total: int) -> None:
        if done >= 14:
            raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError):
        domain.lots.create_lot(who.operator, sku="GC-500", count=20, face_value=100, progress=boom)
    lots = domain.lots.list_lots(who.admin, sku="GC-500")
    failed = lots[-1]
    assert failed.status is LotStatus.VOID
    with domain.storage.read() as tx:
        assert tx.count_lot_cards(failed.id) == 0
    with pytest.raises(LotVoid):
        domain.lots.stream_lot(who.admin, failed.id)


def test_lot_expiry_is_fixed_at_creation(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage, clock: FakeClock
) -> None:
    minted = make_lot(9)  # the product is valid 365 days
    lot = minted.lot
    assert lot.expires_at == lot.created_at + timedelta(days=365)
    clock.advance(days=3)  # a later read reports the same expiry, fixed when the lot was made
    assert domain.lots.get_lot(who.admin, lot.id).expires_at == lot.expires_at
    with storage.read() as tx:
        assert {c.expires_at for c in tx.lot_cards(lot.id)} == {lot.expires_at}
    forever = make_lot(2, sku="GC-FOREVER", validity_days=None).lot
    assert forever.expires_at is None
    with storage.read() as tx:
        assert {c.expires_at for c in tx.lot_cards(forever.id)} == {None}


def test_lot_numbered_in_digest_order_and_exported_in_serial_order(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage
) -> None:
    minted = make_lot(20)  # lot_chunk=7: chunks of 7, 7, 6; stream_chunk=5
    with storage.read() as tx:
        cards = tx.lot_cards(minted.lot.id)
    # Stored in serial order, and within each minted chunk the serials follow the digests.
    assert [c.serial for c in cards] == sorted(c.serial for c in cards)
    for lo in range(0, 20, 7):
        digests = [c.digest[:8] for c in cards[lo : lo + 7]]
        assert digests == sorted(digests)
    # The export hands them out in that same order, each serial with its own code.
    assert list(minted.cards) == [c.serial for c in cards]
    kernel, keys = get_kernel(), domain.keyring
    for c in cards:
        code = minted.cards[c.serial].replace("-", "").encode()
        assert kernel.digest([code], keys.digest_key)[0].tobytes() == c.digest
    chunks = list(domain.lots.stream_lot(who.admin, minted.lot.id))
    assert [len(ch) for ch in chunks] == [5, 5, 5, 5]
    assert all(ch.serial_array.dtype.kind == ch.code_array.dtype.kind == "S" for ch in chunks)
    assert chunks[0].code_array.dtype.itemsize == 19 and chunks[0].codes[0].count("-") == 3


def test_a_failed_fill_stops_its_minting_thread(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    make_lot(1)

    def boom(done: int, total: int) -> None:
        raise RuntimeError("the caller went away")

    with pytest.raises(RuntimeError):
        domain.lots.create_lot(who.operator, sku="GC-500", count=50, face_value=100, progress=boom)
    assert not [t for t in threading.enumerate() if t.name == "cardmint-lot"]


def test_prefetched_hands_over_items_errors_and_stops() -> None:
    assert list(_prefetched(iter(range(10)), depth=2)) == list(range(10))

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("minting failed")

    got: list[int] = []
    with pytest.raises(ValueError, match="minting failed"):
        got.extend(_prefetched(failing()))
    assert got == [1, 2]

    produced: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            for i in itertools.count():
                produced.append(i)
                yield i
        finally:
            closed.set()

    stream = _prefetched(endless())
    assert isinstance(stream, Generator)  # it can be closed
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the consumer stops: the worker stops too, a chunk or two ahead at most
    assert closed.wait(5) and len(produced) <= 6


def test_stale_minting_lots_are_swept(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage, clock: FakeClock
) -> None:
    minted = make_lot(1)
    with storage.transaction() as tx:  # what a process killed between the two steps leaves
        stale = tx.create_lot(
            minted.lot.product_id, 5, 100, serial_prefix="x", serial_start=1, created_by="t"
        )
    clock.advance(hours=2)
    assert domain.abandon_stale_lots(3600) == [stale.id]


def test_check_statuses(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage, clock: FakeClock
) -> None:
    pairs = make_lot(6).pairs
    stranger = get_kernel().generate(1).codes[0].decode()
    with storage.transaction() as tx:
        frozen = tx.get_card_by_serial(pairs[1][0])
        void = tx.get_card_by_serial(pairs[2][0])
        assert frozen is not None and void is not None
        tx.set_card_status(frozen.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
        tx.set_card_status(void.id, CardStatus.VOID, only_from=[CardStatus.ACTIVE])
    inputs = [
        pairs[0][1],
        pairs[1][1],
        pairs[2][1],
        _unknown(pairs[3][1]),
        _typo(pairs[3][1]),
        _typo(stranger),
        "??",
        "",
    ]
    got = domain.keys.check(who.merchant, inputs)
    assert [r.status for r in got] == [
        CheckStatus.OK,
        CheckStatus.FROZEN,
        CheckStatus.VOID,
        CheckStatus.UNKNOWN,
        CheckStatus.CORRECTED,
        CheckStatus.BAD_CHECK,
        CheckStatus.MALFORMED,
        CheckStatus.MALFORMED,
    ]
    assert got[4].suggestion == pairs[3][1] and got[5].suggestion is None
    assert got[0].normalized == pairs[0][1].replace("-", "")
    clock.advance(days=400)
    assert domain.keys.check(who.merchant, [pairs[0][1]])[0].status is CheckStatus.EXPIRED
    with pytest.raises(PermissionDenied):
        domain.keys.check(who.alice, inputs)


def test_void_lot_leaves_the_index(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage
) -> None:
    keep, gone = make_lot(3), make_lot(3)
    # A second server process on the same database sees the void through the feed.
    other = Domain(storage, domain.keyring)
    assert len(other.index) == 6
    domain.lots.void_lot(who.admin, gone.lot.id)
    with pytest.raises(LotVoid):
        domain.lots.void_lot(who.admin, gone.lot.id)
    with pytest.raises(PermissionDenied):
        domain.lots.void_lot(who.operator, keep.lot.id)
    other.refresh_index()
    assert len(other.index) == 3
    typo = _typo(gone.pairs[0][1])
    assert domain.keys.check(who.merchant, [typo])[0].status is CheckStatus.BAD_CHECK
    third = make_lot(2)
    other.refresh_index()
    assert (
        len(other.index) == 5
        and other.keys.check(who.merchant, [third.pairs[0][1]])[0].status is CheckStatus.OK
    )


def test_generate(domain: Domain, who: Callers) -> None:
    codes = domain.keys.generate(who.merchant, 50, length=12, group=4, prefix="AB")
    assert len(set(codes)) == 50 and all(c.startswith("AB") and len(c) == 14 for c in codes)
    assert {r.status for r in domain.keys.check(who.merchant, codes, length=12)} == {CheckStatus.UNKNOWN}
    with pytest.raises(InvalidArgument):
        domain.keys.generate(who.merchant, 0)
    with pytest.raises(InvalidArgument):
        domain.keys.generate(who.merchant, 5, prefix="I*")


def test_no_plaintext_code_reaches_storage(
    domain: Domain,
    who: Callers,
    make_lot: Callable[..., MintedLot],
    backend: str,
    storage_url: str,
    tmp_path: Path,
) -> None:
    minted = make_lot(25)
    serial, code = minted.pairs[0]
    domain.cards.bind(who.alice, code)
    domain.balances.redeem(who.merchant, serial=serial, amount=5, currency="CNY", request_id="x")
    needles = [c.replace("-", "").encode() for c in minted.cards.values()]
    needles += [c.encode() for c in minted.cards.values()]
    if backend == "sqlite":
        blobs = [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("cardmint.db")]
    else:
        with psycopg.connect(storage_url.replace("postgresql://", "postgres://", 1)) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ]
            blobs = [
                "\n".join(str(r) for r in conn.execute(f'SELECT t::text FROM "{t}" t')).encode()
                for t in tables
            ]
    joined = b"\n".join(blobs)
    assert serial.encode() in joined  # the search does see what is stored in clear
    assert not [n for n in needles if n in joined]


def test_check_packed_is_the_same_check_as_arrays(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage, clock: FakeClock
) -> None:
    pairs = make_lot(6).pairs
    stranger = get_kernel().generate(1).codes[0].decode()
    with storage.transaction() as tx:
        frozen = tx.get_card_by_serial(pairs[1][0])
        assert frozen is not None
        tx.set_card_status(frozen.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
    inputs = [
        pairs[0][1].lower(),
        pairs[1][1],
        "",
        _typo(pairs[3][1]),
        _unknown(pairs[4][1]),
        _typo(stranger),
        "\uff21" * 3,
        pairs[0][1].replace("-", " "),
    ]
    packed = Packed.lines("\n".join(inputs).encode() + b"\n")
    got = domain.keys.check_packed(who.merchant, packed)
    assert got.status.dtype == np.uint8 and got.normalized.dtype == np.dtype("S16")
    assert got.results() == domain.keys.check(who.merchant, inputs)
    assert got.status.tolist() == [
        STATUS_CODE[s]
        for s in (
            CheckStatus.OK,
            CheckStatus.FROZEN,
            CheckStatus.MALFORMED,
            CheckStatus.CORRECTED,
            CheckStatus.UNKNOWN,
            CheckStatus.BAD_CHECK,
            CheckStatus.MALFORMED,
            CheckStatus.OK,
        )
    ]
    assert got.suggestions == {3: pairs[3][1]}
    assert got.normalized[2] == b"" and got.normalized[6] == b""
    assert got.normalized[0] == got.normalized[7] == pairs[0][1].replace("-", "").encode()
    clock.advance(days=400)  # frozen outranks expired
    late = domain.keys.check_packed(who.merchant, packed)
    expired, frozen_ = STATUS_CODE[CheckStatus.EXPIRED], STATUS_CODE[CheckStatus.FROZEN]
    assert [late.status[i] for i in (0, 1, 7)] == [expired, frozen_, expired]
    empty = domain.keys.check_packed(who.merchant, Packed(b"", np.zeros(1, np.int64)))
    assert len(empty) == 0 and empty.results() == []
    with pytest.raises(PermissionDenied):
        domain.keys.check_packed(who.alice, packed)
    with pytest.raises(InvalidArgument):
        domain.keys.check_packed(who.merchant, packed, length=3)


def test_a_repeat_on_another_server_waits_for_the_fill_instead_of_voiding_it(
    domain: Domain,
    who: Callers,
    make_lot: Callable[..., MintedLot],
    opener: Callable[[], Storage],
    keyring: Keyring,
    backend: str,
) -> None:
    """A client whose CreateLot timed out retries it on another server process (here: a
    second Domain on its own storage handle, sharing the database) while the first still
    fills the lot. PostgreSQL: the repeat sees the fill's hold on the lot and is told to
    retry (LotNotReady), and the first completes; SQLite: the repeat waits for the one
    writer, then answers the completed lot. Either way one lot, never a voided one."""
    make_lot(1)
    other = Domain(opener(), keyring, config=DomainConfig(lot_chunk=7, stream_chunk=5))
    entered, release = threading.Event(), threading.Event()

    def slow(done: int, total: int) -> None:
        entered.set()
        release.wait(30)

    made: list[object] = []
    minting = threading.Thread(
        target=lambda: made.append(
            domain.lots.create_lot(
                who.operator, sku="GC-500", count=9, face_value=100, progress=slow, request_id="x-1"
            )
        )
    )
    minting.start()
    repeats: list[object] = []
    try:
        assert entered.wait(30)

        def repeat() -> None:
            try:
                repeats.append(
                    other.lots.create_lot(
                        who.operator, sku="GC-500", count=9, face_value=100, request_id="x-1"
                    )
                )
            except LotNotReady as e:
                repeats.append(e)

        again = threading.Thread(target=repeat)
        again.start()
        if backend == "postgres":
            again.join(30)  # answered at once, while the fill still runs
            assert len(repeats) == 1 and isinstance(repeats[0], LotNotReady)
    finally:
        release.set()
        minting.join(30)
    again.join(30)
    assert len(made) == 1 and isinstance(made[0], Lot) and made[0].status is LotStatus.COMPLETE
    if backend == "sqlite":
        assert repeats == made  # it waited for the writer, then answered the lot
    final = other.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="x-1")
    assert final == made[0]
    lots = domain.lots.list_lots(who.admin, sku="GC-500")
    assert [lot.status for lot in lots if lot.id != lots[0].id] == [LotStatus.COMPLETE]  # none voided


def test_create_lot_with_a_request_id_completes_once(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    """A repeat of a completed request answers its lot; a repeat after a failed fill (a
    dead minter leaves a ``minting`` lot) voids that lot and mints anew; the same id with
    other parameters is refused; a repeat while the first still mints is told to retry."""
    make_lot(1)
    first = domain.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="r-1")
    again = domain.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="r-1")
    assert again == first and first.status is LotStatus.COMPLETE
    with pytest.raises(IdempotencyKeyReused):
        domain.lots.create_lot(who.operator, sku="GC-500", count=8, face_value=100, request_id="r-1")

    def boom(done: int, total: int) -> None:
        raise RuntimeError("the minter died")

    with pytest.raises(RuntimeError):
        domain.lots.create_lot(
            who.operator, sku="GC-500", count=9, face_value=100, progress=boom, request_id="r-2"
        )
    failed = domain.lots.list_lots(who.admin, sku="GC-500")[-1]
    assert failed.status is LotStatus.VOID
    # A dead process leaves its lot minting (nobody voided it): put it back that way.
    domain.storage.run(
        # The backends' private statement runner, on purpose (not part of UnitOfWork).
        lambda tx: tx._execute("UPDATE lots SET status = 'minting' WHERE id = ?", (failed.id,))  # type: ignore[attr-defined]
    )
    redone = domain.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="r-2")
    assert redone.id != failed.id and redone.status is LotStatus.COMPLETE
    assert domain.lots.get_lot(who.admin, failed.id).status is LotStatus.VOID
    assert (
        domain.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="r-2")
        == redone
    )

    entered, release = threading.Event(), threading.Event()

    def slow(done: int, total: int) -> None:
        entered.set()
        release.wait(30)

    minting = threading.Thread(
        target=domain.lots.create_lot,
        args=(who.operator,),
        kwargs={"sku": "GC-500", "count": 9, "face_value": 100, "progress": slow, "request_id": "r-3"},
    )
    minting.start()
    try:
        assert entered.wait(30)
        with pytest.raises(LotNotReady):
            domain.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="r-3")
    finally:
        release.set()
        minting.join(30)
    done = domain.lots.create_lot(who.operator, sku="GC-500", count=9, face_value=100, request_id="r-3")
    assert done.status is LotStatus.COMPLETE
    with domain.storage.read() as tx:
        assert tx.count_lot_cards(done.id) == 9
