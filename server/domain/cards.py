"""Cards: binding a code to an account, unbinding, and what an owner may see of a card."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeGuard

import numpy as np
from cardmint.kernel import CorrectionStatus, KernelError, Status
from cardmint.server.observe import bind_failed
from cardmint.server.storage import (
    Account,
    AttemptKind,
    BindOutcome,
    Card,
    CardStatus,
    Role,
    UnitOfWork,
)

from ._context import STAFF, Context, detail, require, resolve_account
from .auth import Permission, Principal, may
from .errors import (
    AccountLocked,
    BadCheck,
    CardAlreadyBound,
    CardExpired,
    CardFrozen,
    CardLocked,
    CardNotFound,
    CardVoid,
    ChallengeRequired,
    ClientLocked,
    DomainError,
    FieldViolation,
    MalformedCode,
    TransferLimitReached,
)
from .events import EventKind, emit
from .keys import display
from .profiles import RiskTier

__all__ = ["BindReceipt", "CardService", "CardView", "Origin", "SecretView"]

_BINDERS = STAFF | {Role.CUSTOMER}
_VIEWERS = STAFF | {Role.MERCHANT, Role.CUSTOMER}
_MAX_INPUT = 1024
_MALFORMED = {
    Status.EMPTY: "empty",
    Status.BAD_LENGTH: "wrong number of symbols",
    Status.BAD_CHAR: "a character that is not a code symbol",
    Status.BAD_UTF8: "not valid UTF-8",
    Status.TOO_LONG: "too long",
}


@dataclass(frozen=True)
class CardView:
    serial: str
    status: str
    masked_code: str
    face_value: int
    balance: int
    currency: str
    expires_at: datetime | None
    bound: bool
    bound_at: datetime | None


@dataclass(frozen=True)
class Origin:
    """Where a call came from, for counting failed guesses per client as well as per card
    and account: the network address (no port) and the device id the app sends, if any."""

    address: str | None = None
    device: str | None = None
    # The front end vouches that the person passed a challenge (a CAPTCHA, an SMS code) for
    # this request: binds past a subject's `challenge_after` failures need it (see
    # docs/compliance.md, "Risk tiers"). Sent as ``x-challenge-passed: 1`` metadata.
    challenged: bool = False

    def subjects(self) -> list[tuple[AttemptKind, str]]:
        out = []
        if self.address:
            out.append((AttemptKind.ADDRESS, self.address[:128]))
        if self.device:
            out.append((AttemptKind.DEVICE, self.device[:128]))
        return out


@dataclass(frozen=True)
class SecretView:
    serial: str
    code: str  # display form; masked ("****-****-****-5RTW") unless ``masked`` is False
    masked: bool


_VIEW_WINDOW = 3600


@dataclass(frozen=True)
class BindReceipt:
    card: CardView
    already_bound_here: bool
    transferred: bool


def card_state(card: Card, now: datetime) -> str:
    if card.status is CardStatus.ACTIVE and card.expires_at is not None and card.expires_at <= now:
        return "expired"
    return card.status.value


def _typed(code: object) -> TypeGuard[str]:
    """Whether ``code`` is something a person could have typed: a string of bounded size."""
    return isinstance(code, str) and len(code.encode("utf-8", "surrogatepass")) <= _MAX_INPUT


@dataclass(frozen=True)
class _Prechecked:
    """A code's check and digests, worked out before its bind's transaction."""

    lengths: list[int]  # the product code lengths it was checked against
    status: Status
    canon: bytes
    key_ids: tuple[int, ...]  # the lookup keys it was digested with, in order
    digests: list[bytes]  # under those keys (none unless the check passed)


class CardService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        # The code lengths products use, remembered: asked again only when a code fits none
        # of them (a product with a new length appeared since), so a bind costs no query here.
        self._lengths: list[int] | None = None

    # -- views
    def view(self, card: Card, now: datetime, code: str | None = None) -> CardView:
        """What a holder may see of ``card``. ``code``: its code in canonical form, when the
        caller just proved it (a bind): no need to open the sealed copy for the mask."""
        if code is None:
            ctx = self._ctx
            sealed = np.frombuffer(card.sealed, np.uint8).reshape(1, -1)
            digest = np.frombuffer(card.digest, np.uint8).reshape(1, -1)
            code = ctx.kernel.open(sealed, digest, ctx.keyring.seal_keys[card.key_id])[0].decode("ascii")
        masked = display("*" * (len(code) - 4) + code[-4:])
        return CardView(
            serial=card.serial,
            status=card_state(card, now),
            masked_code=masked,
            face_value=card.face_value,
            balance=card.balance,
            currency=card.currency,
            expires_at=card.expires_at,
            bound=card.account_id is not None,
            bound_at=card.bound_at,
        )

    def visible_card(self, tx: UnitOfWork, principal: Principal, serial: str) -> Card:
        """The card named by ``serial``, if this caller may see it; CardNotFound otherwise.

        A customer asking about someone else's card hears the same as for a card that does
        not exist: card numbers are public, so "exists but not yours" would be a leak.
        """
        require(principal, _VIEWERS)
        card = tx.get_card_by_serial(serial) if isinstance(serial, str) and len(serial) <= 64 else None
        if card is None:
            raise CardNotFound()
        # An organization member also sees the cards of its organization's lots in its
        # scope (docs/accounts.md); any other card is not found, as above.
        if (
            principal.role is Role.CUSTOMER
            and (principal.account_id is None or card.account_id != principal.account_id)
            and not self.in_org_scope(tx, principal, card, Permission.READ)
        ):
            raise CardNotFound()
        return card

    @staticmethod
    def in_org_scope(tx: UnitOfWork, principal: Principal, card: Card, permission: Permission) -> bool:
        """Whether ``card`` is of a lot of the caller's organization, inside the caller's
        scope (its department, or the whole organization), and its role grants
        ``permission``. False for callers that are not organization members."""
        if not may(principal, permission):
            return False
        owner = tx.lot_owner(card.lot_id)
        return owner is not None and principal.in_scope(*owner)

    def get_card(self, principal: Principal, serial: str) -> CardView:
        with self._ctx.storage.read() as tx:
            card = self.visible_card(tx, principal, serial)
            now = tx.now()
        return self.view(card, now)

    def view_secret(
        self, principal: Principal, serial: str, *, step_up: bool = False, origin: Origin | None = None
    ) -> SecretView:
        """The card's secret code, for its owner only (the customer it is bound to).

        Masked (last 4 shown) unless the request carries the step-up flag (the app asked
        the person to re-authenticate). Every full view is audited (never the code itself)
        and counted under the compliance profile's viewing rules: too many full views, too
        many cards, or a device the account never used before freeze the card, file an
        alert and answer CARD_FROZEN instead of the code.
        """
        require(principal, {Role.CUSTOMER})
        ctx = self._ctx
        where = origin or Origin()
        result = ctx.run(lambda tx: self._view_secret(tx, principal, serial, step_up is True, where))
        if isinstance(result, DomainError):  # returned, so that the counts and freeze commit
            ctx.wake()
            raise result
        return result

    def _view_secret(
        self, tx: UnitOfWork, principal: Principal, serial: str, step_up: bool, origin: Origin
    ) -> SecretView | DomainError:
        ctx, rules = self._ctx, self._ctx.profile
        card = self.visible_card(tx, principal, serial)
        mine = card.account_id is not None and card.account_id == principal.account_id
        # An organization's manager may see the codes of its unbound cards in scope (to
        # hand them out); once bound, a code is its holder's alone.
        if not mine and not (
            card.account_id is None and self.in_org_scope(tx, principal, card, Permission.VIEW_SECRETS)
        ):
            return CardNotFound()
        assert principal.account_id is not None  # a customer's token always has an account
        sealed = np.frombuffer(card.sealed, np.uint8).reshape(1, -1)
        digest = np.frombuffer(card.digest, np.uint8).reshape(1, -1)
        code = ctx.kernel.open(sealed, digest, ctx.keyring.seal_keys[card.key_id])[0].decode("ascii")
        if not step_up:
            return SecretView(card.serial, display("*" * (len(code) - 4) + code[-4:]), True)
        if card.status is CardStatus.FROZEN:
            return CardFrozen()
        if card.status is CardStatus.VOID:
            return CardVoid()
        acct = principal.account_id  # the viewer: the holder, or an organization's manager
        unusual: list[str] = []
        # Counted like failures: this hour's window and the one before it together, so a
        # burst timed across the hour's edge is seen whole.
        views = tx.record_attempt(AttemptKind.ACCOUNT, f"views:{acct}", _VIEW_WINDOW).recent
        if views > rules.full_views_per_hour:
            unusual.append("many views")
        first = tx.record_attempt(AttemptKind.ACCOUNT, f"viewed:{acct}:{card.id}", _VIEW_WINDOW).recent
        if first == 1:
            cards = tx.record_attempt(AttemptKind.ACCOUNT, f"cards-viewed:{acct}", _VIEW_WINDOW).recent
            if cards > rules.cards_per_hour:
                unusual.append("many cards")
        if origin.device:
            new, known = tx.note_device(acct, origin.device[:128])
            if new and known and rules.new_device_freezes:
                unusual.append("new device")
        subject = f"card:{card.serial}"
        if unusual:
            why = ", ".join(unusual)
            tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
            tx.add_report(
                "alert",
                subject,
                detail(rule="viewing", why=why, device=origin.device, address=origin.address),
            )
            tx.append_audit(
                principal.actor, "card.freeze", f"card:{card.id}", detail(reason=f"secret viewing: {why}")
            )
            emit(tx, EventKind.VIEWING_ALERT, subject, why=why, device=origin.device, address=origin.address)
            emit(tx, EventKind.CARD_FROZEN, subject, reason=f"secret viewing: {why}", by=principal.actor)
            return CardFrozen(metadata={"why": "unusual secret viewing; ask support to unfreeze"})
        tx.append_audit(
            principal.actor,
            "card.view_secret",
            f"card:{card.id}",
            detail(device=origin.device, address=origin.address),
        )
        return SecretView(card.serial, display(code), False)

    def account_cards(self, principal: Principal, account: str | None = None) -> list[CardView]:
        require(principal, _BINDERS)

        def work(tx: UnitOfWork) -> tuple[list[Card], datetime]:
            acct = resolve_account(tx, principal, account)
            return tx.account_cards(acct.id), tx.now()

        cards, now = self._ctx.run(work)
        return [self.view(c, now) for c in cards]

    # -- binding
    def _code_lengths(self, tx: UnitOfWork, serial: str | None, *, fresh: bool = False) -> list[int]:
        if serial is not None:
            card = tx.get_card_by_serial(serial) if len(serial) <= 64 else None
            product = tx.get_product(card.product_id) if card is not None else None
            if product is not None:
                return [product.code_length]
        # Without a card number the code's own length picks the product format; the default
        # 16 first, so the common case costs one check.
        if fresh or self._lengths is None:
            self._lengths = sorted({*tx.code_lengths(), 16}, key=lambda n: (n != 16, n))
        return self._lengths

    def bind(
        self,
        principal: Principal,
        code: str,
        *,
        serial: str | None = None,
        account: str | None = None,
        origin: Origin | None = None,
    ) -> BindReceipt:
        require(principal, _BINDERS)
        ctx = self._ctx
        # Corrections read the in-memory index; bring it up to date (to within a second:
        # other processes' lots) before the transaction, which must not nest a read.
        ctx.index.refresh(max_age=1.0)
        where = origin or Origin()
        # The code's check and digests need no database: worked out here, they keep the
        # kernel calls out of the transaction (on SQLite, out of the one writer's turn).
        pre = self._precheck(code) if serial is None else None
        result = ctx.run(lambda tx: self._bind(tx, principal, code, serial, account, where, pre))
        # Errors are returned from the transaction, not raised in it, so that the failed
        # attempt it counted commits; raising inside would roll the count back.
        if isinstance(result, DomainError):
            bind_failed(result.reason)  # counted once committed, not per retried attempt
            if isinstance(result, AccountLocked | CardLocked | ClientLocked):
                ctx.wake()  # a lockout event may have been committed: tell subscribers now
            raise result
        return result

    def _bind(
        self,
        tx: UnitOfWork,
        principal: Principal,
        code: object,
        serial: str | None,
        account: str | None,
        origin: Origin,
        pre: _Prechecked | None = None,
    ) -> BindReceipt | DomainError:
        cfg = self._ctx.config
        acct = resolve_account(tx, principal, account)
        now = tx.now()
        if serial is not None and (not isinstance(serial, str) or not serial or len(serial) > 64):
            return CardNotFound()

        # Hold the counters (account first, then card: one order, no deadlock) so that
        # concurrent guesses are judged one at a time against the true count.
        risk = self._ctx.profile.risk
        # Each count is the current window's and the previous one's together (Attempts), so
        # a limit holds over any span as long as its window, edges included.
        tries = tx.hold_attempts(AttemptKind.ACCOUNT, str(acct.id), risk.account.lock_seconds, now)
        if tries.recent >= risk.account.lock_after:
            return AccountLocked(retry_after=(tries.until(risk.account.lock_after) - now).total_seconds())
        challenge = AttemptKind.ACCOUNT if risk.account.challenged(tries.recent) else None
        if serial is not None:
            tries = tx.hold_attempts(AttemptKind.CARD, serial, risk.card.lock_seconds, now)
            if tries.recent >= risk.card.lock_after:
                return CardLocked(retry_after=(tries.until(risk.card.lock_after) - now).total_seconds())
            if challenge is None and risk.card.challenged(tries.recent):
                challenge = AttemptKind.CARD
        # Client counters are read, not held: holding one would queue every bind from a
        # busy address (a NAT, a proxy) behind each other. So under concurrency a client may
        # get up to its in-flight binds past its limit; the card and account limits stay
        # exact.
        for kind, subject in origin.subjects():
            tier = self._tier(kind)
            tries = tx.attempt_count(kind, subject, tier.lock_seconds, now)
            if tries.recent >= tier.lock_after:
                return ClientLocked(retry_after=(tries.until(tier.lock_after) - now).total_seconds())
            if challenge is None and tier.challenged(tries.recent):
                challenge = kind
        # The middle tier: past `challenge_after` failures the guess is not even looked at
        # (nor counted) until the front end vouches that a person passed a challenge. Staff
        # binding for a customer (a support desk) are people behind a staff token already:
        # no challenge for them, but the locks hold.
        if challenge is not None and not origin.challenged and principal.role not in STAFF:
            return ChallengeRequired(metadata={"subject": challenge.value})

        outcome = self._find(tx, code, serial, pre)
        if isinstance(outcome, DomainError):
            return self._failed(tx, acct, serial, origin, outcome, now)
        card, canon = outcome

        transferred = card.transfers > 0
        if transferred and card.account_id is None:
            # Serialize this account's transfer binds: the upsert takes a row lock held to
            # commit (PostgreSQL), so the count below sees every committed transfer bind
            # and two concurrent binds cannot both slip under the limit.
            tx.record_attempt(AttemptKind.ACCOUNT, f"transfer-bind:{acct.id}", 60)
            if (
                tx.count_binds(acct.id, now - timedelta(days=365), transferred_only=True)
                >= cfg.transfers_per_year
            ):
                return TransferLimitReached(metadata={"limit": str(cfg.transfers_per_year)})

        res = tx.bind_card(card.id, acct.id)
        match res.outcome:
            case BindOutcome.BOUND | BindOutcome.ALREADY_BOUND_HERE:
                assert res.card is not None
                if res.outcome is BindOutcome.BOUND:
                    tx.append_audit(
                        principal.actor,
                        "card.bind",
                        f"card:{card.id}",
                        detail(account=acct.external_id, transferred=transferred),
                    )
                return BindReceipt(
                    self.view(res.card, now, canon),
                    res.outcome is BindOutcome.ALREADY_BOUND_HERE,
                    transferred,
                )
            case BindOutcome.ALREADY_BOUND:
                return CardAlreadyBound()
            case BindOutcome.FROZEN:
                return CardFrozen()
            case BindOutcome.VOID:
                return CardVoid()
            case BindOutcome.EXPIRED:
                return CardExpired()
            case _:
                return CardNotFound()

    def _check(self, code: str, lengths: list[int]) -> tuple[Status, bytes]:
        """The code checked against each product length in turn, until one fits."""
        status, canon = Status.EMPTY, b""
        for length in lengths:
            raw_status, canon = self._ctx.kernel.check_one(code, length)
            status = Status(raw_status)
            if status is not Status.BAD_LENGTH:
                break
        return status, canon

    def _precheck(self, code: object) -> _Prechecked | None:
        """The check of a code given without a card number, against the product lengths
        known so far, and its digests under the lookup keys; None when there is nothing to
        work out ahead (no lengths known yet, not a string, or the kernel refuses it)."""
        lengths = self._lengths
        if lengths is None or not _typed(code):
            return None
        try:
            status, canon = self._check(code, lengths)
        except KernelError:
            return None
        key_ids, digests = self._ctx.rotation.keyed_digests_of(canon) if status is Status.OK else ((), [])
        return _Prechecked(lengths, status, canon, key_ids, digests)

    def _find(
        self, tx: UnitOfWork, code: object, serial: str | None, pre: _Prechecked | None = None
    ) -> tuple[Card, str] | DomainError:
        """The card the typed code names and that code in canonical form, or the guess-type
        failure it is. ``pre``: the check and digests worked out before the transaction,
        used when they still hold."""
        ctx = self._ctx
        if not _typed(code):
            return MalformedCode(violations=(FieldViolation("code", "not a code"),))
        lengths = self._code_lengths(tx, serial)
        try:
            if pre is not None and pre.lengths == lengths:
                status, canon = pre.status, pre.canon
            else:
                pre = None
                status, canon = self._check(code, lengths)
            if (
                status is Status.BAD_LENGTH
                and (again := self._code_lengths(tx, serial, fresh=True)) != lengths
            ):
                pre = None
                status, canon = self._check(code, again)
        except KernelError:
            return MalformedCode(violations=(FieldViolation("code", "not a code"),))
        if status.malformed:
            return MalformedCode(violations=(FieldViolation("code", _MALFORMED.get(status, "malformed")),))
        if status is Status.BAD_CHECK:
            keys = [k for _, k in ctx.rotation.lookup_keys()]
            corr = ctx.index.correct_any([code], keys, len(canon))[0]
            one = corr.suggestion if corr.status is CorrectionStatus.CORRECTED else None
            return BadCheck(display(one) if one else None)
        # Every key the code may be digested with (a digest-key rotation's window): one query.
        if pre is not None and status is Status.OK and pre.key_ids == ctx.rotation.key_ids():
            digests = pre.digests
        else:
            digests = ctx.rotation.digests_of(canon)
        found = tx.cards_by_digests(digests)
        card = found[0] if found else None
        if card is None or (serial is not None and card.serial != serial):
            return CardNotFound()
        return card, canon.decode("ascii")

    def _tier(self, kind: AttemptKind) -> RiskTier:
        risk = self._ctx.profile.risk
        return {
            AttemptKind.CARD: risk.card,
            AttemptKind.ACCOUNT: risk.account,
            AttemptKind.ADDRESS: risk.address,
            AttemptKind.DEVICE: risk.device,
        }[kind]

    def _failed(
        self,
        tx: UnitOfWork,
        acct: Account,
        serial: str | None,
        origin: Origin,
        error: DomainError,
        now: datetime,
    ) -> DomainError:
        risk = self._ctx.profile.risk
        client_locked: datetime | None = None
        for kind, subject in origin.subjects():
            tier = self._tier(kind)
            tries = tx.record_attempt(kind, subject, tier.lock_seconds, now)
            until = tries.until(tier.lock_after)
            if tries.recent == tier.lock_after:
                emit(tx, EventKind.CLIENT_LOCKED, f"{kind.value}:{subject}", until=until.isoformat())
            if tries.recent >= tier.lock_after:
                client_locked = max(client_locked or until, until)
        # Count against both subjects before deciding, so neither counter misses a guess.
        tries = tx.record_attempt(AttemptKind.ACCOUNT, str(acct.id), risk.account.lock_seconds, now)
        n_acct, acct_until = tries.recent, tries.until(risk.account.lock_after)
        n_card, card_until = 0, now
        if serial is not None:
            tries = tx.record_attempt(AttemptKind.CARD, serial, risk.card.lock_seconds, now)
            n_card, card_until = tries.recent, tries.until(risk.card.lock_after)
        # The guess that reaches a limit locks, and tells the notifiers (once per lock).
        if n_acct == risk.account.lock_after:
            emit(tx, EventKind.ACCOUNT_LOCKED, f"account:{acct.external_id}", until=acct_until.isoformat())
        if serial is not None and n_card == risk.card.lock_after:
            emit(tx, EventKind.CARD_LOCKED, f"card:{serial}", until=card_until.isoformat())
        if n_acct >= risk.account.lock_after:
            return AccountLocked(retry_after=(acct_until - now).total_seconds())
        if serial is not None and n_card >= risk.card.lock_after:
            return CardLocked(retry_after=(card_until - now).total_seconds())
        if client_locked is not None:
            return ClientLocked(retry_after=(client_locked - now).total_seconds())
        return error

    def unbind(self, principal: Principal, serial: str, *, account: str | None = None) -> CardView:
        require(principal, _BINDERS)

        def work(tx: UnitOfWork) -> tuple[Card, datetime]:
            acct = resolve_account(tx, principal, account)
            card = tx.get_card_by_serial(serial) if isinstance(serial, str) and len(serial) <= 64 else None
            if card is None:
                raise CardNotFound()
            res = tx.unbind_card(card.id, acct.id)
            if res.outcome is not BindOutcome.BOUND or res.card is None:
                raise CardNotFound()
            tx.append_audit(
                principal.actor, "card.unbind", f"card:{card.id}", detail(account=acct.external_id)
            )
            return res.card, tx.now()

        card, now = self._ctx.run(work)
        return self.view(card, now)
