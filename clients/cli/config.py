"""``cardmint config show``: the effective serve settings, where each came from, secrets masked."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import add_setting_flags

    cfg = sub.add_parser("config", help="the server's configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="CONFIG_COMMAND")
    show = csub.add_parser(
        "show",
        help="print the effective settings and their sources (secrets masked)",
        description="The settings cardmint serve would run with given the same file, environment "
        "and flags: one `key = value  # source` line each, database passwords and key material masked.",
    )
    add_setting_flags(show)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string for these values
    return str(value)


def run(args: argparse.Namespace) -> int:
    from cardmint.server.config import SETTINGS, find_config, mask_url
    from cardmint.server.domain.keyring import describe

    from .serve import settings_from

    cfg = settings_from(args)
    file, how = find_config(args.config, os.environ)
    print(f"# configuration file: {file} ({how})" if file is not None else "# configuration file: none")
    width = max(len(s.key) for s in SETTINGS)
    for s in SETTINGS:
        value = cfg.values[s.key]
        source = cfg.sources[s.key]
        if value is None:
            print(f"# {s.key:<{width}} = {cfg.shown(s.key):<30}  # {source}")
        else:
            shown = mask_url(value) if s.url else value
            print(f"{s.key:<{width}} = {_toml(shown):<30}  # {source}")
    for line in describe(cfg.keys_path):
        print(f"# {line}")
    return 0
