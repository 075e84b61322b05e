"""Compliance over gRPC, on SQLite and PostgreSQL: product kinds, the daily limit's status
and retry time, and AML reports reaching notifiers."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest
from cardmint.client import Client, DailyLimitReached, InvalidArgument

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
