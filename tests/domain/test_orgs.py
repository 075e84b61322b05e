"""Organizations in the domain, on both backends: the permission table, scopes, the verified
token cache after a re-scope, and ``buyer_facts``."""

from __future__ import annotations

from cardmint.server.domain import Domain, Role
from cardmint.server.domain.accounts import BuyerFacts, buyer_facts, recipient_account_id
from cardmint.server.domain.auth import PERMISSIONS, AuthService, Permission, Principal, may
from cardmint.server.storage import OrgRole, Storage

from .conftest import Callers


def test_permission_table() -> None:
    assert PERMISSIONS[OrgRole.ORG_ADMIN] == frozenset(Permission)
    assert Permission.MANAGE_DEPARTMENTS not in PERMISSIONS[OrgRole.DEPT_MANAGER]
    assert {Permission.MINT, Permission.EXPORT, Permission.FREEZE} <= PERMISSIONS[OrgRole.DEPT_MANAGER]
    assert PERMISSIONS[OrgRole.MEMBER] == {Permission.READ}
    staff = Principal(1, Role.ADMIN, None, None, "")
    assert not may(staff, Permission.READ)  # staff are judged by their role, not this table
    scoped = Principal(2, Role.CUSTOMER, 5, "x", "", 7, "acme", 3, "hr", OrgRole.MEMBER)
    assert scoped.in_scope(7, 3) and not scoped.in_scope(7, 4) and not scoped.in_scope(7, None)
    assert not scoped.in_scope(8, 3)
    wide = Principal(3, Role.CUSTOMER, 6, "y", "", 7, "acme", None, None, OrgRole.ORG_ADMIN)
    assert wide.in_scope(7, 3) and wide.in_scope(7, None) and not wide.in_scope(None, None)


def test_recipient_ids() -> None:
    assert recipient_account_id(" Ann@Example.COM ") == "ann@example.com"
    assert recipient_account_id("emp-0042") == "emp-0042"
    for bad in ("", "  ", "a@", "@b.c", "a@b", "a b@c.d", "x" * 200, "tab\there"):
        assert recipient_account_id(bad) is None


def test_rescope_reaches_a_cached_token_at_once(storage: Storage, domain: Domain, who: Callers) -> None:
    now = [100.0]
    auth = AuthService(storage, cache_seconds=60.0, clock=lambda: now[0])
    domain.accounts.create_organization(who.admin, "acme", request_id="o")
    domain.accounts.create_department(who.admin, "acme", "hr", request_id="d")
    domain.accounts.create_department(who.admin, "acme", "ops", request_id="d2")
    made = domain.accounts.add_member(who.admin, "acme", "emp", department="hr", request_id="m")
    assert made.token is not None
    bearer = f"Bearer {made.token}"
    first = auth.authenticate(bearer)
    assert (first.organization, first.department, first.org_role) == ("acme", "hr", OrgRole.MEMBER)
    # Another AuthService (another process) moved it: this cache keeps the old scope until
    # its time is up, or until this process is told to forget the account.
    domain.accounts.add_member(who.admin, "acme", "emp", department="ops", request_id="m2")
    assert auth.authenticate(bearer).department == "hr"
    assert first.account_id is not None
    auth.forget_account(first.account_id)
    assert auth.authenticate(bearer).department == "ops"
    # The domain's own AuthService forgets on every change it makes.
    assert domain.auth.authenticate(bearer).department == "ops"
    domain.accounts.remove_member(who.admin, "acme", "emp", request_id="r")
    gone = domain.auth.authenticate(bearer)
    assert gone.organization is None and gone.org_role is None and gone.role is Role.CUSTOMER


def test_buyer_facts(storage: Storage, domain: Domain, who: Callers) -> None:
    domain.accounts.create_organization(who.admin, "acme", request_id="o")
    domain.accounts.add_member(who.admin, "acme", "buyer", request_id="m", with_token=False)
    domain.accounts.verify_real_name(who.operator, "alice", request_id="v")
    with storage.read() as tx:
        ids = {name: acct.id for name in ("alice", "bob", "buyer") if (acct := tx.find_account(name))}
        assert buyer_facts(tx, ids["alice"]) == BuyerFacts(real_name_verified=True, organization=False)
        assert buyer_facts(tx, ids["bob"]) == BuyerFacts(real_name_verified=False, organization=False)
        assert buyer_facts(tx, ids["buyer"]) == BuyerFacts(real_name_verified=False, organization=True)
        assert buyer_facts(tx, 10**9) == BuyerFacts(real_name_verified=False, organization=False)


def test_list_lots_is_scoped(domain: Domain, who: Callers) -> None:
    acc = domain.accounts
    acc.create_organization(who.admin, "acme", request_id="o")
    acc.create_department(who.admin, "acme", "hr", request_id="d1")
    acc.create_department(who.admin, "acme", "ops", request_id="d2")
    domain.catalog.create_product(who.admin, sku="S", name="S", currency="CNY", denominations=(100,))

    def member(name: str, role: OrgRole, dept: str | None) -> Principal:
        made = acc.add_member(who.admin, "acme", name, role=role, department=dept, request_id=name)
        return domain.auth.authenticate(f"Bearer {made.token}")

    boss, hr, ops = (
        member("boss", OrgRole.ORG_ADMIN, None),
        member("hr", OrgRole.DEPT_MANAGER, "hr"),
        member("ops", OrgRole.MEMBER, "ops"),
    )
    hr_lot = domain.lots.create_lot(hr, sku="S", count=2, face_value=100)
    org_lot = domain.lots.create_lot(boss, sku="S", count=2, face_value=100)
    staff_lot = domain.lots.create_lot(who.operator, sku="S", count=2, face_value=100)
    assert [lot.id for lot in domain.lots.list_lots(hr)] == [hr_lot.id]
    assert [lot.id for lot in domain.lots.list_lots(boss, sku="S")] == [hr_lot.id, org_lot.id]
    assert domain.lots.list_lots(ops) == []
    assert [lot.id for lot in domain.lots.list_lots(who.admin)] == [hr_lot.id, org_lot.id, staff_lot.id]
    assert [lot.id for lot in domain.lots.list_lots(boss, after_id=hr_lot.id, limit=1)] == [org_lot.id]
