"""The in-memory index of issued codes, with each card's state, kept current from storage.

Bulk checks and typo corrections look codes up here instead of in the database. It holds
the digest of every card of a complete lot and, per index position, the card's state
(active, frozen, void) and expiry, so that a bulk check of millions of codes never asks the
database per code. ``refresh`` follows two feeds so that changes made by any server process
sharing the database show up: ``index_changes`` (lots minted or voided) and
``card_changes`` (one card frozen, unfrozen or voided). The kernel's index cannot remove
entries, so a voided lot triggers a full rebuild from storage.

Single-code operations (bind, redeem) never trust this: the database decides them.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from cardmint.kernel import Correction, CorrectionStatus, DigestIndex, Kernel
from cardmint.server.storage import CardState, IssuedCards, Storage

__all__ = ["DIGEST_SIZE", "IssuedIndex", "epoch_us"]

DIGEST_SIZE = 16  # the width storage keeps and the index is built with
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# (state, expires_us): one entry per index position, with spare capacity at the end.
_Arrays = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]


def epoch_us(at: datetime) -> int:
    return (at - _EPOCH) // _US


def _digests(cards: IssuedCards) -> npt.NDArray[np.uint8]:
    return np.frombuffer(cards.digests, np.uint8).reshape(-1, DIGEST_SIZE)


def _put(arrays: _Arrays, pos: npt.NDArray[np.int64], cards: IssuedCards) -> _Arrays:
    """Write ``cards``' state at ``pos`` (-1 = skip); a grown copy when they do not fit.

    In-place writes are seen by readers at once; a grown copy is seen once published.
    """
    keep = pos >= 0
    pos = pos[keep]
    state, expires = arrays
    if len(pos) and int(pos.max()) >= len(state):
        size = max(int(pos.max()) + 1, len(state) * 3 // 2, 1024)
        grown_state = np.zeros(size, dtype=np.uint8)
        grown_expires = np.zeros(size, dtype=np.int64)
        grown_state[: len(state)] = state
        grown_expires[: len(expires)] = expires
        state, expires = grown_state, grown_expires
    state[pos] = cards.states[keep]
    expires[pos] = cards.expires_us[keep]
    return state, expires


class IssuedIndex:
    def __init__(self, storage: Storage, kernel: Kernel) -> None:
        self._storage = storage
        self._kernel = kernel
        # Two locks: `_swap` only guards the (index, arrays, cursors) set and is held for a
        # moment, so lookups never wait on the database; `_refresh` serializes the slow
        # part, reading the feeds. Inserting into the live index is safe: the kernel's
        # index is thread-safe, and a position whose state is not written yet reads as
        # MISSING (the lot is simply not visible yet).
        self._swap = threading.Lock()
        self._refresh = threading.Lock()
        self._index = DigestIndex(DIGEST_SIZE, kernel=kernel)
        self._arrays: _Arrays = (np.zeros(0, np.uint8), np.zeros(0, np.int64))
        self._cursor = 0
        self._card_cursor = 0
        self._fresh_at = 0.0
        self.rebuild()

    @property
    def cursor(self) -> int:
        return self._cursor

    @property
    def card_cursor(self) -> int:
        return self._card_cursor

    def __len__(self) -> int:
        return len(self._index)

    def rebuild(self) -> None:
        """Reload every issued card; the only way to drop a voided lot's codes."""
        with self._refresh:
            self._rebuild()

    def _rebuild(self) -> None:
        index = DigestIndex(DIGEST_SIZE, kernel=self._kernel)
        arrays: _Arrays = (np.zeros(0, np.uint8), np.zeros(0, np.int64))
        with self._storage.read() as tx:  # one snapshot: cursors, digests and states agree
            cursor, card_cursor = tx.index_cursor(), tx.card_cursor()
            for cards in tx.issued_cards():
                arrays = _put(arrays, index.insert(_digests(cards)), cards)
        with self._swap:
            self._index, self._arrays = index, arrays
            self._cursor, self._card_cursor = cursor, card_cursor
        self._fresh_at = time.monotonic()

    def refresh(self, max_age: float = 0.0) -> None:
        """Apply every lot and card change since the last look (two cheap queries when idle).

        ``max_age`` > 0 skips the queries when the last refresh is that recent, and skips
        them too while another thread is refreshing: for per-request paths (binding), where
        a suggestion a second stale is harmless and the database decides the bind anyway.
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
        cursor, card_cursor = self._cursor, self._card_cursor
        adds: list[IssuedCards] = []
        changed: list[IssuedCards] = []
        removed = False
        with self._storage.read() as tx:  # one snapshot for both feeds
            while not removed and (changes := tx.index_changes(cursor)):
                removed = any(c.change == "remove" for c in changes)
                for change in changes:
                    if not removed:
                        adds.extend(tx.issued_cards(change.lot_id))
                    cursor = change.seq
            if not removed:
                while len(batch := tx.card_changes(card_cursor)):
                    changed.append(batch)
                    card_cursor = batch.seq
        if removed:
            self._rebuild()
            return
        # Callers hold `_refresh`, so no rebuild can swap the index out from under us.
        index, arrays = self._index, self._arrays
        for cards in adds:
            arrays = _put(arrays, index.insert(_digests(cards)), cards)
        for cards in changed:  # each row carries the card's state now: order is harmless
            # insert, not lookup: a card ``keys rehash`` re-digested arrives here with its new
            # digest (a digest already indexed keeps its position). Its old digest stays in
            # the index, stale, but lookups try the newest key first, which finds the card.
            arrays = _put(arrays, index.insert(_digests(cards)), cards)
        with self._swap:
            self._arrays = arrays
            self._cursor, self._card_cursor = cursor, card_cursor
        self._fresh_at = time.monotonic()

    def states(self, digests: npt.NDArray[np.uint8], now: datetime) -> npt.NDArray[np.uint8]:
        """One ``CardState`` byte per digest: MISSING when not issued, EXPIRED judged at ``now``."""
        with self._swap:
            index, (state, expires) = self._index, self._arrays
        pos = index.lookup(digests)
        out = np.zeros(len(pos), dtype=np.uint8)
        known = (pos >= 0) & (pos < len(state))
        at = pos[known]
        found = state[at]
        expiry = expires[at]
        lapsed = (found == CardState.ACTIVE) & (expiry > 0) & (expiry <= epoch_us(now))
        found[lapsed] = CardState.EXPIRED
        out[known] = found
        return out

    def correct_many(self, raws: list[str | bytes], key: bytes, length: int) -> list[Correction]:
        with self._swap:
            index = self._index
        return self._kernel.correct_many(raws, index, key, length)

    def states_any(
        self, codes: npt.NDArray[np.bytes_], keys: list[bytes], now: datetime
    ) -> npt.NDArray[np.uint8]:
        """``states`` of canonical ``codes`` digested under several keys, newest key first:
        each code's state under the first key that finds it (a digest-key rotation's
        window). Only the codes not found yet are digested under the next key."""
        out = self.states(self._kernel.digest(codes, keys[0]), now)
        for key in keys[1:]:
            missing = np.flatnonzero(out == CardState.MISSING)
            if not len(missing):
                break
            out[missing] = self.states(self._kernel.digest(codes[missing], key), now)
        return out

    def correct_any(self, raws: list[str | bytes], keys: list[bytes], length: int) -> list[Correction]:
        """``correct_many`` under several digest keys, newest first: a correction found
        under any key counts (codes digested with a previous key are still corrected)."""
        results = self.correct_many(raws, keys[0], length)
        for key in keys[1:]:
            todo = [i for i, c in enumerate(results) if c.status is not CorrectionStatus.CORRECTED]
            if not todo:
                break
            again = self.correct_many([raws[i] for i in todo], key, length)
            for i, c in zip(todo, again, strict=True):
                if c.status is CorrectionStatus.CORRECTED:
                    results[i] = c
        return results
