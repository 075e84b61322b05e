"""The ``cardmint`` command.

    cardmint keys generate -n N [--length L] [--group G] [--prefix P] [--out FILE]
    cardmint keys check [--issued FILE] [--length L] [FILE|-]
    cardmint bench [--quick] [--json FILE] [--server [--pg DSN]] | --ci [--json FILE]
    cardmint serve [--config FILE] [--db URL] [--listen ADDR] [...every setting]
    cardmint config show [--config FILE] [...every setting]
    cardmint keys new|status|rotate [--to ID]|rehash [--batch N]|retire --key ID [--config FILE]
    cardmint token create --role ROLE [--account A] [--label L] [--expires-in 30d] [--db URL]
    cardmint token list|revoke ID [--db URL]
    cardmint backup --out DIR [--db URL] [--var DIR] [--no-keys]

Through a running server (each takes --server ADDR, default $CARDMINT_SERVER or
127.0.0.1:50051, and --token T, default $CARDMINT_TOKEN; amounts in major units):

    cardmint product create --sku SKU --name N --currency CUR (--denominations 100,200 | --min 1 --max 500)
                            [--validity-days D] [--delivery auto|manual]
    cardmint product list
    cardmint lot create --product SKU -n N --out lot.csv|lot.xlsx [--face-value V]
    cardmint lot export --lot ID --out lot.csv|lot.xlsx
    cardmint card bind --code CODE [--account A]
    cardmint card bulk-bind FILE.csv --out RESULTS.csv [--organization ORG]
    cardmint card get --serial S
    cardmint card history (--serial S | --account A) [--limit N]
    cardmint card view --serial S [--full]
    cardmint card freeze|unfreeze --serial S --reason WHY
    cardmint card report-loss --serial S --reason WHY [--account A] [--request-id ID]
    cardmint card review-loss --report ID (--approve | --reject) --note TEXT [--request-id ID]
    cardmint balance [--card SERIAL | --account A]
    cardmint redeem --card SERIAL --amount N [--request-id ID]
    cardmint reverse --transaction ID --amount N --currency CUR [--request-id ID]
    cardmint transfer --from SERIAL --to SERIAL --amount N [--currency CUR] [--request-id ID]
    cardmint order stock --product SKU -n N [--face-value V] | --lot ID
    cardmint order pool --product SKU
    cardmint order create --product SKU [-n N] [--face-value V] [--account A] [--request-id ID] [-q]
    cardmint order pay --order ID --payment-id P --amount N [--currency CUR]
    cardmint order get --order ID [--reveal]
    cardmint order list [--account A] [--status S] [--limit N]
    cardmint order cancel|refund --order ID      (refund: [--reason R])
    cardmint order review --order ID (--approve | --reject) [--reason R]
    cardmint compliance reports [--kind aml|alert] [--limit N]
    cardmint compliance blacklist FILE|- --source PARTNER [--length L]
    cardmint events [--after ID] [--kind KIND]... [--follow [--for SECONDS]]
    cardmint org create NAME | add-department --org ORG NAME | departments --org ORG
    cardmint org add-member --org ORG --account A [--role R] [--department D] [--with-token]
    cardmint org remove-member --org ORG --account A | members --org ORG [--department D]
    cardmint account show [--account A] | verify-real-name --account A
    cardmint load [--rate R --duration S | --search] [--mix balance=4,redeem=3,bind=2,order=1]
                  [--deadline S] [--json FILE]      (open-loop load; an admin token)

Errors are one line on stderr naming the problem, exit status 2; never a traceback. A call
the server refused on business grounds (not found, already bound, insufficient funds,
locked, ...) exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit 2."""


def _version() -> str:
    from importlib import metadata  # only for --version: it costs a command's start ~50 ms

    try:
        return metadata.version("cardmint")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def version_line() -> str:
    """``cardmint 0.1.0 (kernel backends: rust, cython, python)``: the installed package and
    the kernel backends that load here (best first)."""
    from cardmint.kernel import available_backends

    return f"cardmint {_version()} (kernel backends: {', '.join(available_backends())})"


class _VersionAction(argparse.Action):
    """``--version``: imports the kernel only when asked, so other commands start fast."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=str(kwargs.get("help"))
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version_line())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cardmint", description="Gift-card codes: mint, check, benchmark.")
    ap.add_argument(
        "--version", action=_VersionAction, help="the package version and the kernel backends available"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="mint and check codes locally (no server)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")

    gen = ksub.add_parser("generate", help="mint unique codes, one per line")
    gen.add_argument("-n", "--count", type=int, required=True, help="how many codes")
    gen.add_argument(
        "--length", type=int, default=16, help="symbols per code incl. check (4..31, default 16)"
    )
    gen.add_argument("--group", type=int, default=4, help="symbols between hyphens (0 = none, default 4)")
    gen.add_argument("--prefix", default="", help="fixed leading symbols, e.g. GC")
    gen.add_argument("--out", default="-", help="output file (default: stdout)")
    gen.add_argument("--chunk", type=int, default=1 << 20, help=argparse.SUPPRESS)

    chk = ksub.add_parser("check", help="normalize and check pasted codes, one per line")
    chk.add_argument("input", nargs="?", default="-", help="file of inputs (default: stdin)")
    chk.add_argument("--issued", help="file of issued codes: enables unknown/corrected")
    chk.add_argument("--length", type=int, default=16, help="symbols per code (default 16)")

    from . import rotation

    rotation.add_parsers(ksub)

    bench = sub.add_parser("bench", help="throughput of every kernel backend vs plain Python")
    bench.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    bench.add_argument("--json", help="also write the results as JSON to this file")
    bench.add_argument("--size", type=int, help=argparse.SUPPRESS)
    bench.add_argument(
        "--server", action="store_true", help="the gRPC server vs a bare echo server (in-process, 127.0.0.1)"
    )
    bench.add_argument("--pg", metavar="DSN", help="with --server: also bench on this PostgreSQL database")
    bench.add_argument(
        "--apart",
        action="store_true",
        help="with --server: also echo and the unary calls with each server in a process of its own",
    )
    bench.add_argument(
        "--ci",
        action="store_true",
        help="the quick table CI prints: kernel vs plain Python and server calls vs echo, one run",
    )

    from . import (
        admin,
        audit,
        backup,
        card,
        compliance,
        config,
        events,
        load,
        lot,
        order,
        org,
        product,
        serve,
    )

    serve.add_parser(sub)
    config.add_parser(sub)
    admin.add_parser(sub)
    audit.add_parser(sub)
    backup.add_parser(sub)
    product.add_parser(sub)
    lot.add_parser(sub)
    card.add_parser(sub)
    compliance.add_parser(sub)
    events.add_parser(sub)
    org.add_parser(sub)
    order.add_parser(sub)
    load.add_parser(sub)
    return ap


def _is_setup_error(e: Exception) -> bool:
    """Bad input to the kernel, storage and key-material errors: the user's to fix. Each
    kind is looked up only if its module was loaded (a command that never loads the kernel
    or the server stays quick to start: they pull in numpy and the native modules)."""
    kinds = [
        getattr(sys.modules.get(mod), name, None)
        for mod, name in (
            ("cardmint.kernel", "KernelError"),
            ("cardmint.server.storage.errors", "StorageError"),
            ("cardmint.server.domain.errors", "KeyringError"),
        )
    ]
    return any(isinstance(k, type) and isinstance(e, k) for k in kinds)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys" and args.keys_command == "generate":
            from .keys import generate

            return generate(args)
        if args.command == "keys" and args.keys_command == "check":
            from .keys import check

            return check(args)
        if args.command == "keys":
            from .rotation import run as run_rotation

            return run_rotation(args)
        if args.command == "bench" and args.ci:
            from .bench_ci import run as run_bench_ci

            return run_bench_ci(args)
        if args.command == "bench" and args.server:
            from .bench_server import run as run_bench_server

            return run_bench_server(args)
        if args.command == "bench":
            from .bench import run

            return run(args)
        if args.command == "serve":
            from .serve import run as run_serve

            return run_serve(args)
        if args.command == "config":  # its one subcommand, show, is required by the parser
            from .config import run as run_config

            return run_config(args)
        if args.command == "token":  # create, list or revoke: the parser requires one
            from .admin import run as run_token

            return run_token(args)
        if args.command == "backup":
            from .backup import run as run_backup

            return run_backup(args)
        if args.command == "audit":  # its one subcommand, verify, is required by the parser
            from .audit import run as run_audit

            return run_audit(args)
        if args.command == "product":
            from .product import run as run_product

            return run_product(args)
        if args.command == "lot":
            from .lot import run as run_lot

            return run_lot(args)
        if args.command == "order":
            from .order import run as run_order

            return run_order(args)
        if args.command == "compliance":
            from .compliance import run as run_compliance

            return run_compliance(args)
        if args.command == "events":
            from .events import run as run_events

            return run_events(args)
        if args.command in ("org", "account"):
            from .org import run as run_org

            return run_org(args)
        if args.command == "load":
            from .load import run as run_load

            return run_load(args)
        if args.command in ("card", "balance", "redeem", "reverse", "transfer"):
            from .card import run as run_card

            return run_card(args)
    except UsageError as e:
        print(f"cardmint: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cardmint: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if _is_setup_error(e):  # bad kernel input, a bad --db, unreadable keys: the user's to fix
            print(f"cardmint: {e}", file=sys.stderr)
            return 2
        # Anything else is a bug: say so in one line; the traceback is for developers.
        if os.environ.get("CARDMINT_DEBUG"):
            raise
        print(
            f"cardmint: internal error: {type(e).__name__}: {e} (CARDMINT_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 70
    raise AssertionError(f"unhandled command {args}")  # pragma: no cover - argparse requires one
