"""Loss reports over gRPC, on SQLite and PostgreSQL: the holder reports a card lost (frozen at
once), staff approve (the remaining balance moves to a new card bound to the same account,
the old card ends void) or reject (the card stays frozen); every answer the brief names."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cardmint.client import (
    CardAlreadyBound,
    CardFrozen,
    CardmintError,
    CardNotBound,
    CardNotFound,
    CardSpent,
    CardVoid,
    Client,
    IdempotencyKeyReused,
    LossReportDecided,
    LossReportingNotAllowed,
    LossReportNotFound,
    LossReportPending,
    NotCardHolder,
    PermissionDenied,
)
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.v1 import balance_pb2, card_pb2, compliance_pb2

Connect = Callable[..., Client]
PENDING, APPROVED, REJECTED = (
    compliance_pb2.LOSS_REPORT_STATUS_PENDING,
    compliance_pb2.LOSS_REPORT_STATUS_APPROVED,
    compliance_pb2.LOSS_REPORT_STATUS_REJECTED,
)


def _cards(admin: Client, n: int, *, sku: str = "GC-LOSS", registered: bool = False) -> list[tuple[str, str]]:
    admin.create_product(
        sku=sku,
        name="Gift card",
        currency="CNY",
        denominations=[10_000],
        validity_days=365,
        registered=registered,
    )
    lot = admin.create_lot(sku, n, 10_000)
    return list(admin.stream_lot(lot.id))


def test_report_freeze_review_reissue(connect: Connect) -> None:
    admin, operator = connect("admin"), connect("operator")
    alice, bob = connect("customer", account="alice"), connect("customer", account="bob")
    (serial, code), _ = _cards(admin, 2)
    head = admin.event_head()
    alice.bind_card(code)
    alice.redeem(serial, 3_000, "CNY")

    report = alice.report_loss(serial, "lost with my wallet", request_id="r-1")
    assert report.status == PENDING and report.account == "alice" and report.reason == "lost with my wallet"
    assert report.card.status == card_pb2.CARD_STATUS_FROZEN and not report.HasField("new_card")
    with pytest.raises(CardFrozen):  # frozen at once: nothing can be spent
        alice.redeem(serial, 1, "CNY")
    # A retry answers the first report; a second report waits for the first's review.
    again = alice.report_loss(serial, "lost with my wallet", request_id="r-1")
    assert again.replayed and again.id == report.id
    with pytest.raises(IdempotencyKeyReused):
        alice.report_loss(serial, "something else", request_id="r-1")
    with pytest.raises(LossReportPending) as pending:
        alice.report_loss(serial, "really lost", request_id="r-2")
    assert pending.value.metadata == {"report_id": str(report.id)}
    assert [r.id for r in alice.loss_reports("pending")] == [report.id]
    assert list(bob.loss_reports()) == []  # a customer sees only their own

    approved = operator.review_loss(report.id, approve=True, note="receipt checked", request_id="v-1")
    assert approved.status == APPROVED and approved.note == "receipt checked" and approved.reviewed_by
    assert approved.amount.minor_units == 7_000 and approved.amount.currency == "CNY"
    old, new = approved.card, approved.new_card
    assert old.status == card_pb2.CARD_STATUS_VOID and old.balance.minor_units == 0
    assert new.serial != serial and new.bound and new.status == card_pb2.CARD_STATUS_ACTIVE
    assert (new.balance.minor_units, new.face_value.minor_units) == (7_000, 10_000)
    assert new.expires_at == old.expires_at  # the old card's terms, not a fresh validity
    # Retries answer the decision; another review of a decided report is refused.
    assert operator.review_loss(report.id, approve=True, note="receipt checked", request_id="v-1").replayed
    with pytest.raises(LossReportDecided) as decided:
        operator.review_loss(report.id, approve=False, note="changed my mind", request_id="v-2")
    assert decided.value.metadata == {"status": "approved"}

    # The new card is the holder's: they read its code, spend it, and it is found by binds.
    secret = alice.view_secret(new.serial, step_up=True)
    assert not secret.masked and secret.code[-4:] == new.masked_code[-4:]
    with pytest.raises(CardAlreadyBound):
        bob.bind_card(secret.code)
    with pytest.raises(CardNotFound):
        bob.view_secret(new.serial, step_up=True)
    assert alice.bind_card(secret.code).already_bound_here
    checked = admin.check_many([secret.code, code])
    assert [checked.result(i).status for i in range(2)] == ["ok", "void"]
    assert alice.balance(account="alice").balances[0].minor_units == 7_000  # money conserved
    alice.redeem(new.serial, 7_000, "CNY")

    # The ledger links the two movements.
    out = [t for t in alice.transactions(serial=serial) if t.kind == balance_pb2.TRANSACTION_KIND_REISSUE_OUT]
    into = [
        t for t in alice.transactions(serial=new.serial) if t.kind == balance_pb2.TRANSACTION_KIND_REISSUE_IN
    ]
    assert len(out) == len(into) == 1
    assert (out[0].amount.minor_units, out[0].balance_after_minor_units) == (-7_000, 0)
    assert (into[0].amount.minor_units, into[0].balance_after_minor_units) == (7_000, 7_000)
    assert into[0].reverses_id == out[0].id and into[0].request_id == out[0].request_id != ""

    events = [
        (e.kind, e.subject, json.loads(e.detail_json)) for e in admin.subscribe_events(head, timeout=1.0)
    ]
    assert [(k, s) for k, s, _ in events] == [
        ("card.frozen", f"card:{serial}"),
        ("card.lost", f"card:{serial}"),
        ("card.reissued", f"card:{serial}"),
    ]
    assert events[2][2]["new_serial"] == new.serial and events[2][2]["amount"] == 7_000
    assert admin.verify_audit().ok
    # The reissued card is void: nothing more to report.
    with pytest.raises(CardVoid):
        alice.report_loss(serial, "again", request_id="r-3")


def test_reject_keeps_the_card_frozen_until_staff_unfreeze(connect: Connect) -> None:
    admin, operator = connect("admin"), connect("operator")
    carol = connect("customer", account="carol")
    (serial, code), _ = _cards(admin, 2)
    carol.bind_card(code)
    # Staff report on the holder's behalf (the holder's account named, or not).
    report = operator.report_loss(serial, "called the hotline", account="carol")
    assert report.status == PENDING and report.account == "carol"
    rejected = admin.review_loss(report.id, approve=False, note="card seen in use by the holder")
    assert rejected.status == REJECTED and rejected.card.status == card_pb2.CARD_STATUS_FROZEN
    assert not rejected.HasField("new_card") and not rejected.HasField("amount")
    assert carol.get_card(serial).status == card_pb2.CARD_STATUS_FROZEN
    assert [r.id for r in operator.loss_reports("rejected")] == [report.id]
    # A rejected report can be followed by a new one (new evidence), also while frozen.
    second = carol.report_loss(serial, "it really is gone")
    assert second.id != report.id and second.card.status == card_pb2.CARD_STATUS_FROZEN
    admin.review_loss(second.id, approve=False, note="no")
    assert admin.unfreeze(serial, "holder found it").status == card_pb2.CARD_STATUS_ACTIVE
    assert carol.redeem(serial, 100, "CNY").balance_after.minor_units == 9_900


def test_who_may_report_and_review(connect: Connect) -> None:
    admin, operator, merchant = connect("admin"), connect("operator"), connect("merchant")
    dave, erin = connect("customer", account="dave"), connect("customer", account="erin")
    (bound, code), (loose, _), (spent, spent_code) = _cards(admin, 3)
    dave.bind_card(code)
    dave.bind_card(spent_code)
    dave.redeem(spent, 10_000, "CNY")
    with pytest.raises(CardNotFound):  # someone else's card: as if it did not exist
        erin.report_loss(bound, "mine now")
    with pytest.raises(CardNotFound):  # nobody's card: the same answer for a customer
        erin.report_loss(loose, "mine now")
    with pytest.raises(CardNotFound):
        erin.report_loss("999999999999", "no such card")
    with pytest.raises(CardNotBound):
        operator.report_loss(loose, "unbound")
    with pytest.raises(NotCardHolder):
        operator.report_loss(bound, "wrong holder", account="erin")
    with pytest.raises(PermissionDenied):
        merchant.report_loss(bound, "not a holder")
    with pytest.raises(PermissionDenied):
        dave.report_loss(bound, "for someone else", account="erin")
    with pytest.raises(CardSpent):
        dave.report_loss(spent, "nothing left on it")
    report = dave.report_loss(bound, "lost")
    with pytest.raises(PermissionDenied):
        dave.review_loss(report.id, approve=True, note="self-service")
    with pytest.raises(LossReportNotFound):
        admin.review_loss(report.id + 1000, approve=True, note="nope")
    with pytest.raises(CardmintError) as empty:
        admin.review_loss(report.id, approve=True, note="")
    assert empty.value.reason == "INVALID_ARGUMENT"
    assert dave.get_card(bound).status == card_pb2.CARD_STATUS_FROZEN
    # Staff see every report, a customer only their own.
    assert [r.id for r in admin.loss_reports()] == [report.id]
    assert list(erin.loss_reports()) == []


@pytest.fixture
def cn(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    config = DomainConfig(profile="cn-prepaid", lot_chunk=16, stream_chunk=16)
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=8, config=config)
    yield running
    running.stop(grace=0)


def test_the_profile_decides_which_cards_can_be_reported_lost(cn: Running) -> None:
    addr = f"127.0.0.1:{cn.port}"
    auth = cn.domain.auth
    with (
        Client(addr, auth.create_token("admin").token) as admin,
        Client(addr, auth.create_token("customer", account="fay").token) as fay,
    ):
        # cn-prepaid: anonymous cards (不记名卡) cannot be reported lost, registered ones can.
        admin.create_product(
            sku="ANON", name="Anonymous", currency="CNY", denominations=[50_000], validity_days=1095
        )
        admin.create_product(
            sku="REG", name="Registered", currency="CNY", denominations=[50_000], registered=True
        )
        (anon,) = admin.stream_lot(admin.create_lot("ANON", 1, 50_000).id)
        (reg,) = admin.stream_lot(admin.create_lot("REG", 1, 50_000).id)
        fay.bind_card(anon[1])
        fay.bind_card(reg[1])
        with pytest.raises(LossReportingNotAllowed) as refused:
            fay.report_loss(anon[0], "lost")
        assert refused.value.metadata == {"profile": "cn-prepaid@4", "card_kind": "anonymous"}
        assert fay.get_card(anon[0]).status == card_pb2.CARD_STATUS_ACTIVE  # nothing happened
        report = fay.report_loss(reg[0], "lost")
        done = admin.review_loss(report.id, approve=True, note="id card checked")
        assert done.new_card.balance.minor_units == 50_000 and not done.new_card.HasField("expires_at")
        assert [r.status for r in fay.loss_reports()] == [APPROVED]


def test_racing_reviews_decide_once(connect: Connect) -> None:
    admin = connect("admin")
    gus = connect("customer", account="gus")
    (serial, code), _ = _cards(admin, 2)
    gus.bind_card(code)
    report = gus.report_loss(serial, "lost")
    reviewers = [connect("operator") for _ in range(8)]
    start_line = threading.Barrier(8)
    outcomes: list[str] = []
    guard = threading.Lock()

    def review(i: int) -> None:
        start_line.wait(timeout=30)
        try:
            got = reviewers[i].review_loss(
                report.id, approve=i % 2 == 0, note=f"reviewer {i}", request_id=uuid.uuid4().hex
            )
            answer = compliance_pb2.LossReportStatus.Name(got.status)
        except LossReportDecided as e:
            answer = e.reason
        with guard:
            outcomes.append(answer)

    threads = [threading.Thread(target=review, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == 8 and outcomes.count("LOSS_REPORT_DECIDED") == 7
    (decided,) = admin.loss_reports()
    old = gus.get_card(serial)
    if decided.status == APPROVED:  # one reissue: the balance moved once, never duplicated
        new = gus.get_card(decided.new_card.serial)
        assert (old.status, old.balance.minor_units) == (card_pb2.CARD_STATUS_VOID, 0)
        assert new.balance.minor_units == decided.amount.minor_units == 10_000
    else:
        assert (decided.status, old.status, old.balance.minor_units) == (
            REJECTED,
            card_pb2.CARD_STATUS_FROZEN,
            10_000,
        )
    kinds = [t.kind for t in gus.transactions(serial=serial)]
    assert kinds.count(balance_pb2.TRANSACTION_KIND_REISSUE_OUT) == (decided.status == APPROVED)
