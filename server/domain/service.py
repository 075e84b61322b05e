"""``Domain``: one object per process holding every service, for the API layer to call."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from cardmint.kernel import Kernel, get_kernel
from cardmint.server.domain_config import DomainConfig
from cardmint.server.storage import Storage, UnitOfWork

from ._context import Context
from .accounts import AccountService
from .auth import AuthService
from .balances import BalanceService
from .cards import CardService
from .catalog import CatalogService
from .compliance import ComplianceService
from .events import EventService
from .issued_index import IssuedIndex
from .keyring import Keyring
from .keys import KeyService
from .lots import LotService
from .orders import OrderService
from .profiles import load_profile
from .rekey import DigestKeys

__all__ = ["Domain", "Housekeeping"]

log = logging.getLogger(__name__)

PURGE_BATCH = 10_000  # request ids forgotten per transaction


@dataclass(frozen=True)
class Housekeeping:
    """What one housekeeping round did."""

    abandoned_lots: list[int]
    purged_request_ids: int
    purged_attempt_counters: int


class Domain:
    """Every service over one storage, one keyring and one in-memory issued-codes index.

    Thread-safe: the services hold no per-call state, storage hands out a transaction per
    call, and the index guards itself.
    """

    def __init__(
        self,
        storage: Storage,
        keyring: Keyring,
        *,
        kernel: Kernel | None = None,
        config: DomainConfig | None = None,
    ) -> None:
        k = kernel or get_kernel()
        self.storage = storage
        self.keyring = keyring
        self.kernel = k
        self.config = config or DomainConfig()
        self.index = IssuedIndex(storage, k)
        self.profile = load_profile(self.config.profile)
        self.digest_keys = DigestKeys(storage, keyring, k)
        ctx = self._ctx = Context(
            storage, keyring, k, self.config, self.index, self.profile, self.digest_keys
        )
        self.auth = AuthService(storage, cache_seconds=self.config.auth_cache_seconds)
        self.keys = KeyService(ctx)
        self.catalog = CatalogService(ctx)
        self.lots = LotService(ctx)
        self.cards = CardService(ctx)
        self.balances = BalanceService(ctx, self.cards)
        self.events = EventService(ctx)
        self.compliance = ComplianceService(ctx, self.cards)
        self.orders = OrderService(ctx)
        self.accounts = AccountService(ctx, self.auth)
        self._housekeeper: threading.Thread | None = None

    def close(self) -> None:
        """Shutting down: end long-lived calls (event subscriptions) now."""
        self._ctx.closing.set()
        self._ctx.wake()
        self.orders.stop_sweeper()  # a sweep in progress finishes before storage closes
        if self._housekeeper is not None:
            self._housekeeper.join(30.0)
            self._housekeeper = None

    def refresh_index(self) -> None:
        self.index.refresh()

    def purge_idempotency(self, batch: int = PURGE_BATCH) -> int:
        """Forget request ids older than the idempotency window (``idempotency_days``),
        ``batch`` per transaction, so writers wait at most one short delete; how many."""
        days = self.config.idempotency_days
        if days <= 0:
            return 0
        return self._purge(
            lambda tx: tx.purge_idempotency(tx.now() - timedelta(days=days), limit=batch), batch
        )

    def purge_attempts(self, batch: int = PURGE_BATCH) -> int:
        """Forget attempt counters older than the window before the current one (no limit
        reads them), ``batch`` per transaction; how many. Without this, every card number a
        guesser names would leave its counters behind for good."""
        return self._purge(lambda tx: tx.purge_attempts(tx.now(), limit=batch), batch)

    def _purge(self, step: Callable[[UnitOfWork], int], batch: int) -> int:
        """``step`` (deletes at most ``batch`` rows) in transactions of its own until one
        deletes fewer, or the domain closes; how many rows went in all."""
        total = 0
        while not self._ctx.closing.is_set():
            purged = self._ctx.run(step)
            total += purged
            if purged < batch:
                break
        return total

    def housekeeping(self) -> Housekeeping:
        """One round: void lots a dead process left minting, forget expired request ids and
        the failed-attempt counters no limit reads any more."""
        return Housekeeping(self.abandon_stale_lots(), self.purge_idempotency(), self.purge_attempts())

    def start_housekeeping(self, period: float) -> threading.Thread:
        """Run ``housekeeping`` every ``period`` seconds on a background thread until the
        domain closes (``close`` waits for a round in progress)."""
        closing = self._ctx.closing

        def loop() -> None:
            while not closing.wait(period):
                try:
                    done = self.housekeeping()
                except Exception:  # retried next period
                    log.exception("housekeeping failed")
                    continue
                if done.abandoned_lots or done.purged_request_ids or done.purged_attempt_counters:
                    log.info(
                        "housekeeping: voided %d abandoned lot(s) %s, forgot %d expired request id(s)"
                        " and %d expired attempt counter(s)",
                        len(done.abandoned_lots),
                        done.abandoned_lots,
                        done.purged_request_ids,
                        done.purged_attempt_counters,
                    )

        thread = threading.Thread(target=loop, name="cardmint-housekeeping", daemon=True)
        thread.start()
        self._housekeeper = thread
        return thread

    def abandon_stale_lots(self, older_than_seconds: int = 3600) -> list[int]:
        """Void lots a dead process left ``minting`` (run on start and now and then)."""

        def work(tx: UnitOfWork) -> list[int]:
            return tx.abandon_stale_lots(tx.now() - timedelta(seconds=older_than_seconds))

        return self._ctx.run(work)
