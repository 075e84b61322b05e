"""``cardmint token create``: mint a bearer token directly against the database.

Whoever can open the database may mint tokens (there is no one to ask yet on a fresh
install); the token is printed once and only its hash is stored.
"""

from __future__ import annotations

import argparse

ROLES = ("admin", "operator", "merchant", "customer")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import add_store_flags

    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="token_action", required=True, metavar="TOKEN_ACTION")
    create = tsub.add_parser("create", help="mint a token and print it (shown once)")
    create.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    create.add_argument("--account", help="the account a customer token acts for (customer role only)")
    create.add_argument("--label", default="", help="a note stored with the token")
    add_store_flags(create)


def run(args: argparse.Namespace) -> int:
    from cardmint.server.domain import DomainError

    from . import UsageError
    from .serve import open_configured

    storage, domain = open_configured(args)
    try:
        issued = domain.auth.create_token(args.role, label=args.label, account=args.account)
    except DomainError as e:
        raise UsageError(e.message) from None
    finally:
        storage.close()
    print(issued.token)
    return 0
