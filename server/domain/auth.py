"""Bearer tokens: minted with a role, stored as a hash, verified into a ``Principal``."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import blake3
from cardmint.server.storage import Role, Storage, UnitOfWork

from .errors import InvalidArgument, PermissionDenied, Unauthenticated

__all__ = ["AuthService", "IssuedToken", "Principal", "TokenInfo", "hash_token"]

TOKEN_PREFIX = "cm_"  # noqa: S105 - a marker that makes leaked tokens greppable, not a secret


@dataclass(frozen=True)
class Principal:
    token_id: int
    role: Role
    account_id: int | None
    account: str | None
    label: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: int
    role: Role
    account: str | None


@dataclass(frozen=True)
class TokenInfo:
    """A token as an admin may see it: never the secret."""

    id: int
    role: Role
    label: str
    account: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> bytes:
    # Tokens carry 256 random bits, so an unkeyed hash suffices: nothing to brute-force,
    # and a stolen table of hashes cannot be turned back into tokens.
    return blake3.blake3(b"cardmint token v1\0" + token.encode("utf-8")).digest()


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
        self, principal: Principal, role: Role | str, *, label: str = "", account: str | None = None
    ) -> IssuedToken:
        """An admin mints a token over the API (the secret is shown once, only its hash kept)."""
        if principal.role is not Role.ADMIN:
            raise PermissionDenied(metadata={"role": principal.role.value})
        return self.create_token(role, label=label, account=account, actor=principal.actor)

    def list_tokens(self, principal: Principal, *, after_id: int = 0, limit: int = 100) -> list[TokenInfo]:
        """Every token (never a secret: only hashes are stored), oldest first. Admins only."""
        if principal.role is not Role.ADMIN:
            raise PermissionDenied(metadata={"role": principal.role.value})
        if not 1 <= limit <= 500 or after_id < 0:
            raise InvalidArgument.of("limit", "1-500")
        with self._storage.read() as tx:
            rows = tx.list_tokens(after_id, limit)
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
            )
            for r in rows
        ]

    def create_token(
        self, role: Role | str, *, label: str = "", account: str | None = None, actor: str = "cli"
    ) -> IssuedToken:
        try:
            r = Role(role)
        except ValueError:
            raise InvalidArgument.of("role", f"one of {', '.join(x.value for x in Role)}") from None
        if r is Role.CUSTOMER and not account:
            raise InvalidArgument.of("account", "a customer token needs an account")
        if r is not Role.CUSTOMER and account:
            raise InvalidArgument.of("account", "only customer tokens belong to an account")
        if len(label) > 200:
            raise InvalidArgument.of("label", "at most 200 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def work(tx: UnitOfWork) -> IssuedToken:
            acct = tx.ensure_account(account) if account else None
            row = tx.create_token(hash_token(token), r, label, acct.id if acct else None)
            tx.append_audit(actor, "token.create", f"token:{row.id}", f'{{"role": "{r.value}"}}')
            return IssuedToken(token, row.id, r, account)

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
        # find_token matched by the hash already; compare again in constant time so the
        # answer's timing never depends on how much of a guessed hash matched.
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
            raise Unauthenticated()
        principal = Principal(
            row.id, row.role, row.account_id, account.external_id if account else None, row.label
        )
        if self._cache_seconds > 0:
            with self._cache_lock:
                if len(self._cache) >= self.CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (self._clock() + self._cache_seconds, principal)
        return principal

    def forget(self, token_id: int) -> None:
        """Drop a token from the verified-token cache (after it was revoked)."""
        with self._cache_lock:
            for digest in [d for d, (_, p) in self._cache.items() if p.token_id == token_id]:
                del self._cache[digest]

    def revoke_token(self, principal: Principal, token_id: int) -> None:
        if principal.role is not Role.ADMIN:
            raise PermissionDenied(metadata={"role": principal.role.value})

        def work(tx: UnitOfWork) -> bool:
            done = tx.revoke_token(token_id)
            if done:
                tx.append_audit(principal.actor, "token.revoke", f"token:{token_id}")
            return done

        # Revoking an unknown or already revoked token is a no-op: the end state is the same.
        self._storage.run(work)
        self.forget(token_id)
