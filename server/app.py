"""The server process: configuration → storage → domain → api → ``grpc.server``.

``start`` builds and starts a server and returns a handle (tests use it in-process);
``serve`` is ``cardmint serve``: start, wait for SIGTERM/SIGINT, drain, exit 0.

Defaults make one command work on a fresh clone: SQLite at ``./var/cardmint.db`` and the
digest and sealing keys under ``./var/keys/`` (created on first start, mode 0600), listening
on 127.0.0.1:50051. ``--db postgresql://…`` uses PostgreSQL; the keys stay in the var
directory, so every server process sharing a database must be given the same keys.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from cardmint.server.api import SERVICE_NAMES, add_services, interceptors
from cardmint.server.domain import Domain, DomainConfig, Keyring
from cardmint.server.storage import Storage, open_storage
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LISTEN",
    "DEFAULT_VAR",
    "MAX_MESSAGE_BYTES",
    "Running",
    "default_db_url",
    "open_domain",
    "serve",
    "start",
]

log = logging.getLogger("cardmint.server")

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_VAR = Path("var")
DEFAULT_GRACE = 30.0
DEFAULT_WORKERS = 32
# Bulk Check chunks are up to 32 MiB of codes; grpc's 4 MiB default would refuse them.
MAX_MESSAGE_BYTES = 64 << 20


def default_db_url(var_dir: Path) -> str:
    return f"sqlite://{(var_dir / 'cardmint.db').resolve()}"


def redact(url: str) -> str:
    """``url`` without its password, for log lines."""
    return re.sub(r"(://[^/:@]+:)[^/@]*@", r"\1***@", url)


def open_domain(
    db_url: str | None, var_dir: Path = DEFAULT_VAR, config: DomainConfig | None = None
) -> tuple[Storage, Domain]:
    """Storage (migrated) and the domain over it; creates the var directory and keys."""
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = open_storage(db_url or default_db_url(var_dir))
    try:
        domain = Domain(storage, Keyring.load_or_create(var_dir), config=config)
    except BaseException:
        storage.close()
        raise
    return storage, domain


@dataclass
class Running:
    """A started server. ``port`` is the bound one (useful with ``:0``)."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    storage: Storage
    domain: Domain

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` s, close storage."""
        # NOT_SERVING first, so a load balancer's health check moves traffic away while we drain.
        self.health.enter_graceful_shutdown()
        self.domain.close()  # event subscriptions end instead of holding the drain open
        self.server.stop(grace).wait()
        self.storage.close()


def start(
    db_url: str | None = None,
    listen: str = DEFAULT_LISTEN,
    var_dir: Path = DEFAULT_VAR,
    *,
    workers: int = DEFAULT_WORKERS,
    config: DomainConfig | None = None,
) -> Running:
    storage, domain = open_domain(db_url, var_dir, config)
    try:
        # Lots left "minting" by a process that died are voided, so they never look alive.
        abandoned = domain.abandon_stale_lots()
        if abandoned:
            log.warning("voided %d lot(s) abandoned while minting: %s", len(abandoned), abandoned)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Two servers must never share a port silently (the second would steal calls).
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cardmint-rpc"),
            interceptors=interceptors(domain),
            options=options,
        )
        add_services(server, domain)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", *SERVICE_NAMES):  # "" is the whole server
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {listen}: {e}") from None
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        server.start()
        if domain.config.order_sweep_seconds > 0:
            # Expires unpaid reservations and refunds late deliveries; Domain.close (in
            # Running.stop) ends it and waits for a sweep in progress.
            domain.orders.start_sweeper(domain.config.order_sweep_seconds)
    except BaseException:
        storage.close()
        raise
    return Running(server, port, health_servicer, storage, domain)


def serve(
    db_url: str | None = None,
    listen: str = DEFAULT_LISTEN,
    var_dir: Path = DEFAULT_VAR,
    *,
    grace: float = DEFAULT_GRACE,
    workers: int = DEFAULT_WORKERS,
    profile: str = "platform",
) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls for up to ``grace`` s; 0."""
    logging.basicConfig(level=logging.INFO, format="cardmint: %(message)s", stream=sys.stderr)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    # Installed before start, so a SIGTERM that arrives during start-up still drains.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = start(db_url, listen, var_dir, workers=workers, config=DomainConfig(profile=profile))
    host = listen.rsplit(":", 1)[0]
    where = redact(db_url) if db_url else default_db_url(var_dir)
    # Tests and scripts wait for this line; it names the bound port (``--listen …:0``).
    print(
        f"cardmint: serving on {host}:{running.port} ({where}; compliance profile {running.domain.profile.tag})",
        file=sys.stderr,
        flush=True,
    )
    while not stopping.wait(0.5):  # wakes up so the main thread can run signal handlers
        pass
    print(f"cardmint: stopping; draining in-flight calls for up to {grace:g} s", file=sys.stderr, flush=True)
    running.stop(grace)
    print("cardmint: stopped", file=sys.stderr, flush=True)
    return 0
