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
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from cardmint.server.storage import StorageError
from cardmint.server.storage import sqlite as backend
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


class _Recorder:
    """Stands in for the writer gate, logging when it is taken and let go."""

    def __init__(self, gate: _WriterGate, log: list[str]) -> None:
        self.gate, self.log = gate, log

    def __enter__(self) -> None:
        self.gate.__enter__()
        self.log.append("gate taken")

    def __exit__(self, *exc: object) -> None:
        self.log.append("gate let go")
        self.gate.__exit__(*exc)

    def close(self) -> None:
        self.gate.close()


def test_callers_hear_back_only_once_the_gate_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's callers are woken after the leader let go of the gate: woken callers must
    not compete with the leader for the CPU while the other processes wait on the gate."""
    log: list[str] = []
    real_signal = backend._Unit.signal

    def signal_logged(unit: backend._Unit) -> None:
        log.append("woken" if unit.done else "nudged")
        real_signal(unit)

    monkeypatch.setattr(backend._Unit, "signal", signal_logged)
    storage = SQLiteStorage(tmp_path / "wake.db")
    try:
        storage._gate = _Recorder(storage._gate, log)  # type: ignore[assignment]
        go = threading.Barrier(16)

        def caller(k: int) -> int:
            go.wait()
            for _ in range(20):
                storage.run(lambda tx: tx.probe())
            return k

        with ThreadPoolExecutor(16) as pool:  # a caller's error is raised here
            finished = list(pool.map(caller, range(16), timeout=60))
        assert sorted(finished) == list(range(16))
        assert storage.group_commits < 16 * 20  # batches did form: followers were woken
        held = False
        woken = 0
        for what in log:
            if what == "gate taken":
                held = True
            elif what == "gate let go":
                held = False
            elif what == "woken":
                woken += 1
                assert not held, "a caller was woken while its leader still held the gate"
        assert woken > 0
    finally:
        storage.close()


def test_a_new_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The database holds sealed codes, digests and hashed tokens: like the keys, the file,
    its WAL and shared memory, and the gate are mode 0600, whatever the umask lets through."""
    old = os.umask(0o002)
    try:
        storage = SQLiteStorage(tmp_path / "owner.db")
    finally:
        os.umask(old)
    try:
        storage.run(lambda tx: tx.probe())
        names = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        assert names == dict.fromkeys(("owner.db", "owner.db-wal", "owner.db-shm", "owner.db.writers"), 0o600)
    finally:
        storage.close()
