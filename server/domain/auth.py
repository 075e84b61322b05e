"""Bearer tokens: minted with a role, stored as a hash, verified into a ``Principal``.

A customer token whose account is a member of an organization (an enterprise customer)
verifies into a principal that also carries the organization, the department it is scoped
to (None: the whole organization) and its organization role. What each role may do is the
``PERMISSIONS`` table below (docs/accounts.md shows it as a table).
"""

from __future__ import annotations

import enum
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import blake3
from cardmint.server.storage import Membership, OrgRole, Role, Storage, Token, UnitOfWork

from .errors import InvalidArgument, MemberNotFound, PermissionDenied, TokenExpired, Unauthenticated

__all__ = [
    "LOCAL_ADMIN",
    "PERMISSIONS",
    "AuthService",
    "IssuedToken",
    "Permission",
    "Principal",
    "TokenInfo",
    "hash_token",
    "may",
]

TOKEN_PREFIX = "cm_"  # noqa: S105 - a marker that makes leaked tokens greppable, not a secret
MAX_TOKEN_LIFETIME = 10 * 366 * 86_400  # seconds: ``expires_in`` at most about ten years
LOCAL_TOKEN_ID = 0  # no stored token has it (ids start at 1): ``LOCAL_ADMIN``'s


class Permission(enum.StrEnum):
    """What a member of an organization may do, within its scope (its department, or the
    whole organization). Staff roles keep their own powers and are not judged by this."""

    READ = "read"  # see the organization's lots and cards in scope (GetLot, GetCard, balances)
    MINT = "mint"  # create lots; they belong to the organization and the member's department
    EXPORT = "export"  # stream a lot's codes in plaintext (the first export; again: admins only)
    VIEW_SECRETS = "view_secrets"  # see the code of an unbound card of a lot in scope
    FREEZE = "freeze"  # stop a card of a lot in scope
    BIND_RECIPIENTS = "bind_recipients"  # hand cards of lots in scope out to recipients (bulk bind)
    MANAGE_TOKENS = "manage_tokens"  # create, list, revoke tokens of members in scope
    MANAGE_MEMBERS = "manage_members"  # add, re-scope, remove members in scope
    MANAGE_DEPARTMENTS = "manage_departments"  # create departments of the organization


_ALL = frozenset(Permission)
# The permission table (docs/accounts.md). A dept_manager acts only inside its department
# when it is scoped to one, and never makes or changes an org_admin.
PERMISSIONS: dict[OrgRole, frozenset[Permission]] = {
    OrgRole.ORG_ADMIN: _ALL,
    OrgRole.DEPT_MANAGER: _ALL - {Permission.MANAGE_DEPARTMENTS},
    OrgRole.MEMBER: frozenset({Permission.READ}),
}


@dataclass(frozen=True)
class Principal:
    token_id: int
    role: Role
    account_id: int | None
    account: str | None
    label: str
    # Set when the token's account is a member of an organization.
    organization_id: int | None = None
    organization: str | None = None
    department_id: int | None = None  # None: scoped to the whole organization
    department: str | None = None
    org_role: OrgRole | None = None

    @property
    def actor(self) -> str:
        return "cli" if self.token_id == LOCAL_TOKEN_ID else f"token:{self.token_id}"

    @property
    def member(self) -> bool:
        """Whether this caller acts for an organization (a member's token)."""
        return self.organization_id is not None

    def in_scope(self, organization_id: int | None, department_id: int | None) -> bool:
        """Whether something owned by (organization, department) is inside this member's
        scope: its organization, and its department unless the member is organization-wide.
        Not an organization member, or an owner of None: False."""
        if self.organization_id is None or organization_id != self.organization_id:
            return False
        return self.department_id is None or department_id == self.department_id


# Whoever can open the database acts as an admin through the local commands (``cardmint
# token list|revoke``), as ``token create`` does: audited as actor "cli".
LOCAL_ADMIN = Principal(LOCAL_TOKEN_ID, Role.ADMIN, None, None, "cli")


def may(principal: Principal, permission: Permission) -> bool:
    """Whether an organization member's role grants ``permission`` (False for non-members)."""
    return principal.org_role is not None and permission in PERMISSIONS[principal.org_role]


def member_principal(base: Principal, membership: Membership | None) -> Principal:
    """``base`` with the organization fields of ``membership`` (cleared when None)."""
    if membership is None:
        return Principal(base.token_id, base.role, base.account_id, base.account, base.label)
    return Principal(
        base.token_id,
        base.role,
        base.account_id,
        base.account,
        base.label,
        membership.organization_id,
        membership.organization,
        membership.department_id,
        membership.department,
        membership.role,
    )


def manages(principal: Principal, membership: Membership) -> bool:
    """Whether ``principal`` (an organization member) may manage ``membership``'s account
    (its tokens, scope, membership): in scope, and an org_admin, or a dept_manager over a
    plain member."""
    if not principal.in_scope(membership.organization_id, membership.department_id):
        return False
    return principal.org_role is OrgRole.ORG_ADMIN or membership.role is OrgRole.MEMBER


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: int
    role: Role
    account: str | None
    expires_at: datetime | None = None  # None: never


@dataclass(frozen=True)
class TokenInfo:
    """A token as an admin may see it: never the secret."""

    id: int
    role: Role
    label: str
    account: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None  # None: never


def expires_in_arg(expires_in: object, field: str = "expires_in_seconds") -> int | None:
    """A token lifetime in whole seconds, 0 to ``MAX_TOKEN_LIFETIME``; None or 0: never."""
    if expires_in is None:
        return None
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 0 <= expires_in <= MAX_TOKEN_LIFETIME
    ):
        raise InvalidArgument.of(field, f"0 (never) to {MAX_TOKEN_LIFETIME}")
    return expires_in or None


def hash_token(token: str) -> bytes:
    # Tokens carry 256 random bits, so an unkeyed hash suffices: nothing to brute-force,
    # and a stolen table of hashes cannot be turned back into tokens.
    return blake3.blake3(b"cardmint token v1\0" + token.encode("utf-8")).digest()


def account_arg(account: object, field: str = "account") -> str:
    """An account id as callers name it: 1-128 printable characters, not all blank. No
    control, format (bidi overrides, zero-width characters) or line-separator character:
    two ids that print alike must not name two accounts."""
    if not isinstance(account, str) or not account.strip() or len(account) > 128 or not account.isprintable():
        raise InvalidArgument.of(field, "an account id (1-128 printable characters) is required")
    return account


class AuthService:
    """Tokens: minted, listed, revoked, and verified on every call.

    A verified token is remembered for ``cache_seconds`` (keyed by its hash, never the
    token), so a busy client does not cost a database read per call. Revoking through this
    process forgets the token at once; a revocation made by another server process sharing
    the database takes effect here within ``cache_seconds``. Unknown or revoked tokens are
    never remembered: every refusal is decided by the database.
    """

    CACHE_MAX = 10_000  # remembered tokens; the cache is dropped whole when it overflows

    def __init__(
        self, storage: Storage, *, cache_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._cache_lock = threading.Lock()

    def issue_token(
        self,
        principal: Principal,
        role: Role | str,
        *,
        label: str = "",
        account: str | None = None,
        expires_in: int | None = None,
    ) -> IssuedToken:
        """An admin mints a token over the API (the secret is shown once, only its hash kept).

        An organization member with MANAGE_TOKENS mints customer tokens for the members it
        manages; any other account is answered as not found (never "exists, not yours").
        ``expires_in``: as ``create_token``.
        """
        if principal.role is Role.ADMIN:
            return self.create_token(
                role, label=label, account=account, actor=principal.actor, expires_in=expires_in
            )
        if not may(principal, Permission.MANAGE_TOKENS):
            raise PermissionDenied(metadata={"role": principal.role.value})
        if role != Role.CUSTOMER.value:
            raise PermissionDenied("organizations mint customer tokens for their members only")

        def check(tx: UnitOfWork, account_id: int) -> None:
            found = tx.get_membership(account_id)
            if found is None or not manages(principal, found):
                raise MemberNotFound()

        return self.create_token(
            role, label=label, account=account, actor=principal.actor, check=check, expires_in=expires_in
        )

    def list_tokens(self, principal: Principal, *, after_id: int = 0, limit: int = 100) -> list[TokenInfo]:
        """Every token (never a secret: only hashes are stored), oldest first. Admins see
        all; an organization member with MANAGE_TOKENS sees its scope's members' tokens."""
        if principal.role is not Role.ADMIN and not may(principal, Permission.MANAGE_TOKENS):
            raise PermissionDenied(metadata={"role": principal.role.value})
        if not 1 <= limit <= 500 or after_id < 0:
            raise InvalidArgument.of("limit", "1-500")
        with self._storage.read() as tx:
            rows: list[Token]
            if principal.role is Role.ADMIN:
                rows = tx.list_tokens(after_id, limit)
            else:
                assert principal.organization_id is not None  # may() holds only for members
                rows = tx.list_member_tokens(
                    principal.organization_id, principal.department_id, after_id, limit
                )
            names = {
                r.account_id: a.external_id
                for r in rows
                if r.account_id is not None and (a := tx.get_account(r.account_id)) is not None
            }
        return [
            TokenInfo(
                r.id,
                r.role,
                r.label,
                names.get(r.account_id) if r.account_id else None,
                r.created_at,
                r.revoked_at,
                r.expires_at,
            )
            for r in rows
        ]

    def create_token(
        self,
        role: Role | str,
        *,
        label: str = "",
        account: str | None = None,
        actor: str = "cli",
        check: Callable[[UnitOfWork, int], None] | None = None,
        expires_in: int | None = None,
    ) -> IssuedToken:
        """Mint a token. ``check`` (given the account id) may refuse by raising; with it the
        account must exist already (it is not created). ``expires_in``: seconds until the
        token stops working (1 to ``MAX_TOKEN_LIFETIME``), by the storage's clock; None or
        0: never."""
        try:
            r = Role(role)
        except ValueError:
            raise InvalidArgument.of("role", f"one of {', '.join(x.value for x in Role)}") from None
        if r is Role.CUSTOMER and not account:
            raise InvalidArgument.of("account", "a customer token needs an account")
        if r is not Role.CUSTOMER and account:
            raise InvalidArgument.of("account", "only customer tokens belong to an account")
        if account:
            account_arg(account)
        if len(label) > 200:
            raise InvalidArgument.of("label", "at most 200 characters")
        expires_in = expires_in_arg(expires_in)  # None: never
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def work(tx: UnitOfWork) -> IssuedToken:
            if check is not None:
                found = tx.find_account(account) if account else None
                if found is None:
                    raise MemberNotFound()
                check(tx, found.id)
            acct = tx.ensure_account(account) if account else None
            expires_at = tx.now() + timedelta(seconds=expires_in) if expires_in else None
            row = tx.create_token(hash_token(token), r, label, acct.id if acct else None, expires_at)
            tx.append_audit(
                actor,
                "token.create",
                f"token:{row.id}",
                json.dumps(
                    {
                        "expires_at": None if row.expires_at is None else row.expires_at.isoformat(),
                        "role": r.value,
                    },
                    sort_keys=True,
                ),
            )
            return IssuedToken(token, row.id, r, account, row.expires_at)

        return self._storage.run(work)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise Unauthenticated()
        digest = hash_token(token)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        with self._storage.read() as tx:
            row = tx.find_token(digest)
            account = (
                tx.get_account(row.account_id) if row is not None and row.account_id is not None else None
            )
            membership = tx.get_membership(account.id) if account is not None else None
        # find_token matched by the hash already; compare again in constant time so the
        # answer's timing never depends on how much of a guessed hash matched.
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
            raise Unauthenticated()
        remember = self._cache_seconds
        if row.expires_at is not None:
            left = (row.expires_at - self._storage.now()).total_seconds()
            if left <= 0:
                raise TokenExpired(metadata={"expired_at": row.expires_at.isoformat()})
            remember = min(remember, left)  # never answered from the cache past its expiry
        principal = member_principal(
            Principal(row.id, row.role, row.account_id, account.external_id if account else None, row.label),
            membership,
        )
        if remember > 0:
            with self._cache_lock:
                if len(self._cache) >= self.CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (self._clock() + remember, principal)
        return principal

    def forget(self, token_id: int) -> None:
        """Drop a token from the verified-token cache (after it was revoked)."""
        with self._cache_lock:
            for digest in [d for d, (_, p) in self._cache.items() if p.token_id == token_id]:
                del self._cache[digest]

    def forget_account(self, account_id: int) -> None:
        """Drop every cached token of an account (its membership or scope changed), so the
        next call verifies afresh and carries the new organization fields."""
        with self._cache_lock:
            for digest in [d for d, (_, p) in self._cache.items() if p.account_id == account_id]:
                del self._cache[digest]

    def revoke_token(self, principal: Principal, token_id: int) -> bool:
        """Admins revoke any token; an organization member with MANAGE_TOKENS the tokens of
        the members it manages. Any other token is left alone, answered like an unknown one.
        Whether this call revoked it (False: unknown, revoked already, or not the caller's)."""
        if principal.role is not Role.ADMIN and not may(principal, Permission.MANAGE_TOKENS):
            raise PermissionDenied(metadata={"role": principal.role.value})

        def work(tx: UnitOfWork) -> bool:
            if principal.role is not Role.ADMIN:
                token = tx.get_token(token_id)
                owner = tx.get_membership(token.account_id) if token and token.account_id else None
                if owner is None or not manages(principal, owner):
                    return False
            done = tx.revoke_token(token_id)
            if done:
                tx.append_audit(principal.actor, "token.revoke", f"token:{token_id}")
            return done

        # Revoking an unknown or already revoked token is a no-op: the end state is the same.
        done = self._storage.run(work)
        self.forget(token_id)
        return done
