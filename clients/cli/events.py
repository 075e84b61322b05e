"""The event outbox through a running server: ``cardmint events`` (staff).

    cardmint events [--after ID] [--kind KIND]... [--follow [--for SECONDS]]

One JSON object a line, oldest first: ``{"id": 7, "at": "2026-11-29T20:45:12.250000Z", "kind":
"card.frozen", "subject": "card:100000001", "detail": {...}}`` (never a code). Without
``--follow``, the events up to the newest one when the command started, then it exits;
with it, new ones too as they commit, until interrupted (Ctrl-C or SIGTERM: exit 0) or
``--for`` seconds have passed. Either way the last id printed goes to stderr: a script that handles
the lines resumes with ``--after`` that id, losing and repeating nothing (event ids only
grow, in commit order).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from typing import TYPE_CHECKING

from . import _remote

if TYPE_CHECKING:
    from cardmint.client import Client
    from cardmint.v1 import event_pb2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("events", help="the event outbox as JSON lines: history, or follow it (staff)")
    ev.add_argument("--after", type=int, default=0, help="start after this event id (default 0: the first)")
    ev.add_argument(
        "--kind", action="append", default=[], help="only this kind, e.g. card.frozen (repeat for more)"
    )
    ev.add_argument("--follow", action="store_true", help="keep printing new events as they commit")
    ev.add_argument("--for", dest="seconds", type=float, help="with --follow: stop after this many seconds")
    _remote.add_common(ev)


def event_json(e: event_pb2.Event) -> str:
    at = e.at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    detail = json.loads(e.detail_json) if e.detail_json else {}
    return json.dumps(
        {"id": e.id, "at": at, "kind": e.kind, "subject": e.subject, "detail": detail}, sort_keys=True
    )


def _print_until(c: Client, args: argparse.Namespace, head: int) -> int:
    """The events after ``--after`` up to ``head``, filtered by the server; the last id
    printed."""
    last: int = args.after
    if head <= args.after:
        return last
    with contextlib.closing(c.subscribe_events(args.after, kinds=args.kind, until_id=head)) as stream:
        for e in stream:
            print(event_json(e), flush=True)
            last = e.id
    return last


class _Stop:
    """Ctrl-C or SIGTERM while following (a supervisor stopping a notifier): a clean stop
    that never separates an event's line from the id reported as the last one.

    While the stream waits for the next event, the signal interrupts the wait at once
    (an event received but not yet printed is simply read again on resume). From the
    moment one is taken until its line is out and its id recorded, the signal only asks
    for a stop, which comes right after."""

    def __init__(self) -> None:
        self.waiting = True
        self.asked = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.waiting:
            raise KeyboardInterrupt
        self.asked = True


def _follow(c: Client, args: argparse.Namespace) -> int:
    last: int = args.after
    stop = _Stop()
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        handled.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        with contextlib.closing(
            c.subscribe_events(args.after, kinds=args.kind, timeout=args.seconds)
        ) as stream:
            for e in stream:
                stop.waiting = False
                print(event_json(e), flush=True)
                last = e.id
                if stop.asked:
                    break
                stop.waiting = True
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return last


def _run(args: argparse.Namespace) -> int:
    from . import UsageError

    if args.after < 0:
        raise UsageError("--after must be 0 or an event id")
    if args.seconds is not None and (not args.follow or args.seconds <= 0):
        raise UsageError("--for needs --follow and a positive number of seconds")
    with _remote.connect(args) as c:
        head, known = c.event_feed()
        if unknown := sorted(set(args.kind) - set(known)):
            raise UsageError(f"unknown event kind {', '.join(unknown)}; the kinds: {', '.join(known)}")
        last = _follow(c, args) if args.follow else _print_until(c, args, head)
    print(f"cardmint: last event id {last} (to resume: --after {last})", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return _remote.guarded(_run, args)
