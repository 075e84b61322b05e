"""AccountService over gRPC, on SQLite and PostgreSQL: admins mint, list and revoke
tokens; a token's secret is shown once and a revoked token stops working at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cardmint.client import Client, InvalidArgument, PermissionDenied, Unauthenticated
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
