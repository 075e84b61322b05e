"""Compliance profiles: loaded from data files, enforced where money moves, recorded on
every movement they judged — on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from cardmint.server.domain import DailyLimitReached, Domain, DomainConfig, InvalidArgument, Keyring
from cardmint.server.domain.profiles import BUILTIN, ProfileError, load_profile, parse_profile
from cardmint.server.storage import Storage
from hypothesis import given
from hypothesis import strategies as st

from .conftest import Callers, FakeClock

YUAN = 100  # fen per yuan
PLATFORM = (Path(__file__).parents[2] / "server/domain/rules/platform.toml").read_text()


def test_builtin_profiles_carry_the_published_figures() -> None:
    platform, cn = load_profile("platform"), load_profile("cn-prepaid")
    assert BUILTIN == ("platform", "cn-prepaid") and (platform.tag, cn.tag) == ("platform@4", "cn-prepaid@4")
    assert platform.validity_days_max == 1095 and platform.currencies == frozenset()
    assert platform.face_value_min.minor("CNY") == 1 * YUAN
    assert platform.daily_redeem_limit.minor("CNY") == 50_000 * YUAN == platform.aml_above.minor("CNY")
    # China's single-purpose prepaid-card rules (MOFCOM 2012 No. 9), as cited in the file.
    assert cn.currencies == {"CNY"}
    assert cn.anonymous.face_value_max.minor("CNY") == 1_000 * YUAN
    assert (cn.anonymous.validity_days_min, cn.anonymous.expiry_required) == (1095, True)
    assert cn.anonymous.loss_reporting is False and platform.anonymous.loss_reporting is True
    assert cn.registered.face_value_max.minor("CNY") == 5_000 * YUAN
    assert (cn.registered.expiry_allowed, cn.registered.loss_reporting) == (False, True)
    assert cn.real_name_from.minor("CNY") == 10_000 * YUAN
    assert cn.bank_transfer_from_individual.minor("CNY") == 50_000 * YUAN
    assert cn.bank_transfer_from_organization.minor("CNY") == 5_000 * YUAN
    # Major units convert with each currency's own exponent, exactly.
    assert platform.aml_above.minor("JPY") == 50_000 and platform.aml_above.minor("BHD") == 50_000_000


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("version = 4", "version = 4\nsurprise = true"), "unknown key"),
        (('daily_redeem_limit = "50000"', ""), "accounts.daily_redeem_limit: missing"),
        (('aml_above = "50000"', 'aml_above = "lots"'), "not a decimal"),
        (('aml_above = "50000"', 'aml_above = "-5"'), "positive"),
        (("validity_days_max = 1095", 'validity_days_max = "3y"'), "must be int"),
        (("currencies = []", 'currencies = ["EURO"]'), "ISO 4217"),
        (
            (
                "expiry_required = false\nexpiry_allowed = true",
                "expiry_required = true\nexpiry_allowed = false",
            ),
            "contradicts",
        ),
        (("[orders]", "[orders"), "platform.toml"),
    ],
)
def test_a_broken_profile_is_refused_naming_the_problem(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in PLATFORM
    with pytest.raises(ProfileError, match=message):
        parse_profile(PLATFORM.replace(old, new, 1), "platform.toml")


def test_profiles_by_path_and_unknown_names(tmp_path: Path) -> None:
    custom = tmp_path / "strict.toml"
    custom.write_text(PLATFORM.replace('name = "platform"', 'name = "strict"').replace('"50000"', '"100"'))
    strict = load_profile(str(custom))
    assert strict.tag == "strict@4" and strict.daily_redeem_limit.minor("CNY") == 100 * YUAN
    with pytest.raises(ProfileError, match="built in: platform, cn-prepaid"):
        load_profile("nonesuch")


@given(major=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10**9), places=2))
def test_amounts_convert_exactly(major: Decimal) -> None:
    text = PLATFORM.replace('aml_above = "50000"', f'aml_above = "{major}"')
    assert parse_profile(text).aml_above.minor("CNY") == int(major * 100)


def _cn(storage: Storage, keyring: Keyring) -> Domain:
    return Domain(storage, keyring, config=DomainConfig(profile="cn-prepaid"))


def test_catalog_obeys_the_cn_prepaid_profile(storage: Storage, keyring: Keyring, who: Callers) -> None:
    cn = _cn(storage, keyring)

    def create(sku: str, **kw: object) -> set[str]:
        args: dict[str, object] = {"name": "card", "currency": "CNY", "denominations": (100 * YUAN,)}
        args.update(kw)
        try:
            cn.catalog.create_product(who.operator, sku=sku, **args)  # type: ignore[arg-type]
        except InvalidArgument as e:
            return {v.field for v in e.violations}
        return set()

    assert create("A-OK", validity_days=1095) == set()
    assert create("A-NOEXP") == {"validity_days"}  # anonymous cards must expire, >= 3 years
    assert create("A-SHORT", validity_days=1094) == {"validity_days"}
    assert create("A-BIG", denominations=(1_001 * YUAN,), validity_days=1095) == {"denominations"}
    assert create("A-RANGE", denominations=(), amount_range=(YUAN, 1_001 * YUAN), validity_days=2000) == {
        "amount_range"
    }
    assert create("R-OK", registered=True, denominations=(5_000 * YUAN,)) == set()
    assert create("R-EXP", registered=True, validity_days=1095) == {"validity_days"}  # no expiry
    assert create("R-BIG", registered=True, denominations=(5_001 * YUAN,)) == {"denominations"}
    assert create("USD", currency="USD", validity_days=1095) == {"currency"}  # renminbi only
    assert create("TINY", denominations=(99,), validity_days=1095) == {"denominations"}
    product = cn.catalog.get_product(who.admin, "R-OK")
    assert product.registered and product.validity_days is None


def _bound_cards(domain: Domain, who: Callers, n: int, face: int) -> list[str]:
    sku = f"BIG-{face}"
    domain.catalog.create_product(
        who.operator, sku=sku, name="big", currency="CNY", amount_range=(YUAN, 10**7 * YUAN)
    )
    lot = domain.lots.create_lot(who.operator, sku=sku, count=n, face_value=face)
    serials = []
    for chunk in domain.lots.stream_lot(who.operator, lot.id):
        for serial, code in zip(chunk.serials, chunk.codes, strict=True):
            domain.cards.bind(who.alice, code)
            serials.append(serial)
    return serials


def test_daily_limit_per_account(domain: Domain, who: Callers, storage: Storage, clock: FakeClock) -> None:
    a, b = _bound_cards(domain, who, 2, 40_000 * YUAN)

    def redeem(serial: str, yuan: int, rid: str) -> object:
        return domain.balances.redeem(
            who.merchant, serial=serial, amount=yuan * YUAN, currency="CNY", request_id=rid
        )

    redeem(a, 30_000, "d1")
    redeem(b, 20_000, "d2")  # 50,000 today: exactly the limit
    with pytest.raises(DailyLimitReached) as over:
        redeem(b, 1, "d3")
    assert over.value.retry_after is not None and 0 < over.value.retry_after <= 86_400
    assert over.value.metadata["spent_today"] == str(50_000 * YUAN)
    # A reversal today gives room back; tomorrow the count starts again.
    with storage.read() as tx:
        entry = tx.list_ledger(account_id=tx.get_card_by_serial(a).account_id, limit=10)[0]  # type: ignore[union-attr]
    domain.balances.reverse(who.admin, entry_id=entry.id, amount=1_000 * YUAN, request_id="v1")
    redeem(b, 1_000, "d4")
    with pytest.raises(DailyLimitReached):
        redeem(b, 1, "d5")
    clock.advance(days=1)
    redeem(b, 1, "d5")


def test_daily_limit_holds_under_concurrent_spends(domain: Domain, who: Callers) -> None:
    # 24 threads spend 5,000 each from three cards of one account at once: the limit of
    # 50,000 lets exactly ten through, whatever the interleaving.
    cards = _bound_cards(domain, who, 3, 60_000 * YUAN)
    ok, refused, other = [], [], []
    start = threading.Barrier(24)

    def spend(i: int) -> None:
        start.wait(timeout=30)
        try:
            domain.balances.redeem(
                who.merchant, serial=cards[i % 3], amount=5_000 * YUAN, currency="CNY", request_id=f"c{i}"
            )
            ok.append(i)
        except DailyLimitReached:
            refused.append(i)
        except Exception as e:  # pragma: no cover - reported by the assert below
            other.append(e)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert other == [] and len(ok) == 10 and len(refused) == 14


def test_aml_reports_and_the_profile_on_every_movement(
    domain: Domain, who: Callers, storage: Storage
) -> None:
    # An unbound (bearer) card: no account, so no daily limit; the AML threshold still applies.
    domain.catalog.create_product(
        who.operator, sku="BEARER", name="big", currency="CNY", amount_range=(YUAN, 10**6 * YUAN)
    )
    lot = domain.lots.create_lot(who.operator, sku="BEARER", count=1, face_value=200_000 * YUAN)
    serial = next(iter(domain.lots.stream_lot(who.operator, lot.id))).serials[0]
    head = domain.events.head(who.admin)

    def redeem(yuan: int, rid: str) -> int:
        amount = yuan * YUAN
        return domain.balances.redeem(
            who.merchant, serial=serial, amount=amount, currency="CNY", request_id=rid
        ).entry_id

    redeem(50_000, "at")  # at the threshold: not above it
    with storage.read() as tx:
        assert tx.list_reports() == []
    above = redeem(50_001, "above")
    back = domain.balances.reverse(who.admin, entry_id=above, amount=50_001 * YUAN, request_id="rv").entry_id
    with storage.read() as tx:
        reports = tx.list_reports()
        assert [(r.kind, r.subject, r.amount, r.currency, r.profile) for r in reports] == [
            ("aml", f"card:{serial}", 50_001 * YUAN, "CNY", "platform@4"),
            ("aml", f"card:{serial}", 50_001 * YUAN, "CNY", "platform@4"),
        ]
        assert [r.id for r in tx.list_reports(kind="aml", after_id=reports[0].id)] == [reports[1].id]
        assert tx.list_reports(kind="alert") == []
        card = tx.get_card_by_serial(serial)
        assert card is not None
        entries = tx.list_ledger(card_id=card.id, limit=10)
    # Every movement records the profile that judged it.
    assert {e.id for e in entries} >= {above, back} and {e.profile for e in entries} == {"platform@4"}
    events = list(domain.events.subscribe(who.admin, head, deadline=time.monotonic() + 0.2))
    assert [(e.kind, e.detail["movement"], e.detail["transaction"]) for e in events] == [
        ("aml.report", "redeem", above),
        ("aml.report", "reverse", back),
    ]
