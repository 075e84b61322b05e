"""``cardmint token create|list|revoke``: bearer tokens, directly against the database.

Whoever can open the database may mint tokens (there is no one to ask yet on a fresh
install); the token is printed once and only its hash is stored. The same access lists
them (never a secret) and revokes one by id, audited as actor "cli".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cardmint.server.domain.auth import TokenInfo

ROLES = ("admin", "operator", "merchant", "customer")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` (argparse type)."""
    m = re.fullmatch(r"\s*(\d{1,12})\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 3600, 15m, 12h, 30d or 2w")
    return int(m.group(1)) * _UNITS[m.group(2)]


def add_expires_in(p: argparse.ArgumentParser, flag: str) -> None:
    """A token lifetime option (``flag``): seconds, as ``duration`` reads them; 0 = never."""
    p.add_argument(
        flag,
        type=duration,
        default=0,
        metavar="DURATION",
        help="the token stops working after this long: seconds, or 15m, 12h, 30d, 2w (default: never)",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import add_store_flags

    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="subcommand", required=True, metavar="TOKEN_ACTION")
    create = tsub.add_parser("create", help="mint a token and print it (shown once)")
    create.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    create.add_argument("--account", help="the account a customer token acts for (customer role only)")
    create.add_argument("--label", default="", help="a note stored with the token")
    add_expires_in(create, "--expires-in")
    add_store_flags(create)
    listing = tsub.add_parser(
        "list", help="every token, oldest first: id, role, account, label, state (no secrets)"
    )
    add_store_flags(listing)
    revoke = tsub.add_parser("revoke", help="revoke a token by id: it stops working at once")
    revoke.add_argument("id", type=int, help="the token's id (from token list)")
    add_store_flags(revoke)


def _line(t: TokenInfo, now: datetime) -> str:
    """One token: id, role, account, label, created, then its state."""
    if t.revoked_at is not None:
        state = f"revoked {t.revoked_at.isoformat()}"
    elif t.expires_at is None:
        state = "active, never expires"
    elif t.expires_at <= now:
        state = f"expired {t.expires_at.isoformat()}"
    else:
        state = f"active, expires {t.expires_at.isoformat()}"
    label = json.dumps(t.label, ensure_ascii=False)  # quoted: a label may hold spaces or tabs
    return f"{t.id}\t{t.role.value}\t{t.account or '-'}\t{label}\tcreated {t.created_at.isoformat()}\t{state}"


def run(args: argparse.Namespace) -> int:
    from cardmint.server.domain import DomainError
    from cardmint.server.domain.auth import LOCAL_ADMIN

    from . import UsageError
    from .serve import open_configured

    storage, domain = open_configured(args)
    try:
        if args.subcommand == "list":
            now, after = storage.now(), 0
            while page := domain.auth.list_tokens(LOCAL_ADMIN, after_id=after, limit=500):
                for t in page:
                    print(_line(t, now))
                after = page[-1].id
            return 0
        if args.subcommand == "revoke":
            if not domain.auth.revoke_token(LOCAL_ADMIN, args.id):
                print(f"cardmint: token {args.id}: no such token, or revoked already", file=sys.stderr)
                return 1
            print(f"revoked token {args.id}")
            return 0
        issued = domain.auth.create_token(
            args.role, label=args.label, account=args.account, expires_in=args.expires_in
        )
    except DomainError as e:
        raise UsageError(e.message) from None
    finally:
        storage.close()
    print(issued.token)
    if issued.expires_at is not None:  # stdout stays the token alone, for scripts
        print(f"expires {issued.expires_at.isoformat()}", file=sys.stderr)
    return 0
