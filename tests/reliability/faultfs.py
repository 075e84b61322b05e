"""The storage fault shim (faultfs.c): built once per session with the system C compiler,
loaded into a ``cardmint serve`` subprocess with LD_PRELOAD.

``power_cut(undo_log)`` replays the shim's undo log after ``kill -9``: every write and
truncate of the database's files made after that file's last fsync is undone, newest first,
so the files hold only what had reached the disk, as after a power loss.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("faultfs.c")


def build(into: Path) -> Path:
    """faultfs.c compiled to a shared object in ``into``; its path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler (cc) is needed to build the storage fault shim"
    out = into / "faultfs.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out), str(SOURCE), "-ldl", "-lpthread"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def env(shim: Path, match: str, *, undo: Path | None = None, ctl: Path | None = None) -> dict[str, str]:
    """Environment variables that load the shim for files whose path contains ``match``."""
    out = {"LD_PRELOAD": str(shim), "FAULTFS_MATCH": match}
    if undo is not None:
        out["FAULTFS_UNDO"] = str(undo)
    if ctl is not None:
        out["FAULTFS_CTL"] = str(ctl)
    return out


def _records(log: Path) -> list[tuple[str, str, int, int, bytes]]:
    data = log.read_bytes() if log.exists() else b""
    out: list[tuple[str, str, int, int, bytes]] = []
    i = 0
    while i < len(data):
        # kill -9 may land while the shim writes a record: a record cut short is the last one,
        # and the write it was to precede never happened (the record goes first).
        if i + 5 > len(data):
            break
        kind = chr(data[i])
        (plen,) = struct.unpack_from("=I", data, i + 1)
        if i + 5 + plen + 24 > len(data):
            break
        i += 5
        path = data[i : i + plen].decode()
        i += plen
        off, size, have = struct.unpack_from("=qqq", data, i)
        i += 24
        if i + have > len(data):
            break
        old = data[i : i + have]
        i += have
        assert kind in "WS", f"corrupt undo log at byte {i}"
        out.append((kind, path, off, size, old))
    return out


def power_cut(log: Path) -> dict[str, int]:
    """Undo every unsynced write recorded in ``log``; (undone writes, synced writes kept)."""
    records = _records(log)
    last_sync: dict[str, int] = {}
    for n, (kind, path, *_) in enumerate(records):
        if kind == "S":
            last_sync[path] = n
    undone = kept = 0
    for n in range(len(records) - 1, -1, -1):
        kind, path, off, size, old = records[n]
        if kind != "W":
            continue
        if n < last_sync.get(path, -1):
            kept += 1
            continue
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            if old:
                os.pwrite(fd, old, off)
        finally:
            os.close(fd)
        undone += 1
    log.unlink(missing_ok=True)
    return {"undone": undone, "kept": kept}
