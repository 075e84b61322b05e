"""EventService over gRPC, on SQLite and PostgreSQL: lockouts reach notifiers once, a
notifier resumes from its cursor without losing or repeating an event, and subscriptions
end with the server."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Generator

import pytest
from cardmint.client import AccountLocked, BadCheck, CardLocked, Client, InvalidArgument, PermissionDenied
from cardmint.server.app import Running
from cardmint.v1 import event_pb2

from .test_services import _lot, _typo

Connect = Callable[..., Client]


def _lock_account(connect: Connect, account: str, code: str) -> None:
    customer = connect("customer", account=account)
    for _ in range(4):
        with pytest.raises(BadCheck):
            customer.bind_card(_typo(code), challenge_passed=True)
    with pytest.raises(AccountLocked):
        customer.bind_card(_typo(code), challenge_passed=True)
    with pytest.raises(AccountLocked):  # already locked: no second event
        customer.bind_card(_typo(code), challenge_passed=True)


def test_lockouts_reach_a_notifier_once_and_it_resumes_from_its_cursor(connect: Connect) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=4)
    assert admin.event_head() == 0
    _lock_account(connect, "alice", rows[0][1])
    # A card named by its serial locks after three wrong codes.
    bob = connect("customer", account="bob")
    for _ in range(2):
        with pytest.raises(BadCheck):
            bob.bind_card(_typo(rows[1][1]), serial=rows[1][0], challenge_passed=True)
    with pytest.raises(CardLocked):
        bob.bind_card(_typo(rows[1][1]), serial=rows[1][0], challenge_passed=True)

    events = list(admin.subscribe_events(0, timeout=1.0))
    assert [(e.id, e.kind, e.subject) for e in events] == [
        (1, "account.locked", "account:alice"),
        (2, "card.locked", f"card:{rows[1][0]}"),
    ]
    assert "until" in json.loads(events[0].detail_json)
    assert admin.event_head() == 2
    # A notifier that acknowledged event 1 and restarted gets exactly event 2, then more.
    _lock_account(connect, "carol", rows[2][1])
    resumed = list(admin.subscribe_events(1, timeout=1.0))
    assert [(e.id, e.subject) for e in resumed] == [(2, f"card:{rows[1][0]}"), (3, "account:carol")]
    only = list(admin.subscribe_events(0, kinds=["card.locked"], timeout=1.0))
    assert [e.id for e in only] == [2]


def test_a_live_subscriber_hears_a_commit_without_waiting_for_its_poll(
    connect: Connect, server: Running
) -> None:
    admin = connect("operator")
    _, rows = _lot(connect("admin"), n=2)
    got: list[event_pb2.Event] = []
    subscribed = threading.Event()

    def listen() -> None:
        subscribed.set()
        # Closed here, on this thread, when we stop early: an abandoned streaming call left
        # to the garbage collector is cancelled on whatever thread collects it, which can
        # deadlock inside grpc.
        subscribed_events = admin.subscribe_events(0, timeout=20.0)
        assert isinstance(subscribed_events, Generator)  # closable, as its docstring says
        with contextlib.closing(subscribed_events) as events:
            for e in events:
                got.append(e)
                return  # the first event is enough

    t = threading.Thread(target=listen)
    t.start()
    assert subscribed.wait(10)
    _lock_account(connect, "dave", rows[0][1])
    t.join(timeout=25)
    assert not t.is_alive() and [e.subject for e in got] == ["account:dave"]


def test_who_may_subscribe_and_what(connect: Connect) -> None:
    with pytest.raises(PermissionDenied):
        list(connect("customer", account="eve").subscribe_events(0, timeout=1.0))
    with pytest.raises(PermissionDenied):
        connect("merchant").event_head()
    with pytest.raises(InvalidArgument):
        list(connect("admin").subscribe_events(0, kinds=["no.such.kind"], timeout=1.0))


def test_a_catch_up_to_the_head_ends_by_itself_and_filters_on_the_server(connect: Connect) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=4)
    _lock_account(connect, "alice", rows[0][1])  # event 1: account.locked
    for serial, _code in rows[1:3]:  # events 2 and 3: card.frozen
        admin.freeze(serial, "stolen")
    head = admin.event_head()
    assert head == 3
    _lock_account(connect, "dan", rows[3][1])  # event 4, past the head asked for

    # No timeout: each stream must end by itself at its until_id.
    upto = list(admin.subscribe_events(0, until_id=head))
    assert [e.id for e in upto] == [1, 2, 3]
    frozen = list(admin.subscribe_events(0, kinds=["card.frozen"], until_id=head))
    assert [(e.id, e.kind) for e in frozen] == [(2, "card.frozen"), (3, "card.frozen")]
    # Nothing matching before the bound: the stream still ends (the cursor passed it).
    assert list(admin.subscribe_events(0, kinds=["order.delivered"], until_id=head)) == []
    assert list(admin.subscribe_events(head, until_id=head)) == []
    assert [e.id for e in admin.subscribe_events(2, until_id=4)] == [3, 4]
    with pytest.raises(InvalidArgument):
        list(admin.subscribe_events(0, until_id=-1))


def test_the_head_names_every_kind_a_subscription_accepts(connect: Connect) -> None:
    from cardmint.server.domain.events import EventKind

    admin = connect("admin")
    head, kinds = admin.event_feed()
    assert head == admin.event_head() and kinds == sorted(k.value for k in EventKind)
    # Each is accepted as a filter (a refused one fails the call at once).
    assert list(admin.subscribe_events(head, kinds=kinds, timeout=0.3)) == []
    with pytest.raises(PermissionDenied):
        connect("merchant").event_feed()


def test_server_shutdown_ends_subscriptions(connect: Connect, server: Running) -> None:
    admin = connect("admin")
    ended = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []

    def listen() -> None:
        started.set()
        try:
            for _ in admin.subscribe_events(0):  # no deadline: only shutdown ends it
                pass
        except Exception as e:  # the stream may end with UNAVAILABLE/CANCELLED instead
            errors.append(e)
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    assert started.wait(10)
    threading.Event().wait(0.5)  # let the call reach the server
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})
    stopper.start()
    # Had the subscription held the drain open, stop() would wait out the 60 s grace.
    stopper.join(timeout=20)
    assert not stopper.is_alive() and ended.wait(10)
