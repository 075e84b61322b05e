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
from typing import Any

import grpc
from cardmint.server import observe
from cardmint.server.api import SERVICE_NAMES, add_services, interceptors
from cardmint.server.domain import Domain, DomainConfig, Keyring
from cardmint.server.health import StorageHealth
from cardmint.server.storage import AttemptKind, Clock, Storage, open_storage, utcnow
from grpc_health.v1 import health, health_pb2_grpc
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
DEFAULT_HEALTH_PROBE = 2.0  # s between storage health probes (server/health.py)
# Bulk Check chunks are up to 32 MiB of codes; grpc's 4 MiB default would refuse them.
MAX_MESSAGE_BYTES = 64 << 20


def default_db_url(var_dir: Path) -> str:
    return f"sqlite://{(var_dir / 'cardmint.db').resolve()}"


def redact(url: str) -> str:
    """``url`` without its password, for log lines."""
    return re.sub(r"(://[^/:@]+:)[^/@]*@", r"\1***@", url)


def open_domain(
    db_url: str | None,
    var_dir: Path = DEFAULT_VAR,
    config: DomainConfig | None = None,
    *,
    tracer: Any = None,
    clock: Clock = utcnow,
) -> tuple[Storage, Domain]:
    """Storage (migrated) and the domain over it; creates the var directory and keys.
    ``tracer`` (OpenTelemetry): the domain's storage traces every unit of work. ``clock``:
    the time every rule is judged by (reservation and card expiry, limits' windows): the
    storage's clock, which the domain reads through ``tx.now()``; tests pass a manual one."""
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = open_storage(db_url or default_db_url(var_dir), clock=clock)
    try:
        traced: Storage = storage
        if tracer is not None:
            from cardmint.server.tracing import TracedStorage

            traced = TracedStorage(storage, tracer)
        domain = Domain(traced, Keyring.load_or_create(var_dir), config=config)
    except BaseException:
        storage.close()
        raise
    return storage, domain


def attempt_tiers(domain: Domain) -> dict[AttemptKind, tuple[int, int]]:
    """Attempt kind -> (lock window seconds, failures that lock), from the profile's risk tiers."""
    risk = domain.profile.risk
    return {
        AttemptKind.CARD: (risk.card.lock_seconds, risk.card.lock_after),
        AttemptKind.ACCOUNT: (risk.account.lock_seconds, risk.account.lock_after),
        AttemptKind.ADDRESS: (risk.address.lock_seconds, risk.address.lock_after),
        AttemptKind.DEVICE: (risk.device.lock_seconds, risk.device.lock_after),
    }


@dataclass
class Running:
    """A started server. ``port`` is the bound one (useful with ``:0``); ``metrics_port``
    the bound port of the metrics endpoint, None when it is off."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    storage: Storage
    domain: Domain
    metrics_port: int | None = None
    metrics_http: Any = None
    storage_health: StorageHealth | None = None

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` s, close storage."""
        # NOT_SERVING first, so a load balancer's health check moves traffic away while we drain.
        self.health.enter_graceful_shutdown()
        self.domain.close()  # event subscriptions end instead of holding the drain open
        self.server.stop(grace).wait()
        if self.storage_health is not None:
            self.storage_health.stop()
        if self.metrics_http is not None:  # scrapes read the storage: stop them before closing it
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        self.storage.close()


def start(
    db_url: str | None = None,
    listen: str = DEFAULT_LISTEN,
    var_dir: Path = DEFAULT_VAR,
    *,
    workers: int = DEFAULT_WORKERS,
    config: DomainConfig | None = None,
    metrics: str | None = None,
    tracer_provider: Any = None,
    clock: Clock = utcnow,
    health_probe_seconds: float = DEFAULT_HEALTH_PROBE,
) -> Running:
    """``metrics``: ``HOST:PORT`` to serve Prometheus metrics at (``:0``: a free port), or
    None for no metrics endpoint (and no RPC metrics kept). ``tracer_provider``: an
    OpenTelemetry ``TracerProvider`` to trace calls and storage with (cardmint.server.tracing),
    or None for no tracing. ``clock``: what time it is for the rules (``open_domain``).
    ``health_probe_seconds``: how often the storage health probe writes (server/health.py;
    0: once, at start)."""
    tracer = None if tracer_provider is None else tracer_provider.get_tracer("cardmint")
    storage, domain = open_domain(db_url, var_dir, config, tracer=tracer, clock=clock)
    metrics_http: Any = None
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
        rpc_metrics: observe.RpcMetrics | None = None
        if metrics is not None:
            registry, rpc_metrics = observe.metrics_registry(storage, lambda: attempt_tiers(domain))
        health_servicer = health.HealthServicer()
        # SERVING while the storage takes writes, NOT_SERVING while it fails.
        storage_health = StorageHealth(health_servicer, storage, SERVICE_NAMES, health_probe_seconds)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cardmint-rpc"),
            interceptors=interceptors(domain, rpc_metrics, tracer, on_storage_failure=storage_health.failed),
            options=options,
        )
        add_services(server, domain)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        storage_health.start()
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {listen}: {e}") from None
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        metrics_port: int | None = None
        if metrics is not None:
            try:
                metrics_http, metrics_port = observe.serve_metrics(metrics, registry)
            except OSError as e:
                raise OSError(f"cannot serve metrics on {metrics}: {e}") from None
        server.start()
        if domain.config.order_sweep_seconds > 0:
            # Expires unpaid reservations and refunds late deliveries; Domain.close (in
            # Running.stop) ends it and waits for a sweep in progress.
            domain.orders.start_sweeper(domain.config.order_sweep_seconds)
    except BaseException:
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        storage.close()
        raise
    return Running(server, port, health_servicer, storage, domain, metrics_port, metrics_http, storage_health)


def serve(
    db_url: str | None = None,
    listen: str = DEFAULT_LISTEN,
    var_dir: Path = DEFAULT_VAR,
    *,
    grace: float = DEFAULT_GRACE,
    workers: int = DEFAULT_WORKERS,
    profile: str = "platform",
    metrics: str | None = None,
    log_format: str = "auto",
    log_level: str = "info",
    trace: str | None = None,
    health_probe: float = DEFAULT_HEALTH_PROBE,
) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls for up to ``grace`` s; 0.

    Logs go to stderr as JSON lines, or readable text (``log_format``; auto: text on a
    terminal); ``metrics`` serves Prometheus metrics at HOST:PORT; ``trace`` (console or
    otlp) exports OpenTelemetry spans (docs/operations.md)."""
    observe.configure_logging(log_format, log_level.upper(), sys.stderr)
    provider: Any = None
    if trace is not None:
        from cardmint.server.tracing import tracer_provider

        provider = tracer_provider(trace)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    # Installed before start, so a SIGTERM that arrives during start-up still drains.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = start(
        db_url,
        listen,
        var_dir,
        workers=workers,
        config=DomainConfig(profile=profile),
        metrics=metrics,
        tracer_provider=provider,
        health_probe_seconds=health_probe,
    )
    host = listen.rsplit(":", 1)[0]
    where = redact(db_url) if db_url else default_db_url(var_dir)
    # Tests and scripts wait for this line; it names the bound port (``--listen …:0``).
    log.info(
        "serving on %s:%d (%s; compliance profile %s)", host, running.port, where, running.domain.profile.tag
    )
    if metrics is not None:
        log.info("metrics on http://%s:%d/metrics", observe.parse_address(metrics)[0], running.metrics_port)
    while not stopping.wait(0.5):  # wakes up so the main thread can run signal handlers
        pass
    log.info("stopping; draining in-flight calls for up to %g s", grace)
    running.stop(grace)
    if provider is not None:
        provider.shutdown()  # exports the spans still batched
    log.info("stopped")
    return 0
