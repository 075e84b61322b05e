"""OrderService's notifier events through gRPC (EventService.Subscribe), on SQLite and on
PostgreSQL: each order state change a notifier cares about is one event, in commit order,
subject "order:<id>", naming the account and counts but never a code or a serial; a
replayed payment notification emits nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cardmint import client
from cardmint.server.domain import DomainConfig
from cardmint.v1 import event_pb2, order_pb2

from tests.api.test_orders import Shop, _open_shop

DELIVERED, REVIEW, REFUNDED = (
    order_pb2.ORDER_STATUS_DELIVERED,
    order_pb2.ORDER_STATUS_REVIEW,
    order_pb2.ORDER_STATUS_REFUNDED,
)


@pytest.fixture
def shop(storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    yield from _open_shop(storage_url, tmp_path, monkeypatch, DomainConfig(order_sweep_seconds=0))


def _events(shop: Shop, after: int) -> list[event_pb2.Event]:
    """Every event committed after ``after`` (the stream ends at its own deadline)."""
    return list(shop.connect("admin").subscribe_events(after, timeout=1.0))


def _seen(events: list[event_pb2.Event]) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.kind, e.subject, json.loads(e.detail_json)) for e in events]


def _secrets(shop: Shop, *orders: order_pb2.Order) -> set[str]:
    """Everything an event must never carry: the orders' codes (in full) and serials."""
    alice = shop.connect("customer", "alice")
    out: set[str] = set()
    for o in orders:
        for c in alice.get_order(o.id, reveal=True).codes:
            out |= {c.code, c.code.replace("-", ""), c.serial}
    return out


def test_pay_deliver_emits_one_delivery_and_a_replay_nothing(shop: Shop) -> None:
    sku = shop.stock(5)
    admin, merchant = shop.connect("admin"), shop.connect("merchant")
    alice = shop.connect("customer", "alice")
    head = admin.event_head()
    order = alice.create_order([(sku, 500, 2)], request_id="ev-1")
    assert _events(shop, head) == []  # a reservation alone is nobody's news
    paid = merchant.confirm_payment(order.id, "gw-ev-1", 1000, "CNY")
    assert paid.status == DELIVERED
    events = _events(shop, head)
    [(kind, subject, detail)] = _seen(events)
    assert (kind, subject) == ("order.delivered", f"order:{order.id}")
    by = detail.pop("by")
    assert isinstance(by, str) and by.startswith("token:")  # the merchant's token, as audited
    assert detail == {"account": "alice", "codes": 2, "amount": 1000, "currency": "CNY"}
    # The gateway re-sends the notification: same answer, no second event.
    again = merchant.confirm_payment(order.id, "gw-ev-1", 1000, "CNY")
    assert again.replayed and again.status == DELIVERED
    assert _events(shop, events[-1].id) == []
    secrets = _secrets(shop, order)
    assert len(secrets) == 6
    assert not any(s in e.detail_json or s in e.subject for e in events for s in secrets)


def test_every_order_outcome_in_commit_order(shop: Shop) -> None:
    auto, manual = shop.stock(6), shop.stock(6, review=True)
    admin, merchant, operator = shop.connect("admin"), shop.connect("merchant"), shop.connect("operator")
    alice = shop.connect("customer", "alice")
    head = admin.event_head()

    delivered = alice.create_order([(auto, 500, 1)])
    merchant.confirm_payment(delivered.id, "gw-1", 500, "CNY")
    secrets = _secrets(shop, delivered)  # before the refund voids the codes
    parked = alice.create_order([(manual, 500, 2)])
    assert merchant.confirm_payment(parked.id, "gw-2", 1000, "CNY").status == REVIEW
    rejected = alice.create_order([(manual, 500, 1)])
    merchant.confirm_payment(rejected.id, "gw-3", 500, "CNY")
    assert operator.review_order(rejected.id, approve=False, reason="fraud check").status == REFUNDED
    assert alice.refund_order(delivered.id, reason="changed my mind").status == REFUNDED
    lapsed = alice.create_order([(auto, 500, 3)])
    # Past every deadline: the sweeper expires the unpaid order and refunds the parked one
    # (paid, never delivered in time); the late payment of the lapsed order is refunded.
    shop.clock.advance(seconds=901)
    swept = operator.expire_reservations()
    assert (swept.expired, swept.refunded) == (1, 1)
    assert merchant.confirm_payment(lapsed.id, "gw-late", 1500, "CNY").status == REFUNDED
    head_after = admin.event_head()

    seen = _seen(_events(shop, head))
    assert [(kind, subject) for kind, subject, _ in seen] == [
        ("order.delivered", f"order:{delivered.id}"),
        ("order.review", f"order:{parked.id}"),
        ("order.review", f"order:{rejected.id}"),
        ("order.refunded", f"order:{rejected.id}"),
        ("order.refunded", f"order:{delivered.id}"),
        ("order.expired", f"order:{lapsed.id}"),
        ("order.refunded", f"order:{parked.id}"),
        ("order.refunded", f"order:{lapsed.id}"),
    ]
    details = [d for _, _, d in seen]
    assert all(d["account"] == "alice" for d in details)
    assert details[1]["codes"] == 2 and "deliver_by" in details[1]
    assert (details[3]["automatic"], details[3]["reason"]) == (False, "rejected in review: fraud check")
    assert (details[4]["automatic"], details[4]["amount"]) == (False, 500)
    assert details[4]["reason"] == "refund requested by customer: changed my mind"
    assert details[5] == {"account": "alice", "codes": 3}
    assert (details[6]["automatic"], details[6]["reason"]) == (True, "not delivered in time")
    assert (details[7]["automatic"], details[7]["reason"]) == (True, "paid after the reservation expired")
    assert details[7]["amount"] == 1500
    # Filtered by kind, and nothing after the last change.
    only = list(admin.subscribe_events(head, kinds=["order.expired"], timeout=1.0))
    assert [e.subject for e in only] == [f"order:{lapsed.id}"]
    assert _events(shop, head_after) == []
    assert secrets and not any(s in e.detail_json for e in _events(shop, head) for s in secrets)


def test_a_refused_change_emits_nothing(shop: Shop) -> None:
    sku = shop.stock(2)
    admin, merchant = shop.connect("admin"), shop.connect("merchant")
    alice = shop.connect("customer", "alice")
    order = alice.create_order([(sku, 500, 2)])
    head = admin.event_head()
    with pytest.raises(client.PaymentMismatch):
        merchant.confirm_payment(order.id, "gw-x", 999, "CNY")
    with pytest.raises(client.OrderWrongState):
        alice.refund_order(order.id)
    alice.cancel_order(order.id)
    assert _events(shop, head) == []
