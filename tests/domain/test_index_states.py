"""The in-memory index knows every issued card's state, and agrees with the database.

Bulk Check answers from the index (no query per code), so the index must follow every
change a server process sharing the database makes: lots minted and voided, single cards
frozen, unfrozen and voided, and expiry as the clock moves. The database's own answer
(``card_states``, one SQL query) is the oracle.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import numpy as np
from cardmint.server.domain import CheckStatus, Domain
from cardmint.server.storage import CardState, CardStatus, Storage

from .conftest import Callers, FakeClock, MintedLot

_MOVES = {
    "freeze": (CardStatus.FROZEN, [CardStatus.ACTIVE]),
    "unfreeze": (CardStatus.ACTIVE, [CardStatus.FROZEN]),
    "void": (CardStatus.VOID, [CardStatus.ACTIVE, CardStatus.FROZEN]),
}


def _digests(domain: Domain, codes: list[str]) -> np.ndarray:
    canon = np.array([c.replace("-", "").encode() for c in codes], dtype="S16")
    return domain.kernel.digest(canon, domain.keyring.digest_key)


def test_other_process_changes_reach_the_index(
    domain: Domain,
    who: Callers,
    make_lot: Callable[..., MintedLot],
    opener: Callable[[], Storage],
) -> None:
    # `domain` answers checks; `writer` is a second server process on the same database.
    pairs = make_lot(4).pairs
    writer = opener()
    assert domain.keys.check(who.merchant, [pairs[0][1]])[0].status is CheckStatus.OK
    with writer.transaction() as tx:
        card = tx.get_card_by_serial(pairs[0][0])
        assert card is not None
        tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
    assert domain.keys.check(who.merchant, [pairs[0][1]])[0].status is CheckStatus.FROZEN
    with writer.transaction() as tx:
        tx.set_card_status(card.id, CardStatus.ACTIVE, only_from=[CardStatus.FROZEN])
        tx.set_card_status(card.id, CardStatus.VOID, only_from=[CardStatus.ACTIVE])
    got = domain.keys.check(who.merchant, [c for _, c in pairs])
    assert [r.status for r in got] == [CheckStatus.VOID] + [CheckStatus.OK] * 3
    # A refused move (already void) changes nothing and feeds nothing.
    with writer.transaction() as tx:
        assert tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE]) is None
        assert tx.card_cursor() == 3


def test_index_states_match_the_database_under_random_changes(
    domain: Domain,
    who: Callers,
    make_lot: Callable[..., MintedLot],
    storage: Storage,
    opener: Callable[[], Storage],
    clock: FakeClock,
) -> None:
    seed = int(os.environ.get("CARDMINT_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    writer = opener()
    # Another process: it loaded the index before any of these lots existed.
    follower = Domain(opener(), domain.keyring)
    lots = [make_lot(12, validity_days=d) for d in (30, None, 90)]
    codes = [c for m in lots for _, c in m.pairs]
    serials = [s for m in lots for s, _ in m.pairs]
    digests = _digests(domain, codes)
    for step in range(60):
        op = rng.choice(["freeze", "unfreeze", "void", "clock", "lot", "void_lot", "check"])
        if op in _MOVES:
            target, allowed = _MOVES[op]
            with writer.transaction() as tx:
                card = tx.get_card_by_serial(rng.choice(serials))
                assert card is not None
                tx.set_card_status(card.id, target, only_from=allowed)
        elif op == "clock":
            clock.advance(days=rng.choice([1, 20, 45]))
        elif op == "lot" and len(lots) < 6:
            lots.append(make_lot(5, validity_days=rng.choice([10, None])))
            codes += [c for _, c in lots[-1].pairs]
            serials += [s for s, _ in lots[-1].pairs]
            digests = _digests(domain, codes)
        elif op == "void_lot" and rng.random() < 0.3:
            live = [m for m in lots if m.lot.id not in _voided(storage)]
            if len(live) > 1:
                domain.lots.void_lot(who.admin, rng.choice(live).lot.id)
        for d in (domain, follower):
            d.refresh_index()
            with storage.read() as tx:
                truth = tx.card_states(digests)
            # A voided lot leaves the index entirely (its codes are no longer issued).
            truth[np.isin(serials, _void_lot_serials(storage))] = CardState.MISSING
            got = d.index.states(digests, clock())
            assert got.tolist() == truth.tolist(), f"seed={seed} step={step} op={op}"


def _voided(storage: Storage) -> set[int]:
    with storage.read() as tx:
        return {lot.id for lot in tx.list_lots(limit=1000) if lot.status.value == "void"}


def _void_lot_serials(storage: Storage) -> list[str]:
    with storage.read() as tx:
        return [c.serial for lot_id in sorted(_voided(storage)) for c in tx.lot_cards(lot_id, limit=1000)]
