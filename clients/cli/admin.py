"""``cardmint token create``: mint a bearer token directly against the database.

Whoever can open the database may mint tokens (there is no one to ask yet on a fresh
install); the token is printed once and only its hash is stored.
"""

from __future__ import annotations

import argparse
import re
import sys

ROLES = ("admin", "operator", "merchant", "customer")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` (argparse type)."""
    m = re.fullmatch(r"\s*(\d{1,12})\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 3600, 15m, 12h, 30d or 2w")
    return int(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import add_store_flags

    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="token_action", required=True, metavar="TOKEN_ACTION")
    create = tsub.add_parser("create", help="mint a token and print it (shown once)")
    create.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    create.add_argument("--account", help="the account a customer token acts for (customer role only)")
    create.add_argument("--label", default="", help="a note stored with the token")
    create.add_argument(
        "--expires-in",
        type=duration,
        default=0,
        metavar="DURATION",
        help="the token stops working after this long: seconds, or 15m, 12h, 30d, 2w (default: never)",
    )
    add_store_flags(create)


def run(args: argparse.Namespace) -> int:
    from cardmint.server.domain import DomainError

    from . import UsageError
    from .serve import open_configured

    storage, domain = open_configured(args)
    try:
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
