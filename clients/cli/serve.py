"""``cardmint serve``: run the gRPC server (cardmint.server.app) until SIGTERM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gRPC server (SQLite under ./var by default)")
    p.add_argument(
        "--db",
        help="database URL: postgresql://user@host:port/db or sqlite:///path (default: ./var/cardmint.db)",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:50051", help="address to listen on (default 127.0.0.1:50051)"
    )
    p.add_argument("--var", default="var", help="directory for the SQLite file and the keys (default ./var)")
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds to let in-flight calls finish on SIGTERM (default 30)",
    )
    p.add_argument("--workers", type=int, default=32, help="threads handling calls (default 32)")
    p.add_argument(
        "--health-probe",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often a probe write checks the database; health is NOT_SERVING while it fails (default 2)",
    )
    p.add_argument(
        "--profile",
        default="platform",
        help="compliance profile: platform (default), cn-prepaid, or a profile .toml file",
    )
    p.add_argument(
        "--metrics",
        metavar="ADDR",
        help="serve Prometheus metrics over HTTP at HOST:PORT, e.g. 127.0.0.1:9464 (default: off)",
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="log lines as JSON or readable text; auto (default): text on a terminal, else JSON",
    )
    p.add_argument(
        "--trace",
        choices=("console", "otlp"),
        help="export OpenTelemetry spans of calls and storage: console (stdout) or otlp "
        "(OTEL_EXPORTER_OTLP_ENDPOINT); needs the tracing extra (default: off)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="least severe log level written (default info)",
    )


def run(args: argparse.Namespace) -> int:
    from cardmint.server.app import serve

    from . import UsageError

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.grace < 0:
        raise UsageError("--grace must not be negative")
    if args.health_probe < 0:
        raise UsageError("--health-probe must not be negative")
    from cardmint.server.domain.profiles import ProfileError, load_profile

    try:
        load_profile(args.profile)  # a bad profile is a usage error, before anything starts
    except ProfileError as e:
        raise UsageError(str(e)) from None
    if args.metrics is not None:
        from cardmint.server.observe import parse_address

        try:
            parse_address(args.metrics)
        except ValueError as e:
            raise UsageError(f"--metrics: {e}") from None
    if args.trace is not None:
        try:
            from cardmint.server.tracing import tracer_provider

            tracer_provider(args.trace).shutdown()  # the packages are there, before anything starts
        except ImportError as e:
            raise UsageError(
                f"--trace {args.trace}: {e.name or e} is not installed (pip install 'cardmint[tracing]')"
            ) from None
    return serve(
        args.db,
        args.listen,
        Path(args.var),
        grace=args.grace,
        workers=args.workers,
        profile=args.profile,
        metrics=args.metrics,
        log_format=args.log_format,
        log_level=args.log_level,
        trace=args.trace,
        health_probe=args.health_probe,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m cardmint.cli.serve`` (same options as ``cardmint serve``)."""
    ap = argparse.ArgumentParser(prog="cardmint")
    add_parser(ap.add_subparsers(dest="command", required=True))
    return run(ap.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
