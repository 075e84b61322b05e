"""``cardmint audit verify``: walk the audit chain in the database and name the first
broken event (exit 1), or print the event count and head hash to record as an anchor."""

from __future__ import annotations

import argparse
import time


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import add_store_flags

    audit = sub.add_parser("audit", help="the audit chain")
    asub = audit.add_subparsers(dest="audit_action", required=True, metavar="AUDIT_ACTION")
    verify = asub.add_parser("verify", help="check every event's hash and link; name the first broken one")
    add_store_flags(verify)
    verify.add_argument(
        "--expect-events", type=int, help="an anchor: the chain had at least this many events"
    )
    verify.add_argument("--expect-head", help="an anchor: the hex hash of event --expect-events")


def run(args: argparse.Namespace) -> int:
    from cardmint.server.config import ConfigError, load_config
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
    try:  # the database cardmint serve uses with the same configuration
        cfg = load_config(args.config, flags={"db": args.db, "var": args.var})
    except ConfigError as e:
        raise UsageError(str(e)) from None
    storage = open_storage(cfg.db_url, **cfg.storage_options())
    try:
        started = time.perf_counter()
        verdict = verify_storage(storage, expect_events=args.expect_events, expect_head=head)
        secs = time.perf_counter() - started
    finally:
        storage.close()
    print(f"{verdict.line()} [{verdict.events / secs if secs > 0 else 0:,.0f} events/s]")
    return 0 if verdict.ok else 1
