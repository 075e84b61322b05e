"""``cardmint product create|list|retire|reinstate``: the catalog, through the server.

    cardmint product create --sku GC-100 --name "Gift card" --currency CNY --denominations 100,200,500
    cardmint product create --sku GC-ANY --name "Any amount" --currency CNY --min 1 --max 5000
    cardmint product list [--on-sale]
    cardmint product retire GC-100 --reason "discontinued"
    cardmint product reinstate GC-100

Amounts are in the currency's major unit (see _remote).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import _remote

if TYPE_CHECKING:
    from cardmint.v1 import catalog_pb2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    product = sub.add_parser("product", help="create, list and retire products (through the server)")
    psub = product.add_subparsers(dest="product_action", required=True, metavar="PRODUCT_ACTION")

    create = psub.add_parser("create", help="add a product to the catalog")
    create.add_argument("--sku", required=True, help="stock-keeping unit, e.g. GC-100")
    create.add_argument("--name", required=True, help="display name")
    create.add_argument("--currency", required=True, help="ISO 4217 code, e.g. CNY")
    values = create.add_mutually_exclusive_group(required=True)
    values.add_argument("--denominations", help="fixed face values, comma separated, e.g. 100,200,500")
    values.add_argument("--min", dest="min_amount", help="smallest face value of an open-amount product")
    create.add_argument("--max", dest="max_amount", help="largest face value (with --min)")
    create.add_argument("--validity-days", type=int, help="cards expire this many days after minting")
    create.add_argument(
        "--delivery", choices=("auto", "manual"), default="auto", help="manual: orders wait for review"
    )
    create.add_argument("--code-length", type=int, default=16, help="symbols per code (default 16)")
    _remote.add_common(create)

    lst = psub.add_parser("list", help="list the catalog")
    lst.add_argument("--on-sale", action="store_true", help="only the products on sale (not retired)")
    _remote.add_common(lst)

    retire = psub.add_parser(
        "retire", help="stop selling a product (no new orders, lots or stock; issued cards stay good)"
    )
    retire.add_argument("sku", help="the product's SKU")
    retire.add_argument("--reason", default="", help="why, for the audit trail (at most 200 characters)")
    _remote.add_common(retire)

    reinstate = psub.add_parser("reinstate", help="put a retired product back on sale")
    reinstate.add_argument("sku", help="the product's SKU")
    _remote.add_common(reinstate)


def describe(p: catalog_pb2.Product) -> str:
    cur = p.currency
    if p.denominations:
        values = "denominations " + ", ".join(_remote.fmt_amount(d, cur) for d in p.denominations)
    else:
        r = p.amount_range
        values = (
            f"amounts {_remote.fmt_amount(r.min_minor_units, cur)}"
            f"-{_remote.fmt_amount(r.max_minor_units, cur)}"
        )
    validity = f"valid {p.validity_days} days" if p.HasField("validity_days") else "no expiry"
    delivery = "manual" if p.delivery == 2 else "auto"  # catalog_pb2.DELIVERY_REVIEW
    state = f"retired {_remote.fmt_utc(p.retired_at)}" if p.HasField("retired_at") else "on sale"
    return f"{p.sku}\t{p.name}\t{cur}\t{values}\t{validity}\tdelivery {delivery}\t{state}"


def _create(args: argparse.Namespace) -> int:
    from . import UsageError

    cur = args.currency.upper()
    denominations: list[int] = []
    amount_range: tuple[int, int] | None = None
    if args.denominations is not None:
        parts = [x for x in args.denominations.split(",") if x.strip()]
        if not parts:
            raise UsageError("--denominations needs at least one value")
        denominations = [_remote.to_minor(x, cur, "denomination") for x in parts]
    else:
        if args.max_amount is None:
            raise UsageError("--min needs --max")
        amount_range = (
            _remote.to_minor(args.min_amount, cur, "--min"),
            _remote.to_minor(args.max_amount, cur, "--max"),
        )
    if args.max_amount is not None and args.min_amount is None:
        raise UsageError("--max needs --min (or use --denominations)")
    with _remote.connect(args) as c:
        p = c.create_product(
            sku=args.sku,
            name=args.name,
            currency=cur,
            denominations=denominations,
            amount_range=amount_range,
            validity_days=args.validity_days,
            review=args.delivery == "manual",
            code_length=args.code_length,
        )
    print(f"created product {describe(p)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        for p in c.list_products(on_sale_only=args.on_sale):
            print(describe(p))
    return 0


def _retire(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        p = c.retire_product(args.sku, reason=args.reason)
    print(f"product {describe(p)}")
    return 0


def _reinstate(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        p = c.reinstate_product(args.sku)
    print(f"product {describe(p)}")
    return 0


_ACTIONS = {"create": _create, "list": _list, "retire": _retire, "reinstate": _reinstate}


def run(args: argparse.Namespace) -> int:
    return _remote.guarded(_ACTIONS[args.product_action], args)
