"""Loss reports in the domain: money is moved, never created or lost, whatever was spent
before; the new card reaches every process's index; the audit trail names both cards."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import count

from cardmint.server.domain import Domain
from cardmint.server.domain.keys import CheckStatus
from cardmint.server.storage import CardStatus, LedgerKind, Storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Callers, FakeClock, MintedLot

_ids = count()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spends=st.lists(st.integers(1, 120), max_size=4))
def test_the_reissued_balance_is_exactly_what_was_left(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage, spends: list[int]
) -> None:
    serial, code = make_lot(1, face_value=500).pairs[0]
    domain.cards.bind(who.alice, code)
    left = 500
    for amount in spends:
        if amount <= left:
            domain.balances.redeem(
                who.alice, serial=serial, amount=amount, currency="CNY", request_id=f"spend-{next(_ids)}"
            )
            left -= amount
    report = domain.compliance.report_loss(who.alice, serial, reason="lost", request_id=f"loss-{next(_ids)}")
    done = domain.compliance.review_loss(
        who.operator, report.id, approve=True, note="checked", request_id=f"review-{next(_ids)}"
    )
    assert done.new_card is not None and done.amount == left == done.new_card.balance
    with storage.read() as tx:
        old = tx.get_card_by_serial(serial)
        new = tx.get_card_by_serial(done.new_card.serial)
        assert old is not None and new is not None
        assert (old.status, old.balance, new.status, new.account_id) == (
            CardStatus.VOID,
            0,
            CardStatus.ACTIVE,
            old.account_id,
        )
        old_ledger = tx.list_ledger(card_id=old.id, limit=100)
        new_ledger = tx.list_ledger(card_id=new.id, limit=100)
    # Every unit of the face value is either spent or on the new card: sum of signed moves.
    assert 500 + sum(e.amount for e in old_ledger) == 0
    assert sum(e.amount for e in new_ledger) == new.balance == left
    (out,) = [e for e in old_ledger if e.kind is LedgerKind.REISSUE_OUT]
    (into,) = [e for e in new_ledger if e.kind is LedgerKind.REISSUE_IN]
    assert into.reverses_id == out.id and out.amount == -left and into.profile == "platform@4"


def test_the_new_card_reaches_another_process_index(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], opener: Callable[[], Storage]
) -> None:
    follower = Domain(opener(), domain.keyring)  # another server process on the same database
    serial, code = make_lot(2).pairs[0]
    domain.cards.bind(who.bob, code)
    report = domain.compliance.report_loss(
        who.operator, serial, reason="bob called", request_id="l-1", account="bob"
    )
    done = domain.compliance.review_loss(who.admin, report.id, approve=True, note="ok", request_id="v-1")
    assert done.new_card is not None
    secret = domain.cards.view_secret(who.bob, done.new_card.serial, step_up=True)
    assert not secret.masked
    follower.refresh_index()
    for d in (domain, follower):
        got = d.keys.check(who.operator, [secret.code, code])
        assert [r.status for r in got] == [CheckStatus.OK, CheckStatus.VOID]


def test_the_audit_trail_names_both_cards(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], clock: FakeClock
) -> None:
    serial, code = make_lot(1).pairs[0]
    domain.cards.bind(who.alice, code)
    report = domain.compliance.report_loss(who.alice, serial, reason="stolen", request_id="l-2")
    clock.advance(days=2)  # reviews take days (seed 000: within 3 working days)
    done = domain.compliance.review_loss(who.operator, report.id, approve=True, note="ok", request_id="v-2")
    assert done.reviewed_at is not None and (done.reviewed_at - done.reported_at).days == 2
    with domain.storage.read() as tx:
        trail = [(e.action, json.loads(e.detail or "{}")) for e in tx.audit_entries()]
        new = tx.get_card_by_serial(done.new_card.serial if done.new_card else "")
    assert new is not None
    actions = [a for a, _ in trail]
    assert actions[-3:] == ["card.freeze", "card.report_loss", "card.reissue"]
    reissue = trail[-1][1]
    assert reissue["new_card"] == new.id and reissue["amount"] == 500 and reissue["report"] == report.id
    assert code.replace("-", "") not in json.dumps(trail)  # never a plaintext code
    assert domain.compliance.verify_audit(who.admin).ok


def test_a_reissue_above_the_aml_threshold_is_reported(
    domain: Domain, who: Callers, storage: Storage
) -> None:
    """A reissue moves money to a new card: above the profile's AML threshold (50,000 CNY on
    the platform profile) it files a report like a redemption or a transfer does."""
    yuan = 100
    domain.catalog.create_product(
        who.operator, sku="BIG", name="big", currency="CNY", amount_range=(yuan, 10**6 * yuan)
    )
    reported = []
    for face in (40_000 * yuan, 60_000 * yuan):
        lot = domain.lots.create_lot(who.operator, sku="BIG", count=1, face_value=face)
        chunk = next(iter(domain.lots.stream_lot(who.operator, lot.id)))
        serial, code = chunk.serials[0], chunk.codes[0]
        domain.cards.bind(who.alice, code)
        report = domain.compliance.report_loss(who.alice, serial, reason="lost", request_id=f"aml-l-{face}")
        domain.compliance.review_loss(
            who.operator, report.id, approve=True, note="checked", request_id=f"aml-v-{face}"
        )
        with storage.read() as tx:
            reported.append(
                [(r.subject, r.amount, json.loads(r.detail)["movement"]) for r in tx.list_reports()]
            )
    assert reported[0] == []  # 40,000: under the threshold
    assert reported[1] == [(f"card:{serial}", 60_000 * yuan, "reissue")]
