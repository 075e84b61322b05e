"""Cards and money, by hand: ``card bind|get``, ``balance``, ``redeem``, ``reverse``, ``transfer``.

    cardmint card bind --code XXXX-XXXX-XXXX-XXXX [--account alice]
    cardmint card bulk-bind FILE.csv --out RESULTS.csv [--organization ORG] [--request-id ID]
    cardmint card get --serial S
    cardmint card history (--serial S | --account A) [--limit N]
    cardmint card view --serial S [--full]
    cardmint card freeze|unfreeze --serial S --reason WHY
    cardmint card report-loss --serial S --reason WHY [--account A] [--request-id ID]
    cardmint card review-loss --report ID (--approve | --reject) --note TEXT [--request-id ID]
    cardmint balance [--card SERIAL | --account A]
    cardmint redeem --card SERIAL --amount 25 [--request-id ID]
    cardmint reverse --transaction ID --amount 25 --currency CNY [--request-id ID]
    cardmint transfer --from SERIAL --to SERIAL --amount 25 [--currency CNY] [--request-id ID]

Amounts are in the currency's major unit. ``redeem``, ``reverse`` and ``transfer`` are idempotent by
request id: when none is given one is made up and printed (stderr) before the call, so an
interrupted or failed call can be repeated with ``--request-id`` without moving money twice.

``card bulk-bind`` hands an organization's cards out: each CSV row is ``card,recipient``
(the card's code or number; the recipient's account id or email address; a first row
starting with ``card``, ``code`` or ``serial`` is a header). RESULTS.csv gets a header and
then one line per input row: ``row,card,recipient,result,reason,serial,account`` with
result ``ok`` or ``error``. Rows go to the server in requests of at most 10,000, each
idempotent (request id ``ID:N``): run it again with the same ``--request-id`` and the rows
already done answer as before. Exit status 0 when every row is ok, 1 when some failed.
``report-loss`` and ``review-loss`` (docs/compliance.md, "Loss reports") are idempotent the
same way.

``card history`` prints a card's or an account's ledger, newest first, one entry a line
(time, transaction id, kind, signed amount, the card's balance after it, the card, and the
request id or the entry it answers). ``card view`` shows the holder the card's code, masked
(last 4) unless ``--full``: a full view is a step-up, audited and rate-limited, and a burst
of them freezes the card (docs/compliance.md). ``card freeze`` and ``card unfreeze`` are
staff's (admin, operator): the reason goes into the audit log and the ``card.frozen`` /
``card.unfrozen`` event; repeating either changes nothing.
"""

from __future__ import annotations

import argparse
import csv
from typing import TYPE_CHECKING

from . import _remote

if TYPE_CHECKING:
    from cardmint.client import Client
    from cardmint.v1 import balance_pb2, card_pb2, compliance_pb2

COMMANDS = ("card", "balance", "redeem", "reverse", "transfer")
_STATUS = {1: "active", 2: "frozen", 3: "void", 4: "expired"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    card = sub.add_parser("card", help="bind a card to an account, look one up (through the server)")
    csub = card.add_subparsers(dest="card_action", required=True, metavar="CARD_ACTION")
    bind = csub.add_parser("bind", help="bind the card with this code to an account")
    bind.add_argument("--code", required=True, help="the code, as printed (hyphens and case do not matter)")
    bind.add_argument("--account", default="", help="the account (staff tokens; a customer binds to its own)")
    _remote.add_common(bind)
    bulk = csub.add_parser("bulk-bind", help="bind an organization's cards to recipients from a CSV")
    bulk.add_argument(
        "file", metavar="FILE.csv", help="rows of card (code or number),recipient (account or email)"
    )
    bulk.add_argument("--out", required=True, metavar="RESULTS.csv", help="where to write one result per row")
    bulk.add_argument("--organization", default="", help="the organization (default: the token's own)")
    bulk.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    _remote.add_common(bulk)
    get = csub.add_parser("get", help="show a card")
    get.add_argument("--serial", required=True, help="the card's serial number")
    _remote.add_common(get)
    hist = csub.add_parser("history", help="a card's or an account's transactions, newest first")
    whose = hist.add_mutually_exclusive_group()
    whose.add_argument("--serial", help="the card's serial number")
    whose.add_argument("--account", help="the account (default: a customer token's own)")
    hist.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50; 0: all)")
    _remote.add_common(hist)
    view = csub.add_parser("view", help="show the holder a card's code: masked, or in full with --full")
    view.add_argument("--serial", required=True, help="the card's serial number")
    view.add_argument("--full", action="store_true", help="the whole code (a step-up: audited, rate-limited)")
    _remote.add_common(view)
    for action, what in (
        ("freeze", "staff: stop a card (no binding, no spending)"),
        ("unfreeze", "staff: let a frozen card be used again"),
    ):
        f = csub.add_parser(action, help=what)
        f.add_argument("--serial", required=True, help="the card's serial number")
        f.add_argument("--reason", required=True, help="why (recorded in the audit log and the event)")
        _remote.add_common(f)
    lost = csub.add_parser("report-loss", help="report a bound card lost: frozen now, reissued after review")
    lost.add_argument("--serial", required=True, help="the card's serial number")
    lost.add_argument("--reason", required=True, help="why (recorded in the report and the audit log)")
    lost.add_argument("--account", default="", help="staff: the holder's account (checked)")
    lost.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    _remote.add_common(lost)
    review = csub.add_parser("review-loss", help="staff: approve (reissue) or reject a loss report")
    review.add_argument("--report", type=int, required=True, help="the loss report's id")
    verdict = review.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_true", help="reissue the remaining balance on a new card")
    verdict.add_argument("--reject", action="store_true", help="keep the card frozen")
    review.add_argument("--note", required=True, help="what was checked (recorded in the audit log)")
    review.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    _remote.add_common(review)

    bal = sub.add_parser("balance", help="a card's or an account's balance")
    which = bal.add_mutually_exclusive_group()
    which.add_argument("--card", metavar="SERIAL", help="the card's serial number")
    which.add_argument("--account", help="the account (default: a customer token's own)")
    _remote.add_common(bal)

    red = sub.add_parser("redeem", help="spend from a card")
    red.add_argument("--card", required=True, metavar="SERIAL", help="the card's serial number")
    red.add_argument("--amount", required=True, help="how much, in the card's currency (major unit)")
    red.add_argument("--currency", help="the card's currency (default: looked up)")
    red.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    _remote.add_common(red)

    rev = sub.add_parser("reverse", help="give back (part of) a redemption")
    rev.add_argument("--transaction", type=int, required=True, help="the redemption's transaction id")
    rev.add_argument("--amount", required=True, help="how much to give back (major unit)")
    rev.add_argument("--currency", required=True, help="the card's currency")
    rev.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    _remote.add_common(rev)

    move = sub.add_parser(
        "transfer", help="move part of a card's balance onto another card of the same holder"
    )
    move.add_argument(
        "--from", dest="from_card", required=True, metavar="SERIAL", help="the card the money leaves"
    )
    move.add_argument(
        "--to", dest="to_card", required=True, metavar="SERIAL", help="the card the money goes to"
    )
    move.add_argument("--amount", required=True, help="how much, in the cards' currency (major unit)")
    move.add_argument("--currency", help="the cards' currency (default: the source card's)")
    move.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    _remote.add_common(move)


def describe(card: card_pb2.Card) -> str:
    bal, face = card.balance, card.face_value
    parts = [
        f"card {card.serial}",
        f"code {card.masked_code}",
        _STATUS.get(card.status, "unknown"),
        f"balance {_remote.fmt_money(bal.minor_units, bal.currency)}",
        f"face value {_remote.fmt_money(face.minor_units, face.currency)}",
    ]
    if card.HasField("expires_at"):
        parts.append("expires " + card.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC"))
    parts.append("bound" if card.bound else "not bound")
    return ", ".join(parts)


def _receipt(verb: str, r: balance_pb2.MoneyReceipt, request_id: str) -> str:
    amount, after = r.amount, r.balance_after
    replay = " (replayed: this request id was already done; nothing moved now)" if r.replayed else ""
    return (
        f"{verb} {_remote.fmt_money(amount.minor_units, amount.currency)} on card {r.serial}; "
        f"balance {_remote.fmt_money(after.minor_units, after.currency)}; "
        f"transaction {r.transaction_id}; request id {request_id}{replay}"
    )


def _transfer(r: balance_pb2.TransferReceipt, request_id: str) -> str:
    cur = r.amount.currency
    replay = " (replayed: this request id was already done; nothing moved now)" if r.replayed else ""
    return (
        f"moved {_remote.fmt_money(r.amount.minor_units, cur)} from card {r.from_serial} "
        f"(balance {_remote.fmt_money(r.from_balance_after.minor_units, cur)}) to card {r.to_serial} "
        f"(balance {_remote.fmt_money(r.to_balance_after.minor_units, cur)}); "
        f"transactions {r.out_transaction_id}, {r.in_transaction_id}; request id {request_id}{replay}"
    )


def transaction_line(t: balance_pb2.Transaction) -> str:
    """One ledger entry: ``2026-11-29 20:45:12 UTC  #12  redeem  -25.00 CNY  balance
    75.00 CNY  card 100000001  request spend-1``."""
    from cardmint.v1 import balance_pb2

    kind = balance_pb2.TransactionKind.Name(t.kind).removeprefix("TRANSACTION_KIND_").lower()
    cur = t.amount.currency
    parts = [_remote.fmt_utc(t.created_at), f"#{t.id}", kind, _remote.fmt_money(t.amount.minor_units, cur)]
    if t.HasField("balance_after_minor_units"):
        parts.append(f"balance {_remote.fmt_money(t.balance_after_minor_units, cur)}")
    if t.serial:
        parts.append(f"card {t.serial}")
    if t.request_id:
        parts.append(f"request {t.request_id}")
    if t.reverses_id:
        parts.append(f"answers #{t.reverses_id}")
    return "  ".join(parts)


def _history(c: Client, args: argparse.Namespace) -> None:
    page = _remote.page_size(args.limit)
    entries = c.transactions(serial=args.serial, account=args.account, page_size=page)
    _remote.print_lines(entries, transaction_line, args.limit, "no transactions")


def _loss(r: compliance_pb2.LossReport) -> str:
    status = {1: "pending", 2: "approved", 3: "rejected"}.get(r.status, "unknown")
    replay = " (replayed)" if r.replayed else ""
    line = f"loss report {r.id}: {status}{replay}; {describe(r.card)}"
    if r.HasField("new_card"):
        line += f"; reissued {_remote.fmt_money(r.amount.minor_units, r.amount.currency)} on {describe(r.new_card)}"
    return line


BULK_CHUNK = 10_000
_HEADER_WORDS = ("card", "code", "serial")


def _read_rows(path: str) -> list[list[str]]:
    """The CSV's rows (blank lines skipped, a header row dropped), cells stripped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [[cell.strip() for cell in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    if rows and rows[0] and rows[0][0].lower().startswith(_HEADER_WORDS):
        rows = rows[1:]
    return rows


def bulk_bind(c: Client, args: argparse.Namespace) -> int:
    from . import UsageError

    rows = _read_rows(args.file)
    organization = args.organization
    if not organization:
        facts = c.get_account()
        organization = facts.member.organization if facts.HasField("member") else ""
        if not organization:
            raise UsageError("--organization is required (this token is not an organization member's)")
    rid = _remote.request_id(args)
    # Rows without exactly two cells never reach the server; the rest go in chunks.
    results: list[tuple[bool, str, str, str]] = [(False, "expected 2 columns: card,recipient", "", "")] * len(
        rows
    )
    good = [i for i, r in enumerate(rows) if len(r) == 2]
    for n, start in enumerate(range(0, len(good), BULK_CHUNK)):
        part = good[start : start + BULK_CHUNK]
        answer = c.bulk_bind(organization, [(rows[i][0], rows[i][1]) for i in part], request_id=f"{rid}:{n}")
        for i, r in zip(part, answer, strict=True):
            results[i] = (r.ok, r.reason, r.serial, r.account)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["row", "card", "recipient", "result", "reason", "serial", "account"])
        for i, (row, (ok, reason, serial, account)) in enumerate(zip(rows, results, strict=True), 1):
            card = row[0] if row else ""
            recipient = row[1] if len(row) > 1 else ""
            out.writerow([i, card, recipient, "ok" if ok else "error", reason, serial, account])
    failed = sum(1 for r in results if not r[0])
    print(
        f"{len(rows)} rows: {len(rows) - failed} ok, {failed} failed; results in {args.out}; request id {rid}"
    )
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        if args.command == "card" and args.card_action == "bulk-bind":
            return bulk_bind(c, args)
        if args.command == "card" and args.card_action == "bind":
            resp = c.bind_card(args.code, account=args.account)
            note = (
                " (already bound here)"
                if resp.already_bound_here
                else " (transferred)"
                if resp.transferred
                else ""
            )
            print(f"bound{note}: {describe(resp.card)}")
        elif args.command == "card" and args.card_action == "report-loss":
            rid = _remote.request_id(args)
            print(_loss(c.report_loss(args.serial, args.reason, account=args.account, request_id=rid)))
        elif args.command == "card" and args.card_action == "history":
            _history(c, args)
        elif args.command == "card" and args.card_action == "view":
            v = c.view_secret(args.serial, step_up=args.full)
            print(
                f"card {v.serial}: {v.code}" + (" (masked; --full shows the whole code)" if v.masked else "")
            )
        elif args.command == "card" and args.card_action in ("freeze", "unfreeze"):
            act = c.freeze if args.card_action == "freeze" else c.unfreeze
            done = "frozen" if args.card_action == "freeze" else "unfrozen"
            print(f"{done}: {describe(act(args.serial, args.reason))}")
        elif args.command == "card" and args.card_action == "review-loss":
            rid = _remote.request_id(args)
            print(_loss(c.review_loss(args.report, approve=args.approve, note=args.note, request_id=rid)))
        elif args.command == "card":
            print(describe(c.get_card(args.serial)))
        elif args.command == "balance":
            bal = c.balance(serial=args.card, account=args.account)
            if not bal.balances:
                print("0")
            for m in bal.balances:
                print(_remote.fmt_money(m.minor_units, m.currency))
        elif args.command == "redeem":
            cur = (args.currency or c.get_card(args.card).balance.currency).upper()
            amount = _remote.to_minor(args.amount, cur, "--amount")
            rid = _remote.request_id(args)
            print(_receipt("redeemed", c.redeem(args.card, amount, cur, request_id=rid), rid))
        elif args.command == "transfer":
            cur = (args.currency or c.get_card(args.from_card).balance.currency).upper()
            amount = _remote.to_minor(args.amount, cur, "--amount")
            rid = _remote.request_id(args)
            print(_transfer(c.transfer(args.from_card, args.to_card, amount, cur, request_id=rid), rid))
        else:  # reverse
            amount = _remote.to_minor(args.amount, args.currency, "--amount")
            rid = _remote.request_id(args)
            print(_receipt("reversed", c.reverse(args.transaction, amount, request_id=rid), rid))
    return 0


def run(args: argparse.Namespace) -> int:
    return _remote.guarded(_run, args)
