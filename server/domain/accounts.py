"""Enterprise accounts: organizations, their departments and members, account facts, and
handing an organization's cards out to recipients in bulk.

An organization (an enterprise customer, say a company buying codes for employee benefits)
has departments and members. A member is an account, scoped to one department or to the
whole organization, with an organization role; what each role may do is the permission
table in ``auth.PERMISSIONS`` (docs/accounts.md). Staff (admin) create organizations and
may link any existing account; an organization's own managers create new member accounts
only, so no organization can take over someone else's account by naming it.

Lots minted by a member belong to its organization and department (``lots.py``); members
see only the lots and cards inside their scope, and everything else is answered as not
found. Every mutating call takes a ``request_id`` and is audited.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import blake3
from cardmint.kernel import KernelError, Status
from cardmint.server.storage import (
    Account,
    BindOutcome,
    Card,
    Department,
    Membership,
    Organization,
    OrgRole,
    Role,
    UnitOfWork,
)

from ._context import STAFF, Context, detail, int_arg, request_id_arg, require
from .auth import AuthService, Permission, Principal, expires_in_arg, manages, may
from .errors import (
    AccountUnavailable,
    DepartmentExists,
    DepartmentNotFound,
    InvalidArgument,
    MemberNotFound,
    OrganizationExists,
    OrganizationNotFound,
    PermissionDenied,
)
from .events import EventKind, emit

__all__ = [
    "AccountFacts",
    "AccountKind",
    "AccountService",
    "BulkBindRow",
    "BulkRowResult",
    "BuyerFacts",
    "MemberPage",
    "MemberView",
    "buyer_facts",
]

MAX_NAME = 128
MAX_BULK_ROWS = 10_000
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


class AccountKind(enum.StrEnum):
    INDIVIDUAL = "individual"
    ORGANIZATION_MEMBER = "organization_member"


@dataclass(frozen=True)
class BuyerFacts:
    """What order rules need to know about a buyer (profiles' real-name and bank-transfer
    thresholds): whether staff verified the holder's real name, and whether the account
    buys for an organization."""

    real_name_verified: bool
    organization: bool


def buyer_facts(tx: UnitOfWork, account_id: int) -> BuyerFacts:
    """The facts about ``account_id`` order rules judge by, read in ``tx`` (an unknown
    account has none: not verified, not an organization's)."""
    return BuyerFacts(
        real_name_verified=tx.real_name_verified_at(account_id) is not None,
        organization=tx.get_membership(account_id) is not None,
    )


@dataclass(frozen=True)
class AccountFacts:
    account: str
    kind: AccountKind
    real_name_verified_at: datetime | None
    membership: Membership | None


@dataclass(frozen=True)
class MemberView:
    membership: Membership
    token: str | None = None  # a new member's token: returned once, never stored in plaintext
    token_id: int | None = None
    replayed: bool = False
    token_expires_at: datetime | None = None  # None: never, or no token


@dataclass(frozen=True)
class MemberPage:
    members: tuple[Membership, ...]
    next_after: int | None  # pass back as ``after_account_id``; None at the end


@dataclass(frozen=True)
class BulkBindRow:
    """One input row: a card (its code, or its card number) and the recipient (an account
    id, or an email address: anything with an ``@`` is taken for one)."""

    card: str
    recipient: str


@dataclass(frozen=True)
class BulkRowResult:
    ok: bool
    reason: str  # ok: "bound" or "already bound to this recipient"; else why the row failed
    serial: str = ""  # the card's number, once the row named a card in scope
    account: str = ""  # the recipient's account id, once it was valid


def _name_arg(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME or not value.isprintable():
        raise InvalidArgument.of(field, f"1-{MAX_NAME} printable characters")
    return value.strip()


def _fingerprint(*parts: object) -> bytes:
    return blake3.blake3(json.dumps(parts, default=str).encode()).digest()


def _membership_json(m: Membership) -> dict[str, object]:
    return {
        "account_id": m.account_id,
        "account": m.account,
        "organization_id": m.organization_id,
        "organization": m.organization,
        "department_id": m.department_id,
        "department": m.department,
        "role": m.role.value,
        "added_at": m.added_at.isoformat(),
    }


def _membership_from(d: dict[str, object]) -> Membership:
    def opt_int(v: object) -> int | None:
        return None if v is None else int(str(v))

    return Membership(
        account_id=int(str(d["account_id"])),
        account=str(d["account"]),
        organization_id=int(str(d["organization_id"])),
        organization=str(d["organization"]),
        department_id=opt_int(d["department_id"]),
        department=None if d["department"] is None else str(d["department"]),
        role=OrgRole(str(d["role"])),
        added_at=datetime.fromisoformat(str(d["added_at"])),
    )


def recipient_account_id(value: str) -> str | None:
    """The account id a bulk-bind recipient names, or None when it is not a valid one.

    An email address (it has an ``@``) must look like one and is kept in lower case, so
    the same person typed twice is one account; anything else is an account id as is.
    """
    text = value.strip()
    if not text or len(text) > MAX_NAME or not text.isprintable():
        return None
    if "@" in text:
        return text.lower() if _EMAIL.match(text) else None
    return text


class AccountService:
    def __init__(self, ctx: Context, auth: AuthService) -> None:
        self._ctx = ctx
        self._auth = auth

    # -- lookups shared by the calls below
    def _organization(self, tx: UnitOfWork, principal: Principal, name: object) -> Organization:
        """The organization ``name`` names, if the caller is staff or one of its members;
        OrganizationNotFound otherwise (another organization is never "exists, not yours")."""
        org = tx.find_organization(name) if isinstance(name, str) and len(name) <= MAX_NAME else None
        if org is None:
            raise OrganizationNotFound()
        if principal.role in STAFF:
            return org
        if principal.organization_id != org.id:
            raise OrganizationNotFound()
        return org

    def _department(self, tx: UnitOfWork, org: Organization, name: str | None) -> Department | None:
        if not name:
            return None
        dept = tx.find_department(org.id, name) if len(name) <= MAX_NAME else None
        if dept is None:
            raise DepartmentNotFound()
        return dept

    def _claim(self, tx: UnitOfWork, scope: str, request_id: str, fingerprint: bytes) -> bytes | None:
        return tx.claim_idempotency(scope, request_id, fingerprint).replay

    # -- organizations and departments
    def create_organization(self, principal: Principal, name: str, *, request_id: str) -> Organization:
        """Admins open an organization (an enterprise customer), by a unique name."""
        require(principal, {Role.ADMIN})
        name = _name_arg(name, "name")
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("org.create", name)

        def work(tx: UnitOfWork) -> Organization:
            replay = self._claim(tx, "org.create", request_id, fingerprint)
            if replay is not None:
                found = tx.get_organization(int(replay))
                assert found is not None  # organizations are never deleted
                return found
            org = tx.create_organization(name, principal.actor)
            if org is None:
                raise OrganizationExists()
            tx.append_audit(principal.actor, "org.create", f"org:{org.id}", detail(name=name))
            tx.complete_idempotency("org.create", request_id, str(org.id).encode())
            return org

        return self._ctx.run(work)

    def create_department(
        self, principal: Principal, organization: str, name: str, *, request_id: str
    ) -> Department:
        """Admins, or the organization's org_admins, add a department."""
        if principal.role is not Role.ADMIN and not may(principal, Permission.MANAGE_DEPARTMENTS):
            raise PermissionDenied(metadata={"role": principal.role.value})
        name = _name_arg(name, "name")
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("org.department", organization, name)

        def work(tx: UnitOfWork) -> Department:
            org = self._organization(tx, principal, organization)
            replay = self._claim(tx, "org.department", request_id, fingerprint)
            if replay is not None:
                found = tx.find_department(org.id, name)
                assert found is not None  # departments are never deleted
                return found
            dept = tx.create_department(org.id, name)
            if dept is None:
                raise DepartmentExists()
            tx.append_audit(
                principal.actor, "org.department.create", f"org:{org.id}", detail(department=name)
            )
            tx.complete_idempotency("org.department", request_id, str(dept.id).encode())
            return dept

        return self._ctx.run(work)

    def departments(self, principal: Principal, organization: str) -> list[Department]:
        """The organization's departments (a department-scoped member sees its own only)."""
        self._read_check(principal)
        with self._ctx.storage.read() as tx:
            org = self._organization(tx, principal, organization)
            found = tx.list_departments(org.id)
        if principal.role in STAFF or principal.department_id is None:
            return found
        return [d for d in found if d.id == principal.department_id]

    def _read_check(self, principal: Principal) -> None:
        if principal.role not in STAFF and not may(principal, Permission.READ):
            raise PermissionDenied(metadata={"role": principal.role.value})

    # -- members
    def add_member(
        self,
        principal: Principal,
        organization: str,
        account: str,
        *,
        role: OrgRole | str = OrgRole.MEMBER,
        department: str | None = None,
        request_id: str,
        with_token: bool = True,
        label: str = "",
        token_expires_in: int | None = None,
    ) -> MemberView:
        """Make ``account`` a member (creating it), or change a member's department and role.

        Admins may link any existing account not in another organization. A member with
        MANAGE_MEMBERS creates new accounts only (an existing one that is not already a
        member it manages: ACCOUNT_UNAVAILABLE), inside its scope; a dept_manager adds plain
        members only. With ``with_token`` a new customer token for the member comes back
        (once: a replay of the request returns the member without it), living
        ``token_expires_in`` seconds (None or 0: never; checked before anything changes).
        """
        if principal.role is not Role.ADMIN and not may(principal, Permission.MANAGE_MEMBERS):
            raise PermissionDenied(metadata={"role": principal.role.value})
        try:
            org_role = OrgRole(role)
        except ValueError:
            raise InvalidArgument.of("role", f"one of {', '.join(r.value for r in OrgRole)}") from None
        account = _name_arg(account, "account")
        request_id = request_id_arg(request_id)
        token_expires_in = expires_in_arg(token_expires_in, "token_expires_in_seconds")
        if org_role is OrgRole.ORG_ADMIN and department:
            raise InvalidArgument.of("department", "an org_admin acts for the whole organization")
        if principal.role is not Role.ADMIN and principal.org_role is not OrgRole.ORG_ADMIN:
            if org_role is not OrgRole.MEMBER:
                raise PermissionDenied("a dept_manager adds plain members only")
            if principal.department_id is not None and department != principal.department:
                raise PermissionDenied("a dept_manager adds members to its own department only")
        fingerprint = _fingerprint(
            "org.member", organization, account, org_role.value, department, with_token
        )

        def work(tx: UnitOfWork) -> MemberView | bytes:
            org = self._organization(tx, principal, organization)
            replay = self._claim(tx, "org.member", request_id, fingerprint)
            if replay is not None:
                return replay
            dept = self._department(tx, org, department)
            existing = tx.find_account(account)
            current = tx.get_membership(existing.id) if existing is not None else None
            if current is not None and current.organization_id != org.id:
                raise AccountUnavailable()
            if (
                principal.role is not Role.ADMIN
                and existing is not None
                and (current is None or not manages(principal, current))
            ):
                raise AccountUnavailable()
            acct = existing or tx.ensure_account(account)
            before = current.role.value if current else None
            member = tx.set_membership(acct.id, org.id, dept.id if dept else None, org_role)
            tx.append_audit(
                principal.actor,
                "org.member.set",
                f"account:{acct.id}",
                detail(
                    organization=org.name,
                    department=member.department,
                    role=org_role.value,
                    before=before,
                    before_department=current.department if current else None,
                ),
            )
            emit(
                tx,
                EventKind.MEMBER_ADDED,
                f"account:{acct.external_id}",
                organization=org.name,
                department=member.department,
                role=org_role.value,
            )
            tx.complete_idempotency("org.member", request_id, json.dumps(_membership_json(member)).encode())
            return MemberView(member)

        result = self._ctx.run(work)
        if isinstance(result, bytes):
            return MemberView(_membership_from(json.loads(result)), replayed=True)
        self._auth.forget_account(result.membership.account_id)
        self._ctx.wake()
        if not with_token:
            return result
        issued = self._auth.create_token(
            Role.CUSTOMER,
            label=label or f"member of {result.membership.organization}",
            account=account,
            actor=principal.actor,
            expires_in=token_expires_in,
        )
        return MemberView(
            result.membership, issued.token, issued.token_id, token_expires_at=issued.expires_at
        )

    def remove_member(
        self, principal: Principal, organization: str, account: str, *, request_id: str
    ) -> None:
        """The account leaves the organization: it stays (with its own cards and tokens),
        as an individual account without the organization's powers from the next call on."""
        if principal.role is not Role.ADMIN and not may(principal, Permission.MANAGE_MEMBERS):
            raise PermissionDenied(metadata={"role": principal.role.value})
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("org.member.remove", organization, account)

        def work(tx: UnitOfWork) -> int | None:
            org = self._organization(tx, principal, organization)
            if self._claim(tx, "org.member.remove", request_id, fingerprint) is not None:
                return None
            acct = tx.find_account(account) if isinstance(account, str) and len(account) <= MAX_NAME else None
            current = tx.get_membership(acct.id) if acct is not None else None
            if acct is None or current is None or current.organization_id != org.id:
                raise MemberNotFound()
            if principal.role is not Role.ADMIN and not manages(principal, current):
                raise MemberNotFound()
            tx.remove_membership(acct.id)
            tx.append_audit(
                principal.actor,
                "org.member.remove",
                f"account:{acct.id}",
                detail(organization=org.name, department=current.department, role=current.role.value),
            )
            emit(tx, EventKind.MEMBER_REMOVED, f"account:{acct.external_id}", organization=org.name)
            tx.complete_idempotency("org.member.remove", request_id, b"{}")
            return acct.id

        removed = self._ctx.run(work)
        if removed is not None:
            self._auth.forget_account(removed)
            self._ctx.wake()

    def list_members(
        self,
        principal: Principal,
        organization: str,
        *,
        department: str | None = None,
        after_account_id: int = 0,
        limit: int = 100,
    ) -> MemberPage:
        """Members by account id; a department-scoped member sees its department's only."""
        self._read_check(principal)
        limit = int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        int_arg(after_account_id, "after_account_id", 0, 2**63 - 1)
        with self._ctx.storage.read() as tx:
            org = self._organization(tx, principal, organization)
            dept = self._department(tx, org, department)
            dept_id = dept.id if dept else None
            if principal.role not in STAFF and principal.department_id is not None:
                if dept_id is not None and dept_id != principal.department_id:
                    raise DepartmentNotFound()
                dept_id = principal.department_id
            rows = tx.list_members(org.id, dept_id, after_account_id, limit + 1)
        page = tuple(rows[:limit])
        return MemberPage(page, page[-1].account_id if len(rows) > limit and page else None)

    # -- account facts
    def verify_real_name(self, principal: Principal, account: str, *, request_id: str) -> AccountFacts:
        """Staff record that they verified the account holder's real name (idempotent:
        verifying again changes nothing)."""
        require(principal, STAFF)
        account = _name_arg(account, "account")
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("account.verify", account)

        def work(tx: UnitOfWork) -> AccountFacts:
            acct = tx.ensure_account(account)
            if self._claim(tx, "account.verify", request_id, fingerprint) is None:
                if tx.mark_real_name_verified(acct.id):
                    tx.append_audit(principal.actor, "account.verify_real_name", f"account:{acct.id}")
                tx.complete_idempotency("account.verify", request_id, b"{}")
            return self._facts(tx, acct)

        return self._ctx.run(work)

    def _facts(self, tx: UnitOfWork, acct: Account) -> AccountFacts:
        membership = tx.get_membership(acct.id)
        kind = AccountKind.INDIVIDUAL if membership is None else AccountKind.ORGANIZATION_MEMBER
        return AccountFacts(acct.external_id, kind, tx.real_name_verified_at(acct.id), membership)

    def account_facts(self, principal: Principal, account: str | None = None) -> AccountFacts:
        """An account's kind, real-name mark and membership: staff name any account; a
        customer sees its own; a member with MANAGE_MEMBERS those it manages."""
        with self._ctx.storage.read() as tx:
            if principal.role in STAFF:
                acct = tx.find_account(account) if account and len(account) <= MAX_NAME else None
            elif principal.role is Role.CUSTOMER and (not account or account == principal.account):
                acct = tx.get_account(principal.account_id) if principal.account_id is not None else None
            elif principal.role is Role.CUSTOMER and may(principal, Permission.MANAGE_MEMBERS):
                acct = tx.find_account(account) if account and len(account) <= MAX_NAME else None
                m = tx.get_membership(acct.id) if acct is not None else None
                if m is None or not manages(principal, m):
                    acct = None
            else:
                raise PermissionDenied(metadata={"role": principal.role.value})
            if acct is None:
                raise MemberNotFound("no such account")
            return self._facts(tx, acct)

    # -- handing cards out
    def bulk_bind(
        self,
        principal: Principal,
        organization: str,
        rows: Sequence[BulkBindRow],
        *,
        request_id: str,
    ) -> tuple[list[BulkRowResult], bool]:
        """Bind each row's card (of a lot of the organization, in the caller's scope) to
        the row's recipient, creating the recipient's account if needed.

        Every row gets its own result; a bad row never stops the others. Rows whose card is
        bound to that recipient already answer ok, so a repeated run is harmless; the same
        ``request_id`` with the same rows replays the first answer (the bool: replayed).
        Cards outside the caller's scope, or another organization's, are "unknown card",
        exactly like cards that do not exist.
        """
        if principal.role not in STAFF and not may(principal, Permission.BIND_RECIPIENTS):
            raise PermissionDenied(metadata={"role": principal.role.value})
        request_id = request_id_arg(request_id)
        if not 1 <= len(rows) <= MAX_BULK_ROWS:
            raise InvalidArgument.of("rows", f"1-{MAX_BULK_ROWS} rows per request")
        fingerprint = _fingerprint("org.bulk_bind", organization, [(r.card, r.recipient) for r in rows])
        ctx = self._ctx

        def work(tx: UnitOfWork) -> list[BulkRowResult] | bytes:
            org = self._organization(tx, principal, organization)
            replay = self._claim(tx, "org.bulk_bind", request_id, fingerprint)
            if replay is not None:
                return replay
            lengths = sorted({*tx.code_lengths(), 16}, key=lambda n: (n != 16, n))
            owners: dict[int, tuple[int, int | None] | None] = {}
            results = [self._bind_row(tx, principal, org, row, lengths, owners) for row in rows]
            bound = sum(1 for r in results if r.ok and r.reason == "bound")
            tx.append_audit(
                principal.actor,
                "org.bulk_bind",
                f"org:{org.id}",
                detail(request_id=request_id, rows=len(rows), bound=bound, ok=sum(r.ok for r in results)),
            )
            if bound:
                emit(tx, EventKind.CARDS_HANDED_OUT, f"org:{org.name}", bound=bound, request_id=request_id)
            encoded = json.dumps([[r.ok, r.reason, r.serial, r.account] for r in results]).encode()
            tx.complete_idempotency("org.bulk_bind", request_id, encoded)
            return results

        out = ctx.run(work)
        if isinstance(out, bytes):
            return [BulkRowResult(bool(a), str(b), str(c), str(d)) for a, b, c, d in json.loads(out)], True
        ctx.wake()
        return out, False

    def _bind_row(
        self,
        tx: UnitOfWork,
        principal: Principal,
        org: Organization,
        row: BulkBindRow,
        lengths: list[int],
        owners: dict[int, tuple[int, int | None] | None],
    ) -> BulkRowResult:
        found = self._card_of(tx, row.card.strip(), lengths)
        if isinstance(found, str):
            return BulkRowResult(False, found)
        card = found
        if card.lot_id not in owners:
            owners[card.lot_id] = tx.lot_owner(card.lot_id)
        owner = owners[card.lot_id]
        if owner is None or owner[0] != org.id:
            return BulkRowResult(False, "unknown card")
        if principal.role not in STAFF and not principal.in_scope(owner[0], owner[1]):
            return BulkRowResult(False, "unknown card")
        account_id = recipient_account_id(row.recipient)
        if account_id is None:
            return BulkRowResult(False, "not a valid recipient (account id or email address)", card.serial)
        if card.transfers > 0 and card.account_id is None:
            return BulkRowResult(False, "the card was handed out before; bind it one by one", card.serial)
        acct = tx.ensure_account(account_id)
        res = tx.bind_card(card.id, acct.id)
        match res.outcome:
            case BindOutcome.BOUND:
                tx.append_audit(
                    principal.actor,
                    "card.bind",
                    f"card:{card.id}",
                    detail(account=acct.external_id, transferred=False, bulk=True),
                )
                return BulkRowResult(True, "bound", card.serial, acct.external_id)
            case BindOutcome.ALREADY_BOUND_HERE:
                return BulkRowResult(True, "already bound to this recipient", card.serial, acct.external_id)
            case BindOutcome.ALREADY_BOUND:
                return BulkRowResult(False, "already bound to another account", card.serial, acct.external_id)
            case BindOutcome.FROZEN:
                return BulkRowResult(False, "the card is frozen", card.serial, acct.external_id)
            case BindOutcome.VOID:
                return BulkRowResult(False, "the card is void", card.serial, acct.external_id)
            case BindOutcome.EXPIRED:
                return BulkRowResult(False, "the card has expired", card.serial, acct.external_id)
            case _:
                return BulkRowResult(False, "unknown card")

    def _card_of(self, tx: UnitOfWork, text: str, lengths: list[int]) -> Card | str:
        """The card a row names by card number or by code, or why it names none."""
        if not text or len(text) > 128:
            return "no card code or number"
        if text.isdigit() and len(text) <= 64:
            card = tx.get_card_by_serial(text)
            if card is not None:
                return card
        kernel = self._ctx.kernel
        status, canon = Status.EMPTY, b""
        for length in lengths:
            try:
                raw, canon = kernel.check_one(text, length)
            except KernelError:
                return "malformed code"
            status = Status(raw)
            if status is not Status.BAD_LENGTH:
                break
        if status is Status.BAD_CHECK:
            return "the code has a typo (check character)"
        if status.malformed:
            return "unknown card" if text.isdigit() else "malformed code"
        found = tx.cards_by_digests(self._ctx.rotation.digests_of(canon))
        return found[0] if found else "unknown card"
