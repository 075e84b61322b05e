"""AccountService over gRPC, on SQLite and PostgreSQL: admins mint, list and revoke
tokens; a token's secret is shown once and a revoked token stops working at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cardmint.client import Client, InvalidArgument, PermissionDenied, TokenExpired, Unauthenticated
from cardmint.server.app import Running

Connect = Callable[..., Client]


def test_tokens_are_minted_listed_and_revoked(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    made = admin.create_token("operator", label="night shift")
    cust = admin.create_token("customer", account="fay")
    addr = f"127.0.0.1:{server.port}"
    with Client(addr, made.token) as op:
        op.create_product(sku="TK", name="Token card", currency="CNY", denominations=[100])
        with pytest.raises(PermissionDenied):
            op.create_token("admin")
    listed = {t.id: t for t in admin.tokens(page_size=2)}
    assert listed[made.id].role == "operator" and listed[made.id].label == "night shift"
    assert listed[cust.id].account == "fay" and not listed[cust.id].HasField("revoked_at")
    for t in listed.values():  # no secret anywhere in a listing
        assert made.token not in str(t) and cust.token not in str(t)
    admin.revoke_token(made.id)
    admin.revoke_token(made.id)  # again: a no-op
    with Client(addr, made.token) as op, pytest.raises(Unauthenticated):
        op.get_product("TK")
    assert {t.id: t for t in admin.tokens()}[made.id].HasField("revoked_at")
    with pytest.raises(InvalidArgument):
        admin.create_token("customer")  # a customer token needs its account
    with pytest.raises(InvalidArgument):
        admin.create_token("root")
    with pytest.raises(PermissionDenied):
        list(connect("operator").tokens())
    with server.domain.storage.read() as tx:
        actions = [(e.actor, e.action) for e in tx.audit_entries() if e.action.startswith("token.")]
    assert ("token.revoke" in {a for _, a in actions}) and any(
        actor.startswith("token:") for actor, a in actions if a == "token.create"
    )


def test_a_token_with_a_lifetime_works_until_it_expires(connect: Connect, server: Running) -> None:
    """``expires_in_seconds``: the answer and the listing say when; past it every call is
    refused UNAUTHENTICATED / TOKEN_EXPIRED (``client.TokenExpired``, an Unauthenticated)
    with the moment it expired. 0 is never; out of range is refused by field."""
    admin = connect("admin")
    addr = f"127.0.0.1:{server.port}"
    before = datetime.now(UTC)
    day = admin.create_token("operator", expires_in=86_400)
    brief = admin.create_token("merchant", expires_in=1)
    forever = admin.create_token("merchant")
    assert not forever.HasField("expires_at")
    day_ends = day.expires_at.ToDatetime(tzinfo=UTC)
    assert before + timedelta(days=1) <= day_ends <= datetime.now(UTC) + timedelta(days=1)
    listed = {t.id: t for t in admin.tokens()}
    assert listed[day.id].expires_at == day.expires_at and listed[brief.id].expires_at == brief.expires_at
    assert not listed[forever.id].HasField("expires_at")
    with Client(addr, day.token) as op:
        assert op.create_product(sku="TTL", name="t", currency="CNY", denominations=[100]).sku == "TTL"
    brief_ends = brief.expires_at.ToDatetime(tzinfo=UTC)
    time.sleep(max(0.0, (brief_ends - datetime.now(UTC)).total_seconds()) + 0.05)
    with Client(addr, brief.token) as shop, pytest.raises(TokenExpired) as expired:
        shop.get_product("TTL")
    assert isinstance(expired.value, Unauthenticated) and expired.value.reason == "TOKEN_EXPIRED"
    assert datetime.fromisoformat(expired.value.metadata["expired_at"]) == brief_ends
    with Client(addr, forever.token) as shop:
        assert shop.get_product("TTL").sku == "TTL"
    for bad in (-5, 316_224_001):
        with pytest.raises(InvalidArgument) as refused:
            admin.create_token("merchant", expires_in=bad)
        assert [v.field for v in refused.value.violations] == ["expires_in_seconds"]
