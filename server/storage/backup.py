"""Online backup of the SQLite database: a consistent copy while the server is writing.

Copying ``cardmint.db`` with ``cp`` while a server runs is not a backup: under WAL the last
commits live in ``cardmint.db-wal`` until a checkpoint, and a file copied page by page while
the writer checkpoints can mix two states. ``backup_sqlite`` uses SQLite's online backup
API instead, in one step (``sqlite3_backup_step(-1)``): it reads every page inside one read
transaction, which under WAL is a snapshot that does not block the writer (and is not
restarted by it), so the copy is the database as of one commit, WAL frames included. The
copy is written next to its destination, checked with ``PRAGMA integrity_check``, switched
to a rollback journal (one self-contained file, no ``-wal`` beside it), fsynced and renamed
into place, mode 0600 (it holds the sealed codes and their digests).

The source is opened read-only and no migration is applied to it, so a backup tool of a
newer version never changes a running server's database. PostgreSQL has its own tools
(``pg_dump``, base backups with WAL archiving): docs/backup.md.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import StorageError

__all__ = ["BackupReport", "backup_sqlite", "sqlite_path"]


@dataclass(frozen=True)
class BackupReport:
    """What the copy holds: its size, schema version and a few counts to compare."""

    path: Path
    bytes: int
    schema_version: int
    cards: int
    ledger_entries: int
    audit_events: int


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite://`` URL (or plain path); None for a PostgreSQL URL."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    if not path or path == ":memory:" or "://" in path:
        raise StorageError(f"not a SQLite database file: {url!r}")
    return Path(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _count(conn: sqlite3.Connection, table: str) -> int:
    # Table names are the constants below, never input.
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def backup_sqlite(source: Path, dest: Path, *, busy_timeout_ms: int = 30_000) -> BackupReport:
    """Copy the database at ``source`` to ``dest`` (which must not exist), online.

    Safe while servers write to ``source``: the copy is one consistent snapshot.
    """
    if not source.is_file():
        raise StorageError(f"no SQLite database at {source}")
    if dest.exists():
        raise StorageError(f"{dest} exists; a backup never overwrites")
    part = dest.with_name(f".{dest.name}.part")
    part.unlink(missing_ok=True)  # a leftover of an interrupted backup
    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        uri = f"file:{quote(str(source.resolve()))}?mode=ro"
        src = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, check_same_thread=False)
        try:
            dst = sqlite3.connect(part)
            try:
                src.backup(dst)  # pages=-1: every page in one step, inside one read transaction
                check = dst.execute("PRAGMA integrity_check").fetchall()
                if check != [("ok",)]:
                    raise StorageError(f"the copy failed its integrity check: {check[:5]}")
                dst.execute("PRAGMA journal_mode=DELETE")  # one file: nothing left in a -wal
                report = BackupReport(
                    dest,
                    0,
                    int(dst.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]),
                    _count(dst, "cards"),
                    _count(dst, "ledger_entries"),
                    _count(dst, "audit_log"),
                )
            finally:
                dst.close()
        finally:
            src.close()
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(part, dest)
        _fsync_dir(dest.parent)
    except sqlite3.Error as e:
        part.unlink(missing_ok=True)
        raise StorageError(f"backup of {source} failed: {e}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return BackupReport(
        dest,
        dest.stat().st_size,
        report.schema_version,
        report.cards,
        report.ledger_entries,
        report.audit_events,
    )
