"""SQLite's writers of every process queue on one gate (``<database>.writers``, an flock).

Without it a writer that finds another process's transaction open polls SQLite's lock,
sleeping between tries, and fails once its busy timeout has passed; with it the writer
sleeps in the kernel until the lock is let go, however long that takes, and the kernel
lets go of it for a holder that dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cardmint.server.storage import StorageError
from cardmint.server.storage.sqlite import SQLiteStorage, _WriterGate

# Another process: opens the database, holds a write transaction for argv[2] seconds.
HOLDER = """
import sys, time
from cardmint.server.storage.sqlite import SQLiteStorage
s = SQLiteStorage(sys.argv[1])
with s.transaction() as tx:
    tx.probe()
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
s.close()
"""


@contextmanager
def holder(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_writer_waits_for_another_process_on_the_gate(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    ours = SQLiteStorage(path, busy_timeout_ms=100)  # far shorter than the other's transaction
    try:
        assert (path.parent / "gate.db.writers").stat().st_mode & 0o777 == 0o600
        with holder(path, 1.5) as other:
            t0 = time.monotonic()
            ours.run(lambda tx: tx.probe())  # queued on the gate, not refused after 100 ms
            waited = time.monotonic() - t0
            assert other.wait(timeout=30) == 0
        assert waited >= 0.5  # it did wait for the other process's commit
        assert ours.group_commits == 1
    finally:
        ours.close()


def test_without_the_gate_the_busy_timeout_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same writer, gate taken away in this process, is refused."""
    path = tmp_path / "gate.db"
    ours = SQLiteStorage(path, busy_timeout_ms=100)
    try:
        monkeypatch.setattr(_WriterGate, "__enter__", lambda self: None)
        monkeypatch.setattr(_WriterGate, "__exit__", lambda self, *exc: None)
        with holder(path, 5.0), pytest.raises(StorageError, match="locked"):
            ours.run(lambda tx: tx.probe(), attempts=1)
    finally:
        ours.close()


def test_the_gate_is_let_go_when_its_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    ours = SQLiteStorage(path, busy_timeout_ms=5_000)
    try:
        with holder(path, 120.0) as other:
            os.kill(other.pid, signal.SIGKILL)
            ours.run(lambda tx: tx.probe())
            assert other.wait(timeout=30) == -signal.SIGKILL
        assert ours.group_commits == 1
    finally:
        ours.close()


def test_closing_twice_leaves_other_descriptors_alone(tmp_path: Path) -> None:
    """A storage closed twice (a test's own close, then its fixture's) must not close the
    descriptor number its gate had, which the next file opened may have been given."""
    first = SQLiteStorage(tmp_path / "a.db")
    first.close()
    second = SQLiteStorage(tmp_path / "a.db")
    try:
        first.close()
        second.run(lambda tx: tx.probe())  # its gate and connection still work
    finally:
        second.close()
