"""Compliance operations: staff freeze and unfreeze cards and read the reports (AML records
and alerts) the workflows file under the compliance profile; a holder reports a card lost
and staff review the report, reissuing the remaining balance on a new card."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

import blake3
import numpy as np
import numpy.typing as npt
from cardmint.kernel import Packed, Status
from cardmint.server.storage import (
    Card,
    CardBatch,
    CardStatus,
    ConflictError,
    Product,
    Report,
    Role,
    UnitOfWork,
)
from cardmint.server.storage.models import LossReport, LossStatus

from ._context import STAFF, Context, detail, int_arg, request_id_arg, require, resolve_account
from .audit import AuditVerdict, verify_storage
from .auth import Permission, Principal, may
from .balances import file_aml_report
from .cards import CardService, CardView
from .errors import (
    CardExpired,
    CardNotBound,
    CardNotFound,
    CardSpent,
    CardVoid,
    Contention,
    InvalidArgument,
    LossReportDecided,
    LossReportingNotAllowed,
    LossReportNotFound,
    LossReportPending,
    NotCardHolder,
)
from .events import EventKind, emit
from .issued_index import DIGEST_SIZE
from .keys import code_length_arg
from .lots import SERIAL_WIDTH, serial_prefix

__all__ = ["BlacklistResult", "ComplianceService", "LossReportPage", "LossReportView", "ReportPage"]

_REPORT_KINDS = frozenset({"aml", "alert"})
_MAX_REASON = 500


@dataclass(frozen=True)
class BlacklistResult:
    received: int  # rows in the request
    malformed: int  # codes that are not well-formed codes (not digested, not stored)
    new: int  # digests not on the blacklist before
    matched: int  # digests of issued cards
    frozen: int  # of those, cards this import froze (the others were frozen or void already)


@dataclass(frozen=True)
class ReportPage:
    reports: tuple[Report, ...]
    next_after_id: int | None  # pass back as ``after_id`` for the next page; None at the end


@dataclass(frozen=True)
class LossReportView:
    """A loss report as its holder and staff see it."""

    id: int
    status: str  # pending, approved, rejected
    card: CardView  # the reported card as it is now
    account: str  # the holder's account (external id)
    reason: str
    reported_by: str
    reported_at: datetime
    reviewed_by: str | None
    reviewed_at: datetime | None
    note: str | None
    new_card: CardView | None  # approved: the card the balance moved to (bound to the same account)
    amount: int | None  # approved: the balance moved, in the card's currency
    replayed: bool = False  # True when a repeated request id answered with the first call's report


@dataclass(frozen=True)
class LossReportPage:
    reports: tuple[LossReportView, ...]
    next_after_id: int | None


_LOSS_REPORTERS = STAFF | {Role.CUSTOMER}


def _fingerprint(*parts: object) -> bytes:
    return blake3.blake3(json.dumps(parts).encode()).digest()


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_REASON:
        raise InvalidArgument.of(field, f"why, in 1-{_MAX_REASON} characters (it goes into the audit log)")
    return value.strip()


def _reason(reason: object) -> str:
    return _text(reason, "reason")


def _set_status(
    tx: UnitOfWork, actor: str, card: Card, target: CardStatus, why: str, action: str, event: EventKind
) -> Card:
    """Move ``card`` (read in ``tx``, not at ``target``) to ``target``: audited, announced, and
    on the card-state feed (``set_card_status``) so every process's index sees it."""
    moved = tx.set_card_status(card.id, target, only_from=[card.status])
    assert moved is not None  # the row was just read in this transaction
    tx.append_audit(actor, action, f"card:{card.id}", detail(reason=why))
    emit(tx, event, f"card:{card.serial}", reason=why, by=actor)
    return moved


class ComplianceService:
    def __init__(self, ctx: Context, cards: CardService) -> None:
        self._ctx = ctx
        self._cards = cards

    def _card(self, tx: UnitOfWork, serial: object) -> Card:
        card = tx.get_card_by_serial(serial) if isinstance(serial, str) and len(serial) <= 64 else None
        if card is None:
            raise CardNotFound()
        return card

    def freeze(self, principal: Principal, serial: str, *, reason: str) -> CardView:
        """Staff stop a card: nothing can be spent or bound until it is unfrozen. Freezing
        a frozen card changes nothing (a retry is safe); a void card cannot be frozen."""
        return self._move(principal, serial, reason, CardStatus.ACTIVE, CardStatus.FROZEN)

    def unfreeze(self, principal: Principal, serial: str, *, reason: str) -> CardView:
        """Staff release a frozen card. Unfreezing an active card changes nothing."""
        return self._move(principal, serial, reason, CardStatus.FROZEN, CardStatus.ACTIVE)

    def _move(
        self, principal: Principal, serial: str, reason: str, source: CardStatus, target: CardStatus
    ) -> CardView:
        """``source`` -> ``target``, audited and announced; already at ``target``: no-op.

        Organization members with the FREEZE permission may freeze (not unfreeze) cards of
        their organization's lots in their scope (docs/accounts.md); others: not found."""
        member = principal.role not in STAFF and target is CardStatus.FROZEN
        if not (member and may(principal, Permission.FREEZE)):
            require(principal, STAFF)
        why = _reason(reason)
        action, event = (
            ("card.freeze", EventKind.CARD_FROZEN)
            if target is CardStatus.FROZEN
            else ("card.unfreeze", EventKind.CARD_UNFROZEN)
        )

        def work(tx: UnitOfWork) -> tuple[Card, datetime]:
            card = self._card(tx, serial)
            if member and not self._cards.in_org_scope(tx, principal, card, Permission.FREEZE):
                raise CardNotFound()
            if card.status is CardStatus.VOID:
                raise CardVoid()
            if card.status is source:
                card = _set_status(tx, principal.actor, card, target, why, action, event)
            return card, tx.now()

        card, now = self._ctx.run(work)
        self._ctx.wake()
        return self._cards.view(card, now)

    def import_blacklist(
        self,
        principal: Principal,
        *,
        source: str,
        codes: Packed | None = None,
        digests: npt.NDArray[np.uint8] | None = None,
        length: int = 16,
    ) -> BlacklistResult:
        """Record stolen codes reported by a partner and freeze every issued card among them.

        Partners send the codes (digested here, never stored) or, for batch jobs holding the
        deployment's digest key, the digests themselves (``n x 16`` bytes). One transaction:
        all recorded and frozen, or nothing. Repeating an import changes nothing more.
        """
        require(principal, STAFF)
        if not isinstance(source, str) or not 1 <= len(source.strip()) <= 200:
            raise InvalidArgument.of("source", "who reported these codes, 1-200 characters")
        if (codes is None) == (digests is None):
            raise InvalidArgument.of("codes", "give codes or digests, not both")
        ctx = self._ctx
        malformed = 0
        if codes is not None:
            received = codes.rows
            if received > ctx.config.max_check_batch:
                raise InvalidArgument.of("codes", f"at most {ctx.config.max_check_batch} per call")
            checked = ctx.kernel.check(codes, code_length_arg(length))
            ok = checked.status == Status.OK
            malformed = int(received - ok.sum())
            # Under every lookup key, newest first: during a digest-key rotation a code's card
            # may be digested with a previous key.
            per_key = (
                [ctx.kernel.digest(checked.codes[ok], k) for _, k in ctx.rotation.lookup_keys()]
                if ok.any()
                else []
            )
            rows = per_key[0] if ok.any() else None
        else:
            arr = np.asarray(digests, dtype=np.uint8)
            if arr.ndim != 2 or arr.shape[1] != DIGEST_SIZE:
                raise InvalidArgument.of("digests", f"{DIGEST_SIZE} bytes per digest")
            received = len(arr)
            if received > ctx.config.max_check_batch:
                raise InvalidArgument.of("digests", f"at most {ctx.config.max_check_batch} per call")
            rows = arr
            per_key = [arr]
        unique = sorted({bytes(d) for d in rows}) if rows is not None else []
        # Every digest a listed code may have; a code is recorded under the one that names a
        # card, else under the newest key's.
        candidates = sorted({bytes(d) for dg in per_key for d in dg}) if rows is not None else []
        why = f"blacklisted by {source.strip()}"

        def work(tx: UnitOfWork) -> tuple[int, int, int]:
            cards = {c.digest: c for c in tx.cards_by_digests(candidates)}
            chosen = unique
            if len(per_key) > 1 and cards:
                chosen = sorted(
                    {
                        next((bytes(dg[i]) for dg in per_key if bytes(dg[i]) in cards), bytes(per_key[0][i]))
                        for i in range(len(per_key[0]))
                    }
                )
            new = tx.add_to_blacklist([(d, cards[d].id if d in cards else None) for d in chosen], source)
            frozen = 0
            for card in cards.values():
                if tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE]) is not None:
                    frozen += 1
                    emit(tx, EventKind.CARD_FROZEN, f"card:{card.serial}", reason=why, by=principal.actor)
            tx.append_audit(
                principal.actor,
                "blacklist.import",
                f"source:{source.strip()}",
                detail(received=received, new=new, matched=len(cards), frozen=frozen),
            )
            return new, len(cards), frozen

        new, matched, frozen = ctx.run(work)
        if frozen:
            ctx.wake()
        return BlacklistResult(received, malformed, new, matched, frozen)

    def verify_audit(
        self, principal: Principal, *, expect_events: int | None = None, expect_head: bytes | None = None
    ) -> AuditVerdict:
        """Walk the audit chain and name the first broken event (see ``audit.py``)."""
        require(principal, STAFF)
        if expect_events is not None:
            int_arg(expect_events, "expect_events", 0, 2**63 - 1)
        if expect_head is not None and len(expect_head) != 32:
            raise InvalidArgument.of("expect_head", "the 32-byte hash of the last event")
        return verify_storage(self._ctx.storage, expect_events=expect_events, expect_head=expect_head)

    def list_reports(
        self, principal: Principal, *, kind: str | None = None, after_id: int = 0, limit: int = 50
    ) -> ReportPage:
        """AML report records and alerts, oldest first, paged by id."""
        require(principal, STAFF)
        if kind is not None and kind not in _REPORT_KINDS:
            raise InvalidArgument.of("kind", "aml, alert, or empty for both")
        after = int_arg(after_id, "after_id", 0, 2**63 - 1)
        limit = int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        with self._ctx.storage.read() as tx:
            found = tx.list_reports(kind, after, limit + 1)
        page = tuple(found[:limit])
        return ReportPage(page, page[-1].id if len(found) > limit else None)

    # -- loss reports
    def report_loss(
        self,
        principal: Principal,
        serial: str,
        *,
        reason: str,
        request_id: str,
        account: str | None = None,
    ) -> LossReportView:
        """The holder reports a bound card lost: it is frozen at once and the report waits
        for staff review (``review_loss``). Customers report their own cards; staff report on
        a holder's behalf (``account``, if given, must be the holder). Only where the
        compliance profile allows loss reports for the card's kind (anonymous/registered).
        Idempotent on ``request_id``: a retry answers the first call's report."""
        require(principal, _LOSS_REPORTERS)
        why = _reason(reason)
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("report_loss", principal.actor, serial, account, why)
        ctx = self._ctx

        def work(tx: UnitOfWork) -> tuple[LossReportView, bool]:
            claim = tx.claim_idempotency("loss.report", request_id, fingerprint)
            if claim.replay is not None:
                return self._replayed(tx, claim.replay), True
            card, holder_id = self._holder_card(tx, principal, serial, account)
            product = tx.get_product(card.product_id)
            assert product is not None  # cards reference existing products
            self._loss_allowed(product)
            self._reissuable(tx, card)
            report = tx.add_loss_report(card.id, holder_id, why, principal.actor)
            if report is None:  # one is pending (found here, or committed by a concurrent report)
                pending = tx.pending_loss_report(card.id)
                raise LossReportPending(metadata={"report_id": str(pending.id if pending else 0)})
            subject = f"card:{card.serial}"
            if card.status is CardStatus.ACTIVE:
                card = _set_status(
                    tx,
                    principal.actor,
                    card,
                    CardStatus.FROZEN,
                    f"reported lost (loss report {report.id})",
                    "card.freeze",
                    EventKind.CARD_FROZEN,
                )
            tx.append_audit(
                principal.actor, "card.report_loss", f"card:{card.id}", detail(report=report.id, reason=why)
            )
            emit(tx, EventKind.CARD_LOST, subject, report=report.id, by=principal.actor)
            tx.complete_idempotency("loss.report", request_id, json.dumps({"report": report.id}).encode())
            return self._loss_view(tx, report), False

        view, replayed = ctx.run(work)
        if not replayed:
            ctx.wake()
        return view

    def review_loss(
        self, principal: Principal, report_id: int, *, approve: bool, note: str, request_id: str
    ) -> LossReportView:
        """Staff decide a pending loss report.

        Approve: in one transaction a new card of the same product is minted (like a lot
        card: serial, keyed digest, sealed secret; the old card's face value and expiry),
        bound to the holder's account, and the old card's whole remaining balance moves onto
        it (``reissue_out`` on the old card, ``reissue_in`` on the new one, linked); the old
        card ends void with balance 0. The new code is not in the answer: its owner reads it
        with ViewSecret. Reject: the card stays frozen (staff may Unfreeze it).
        Idempotent on ``request_id``."""
        require(principal, STAFF)
        rid = int_arg(report_id, "report_id", 1, 2**63 - 1)
        if not isinstance(approve, bool):
            raise InvalidArgument.of("approve", "true to reissue, false to reject")
        why = _text(note, "note")
        request_id = request_id_arg(request_id)
        fingerprint = _fingerprint("review_loss", rid, approve, why)
        ctx = self._ctx

        def work(tx: UnitOfWork) -> tuple[LossReportView, bool]:
            claim = tx.claim_idempotency("loss.review", request_id, fingerprint)
            if claim.replay is not None:
                return self._replayed(tx, claim.replay), True
            report = tx.get_loss_report(rid, lock=True)
            if report is None:
                raise LossReportNotFound()
            if report.status is not LossStatus.PENDING:
                raise LossReportDecided(metadata={"status": report.status.value})
            card = tx.get_card(report.card_id)
            assert card is not None  # reports reference existing cards
            decided: LossReport | None
            if approve:
                decided = self._reissue(tx, principal, report, card, why)
            else:
                decided = tx.decide_loss_report(rid, LossStatus.REJECTED, principal.actor, why)
                assert decided is not None  # locked and pending above
                tx.append_audit(
                    principal.actor, "card.loss_rejected", f"card:{card.id}", detail(report=rid, note=why)
                )
                emit(tx, EventKind.LOSS_REJECTED, f"card:{card.serial}", report=rid, by=principal.actor)
            tx.complete_idempotency("loss.review", request_id, json.dumps({"report": rid}).encode())
            return self._loss_view(tx, decided), False

        try:
            view, replayed = ctx.run(work)
        except ConflictError as e:
            # The new card's random code collided with an issued one: vanishingly rare, and
            # the same request id simply reviews again (nothing of this try was kept).
            raise Contention("a minted code collided with an issued one; review again") from e
        if not replayed:
            ctx.wake()
            if approve:
                ctx.index.refresh()  # the new card for Check and corrections, the old one void
        return view

    def list_loss_reports(
        self, principal: Principal, *, status: str | None = None, after_id: int = 0, limit: int = 50
    ) -> LossReportPage:
        """Loss reports, oldest first, paged by id: staff see all, a customer their own."""
        require(principal, _LOSS_REPORTERS)
        try:
            wanted = None if status is None else LossStatus(status)
        except ValueError:
            raise InvalidArgument.of("status", "pending, approved, rejected, or empty for all") from None
        after = int_arg(after_id, "after_id", 0, 2**63 - 1)
        limit = int_arg(limit, "limit", 1, self._ctx.config.page_limit_max)
        with self._ctx.storage.read() as tx:
            account_id = resolve_account(tx, principal, None).id if principal.role is Role.CUSTOMER else None
            found = tx.list_loss_reports(
                status=wanted, account_id=account_id, after_id=after, limit=limit + 1
            )
            page = tuple(self._loss_view(tx, r) for r in found[:limit])
        return LossReportPage(page, page[-1].id if len(found) > limit else None)

    def _holder_card(
        self, tx: UnitOfWork, principal: Principal, serial: object, account: str | None
    ) -> tuple[Card, int]:
        """The reported card and its holder's account id, if this caller may report it."""
        card = tx.get_card_by_serial(serial) if isinstance(serial, str) and 0 < len(serial) <= 64 else None
        if card is None:
            raise CardNotFound()
        if principal.role is Role.CUSTOMER:
            own = resolve_account(tx, principal, account)
            if card.account_id != own.id:
                raise CardNotFound()  # someone else's card, or nobody's: as if it did not exist
            return card, own.id
        if card.account_id is None:
            raise CardNotBound()
        if account is not None:
            named = tx.find_account(account) if isinstance(account, str) else None
            if named is None or named.id != card.account_id:
                raise NotCardHolder()
        return card, card.account_id

    def _loss_allowed(self, product: Product) -> None:
        profile = self._ctx.profile
        if not profile.cards(product.registered).loss_reporting:
            kind = "registered" if product.registered else "anonymous"
            raise LossReportingNotAllowed(metadata={"profile": profile.tag, "card_kind": kind})

    def _reissuable(self, tx: UnitOfWork, card: Card) -> None:
        if card.status is CardStatus.VOID:
            raise CardVoid()
        if card.expires_at is not None and card.expires_at <= tx.now():
            raise CardExpired()
        if card.balance <= 0:
            raise CardSpent()

    def _reissue(
        self, tx: UnitOfWork, principal: Principal, report: LossReport, card: Card, note: str
    ) -> LossReport:
        self._reissuable(tx, card)
        if card.account_id != report.account_id:
            raise NotCardHolder("the card is no longer bound to the account that reported it")
        product = tx.get_product(card.product_id)
        assert product is not None
        new = self._mint_replacement(tx, principal, product, card)
        bound = tx.bind_card(new.id, report.account_id)
        assert bound.card is not None  # a fresh active card binds
        moved = tx.reissue_balance(card.id, new.id, f"loss-report:{report.id}")
        if moved is None:  # spent meanwhile (a concurrent redemption took the rest)
            raise CardSpent()
        amount = moved.moved_in.amount
        # A reissue moves money to a new card: above the threshold it is reported like any move.
        file_aml_report(
            self._ctx.profile, tx, "reissue", card.serial, moved.moved_out.id, amount, card.currency
        )
        decided = tx.decide_loss_report(
            report.id, LossStatus.APPROVED, principal.actor, note, new_card_id=new.id, amount=amount
        )
        assert decided is not None  # locked and pending
        tx.append_audit(
            principal.actor,
            "card.reissue",
            f"card:{card.id}",
            detail(
                report=report.id,
                new_card=new.id,
                amount=amount,
                currency=card.currency,
                moved_out=moved.moved_out.id,
                moved_in=moved.moved_in.id,
                note=note,
            ),
        )
        emit(
            tx,
            EventKind.CARD_REISSUED,
            f"card:{card.serial}",
            report=report.id,
            new_serial=new.serial,
            amount=amount,
            currency=card.currency,
            by=principal.actor,
        )
        return decided

    def _mint_replacement(self, tx: UnitOfWork, principal: Principal, product: Product, old: Card) -> Card:
        """One new card of ``old``'s product, minted as a lot card is (serial from the
        product's counter, keyed digest, sealed secret) in a lot of its own, so that every
        server's index learns it from the lot feed. The old card's face value and expiry."""
        ctx, keys = self._ctx, self._ctx.keyring
        prefix = serial_prefix(product)
        start = tx.reserve_serials(prefix, 1)
        if start + 1 > 10**SERIAL_WIDTH:
            raise InvalidArgument.of("report_id", "the card's product has run out of card numbers")
        now = tx.now()
        lot = tx.create_lot(
            product.id,
            1,
            old.face_value,
            serial_prefix=prefix,
            serial_start=start,
            created_by=f"{principal.actor} (reissue of card {old.serial})",
            valid_for=old.expires_at - now if old.expires_at is not None else None,
        )
        digest_key_id, digest_key = ctx.rotation.current(tx)
        tx.set_lot_digest_key(lot.id, digest_key_id)
        batch = ctx.kernel.minter(product.code_length).take(1, key=digest_key)
        assert batch.digests is not None  # keyed take always digests
        digests = np.ascontiguousarray(batch.digests)
        sealed = ctx.kernel.seal(batch.codes, digests, keys.seal_key)
        serials = ctx.kernel.serials(prefix, start, 1, SERIAL_WIDTH)
        tx.add_cards(lot, CardBatch(serials, digests, sealed, keys.seal_key_id), old.expires_at)
        tx.complete_lot(lot.id)
        # Nobody exports this code: it is the holder's, read with ViewSecret. Counting the
        # lot as exported makes any export need an admin (audited) and keeps it off the pool.
        tx.mark_lot_exported(lot.id)
        card = tx.get_card_by_serial(serials[0].decode("ascii"))
        assert card is not None
        return card

    def _replayed(self, tx: UnitOfWork, stored: bytes) -> LossReportView:
        report = tx.get_loss_report(int(json.loads(stored)["report"]))
        assert report is not None  # stored with the report, in its transaction
        return replace(self._loss_view(tx, report), replayed=True)

    def _loss_view(self, tx: UnitOfWork, report: LossReport) -> LossReportView:
        now = tx.now()
        card = tx.get_card(report.card_id)
        holder = tx.get_account(report.account_id)
        assert card is not None and holder is not None
        new = tx.get_card(report.new_card_id) if report.new_card_id is not None else None
        return LossReportView(
            id=report.id,
            status=report.status.value,
            card=self._cards.view(card, now),
            account=holder.external_id,
            reason=report.reason,
            reported_by=report.reported_by,
            reported_at=report.reported_at,
            reviewed_by=report.reviewed_by,
            reviewed_at=report.reviewed_at,
            note=report.note,
            new_card=self._cards.view(new, now) if new is not None else None,
            amount=report.amount,
        )
