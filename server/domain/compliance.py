"""Compliance operations for staff: freeze and unfreeze cards, and read the reports (AML
records and alerts) the workflows file under the compliance profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cardmint.server.storage import Card, CardStatus, Report, UnitOfWork

from ._context import STAFF, Context, detail, int_arg, require
from .auth import Principal
from .cards import CardService, CardView
from .errors import CardNotFound, CardVoid, InvalidArgument
from .events import EventKind, emit

__all__ = ["ComplianceService", "ReportPage"]

_REPORT_KINDS = frozenset({"aml", "alert"})
_MAX_REASON = 500


@dataclass(frozen=True)
class ReportPage:
    reports: tuple[Report, ...]
    next_after_id: int | None  # pass back as ``after_id`` for the next page; None at the end


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON:
        raise InvalidArgument.of("reason", f"why, in 1-{_MAX_REASON} characters (it goes into the audit log)")
    return reason.strip()


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
        require(principal, STAFF)
        why = _reason(reason)

        def work(tx: UnitOfWork) -> tuple[Card, datetime]:
            card = self._card(tx, serial)
            if card.status is CardStatus.VOID:
                raise CardVoid()
            if card.status is CardStatus.ACTIVE:
                frozen = tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
                assert frozen is not None  # the row was just read as active in this transaction
                card = frozen
                tx.append_audit(principal.actor, "card.freeze", f"card:{card.id}", detail(reason=why))
                emit(tx, EventKind.CARD_FROZEN, f"card:{card.serial}", reason=why, by=principal.actor)
            return card, tx.now()

        card, now = self._ctx.run(work)
        self._ctx.wake()
        return self._cards.view(card, now)

    def unfreeze(self, principal: Principal, serial: str, *, reason: str) -> CardView:
        """Staff release a frozen card. Unfreezing an active card changes nothing."""
        require(principal, STAFF)
        why = _reason(reason)

        def work(tx: UnitOfWork) -> tuple[Card, datetime]:
            card = self._card(tx, serial)
            if card.status is CardStatus.VOID:
                raise CardVoid()
            if card.status is CardStatus.FROZEN:
                active = tx.set_card_status(card.id, CardStatus.ACTIVE, only_from=[CardStatus.FROZEN])
                assert active is not None
                card = active
                tx.append_audit(principal.actor, "card.unfreeze", f"card:{card.id}", detail(reason=why))
                emit(tx, EventKind.CARD_UNFROZEN, f"card:{card.serial}", reason=why, by=principal.actor)
            return card, tx.now()

        card, now = self._ctx.run(work)
        self._ctx.wake()
        return self._cards.view(card, now)

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
