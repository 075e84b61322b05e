"""Verifying the audit chain: every event's hash covers the previous event's hash.

``hash = BLAKE3(prev_hash ‖ u64le id ‖ i64le at_µs ‖ for actor, action, subject, detail:
u32le length ‖ utf-8)``, starting from 32 zero bytes (docs/storage.md). Ids are 1, 2, 3, …
with no gaps. Walking the chain finds an edited event (its hash no longer matches), a
deleted one (a gap, or a prev_hash that no longer links), and reordered ones (the hash
covers the id). A chain cut short at its end still links: for that, compare the head
(event count and last hash) with one recorded elsewhere (``expect_events``/``expect_head``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cardmint.server.storage import GENESIS_HASH, Storage, audit_hash_us

__all__ = ["AuditVerdict", "verify_chain", "verify_storage"]

PAGE = 20_000


@dataclass(frozen=True)
class AuditVerdict:
    ok: bool
    events: int  # events that checked out, from the first
    head_hash: bytes  # hash of the last event that checked out (GENESIS when none)
    first_bad: int | None = None  # id of the first broken event (or where one is missing)
    problem: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok: {self.events} events, head {self.head_hash.hex()}"
        return f"BROKEN at event {self.first_bad}: {self.problem} ({self.events} events before it check out)"


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
    if expect_events is not None and count < expect_events:
        return AuditVerdict(
            False, count, prev, count + 1, f"the chain ends at {count}, the anchor says {expect_events}"
        )
    if (
        expect_head is not None
        and expect_events is not None
        and count == expect_events
        and prev != expect_head
    ):
        return AuditVerdict(False, count, prev, count, "the last event differs from the anchor")
    return AuditVerdict(True, count, prev)


def verify_storage(
    storage: Storage, *, expect_events: int | None = None, expect_head: bytes | None = None
) -> AuditVerdict:
    """Walk the whole chain in one read snapshot (appends meanwhile are not seen)."""
    with storage.read() as tx:

        def pages() -> Iterable[Sequence[tuple[Any, ...]]]:
            after = 0
            while page := tx.audit_rows(after, PAGE):
                yield page
                after = int(page[-1][0])

        return verify_chain(pages(), expect_events=expect_events, expect_head=expect_head)
