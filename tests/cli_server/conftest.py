"""The CLI as a person runs it: a subprocess talking to a real server on 127.0.0.1.

``cli`` runs ``cardmint ...`` through a ``cardmint`` shim on PATH (this interpreter,
``-m cardmint.cli``), so the tests exercise the installed package however the venv was made.
The server is either in-process (``start()`` on an ephemeral port, SQLite or PostgreSQL from
tests/conftest.py) or ``cardmint serve`` itself (the quick start, the kill -9 test).
"""

from __future__ import annotations

import os
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig

CLI_TIMEOUT = 120


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """A directory holding a ``cardmint`` executable that runs this interpreter's package."""
    d = tmp_path / "bin"
    d.mkdir()
    shim = d / "cardmint"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cardmint.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return d


def cli_env(bindir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CARDMINT_TOKEN", "CARDMINT_SERVER")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CARDMINT_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture
def server(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    # Small chunks so that a small lot still streams in several chunks.
    config = DomainConfig(lot_chunk=16, stream_chunk=16)
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=8, config=config)
    try:
        yield running
    finally:
        running.stop(grace=0)


@pytest.fixture
def cli(server: Running, bindir: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli("balance", "--card", s)`` as the admin, against ``server``, in ``tmp_path/work``."""
    work = tmp_path / "work"
    work.mkdir()
    token = server.domain.auth.create_token("admin").token
    env = cli_env(bindir, CARDMINT_TOKEN=token, CARDMINT_SERVER=f"127.0.0.1:{server.port}")

    def run(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        e = dict(env) if token is None else {**env, "CARDMINT_TOKEN": token}
        return subprocess.run(
            ["cardmint", *args],
            cwd=work,
            env=e,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    return run


def wait_for_port(proc: subprocess.Popen[str], timeout: float = 60.0) -> int:
    """The port a ``cardmint serve`` child logs ("serving on 127.0.0.1:PORT") on stderr."""
    return int(wait_for_line(proc, r"serving on 127\.0\.0\.1:(\d+)", timeout).group(1))


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """The first line ``proc`` writes to stderr that ``pattern`` matches, as matched.

    Reads the pipe a byte at a time straight from its file descriptor: a buffered
    ``readline`` may pull the next lines into its buffer, where ``select`` no longer sees
    them (the line then arrives unnoticed when another log line shares its write).
    Nothing past that line is consumed: the caller may go on reading ``proc.stderr``."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            byte = os.read(fd, 1)
            if not byte:  # the child closed stderr: it has ended
                break
            line += byte
            if byte == b"\n":
                text = line.decode(errors="replace")
                seen.append(text)
                line = b""
                m = re.search(pattern, text)
                if m:
                    return m
        elif proc.poll() is not None:
            break
    raise AssertionError(f"cardmint serve did not start: {''.join(seen) + line.decode(errors='replace')!r}")
