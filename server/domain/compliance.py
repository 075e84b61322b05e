"""Compliance operations for staff: freeze and unfreeze cards, and read the reports (AML
records and alerts) the workflows file under the compliance profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
from cardmint.kernel import Packed, Status
from cardmint.server.storage import Card, CardStatus, Report, UnitOfWork

from ._context import STAFF, Context, detail, int_arg, require
from .audit import AuditVerdict, verify_storage
from .auth import Permission, Principal, may
from .cards import CardService, CardView
from .errors import CardNotFound, CardVoid, InvalidArgument
from .events import EventKind, emit
from .issued_index import DIGEST_SIZE
from .keys import code_length_arg

__all__ = ["BlacklistResult", "ComplianceService", "ReportPage"]

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
                moved = tx.set_card_status(card.id, target, only_from=[source])
                assert moved is not None  # the row was just read in this transaction
                card = moved
                tx.append_audit(principal.actor, action, f"card:{card.id}", detail(reason=why))
                emit(tx, event, f"card:{card.serial}", reason=why, by=principal.actor)
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
            rows = ctx.kernel.digest(checked.codes[ok], ctx.keyring.digest_key) if ok.any() else None
        else:
            arr = np.asarray(digests, dtype=np.uint8)
            if arr.ndim != 2 or arr.shape[1] != DIGEST_SIZE:
                raise InvalidArgument.of("digests", f"{DIGEST_SIZE} bytes per digest")
            received = len(arr)
            if received > ctx.config.max_check_batch:
                raise InvalidArgument.of("digests", f"at most {ctx.config.max_check_batch} per call")
            rows = arr
        unique = sorted({bytes(d) for d in rows}) if rows is not None else []
        why = f"blacklisted by {source.strip()}"

        def work(tx: UnitOfWork) -> tuple[int, int, int]:
            cards = {c.digest: c for c in tx.cards_by_digests(unique)}
            new = tx.add_to_blacklist([(d, cards[d].id if d in cards else None) for d in unique], source)
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
