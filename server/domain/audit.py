"""Verifying the audit chain: every event's hash covers the previous event's hash.

``hash = BLAKE3(prev_hash ‖ u64le id ‖ i64le at_µs ‖ for actor, action, subject, detail:
u32le length ‖ utf-8)``, starting from 32 zero bytes (docs/storage.md). Ids are 1, 2, 3, …
with no gaps. Walking the chain finds an edited event (its hash no longer matches), a
deleted one (a gap, or a prev_hash that no longer links), and reordered ones (the hash
covers the id). A chain cut short at its end still links: for that, compare the head
(event count and last hash) with one recorded elsewhere (``expect_events``/``expect_head``).

``verify_storage`` reads the chain a page at a time as packed columns
(``Storage.audit_columns``), on reader threads ahead of the kernel's ``verify_audit``, which
checks each page: no Python object per event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cardmint.kernel import AuditCheck, AuditProblem, Kernel, Packed, get_kernel
from cardmint.server.storage import GENESIS_HASH, AuditColumns, Storage, audit_hash_us

__all__ = ["AuditVerdict", "verify_chain", "verify_storage"]

PAGE = 20_000  # rows per page of verify_chain's callers
COLUMNS_PAGE = 65_536  # events per page of verify_storage


@dataclass(frozen=True)
class AuditVerdict:
    ok: bool
    events: int  # events that checked out, from the first
    head_hash: bytes  # hash of the last event that checked out (GENESIS when none)
    first_bad: int | None = None  # id of the first broken event (or where one is missing)
    problem: str = ""
    # Events committed but still journaled, not yet on the chain (PostgreSQL; 0 on SQLite):
    # the verifier walks audit_log only.
    pending: int = 0

    def line(self) -> str:
        tail = f"; {self.pending} journaled, not yet chained" if self.pending else ""
        if self.ok:
            return f"ok: {self.events} events, head {self.head_hash.hex()}{tail}"
        return (
            f"BROKEN at event {self.first_bad}: {self.problem}"
            f" ({self.events} events before it check out){tail}"
        )


def verify_chain(
    pages: Iterable[Sequence[tuple[Any, ...]]],
    *,
    expect_events: int | None = None,
    expect_head: bytes | None = None,
) -> AuditVerdict:
    """``pages`` of raw rows (id, at_µs, actor, action, subject, detail, prev_hash, hash)."""
    count, prev = 0, GENESIS_HASH
    for page in pages:
        for seq, at_us, actor, action, subject, detail, prev_hash, digest in page:
            want = count + 1
            if seq != want:
                why = f"event {want} is missing (deleted?)" if seq > want else f"event {seq} is out of order"
                return AuditVerdict(False, count, prev, want, why)
            if bytes(prev_hash) != prev:
                return AuditVerdict(False, count, prev, seq, "does not link to the event before it")
            if audit_hash_us(prev, seq, at_us, actor, action, subject, detail) != bytes(digest):
                return AuditVerdict(False, count, prev, seq, "its content does not match its hash (edited?)")
            count, prev = seq, bytes(digest)
    return _anchored(AuditVerdict(True, count, prev), expect_events, expect_head)


def _anchored(verdict: AuditVerdict, expect_events: int | None, expect_head: bytes | None) -> AuditVerdict:
    """An intact chain's verdict held against a recorded anchor."""
    count, prev, pending = verdict.events, verdict.head_hash, verdict.pending
    if not verdict.ok:
        return verdict
    if expect_events is not None and count < expect_events:
        return AuditVerdict(
            False,
            count,
            prev,
            count + 1,
            f"the chain ends at {count}, the anchor says {expect_events}",
            pending,
        )
    if (
        expect_head is not None
        and expect_events is not None
        and count == expect_events
        and prev != expect_head
    ):
        return AuditVerdict(False, count, prev, count, "the last event differs from the anchor", pending)
    return verdict


def _broken(check: AuditCheck, page: AuditColumns, start: int, pending: int) -> AuditVerdict:
    """The verdict for a page whose event ``check.first_bad`` fails, ``start`` events before it."""
    bad = check.first_bad if check.first_bad is not None else check.checked
    count, want = start + check.checked, start + check.checked + 1
    if check.problem == AuditProblem.MISSING:
        why = f"event {want} is missing (deleted?)"
    elif check.problem == AuditProblem.OUT_OF_ORDER:
        why = f"event {int(page.ids[bad])} is out of order"
    elif check.problem == AuditProblem.UNLINKED:
        why = "does not link to the event before it"
    else:
        why = "its content does not match its hash (edited?)"
    return AuditVerdict(False, count, check.head, want, why, pending)


def verify_storage(
    storage: Storage,
    *,
    expect_events: int | None = None,
    expect_head: bytes | None = None,
    kernel: Kernel | None = None,
    page_size: int = COLUMNS_PAGE,
    readers: int | None = None,
) -> AuditVerdict:
    """Walk the whole chain in one read snapshot (appends meanwhile are not seen).

    The chain is cut into id ranges of ``page_size`` (pages), read as columns by
    ``readers`` threads (default: ``storage.read_parallelism``), each on its own transaction
    of the one snapshot (``Storage.read_shared``), ahead of the kernel, which checks the
    pages in order on this thread, each from the count and head the pages before it left.
    So the first broken event named, and the count and head before it, are those of a walk
    row by row.
    """
    k = kernel or get_kernel()
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    workers = max(1, readers or storage.read_parallelism)

    with storage.read_shared(workers) as txs:
        pending = txs[0].audit_pending()
        pages = -(-txs[0].audit_last_id() // page_size)
        # One single-thread executor per transaction: a transaction is never used by two
        # threads, and page p goes to transaction p % readers.
        pools = [ThreadPoolExecutor(1, thread_name_prefix=f"audit-read-{i}") for i in range(len(txs))]
        try:
            flight: deque[Future[AuditColumns]] = deque()
            submitted, count, head = 0, 0, GENESIS_HASH
            for number in range(pages):
                while submitted < pages and submitted <= number + 2 * len(txs):
                    slot = submitted % len(txs)
                    flight.append(
                        pools[slot].submit(txs[slot].audit_columns, submitted * page_size, page_size)
                    )
                    submitted += 1
                page = flight.popleft().result()
                if not len(page):
                    continue  # no event in this range: the next page's first id says so
                result = k.verify_audit(
                    page.ids,
                    page.at_us,
                    Packed(page.text, page.offsets),
                    page.prev_hashes,
                    page.hashes,
                    prev_head=head,
                    start=count,
                )
                if not result.ok:
                    for rest in flight:
                        rest.cancel()
                    return _broken(result, page, count, pending)
                count, head = count + len(page), page.hashes[-32:]
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)
        verdict = AuditVerdict(True, count, bytes(head), pending=pending)
    return _anchored(verdict, expect_events, expect_head)
