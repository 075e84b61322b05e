"""``cardmint backup --out DIR``: an online backup of the SQLite database and its keys.

DIR is written as a var directory a server can run on: ``DIR/cardmint.db`` (a consistent
copy taken while servers keep writing: cardmint.server.storage.backup) and ``DIR/keys/``
(the digest and sealing keys; without them no code in the copy can be found or shown).
Restoring is copying DIR into place (or ``cardmint serve --var DIR``): docs/backup.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the SQLite database (online, consistent) and the keys into a new directory",
        description="Write DIR/cardmint.db, a consistent copy of the database taken while the "
        "server runs, and DIR/keys/, its keys: a var directory `cardmint serve --var DIR` can "
        "run on. SQLite only; for PostgreSQL see docs/backup.md (pg_dump, base backups).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) directory to write")
    p.add_argument("--db", help="database URL (default: ./var/cardmint.db, as cardmint serve)")
    p.add_argument(
        "--var", default="var", help="the server's var directory: database and keys (default ./var)"
    )
    p.add_argument(
        "--no-keys",
        action="store_true",
        help="leave the keys out (when they are backed up elsewhere: the copy is useless without them)",
    )


def _copy_keys(src: Path, dest: Path) -> list[str]:
    files = sorted(p for p in src.glob("*.key") if p.is_file()) if src.is_dir() else []
    if not any(p.name == "digest.key" for p in files):
        from . import UsageError

        raise UsageError(
            f"no keys in {src}: a backup without the digest and sealing keys is useless "
            "(pass --var, or --no-keys if they are backed up elsewhere)"
        )
    dest.mkdir(mode=0o700)
    for p in files:
        target = dest / p.name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(p.read_bytes())
            f.flush()
            os.fsync(f.fileno())
    return [p.name for p in files]


def run(args: argparse.Namespace) -> int:
    from cardmint.server.app import default_db_url
    from cardmint.server.storage.backup import backup_sqlite, sqlite_path

    from . import UsageError

    var = Path(args.var)
    source = sqlite_path(args.db or default_db_url(var))
    if source is None:
        raise UsageError(
            "cardmint backup copies SQLite databases; back PostgreSQL up with pg_dump or a base "
            "backup with WAL archiving (docs/backup.md), and the keys in --var's keys/ with it"
        )
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty directory")
    created = not out.exists()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        report = backup_sqlite(source, out / "cardmint.db")
        keys = [] if args.no_keys else _copy_keys(var / "keys", out / "keys")
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(
        f"backup {out}: cardmint.db {report.bytes:,} bytes, schema v{report.schema_version}, "
        f"{report.cards:,} cards, {report.ledger_entries:,} ledger entries, {report.audit_events:,} audit events"
    )
    if keys:
        print(f"keys: {', '.join(keys)} (mode 0600: keep this directory as secret as the live one)")
    else:
        print(
            f"cardmint: warning: no keys in {out}: restore them from where they are kept, "
            "or no code in this copy can be found or shown",
            file=sys.stderr,
        )
    return 0
