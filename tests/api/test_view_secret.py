"""ViewSecret over gRPC, on SQLite and PostgreSQL: owner only, masked unless step-up,
audited without the code, and bursts freeze the card with an alert."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cardmint.client import CardFrozen, CardNotFound, Client, PermissionDenied
from cardmint.server.app import Running

from .test_services import _lot

Connect = Callable[..., Client]


def _owner(server: Running, account: str, device: str | None = None) -> Client:
    token = server.domain.auth.create_token("customer", account=account).token
    return Client(f"127.0.0.1:{server.port}", token, device_id=device)


def test_owner_sees_masked_then_full_with_step_up(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=2)
    (serial, code), (other, _) = rows
    with _owner(server, "amy", "phone-1") as amy:
        amy.bind_card(code)
        masked = amy.view_secret(serial)
        assert masked.masked and masked.code.endswith(code[-4:]) and code[:4] not in masked.code
        full = amy.view_secret(serial, step_up=True)
        assert (full.masked, full.code) == (False, code)
        with pytest.raises(CardNotFound):  # not hers: same answer as no such card
            amy.view_secret(other, step_up=True)
    with _owner(server, "ben") as ben, pytest.raises(CardNotFound):
        ben.view_secret(serial, step_up=True)
    with pytest.raises(PermissionDenied):  # staff do not read secrets
        admin.view_secret(serial, step_up=True)
    with server.domain.storage.read() as tx:
        audit = [e for e in tx.audit_entries() if e.action == "card.view_secret"]
        assert (
            len(audit) == 1 and code not in audit[0].detail and code.replace("-", "") not in audit[0].detail
        )


def test_a_new_device_freezes_the_card_and_files_an_alert(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=1)
    serial, code = rows[0]
    head = admin.event_head()
    with _owner(server, "cat", "phone-1") as cat:
        cat.bind_card(code)
        assert not cat.view_secret(serial, step_up=True).masked  # the first device is learned
    with _owner(server, "cat", "unknown-laptop") as thief:
        with pytest.raises(CardFrozen):
            thief.view_secret(serial, step_up=True)
        assert thief.view_secret(serial).masked  # a masked view still works
    with _owner(server, "cat", "phone-1") as cat, pytest.raises(CardFrozen):
        cat.view_secret(serial, step_up=True)  # frozen until staff look at it
    alerts = list(admin.reports("alert"))
    assert (
        len(alerts) == 1 and alerts[0].subject == f"card:{serial}" and "new device" in alerts[0].detail_json
    )
    kinds = [e.kind for e in admin.subscribe_events(head, timeout=1.0)]
    assert kinds == ["alert.viewing", "card.frozen"]
    admin.unfreeze(serial, "owner confirmed the laptop")
    with _owner(server, "cat", "unknown-laptop") as cat:
        assert cat.view_secret(serial, step_up=True).code == code  # now a known device


def test_too_many_cards_viewed_in_an_hour_freezes(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=7)
    with _owner(server, "dan", "phone-1") as dan:
        for _, code in rows:
            dan.bind_card(code)
        for serial, _ in rows[:5]:  # the platform profile allows 5 cards an hour
            dan.view_secret(serial, step_up=True)
        with pytest.raises(CardFrozen):
            dan.view_secret(rows[5][0], step_up=True)
        dan.view_secret(rows[0][0], step_up=True)  # a card already seen this hour is fine


def test_too_many_full_views_in_an_hour_freezes(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=1)
    serial, code = rows[0]
    with _owner(server, "eve") as eve:
        eve.bind_card(code)
        for _ in range(20):  # the platform profile allows 20 full views an hour
            eve.view_secret(serial, step_up=True)
        with pytest.raises(CardFrozen):
            eve.view_secret(serial, step_up=True)
