"""Item 2 of issue 5: money is conserved, on SQLite and PostgreSQL.

* A Jepsen-style bank test over gRPC: 32 clients make random transfers, redemptions and
  reversals between one holder's cards while a reader keeps reading every card at one
  moment (BalanceService.Reconcile, one database snapshot). Every snapshot must add up:
  the cards hold what they were issued with minus what redemptions took net of reversals
  (from the ledger, at that same moment); no card is ever negative; each card's balance is
  its face value plus its ledger. At the end, the ledger (read through history) agrees with
  the balances and with what the clients were told.
* A hypothesis state machine driving the real domain against an in-memory model of the
  balances, the ledger and the idempotency keys, with the invariants checked after every
  step.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cardmint.client import (
    CardmintError,
    Client,
    InsufficientFunds,
    NotReversible,
    OverFaceValue,
)
from cardmint.server import domain as dom
from cardmint.server.app import Running
from cardmint.server.domain import Domain, IdempotencyKeyReused, MoneyReceipt, Principal, TransferReceipt
from cardmint.server.storage import Role
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, invariant, precondition, rule

from .conftest import Report, Sizes, together

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]

FACE = 10_000  # 100.00 CNY per card
CARDS = 8
REFUSALS = (InsufficientFunds, OverFaceValue, NotReversible)
Receipt = MoneyReceipt | TransferReceipt


def _bank(admin: Client, sku: str, holder: str, seed: int) -> list[str]:
    """CARDS cards of one holder, each redeemed down to half its face value (room to take
    transfers and reversals)."""
    admin.create_product(sku=sku, name=sku, currency="CNY", denominations=[FACE])
    lot = admin.create_lot(sku, CARDS, FACE)
    serials = []
    for serial, code in admin.stream_lot(lot.id):
        admin.bind_card(code, account=holder, challenge_passed=True)
        admin.redeem(serial, FACE // 2, "CNY", request_id=f"{seed}-setup-{serial}")
        serials.append(serial)
    return serials


def test_bank_money_is_conserved(
    clients: Clients, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    admin_token = token("admin")
    admin = clients(admin_token)[0]
    cards = _bank(admin, "BANK", f"{seed}-bank", seed)
    workers = clients(admin_token)[:32]
    reader = clients(admin_token)[0]
    ops_each = 400 if sizes.soak else 40
    outcomes: list[Counter[str]] = [Counter() for _ in workers]
    net_told = [0] * len(workers)  # redeemed minus reversed, as the answers said
    running = threading.Event()
    running.set()

    def work(w: int) -> None:
        rng = random.Random(f"{seed}-{w}")
        me = workers[w]
        redeemed: list[tuple[int, int]] = []  # (transaction id, what is left to reverse)
        deadline = time.monotonic() + sizes.limit_s / 2
        for i in range(ops_each):
            if time.monotonic() > deadline:
                break
            roll, rid = rng.random(), f"{seed}-{w}-{i}"
            try:
                if roll < 0.45:
                    src, dst = rng.sample(cards, 2)
                    me.transfer(src, dst, rng.randint(1, 1_500), "CNY", request_id=rid)
                    outcomes[w]["transfer"] += 1
                elif roll < 0.7 or not redeemed:
                    amount = rng.randint(1, 300)
                    got = me.redeem(rng.choice(cards), amount, "CNY", request_id=rid)
                    redeemed.append((got.transaction_id, amount))
                    net_told[w] += amount
                    outcomes[w]["redeem"] += 1
                else:
                    k = rng.randrange(len(redeemed))
                    tid, left = redeemed[k]
                    amount = left if rng.random() < 0.5 else rng.randint(1, left)
                    me.reverse(tid, amount, request_id=rid)
                    redeemed[k] = (tid, left - amount)
                    if left == amount:
                        redeemed.pop(k)
                    net_told[w] -= amount
                    outcomes[w]["reverse"] += 1
            except REFUSALS as e:
                outcomes[w][f"refused:{e.reason}"] += 1
            except CardmintError as e:
                outcomes[w][f"other:{e.reason}"] += 1

    snapshots: list[int] = [0]
    bad: list[str] = []

    def read() -> None:
        deadline = time.monotonic() + sizes.limit_s
        while running.is_set() and snapshots[0] < 20_000 and time.monotonic() < deadline:
            snap = reader.reconcile(cards).cards
            snapshots[0] += 1
            total = sum(c.balance.minor_units for c in snap)
            redeemed_net = sum(c.redeemed_net_minor_units for c in snap)
            if total != CARDS * FACE - redeemed_net:
                bad.append(f"total {total} != {CARDS * FACE} - {redeemed_net}")
            if any(c.balance.minor_units < 0 or not c.consistent for c in snap):
                bad.append(f"card off its ledger or negative: {snap}")

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    try:
        seconds = together(len(workers), work, sizes.limit_s)
    finally:
        running.clear()
        reading.join(timeout=sizes.limit_s)
    got = sum(outcomes, Counter())
    final = admin.reconcile(cards).cards
    history = {
        s: sum(t.amount.minor_units for t in admin.transactions(serial=s, page_size=500)) for s in cards
    }
    balances = [c.balance.minor_units for c in final]
    redeemed_net = sum(c.redeemed_net_minor_units for c in final)
    report(
        "2-bank",
        clients=len(workers),
        cards=CARDS,
        ops=sum(v for k, v in got.items()),
        transfers=got["transfer"],
        redeems=got["redeem"],
        reversals=got["reverse"],
        refused=sum(v for k, v in got.items() if k.startswith("refused")),
        other=sum(v for k, v in got.items() if k.startswith("other")),
        other_reasons=",".join(sorted({k[6:] for k in got if k.startswith("other")})) or "-",
        snapshots=snapshots[0],
        bad_snapshots=len(bad),
        total_issued=CARDS * FACE,
        redeemed_net=redeemed_net,
        total_after=sum(balances),
        lowest_balance=min(balances),
        ops_per_s=round(sum(got.values()) / seconds),
    )
    assert bad == [] and snapshots[0] > 0
    assert not any(k.startswith("other") for k in got)
    assert sum(balances) == CARDS * FACE - redeemed_net and min(balances) >= 0
    # The ledger, read through history, is each card's balance; the clients were told
    # exactly the net amount the ledger records as redeemed (the setup's halving aside).
    assert [FACE + history[s] for s in cards] == balances
    assert redeemed_net == CARDS * (FACE // 2) + sum(net_told)


# -- the state machine against a model ------------------------------------------------------


@dataclass
class Model:
    balance: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, int] = field(default_factory=dict)  # sum of the card's ledger amounts
    left: dict[int, int] = field(default_factory=dict)  # redemption id -> still reversible
    card_of: dict[int, str] = field(default_factory=dict)  # redemption id -> card
    # request id -> (send it again, with the amount raised by n; the first answer)
    answers: dict[str, tuple[Callable[[int], Receipt], Receipt]] = field(default_factory=dict)


class MoneyMachine(RuleBasedStateMachine):
    """Redeem, reverse, transfer and replays of any of them with the same or other
    parameters, against a model. After every step: every card's balance is the model's and
    its face value plus its ledger, never negative; the total is what was issued minus the
    net redeemed."""

    domain: Domain
    staff: Principal
    run = 0
    replays_total = 0
    ops_total = 0
    N = 4
    FACE = 1_000

    def __init__(self) -> None:
        super().__init__()
        MoneyMachine.run += 1
        sku = f"MODEL-{MoneyMachine.run}"
        d = self.domain
        d.catalog.create_product(self.staff, sku=sku, name=sku, currency="CNY", denominations=(self.FACE,))
        lot = d.lots.create_lot(self.staff, sku=sku, count=self.N, face_value=self.FACE)
        self.cards = [s for chunk in d.lots.stream_lot(self.staff, lot.id) for s in chunk.serials]
        self.m = Model(dict.fromkeys(self.cards, self.FACE), dict.fromkeys(self.cards, 0))
        self.n = 0

    def _rid(self) -> str:
        self.n += 1
        MoneyMachine.ops_total += 1
        return f"m{MoneyMachine.run}-{self.n}"

    def _redeem(self, card: str, amount: int, rid: str) -> None:
        b = self.domain.balances
        try:
            got = b.redeem(self.staff, serial=card, amount=amount, currency="CNY", request_id=rid)
        except dom.InsufficientFunds:
            assert self.m.balance[card] < amount
            return
        assert self.m.balance[card] >= amount and not got.replayed
        self.m.balance[card] -= amount
        self.m.ledger[card] -= amount
        self.m.left[got.entry_id], self.m.card_of[got.entry_id] = amount, card
        self.m.answers[rid] = (
            lambda bump: b.redeem(
                self.staff, serial=card, amount=amount + bump, currency="CNY", request_id=rid
            ),
            got,
        )
        assert got.balance_after == self.m.balance[card]

    @rule(card=st.integers(0, N - 1), amount=st.integers(1, 700))
    def redeem(self, card: int, amount: int) -> None:
        self._redeem(self.cards[card], amount, self._rid())

    @precondition(lambda self: self.m.left)
    @rule(pick=st.integers(0, 10**6), amount=st.integers(1, 700))
    def reverse(self, pick: int, amount: int) -> None:
        entry = sorted(self.m.left)[pick % len(self.m.left)]
        card, rid, b = self.m.card_of[entry], self._rid(), self.domain.balances
        try:
            got = b.reverse(self.staff, entry_id=entry, amount=amount, request_id=rid)
        except dom.NotReversible:
            assert amount > self.m.left[entry] or self.m.balance[card] + amount > self.FACE
            return
        assert amount <= self.m.left[entry] and self.m.balance[card] + amount <= self.FACE
        self.m.left[entry] -= amount
        self.m.balance[card] += amount
        self.m.ledger[card] += amount
        self.m.answers[rid] = (
            lambda bump: b.reverse(self.staff, entry_id=entry, amount=amount + bump, request_id=rid),
            got,
        )
        assert got.balance_after == self.m.balance[card]

    @rule(a=st.integers(0, N - 1), b=st.integers(0, N - 2), amount=st.integers(1, 700))
    def transfer(self, a: int, b: int, amount: int) -> None:
        src, dst, rid = self.cards[a], self.cards[b if b < a else b + 1], self._rid()
        bal = self.domain.balances
        try:
            got = bal.transfer(
                self.staff, from_serial=src, to_serial=dst, amount=amount, currency="CNY", request_id=rid
            )
        except dom.InsufficientFunds:
            assert self.m.balance[src] < amount
            return
        except dom.OverFaceValue:
            assert self.m.balance[src] >= amount and self.m.balance[dst] + amount > self.FACE
            return
        assert self.m.balance[src] >= amount and self.m.balance[dst] + amount <= self.FACE
        self.m.balance[src] -= amount
        self.m.balance[dst] += amount
        self.m.ledger[src] -= amount
        self.m.ledger[dst] += amount
        self.m.answers[rid] = (
            lambda bump: bal.transfer(
                self.staff,
                from_serial=src,
                to_serial=dst,
                amount=amount + bump,
                currency="CNY",
                request_id=rid,
            ),
            got,
        )
        assert (got.from_balance_after, got.to_balance_after) == (self.m.balance[src], self.m.balance[dst])

    @precondition(lambda self: self.m.answers)
    @rule(pick=st.integers(0, 10**6), other=st.booleans())
    def replay(self, pick: int, other: bool) -> None:
        """Send an answered request again: the same parameters answer the first receipt
        (replayed) and move nothing; other parameters are refused and move nothing."""
        rid = sorted(self.m.answers)[pick % len(self.m.answers)]
        send, first = self.m.answers[rid]
        try:
            again = send(1 if other else 0)
        except IdempotencyKeyReused:
            assert other
            return
        assert not other and again == replace(first, replayed=True)
        MoneyMachine.replays_total += 1

    @invariant()
    def balances_match_the_model_and_the_ledger(self) -> None:
        snap = self.domain.balances.reconcile(self.staff, self.cards)
        assert {c.serial: c.balance for c in snap.cards} == self.m.balance
        assert {c.serial: c.ledger_total for c in snap.cards} == self.m.ledger
        assert all(c.consistent and c.balance >= 0 for c in snap.cards)
        assert sum(c.balance for c in snap.cards) == self.N * self.FACE - sum(
            c.redeemed_net for c in snap.cards
        )


def test_money_state_machine(server: Running, sizes: Sizes, seed: int, report: Report) -> None:
    domain = server.domain
    issued = domain.auth.create_token(Role.ADMIN, label="model")
    MoneyMachine.domain = domain
    MoneyMachine.staff = domain.auth.authenticate(f"Bearer {issued.token}")
    MoneyMachine.run = MoneyMachine.replays_total = MoneyMachine.ops_total = 0
    examples, steps = (200, 50) if sizes.soak else (25, 30)
    machine = get_state_machine_test(
        MoneyMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,  # replays come from the seed, not from a local example database
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
    hypothesis_seed(seed)(machine)()
    report(
        "2-model",
        examples=MoneyMachine.run,
        max_steps=steps,
        operations=MoneyMachine.ops_total,
        replays=MoneyMachine.replays_total,
    )
