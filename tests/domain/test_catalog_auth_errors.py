"""Catalog validation, tokens and roles, key files, and the error table."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cardmint.server.domain import (
    ALL_ERRORS,
    Delivery,
    Domain,
    ErrorKind,
    InvalidArgument,
    Keyring,
    KeyringError,
    PermissionDenied,
    ProductExists,
    ProductNotFound,
    Role,
    TokenExpired,
    Unauthenticated,
)
from cardmint.server.domain.auth import MAX_TOKEN_LIFETIME, AuthService, hash_token
from hypothesis import given
from hypothesis import strategies as st

from .conftest import Callers, FakeClock


def test_error_table_is_complete_and_consistent() -> None:
    reasons = [cls.reason for cls in ALL_ERRORS]
    assert len(reasons) == len(set(reasons))
    for cls in ALL_ERRORS:
        err = cls()
        assert isinstance(err.kind, ErrorKind) and err.kind is not ErrorKind.INTERNAL
        assert err.reason.isupper() and err.message
        if err.kind is ErrorKind.RESOURCE_EXHAUSTED:
            assert cls(retry_after=5.0).retry_after == 5.0
    # The domain never imports grpc (the API layer owns the mapping): check in a fresh process.
    probe = "import sys, cardmint.server.domain; print([m for m in sys.modules if m.split('.')[0] == 'grpc'])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_create_product_and_violations(domain: Domain, who: Callers) -> None:
    p = domain.catalog.create_product(
        who.operator,
        sku="R-1",
        name="Range card",
        currency="USD",
        amount_range=(100, 500000),
        delivery="manual",
    )
    assert p.amount_range == (100, 500000) and p.delivery is Delivery.REVIEW and p.validity_days is None
    assert domain.catalog.get_product(who.alice, "R-1") == p
    assert [x.sku for x in domain.catalog.list_products(who.merchant)] == ["R-1"]
    with pytest.raises(ProductExists):
        domain.catalog.create_product(who.admin, sku="R-1", name="x", currency="USD", denominations=(100,))
    with pytest.raises(ProductNotFound):
        domain.catalog.get_product(who.alice, "R-2")
    with pytest.raises(PermissionDenied):
        domain.catalog.create_product(who.merchant, sku="M", name="x", currency="USD", denominations=(100,))
    with pytest.raises(InvalidArgument) as bad:
        domain.catalog.create_product(
            who.admin,
            sku="bad sku!",
            name="",
            currency="usd",
            denominations=(100, 100),
            validity_days=4000,  # over the platform profile's 1,095 days
            delivery="later",
            code_length=40,
        )
    fields = {v.field for v in bad.value.violations}
    assert fields == {"sku", "name", "currency", "denominations", "validity_days", "delivery", "code_length"}


@given(lo=st.integers(-5, 10), hi=st.integers(-5, 10), flt=st.booleans())
def test_amount_range_rules(lo: int, hi: int, flt: bool) -> None:
    from cardmint.server.domain.catalog import validate_product

    rng = (float(lo), hi) if flt else (lo, hi)
    kw: dict[str, object] = {
        "sku": "S",
        "name": "n",
        "currency": "EUR",
        "denominations": (),
        "validity_days": None,
        "delivery": "auto",
        "code_length": 16,
    }
    if not flt and 1 <= lo <= hi:
        assert validate_product(amount_range=rng, **kw).amount_range == (lo, hi)  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidArgument) as e:
            validate_product(amount_range=rng, **kw)  # type: ignore[arg-type]
        assert [v.field for v in e.value.violations] == ["amount_range"]


def test_revocation_by_another_process_takes_effect_within_the_cache_time(domain: Domain) -> None:
    now = [100.0]
    here = AuthService(domain.storage, cache_seconds=1.0, clock=lambda: now[0])
    elsewhere = AuthService(domain.storage, cache_seconds=1.0)  # another server process
    admin = elsewhere.authenticate("Bearer " + elsewhere.create_token(Role.ADMIN).token)
    issued = here.create_token("operator")
    bearer = f"Bearer {issued.token}"
    assert here.authenticate(bearer).token_id == issued.token_id
    elsewhere.revoke_token(admin, issued.token_id)
    with pytest.raises(Unauthenticated):
        elsewhere.authenticate(bearer)  # the revoking process forgets it at once
    now[0] += 0.5
    assert here.authenticate(bearer).token_id == issued.token_id  # remembered, within 1 s
    now[0] += 0.6
    with pytest.raises(Unauthenticated):
        here.authenticate(bearer)  # past the cache time: the database decides, and refuses
    now[0] += 100
    with pytest.raises(Unauthenticated):
        here.authenticate(bearer)  # a refusal is never remembered as an acceptance
    # With no cache every call asks the database.
    uncached = AuthService(domain.storage, cache_seconds=0)
    other = uncached.create_token("merchant")
    assert uncached.authenticate(f"Bearer {other.token}").role is Role.MERCHANT
    elsewhere.revoke_token(admin, other.token_id)
    with pytest.raises(Unauthenticated):
        uncached.authenticate(f"Bearer {other.token}")


def test_a_token_stops_working_when_it_expires_by_the_storages_clock(
    domain: Domain, clock: FakeClock
) -> None:
    """``expires_in``: seconds by the storage's clock. Before then the token works and is
    cached at most until its expiry; after, TokenExpired (an Unauthenticated) with the
    moment it expired, never answered from the cache. Listing and the audit show it."""
    now = [100.0]
    auth = AuthService(domain.storage, cache_seconds=60.0, clock=lambda: now[0])
    admin = auth.authenticate("Bearer " + auth.create_token(Role.ADMIN).token)
    issued = auth.issue_token(admin, "customer", account="zoe", label="app", expires_in=90)
    assert issued.expires_at == clock() + timedelta(seconds=90)
    bearer = f"Bearer {issued.token}"

    def later(seconds: float) -> None:  # both clocks, as time passes for a server
        clock.advance(seconds=seconds)
        now[0] += seconds

    assert auth.authenticate(bearer).account == "zoe"
    later(89)  # past the cache time: read again, remembered for the 1 s it has left
    assert auth.authenticate(bearer).account == "zoe"
    later(0.5)
    assert auth.authenticate(bearer).account == "zoe"
    later(0.5)  # expired: not answered from the cache (60 s) any more
    with pytest.raises(TokenExpired) as gone:
        auth.authenticate(bearer)
    assert isinstance(gone.value, Unauthenticated)
    assert gone.value.metadata == {"expired_at": issued.expires_at.isoformat()}
    forever = auth.create_token("merchant", expires_in=0)
    assert forever.expires_at is None
    clock.advance(days=3650)
    assert auth.authenticate(f"Bearer {forever.token}").role is Role.MERCHANT
    listed = {t.id: t for t in auth.list_tokens(admin)}
    assert listed[issued.token_id].expires_at == issued.expires_at
    assert listed[forever.token_id].expires_at is None
    with domain.storage.read() as tx:
        created = [
            e
            for e in tx.audit_entries(0)
            if e.action == "token.create" and e.subject == f"token:{issued.token_id}"
        ]
    assert len(created) == 1 and issued.expires_at.isoformat() in created[0].detail
    for bad in (-1, MAX_TOKEN_LIFETIME + 1, 1.5, True, "60"):
        with pytest.raises(InvalidArgument) as e:
            auth.create_token("merchant", expires_in=bad)  # type: ignore[arg-type]
        assert [v.field for v in e.value.violations] == ["expires_in_seconds"]
    assert auth.create_token("merchant", expires_in=MAX_TOKEN_LIFETIME).expires_at is not None


def test_tokens(domain: Domain) -> None:
    issued = domain.auth.create_token("merchant", label="shop")
    who = domain.auth.authenticate(f"bearer {issued.token}")
    assert who.role is Role.MERCHANT and who.account_id is None and who.actor == f"token:{issued.token_id}"
    with domain.storage.read() as tx:
        stored = tx.find_token(hash_token(issued.token))
        assert stored is not None and issued.token.encode() not in stored.token_hash
    for bad in (None, "", issued.token, f"Basic {issued.token}", "Bearer cm_nope", "Bearer " + "x" * 500):
        with pytest.raises(Unauthenticated):
            domain.auth.authenticate(bad)
    admin = domain.auth.authenticate("Bearer " + domain.auth.create_token(Role.ADMIN).token)
    with pytest.raises(PermissionDenied):
        domain.auth.revoke_token(who, issued.token_id)
    domain.auth.revoke_token(admin, issued.token_id)
    with pytest.raises(Unauthenticated):
        domain.auth.authenticate(f"Bearer {issued.token}")
    with pytest.raises(InvalidArgument):
        domain.auth.create_token(Role.CUSTOMER)
    with pytest.raises(InvalidArgument):
        domain.auth.create_token(Role.ADMIN, account="a")
    with pytest.raises(InvalidArgument):
        domain.auth.create_token("root")
    cust = domain.auth.authenticate("Bearer " + domain.auth.create_token(Role.CUSTOMER, account="zoe").token)
    assert cust.account == "zoe" and cust.account_id is not None


def test_keyring_files(tmp_path: Path) -> None:
    first = Keyring.load_or_create(tmp_path)
    keys = tmp_path / "keys"
    for f in keys.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    second = Keyring.load_or_create(tmp_path)
    assert second.digest_key == first.digest_key and second.seal_key == first.seal_key
    assert first.digest_key.hex() not in repr(first)
    os.chmod(keys / "digest.key", 0o644)
    with pytest.raises(KeyringError):
        Keyring.load_or_create(tmp_path)
    os.chmod(keys / "digest.key", 0o600)
    (keys / "seal-2.key").write_bytes(b"short")
    os.chmod(keys / "seal-2.key", 0o600)
    with pytest.raises(KeyringError):
        Keyring.load_or_create(tmp_path)
