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
        "--trusted-proxy",
        metavar="CIDR",
        action="append",
        default=[],
        help="a load balancer or proxy (address or CIDR; repeatable) whose x-forwarded-for names "
        "the client, for the per-address limits (default: none, the peer is the client)",
    )
    p.add_argument(
        "--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate chain (needs --tls-key)"
    )
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (mode 0600)")
    p.add_argument(
        "--client-ca",
        metavar="FILE",
        help="mutual TLS: require client certificates signed by the CA(s) in this PEM file",
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
    from cardmint.server.api._convert import trusted_networks

    try:
        trusted_networks(args.trusted_proxy)
    except ValueError as e:
        raise UsageError(f"--trusted-proxy: {e}") from None
    tls = None
    if args.tls_cert or args.tls_key or args.client_ca:
        from cardmint.server.tls import TlsError, TlsFiles, server_credentials

        if not (args.tls_cert and args.tls_key):
            raise UsageError("TLS needs both --tls-cert and --tls-key (--client-ca adds mutual TLS)")
        tls = TlsFiles(
            Path(args.tls_cert), Path(args.tls_key), Path(args.client_ca) if args.client_ca else None
        )
        try:
            server_credentials(tls)  # bad files are a usage error, before anything starts
        except TlsError as e:
            raise UsageError(str(e)) from None
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
        tls=tls,
        trusted_proxies=tuple(args.trusted_proxy),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m cardmint.cli.serve`` (same options as ``cardmint serve``)."""
    ap = argparse.ArgumentParser(prog="cardmint")
    add_parser(ap.add_subparsers(dest="command", required=True))
    return run(ap.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
