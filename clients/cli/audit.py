"""``cardmint audit verify``: walk the audit chain in the database and name the first
broken event (exit 1), or print the event count and head hash to record as an anchor."""

from __future__ import annotations

import argparse
import time


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the audit chain")
    asub = audit.add_subparsers(dest="audit_action", required=True, metavar="AUDIT_ACTION")
    verify = asub.add_parser("verify", help="check every event's hash and link; name the first broken one")
    verify.add_argument("--db", help="database URL (default: ./var/cardmint.db, as cardmint serve)")
    verify.add_argument("--var", default="var", help="directory of the SQLite file (default ./var)")
    verify.add_argument(
        "--expect-events", type=int, help="an anchor: the chain had at least this many events"
    )
    verify.add_argument("--expect-head", help="an anchor: the hex hash of event --expect-events")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cardmint.server.app import default_db_url
    from cardmint.server.domain.audit import verify_storage
    from cardmint.server.storage import open_storage

    from . import UsageError

    head = None
    if args.expect_head is not None:
        try:
            head = bytes.fromhex(args.expect_head)
        except ValueError:
            raise UsageError("--expect-head: a hex hash") from None
        if len(head) != 32 or args.expect_events is None:
            raise UsageError("--expect-head: a 64-hex-digit hash, with --expect-events")
    storage = open_storage(args.db or default_db_url(Path(args.var)))
    try:
        started = time.perf_counter()
        verdict = verify_storage(storage, expect_events=args.expect_events, expect_head=head)
        secs = time.perf_counter() - started
    finally:
        storage.close()
    print(f"{verdict.line()} [{verdict.events / secs if secs > 0 else 0:,.0f} events/s]")
    return 0 if verdict.ok else 1
