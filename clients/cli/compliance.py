"""Staff's compliance work through a running server: ``compliance reports|blacklist``.

    cardmint compliance reports [--kind aml|alert] [--limit N]
    cardmint compliance blacklist FILE|- --source PARTNER [--length L]

``reports`` lists the AML records and alerts the compliance profile filed, oldest first:
id, time, kind, subject, amount, the profile (name@version) and the details.

``blacklist`` imports codes a partner reports stolen, one per line (blank lines skipped;
``-`` reads standard input): the server digests them (it never stores them) and freezes
every issued card among them. Codes go in requests of at most ``BLACKLIST_CHUNK``, each one
transaction; repeating an import changes nothing more, so an interrupted one is simply run
again. Exit status 0, with the counts summed over the requests.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from . import _remote

if TYPE_CHECKING:
    from cardmint.client import Client
    from cardmint.v1 import compliance_pb2

BLACKLIST_CHUNK = 50_000  # codes per ImportBlacklist request (~1 MB packed, under grpc's 4 MB)
_KINDS = ("aml", "alert")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    comp = sub.add_parser("compliance", help="AML reports and alerts, stolen-code blacklists (staff)")
    csub = comp.add_subparsers(dest="compliance_action", required=True, metavar="COMPLIANCE_ACTION")
    rep = csub.add_parser("reports", help="the AML records and alerts filed, oldest first")
    rep.add_argument("--kind", choices=_KINDS, help="only AML records or only alerts (default: both)")
    rep.add_argument("--limit", type=int, default=0, help="at most this many (default 0: all)")
    _remote.add_common(rep)
    bl = csub.add_parser("blacklist", help="import codes a partner reports stolen; freezes issued ones")
    bl.add_argument("file", metavar="FILE", help="one code per line ('-': standard input)")
    bl.add_argument("--source", required=True, help="who reported them (recorded with each entry)")
    bl.add_argument("--length", type=int, default=16, help="the codes' length in symbols (default 16)")
    _remote.add_common(bl)


def report_line(r: compliance_pb2.Report) -> str:
    parts = [f"#{r.id}", _remote.fmt_utc(r.at), r.kind, r.subject]
    if r.HasField("amount") and r.amount.currency:
        parts.append(_remote.fmt_money(r.amount.minor_units, r.amount.currency))
    parts += [r.profile, r.detail_json]
    return "  ".join(p for p in parts if p)


def _reports(c: Client, args: argparse.Namespace) -> int:
    reports = c.reports(args.kind or "", page_size=_remote.page_size(args.limit))
    _remote.print_lines(reports, report_line, args.limit, "no reports")
    return 0


def _read_codes(path: str) -> list[str]:
    from . import UsageError

    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip()]


def _blacklist(c: Client, args: argparse.Namespace) -> int:
    from . import UsageError

    codes = _read_codes(args.file)
    if not codes:
        raise UsageError(f"{args.file}: no codes")
    totals = dict.fromkeys(("received", "malformed", "added", "matched", "frozen"), 0)
    for start in range(0, len(codes), BLACKLIST_CHUNK):
        r = c.import_blacklist(args.source, codes=codes[start : start + BLACKLIST_CHUNK], length=args.length)
        for k in totals:
            totals[k] += getattr(r, k)
    print(
        f"{totals['received']} codes from {args.source}: {totals['malformed']} malformed, "
        f"{totals['added']} new on the blacklist, {totals['matched']} issued cards, "
        f"{totals['frozen']} frozen now"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        if args.compliance_action == "reports":
            return _reports(c, args)
        return _blacklist(c, args)


def run(args: argparse.Namespace) -> int:
    return _remote.guarded(_run, args)
