"""Item 3 of issue 5: exactly once, on SQLite and PostgreSQL.

A test-only server interceptor (``Chaos``, outermost, so the handler and the server's own
interceptors run and commit first) loses 30% of the replies of the calls that change state
(UNAVAILABLE instead of the answer) and holds back 10% until the client's deadline has
passed. Clients retry every logical call (bind, redeem, transfer, reverse, create an order,
confirm its payment) with the same idempotency key until they hear an answer. Then: one
effect per logical call (ledger rows and audit events counted by request id, orders and
codes sold by buyer), and every answer the server produced for a call, the lost ones
included, is the same answer (bar the flag that says it is a replay), exactly one of them
the first.

The server is the suite's own (tests/reliability/conftest.py builds it with
``cardmint.server.app.start``); this module's ``server`` fixture starts it the same way
with the interceptor put in front of the server's own chain.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cardmint.client import CardmintError, Client
from cardmint.server import api, app
from cardmint.server.app import Running, start
from cardmint.v1 import balance_pb2
from google.protobuf.message import Message

from .conftest import Report, Sizes, together

T = TypeVar("T")
Token = Callable[..., str]

# The calls that change state, each retried with its idempotency key (bind: the code).
CHAOS_METHODS = frozenset(
    {
        "/cardmint.v1.CardService/BindCard",
        "/cardmint.v1.BalanceService/Redeem",
        "/cardmint.v1.BalanceService/Reverse",
        "/cardmint.v1.BalanceService/Transfer",
        "/cardmint.v1.OrderService/CreateOrder",
        "/cardmint.v1.OrderService/ConfirmPayment",
    }
)
# What a retry of a committed call answers differently by design: the replay flags.
REPLAY_FLAGS = ("replayed", "already_bound_here")
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
DROP, DELAY = 0.3, 0.1
TIMEOUT_S = 2.0  # the clients' deadline: a held-back reply arrives after it


class Chaos(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Lets the handler run (and commit), then loses the reply (DROP) or holds it past the
    caller's deadline (DELAY). Each fate is drawn from the seed, the method, the request's
    bytes and how many times that request came before, so a seed replays the same fates for
    the same calls. Every reply produced is kept, lost or not, to compare the answers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.active = False
        self.fates: Counter[str] = Counter()
        self.replies: dict[tuple[str, bytes], list[Message]] = defaultdict(list)
        self._seen: Counter[tuple[str, bytes]] = Counter()
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or handler.unary_unary is None or method not in CHAOS_METHODS:
            return handler
        inner = handler.unary_unary

        def behavior(request: Message, context: grpc.ServicerContext) -> Any:
            reply: Message = inner(request, context)  # a refusal raises here and goes out unchanged
            if not self.active:
                return reply
            key = (method, request.SerializeToString(deterministic=True))
            with self._lock:
                n = self._seen[key]
                self._seen[key] += 1
                self.replies[key].append(reply)
            digest = hashlib.sha256(key[1]).hexdigest()
            roll = random.Random(f"{self.seed}:{method}:{digest}:{n}").random()
            if roll < DROP:
                with self._lock:
                    self.fates["dropped"] += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "reply lost (test interceptor)")
            if roll < DROP + DELAY:
                with self._lock:
                    self.fates["delayed"] += 1
                remaining = context.time_remaining()
                time.sleep((remaining if remaining is not None else TIMEOUT_S) + 0.2)
                return reply
            with self._lock:
                self.fates["delivered"] += 1
            return reply

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.fixture
def chaos(seed: int) -> Chaos:
    return Chaos(seed)


@pytest.fixture
def server(
    storage_url: str, tmp_path: Path, chaos: Chaos, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Running]:
    own = api.interceptors
    monkeypatch.setattr(app, "interceptors", lambda *a, **kw: [chaos, *own(*a, **kw)])
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=48)
    try:
        yield running
    finally:
        running.stop(grace=0)


def _strip(reply: Message) -> bytes:
    """The reply without its replay flags, as bytes to compare."""
    copy = type(reply)()
    copy.CopyFrom(reply)
    for flag in REPLAY_FLAGS:
        if flag in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(flag)
    return copy.SerializeToString(deterministic=True)


def _first(reply: Message) -> bool:
    return not any(getattr(reply, f) for f in REPLAY_FLAGS if f in reply.DESCRIPTOR.fields_by_name)


def test_exactly_once(
    server: Running, chaos: Chaos, token: Token, sizes: Sizes, seed: int, report: Report
) -> None:
    addr = f"127.0.0.1:{server.port}"
    n = 32 if sizes.soak else 16
    face, shop_face = 10_000, 5_000
    admin_token = token("admin")
    admin = Client(addr, admin_token, timeout=30.0)
    admin.create_product(sku="EO", name="EO", currency="CNY", denominations=[face])
    cards = list(admin.stream_lot(admin.create_lot("EO", 2 * n, face).id))
    admin.create_product(sku="EO-SHOP", name="EO-SHOP", currency="CNY", denominations=[shop_face])
    admin.stock_pool(admin.create_lot("EO-SHOP", n, shop_face).id)
    channels = [grpc.insecure_channel(addr) for _ in range(4)]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=10)

    def client(bearer: str, w: int) -> Client:
        return Client(addr, bearer, timeout=TIMEOUT_S, retries=0, channel=channels[w % len(channels)])

    people = [client(token("customer", account=f"{seed}-eo{w}"), w) for w in range(n)]
    staff = [client(admin_token, w) for w in range(n)]
    gateways = [client(token("merchant"), w) for w in range(n)]
    attempts: Counter[str] = Counter()
    lock = threading.Lock()
    limit = time.monotonic() + sizes.limit_s

    def until_answered(what: str, call: Callable[[], T]) -> T:
        """The logical call, retried with the same key until it is answered."""
        for _ in range(200):
            with lock:
                attempts[what] += 1
            try:
                return call()
            except CardmintError as e:
                if e.code not in RETRY_CODES or time.monotonic() > limit:
                    raise
        raise AssertionError(f"{what}: no answer in 200 attempts")

    orders: list[int] = [0] * n

    def life(w: int) -> None:
        me, (a, code_a), (b, code_b) = people[w], cards[2 * w], cards[2 * w + 1]
        until_answered("bind", lambda: me.bind_card(code_a))
        until_answered("bind", lambda: me.bind_card(code_b))
        spent = until_answered("redeem", lambda: me.redeem(b, 6_000, "CNY", request_id=f"{seed}-r-{w}"))
        until_answered("redeem", lambda: me.redeem(a, 1_000, "CNY", request_id=f"{seed}-r2-{w}"))
        until_answered("transfer", lambda: me.transfer(a, b, 2_500, "CNY", request_id=f"{seed}-t-{w}"))
        until_answered(
            "reverse", lambda: staff[w].reverse(spent.transaction_id, 1_500, request_id=f"{seed}-v-{w}")
        )
        order = until_answered(
            "order", lambda: me.create_order([("EO-SHOP", shop_face, 1)], request_id=f"{seed}-o-{w}")
        )
        orders[w] = order.id
        until_answered(
            "payment", lambda: gateways[w].confirm_payment(order.id, f"{seed}-p-{w}", shop_face, "CNY")
        )

    chaos.active = True
    try:
        together(n, life, sizes.limit_s)
    finally:
        chaos.active = False
        for ch in channels:
            ch.close()

    # Every reply the server produced for a call (lost ones too) says the same; one is first.
    distinct = Counter(len({_strip(r) for r in replies}) for replies in chaos.replies.values())
    firsts = Counter(sum(_first(r) for r in replies) for replies in chaos.replies.values())

    # Effects, counted where they land.
    ledger: Counter[str] = Counter()
    for serial, _ in cards:
        for t in admin.transactions(serial=serial, page_size=500):
            bind = t.kind == balance_pb2.TRANSACTION_KIND_BIND
            ledger[f"bind:{serial}" if bind else t.request_id] += 1
    with server.storage.read() as tx:
        audit = [
            (e.action, json.loads(e.detail) if e.detail.startswith("{") else {}) for e in tx.audit_entries()
        ]
    transfers_audited = Counter(d.get("request_id") for action, d in audit if action == "balance.transfer")
    binds_audited = sum(1 for action, _ in audit if action == "card.bind")
    paid_audited = Counter(d.get("payment_id") for action, d in audit if action == "order.pay")
    balances = [admin.get_card(s).balance.minor_units for s, _ in cards]
    sold = admin.stock("EO-SHOP")
    logical = 8 * n
    report(
        "3-exactly-once",
        clients=n,
        logical_calls=logical,
        attempts=sum(attempts.values()),
        replies=sum(len(r) for r in chaos.replies.values()),
        dropped=chaos.fates["dropped"],
        delayed=chaos.fates["delayed"],
        calls_with_one_answer=distinct[1],
        calls_with_one_first=firsts[1],
        duplicate_effects=sum(1 for k, v in ledger.items() if v != (2 if "-t-" in k else 1)),
        orders=len(set(orders)),
        codes_sold=sold.stock[0].sold if sold.stock else 0,
    )
    assert sum(attempts.values()) > logical  # replies were lost, and retried
    assert (
        len(chaos.replies) == logical
        and distinct == Counter({1: logical})
        and firsts == Counter({1: logical})
    )
    for w in range(n):
        for key in (f"{seed}-r-{w}", f"{seed}-r2-{w}", f"{seed}-v-{w}"):
            assert ledger[key] == 1, key
        assert ledger[f"{seed}-t-{w}"] == 2 and transfers_audited[f"{seed}-t-{w}"] == 1
        assert paid_audited[f"{seed}-p-{w}"] == 1
        assert ledger[f"bind:{cards[2 * w][0]}"] == 1 and ledger[f"bind:{cards[2 * w + 1][0]}"] == 1
    assert binds_audited == 2 * n
    assert balances == [face - 1_000 - 2_500, face - 6_000 + 2_500 + 1_500] * n
    admin.close()
    [pool] = sold.stock
    assert len(set(orders)) == n and (pool.sold, pool.reserved) == (n, 0)
