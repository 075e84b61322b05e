"""``cardmint keys new|status|rotate|rehash|retire``: digest-key rotation, straight against
the database and the keys of the configuration ``cardmint serve`` uses
(docs/operations.md, "Key rotation")."""

from __future__ import annotations

import argparse
import sys

ACTOR = "cli:keys"


def add_parsers(ksub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import add_store_flags

    new = ksub.add_parser(
        "new", help="write the next digest key file (digest-<id>.key, 0600) to the keys dir"
    )
    status = ksub.add_parser("status", help="the digest keys: state, cards digested with each, held here")
    rotate = ksub.add_parser(
        "rotate", help="make a digest key current (new lots use it); the old one stays valid"
    )
    rotate.add_argument("--to", type=int, help="the key id (default: the highest held)")
    rehash = ksub.add_parser("rehash", help="re-digest cards under the current key, in batches")
    rehash.add_argument("--batch", type=int, default=1000, help="cards per transaction (default 1000)")
    rehash.add_argument("--max-batches", type=int, help="stop after this many batches (default: all)")
    retire = ksub.add_parser("retire", help="stop looking codes up under a digest key no card uses")
    retire.add_argument("--key", type=int, required=True, help="the key id")
    for p in (new, status, rotate, rehash, retire):
        add_store_flags(p)


def run(args: argparse.Namespace) -> int:
    from cardmint.server.domain import DomainError

    from . import UsageError

    if args.keys_command == "new":
        return _new(args)
    from .serve import open_configured

    storage, domain = open_configured(args)
    try:
        keys = domain.digest_keys
        if args.keys_command == "status":
            for k in keys.status():
                held = "held" if k.held else "NOT HELD by this server"
                print(f"digest key {k.key_id}\t{k.state}\t{k.cards} card(s)\t{held}")
        elif args.keys_command == "rotate":
            old, new = keys.rotate(ACTOR, args.to)
            print(f"digest key {new} is current (new lots use it); key {old} is previous, still looked up")
        elif args.keys_command == "rehash":
            report = keys.rehash(
                ACTOR,
                batch=args.batch,
                max_batches=args.max_batches,
                on_batch=lambda n: print(f"rehashed {n} card(s)", file=sys.stderr),
            )
            left = ", ".join(f"key {k}: {n}" for k, n in sorted(report.remaining.items())) or "none"
            print(
                f"rehashed {report.cards} card(s) in {report.batches} batch(es) under digest key "
                f"{report.current}; still under other keys: {left}"
            )
        elif args.keys_command == "retire":
            keys.retire(ACTOR, args.key)
            print(f"digest key {args.key} retired; its key file may now be deleted from every server")
    except DomainError as e:
        raise UsageError(e.message) from None
    finally:
        storage.close()
    return 0


def _new(args: argparse.Namespace) -> int:
    from cardmint.server.config import ConfigError, load_config
    from cardmint.server.domain.keyring import DIGEST_KEYS_ENV, Keyring, create_key_file, digest_key_path

    from . import UsageError

    try:
        cfg = load_config(args.config, flags={"db": args.db, "var": args.var})
    except ConfigError as e:
        raise UsageError(str(e)) from None
    ring = Keyring.load(cfg.keys_path)  # checks the existing files (modes, sizes)
    if ring.sources.get("digest", "").startswith("env"):
        raise UsageError(f"the digest keys come from {DIGEST_KEYS_ENV}: add the new key there")
    key_id = max(ring.digest_keys) + 1
    path = digest_key_path(cfg.keys_path, key_id)
    if not create_key_file(path):
        raise UsageError(f"{path} exists already")
    print(
        f"wrote digest key {key_id} to {path} (0600); copy it to every server's keys dir, restart them, then rotate"
    )
    return 0
