"""Item 14, the annual cap on transferred cards, raced (SQLite and PostgreSQL).

An account may bind at most ``transfers_per_year`` (3) cards that someone else held
before. One account's 64 clients bind 64 different transferred cards at the same moment:
exactly 3 binds win, every other one is refused with TRANSFER_LIMIT_REACHED, and the
cards refused are still unbound (their balance is still nobody's)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from cardmint.client import CardmintError, CardNotFound, Client, TransferLimitReached

from .conftest import Report, Sizes, together
from .test_races import _lot

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]

CAP = 3  # DomainConfig.transfers_per_year, the default


def test_transferred_bind_cap_holds_when_raced(
    clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    admin = clients(token("admin"))[0]
    n = sizes.clients
    cards = _lot(admin, "CAP-RACE", 100, n)
    # Someone held each card before: bound, then given up (a transfer).
    for serial, code in cards:
        admin.bind_card(code, account=f"{seed}-giver", challenge_passed=True)
        admin.unbind_card(serial, account=f"{seed}-giver")
    taker = f"{seed}-taker"
    pool = clients(token("customer", account=taker))
    outcome: Counter[str] = Counter()
    won: list[str] = []
    lock = threading.Lock()

    def bind(w: int) -> None:
        serial, code = cards[w]
        try:
            pool[w].bind_card(code, serial=serial, challenge_passed=True)
            result = "bound"
        except TransferLimitReached:
            result = "capped"
        except CardmintError as e:
            result = e.reason
        with lock:
            outcome[result] += 1
            if result == "bound":
                won.append(serial)

    together(n, bind, sizes.limit_s)
    unbound = [s for s, _ in cards if not admin.get_card(s).bound]
    mine = []  # what the taker can see: a customer sees only its own cards
    for serial, _ in cards:
        try:
            if pool[0].get_card(serial).bound:
                mine.append(serial)
        except CardNotFound:
            pass
    report(
        "14-transfer-cap-race",
        clients=n,
        cap=CAP,
        bound=outcome["bound"],
        capped=outcome["capped"],
        other=sum(v for k, v in outcome.items() if k not in ("bound", "capped")),
        owned_by_taker=len(mine),
        unbound_after=len(unbound),
    )
    assert outcome["bound"] == CAP and outcome["capped"] == n - CAP
    assert sorted(mine) == sorted(won) and len(unbound) == n - CAP
