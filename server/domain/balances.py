"""Balances: what a card or an account holds, and money moving off and back onto cards.

Money moves are idempotent on the caller's request id: the claim, the move, its ledger
entry and the stored answer commit together, so a retry after a lost reply replays the
answer instead of moving money twice. A refused move stores nothing, so its id stays free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import blake3
from cardmint.server.storage import (
    Card,
    CardStatus,
    LedgerEntry,
    LedgerKind,
    MoneyOutcome,
    MoneyResult,
    Role,
    UnitOfWork,
)

from ._context import MAX_AMOUNT, STAFF, Context, detail, int_arg, request_id_arg, require, resolve_account
from .auth import Principal
from .cards import CardService
from .currencies import ISO_4217
from .errors import (
    CardExpired,
    CardFrozen,
    CardNotFound,
    CardVoid,
    CurrencyMismatch,
    DailyLimitReached,
    DomainError,
    InsufficientFunds,
    InvalidArgument,
    NotReversible,
    NotSameHolder,
    OverFaceValue,
    TransactionNotFound,
)
from .events import EventKind, emit
from .profiles import Profile

__all__ = [
    "AccountBalance",
    "BalanceService",
    "CardBalance",
    "CardReconciliation",
    "Money",
    "MoneyReceipt",
    "Reconciliation",
    "Transaction",
    "TransactionPage",
    "TransferReceipt",
]

_REDEEMERS = STAFF | {Role.MERCHANT, Role.CUSTOMER}
_REVERSERS = STAFF | {Role.MERCHANT}
_ACCOUNT_READERS = STAFF | {Role.CUSTOMER}
_TRANSFERERS = STAFF | {Role.CUSTOMER}
MAX_RECONCILE = 1000


@dataclass(frozen=True)
class Money:
    amount: int
    currency: str


@dataclass(frozen=True)
class CardBalance:
    serial: str
    balance: Money
    sufficient: bool | None


@dataclass(frozen=True)
class AccountBalance:
    account: str
    balances: tuple[Money, ...]
    sufficient: bool | None


@dataclass(frozen=True)
class MoneyReceipt:
    entry_id: int
    serial: str
    amount: int
    currency: str
    balance_after: int
    replayed: bool = False


@dataclass(frozen=True)
class TransferReceipt:
    """A card-to-card transfer: the two linked ledger entries and both balances after it."""

    out_entry_id: int
    in_entry_id: int
    from_serial: str
    to_serial: str
    amount: int
    currency: str
    from_balance_after: int
    to_balance_after: int
    replayed: bool = False


@dataclass(frozen=True)
class CardReconciliation:
    """One card at the snapshot: its balance against what its ledger says."""

    serial: str
    currency: str
    balance: int
    face_value: int
    ledger_total: int  # the sum of every ledger amount on the card
    redeemed_net: int  # taken by redemptions, net of reversals

    @property
    def consistent(self) -> bool:
        # A card is issued holding its face value; every change since is a ledger row.
        return self.balance == self.face_value + self.ledger_total


@dataclass(frozen=True)
class Reconciliation:
    """Cards read in one snapshot of the database (one moment for all of them)."""

    cards: tuple[CardReconciliation, ...]
    at: datetime


@dataclass(frozen=True)
class Transaction:
    id: int
    kind: str
    amount: int
    currency: str
    balance_after: int | None
    serial: str | None
    request_id: str | None
    reverses_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class TransactionPage:
    items: tuple[Transaction, ...]
    next_before_id: int | None


def _fingerprint(*parts: object) -> bytes:
    return blake3.blake3(json.dumps(parts).encode()).digest()


def _encode(receipt: MoneyReceipt | TransferReceipt) -> bytes:
    # Its fields by name (what _decode reads back); the values are flat, so the instance's
    # own dict serves, without asdict's deep copy.
    return json.dumps(vars(receipt)).encode()


def _decode(raw: bytes) -> MoneyReceipt:
    return replace(MoneyReceipt(**json.loads(raw)), replayed=True)


def _decode_transfer(raw: bytes) -> TransferReceipt:
    return replace(TransferReceipt(**json.loads(raw)), replayed=True)


def _unspendable(card: Card, now: datetime, which: str) -> DomainError | None:
    """Why ``card`` can neither give nor take money now (``which``: "from" or "to")."""
    meta = {"card": which}
    if card.status is CardStatus.FROZEN:
        return CardFrozen(metadata=meta)
    if card.status is not CardStatus.ACTIVE:
        return CardVoid(metadata=meta)
    if card.expires_at is not None and card.expires_at <= now:
        return CardExpired(metadata=meta)
    return None


def _refusal(res: MoneyResult, currency: str) -> DomainError:
    match res.outcome:
        case MoneyOutcome.INSUFFICIENT:
            return InsufficientFunds(metadata={"balance": str(res.balance), "currency": currency})
        case MoneyOutcome.CURRENCY_MISMATCH:
            return CurrencyMismatch()
        case MoneyOutcome.EXPIRED:
            return CardExpired()
        case MoneyOutcome.NOT_REVERSIBLE:
            return NotReversible()
        case MoneyOutcome.NOT_FOUND:
            return TransactionNotFound()
        case _:
            return CardVoid()


def aml_reportable(profile: Profile, amount: int, currency: str) -> bool:
    """Whether a movement of ``amount`` crosses the profile's AML reporting threshold."""
    threshold = profile.aml_above.minor(currency)
    return threshold is not None and amount > threshold


def file_aml_report(
    profile: Profile, tx: UnitOfWork, what: str, serial: str, entry_id: int, amount: int, currency: str
) -> bool:
    """A movement above the profile's AML threshold leaves a report record and an
    ``aml.report`` event, in the moving transaction; whether it did. Every movement of
    money between holders or out of the system goes through here: redeem, reverse,
    transfer, a lost card's reissue."""
    if not aml_reportable(profile, amount, currency):
        return False
    subject = f"card:{serial}"
    tx.add_report(
        "aml", subject, detail(movement=what, transaction=entry_id), amount=amount, currency=currency
    )
    emit(
        tx,
        EventKind.AML_REPORT,
        subject,
        movement=what,
        transaction=entry_id,
        amount=amount,
        currency=currency,
    )
    return True


class BalanceService:
    def __init__(self, ctx: Context, cards: CardService) -> None:
        self._ctx = ctx
        self._cards = cards

    def _currency(self, currency: object) -> str:
        if not isinstance(currency, str) or currency not in ISO_4217:
            raise InvalidArgument.of("currency", "an ISO 4217 currency code")
        return currency

    def card_balance(self, principal: Principal, serial: str, *, amount: int | None = None) -> CardBalance:
        if amount is not None:
            int_arg(amount, "amount", 1, MAX_AMOUNT)
        with self._ctx.storage.read() as tx:
            card = self._cards.visible_card(tx, principal, serial)
            now = tx.now()
        spendable = card.status.value == "active" and (card.expires_at is None or card.expires_at > now)
        sufficient = None if amount is None else spendable and card.balance >= amount
        return CardBalance(card.serial, Money(card.balance, card.currency), sufficient)

    def account_balance(
        self,
        principal: Principal,
        account: str | None = None,
        *,
        amount: int | None = None,
        currency: str | None = None,
    ) -> AccountBalance:
        require(principal, _ACCOUNT_READERS)
        if amount is not None:
            int_arg(amount, "amount", 1, MAX_AMOUNT)
            if currency is None:
                raise InvalidArgument.of("currency", "required with amount")
        if currency is not None:
            self._currency(currency)

        def work(tx: UnitOfWork) -> tuple[str, dict[str, int]]:
            acct = resolve_account(tx, principal, account)
            return acct.external_id, tx.account_balances(acct.id)

        name, by_currency = self._ctx.run(work)
        balances = tuple(Money(v, c) for c, v in sorted(by_currency.items()))
        sufficient = None if amount is None else by_currency.get(currency or "", 0) >= amount
        return AccountBalance(name, balances, sufficient)

    def redeem(
        self, principal: Principal, *, serial: str, amount: int, currency: str, request_id: str
    ) -> MoneyReceipt:
        require(principal, _REDEEMERS)
        amount = int_arg(amount, "amount", 1, MAX_AMOUNT)
        currency = self._currency(currency)
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("redeem", serial, amount, currency)

        def work(tx: UnitOfWork) -> MoneyReceipt:
            card = self._cards.visible_card(tx, principal, serial)
            claim = tx.claim_idempotency("redeem", request_id, fingerprint)
            if claim.replay is not None:
                return _decode(claim.replay)
            if card.account_id is not None:
                self._daily_limit(tx, card.account_id, amount, currency)
            res = tx.redeem(card.id, amount, currency, request_id)
            if not res.ok or res.entry is None or res.balance is None:
                if res.outcome is MoneyOutcome.NOT_ACTIVE:
                    # Judge by the state the refusal saw: the card read above may predate a
                    # freeze committed meanwhile (PostgreSQL re-checks the row at the UPDATE).
                    now = tx.get_card(card.id)
                    raise CardFrozen() if now is not None and now.status.value == "frozen" else CardVoid()
                # Raised inside: the claim rolls back with the refused move.
                raise _refusal(res, card.currency)
            self._aml(tx, "redeem", card.serial, res.entry.id, amount, currency)
            receipt = MoneyReceipt(res.entry.id, card.serial, amount, currency, res.balance)
            tx.append_audit(  # late: on SQLite the chain's head is held from here to commit
                principal.actor,
                "balance.redeem",
                f"card:{card.id}",
                detail(
                    amount=amount,
                    currency=currency,
                    request_id=request_id,
                    entry=res.entry.id,
                    balance_after=res.balance,
                ),
            )
            tx.complete_idempotency("redeem", request_id, _encode(receipt))
            return receipt

        receipt = self._ctx.run(work)
        if self._reportable(amount, currency):
            self._ctx.wake()  # an AML report event was committed
        return receipt

    def _daily_limit(self, tx: UnitOfWork, account_id: int, amount: int, currency: str) -> None:
        """The profile's per-account daily redemption limit, checked under the account's
        row lock so that concurrent spends from several cards cannot overrun it together."""
        limit = self._ctx.profile.daily_redeem_limit.minor(currency)
        if limit is None:
            return
        tx.lock_account(account_id)
        now = tx.now()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        # Spent today, net of what reversals gave back today.
        spent = tx.account_total(account_id, LedgerKind.REDEEM, day, currency) - tx.account_total(
            account_id, LedgerKind.REVERSE, day, currency
        )
        if spent + amount > limit:
            raise DailyLimitReached(
                retry_after=(day + timedelta(days=1) - now).total_seconds(),
                metadata={"limit": str(limit), "spent_today": str(spent), "currency": currency},
            )

    def _reportable(self, amount: int, currency: str) -> bool:
        return aml_reportable(self._ctx.profile, amount, currency)

    def _aml(self, tx: UnitOfWork, what: str, serial: str, entry_id: int, amount: int, currency: str) -> None:
        file_aml_report(self._ctx.profile, tx, what, serial, entry_id, amount, currency)

    def reverse(self, principal: Principal, *, entry_id: int, amount: int, request_id: str) -> MoneyReceipt:
        require(principal, _REVERSERS)
        entry_id = int_arg(entry_id, "entry_id", 1, 2**63 - 1)
        amount = int_arg(amount, "amount", 1, MAX_AMOUNT)
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("reverse", entry_id, amount)

        def work(tx: UnitOfWork) -> MoneyReceipt:
            claim = tx.claim_idempotency("reverse", request_id, fingerprint)
            if claim.replay is not None:
                return _decode(claim.replay)
            src = tx.get_ledger_entry(entry_id)
            card = tx.get_card(src.card_id) if src is not None and src.card_id is not None else None
            if src is None:
                raise TransactionNotFound()
            if card is None:
                raise NotReversible()
            res = tx.reverse(entry_id, amount, request_id)
            if not res.ok or res.entry is None or res.balance is None:
                raise _refusal(res, card.currency)
            self._aml(tx, "reverse", card.serial, res.entry.id, amount, card.currency)
            receipt = MoneyReceipt(res.entry.id, card.serial, amount, card.currency, res.balance)
            tx.append_audit(
                principal.actor,
                "balance.reverse",
                f"card:{card.id}",
                detail(
                    amount=amount,
                    currency=card.currency,
                    request_id=request_id,
                    entry=res.entry.id,
                    reverses=entry_id,
                    balance_after=res.balance,
                ),
            )
            tx.complete_idempotency("reverse", request_id, _encode(receipt))
            return receipt

        receipt = self._ctx.run(work)
        if self._reportable(amount, receipt.currency):
            self._ctx.wake()
        return receipt

    def transfer(
        self,
        principal: Principal,
        *,
        from_serial: str,
        to_serial: str,
        amount: int,
        currency: str,
        request_id: str,
    ) -> TransferReceipt:
        """Move ``amount`` of one card's balance onto another card of the same holder.

        The rule (docs/domain-api.md, "Transfers"): both cards active, unexpired and in
        ``currency``; both bound to the same account, or both unbound (bearer cards, staff
        only); the target never past its face value. A customer moves money between its
        own cards only; staff between any one holder's. Not spending: the daily redemption
        limit does not count it; a move above the AML threshold is reported like a
        redemption. Both card rows are locked in id order, so opposite transfers between
        two cards queue instead of deadlocking.
        """
        require(principal, _TRANSFERERS)
        amount = int_arg(amount, "amount", 1, MAX_AMOUNT)
        currency = self._currency(currency)
        request_id = request_id_arg(request_id)
        if from_serial == to_serial:
            raise InvalidArgument.of("to_serial", "a card other than the source")
        fingerprint = _fingerprint("transfer", from_serial, to_serial, amount, currency)
        customer = principal.role is Role.CUSTOMER

        def holder(card: Card | None, which: str) -> Card:
            # A customer names only its own cards: any other (an organization's card it can
            # merely read included) is "not found", as in visible_card.
            if card is None or (
                customer and (principal.account_id is None or card.account_id != principal.account_id)
            ):
                raise CardNotFound(metadata={"card": which})
            return card

        def work(tx: UnitOfWork) -> TransferReceipt:
            seen = {
                w: holder(tx.get_card_by_serial(s) if isinstance(s, str) and len(s) <= 64 else None, w)
                for w, s in (("from", from_serial), ("to", to_serial))
            }
            claim = tx.claim_idempotency("transfer", request_id, fingerprint)
            if claim.replay is not None:
                return _decode_transfer(claim.replay)
            locked = tx.lock_cards(seen["from"].id, seen["to"].id)
            src = holder(locked.get(seen["from"].id), "from")
            dst = holder(locked.get(seen["to"].id), "to")
            now = tx.now()
            for card, which in ((src, "from"), (dst, "to")):
                if (why := _unspendable(card, now, which)) is not None:
                    raise why
                if card.currency != currency:
                    raise CurrencyMismatch(metadata={"card": which, "currency": card.currency})
            if src.account_id != dst.account_id:
                raise NotSameHolder()
            if src.balance < amount:
                raise InsufficientFunds(metadata={"balance": str(src.balance), "currency": currency})
            if dst.balance + amount > dst.face_value:
                raise OverFaceValue(
                    metadata={"room": str(dst.face_value - dst.balance), "currency": currency}
                )
            moved = tx.transfer_balance(src.id, dst.id, amount, currency, request_id)
            if moved is None:  # the rows are locked and judged above: cannot happen
                raise RuntimeError(f"transfer {request_id!r} refused by the guards after its checks")
            out, into = moved
            self._aml(tx, "transfer", src.serial, out.id, amount, currency)
            tx.append_audit(
                principal.actor,
                "balance.transfer",
                f"card:{src.id}",
                detail(
                    to=f"card:{dst.id}",
                    amount=amount,
                    currency=currency,
                    request_id=request_id,
                    out_entry=out.id,
                    in_entry=into.id,
                ),
            )
            emit(
                tx,
                EventKind.BALANCE_TRANSFERRED,
                f"card:{src.serial}",
                to=dst.serial,
                amount=amount,
                currency=currency,
                out_entry=out.id,
                in_entry=into.id,
            )
            receipt = TransferReceipt(
                out.id,
                into.id,
                src.serial,
                dst.serial,
                amount,
                currency,
                int(out.balance_after or 0),
                int(into.balance_after or 0),
            )
            tx.complete_idempotency("transfer", request_id, _encode(receipt))
            return receipt

        receipt = self._ctx.run(work)
        if self._reportable(amount, currency):
            self._ctx.wake()
        return receipt

    def reconcile(self, principal: Principal, serials: list[str]) -> Reconciliation:
        """Staff: the named cards' balances and their ledger totals, all read in one
        snapshot, so the figures of every card are of one moment (nothing half-applied can
        show: a transfer is on both cards or on neither). An unknown serial is CardNotFound."""
        require(principal, STAFF)
        if not 1 <= len(serials) <= MAX_RECONCILE:
            raise InvalidArgument.of("serials", f"between 1 and {MAX_RECONCILE} card numbers")
        if len(set(serials)) != len(serials):
            raise InvalidArgument.of("serials", "each card once")
        with self._ctx.storage.read() as tx:
            cards = []
            for s in serials:
                card = tx.get_card_by_serial(s) if isinstance(s, str) and len(s) <= 64 else None
                if card is None:
                    raise CardNotFound(metadata={"serial": s if isinstance(s, str) else ""})
                cards.append(card)
            totals = tx.ledger_totals([c.id for c in cards])
            at = tx.now()
        return Reconciliation(
            tuple(
                CardReconciliation(c.serial, c.currency, c.balance, c.face_value, *totals.get(c.id, (0, 0)))
                for c in cards
            ),
            at,
        )

    def list_transactions(
        self,
        principal: Principal,
        *,
        serial: str | None = None,
        account: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> TransactionPage:
        limit = int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        if before_id is not None:
            int_arg(before_id, "before_id", 1, 2**63 - 1)
        if serial is not None and account is not None:
            raise InvalidArgument.of("serial", "give a card number or an account, not both")
        if serial is None and account is None and principal.role is not Role.CUSTOMER:
            raise InvalidArgument.of("serial", "give a card number or an account")

        def work(tx: UnitOfWork) -> tuple[list[LedgerEntry], dict[int, str]]:
            if serial is not None:
                card = self._cards.visible_card(tx, principal, serial)
                entries = tx.list_ledger(card_id=card.id, before_id=before_id, limit=limit + 1)
            else:
                require(principal, _ACCOUNT_READERS)
                acct = resolve_account(tx, principal, account)
                entries = tx.list_ledger(account_id=acct.id, before_id=before_id, limit=limit + 1)
            serials: dict[int, str] = {}
            for e in entries[:limit]:
                if e.card_id is not None and e.card_id not in serials:
                    c = tx.get_card(e.card_id)
                    if c is not None:
                        serials[e.card_id] = c.serial
            return entries, serials

        entries, serials = self._ctx.run(work)
        items = tuple(
            Transaction(
                id=e.id,
                kind=e.kind.value,
                amount=e.amount,
                currency=e.currency,
                balance_after=e.balance_after,
                serial=serials.get(e.card_id) if e.card_id is not None else None,
                request_id=e.request_id,
                reverses_id=e.reverses_id,
                created_at=e.created_at,
            )
            for e in entries[:limit]
        )
        more = len(entries) > limit
        return TransactionPage(items, items[-1].id if more and items else None)
