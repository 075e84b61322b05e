"""Compliance over gRPC, on SQLite and PostgreSQL: product kinds, the daily limit's status
and retry time, and AML reports reaching notifiers."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest
from cardmint.client import (
    CardFrozen,
    CardNotFound,
    CardVoid,
    Client,
    DailyLimitReached,
    InvalidArgument,
    PermissionDenied,
)
from cardmint.v1 import card_pb2

Connect = Callable[..., Client]
YUAN = 100


def test_registered_products_and_profile_bounds(connect: Connect) -> None:
    admin = connect("admin")
    p = admin.create_product(
        sku="REG", name="Registered", currency="CNY", denominations=[500 * YUAN], registered=True
    )
    assert p.registered and admin.get_product("REG").registered
    with pytest.raises(InvalidArgument) as bad:  # over the platform profile's 3 years
        admin.create_product(
            sku="LONG", name="Long", currency="CNY", denominations=[YUAN], validity_days=1096
        )
    assert [v.field for v in bad.value.violations] == ["validity_days"]


def test_daily_limit_and_aml_over_the_wire(connect: Connect) -> None:
    admin = connect("admin")
    admin.create_product(sku="BIG", name="Big", currency="CNY", amount_range=(YUAN, 10**6 * YUAN))
    lot = admin.create_lot("BIG", 2, 60_000 * YUAN)
    (s1, c1), (s2, _) = list(admin.stream_lot(lot.id))
    admin.bind_card(c1, account="zoe")
    head = admin.event_head()
    admin.redeem(s1, 50_000 * YUAN, "CNY", request_id="z1")
    with pytest.raises(DailyLimitReached) as over:
        admin.redeem(s1, 1, "CNY", request_id="z2")
    assert over.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.value.retry_after is not None and over.value.retry_after > 0
    # The bearer card has no account, hence no daily limit; its big movement is reported.
    receipt = admin.redeem(s2, 50_001 * YUAN, "CNY", request_id="z3")
    events = list(admin.subscribe_events(head, kinds=["aml.report"], timeout=1.0))
    assert len(events) == 1 and events[0].subject == f"card:{s2}"
    assert json.loads(events[0].detail_json)["transaction"] == receipt.transaction_id


def test_freeze_and_unfreeze(connect: Connect) -> None:
    admin, operator = connect("admin"), connect("operator")
    admin.create_product(sku="FZ", name="Freeze", currency="CNY", denominations=[100 * YUAN])
    lot = admin.create_lot("FZ", 2, 100 * YUAN)
    (serial, code), (other, _) = list(admin.stream_lot(lot.id))
    head = admin.event_head()
    card = operator.freeze(serial, "suspected theft")
    assert card.status == card_pb2.CARD_STATUS_FROZEN
    assert operator.freeze(serial, "again").status == card_pb2.CARD_STATUS_FROZEN  # a retry: no-op
    # A frozen card can be neither spent nor bound, and a bulk check says so.
    with pytest.raises(CardFrozen):
        admin.redeem(serial, 1, "CNY")
    with pytest.raises(CardFrozen):
        admin.bind_card(code, account="mallory")
    assert [r.status for r in admin.check([code])] == ["frozen"]
    with pytest.raises(PermissionDenied):
        connect("merchant").unfreeze(serial, "please")
    with pytest.raises(InvalidArgument):
        operator.unfreeze(serial, "")
    assert operator.unfreeze(serial, "cleared").status == card_pb2.CARD_STATUS_ACTIVE
    assert [r.status for r in admin.check([code])] == ["ok"]
    admin.redeem(serial, 1, "CNY")
    with pytest.raises(CardNotFound):
        operator.freeze("999999999999", "no such card")
    kinds = [(e.kind, e.subject) for e in admin.subscribe_events(head, timeout=1.0)]
    assert kinds == [("card.frozen", f"card:{serial}"), ("card.unfrozen", f"card:{serial}")]
    admin.void_lot(lot.id)
    with pytest.raises(CardVoid):
        operator.freeze(other, "too late")


def test_reports_page_through(connect: Connect) -> None:
    admin = connect("admin")
    admin.create_product(sku="AML", name="Big", currency="CNY", amount_range=(YUAN, 10**7 * YUAN))
    lot = admin.create_lot("AML", 1, 10**6 * YUAN)
    ((serial, _),) = list(admin.stream_lot(lot.id))
    for i in range(5):
        admin.redeem(serial, 50_001 * YUAN, "CNY", request_id=f"aml-{i}")
    got = list(admin.reports("aml", page_size=2))
    assert len(got) == 5 and [r.id for r in got] == sorted(r.id for r in got)
    assert {(r.subject, r.amount.minor_units, r.amount.currency, r.profile) for r in got} == {
        (f"card:{serial}", 50_001 * YUAN, "CNY", "platform@1")
    }
    assert list(admin.reports("alert")) == []
    with pytest.raises(InvalidArgument):
        list(admin.reports("gossip"))
    with pytest.raises(PermissionDenied):
        list(connect("merchant").reports())
