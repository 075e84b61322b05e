"""Events for notifiers: the outbox the workflows write to, and the feed a notifier follows.

A workflow records an event with ``emit`` inside the transaction that makes the change, so
the event exists exactly when the change does (a rolled-back bind leaves no lockout event,
a committed one always has it). A notifier (SMS, email, webhooks: outside cardmint)
follows the feed from the last event it acknowledged; ids only grow and are assigned in
commit order, so resuming from a cursor neither loses nor repeats an event.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cardmint.server.storage import UnitOfWork

from ._context import STAFF, Context, int_arg, require
from .auth import Principal
from .errors import InvalidArgument

__all__ = ["Event", "EventKind", "EventService", "emit"]

_PAGE = 500


class EventKind(enum.StrEnum):
    ACCOUNT_LOCKED = "account.locked"  # too many failed binds on an account
    CARD_LOCKED = "card.locked"  # too many failed binds naming one card
    CLIENT_LOCKED = "client.locked"  # too many failed binds from one address or device
    AML_REPORT = "aml.report"  # a movement above the profile's AML threshold
    CARD_FROZEN = "card.frozen"  # staff (or a loss report) stopped a card
    CARD_UNFROZEN = "card.unfrozen"
    VIEWING_ALERT = "alert.viewing"  # unusual secret viewing froze a card
    MEMBER_ADDED = "org.member_added"  # an account joined an organization (or changed scope)
    MEMBER_REMOVED = "org.member_removed"
    CARDS_HANDED_OUT = "org.cards_bound"  # a bulk bind bound an organization's cards to recipients
    CARD_LOST = "card.lost"  # the holder reported a card lost: frozen, waiting for review
    CARD_REISSUED = "card.reissued"  # a loss report approved: the balance moved to a new card
    BALANCE_TRANSFERRED = "card.transferred"  # part of a card's balance moved onto another card
    LOSS_REJECTED = "card.loss_rejected"  # a loss report rejected: the card stays frozen
    # The card shop (subject "order:<id>"; the detail names the account and counts, never a
    # code or serial): codes delivered to the buyer, a paid order parked for manual review,
    # a paid order refunded (``automatic``: by the service, e.g. not delivered in time), an
    # unpaid reservation expired (its codes back in the pool).
    ORDER_DELIVERED = "order.delivered"
    ORDER_REVIEW = "order.review"
    ORDER_REFUNDED = "order.refunded"
    ORDER_EXPIRED = "order.expired"
    # The catalog (subject "product:<id>", detail the sku): a product retired (no longer
    # sold; a storefront takes it down) or put back on sale.
    PRODUCT_RETIRED = "product.retired"
    PRODUCT_REINSTATED = "product.reinstated"


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    kind: str
    subject: str
    detail: dict[str, Any]


def emit(tx: UnitOfWork, kind: EventKind, subject: str, **detail: object) -> int:
    """Record an event in ``tx``; it is published when (and only if) ``tx`` commits."""
    return tx.emit_event(kind.value, subject, json.dumps(detail, sort_keys=True, separators=(",", ":"))).id


class EventService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def head(self, principal: Principal) -> int:
        """The newest event id: where a new notifier that wants no history starts."""
        require(principal, STAFF)
        with self._ctx.storage.read() as tx:
            return tx.events_head()

    @staticmethod
    def kinds() -> list[str]:
        """Every kind of event recorded here, sorted: what ``subscribe`` filters on."""
        return sorted(k.value for k in EventKind)

    def subscribe(
        self,
        principal: Principal,
        after: int = 0,
        *,
        kinds: Collection[str] = (),
        active: Callable[[], bool] = lambda: True,
        poll_seconds: float = 0.5,
        deadline: float | None = None,
        until: int = 0,
    ) -> Iterator[Event]:
        """Events with id > ``after``, oldest first, then new ones as they commit, for as
        long as ``active()`` holds, until the monotonic ``deadline`` (if given) and until
        the domain closes (server shutdown ends every subscription at once). With
        ``until`` (> 0), the events up to that id only: it ends once the cursor reaches it.

        ``kinds`` filters (empty = all); a filtered-out event still moves the cursor.
        """
        require(principal, STAFF)
        cursor = int_arg(after, "after", 0, 2**63 - 1)
        until = int_arg(until, "until_id", 0, 2**63 - 1)
        wanted = frozenset(kinds)
        if unknown := wanted - {k.value for k in EventKind}:
            raise InvalidArgument.of("kinds", f"unknown event kinds: {', '.join(sorted(unknown))}")
        closing = self._ctx.closing
        while active() and not closing.is_set() and (deadline is None or time.monotonic() < deadline):
            if until and cursor >= until:
                return
            with self._ctx.storage.read() as tx:
                batch = tx.events_after(cursor, _PAGE)
            for e in batch:
                if until and e.id > until:
                    return
                cursor = e.id
                if not wanted or e.kind in wanted:
                    yield Event(e.id, e.at, e.kind, e.subject, json.loads(e.detail))
            if len(batch) < _PAGE:
                wait = poll_seconds if deadline is None else min(poll_seconds, deadline - time.monotonic())
                if wait > 0:  # woken early by a commit in this process (ctx.wake)
                    self._ctx.wake.wait(wait)
