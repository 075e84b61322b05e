"""What the commands that talk to a server share: --server/--token, money, errors.

Amounts on the command line and in what the commands print are in the currency's major
unit ("25", "25.50" CNY); the API speaks minor units, converted here exactly (Decimal, no
floats), with the ISO 4217 exponent of the currency (2 unless listed below).

Exit status of a failed call: 1 when the server refused on business grounds (not found,
already exists, a failed precondition such as insufficient funds, a lock); 2 for
everything else (bad input, authentication, permission, server unreachable, internal).
One line on stderr either way, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the client (grpc) is imported only when a remote command runs
    from cardmint.client import CardmintError, Client
    from google.protobuf.timestamp_pb2 import Timestamp

DEFAULT_SERVER = "127.0.0.1:50051"
TOKEN_ENV = "CARDMINT_TOKEN"  # noqa: S105 - the name of a variable, not a secret
SERVER_ENV = "CARDMINT_SERVER"
TLS_CA_ENV = "CARDMINT_CLIENT_TLS_CA"
TLS_CERT_ENV = "CARDMINT_CLIENT_TLS_CERT"
TLS_KEY_ENV = "CARDMINT_CLIENT_TLS_KEY"

_EXPONENT_0 = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()  # noqa: SIM905
)
_EXPONENT_3 = frozenset("BHD IQD JOD KWD LYD OMR TND".split())  # noqa: SIM905


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV) or DEFAULT_SERVER,
        help=f"server address (default ${SERVER_ENV} or {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV, ""),
        help=f"bearer token (default ${TOKEN_ENV}; make one with `cardmint token create`)",
    )
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=os.environ.get(TLS_CA_ENV),
        help=f"connect over TLS, trusting the CA certificate(s) in this PEM file (default ${TLS_CA_ENV})",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=os.environ.get(TLS_CERT_ENV),
        help=f"mutual TLS: this client certificate (PEM; default ${TLS_CERT_ENV}), with --tls-key",
    )
    p.add_argument(
        "--tls-key",
        metavar="FILE",
        default=os.environ.get(TLS_KEY_ENV),
        help=f"mutual TLS: the client certificate's private key (default ${TLS_KEY_ENV})",
    )


def exponent(currency: str) -> int:
    cur = currency.upper()
    if cur in _EXPONENT_0:
        return 0
    if cur in _EXPONENT_3:
        return 3
    return 2


def to_minor(text: str, currency: str, what: str = "amount") -> int:
    """``"25.5"`` CNY → 2550; refuses more decimals than the currency has, and non-numbers."""
    from . import UsageError

    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UsageError(f"{what} {text!r} is not a number") from None
    if not value.is_finite():
        raise UsageError(f"{what} {text!r} is not a number")
    minor = value.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise UsageError(f"{what} {text!r} has more decimals than {currency.upper()} allows")
    return int(minor)


def fmt_amount(minor: int, currency: str) -> str:
    """2550, CNY → ``"25.50"``."""
    e = exponent(currency)
    return f"{Decimal(minor).scaleb(-e):.{e}f}"


def fmt_money(minor: int, currency: str) -> str:
    return f"{fmt_amount(minor, currency)} {currency}"


def fmt_utc(ts: Timestamp) -> str:
    """A wire timestamp to the second, in UTC: ``2026-11-29 19:08:11 UTC``."""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


T = TypeVar("T")

PAGE_MAX = 500  # the most items a listing call returns a page


def page_size(limit: int) -> int:
    """The page to ask for to show at most ``limit`` items (0: all); refuses a negative one."""
    from . import UsageError

    if limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    return min(limit, PAGE_MAX) if limit else PAGE_MAX


def print_lines(items: Iterable[T], line: Callable[[T], str], limit: int, empty: str) -> None:
    """One line per item, at most ``limit`` (0: all; the pages behind ``items`` are fetched
    as they are consumed, so no more than needed); ``empty`` when there is none."""
    shown = 0
    for item in items:
        print(line(item))
        shown += 1
        if shown == limit:
            break
    if not shown:
        print(empty)


def request_id(args: argparse.Namespace) -> str:
    """``--request-id``, checked; when none was given a new one, printed on stderr before
    the call so that an interrupted or failed call can be repeated with it."""
    from . import UsageError

    rid: str | None = args.request_id
    if rid is None:
        rid = uuid.uuid4().hex
        print(f"cardmint: request id {rid} (to retry safely: --request-id {rid})", file=sys.stderr)
    elif not (1 <= len(rid) <= 128 and rid.isascii() and rid.isprintable()):
        raise UsageError("--request-id must be 1-128 printable ASCII characters")
    return rid


def connect(args: argparse.Namespace) -> Client:
    from cardmint.client import Client

    from . import UsageError

    if not args.token:
        raise UsageError(f"no token: pass --token or set {TOKEN_ENV} (cardmint token create --role admin)")
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        from cardmint.client import tls_credentials

        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
        try:
            tls = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except OSError as e:
            raise UsageError(f"TLS: {e.filename}: {e.strerror}") from None
    return Client(args.server, args.token, tls=tls)


def describe(err: CardmintError) -> tuple[str, int]:
    """The one line to print for a failed call, and the exit status."""
    import grpc
    from cardmint.client import BadCheck, Unavailable

    reason = err.reason or err.code.name
    line = f"{reason}: {err.message}"
    if isinstance(err, BadCheck) and err.suggestion:
        line += f" (did you mean {err.suggestion}?)"
    if err.retry_after is not None:
        line += f" (try again in {err.retry_after:.0f} s)"
    for v in err.violations:
        text = f"{v.field}: {v.description}"
        if text not in line:
            line += f"; {text}"
    if err.reason == "INSUFFICIENT_FUNDS" and err.metadata.get("balance", "").lstrip("-").isdigit():
        cur = err.metadata.get("currency", "")
        line += f" (balance {fmt_money(int(err.metadata['balance']), cur)})"
    if isinstance(err, Unavailable):
        line += " (is `cardmint serve` running there? see --server)"
    business = err.code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    return line, 1 if business else 2


def guarded(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``fn(args)``; a failed call becomes one line on stderr and exit 1 or 2."""
    from cardmint.client import CardmintError

    try:
        return fn(args)
    except CardmintError as e:
        line, status = describe(e)
        print(f"cardmint: {line}", file=sys.stderr)
        return status
