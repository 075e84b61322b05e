"""The domain's tunable limits, ``DomainConfig``: a plain dataclass with no dependencies, so
that reading the server's settings (cardmint.server.config, which every ``cardmint``
command's parser needs) does not load the domain, the storage and numpy. The domain
package exports it as ``cardmint.server.domain.DomainConfig``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DomainConfig"]


@dataclass(frozen=True)
class DomainConfig:
    # Failed-bind tiers (challenge, lock) live in the compliance profile's [risk] section.
    transfers_per_year: int = 3
    max_check_batch: int = 1_000_000
    max_generate: int = 1_000_000
    max_lot: int = 10_000_000
    lot_chunk: int = 65_536
    stream_chunk: int = 10_000
    page_limit_max: int = 500
    # A verified token is remembered this long; a revocation made by another server process
    # takes effect here within it (one made through this process, at once). 0 = ask every call.
    auth_cache_seconds: float = 1.0
    profile: str = "platform"  # compliance profile: a built-in name or a .toml file
    # orders (the card shop). A reservation holds its codes this long unpaid (SPEC §3: 15 min).
    order_ttl_seconds: int = 900
    # A paid order waiting for manual review is refunded if not delivered within this long
    # (seed 004: buyers who get no code within ~15 minutes are refunded).
    delivery_deadline_seconds: int = 900
    order_max_items: int = 10  # lines per order
    order_max_codes: int = 50  # codes per order, all lines together
    # Denial of inventory: codes held by unpaid, unexpired reservations at once.
    held_codes_per_account: int = 50
    held_codes_per_address: int = 200
    order_reveals_per_hour: int = 60  # full views of delivered codes, per account
    order_sweep_seconds: float = 5.0  # the background sweeper's period (0 = no sweeper thread)
    # Proxies (CIDRs) whose x-forwarded-for names the client: behind a load balancer the
    # per-address limits count the forwarded client, not the balancer (server/api/_convert.py).
    trusted_proxies: tuple[str, ...] = ()
    # The idempotency window: a request id is answered as the first call for this many days,
    # then forgotten (0 = kept forever). Payment ids of orders are unique forever regardless.
    idempotency_days: int = 30
    # Housekeeping (expired request ids and attempt counters, lots abandoned while minting) runs this often
    # (0 = no housekeeping thread; the server also voids abandoned lots at start).
    housekeeping_seconds: float = 3600.0
