"""Organizations over gRPC, on SQLite and PostgreSQL: departments, members and their roles,
lots and cards scoped to a department, token management by organization managers, and the
account facts order rules read (kind, real-name verification)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cardmint.client import (
    AccountUnavailable,
    CardNotFound,
    Client,
    DepartmentNotFound,
    ExportNeedsAdmin,
    IdempotencyKeyReused,
    InvalidArgument,
    LotNotFound,
    MemberNotFound,
    OrganizationExists,
    OrganizationNotFound,
    PermissionDenied,
    Unauthenticated,
)
from cardmint.server.app import Running
from cardmint.server.domain.accounts import buyer_facts

Connect = Callable[..., Client]


@dataclass
class Acme:
    admin: Client
    boss: Client  # org_admin, whole organization
    hr_lead: Client  # dept_manager of hr
    hr_clerk: Client  # member of hr
    sales_clerk: Client  # member of sales
    outsider: Client  # org_admin of another organization
    tokens: dict[str, int]


def _member(server: Running, admin: Client, org: str, account: str, role: str, dept: str = "") -> Client:
    made = admin.add_member(
        org, account, role=role, department=dept, request_id=f"add-{account}", with_token=True
    )
    assert made.token and made.member.role == role and made.member.department == dept
    return Client(f"127.0.0.1:{server.port}", made.token, timeout=30.0)


@pytest.fixture
def acme(connect: Connect, server: Running) -> Acme:
    admin = connect("admin")
    admin.create_product(sku="BEN", name="Benefit card", currency="CNY", denominations=[10000])
    admin.create_organization("acme", request_id="org-acme")
    admin.create_organization("globex", request_id="org-globex")
    admin.create_department("acme", "hr", request_id="dept-hr")
    admin.create_department("acme", "sales", request_id="dept-sales")
    clients = Acme(
        admin,
        _member(server, admin, "acme", "boss", "org_admin"),
        _member(server, admin, "acme", "hr-lead", "dept_manager", "hr"),
        _member(server, admin, "acme", "hr-clerk", "member", "hr"),
        _member(server, admin, "acme", "sales-clerk", "member", "sales"),
        _member(server, admin, "globex", "g-boss", "org_admin"),
        {},
    )
    return clients


def test_organizations_departments_and_members(acme: Acme, server: Running) -> None:
    admin = acme.admin
    # Idempotent on request_id; a new request for a taken name is refused.
    again = admin.create_organization("acme", request_id="org-acme")
    assert again.name == "acme"
    with pytest.raises(OrganizationExists):
        admin.create_organization("acme", request_id="org-acme-2")
    with pytest.raises(IdempotencyKeyReused):
        admin.create_organization("initech", request_id="org-acme")
    with pytest.raises(PermissionDenied):
        acme.boss.create_organization("mine", request_id="boss-org")

    # An org_admin adds departments to its own organization only; a dept_manager none.
    assert acme.boss.create_department("acme", "legal", request_id="dept-legal").name == "legal"
    with pytest.raises(PermissionDenied):
        acme.hr_lead.create_department("acme", "ops", request_id="dept-ops")
    with pytest.raises(OrganizationNotFound):
        acme.outsider.create_department("acme", "spy", request_id="dept-spy")
    assert {d.name for d in acme.boss.departments("acme")} == {"hr", "sales", "legal"}
    assert [d.name for d in acme.hr_clerk.departments("acme")] == ["hr"]

    # A dept_manager adds plain members to its own department only.
    added = acme.hr_lead.add_member("acme", "hr-new", department="hr", request_id="hr-new")
    assert added.member.department == "hr" and added.member.role == "member" and not added.token
    replay = acme.hr_lead.add_member("acme", "hr-new", department="hr", request_id="hr-new")
    assert replay.replayed and replay.member.account == "hr-new"
    with pytest.raises(PermissionDenied):
        acme.hr_lead.add_member("acme", "s-new", department="sales", request_id="s-new")
    with pytest.raises(PermissionDenied):
        acme.hr_lead.add_member("acme", "m-new", role="dept_manager", department="hr", request_id="m-new")
    with pytest.raises(DepartmentNotFound):
        acme.boss.add_member("acme", "x-new", department="nope", request_id="x-new")
    # An organization cannot take over an existing account by naming it; staff may link one.
    acme.admin.create_token("customer", account="fay")
    with pytest.raises(AccountUnavailable):
        acme.boss.add_member("acme", "fay", request_id="link-fay")
    with pytest.raises(AccountUnavailable):  # another organization's member
        acme.admin.add_member("globex", "hr-clerk", request_id="steal-clerk")
    linked = admin.add_member("acme", "fay", department="sales", request_id="link-fay-admin")
    assert linked.member.department == "sales"

    # Members are listed within the caller's scope; another organization sees nothing.
    everyone = {m.account for m in acme.boss.members("acme", page_size=2)}
    assert everyone == {"boss", "hr-lead", "hr-clerk", "sales-clerk", "hr-new", "fay"}
    assert {m.account for m in acme.hr_clerk.members("acme")} == {"hr-lead", "hr-clerk", "hr-new"}
    with pytest.raises(DepartmentNotFound):
        list(acme.hr_clerk.members("acme", department="sales"))
    with pytest.raises(OrganizationNotFound):
        list(acme.outsider.members("acme"))
    with pytest.raises(PermissionDenied):
        acme.hr_clerk.add_member("acme", "sneaky", department="hr", request_id="sneaky")

    with server.domain.storage.read() as tx:
        actions = [e.action for e in tx.audit_entries()]
    assert actions.count("org.create") == 2 and "org.department.create" in actions
    assert actions.count("org.member.set") == 7  # 5 in the fixture, hr-new, fay


def test_lots_and_cards_are_scoped_to_the_department(acme: Acme) -> None:
    hr_lot = acme.hr_lead.create_lot("BEN", 3, 10000)
    org_lot = acme.boss.create_lot("BEN", 2, 10000)
    platform_lot = acme.admin.create_lot("BEN", 2, 10000)
    with pytest.raises(PermissionDenied):
        acme.hr_clerk.create_lot("BEN", 1, 10000)

    # Who sees which lot: the department, the organization-wide admin, nobody else.
    assert acme.hr_clerk.get_lot(hr_lot.id).id == hr_lot.id
    assert acme.boss.get_lot(hr_lot.id).id == hr_lot.id
    for client, lot_id in [
        (acme.hr_clerk, org_lot.id),
        (acme.hr_lead, platform_lot.id),
        (acme.sales_clerk, hr_lot.id),
        (acme.outsider, hr_lot.id),
        (acme.outsider, org_lot.id),
        (acme.boss, platform_lot.id),
        (acme.hr_clerk, 10**9),  # does not exist: the same answer
    ]:
        with pytest.raises(LotNotFound):
            client.get_lot(lot_id)
    assert acme.admin.get_lot(hr_lot.id).id == hr_lot.id  # staff keep their powers

    # Export: managers in scope, once; members never; other organizations: not found.
    with pytest.raises(PermissionDenied):
        list(acme.hr_clerk.stream_lot(hr_lot.id))
    with pytest.raises(LotNotFound):
        list(acme.outsider.stream_lot(hr_lot.id))
    with pytest.raises(LotNotFound):
        list(acme.hr_lead.stream_lot(org_lot.id))
    hr_cards = list(acme.hr_lead.stream_lot(hr_lot.id))
    assert len(hr_cards) == 3
    with pytest.raises(ExportNeedsAdmin):
        list(acme.boss.stream_lot(hr_lot.id))
    org_cards = list(acme.boss.stream_lot(org_lot.id))
    platform_cards = list(acme.admin.stream_lot(platform_lot.id))

    # Card lookups and balances follow the lot's scope.
    serial = hr_cards[0][0]
    assert acme.hr_clerk.get_card(serial).serial == serial
    assert acme.hr_clerk.balance(serial=serial).balances[0].minor_units == 10000
    assert acme.boss.get_card(serial).serial == serial
    for client, s in [
        (acme.sales_clerk, serial),
        (acme.outsider, serial),
        (acme.hr_clerk, org_cards[0][0]),
        (acme.boss, platform_cards[0][0]),
        (acme.hr_clerk, "999999999999"),
    ]:
        with pytest.raises(CardNotFound):
            client.get_card(s)
        with pytest.raises(CardNotFound):
            client.balance(serial=s)


def test_secrets_and_freeze_powers_follow_the_role(acme: Acme, connect: Connect) -> None:
    lot = acme.hr_lead.create_lot("BEN", 2, 10000)
    (s1, c1), (s2, _) = acme.admin.stream_lot(lot.id)
    # A manager sees an unbound card's code (to hand it out); a member does not.
    full = acme.hr_lead.view_secret(s1, step_up=True)
    assert not full.masked and full.code == c1
    assert acme.boss.view_secret(s2).masked
    with pytest.raises(CardNotFound):
        acme.hr_clerk.view_secret(s1, step_up=True)
    with pytest.raises(CardNotFound):
        acme.outsider.view_secret(s1)
    # Once bound, the code is the holder's alone.
    holder = connect("customer", account="employee-1")
    holder.bind_card(c1)
    assert holder.view_secret(s1, step_up=True).code == c1
    with pytest.raises(CardNotFound):
        acme.hr_lead.view_secret(s1, step_up=True)
    assert acme.hr_lead.get_card(s1).bound  # still the organization's card to look up


def test_organization_managers_manage_their_members_tokens(acme: Acme, server: Running) -> None:
    made = acme.boss.create_token("customer", account="hr-clerk", label="clerk laptop")
    addr = f"127.0.0.1:{server.port}"
    with Client(addr, made.token) as c:
        assert c.get_account().member.department == "hr"
    with pytest.raises(MemberNotFound):
        acme.hr_lead.create_token("customer", account="boss")  # not a plain member
    with pytest.raises(MemberNotFound):
        acme.hr_lead.create_token("customer", account="sales-clerk")  # another department
    with pytest.raises(MemberNotFound):
        acme.boss.create_token("customer", account="g-boss")  # another organization
    with pytest.raises(MemberNotFound):
        acme.boss.create_token("customer", account="nobody-yet")
    with pytest.raises(PermissionDenied):
        acme.boss.create_token("operator")
    with pytest.raises(PermissionDenied):
        list(acme.hr_clerk.tokens())

    hr_view = {t.account for t in acme.hr_lead.tokens()}
    assert hr_view == {"hr-lead", "hr-clerk"}
    org_view = {t.account for t in acme.boss.tokens(page_size=2)}
    assert org_view == {"boss", "hr-lead", "hr-clerk", "sales-clerk"}

    boss_token = next(t.id for t in acme.boss.tokens() if t.account == "boss")
    acme.hr_lead.revoke_token(boss_token)  # not its to revoke: a no-op
    assert acme.boss.get_account().account == "boss"
    acme.hr_lead.revoke_token(made.id)
    with Client(addr, made.token) as c, pytest.raises(Unauthenticated):
        c.get_account()


def test_rescoped_or_removed_member_is_forgotten_at_once(acme: Acme) -> None:
    hr_lot = acme.hr_lead.create_lot("BEN", 1, 10000)
    assert acme.hr_clerk.get_lot(hr_lot.id).id == hr_lot.id  # now cached for a second
    acme.boss.add_member("acme", "hr-clerk", department="sales", request_id="move-clerk")
    with pytest.raises(LotNotFound):
        acme.hr_clerk.get_lot(hr_lot.id)
    acme.boss.add_member("acme", "hr-clerk", department="hr", request_id="move-back")
    assert acme.hr_clerk.get_lot(hr_lot.id).id == hr_lot.id
    acme.hr_lead.remove_member("acme", "hr-clerk", request_id="drop-clerk")
    acme.hr_lead.remove_member("acme", "hr-clerk", request_id="drop-clerk")  # replay: no error
    with pytest.raises(PermissionDenied):  # an individual now: no organization powers
        acme.hr_clerk.get_lot(hr_lot.id)
    assert acme.hr_clerk.get_account().kind == "individual"
    with pytest.raises(MemberNotFound):
        acme.hr_lead.remove_member("acme", "hr-clerk", request_id="drop-clerk-again")
    with pytest.raises(MemberNotFound):
        acme.hr_lead.remove_member("acme", "boss", request_id="drop-boss")


def test_real_name_verification_and_buyer_facts(acme: Acme, server: Running, connect: Connect) -> None:
    fay = connect("customer", account="fay")
    before = fay.get_account()
    assert before.kind == "individual" and not before.HasField("real_name_verified_at")
    with pytest.raises(PermissionDenied):
        fay.verify_real_name("fay", request_id="self-verify")
    with pytest.raises(PermissionDenied):
        acme.boss.verify_real_name("hr-clerk", request_id="boss-verify")
    facts = acme.admin.verify_real_name("fay", request_id="kyc-fay")
    assert facts.HasField("real_name_verified_at")
    again = acme.admin.verify_real_name("fay", request_id="kyc-fay-2")
    assert again.real_name_verified_at == facts.real_name_verified_at  # unchanged
    assert fay.get_account().HasField("real_name_verified_at")
    member = acme.boss.get_account("hr-clerk")
    assert member.kind == "organization_member" and member.member.organization == "acme"
    with pytest.raises(MemberNotFound):
        acme.boss.get_account("fay")  # not one of its members
    with pytest.raises(PermissionDenied):
        fay.get_account("hr-clerk")

    with server.domain.storage.read() as tx:
        fay_id = tx.find_account("fay")
        clerk_id = tx.find_account("hr-clerk")
        assert fay_id is not None and clerk_id is not None
        assert buyer_facts(tx, fay_id.id).real_name_verified
        assert not buyer_facts(tx, fay_id.id).organization
        assert buyer_facts(tx, clerk_id.id).organization
        assert not buyer_facts(tx, clerk_id.id).real_name_verified
        audits = [e.action for e in tx.audit_entries() if e.action == "account.verify_real_name"]
    assert audits == ["account.verify_real_name"]


def test_managers_freeze_cards_in_scope_only(acme: Acme) -> None:
    hr_lot = acme.hr_lead.create_lot("BEN", 2, 10000)
    platform_lot = acme.admin.create_lot("BEN", 1, 10000)
    (s1, _), (s2, _) = acme.admin.stream_lot(hr_lot.id)
    (p1, _) = next(iter(acme.admin.stream_lot(platform_lot.id)))
    assert acme.hr_lead.freeze(s1, "lost by the employee").status == 2  # CARD_STATUS_FROZEN
    assert acme.boss.freeze(s1, "again: a no-op").status == 2
    with pytest.raises(PermissionDenied):
        acme.hr_clerk.freeze(s2, "members cannot")
    with pytest.raises(CardNotFound):
        acme.outsider.freeze(s2, "not theirs")
    with pytest.raises(CardNotFound):
        acme.hr_lead.freeze(p1, "the platform's card")
    with pytest.raises(PermissionDenied):  # unfreezing stays with staff
        acme.hr_lead.unfreeze(s1, "found it")
    assert acme.admin.unfreeze(s1, "found it").status == 1


def test_list_lots_shows_each_caller_its_scope(acme: Acme, connect: Connect) -> None:
    hr_lot = acme.hr_lead.create_lot("BEN", 1, 10000)
    org_lot = acme.boss.create_lot("BEN", 1, 10000)
    platform_lots = [acme.admin.create_lot("BEN", 1, 10000) for _ in range(3)]
    globex_lot = acme.outsider.create_lot("BEN", 1, 10000)
    every = [hr_lot.id, org_lot.id, *(lot.id for lot in platform_lots), globex_lot.id]
    # Staff see every lot, oldest first, across pages of any size.
    for size in (1, 2, 200):
        assert [lot.id for lot in acme.admin.list_lots(page_size=size)] == sorted(every)
    assert [lot.id for lot in acme.admin.list_lots(sku="BEN")] == sorted(every)
    # The organization sees its own: the org-wide admin all of acme's, a department its own.
    assert [lot.id for lot in acme.boss.list_lots(page_size=1)] == [hr_lot.id, org_lot.id]
    assert [lot.id for lot in acme.hr_clerk.list_lots()] == [hr_lot.id]
    assert list(acme.sales_clerk.list_lots()) == []
    assert [lot.id for lot in acme.outsider.list_lots()] == [globex_lot.id]
    with pytest.raises(PermissionDenied):
        list(connect("customer", account="nobody-in-particular").list_lots())


def test_a_members_token_may_be_given_a_lifetime(acme: Acme, server: Running) -> None:
    """AddMember's ``token_expires_in_seconds``: the new token says when it expires, and
    the managers' listing too; out of range is refused before the membership changes."""
    before = datetime.now(UTC)
    made = acme.boss.add_member(
        "acme", "temp", department="sales", request_id="add-temp", with_token=True, token_expires_in=3600
    )
    ends = made.token_expires_at.ToDatetime(tzinfo=UTC)
    assert before + timedelta(hours=1) <= ends <= datetime.now(UTC) + timedelta(hours=1)
    assert {t.id: t for t in acme.boss.tokens()}[made.token_id].expires_at == made.token_expires_at
    with Client(f"127.0.0.1:{server.port}", made.token, timeout=30.0) as temp:
        assert temp.get_account("temp").member.department == "sales"
    plain = acme.boss.add_member("acme", "perm", request_id="add-perm", with_token=True)
    assert plain.token and not plain.HasField("token_expires_at")
    with pytest.raises(InvalidArgument) as refused:
        acme.boss.add_member("acme", "never", request_id="add-never", with_token=True, token_expires_in=-1)
    assert [v.field for v in refused.value.violations] == ["token_expires_in_seconds"]
    assert "never" not in {m.account for m in acme.boss.members("acme")}
