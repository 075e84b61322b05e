"""`cardmint load`: an open-loop load generator against any cardmint server.

Open loop: call ``i`` of a phase is due at ``start + i / rate`` whatever happened to the
calls before it, and is sent then (or at once, if the generator itself is late); its latency
is measured from the time it was *due*, not from when it was sent. A closed loop (each
client waiting for its answer before the next call) slows down with the server and hides
the queueing a real crowd of callers would see ("coordinated omission"); this does not.

The workload is a weighted mix of what a card platform serves: balance reads (GetBalance of
a card), redemptions (Redeem of one unit, each with its own request id), binds (BindCard of
a fresh code onto a fresh account) and orders (CreateOrder of one pool code, then
ConfirmPayment; its latency runs to the payment's answer). The generator makes what it needs
first (a product, cards to redeem from, lots to bind, a stocked pool), outside the clock, so
the token must be an admin's. Every call carries a deadline (``--deadline``).

    cardmint load --rate 200 --duration 10            # one phase at 200 calls/s
    cardmint load --search                            # highest rate with p99 <= 50 ms
    cardmint load --rate 300 --mix balance=1,redeem=1 --json load.json

Figures per phase: calls offered and answered, the achieved rate (successful calls per
second), latency percentiles (p50/p95/p99/max, from the due time), errors by status code,
and how late the generator itself was (a generator that cannot keep up shows it there).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # grpc is imported when a load runs: the parser is built for every command
    import grpc

OPS = ("balance", "redeem", "bind", "order")
DEFAULT_MIX = "balance=4,redeem=3,bind=2,order=1"
CURRENCY = "CNY"
CARD_FACE = 10_000_000  # minor units on the redeem cards: one unit a call never runs them dry
ORDER_FACE = 500
REDEEM_CARDS = 64  # redemptions spread over this many cards (a hot single card is item 1's race)
SETTLE_S = 1.0  # after a phase's last call is due, wait this much beyond the deadline for answers


@dataclass(frozen=True)
class Mix:
    """Weights of the four operations (non-negative integers, at least one positive)."""

    balance: int = 4
    redeem: int = 3
    bind: int = 2
    order: int = 1

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``"balance=4,redeem=3,bind=2,order=1"``; operations left out weigh 0."""
        weights = dict.fromkeys(OPS, 0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in weights:
                raise ValueError(
                    f"--mix: expected NAME=WEIGHT with NAME one of {', '.join(OPS)}, got {part!r}"
                )
            try:
                weights[name] = int(value)
            except ValueError:
                raise ValueError(f"--mix: weight of {name} is not an integer: {value!r}") from None
            if weights[name] < 0:
                raise ValueError(f"--mix: weight of {name} is negative")
        if not any(weights.values()):
            raise ValueError("--mix: every weight is 0")
        return cls(**weights)

    def schedule(self, n: int, rng: random.Random) -> list[str]:
        """``n`` operation names drawn with these weights."""
        names = [op for op in OPS if getattr(self, op) > 0]
        return rng.choices(names, weights=[getattr(self, op) for op in names], k=n)


@dataclass
class Phase:
    """What one phase did. Latencies are from the due time, in ms; ``service_max_ms`` is
    the longest time from a call's sending to its answer (what its deadline bounds)."""

    label: str
    rate: float  # offered, calls per second
    seconds: float  # offered duration
    offered: int = 0
    answered: int = 0  # calls with an answer (success or error) before the phase ended
    ok: int = 0
    by_status: dict[str, int] = field(default_factory=dict)  # status code name -> calls (OK too)
    by_op: dict[str, dict[str, int]] = field(default_factory=dict)  # op -> status -> calls
    p99_by_op_ms: dict[str, float] = field(default_factory=dict)
    achieved_rate: float = 0.0  # successful calls per second of the phase
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    refused_p99_ms: float = 0.0  # latency of the RESOURCE_EXHAUSTED/UNAVAILABLE answers
    service_max_ms: float = 0.0
    over_deadline: int = 0  # answered later than deadline + margin after being sent
    send_lag_max_ms: float = 0.0  # how late the generator sent a call after its due time
    deadline_s: float = 0.0
    cancelled_ids: list[str] = field(default_factory=list)  # x-request-id of CANCELLED calls

    @property
    def errors(self) -> int:
        return self.answered - self.ok

    @property
    def unanswered(self) -> int:
        return self.offered - self.answered


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted ``values`` (0 when empty)."""
    if not values:
        return 0.0
    rank = max(1, min(len(values), int(-(-q * len(values) // 1))))
    return values[rank - 1]


# -- what the phases work on ------------------------------------------------------------------


class Workload:
    """The cards, codes and pool a run works on, made through the API with an admin token.

    ``reserve(binds, orders)`` makes sure that many fresh codes and pool codes are there
    before a phase (minted outside its clock); every operation then takes its own."""

    def __init__(self, addr: str, token: str, tag: str, channels: int = 4) -> None:
        import grpc
        from cardmint.client import Client
        from cardmint.v1 import balance_pb2_grpc, card_pb2_grpc, order_pb2_grpc

        self.addr, self.tag = addr, tag
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.admin = Client(addr, token, timeout=60.0, bulk_timeout=1800.0)
        self.channels = [grpc.insecure_channel(addr) for _ in range(max(1, channels))]
        self.balances = [balance_pb2_grpc.BalanceServiceStub(ch) for ch in self.channels]
        self.cards = [card_pb2_grpc.CardServiceStub(ch) for ch in self.channels]
        self.orders = [order_pb2_grpc.OrderServiceStub(ch) for ch in self.channels]
        self.card_sku = f"LOAD-{tag}"[:32]
        self.pool_sku = f"LOADP-{tag}"[:32]
        self.redeem_serials: list[str] = []
        self.bind_codes: list[tuple[str, str]] = []  # (serial, code) not yet used
        self.bind_used = 0
        self.pool_stocked = 0
        self.pool_used = 0
        self.counter = 0  # request ids, accounts: unique within the run
        self.lock = threading.Lock()
        # Every operation's final status, for the caller's checks: (op, key, status code
        # name) with key the redeem's "serial request-id", the bind's serial, and the
        # serials a paid order delivered (space-separated; the order id when unpaid).
        self.log: list[tuple[str, str, str]] = []
        # Calls in flight. grpc cancels a call whose future is garbage-collected before it
        # ends ("Cancelled upon garbage collection"): an open-loop generator must hold them.
        self.in_flight: set[grpc.Future[Any]] = set()
        # Request ids (x-request-id, one per call) of the calls that ended CANCELLED: the
        # generator never cancels, so the server's log tells whether it ever saw them.
        self.cancelled: list[str] = []

    def call_metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        """The token and ``request_id`` as the call's x-request-id (in the server's log)."""
        return (*self.metadata, ("x-request-id", request_id))

    def send(
        self, future: grpc.Future[Any], then: Callable[[grpc.Future[Any]], None], request_id: str = ""
    ) -> None:
        """Hold ``future`` until it ends, then run ``then`` with it (on grpc's thread)."""
        with self.lock:
            self.in_flight.add(future)

        def ended(f: grpc.Future[Any]) -> None:
            with self.lock:
                self.in_flight.discard(f)
                if request_id and _code(f) == "CANCELLED":
                    self.cancelled.append(request_id)
            then(f)

        future.add_done_callback(ended)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        self.admin.close()

    def setup(self) -> None:
        from cardmint.client import ProductExists

        c = self.admin
        with suppress(ProductExists):
            c.create_product(
                sku=self.card_sku, name="load card", currency=CURRENCY, amount_range=(100, CARD_FACE)
            )
        with suppress(ProductExists):
            c.create_product(
                sku=self.pool_sku, name="load shop card", currency=CURRENCY, denominations=[ORDER_FACE]
            )
        lot = c.create_lot(self.card_sku, REDEEM_CARDS, CARD_FACE)
        self.redeem_serials = [serial for serial, _code in c.stream_lot(lot.id)]
        import grpc

        for ch in self.channels:
            grpc.channel_ready_future(ch).result(timeout=30)

    def reserve(self, binds: int, orders: int) -> None:
        c = self.admin
        missing = binds - (len(self.bind_codes) - self.bind_used)
        if missing > 0:
            lot = c.create_lot(self.card_sku, missing, ORDER_FACE)
            self.bind_codes += list(c.stream_lot(lot.id))
        missing = orders - (self.pool_stocked - self.pool_used)
        if missing > 0:
            lot = c.create_lot(self.pool_sku, missing, ORDER_FACE)
            c.stock_pool(lot.id)
            self.pool_stocked += missing

    def next_id(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter


Done = Callable[[str], None]  # called once per operation with its final status code name


def _code(future: grpc.Future[Any]) -> str:
    import grpc

    err = future.exception()
    if err is None:
        return "OK"
    code = err.code() if isinstance(err, grpc.Call) else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _start(w: Workload, op: str, i: int, deadline: float, done: Done) -> None:
    """Send operation ``op`` (the ``i``-th of the run) without waiting; ``done(status)`` is
    called from grpc's thread once it has its final answer."""
    from cardmint.v1 import balance_pb2, card_pb2, common_pb2, order_pb2

    ch = i % len(w.channels)
    n = w.next_id()
    rid = f"{w.tag}-c{n}"
    md = w.call_metadata(rid)
    if op == "balance":
        serial = w.redeem_serials[i % len(w.redeem_serials)]
        f = w.balances[ch].GetBalance.future(
            balance_pb2.GetBalanceRequest(serial=serial), timeout=deadline, metadata=md
        )
        w.send(f, lambda f: done(_code(f)), rid)
    elif op == "redeem":
        serial = w.redeem_serials[i % len(w.redeem_serials)]
        req = balance_pb2.RedeemRequest(
            request_id=f"{w.tag}-r{n}",
            serial=serial,
            amount=common_pb2.Money(minor_units=1, currency=CURRENCY),
        )

        def redeemed(f: grpc.Future[Any], key: str = f"{serial} {req.request_id}") -> None:
            status = _code(f)
            w.log.append(("redeem", key, status))
            done(status)

        w.send(w.balances[ch].Redeem.future(req, timeout=deadline, metadata=md), redeemed, rid)
    elif op == "bind":
        with w.lock:
            serial, code = w.bind_codes[w.bind_used]
            w.bind_used += 1

        def bound(f: grpc.Future[Any], serial: str = serial) -> None:
            status = _code(f)
            w.log.append(("bind", serial, status))
            done(status)

        req_b = card_pb2.BindCardRequest(code=code, account=f"{w.tag}-a{n}")
        w.send(w.cards[ch].BindCard.future(req_b, timeout=deadline, metadata=md), bound, rid)
    else:
        with w.lock:
            w.pool_used += 1
        sent = time.monotonic()
        req_o = order_pb2.CreateOrderRequest(
            request_id=f"{w.tag}-o{n}",
            account=f"{w.tag}-b{n}",
            items=[order_pb2.OrderItem(sku=w.pool_sku, face_value_minor_units=ORDER_FACE, quantity=1)],
            client_address=f"load:{n}",
            payment_method=order_pb2.PAYMENT_METHOD_ONLINE,
        )

        def paid(f: grpc.Future[Any], order_id: int) -> None:
            status = _code(f)
            key = " ".join(code.serial for code in f.result().codes) if status == "OK" else str(order_id)
            w.log.append(("order", key, status))
            done(status)

        def created(f: grpc.Future[Any]) -> None:
            status = _code(f)
            if status != "OK":
                w.log.append(("order", "", status))
                done(status)
                return
            order = f.result()
            # The round trip shares one deadline: the payment gets what is left of it.
            left = deadline - (time.monotonic() - sent)
            if left <= 0:
                w.log.append(("order", str(order.id), "DEADLINE_EXCEEDED"))
                done("DEADLINE_EXCEEDED")
                return
            req_p = order_pb2.ConfirmPaymentRequest(
                order_id=order.id,
                payment_id=f"{w.tag}-p{n}",
                amount=common_pb2.Money(minor_units=ORDER_FACE, currency=CURRENCY),
                payment_method=order_pb2.PAYMENT_METHOD_ONLINE,
            )
            w.send(
                w.orders[ch].ConfirmPayment.future(req_p, timeout=left, metadata=w.call_metadata(f"{rid}p")),
                lambda f: paid(f, order.id),
                f"{rid}p",
            )

        w.send(w.orders[ch].CreateOrder.future(req_o, timeout=deadline, metadata=md), created, rid)


def run_phase(
    w: Workload,
    label: str,
    rate: float,
    seconds: float,
    mix: Mix,
    rng: random.Random,
    *,
    deadline: float = 2.0,
    margin: float = 0.5,
) -> Phase:
    """One open-loop phase: ``rate`` calls/s for ``seconds``, then up to ``deadline`` +
    SETTLE_S for the last answers."""
    n = max(1, round(rate * seconds))
    ops = mix.schedule(n, rng)
    w.reserve(ops.count("bind"), ops.count("order"))
    due = [0.0] * n
    sent = [0.0] * n
    answered = [0.0] * n  # 0: no answer yet
    status = [""] * n
    all_done = threading.Event()
    left = [n]
    count_lock = threading.Lock()

    def done_for(i: int) -> Done:
        def done(code: str) -> None:
            answered[i] = time.perf_counter()
            status[i] = code
            with count_lock:
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

        return done

    cancelled_from = len(w.cancelled)
    start = time.perf_counter() + 0.02
    for i, op in enumerate(ops):
        due[i] = start + i / rate
        wait = due[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[i] = time.perf_counter()
        try:
            _start(w, op, i, deadline, done_for(i))
        except Exception:  # a generator fault is not the server's: counted apart
            done_for(i)("CLIENT_ERROR")
    all_done.wait(timeout=deadline + SETTLE_S)
    phase = Phase(label, rate, seconds, offered=n, deadline_s=deadline)
    phase.cancelled_ids = w.cancelled[cancelled_from:]
    lat: list[float] = []
    refused: list[float] = []
    service: list[float] = []
    by_status: Counter[str] = Counter()
    by_op: dict[str, Counter[str]] = {}
    op_lat: dict[str, list[float]] = {}
    for i in range(n):
        if not answered[i]:
            continue
        ms = (answered[i] - due[i]) * 1e3
        lat.append(ms)
        service.append((answered[i] - sent[i]) * 1e3)
        by_status[status[i]] += 1
        by_op.setdefault(ops[i], Counter())[status[i]] += 1
        op_lat.setdefault(ops[i], []).append(ms)
        if status[i] in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"):
            refused.append(ms)
    lat.sort()
    refused.sort()
    phase.answered = len(lat)
    phase.ok = by_status.get("OK", 0)
    phase.by_status = dict(sorted(by_status.items()))
    phase.by_op = {op: dict(sorted(c.items())) for op, c in sorted(by_op.items())}
    phase.p99_by_op_ms = {op: round(percentile(sorted(v), 0.99), 3) for op, v in sorted(op_lat.items())}
    last = max((a for a in answered if a), default=start)
    phase.achieved_rate = phase.ok / max(last - start, 1e-9)
    phase.p50_ms, phase.p95_ms, phase.p99_ms = (percentile(lat, q) for q in (0.5, 0.95, 0.99))
    phase.max_ms = lat[-1] if lat else 0.0
    phase.refused_p99_ms = percentile(refused, 0.99)
    phase.service_max_ms = max(service, default=0.0)
    phase.over_deadline = sum(s > (deadline + margin) * 1e3 for s in service)
    phase.send_lag_max_ms = max((s - d) * 1e3 for s, d in zip(sent, due, strict=True))
    return phase


# -- search -----------------------------------------------------------------------------------


def passes(p: Phase, p99_ms: float) -> bool:
    """A rate the server holds: every call answered, all successfully, p99 within target."""
    return p.unanswered == 0 and p.errors == 0 and p.p99_ms <= p99_ms


def search(
    w: Workload,
    mix: Mix,
    rng: random.Random,
    *,
    start_rate: float = 50.0,
    step_seconds: float = 3.0,
    p99_ms: float = 50.0,
    max_steps: int = 8,
    budget_s: float = 120.0,
    deadline: float = 2.0,
    max_rate: float = 100_000.0,
    rest_s: float = 0.5,
    on_phase: Callable[[Phase], None] | None = None,
) -> tuple[float, list[Phase]]:
    """The highest arrival rate whose phase passes (p99 <= ``p99_ms``, no errors): doubles
    from ``start_rate`` until a phase fails, then bisects between the last pass and the
    first failure; at most ``max_steps`` phases and about ``budget_s`` seconds. 0 when even
    ``start_rate`` fails. A rate that fails is tried once more before it counts as failed
    (a pause of another process on a shared machine is not the server's limit)."""
    phases: list[Phase] = []
    good, bad = 0.0, 0.0
    rate = start_rate
    retried: set[float] = set()
    started = time.monotonic()
    for step in range(max_steps):
        if time.monotonic() - started + step_seconds + deadline > budget_s:
            break
        p = run_phase(w, f"search {step + 1}", rate, step_seconds, mix, rng, deadline=deadline)
        phases.append(p)
        if on_phase is not None:
            on_phase(p)
        if passes(p, p99_ms):
            good = rate
        elif rate not in retried:
            retried.add(rate)
            time.sleep(rest_s)
            continue  # the same rate again
        else:
            bad = rate
        if bad == 0.0:
            if rate >= max_rate:
                break
            rate = min(max_rate, rate * 2)
        elif good == 0.0:
            rate = rate / 2  # even the start failed: look lower
            if rate < 1:
                break
        else:
            if bad - good <= max(1.0, 0.1 * good):
                break
            rate = round((good + bad) / 2, 1)
        time.sleep(rest_s)  # the last phase's stragglers are answered before the next one
    return good, phases


# -- the command ------------------------------------------------------------------------------


def table(phases: Sequence[Phase]) -> str:
    head = (
        f"{'phase':<14} {'offered/s':>9} {'calls':>7} {'ok/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'late ms':>8}  errors"
    )
    lines = [head, "-" * len(head)]
    for p in phases:
        errors = ", ".join(f"{k} {v}" for k, v in p.by_status.items() if k != "OK") or "none"
        if p.unanswered:
            errors += f", no answer {p.unanswered}"
        lines.append(
            f"{p.label:<14} {p.rate:>9.1f} {p.offered:>7} {p.achieved_rate:>8.1f} {p.p50_ms:>8.1f} "
            f"{p.p95_ms:>8.1f} {p.p99_ms:>8.1f} {p.max_ms:>8.1f} {p.send_lag_max_ms:>8.1f}  {errors}"
        )
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._remote import add_common

    p = sub.add_parser(
        "load",
        help="open-loop load against a server: rate, latency percentiles, errors (admin token)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    add_common(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--rate", type=float, default=100.0, help="calls per second to offer (default 100)")
    what.add_argument(
        "--search", action="store_true", help="find the highest rate with p99 within --p99-ms and no errors"
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the phase (default 10)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"operation weights (default {DEFAULT_MIX})")
    p.add_argument("--deadline", type=float, default=2.0, help="deadline of every call, seconds (default 2)")
    p.add_argument("--channels", type=int, default=4, help="connections the calls share (default 4)")
    p.add_argument("--p99-ms", type=float, default=50.0, help="--search: the p99 target (default 50)")
    p.add_argument("--start-rate", type=float, default=50.0, help="--search: first rate tried (default 50)")
    p.add_argument("--step-seconds", type=float, default=3.0, help="--search: seconds per step (default 3)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=8,
        help="--search: at most this many steps (default 8; a failed rate is tried twice)",
    )
    p.add_argument("--seed", type=int, help="seed of the operation mix (default: random, printed)")
    p.add_argument("--json", metavar="FILE", help="also write every phase as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    from . import UsageError

    try:
        mix = Mix.parse(args.mix)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for name in ("duration", "deadline", "step_seconds", "start_rate"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if not args.search and args.rate <= 0:
        raise UsageError("--rate must be positive")
    if args.channels < 1 or args.max_steps < 1:
        raise UsageError("--channels and --max-steps must be at least 1")
    if not args.token:
        raise UsageError(
            "no token: give --token or set CARDMINT_TOKEN (an admin's: the load makes its cards)"
        )
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    tag = f"{os.getpid()}-{time.time_ns() % 10**10}"
    with workload(args.server, args.token, tag, args.channels) as w:
        print(
            f"cardmint load: {args.server}, mix {args.mix}, deadline {args.deadline:g} s, seed {seed}",
            flush=True,
        )
        if args.search:
            best, phases = search(
                w,
                mix,
                rng,
                start_rate=args.start_rate,
                step_seconds=args.step_seconds,
                p99_ms=args.p99_ms,
                max_steps=args.max_steps,
                deadline=args.deadline,
            )
        else:
            phases = [run_phase(w, "load", args.rate, args.duration, mix, rng, deadline=args.deadline)]
            best = None
    print(table(phases))
    if best is not None:
        print(f"highest rate with p99 <= {args.p99_ms:g} ms and no errors: {best:g} calls/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"seed": seed, "mix": asdict(mix), "best_rate": best, "phases": [asdict(p) for p in phases]},
                f,
                indent=1,
            )
    sys.stdout.flush()
    return 0


@contextmanager
def workload(addr: str, token: str, tag: str, channels: int = 4) -> Iterator[Workload]:
    """A set-up ``Workload`` (product, redeem cards), closed at the end."""
    w = Workload(addr, token, tag, channels)
    try:
        w.setup()
        yield w
    finally:
        w.close()


__all__ = [
    "Mix",
    "Phase",
    "Workload",
    "add_parser",
    "passes",
    "percentile",
    "run",
    "run_phase",
    "search",
    "workload",
]
