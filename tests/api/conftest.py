"""A real server on 127.0.0.1 (ephemeral port), on SQLite and on PostgreSQL, and clients.

The PostgreSQL cluster and the per-test database come from tests/conftest.py (``backend``,
``storage_url``: the session's one cluster, a database per test), so the API tests run
against both backends like the storage tests do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cardmint.client import Client
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig


@pytest.fixture
def server(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    # Small chunks so that even a tiny lot exercises chunked minting and streaming.
    config = DomainConfig(lot_chunk=16, stream_chunk=16)
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=16, config=config)
    try:
        yield running
    finally:
        running.stop(grace=0)


@pytest.fixture
def addr(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def connect(server: Running, addr: str) -> Iterator[Callable[..., Client]]:
    """``connect("admin")`` → a client holding a fresh token of that role."""
    clients: list[Client] = []

    def make(role: str, account: str | None = None) -> Client:
        token = server.domain.auth.create_token(role, account=account).token
        c = Client(addr, token, timeout=30.0)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def channel(addr: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(addr) as ch:
        yield ch
