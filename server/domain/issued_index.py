"""The in-memory index of issued codes' digests, kept current from the storage's feed.

Bulk checks and typo corrections look codes up here instead of in the database. It holds
the digests of every card of a complete lot; ``refresh`` follows ``index_changes`` so lots
minted or voided by any server process sharing the database show up. The kernel's index
cannot remove entries, so a voided lot triggers a full rebuild from storage.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt
from cardmint.kernel import Correction, DigestIndex, Kernel
from cardmint.server.storage import Storage

__all__ = ["DIGEST_SIZE", "IssuedIndex"]

DIGEST_SIZE = 16  # the width storage keeps and the index is built with


class IssuedIndex:
    def __init__(self, storage: Storage, kernel: Kernel) -> None:
        self._storage = storage
        self._kernel = kernel
        # Two locks: `_swap` only guards the (index, cursor) pair and is held for a moment, so
        # lookups never wait on the database; `_refresh` serializes the slow part, reading
        # the feed. Inserting into the live index is safe: the kernel's index is thread-safe.
        self._swap = threading.Lock()
        self._refresh = threading.Lock()
        self._index = DigestIndex(DIGEST_SIZE, kernel=kernel)
        self._cursor = 0
        self._fresh_at = 0.0
        self.rebuild()

    @property
    def cursor(self) -> int:
        return self._cursor

    def __len__(self) -> int:
        return len(self._index)

    def rebuild(self) -> None:
        """Reload every issued digest; the only way to drop a voided lot's codes."""
        with self._refresh:
            self._rebuild()

    def _rebuild(self) -> None:
        index = DigestIndex(DIGEST_SIZE, kernel=self._kernel)
        with self._storage.read() as tx:  # one snapshot: cursor and digests agree
            cursor = tx.index_cursor()
            for chunk in tx.issued_digests():
                index.insert(np.frombuffer(chunk, np.uint8).reshape(-1, DIGEST_SIZE))
        with self._swap:
            self._index, self._cursor = index, cursor
        self._fresh_at = time.monotonic()

    def refresh(self, max_age: float = 0.0) -> None:
        """Apply every lot added or removed since the last look (one cheap query when idle).

        ``max_age`` > 0 skips the query when the last refresh is that recent, and skips it
        too while another thread is refreshing: for per-request paths (binding), where a
        suggestion a second stale is harmless and the database decides the bind anyway.
        """
        if max_age > 0:
            if time.monotonic() - self._fresh_at < max_age:
                return
            if not self._refresh.acquire(blocking=False):
                return
        else:
            self._refresh.acquire()
        try:
            self._apply_changes()
        finally:
            self._refresh.release()

    def _apply_changes(self) -> None:
        cursor = self._cursor
        adds: list[npt.NDArray[np.uint8]] = []
        removed = False
        with self._storage.read() as tx:
            while not removed and (changes := tx.index_changes(cursor)):
                removed = any(c.change == "remove" for c in changes)
                for change in changes:
                    if not removed:
                        for chunk in tx.lot_digests(change.lot_id):
                            adds.append(np.frombuffer(chunk, np.uint8).reshape(-1, DIGEST_SIZE))
                    cursor = change.seq
        if removed:
            self._rebuild()
            return
        # Callers hold `_refresh`, so no rebuild can swap the index out from under us.
        for digests in adds:
            self._index.insert(digests)
        with self._swap:
            self._cursor = cursor
        self._fresh_at = time.monotonic()

    def lookup(self, digests: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        with self._swap:
            index = self._index
        return index.lookup(digests) >= 0

    def correct_many(self, raws: list[str | bytes], key: bytes, length: int) -> list[Correction]:
        with self._swap:
            index = self._index
        return self._kernel.correct_many(raws, index, key, length)
