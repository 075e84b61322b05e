"""Digest-key rotation (server/domain/rekey.py; docs/operations.md, "Key rotation").

Mint under key A; a server restarted with keys A and B rotates to B; during the window
every old code still binds, redeems, checks (through the in-memory index), is corrected and
is matched by a blacklist import, while new lots use B; ``rehash`` moves the old cards to B
from their sealed copies; A is retired and deleted; everything is still found. Each step
also checks that the sealed copies still open to the same codes (a lot export).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np
import pytest
from cardmint.kernel import ALPHABET, Packed
from cardmint.server.domain import (
    CheckStatus,
    Domain,
    DomainConfig,
    InvalidArgument,
    Keyring,
    Principal,
    Role,
)
from cardmint.server.domain.errors import KeyringError
from cardmint.server.domain.keyring import KEY_SIZE
from cardmint.server.storage import Storage

A, B, SEAL = (os.urandom(KEY_SIZE) for _ in range(3))
CONFIG = DomainConfig(lot_chunk=7, stream_chunk=5, order_sweep_seconds=0)


def _typo(code: str) -> str:
    plain = code.replace("-", "")
    return plain[:3] + ALPHABET[(ALPHABET.index(plain[3]) + 1) % 32] + plain[4:]


def _server(storage: Storage, digest_keys: dict[int, bytes]) -> Domain:
    return Domain(storage, Keyring(digest_keys, {1: SEAL}), config=CONFIG)


def _who(domain: Domain, role: Role, account: str | None = None) -> Principal:
    return domain.auth.authenticate("Bearer " + domain.auth.create_token(role, account=account).token)


def _product(domain: Domain) -> None:
    domain.catalog.create_product(
        _who(domain, Role.OPERATOR), sku="ROT", name="rotation", currency="CNY",
        denominations=(500,), validity_days=365,
    )  # fmt: skip


def _lot(domain: Domain, count: int) -> tuple[int, dict[str, str]]:
    op = _who(domain, Role.OPERATOR)
    lot = domain.lots.create_lot(op, sku="ROT", count=count, face_value=500)
    return lot.id, _export(domain, lot.id)


def _export(domain: Domain, lot_id: int) -> dict[str, str]:
    cards: dict[str, str] = {}
    for chunk in domain.lots.stream_lot(_who(domain, Role.ADMIN), lot_id):
        cards.update(zip(chunk.serials, chunk.codes, strict=True))
    return cards


def _usage(domain: Domain) -> dict[int, tuple[str, int]]:
    return {k.key_id: (k.state, k.cards) for k in domain.digest_keys.status()}


def _digest_key_of(storage: Storage, serial: str, key: bytes, code: str, domain: Domain) -> bool:
    """Whether the card's stored digest is the code's digest under ``key``."""
    with storage.read() as tx:
        card = tx.get_card_by_serial(serial)
    assert card is not None
    return card.digest == domain.kernel.digest_one(code.replace("-", "").encode(), key)


def test_rotate_rehash_retire_and_every_code_is_still_found(
    opener: Callable[[], Storage],
) -> None:
    old_server = _server(opener(), {1: A})
    _product(old_server)
    lot1, old = _lot(old_server, 12)
    assert _usage(old_server) == {1: ("current", 12)}
    pairs = list(old.items())
    checks_before = [
        r.status for r in old_server.keys.check(_who(old_server, Role.MERCHANT), list(old.values()))
    ]
    assert checks_before == [CheckStatus.OK] * 12

    # A second server with a different key 1 refuses to start: every server needs the same keys.
    with pytest.raises(KeyringError, match="is not the key this database knows as digest key 1"):
        _server(opener(), {1: B})

    # Restarted with key B added (pending), then rotated: B current, A previous.
    storage = opener()
    server = _server(storage, {1: A, 2: B})
    assert _usage(server) == {1: ("current", 12), 2: ("pending", 0)}
    with pytest.raises(InvalidArgument):
        server.digest_keys.rotate("test", to=3)
    assert server.digest_keys.rotate("test") == (1, 2)
    assert _usage(server)[2] == ("current", 0) and _usage(server)[1] == ("previous", 12)
    # The server that still lacks B cannot mint under it (a clear error, nothing minted)...
    with pytest.raises(KeyringError, match="digest key 2 is current but this server does not hold it"):
        _lot(old_server, 3)
    # ... and no server lacking B may start.
    with pytest.raises(KeyringError, match=r"lacks digest key\(s\) 2"):
        _server(opener(), {1: A})

    # The window: old codes work everywhere they are looked up.
    merchant, alice = _who(server, Role.MERCHANT), _who(server, Role.CUSTOMER, "alice")
    got = server.keys.check(merchant, [*old.values(), _typo(pairs[1][1])])
    assert [r.status for r in got] == [CheckStatus.OK] * 12 + [CheckStatus.CORRECTED]
    assert got[-1].suggestion == pairs[1][1]
    receipt = server.cards.bind(alice, pairs[0][1])
    assert receipt.card.serial == pairs[0][0]
    spent = server.balances.redeem(merchant, serial=pairs[0][0], amount=120, currency="CNY", request_id="r1")
    assert spent.balance_after == 380
    staff = _who(server, Role.OPERATOR)
    codes = pairs[11][1].encode()
    blk = server.compliance.import_blacklist(
        staff, source="partner", codes=Packed(codes, np.array([0, len(codes)], dtype=np.int64))
    )
    assert (blk.matched, blk.frozen) == (1, 1)
    assert server.keys.check(merchant, [pairs[11][1]])[0].status is CheckStatus.FROZEN

    # New lots use B.
    lot2, new = _lot(server, 9)
    assert _usage(server)[2] == ("current", 9)
    serial, code = next(iter(new.items()))
    assert _digest_key_of(storage, serial, B, code, server)
    assert _digest_key_of(storage, pairs[2][0], A, pairs[2][1], server)

    # A cannot be retired while cards use it.
    with pytest.raises(InvalidArgument, match="12 card"):
        server.digest_keys.retire("test", 1)
    with pytest.raises(InvalidArgument, match="current"):
        server.digest_keys.retire("test", 2)

    # Rehash in bounded batches (5 per transaction): all 12 old cards move to B.
    seen: list[int] = []
    report = server.digest_keys.rehash("test", batch=5, on_batch=seen.append)
    assert (report.current, report.cards, report.batches, report.remaining) == (2, 12, 3, {})
    assert seen == [5, 10, 12]
    assert _usage(server) == {1: ("previous", 0), 2: ("current", 21)}
    assert all(_digest_key_of(storage, s, B, c, server) for s, c in old.items())
    assert server.digest_keys.rehash("test").cards == 0  # nothing left: idempotent
    # The sealed copies were re-sealed for their new digests: the export is unchanged.
    assert _export(server, lot1) == old

    server.digest_keys.retire("test", 1)
    assert _usage(server)[1] == ("retired", 0)
    # A's file is deleted: a server with B alone starts and finds every code, old and new.
    fresh = _server(opener(), {2: B})
    for d in (server, fresh):  # `server` learnt the new digests through the card feed
        m = _who(d, Role.MERCHANT)
        statuses = [r.status for r in d.keys.check(m, [*old.values(), *new.values()])]
        assert statuses == [CheckStatus.OK] * 11 + [CheckStatus.FROZEN] + [CheckStatus.OK] * 9
        assert d.keys.check(m, [_typo(pairs[3][1])])[0].suggestion == pairs[3][1]
    bob = _who(fresh, Role.CUSTOMER, "bob")
    assert fresh.cards.bind(bob, pairs[4][1]).card.serial == pairs[4][0]
    assert fresh.cards.bind(bob, code).card.serial == serial
    m = _who(fresh, Role.MERCHANT)
    assert (
        fresh.balances.redeem(m, serial=pairs[0][0], amount=80, currency="CNY", request_id="r2").balance_after
        == 300
    )
    assert _export(fresh, lot1) == old and _export(fresh, lot2) == new
    # A retired key is never current again.
    with pytest.raises(InvalidArgument, match="retired"):
        server.digest_keys.rotate("test", to=1)


def test_rehash_while_redeeming_and_binding(opener: Callable[[], Storage]) -> None:
    first = _server(opener(), {1: A})
    _product(first)
    n = 60
    lot, codes = _lot(first, n)
    pairs = list(codes.items())
    admin = _server(opener(), {1: A, 2: B})
    admin.digest_keys.rotate("test")
    live = _server(opener(), {1: A, 2: B})  # a serving process, redeeming and binding
    merchant = _who(live, Role.MERCHANT)
    carol = _who(live, Role.CUSTOMER, "carol")
    rounds = 3
    errors: list[BaseException] = []
    start = threading.Barrier(3, timeout=60)

    def redeemer() -> None:
        try:
            start.wait()
            for r in range(rounds):
                for i, (serial, _) in enumerate(pairs):
                    live.balances.redeem(
                        merchant, serial=serial, amount=1 + i % 3, currency="CNY", request_id=f"c-{r}-{i}"
                    )
        except BaseException as e:
            errors.append(e)
            raise

    def binder() -> None:
        try:
            start.wait()
            for _, code in pairs[::4]:
                live.cards.bind(carol, code)
        except BaseException as e:
            errors.append(e)
            raise

    threads = [threading.Thread(target=redeemer), threading.Thread(target=binder)]
    for t in threads:
        t.start()
    start.wait()
    total = 0
    for _ in range(50):  # bounded: each pass moves at most 7 cards per batch until none are left
        total += admin.digest_keys.rehash("test", batch=7).cards
        if not admin.digest_keys.status()[0].cards:
            break
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert total == n
    assert _usage(admin) == {1: ("previous", 0), 2: ("current", n)}
    with live.storage.read() as tx:
        for i, (serial, _) in enumerate(pairs):
            card = tx.get_card_by_serial(serial)
            assert card is not None
            assert card.balance == 500 - rounds * (1 + i % 3), serial  # no redeem lost, none doubled
            assert (card.account_id is not None) == (i % 4 == 0)
    assert _export(live, lot) == codes
    admin.digest_keys.retire("test", 1)
    fresh = _server(opener(), {2: B})
    m = _who(fresh, Role.MERCHANT)
    assert [r.status for r in fresh.keys.check(m, list(codes.values()))] == [CheckStatus.OK] * n
