"""The services end to end over gRPC, on SQLite and PostgreSQL: catalog, keys, lots,
binding and balances, through the Python client."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cardmint.client import (
    AccountLocked,
    BadCheck,
    CardAlreadyBound,
    CardNotFound,
    Client,
    ExportNeedsAdmin,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidArgument,
    LotNotFound,
    MalformedCode,
    NotReversible,
    PermissionDenied,
    ProductExists,
    ProductNotFound,
)
from cardmint.kernel import ALPHABET
from cardmint.server.app import Running, start
from cardmint.server.domain import errors
from cardmint.v1 import balance_pb2, card_pb2, catalog_pb2, lot_pb2, lot_pb2_grpc

Connect = Callable[..., Client]


def _typo(code: str) -> str:
    """``code`` with its last symbol changed: the check character no longer matches."""
    last = code[-1]
    return code[:-1] + ALPHABET[(ALPHABET.index(last) + 1) % len(ALPHABET)]


def _lot(admin: Client, n: int = 40, sku: str = "GC-100") -> tuple[lot_pb2.Lot, list[tuple[str, str]]]:
    admin.create_product(sku=sku, name="Gift card 100", currency="CNY", denominations=[10000, 20000])
    lot = admin.create_lot(sku, n, 10000)
    return lot, list(admin.stream_lot(lot.id))


def test_catalog(connect: Connect) -> None:
    admin, merchant = connect("admin"), connect("merchant")
    made = admin.create_product(
        sku="GC-RANGE",
        name="Any value",
        currency="USD",
        amount_range=(100, 500_000),
        validity_days=365,
        review=True,
    )
    assert (made.sku, made.currency, made.validity_days) == ("GC-RANGE", "USD", 365)
    assert (made.amount_range.min_minor_units, made.amount_range.max_minor_units) == (100, 500_000)
    assert made.delivery == catalog_pb2.DELIVERY_REVIEW
    assert made.created_at.seconds > 0
    for i in range(4):
        admin.create_product(sku=f"GC-{i}", name=f"Card {i}", currency="CNY", denominations=[100 * (i + 1)])
    # Paging: pages of two, every product exactly once, in creation order.
    assert [p.sku for p in merchant.list_products(page_size=2)] == [
        "GC-RANGE",
        "GC-0",
        "GC-1",
        "GC-2",
        "GC-3",
    ]
    got = merchant.get_product("GC-2")
    assert (list(got.denominations), got.HasField("validity_days")) == ([300], False)

    with pytest.raises(ProductExists):
        admin.create_product(sku="GC-0", name="again", currency="CNY", denominations=[100])
    with pytest.raises(ProductNotFound):
        merchant.get_product("NOPE")
    with pytest.raises(PermissionDenied):
        merchant.create_product(sku="M-1", name="x", currency="CNY", denominations=[100])
    with pytest.raises(InvalidArgument) as bad:
        admin.create_product(sku="bad sku!", name="", currency="XXQ", denominations=[])
    fields = {v.field for v in bad.value.violations}
    assert {"sku", "name", "currency"} <= fields
    assert [p.sku for p in admin.list_products()][-1] == "GC-3"  # nothing was created by the refusals


def test_keys_check_and_generate(connect: Connect) -> None:
    admin, merchant = connect("admin"), connect("merchant")
    _, rows = _lot(admin)
    codes = [code for _, code in rows]
    stranger = merchant.generate(1)[0]  # well-formed, never issued
    inputs = [*codes, _typo(codes[0]), "not a code", stranger, codes[1].lower().replace("-", " ")]
    results = list(merchant.check(inputs, chunk=7))  # several chunks each way
    assert [r.code for r in results] == inputs
    assert {r.status for r in results[: len(codes)]} == {"ok"}
    corrected = results[len(codes)]
    assert (corrected.status, corrected.suggestion) == ("corrected", codes[0])
    assert results[-3].status == "malformed"
    assert results[-2].status == "unknown"
    assert (results[-1].status, results[-1].normalized) == ("ok", codes[1].replace("-", ""))

    fresh = merchant.generate(100, length=12, prefix="GC", group=0)
    assert len(set(fresh)) == 100
    assert all(len(c) == 12 and c.startswith("GC") for c in fresh)
    assert [r.status for r in merchant.check(fresh, length=12)] == ["unknown"] * 100
    with pytest.raises(PermissionDenied):
        connect("customer", account="bob").generate(1)
    with pytest.raises(InvalidArgument):
        merchant.generate(0)


def test_check_many_is_check_as_arrays(connect: Connect) -> None:
    admin = connect("admin")
    _, rows = _lot(admin)
    codes = [code for _, code in rows]
    # Equal-width ASCII, mixed widths, full-width and invisible characters, and a typo.
    inputs = [
        *codes,
        codes[0].replace("-", ""),
        "\uff21" + codes[1][1:],
        codes[2] + "\u200b",
        _typo(codes[3]),
        "",
        "not a code",
    ]
    for chunk in (1, 4, 1 << 18):
        batch = admin.check_many(inputs, chunk=chunk)
        one_by_one = list(admin.check(inputs, chunk=5))
        assert len(batch) == len(inputs)
        assert list(batch.results()) == one_by_one
        assert batch.status.tolist() == [batch.code(r.status) for r in one_by_one]
        assert batch.suggestions == {i: r.suggestion for i, r in enumerate(one_by_one) if r.suggestion}
        assert batch.suggestions[len(codes) + 3] == codes[3]
        assert batch.counts()["ok"] == sum(r.status == "ok" for r in one_by_one) >= len(codes) + 2
    assert len(admin.check_many([])) == 0


def test_lots(connect: Connect) -> None:
    admin, operator = connect("admin"), connect("operator")
    admin.create_product(sku="GC-L", name="Lot card", currency="CNY", denominations=[5000])
    seen: list[tuple[int, int]] = []
    lot = operator.create_lot("GC-L", 50, 5000, progress=lambda d, t: seen.append((d, t)))
    assert (lot.count, lot.status, lot.face_value.minor_units, lot.face_value.currency) == (
        50,
        lot_pb2.LOT_STATUS_COMPLETE,
        5000,
        "CNY",
    )
    assert seen[-1] == (50, 50) and all(t == 50 for _, t in seen) and len(seen) > 2
    first = list(operator.stream_lot(lot.id))
    assert len(first) == 50 and len({s for s, _ in first}) == 50
    # The plaintext leaves once; after that only an admin may export again (audited).
    with pytest.raises(ExportNeedsAdmin):
        list(operator.stream_lot(lot.id))
    assert list(admin.stream_lot(lot.id)) == first
    assert operator.get_lot(lot.id).plaintext_exported
    with pytest.raises(PermissionDenied):
        operator.void_lot(lot.id)
    voided = admin.void_lot(lot.id)
    assert voided.status == lot_pb2.LOT_STATUS_VOID and voided.HasField("voided_at")
    # A voided lot's codes stop being issued codes (the domain drops them from its index).
    assert {r.status for r in admin.check([c for _, c in first])} <= {"void", "unknown"}
    with pytest.raises(LotNotFound):
        admin.get_lot(999_999)
    with pytest.raises(InvalidArgument):
        admin.create_lot("GC-L", 10, 1234)  # not one of the product's denominations
    with pytest.raises(PermissionDenied):
        connect("merchant").create_lot("GC-L", 10, 5000)


@pytest.mark.parametrize(
    "account",
    [
        "ali\u200bce",  # zero-width space: prints as "alice"
        "\u202ecilA",  # right-to-left override
        "bob\u2066",  # bidi isolate
        "line\u2028break",
        "tab\there",
        "   ",
    ],
)
def test_account_ids_that_print_like_another_are_refused(
    connect: Connect, server: Running, account: str
) -> None:
    """An account id must be printable: one that prints like another (format and control
    characters) would let two accounts pass for one. Refused when a staff call names it
    (created on first use) and when a customer token is made for it; nothing is created."""
    admin = connect("admin")
    _, rows = _lot(admin, 2)
    with pytest.raises(InvalidArgument) as refused:
        admin.bind_card(rows[0][1], account=account)
    assert [(v.field, v.description) for v in refused.value.violations] == [
        ("account", "an account id (1-128 printable characters) is required")
    ]
    with pytest.raises(errors.InvalidArgument, match="printable"):
        server.domain.auth.create_token("customer", account=account)
    with server.storage.read() as tx:
        assert tx.find_account(account) is None
    assert admin.bind_card(rows[0][1], account="\u5f20\u4e09").card.bound  # letters of any script are fine


def test_bind_and_balances(connect: Connect) -> None:
    admin = connect("admin")
    alice, bob = connect("customer", account="alice"), connect("customer", account="bob")
    _, rows = _lot(admin, 10)
    (serial, code), (_, code2) = rows[0], rows[1]

    bound = alice.bind_card(code)
    assert (bound.card.serial, bound.card.status, bound.card.bound) == (
        serial,
        card_pb2.CARD_STATUS_ACTIVE,
        True,
    )
    assert bound.card.masked_code.endswith(code[-4:]) and code[:4] not in bound.card.masked_code
    assert alice.bind_card(code).already_bound_here  # a retry is not an error
    with pytest.raises(CardAlreadyBound):
        bob.bind_card(code)
    with pytest.raises(CardNotFound):
        bob.get_card(serial)  # not bob's: the answer does not reveal that it exists
    assert alice.get_card(serial).balance.minor_units == 10000

    assert [(m.minor_units, m.currency) for m in alice.balance().balances] == [(10000, "CNY")]
    assert alice.balance(serial=serial, required=(10001, "CNY")).sufficient is False
    assert admin.balance(account="alice", required=(5000, "CNY")).sufficient is True

    paid = admin.redeem(serial, 2500, "CNY", request_id="order-1")
    assert (paid.amount.minor_units, paid.balance_after.minor_units, paid.replayed) == (2500, 7500, False)
    again = admin.redeem(serial, 2500, "CNY", request_id="order-1")
    assert again.replayed and again.transaction_id == paid.transaction_id
    assert admin.get_card(serial).balance.minor_units == 7500  # the retry moved nothing
    with pytest.raises(IdempotencyKeyReused):
        admin.redeem(serial, 2600, "CNY", request_id="order-1")
    with pytest.raises(InsufficientFunds) as short:
        admin.redeem(serial, 7501, "CNY")
    assert short.value.metadata["balance"] == "7500"
    back = admin.reverse(paid.transaction_id, 1000, request_id="refund-1")
    assert back.balance_after.minor_units == 8500
    with pytest.raises(NotReversible):
        admin.reverse(paid.transaction_id, 1501)  # only 1500 of that redemption is left

    history = list(alice.transactions(serial=serial, page_size=1))  # one entry per page
    assert [t.kind for t in history] == [
        balance_pb2.TRANSACTION_KIND_REVERSE,
        balance_pb2.TRANSACTION_KIND_REDEEM,
        balance_pb2.TRANSACTION_KIND_BIND,
    ]
    assert (history[1].amount.minor_units, history[0].reverses_id) == (-2500, paid.transaction_id)

    alice.unbind_card(serial)
    assert bob.bind_card(code).transferred

    # Wrong guesses: malformed and typo'd codes are told apart, then the account locks.
    with pytest.raises(MalformedCode):
        alice.bind_card("???")
    with pytest.raises(BadCheck) as typo:
        alice.bind_card(_typo(code2))
    assert typo.value.suggestion == code2
    # Two failures so far; well-formed codes nobody issued are the third and fourth (the
    # fourth only once the person passed a challenge: tests/api/test_risk_tiers.py) ...
    for _ in range(2):
        with pytest.raises(CardNotFound):
            alice.bind_card(admin.generate(1)[0], challenge_passed=True)
    # ... and the fifth reaches the account's limit: that attempt already answers "locked".
    with pytest.raises(AccountLocked) as locked:
        alice.bind_card(admin.generate(1)[0], challenge_passed=True)
    assert locked.value.retry_after is not None and locked.value.retry_after > 0
    with pytest.raises(AccountLocked):
        alice.bind_card(code2, challenge_passed=True)  # even the right code waits for the lock


def test_redeem_race_spends_exactly_the_balance(connect: Connect) -> None:
    admin = connect("admin")
    admin.create_product(sku="GC-RACE", name="Race", currency="CNY", denominations=[1000])
    lot = admin.create_lot("GC-RACE", 1, 1000)
    ((serial, _),) = list(admin.stream_lot(lot.id))
    merchants = [connect("merchant") for _ in range(8)]

    def spend(i: int) -> int:
        taken = 0
        for j in range(10):  # 80 attempts of 30 on a card of 1000: at most 33 can succeed
            with contextlib.suppress(InsufficientFunds):
                taken += merchants[i].redeem(serial, 30, "CNY", request_id=f"race-{i}-{j}").amount.minor_units
        return taken

    with ThreadPoolExecutor(max_workers=8) as pool:
        spent = sum(pool.map(spend, range(8)))
    balance = admin.get_card(serial).balance.minor_units
    assert spent == 990 and balance == 10  # all that fits was spent, and not a unit more
    ledger = list(admin.transactions(serial=serial, page_size=500))
    assert -sum(t.amount.minor_units for t in ledger) == spent


def test_lot_expiry_and_width_packed_export(connect: Connect, server: Running, channel: grpc.Channel) -> None:
    admin = connect("admin")
    admin.create_product(sku="GC-E", name="Expiring", currency="CNY", denominations=[5000], validity_days=30)
    admin.create_product(sku="GC-F", name="Forever", currency="CNY", denominations=[5000])
    lot = admin.create_lot("GC-E", 40, 5000)
    assert lot.HasField("expires_at")
    assert lot.expires_at.ToDatetime() - lot.created_at.ToDatetime() == timedelta(days=30)
    assert admin.get_lot(lot.id).expires_at == lot.expires_at
    assert not admin.create_lot("GC-F", 1, 5000).HasField("expires_at")
    # On the wire: every chunk is two fixed-width buffers, no per-string lengths.
    token = server.domain.auth.create_token("admin").token
    chunks = list(
        lot_pb2_grpc.LotServiceStub(channel).StreamLot(
            lot_pb2.StreamLotRequest(lot_id=lot.id),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )
    )
    assert [len(c.serials.data) // c.serials.width for c in chunks] == [16, 16, 8]  # stream_chunk=16
    assert all(c.codes.width == 19 and not c.codes.lengths and not c.serials.lengths for c in chunks)
    # The client's array form and its (serial, code) form agree, in serial order.
    arrays = list(admin.stream_lot_arrays(lot.id))
    assert all(s.dtype.kind == c.dtype.kind == "S" for s, c in arrays)
    pairs = [
        (s.decode(), c.decode()) for ss, cc in arrays for s, c in zip(ss.tolist(), cc.tolist(), strict=True)
    ]
    assert pairs == list(admin.stream_lot(lot.id))
    assert [s for s, _ in pairs] == sorted(s for s, _ in pairs)
    assert {r.status for r in admin.check([c for _, c in pairs])} == {"ok"}


def test_servers_sharing_a_database_see_each_others_lots(
    server: Running, storage_url: str, tmp_path: Path, connect: Connect
) -> None:
    # A second server process on the same database (and the same keys, as required).
    other = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=4)
    try:
        admin = connect("admin")
        with Client(f"127.0.0.1:{other.port}", server.domain.auth.create_token("merchant").token) as merchant:
            _, rows = _lot(admin, 12, sku="GC-SHARED")  # minted through the first server
            codes = [c for _, c in rows]
            assert {r.status for r in merchant.check(codes)} == {"ok"}
            (fixed,) = merchant.check([_typo(codes[3])])
            assert fixed.suggestion == codes[3]
    finally:
        other.stop(grace=0)
