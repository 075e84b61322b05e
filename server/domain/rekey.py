"""Digest-key rotation: which digest key new lots use, which keys codes are looked up
under, and re-digesting issued cards under the current key (docs/operations.md, "Key
rotation").

A card is found by the keyed BLAKE3 digest of its code. The database records every digest
key by id (``digest_keys``: a fingerprint, never the key) with a state:

* ``pending``: a server has the key; nothing uses it yet.
* ``current``: new lots are digested with it (exactly one key).
* ``previous``: a former current key; codes digested with it are still looked up.
* ``retired``: no card is digested with it any more; it is no longer looked up.

Lookups (bind, bulk bind, Keys.Check, corrections, blacklist import) try every key the
server holds that is not retired, the newest (highest id) first, so a code is found
whichever key its card was digested with: during the rotation window both work. ``rehash``
moves cards to the current key in bounded batches, from their sealed copies: open with the
old digest, digest under the new key, seal again (the digest is the sealed record's
associated data); the plaintext exists only in memory. Once no card uses a previous key,
``retire`` marks it retired and its file can be deleted.

Every server process sharing the database must hold the same key under the same id: a
server whose key's fingerprint differs from the recorded one refuses to start, and so does
one that lacks the current key or a previous one (it could not find those cards).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import blake3
import numpy as np
from cardmint.kernel import Kernel
from cardmint.server.storage import RehashRow, Storage, UnitOfWork

from .errors import InvalidArgument, KeyringError
from .keyring import Keyring

__all__ = ["DigestKeys", "KeyState", "RehashReport", "fingerprint"]

_FINGERPRINT_CONTEXT = b"cardmint digest key fingerprint v1"
PENDING, CURRENT, PREVIOUS, RETIRED = "pending", "current", "previous", "retired"


def fingerprint(key: bytes) -> bytes:
    """16 bytes that tell two keys apart and say nothing about either."""
    return blake3.blake3(_FINGERPRINT_CONTEXT, key=key).digest(16)


@dataclass(frozen=True)
class KeyState:
    """One digest key as ``keys status`` shows it: its state in the database, the cards
    digested with it, and whether this process holds it."""

    key_id: int
    state: str
    cards: int
    held: bool


@dataclass(frozen=True)
class RehashReport:
    current: int
    cards: int  # cards re-digested by this run
    batches: int
    remaining: dict[int, int]  # key id -> cards still digested with it (not the current one)


class DigestKeys:
    """This process's view of the digest keys; see the module docstring."""

    def __init__(self, storage: Storage, keyring: Keyring, kernel: Kernel) -> None:
        self._storage = storage
        self._keyring = keyring
        self._kernel = kernel
        self._lock = threading.Lock()
        self._retired: frozenset[int] = frozenset()
        self.sync()

    def sync(self) -> None:
        """Record this process's keys (the first one ever becomes current), check them
        against the database's, and learn which keys are retired."""
        ring = self._keyring

        def work(tx: UnitOfWork) -> list[tuple[int, str]]:
            known = {r.key_id: r for r in tx.digest_keys()}
            if not known:
                # The first start with rotation: cards digested so far used key 1 (lots
                # default to it), so it is current when this server has it.
                first = 1 if 1 in ring.digest_keys else min(ring.digest_keys)
                tx.add_digest_key(first, fingerprint(ring.digest_keys[first]), CURRENT)
                known = {r.key_id: r for r in tx.digest_keys()}
            for key_id, key in sorted(ring.digest_keys.items()):
                record = known.get(key_id)
                if record is None:
                    tx.add_digest_key(key_id, fingerprint(key), PENDING)
                elif record.fingerprint != fingerprint(key):
                    raise KeyringError(
                        f"digest key {key_id} ({ring.sources.get('digest', 'keyring')}) is not the key "
                        f"this database knows as digest key {key_id}: every server must hold the same keys"
                    )
            return [(r.key_id, r.state) for r in tx.digest_keys()]

        states = self._storage.run(work)
        missing = [k for k, s in states if s in (CURRENT, PREVIOUS) and k not in ring.digest_keys]
        if missing:
            raise KeyringError(
                f"this server lacks digest key(s) {', '.join(map(str, missing))} that the database "
                f"still uses (keys from {ring.sources.get('digest', 'the keyring')}): codes digested "
                "with them could not be found"
            )
        with self._lock:
            self._retired = frozenset(k for k, s in states if s == RETIRED)

    def lookup_keys(self) -> list[tuple[int, bytes]]:
        """The keys a code may be digested with, newest first (retired ones left out)."""
        retired = self._retired
        return [(i, k) for i, k in self._keyring.lookup_keys() if i not in retired]

    def digests_of(self, canon: bytes) -> list[bytes]:
        """The digest of one canonical code under every lookup key, newest key first."""
        return self.keyed_digests_of(canon)[1]

    def keyed_digests_of(self, canon: bytes) -> tuple[tuple[int, ...], list[bytes]]:
        """``digests_of`` with the ids of the keys it used, in the same order."""
        keys = self.lookup_keys()
        return tuple(i for i, _ in keys), [self._kernel.digest_one(canon, key) for _, key in keys]

    def key_ids(self) -> tuple[int, ...]:
        """The ids of the lookup keys, in ``digests_of``'s order."""
        return tuple(i for i, _ in self.lookup_keys())

    def current(self, tx: UnitOfWork) -> tuple[int, bytes]:
        """The key new cards are digested with (read in ``tx``), and its id."""
        for r in tx.digest_keys():
            if r.state == CURRENT:
                key = self._keyring.digest_keys.get(r.key_id)
                if key is None:
                    raise KeyringError(
                        f"digest key {r.key_id} is current but this server does not hold it: "
                        "install it on every server before rotating to it"
                    )
                return r.key_id, key
        raise KeyringError("the database names no current digest key")

    # -- administration (cardmint keys status | rotate | rehash | retire)

    def status(self) -> list[KeyState]:
        with self._storage.read() as tx:
            records = tx.digest_keys()
            usage = tx.digest_key_usage()
        return [
            KeyState(r.key_id, r.state, usage.get(r.key_id, 0), r.key_id in self._keyring.digest_keys)
            for r in records
        ]

    def rotate(self, actor: str, to: int | None = None) -> tuple[int, int]:
        """Make digest key ``to`` (default: the highest this server holds) current; the
        current one becomes previous and stays looked up. (old id, new id)."""
        target = max(self._keyring.digest_keys) if to is None else to
        if target not in self._keyring.digest_keys:
            raise InvalidArgument.of("to", f"this server holds no digest key {target}")

        def work(tx: UnitOfWork) -> tuple[int, int]:
            records = {r.key_id: r for r in tx.digest_keys()}
            old = next(r.key_id for r in records.values() if r.state == CURRENT)
            if target == old:
                raise InvalidArgument.of("to", f"digest key {target} is current already")
            if records[target].state == RETIRED:
                raise InvalidArgument.of("to", f"digest key {target} is retired; add a new key instead")
            tx.set_digest_key_state(old, PREVIOUS)  # first: at most one current at any time
            tx.set_digest_key_state(target, CURRENT)
            tx.append_audit(actor, "digest_key.rotate", f"digest_key:{target}", f'{{"previous": {old}}}')
            return old, target

        return self._storage.run(work)

    def rehash(
        self,
        actor: str,
        *,
        batch: int = 1000,
        max_batches: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> RehashReport:
        """Re-digest (and re-seal) every card not digested with the current key, ``batch``
        cards per transaction; stops after ``max_batches`` when given. Cards of lots still
        minting are left for a later run. Safe to run while the server serves, and twice
        at once (a card changed meanwhile is skipped, not overwritten)."""
        if not 1 <= batch <= 100_000:
            raise InvalidArgument.of("batch", "must be between 1 and 100000")
        kernel, ring = self._kernel, self._keyring
        after, total, batches = 0, 0, 0
        current = 0
        while max_batches is None or batches < max_batches:
            start = after

            def work(tx: UnitOfWork, start: int = start) -> tuple[int, int, int]:
                key_id, key = self.current(tx)
                rows = tx.rehash_candidates(key_id, start, batch)
                if not rows:
                    return key_id, 0, -1
                updates: list[tuple[RehashRow, bytes, bytes]] = []
                groups: dict[tuple[int, int, int, int], list[RehashRow]] = {}
                for r in rows:
                    groups.setdefault(
                        (r.digest_key_id, r.seal_key_id, len(r.sealed), len(r.digest)), []
                    ).append(r)
                for (old_key, seal_id, _, _), group in groups.items():
                    if old_key not in ring.digest_keys or seal_id not in ring.seal_keys:
                        raise KeyringError(
                            f"cards digested with key {old_key} or sealed with key {seal_id}: this server lacks it"
                        )
                    sealed = np.frombuffer(b"".join(r.sealed for r in group), np.uint8).reshape(
                        len(group), -1
                    )
                    old = np.frombuffer(b"".join(r.digest for r in group), np.uint8).reshape(len(group), -1)
                    codes = kernel.open(sealed, old, ring.seal_keys[seal_id])  # in memory only
                    new = np.ascontiguousarray(kernel.digest(codes, key)[:, : old.shape[1]])
                    resealed = kernel.seal(codes, new, ring.seal_key)
                    del codes
                    updates.extend((r, bytes(new[i]), bytes(resealed[i])) for i, r in enumerate(group))
                changed = tx.rekey_cards(updates, ring.seal_key_id, key_id)
                tx.append_audit(
                    actor,
                    "digest_key.rehash",
                    f"digest_key:{key_id}",
                    f'{{"cards": {changed}, "after_card": {start}, "last_card": {rows[-1].card_id}}}',
                )
                return key_id, changed, rows[-1].card_id

            current, changed, last = self._storage.run(work)
            if last < 0:
                break
            after, total, batches = last, total + changed, batches + 1
            if on_batch is not None:
                on_batch(total)
        with self._storage.read() as tx:
            usage = tx.digest_key_usage()
            if not current:
                current = next(r.key_id for r in tx.digest_keys() if r.state == CURRENT)
        return RehashReport(current, total, batches, {k: n for k, n in usage.items() if k != current})

    def retire(self, actor: str, key_id: int) -> None:
        """Stop looking codes up under ``key_id``: refused while it is current, or while any
        card is still digested with it (run ``rehash`` first)."""

        def work(tx: UnitOfWork) -> None:
            records = {r.key_id: r for r in tx.digest_keys()}
            record = records.get(key_id)
            if record is None:
                raise InvalidArgument.of("key", f"the database knows no digest key {key_id}")
            if record.state == CURRENT:
                raise InvalidArgument.of("key", f"digest key {key_id} is current: rotate to another first")
            left = tx.digest_key_usage().get(key_id, 0)
            if left:
                raise InvalidArgument.of(
                    "key", f"{left} card(s) are still digested with key {key_id}: run keys rehash first"
                )
            tx.set_digest_key_state(key_id, RETIRED)
            tx.append_audit(
                actor, "digest_key.retire", f"digest_key:{key_id}", f'{{"was": "{record.state}"}}'
            )

        self._storage.run(work)
        with self._lock:
            self._retired = self._retired | {key_id}
