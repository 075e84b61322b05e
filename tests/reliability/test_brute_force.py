"""Brute force against binding (issue 5, item 9), over gRPC, on SQLite and PostgreSQL.

Well-formed random codes (their check character right, so each one reaches the database)
are guessed at one card, from one account, and from many accounts with rotating device
ids, all from one client address, with every guess claiming a solved challenge: the locks
alone must hold. "Evaluated" counts the guesses answered CARD_NOT_FOUND. The guess that
reaches a limit is looked up too and answered with the lock, and every later one is locked
without a lookup, so the tries per card are evaluated + 1 <= 3, per account <= 5, and from
the one address <= 20 over the whole test (the platform profile's limits per window)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable

from cardmint.client import CardmintError, CardNotFound, Client
from cardmint.kernel import get_kernel
from cardmint.server.app import Running

from .conftest import Report, Sizes, together
from .test_races import _lot

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]


def _codes(n: int) -> list[str]:
    """``n`` well-formed codes (right length, right check character) nobody issued."""
    kernel = get_kernel()
    minted = kernel.generate(n, key=os.urandom(32))
    return [c.decode() for c in kernel.display(minted.codes).tolist()]


def test_brute_force_gets_nowhere(
    server: Running, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    addr = f"127.0.0.1:{server.port}"

    def connect(bearer: str, device_id: str | None = None) -> Client:
        return Client(addr, bearer, timeout=30.0, device_id=device_id)

    brute_force(connect, token, sizes, seed, report)


def brute_force(
    connect: Callable[..., Client], token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    """The attack and its figures, through clients from ``connect(token, device_id=None)``
    (one server, or several behind round-robin channels: tests/reliability/test_two_servers.py)."""
    admin = connect(token("admin"))
    cards = _lot(admin, "BRUTE", 500, 3)
    guesses = 20_000 if sizes.soak else 1_500
    per_phase = guesses // 3
    codes = _codes(guesses + 8)
    answers: dict[str, Counter[str]] = {}
    lock = threading.Lock()

    def attack(phase: str, make: Callable[[int], tuple[Client, str]], n: int, offset: int) -> None:
        got: Counter[str] = Counter()
        workers = min(64, n)

        def guess(w: int) -> None:
            for i in range(w, n, workers):
                client, serial = make(i)
                try:
                    client.bind_card(codes[offset + i], serial=serial, challenge_passed=True)
                    outcome = "ACCEPTED"
                except CardNotFound:
                    outcome = "evaluated"
                except CardmintError as e:
                    outcome = e.reason
                with lock:
                    got[outcome] += 1

        together(workers, guess, sizes.limit_s)
        answers[phase] = got

    # 0. A wrong secret for a frozen or a bound card answers like an unknown code.
    frozen, bound = cards[0][0], cards[1][0]
    admin.freeze(frozen, "stolen")
    admin.bind_card(cards[1][1], account=f"{seed}-owner", challenge_passed=True)
    probe = connect(token("customer", account=f"{seed}-probe"), device_id=f"{seed}-d-probe")
    same: list[str] = []
    for serial, code in ((frozen, codes[-1]), (bound, codes[-2]), ("", codes[-3])):
        try:
            probe.bind_card(code, serial=serial, challenge_passed=True)
        except CardmintError as e:
            same.append(f"{e.code.name}/{e.reason}")
    assert same == ["NOT_FOUND/CARD_NOT_FOUND"] * 3, same

    # 1. One card, guessed by many accounts from rotating devices at once.
    target = cards[2][0]
    people = [connect(token("customer", account=f"{seed}-p{i}"), device_id=f"{seed}-d{i}") for i in range(64)]
    attack("card", lambda i: (people[i % len(people)], target), per_phase, 0)
    # 2. One account, no card number: codes alone.
    one = connect(token("customer", account=f"{seed}-alone"), device_id=f"{seed}-d-alone")
    attack("account", lambda i: (one, ""), per_phase, per_phase)
    # 3. Many accounts and rotating devices: only the address is left to stop them.
    crowd = [connect(token("customer", account=f"{seed}-c{i}"), device_id=f"{seed}-r{i}") for i in range(128)]
    attack("crowd", lambda i: (crowd[i % len(crowd)], ""), guesses - 2 * per_phase, 2 * per_phase)

    evaluated = {k: v["evaluated"] for k, v in answers.items()}
    accepted = sum(v["ACCEPTED"] for v in answers.values())
    report(
        "9-brute-force",
        guesses=sum(sum(v.values()) for v in answers.values()),
        accepted=accepted,
        evaluated_card=evaluated["card"],
        evaluated_account=evaluated["account"],
        evaluated_crowd=evaluated["crowd"],
        evaluated_total=sum(evaluated.values()) + len(same),
        locked=sum(v[r] for v in answers.values() for r in v if r.endswith("LOCKED")),
        same_answer_frozen_bound_unknown=len(same),
    )
    assert accepted == 0
    assert evaluated["card"] + 1 <= 3  # the card's limit, whatever the accounts and devices
    assert evaluated["account"] + 1 <= 5
    # Everything came from one address: 20 guesses an hour looked up, all phases together.
    assert sum(evaluated.values()) + len(same) + 1 <= 20
    for c in (admin, probe, one, *people, *crowd):
        c.close()
