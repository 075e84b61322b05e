"""``cardmint serve``: run the gRPC server (cardmint.server.app) until SIGTERM.

Every setting is a flag here, a ``CARDMINT_*`` environment variable and a key of the
configuration file (server/config.py; precedence flag > env > file > default).
``cardmint config show`` prints the effective settings and where each came from.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cardmint.server.config import ServeConfig
    from cardmint.server.domain import Domain
    from cardmint.server.storage import Storage


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one flag per setting (default None: not given)."""
    from cardmint.server.config import CONFIG_ENV, SETTINGS

    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else ./cardmint.toml if it exists)",
    )
    for s in SETTINGS:
        default = "off" if s.default is None and s.optional else s.default
        choices = f" ({'|'.join(s.choices)})" if s.choices else ""
        p.add_argument(
            s.flag,
            dest=f"setting_{s.key}",
            metavar=s.key.upper() if not s.choices else "|".join(s.choices),
            help=f"{s.help}{'' if s.choices else choices} [{s.env}; default {default}]",
        )


def settings_from(args: argparse.Namespace) -> ServeConfig:
    """The effective ServeConfig for ``args`` (a UsageError when a setting is bad)."""
    from cardmint.server.config import SETTINGS, ConfigError, load_config

    from . import UsageError

    try:
        return load_config(args.config, flags={s.key: getattr(args, f"setting_{s.key}") for s in SETTINGS})
    except ConfigError as e:
        raise UsageError(str(e)) from None


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--db`` and ``--var`` for commands that open the database directly."""
    p.add_argument("--config", metavar="FILE", help="configuration file, as cardmint serve")
    p.add_argument(
        "--db", help="database URL (default: as cardmint serve: the config, else ./var/cardmint.db)"
    )
    p.add_argument("--var", help="var directory of the keys and the SQLite file (default: as cardmint serve)")


def open_configured(args: argparse.Namespace) -> tuple[Storage, Domain]:
    """Storage and domain as ``cardmint serve`` would open them with the same configuration
    (``--config``, ``--db`` and ``--var`` over the environment over the file)."""
    from cardmint.server.app import open_domain
    from cardmint.server.config import ConfigError, load_config
    from cardmint.server.domain import Keyring

    from . import UsageError

    try:
        cfg = load_config(args.config, flags={"db": args.db, "var": args.var})
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return open_domain(
        cfg.db,
        cfg.var_dir,
        cfg.domain_config(),
        keyring=Keyring.load(cfg.keys_path),
        storage_options=cfg.storage_options(),
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC server (SQLite under ./var by default)",
        description="Run the gRPC server. Settings: flag > CARDMINT_* environment > --config file > "
        "default (docs/operations.md, Configuration). Key material comes from the keys "
        "directory or CARDMINT_DIGEST_KEYS / CARDMINT_SEAL_KEYS, never from a flag.",
    )
    add_setting_flags(p)


def run(args: argparse.Namespace) -> int:
    from cardmint.server.app import serve

    from . import UsageError

    cfg = settings_from(args)
    if cfg.trace is not None:
        try:
            from cardmint.server.tracing import tracer_provider

            tracer_provider(cfg.trace).shutdown()  # the packages are there, before anything starts
        except ImportError as e:
            raise UsageError(
                f"trace {cfg.trace} ({cfg.sources['trace']}): {e.name or e} is not installed "
                "(pip install 'cardmint[tracing]')"
            ) from None
    from cardmint.server.config import ConfigError
    from cardmint.server.tls import TlsError, server_credentials

    try:
        tls = cfg.tls_files()
        if tls is not None:
            server_credentials(tls)  # bad files are a usage error, before anything starts
    except (ConfigError, TlsError) as e:
        raise UsageError(str(e)) from None
    return serve(cfg)


def main(argv: list[str] | None = None) -> int:
    """``python -m cardmint.cli.serve`` (same options as ``cardmint serve``)."""
    ap = argparse.ArgumentParser(prog="cardmint")
    add_parser(ap.add_subparsers(dest="command", required=True))
    return run(ap.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
