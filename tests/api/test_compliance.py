"""Compliance over gRPC, on SQLite and PostgreSQL: product kinds, the daily limit's status
and retry time, and AML reports reaching notifiers."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import numpy as np
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
from cardmint.server.app import Running
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
        (f"card:{serial}", 50_001 * YUAN, "CNY", "platform@4")
    }
    assert list(admin.reports("alert")) == []
    with pytest.raises(InvalidArgument):
        list(admin.reports("gossip"))
    with pytest.raises(PermissionDenied):
        list(connect("merchant").reports())


def test_import_blacklist_freezes_issued_cards_once(connect: Connect, server: Running) -> None:
    admin, operator = connect("admin"), connect("operator")
    admin.create_product(sku="BL", name="Blacklist", currency="CNY", denominations=[100 * YUAN])
    lot = admin.create_lot("BL", 4, 100 * YUAN)
    rows = list(admin.stream_lot(lot.id))
    stranger = admin.generate(1)[0]
    admin.freeze(rows[3][0], "already frozen")
    head = admin.event_head()
    # As typed by a partner: lower case, no hyphens; plus a never-issued code and junk.
    typed = [rows[0][1].lower(), rows[1][1].replace("-", ""), stranger, "not a code", rows[3][1]]
    got = operator.import_blacklist("partner A case 17", codes=typed)
    assert (got.received, got.malformed, got.added, got.matched, got.frozen) == (5, 1, 4, 3, 2)
    assert [r.status for r in admin.check([c for _, c in rows])] == ["frozen", "frozen", "ok", "frozen"]
    with pytest.raises(CardFrozen):
        admin.redeem(rows[0][0], 1, "CNY")
    again = operator.import_blacklist("partner A case 17", codes=typed)
    assert (again.added, again.matched, again.frozen) == (0, 3, 0)
    # Digests under the deployment's key (a batch job's path).
    d = server.domain
    canon = np.array([rows[2][1].replace("-", "").encode()], dtype="S16")
    digests = d.kernel.digest(canon, d.keyring.digest_key).tobytes()
    by_digest = admin.import_blacklist("batch", digests=digests)
    assert (by_digest.received, by_digest.added, by_digest.frozen) == (1, 1, 1)
    frozen = [e.subject for e in admin.subscribe_events(head, kinds=["card.frozen"], timeout=1.0)]
    assert sorted(frozen) == sorted(f"card:{s}" for s, _ in rows[:3])
    with pytest.raises(InvalidArgument):
        admin.import_blacklist("bad", digests=b"x" * 17)
    with pytest.raises(InvalidArgument):
        admin.import_blacklist("", codes=typed)
    with pytest.raises(PermissionDenied):
        connect("merchant").import_blacklist("me", codes=typed)


def test_verify_audit_over_the_wire(connect: Connect) -> None:
    admin = connect("admin")
    admin.create_product(sku="AU", name="Audited", currency="CNY", denominations=[100 * YUAN])
    v = admin.verify_audit()
    assert v.ok and v.events >= 1 and v.first_bad == 0 and len(v.head_hash) == 32
    again = admin.verify_audit(expect_events=v.events, expect_head=v.head_hash)
    assert again.ok
    short = admin.verify_audit(expect_events=v.events + 5)
    assert not short.ok and "anchor" in short.problem
    with pytest.raises(PermissionDenied):
        connect("merchant").verify_audit()
