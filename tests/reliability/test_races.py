"""Races on money, over gRPC, on SQLite and PostgreSQL (issue 5, items 1, 4 and 14).

Clients are released together by a barrier; every figure asserted is a count or a sum."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from cardmint.client import (
    CardAlreadyBound,
    CardFrozen,
    CardmintError,
    CardNotFound,
    ChallengeRequired,
    Client,
    DailyLimitReached,
    IdempotencyKeyReused,
    InsufficientFunds,
    OverFaceValue,
)
from cardmint.server.app import Running

from .conftest import Report, Sizes, together

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]


def _lot(admin: Client, sku: str, face: int, count: int, *, ranged: bool = False) -> list[tuple[str, str]]:
    if ranged:
        admin.create_product(sku=sku, name=sku, currency="CNY", amount_range=(100, 10_000_000))
    else:
        admin.create_product(sku=sku, name=sku, currency="CNY", denominations=[face])
    lot = admin.create_lot(sku, count, face)
    return list(admin.stream_lot(lot.id))


def _spent(admin: Client, serial: str) -> tuple[int, int, int]:
    """(sum of the card's ledger amounts, entries, lowest balance_after seen) from its history."""
    total, entries, lowest = 0, 0, 2**63
    for t in admin.transactions(serial=serial, page_size=500):
        total += t.amount.minor_units
        entries += 1
        if t.HasField("balance_after_minor_units"):
            lowest = min(lowest, t.balance_after_minor_units)
    return total, entries, lowest


def test_redeem_race(clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report) -> None:
    """Item 1: one card holding B, every client redeeming 1 at once: exactly B succeed."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    balance = sizes.race_balance
    [(serial, _)] = _lot(admin, "RACE", balance, 1)
    pool = clients(admin_token)
    outcomes: list[Counter[str]] = [Counter() for _ in pool]
    per = sizes.race_attempts // len(pool)

    def attack(w: int) -> None:
        for i in range(per):
            try:
                pool[w].redeem(serial, 1, "CNY", request_id=f"{seed}-{w}-{i}")
                outcomes[w]["ok"] += 1
            except InsufficientFunds:
                outcomes[w]["refused"] += 1
            except CardmintError as e:
                outcomes[w][f"other:{e.reason}"] += 1

    seconds = together(len(pool), attack, sizes.limit_s)
    got = sum(outcomes, Counter())
    after = admin.balance(serial=serial).balances[0].minor_units
    ledger, entries, lowest = _spent(admin, serial)
    report(
        "1-redeem-race",
        attempts=per * len(pool),
        balance=balance,
        succeeded=got["ok"],
        refused=got["refused"],
        other=sum(v for k, v in got.items() if k.startswith("other")),
        balance_after=after,
        ledger_sum=ledger,
        lowest_balance_after=lowest,
        calls_per_s=round(per * len(pool) / seconds),
    )
    assert got["ok"] == balance and got["refused"] == per * len(pool) - balance
    assert after == 0 and ledger == -balance and entries == balance and lowest == 0


def test_bind_then_spend_race(
    clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 1: every client, each its own customer, binds the same card and spends from it
    at once: one bind wins, and only its owner spends, never past the balance."""
    admin = clients(token("admin"))[0]
    balance = 200
    [(serial, code)] = _lot(admin, "BIND-RACE", balance, 1)
    n = sizes.clients
    people = [clients(token("customer", account=f"{seed}-p{w}"))[w] for w in range(n)]
    bound = [False] * n
    spent = [0] * n
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def race(w: int) -> None:
        me = people[w]
        try:
            me.bind_card(code, challenge_passed=True)
            bound[w] = True
        except (CardAlreadyBound, ChallengeRequired, CardNotFound) as e:
            with lock:
                errors[e.reason] += 1
        for i in range(balance):  # everyone tries: only the owner can see the card
            try:
                me.redeem(serial, 1, "CNY", request_id=f"{seed}-{w}-{i}")
                spent[w] += 1
            except (CardNotFound, InsufficientFunds) as e:
                with lock:
                    errors[e.reason] += 1
                if isinstance(e, InsufficientFunds) or not bound[w]:
                    return

    together(n, race, sizes.limit_s)
    winners = [w for w in range(n) if bound[w]]
    ledger, _, lowest = _spent(admin, serial)
    report(
        "1-bind-then-spend",
        clients=n,
        binds_won=len(winners),
        spent_by_winner=sum(spent[w] for w in winners),
        spent_by_others=sum(spent[w] for w in range(n) if not bound[w]),
        balance=balance,
        ledger_sum=ledger,
        refusals=dict(errors),
    )
    assert len(winners) == 1
    assert spent[winners[0]] == balance and sum(spent) == balance
    assert ledger == -balance and lowest == 0


def _deadlocks(server: Running) -> int:
    """Deadlocks PostgreSQL detected in this test's database so far (0 on SQLite, which has
    one writer). The server retries a transaction that lost one, so none would show as an
    error: this counter is where a lock-order bug shows."""
    if server.storage.backend != "postgres":
        return 0
    with server.storage.read() as tx:
        tx._execute("SELECT pg_stat_clear_snapshot()")  # type: ignore[attr-defined]
        row = tx._one(  # type: ignore[attr-defined]
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
    return int(row[0])


def test_card_to_card_race(
    server: Running, clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 1, card-to-card moves (the Starbucks 2015 race). A ring of 4 cards of one holder,
    each holding half its face value; every client moves 1 between two neighbours, half of
    them one way round and half the other, all released together: opposite transfers
    between the same two cards lock the pair in opposite orders unless the server fixes
    the order. The attempts are sized so that none can be refused (a card gives at most
    what it holds and takes at most its room), so every one must succeed: exactly
    ``attempts``, and each card ends as it began. Then the double spend itself: on each
    card, 16 clients at once move its whole balance onto an empty card of the same holder;
    exactly one per card succeeds, the rest are a clean insufficient-balance refusal."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    ring_size, per_edge_clients = 4, sizes.clients // 8
    per = sizes.transfer_attempts // sizes.clients
    half = max(per * per_edge_clients * 2, 1)  # the most a card can give (and take) in phase one
    face = 2 * half
    holder = f"{seed}-ring"
    ring = _lot(admin, "RING", face, ring_size)
    empty = _lot(admin, "RING-EMPTY", face, ring_size)
    for i, (serial, code) in enumerate(ring):
        admin.bind_card(code, account=holder, challenge_passed=True)
        admin.redeem(serial, half, "CNY", request_id=f"{seed}-halve-{i}")
    for serial, code in empty:
        admin.bind_card(code, account=holder, challenge_passed=True)
        admin.redeem(serial, face, "CNY", request_id=f"{seed}-empty-{serial}")
    pool = clients(admin_token)
    rng = random.Random(seed)
    edges = [(i, (i + 1) % ring_size) for i in range(ring_size)]
    edges += [(b, a) for a, b in edges]  # both directions round the ring
    order = list(range(len(pool)))
    rng.shuffle(order)  # which client drives which edge (replayed by the seed)
    outcomes: list[Counter[str]] = [Counter() for _ in pool]

    def move(w: int) -> None:
        src, dst = edges[order[w] % len(edges)]
        for i in range(per):
            try:
                pool[w].transfer(ring[src][0], ring[dst][0], 1, "CNY", request_id=f"{seed}-ring-{w}-{i}")
                outcomes[w]["ok"] += 1
            except (InsufficientFunds, OverFaceValue) as e:
                outcomes[w][e.reason] += 1
            except CardmintError as e:
                outcomes[w][f"other:{e.reason}"] += 1

    deadlocks_before = _deadlocks(server)
    seconds = together(len(pool), move, sizes.limit_s)
    got = sum(outcomes, Counter())
    after = [admin.balance(serial=s).balances[0].minor_units for s, _ in ring]

    # Phase two: the double spend, 16 clients per card moving its whole balance at once.
    spent: list[Counter[str]] = [Counter() for _ in pool]

    def drain(w: int) -> None:
        card = w % ring_size
        try:
            pool[w].transfer(ring[card][0], empty[card][0], half, "CNY", request_id=f"{seed}-drain-{w}")
            spent[w]["ok"] += 1
        except (InsufficientFunds, OverFaceValue) as e:
            spent[w][e.reason] += 1
        except CardmintError as e:
            spent[w][f"other:{e.reason}"] += 1

    together(len(pool), drain, sizes.limit_s)
    time.sleep(1.0)  # PostgreSQL publishes its statistics within a second
    deadlocks = _deadlocks(server) - deadlocks_before
    drained = sum(spent, Counter())
    final = [admin.balance(serial=s).balances[0].minor_units for s, _ in ring + empty]
    ledgers = [_spent(admin, s) for s, _ in ring + empty]
    report(
        "1-transfer-race",
        cards=ring_size,
        attempts=per * len(pool),
        succeeded=got["ok"],
        refused=got["INSUFFICIENT_FUNDS"] + got["OVER_FACE_VALUE"],
        other=sum(v for k, v in got.items() if k.startswith("other")),
        deadlocks=deadlocks,
        balances_after=",".join(map(str, after)),
        drain_clients=len(pool),
        drains_won=drained["ok"],
        drains_refused=drained["INSUFFICIENT_FUNDS"],
        drain_other=sum(v for k, v in drained.items() if k.startswith("other")),
        total_before=ring_size * half,
        total_after=sum(final),
        lowest_balance_after=min(low for _, _, low in ledgers),
        calls_per_s=round(per * len(pool) / seconds),
    )
    assert got == Counter({"ok": per * len(pool)}) and deadlocks == 0
    assert after == [half] * ring_size
    assert drained == Counter({"ok": ring_size, "INSUFFICIENT_FUNDS": len(pool) - ring_size})
    assert final == [0] * ring_size + [half] * ring_size
    # Every card's ledger sums to its balance (from its face value) and never went below 0.
    assert [face + total for total, _, _ in ledgers] == final
    assert min(low for _, _, low in ledgers) >= 0


def test_idempotency_misuse(clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report) -> None:
    """Item 4: a reused key with other parameters is refused and changes nothing; one key
    sent by 16 callers at once has one effect, and every one of them gets the same answer."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    [(serial, _)] = _lot(admin, "IDEM", 10_000, 1)
    rng = random.Random(seed)
    first = admin.redeem(serial, 5, "CNY", request_id=f"{seed}-k1")
    refused = 0
    for amount in rng.sample(range(1, 100), 10):
        if amount == 5:
            continue
        with pytest.raises(IdempotencyKeyReused):
            admin.redeem(serial, amount, "CNY", request_id=f"{seed}-k1")
        refused += 1
    replay = admin.redeem(serial, 5, "CNY", request_id=f"{seed}-k1")
    assert replay.transaction_id == first.transaction_id and replay.replayed
    assert admin.balance(serial=serial).balances[0].minor_units == 10_000 - 5

    callers = clients(admin_token)[:16]
    answers: list[int] = [0] * len(callers)
    replays = [False] * len(callers)

    def same_key(w: int) -> None:
        got = callers[w].redeem(serial, 7, "CNY", request_id=f"{seed}-k2")
        answers[w], replays[w] = got.transaction_id, got.replayed

    together(len(callers), same_key, sizes.limit_s)
    after = admin.balance(serial=serial).balances[0].minor_units
    with_key = [t for t in admin.transactions(serial=serial) if t.request_id == f"{seed}-k2"]
    report(
        "4-idempotency-misuse",
        misuses_refused=refused,
        concurrent_callers=len(callers),
        distinct_answers=len(set(answers)),
        effects=len(with_key),
        first_answers=replays.count(False),
        balance_after=after,
    )
    assert len(set(answers)) == 1 and len(with_key) == 1 and replays.count(False) == 1
    assert after == 10_000 - 5 - 7


def test_no_redeem_after_a_freeze_was_acknowledged(
    clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 14: clients redeem while staff freeze the card; any redemption that started after
    the freeze was acknowledged fails."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    [(serial, _)] = _lot(admin, "FREEZE-RACE", 1_000_000, 1)
    pool = clients(admin_token)
    acked = [float("inf")]
    late_ok: list[int] = [0] * len(pool)
    ok: list[int] = [0] * len(pool)
    frozen: list[int] = [0] * len(pool)
    deadline = time.monotonic() + min(30.0, sizes.limit_s)

    def spend(w: int) -> None:
        i = 0
        while time.monotonic() < deadline and i < 2_000:
            started = time.monotonic()
            try:
                pool[w].redeem(serial, 1, "CNY", request_id=f"{seed}-{w}-{i}")
                ok[w] += 1
                if started > acked[0]:
                    late_ok[w] += 1
            except CardFrozen:
                frozen[w] += 1
                if started > acked[0]:
                    return
            i += 1

    def freezer() -> None:
        time.sleep(0.3)
        admin.freeze(serial, "reported stolen")
        acked[0] = time.monotonic()

    t = threading.Thread(target=freezer)
    t.start()
    together(len(pool), spend, sizes.limit_s)
    t.join(timeout=30)
    ledger, _, _ = _spent(admin, serial)
    after = admin.balance(serial=serial).balances[0].minor_units
    report(
        "14-freeze-race",
        redeemed=sum(ok),
        redeemed_after_ack=sum(late_ok),
        refused_frozen=sum(frozen),
        ledger_sum=ledger,
        balance_after=after,
    )
    assert acked[0] != float("inf") and sum(late_ok) == 0
    assert -ledger == sum(ok) and after == 1_000_000 - sum(ok)


def test_daily_limit_is_never_overrun(
    clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 14: concurrent spends from one account's cards stop exactly at its daily limit
    (the platform profile: 50,000 CNY a day), never past it."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    cards = _lot(admin, "DAILY", 1_000_000, 10)  # 10 x 10,000.00 CNY: twice the limit
    account = f"{seed}-holder"
    for _, code in cards:
        admin.bind_card(code, account=account, challenge_passed=True)
    pool = clients(admin_token)
    step = 100_000  # 1,000.00 CNY: 50 of them reach the limit exactly
    ok = [0] * len(pool)
    capped = [0] * len(pool)

    def spend(w: int) -> None:
        card = w % len(cards)
        for i in range(100):
            try:
                pool[w].redeem(cards[card][0], step, "CNY", request_id=f"{seed}-{w}-{i}")
                ok[w] += 1
            except InsufficientFunds:
                card = (card + 1) % len(cards)
            except DailyLimitReached:
                capped[w] += 1
                return

    together(len(pool), spend, sizes.limit_s)
    total = sum(ok) * step
    report(
        "14-daily-limit",
        limit=5_000_000,
        spent=total,
        redemptions=sum(ok),
        refused_at_limit=sum(capped),
    )
    assert total == 5_000_000 and sum(capped) == len(pool)


def test_every_aml_crossing_has_its_report(
    clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    """Item 14: concurrent movements above the AML threshold (50,000 CNY, platform) each file
    exactly one report; those at or below it file none."""
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    n = 16
    cards = _lot(admin, "AML", 10_000_000, 2 * n, ranged=True)
    pool = clients(admin_token)[: 2 * n]
    above, at = 5_000_001, 5_000_000

    def move(w: int) -> None:
        pool[w].redeem(cards[w][0], above if w < n else at, "CNY", request_id=f"{seed}-{w}")

    together(len(pool), move, sizes.limit_s)
    aml = [r for r in admin.reports("aml") if r.subject in {f"card:{s}" for s, _ in cards}]
    report("14-aml-reports", crossings=n, at_threshold=n, reports=len(aml))
    assert len(aml) == n and {r.subject for r in aml} == {f"card:{s}" for s, _ in cards[:n]}
