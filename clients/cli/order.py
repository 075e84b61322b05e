"""``cardmint order ...``: the card shop, through the server.

    cardmint order stock --product SHOP-50 -n 20 [--face-value 50]   # mint a lot into the pool
    cardmint order stock --lot ID                                    # or stock a lot never exported
    cardmint order pool --product SHOP-50                            # what the pool holds
    cardmint order create --product SHOP-50 [-n 2] [--face-value 50] [--account A] [--request-id ID] [-q]
    cardmint order pay --order ID --payment-id P --amount 100 [--currency CNY]
    cardmint order get --order ID [--reveal]
    cardmint order list [--account A] [--status delivered] [--limit 20]
    cardmint order cancel --order ID
    cardmint order review --order ID (--approve | --reject) [--reason R]
    cardmint order refund --order ID [--reason R]

A pool is stocked from lots whose codes were never written out: ``order stock`` mints one
straight into it (``lot create`` would export the codes, and an exported lot is refused).
``create`` reserves the codes for the order's deadline; ``-q`` prints only the order id
(for scripts). ``create`` is idempotent by request id and ``pay`` by payment id: when
``create`` gets none, one is made up and printed (stderr) before the call, so a failed call
can be repeated without a second order; a repeated ``pay`` answers the first outcome and
never delivers twice. ``get --reveal`` shows the delivered codes in full to the buyer (a
customer token of the order's account) only; everybody else sees them masked.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import _remote

if TYPE_CHECKING:
    from cardmint.client import Client
    from cardmint.v1 import order_pb2
    from google.protobuf.timestamp_pb2 import Timestamp

_STATUS = {1: "reserved", 2: "review", 3: "delivered", 4: "cancelled", 5: "expired", 6: "refunded"}
_CARD_STATUS = {1: "active", 2: "frozen", 3: "void", 4: "expired"}
ACTIONS = ("stock", "pool", "create", "pay", "get", "list", "cancel", "review", "refund")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    order = sub.add_parser(
        "order", help="the card shop: stock a pool, order, pay, refund (through the server)"
    )
    osub = order.add_subparsers(dest="order_action", required=True, metavar="ORDER_ACTION")

    stock = osub.add_parser("stock", help="put codes up for sale (staff)")
    which = stock.add_mutually_exclusive_group(required=True)
    which.add_argument("--product", metavar="SKU", help="mint a new lot of this product into the pool")
    which.add_argument("--lot", type=int, help="stock this lot (one whose codes were never exported)")
    stock.add_argument("-n", "--count", type=int, help="with --product: how many cards")
    stock.add_argument(
        "--face-value", help="with --product: each card's value (major unit); default: the only denomination"
    )
    _remote.add_common(stock)

    pool = osub.add_parser("pool", help="what a product's pool holds, by face value")
    pool.add_argument("--product", required=True, metavar="SKU", help="the product's SKU")
    _remote.add_common(pool)

    create = osub.add_parser("create", help="order codes: they are reserved until paid or expired")
    create.add_argument("--product", required=True, metavar="SKU", help="the product's SKU")
    create.add_argument("-n", "--count", type=int, default=1, help="how many codes (default 1)")
    create.add_argument(
        "--face-value", help="value of each code (major unit); default: the only denomination"
    )
    create.add_argument(
        "--account", default="", help="the buyer (staff and merchants; a customer buys for itself)"
    )
    create.add_argument(
        "--client-address", default="", help="the buyer's address (a storefront passing it on)"
    )
    create.add_argument(
        "--payment-method",
        choices=("online", "bank_transfer"),
        default="online",
        help="how the buyer will pay (profiles require bank_transfer from a threshold on)",
    )
    create.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    create.add_argument("-q", "--quiet", action="store_true", help="print only the order id")
    _remote.add_common(create)

    pay = osub.add_parser("pay", help="report a payment (payment service: staff or merchant)")
    pay.add_argument("--order", type=int, required=True, help="the order id")
    pay.add_argument("--payment-id", required=True, help="the payment's id at the gateway (idempotency key)")
    pay.add_argument("--amount", required=True, help="the amount paid (major unit)")
    pay.add_argument("--currency", help="the currency paid (default: the order's)")
    pay.add_argument(
        "--payment-method",
        choices=("online", "bank_transfer"),
        default="online",
        help="how it was paid (must be the order's method)",
    )
    _remote.add_common(pay)

    get = osub.add_parser("get", help="show an order and its delivered codes")
    get.add_argument("--order", type=int, required=True, help="the order id")
    get.add_argument("--reveal", action="store_true", help="the codes in full (the buyer only; audited)")
    _remote.add_common(get)

    lst = osub.add_parser("list", help="orders, newest first")
    lst.add_argument("--account", default="", help="one account's orders (staff and merchants)")
    lst.add_argument("--status", choices=tuple(_STATUS.values()), help="only orders in this state")
    lst.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _remote.add_common(lst)

    cancel = osub.add_parser("cancel", help="give up an unpaid order (its codes go back to the pool)")
    cancel.add_argument("--order", type=int, required=True, help="the order id")
    _remote.add_common(cancel)

    review = osub.add_parser("review", help="decide an order waiting for manual review (staff)")
    review.add_argument("--order", type=int, required=True, help="the order id")
    decide = review.add_mutually_exclusive_group(required=True)
    decide.add_argument("--approve", action="store_true", help="deliver the codes")
    decide.add_argument("--reject", action="store_true", help="refund the payment")
    review.add_argument("--reason", default="", help="a note kept with the decision")
    _remote.add_common(review)

    refund = osub.add_parser(
        "refund", help="refund a paid order (delivered: only while its codes are unused)"
    )
    refund.add_argument("--order", type=int, required=True, help="the order id")
    refund.add_argument("--reason", default="", help="why (kept with the refund)")
    _remote.add_common(refund)


def _when(ts: Timestamp) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")


def describe(o: order_pb2.Order) -> str:
    """One line: id, state, what, total, account, and what the state says next."""
    cur = o.total.currency
    lines = ", ".join(
        f"{i.quantity} x {i.sku} at {_remote.fmt_money(i.face_value_minor_units, cur)}" for i in o.items
    )
    parts = [
        f"order {o.id}: {_STATUS.get(o.status, 'unknown')}",
        lines,
        f"total {_remote.fmt_money(o.total.minor_units, cur)}",
        f"account {o.account}",
    ]
    if o.status == 1:
        parts.append(f"pay by {_when(o.expires_at)}")
    if o.payment_id:
        parts.append(
            f"paid {_remote.fmt_money(o.paid.minor_units, o.paid.currency)} (payment {o.payment_id})"
        )
    if o.status == 2 and o.HasField("deliver_by"):
        parts.append(f"deliver by {_when(o.deliver_by)}")
    if o.close_reason:
        parts.append(f"closed: {o.close_reason}")
    text = ", ".join(parts)
    if o.replayed:
        text += " (replayed: this id was already done; nothing changed now)"
    return text


def _codes(o: order_pb2.Order) -> list[str]:
    return [
        f"  {c.serial}\t{c.code}\t{_remote.fmt_money(c.face_value.minor_units, c.face_value.currency)}"
        f"\t{_CARD_STATUS.get(c.status, 'unknown')}"
        for c in o.codes
    ]


def _face(c: Client, sku: str, given: str | None) -> tuple[str, int]:
    """The product's currency and the face value asked for (or its only denomination)."""
    from . import UsageError

    product = c.get_product(sku)
    cur = product.currency
    if given is not None:
        return cur, _remote.to_minor(given, cur, "--face-value")
    if len(product.denominations) == 1:
        return cur, product.denominations[0]
    choices = ", ".join(_remote.fmt_amount(d, cur) for d in product.denominations)
    raise UsageError(
        f"--face-value is needed for {product.sku}" + (f" (one of {choices})" if choices else "")
    )


def _stock(c: Client, args: argparse.Namespace) -> None:
    from . import UsageError

    if args.lot is not None:
        if args.count is not None or args.face_value is not None:
            raise UsageError("-n and --face-value go with --product, not --lot")
        lot_id = args.lot
    else:
        if args.count is None or args.count < 1:
            raise UsageError("--product needs -n (how many cards, at least 1)")
        _, face = _face(c, args.product, args.face_value)
        lot_id = c.create_lot(args.product, args.count, face).id
    done = c.stock_pool(lot_id)
    note = " (already stocked: nothing changed)" if done.already_stocked else ""
    print(f"pool {done.sku}: lot {done.lot_id}, {done.stocked} codes for sale{note}")


def _pool(c: Client, args: argparse.Namespace) -> None:
    resp = c.stock(args.product)
    if resp.HasField("retired_at"):
        print(f"pool {resp.sku}: product retired {_remote.fmt_utc(resp.retired_at)}; nothing is sold")
    if not resp.stock:
        print(f"pool {resp.sku}: empty")
    for s in resp.stock:
        face = _remote.fmt_money(s.face_value.minor_units, s.face_value.currency)
        withdrawn = f", {s.withdrawn} withdrawn" if s.withdrawn else ""
        print(
            f"pool {resp.sku} {face}: {s.available} available{withdrawn}, {s.reserved} reserved,"
            f" {s.sold} sold, {s.returned} returned"
        )


def _create(c: Client, args: argparse.Namespace) -> None:
    from . import UsageError

    if args.count < 1:
        raise UsageError("-n must be at least 1")
    _, face = _face(c, args.product, args.face_value)
    rid = _remote.request_id(args)
    o = c.create_order(
        [(args.product, face, args.count)],
        account=args.account,
        request_id=rid,
        client_address=args.client_address,
        payment_method=args.payment_method,
    )
    print(o.id if args.quiet else describe(o))


def _pay(c: Client, args: argparse.Namespace) -> None:
    cur = (args.currency or c.get_order(args.order).total.currency).upper()
    amount = _remote.to_minor(args.amount, cur, "--amount")
    o = c.confirm_payment(args.order, args.payment_id, amount, cur, payment_method=args.payment_method)
    print(describe(o))
    for line in _codes(o):
        print(line)


def _get(c: Client, args: argparse.Namespace) -> None:
    o = c.get_order(args.order, reveal=args.reveal)
    print(describe(o))
    for line in _codes(o):
        print(line)


def _list(c: Client, args: argparse.Namespace) -> None:
    from . import UsageError

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    shown = 0
    for o in c.list_orders(account=args.account, status=args.status, page_size=min(args.limit, 500)):
        print(describe(o))
        shown += 1
        if shown >= args.limit:
            break
    if not shown:
        print("no orders")


def _run(args: argparse.Namespace) -> int:
    action = args.order_action
    with _remote.connect(args) as c:
        if action == "stock":
            _stock(c, args)
        elif action == "pool":
            _pool(c, args)
        elif action == "create":
            _create(c, args)
        elif action == "pay":
            _pay(c, args)
        elif action == "get":
            _get(c, args)
        elif action == "list":
            _list(c, args)
        elif action == "cancel":
            print(describe(c.cancel_order(args.order)))
        elif action == "review":
            print(describe(c.review_order(args.order, approve=args.approve, reason=args.reason)))
            # delivered codes stay masked here: the buyer sees them with `order get --reveal`
        else:  # refund
            o = c.refund_order(args.order, reason=args.reason)
            print(describe(o))
            for line in _codes(o):
                print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    return _remote.guarded(_run, args)
