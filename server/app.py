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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from cardmint.server import observe
from cardmint.server.api import SERVICE_NAMES, add_services, interceptors
from cardmint.server.api.admission import AdmissionExecutor, AdmissionInterceptor
from cardmint.server.config import ServeConfig, StorageOptions, default_config
from cardmint.server.domain import Domain, DomainConfig, Keyring
from cardmint.server.health import StorageHealth, health_port
from cardmint.server.storage import AttemptKind, Clock, Storage, open_storage, utcnow
from cardmint.server.tls import TlsFiles, server_credentials
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_IN_FLIGHT",
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
# Threads for unary calls. Few on purpose: every runnable worker is one more thread grpcio's
# one serving thread queues behind for the GIL; past a handful, a server offered more than it
# answers stops taking calls from grpc core fast enough to refuse the excess at once
# (server/api/admission.py, AdmissionExecutor). Raise it when each call waits long on a far
# database (network round trips), not for speed on a near one.
DEFAULT_WORKERS = 4
# Threads for streaming calls (subscriptions, bulk checks, lot minting and export): they
# hold a thread for as long as they last and mostly wait.
DEFAULT_STREAM_WORKERS = 32
DEFAULT_MAX_UNSERVED = 2  # seconds; see start()
# Calls in flight (queued for a worker or running) before new ones are refused at once
# (RESOURCE_EXHAUSTED; server/api/admission.py). Twice the 64 concurrent clients the
# benchmarks run, low enough that the queue ahead of an admitted call stays a fraction of a
# second at the few hundred calls/s a process answers.
DEFAULT_MAX_IN_FLIGHT = 128
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
    keyring: Keyring | None = None,
    storage_options: StorageOptions | None = None,
    clock: Clock = utcnow,
) -> tuple[Storage, Domain]:
    """Storage (migrated) and the domain over it; creates the var directory and keys.
    ``tracer`` (OpenTelemetry): the domain's storage traces every unit of work.
    ``keyring``: the keys (default: the files under ``var_dir/keys``, created on first
    start); ``storage_options``: open_storage's pool and timeout settings. ``clock``: the
    time every rule is judged by (reservation and card expiry, limits' windows): the
    storage's clock, which the domain reads through ``tx.now()``; tests pass a manual one."""
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = keyring if keyring is not None else Keyring.load_or_create(var_dir)
    url = db_url or default_db_url(var_dir)
    storage = (
        open_storage(url, clock=clock, **storage_options)
        if storage_options
        else open_storage(url, clock=clock)
    )
    try:
        traced: Storage = storage
        if tracer is not None:
            from cardmint.server.tracing import TracedStorage

            traced = TracedStorage(storage, tracer)
        domain = Domain(traced, keys, config=config)
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
    admission: AdmissionInterceptor | None = None
    pool: AdmissionExecutor | None = None  # the workers; ended by stop()
    storage_health: StorageHealth | None = None
    health_server: grpc.Server | None = None  # the health port's (``health_listen``)
    health_port: int | None = None

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` s, close storage."""
        # NOT_SERVING first, so a load balancer's health check moves traffic away while we drain.
        self.health.enter_graceful_shutdown()
        self.domain.close()  # event subscriptions end instead of holding the drain open
        self.server.stop(grace).wait()
        if self.health_server is not None:  # answered NOT_SERVING through the drain
            self.health_server.stop(0).wait()
        if self.pool is not None:  # its idle workers would otherwise wait for calls forever
            self.pool.shutdown(wait=False)
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
    stream_workers: int = DEFAULT_STREAM_WORKERS,
    config: DomainConfig | None = None,
    metrics: str | None = None,
    tracer_provider: Any = None,
    tls: TlsFiles | None = None,
    keyring: Keyring | None = None,
    storage_options: StorageOptions | None = None,
    max_in_flight: int | None = DEFAULT_MAX_IN_FLIGHT,
    max_unserved_seconds: int = DEFAULT_MAX_UNSERVED,
    clock: Clock = utcnow,
    health_probe_seconds: float = DEFAULT_HEALTH_PROBE,
    health_listen: str | None = None,
) -> Running:
    """``metrics``: ``HOST:PORT`` to serve Prometheus metrics at (``:0``: a free port), or
    None for no metrics endpoint (and no RPC metrics kept). ``tracer_provider``: an
    OpenTelemetry ``TracerProvider`` to trace calls and storage with (cardmint.server.tracing),
    or None for no tracing. ``tls``: serve TLS (mutual TLS with a client CA) instead of
    plaintext (cardmint.server.tls). ``keyring`` and ``storage_options``: as open_domain.
    ``workers``/``stream_workers``: threads for unary and for streaming calls (the
    defaults' reasons: DEFAULT_WORKERS). ``max_in_flight``: calls in flight before new ones
    are refused at once with RESOURCE_EXHAUSTED (server/api/admission.py); None or 0: no
    limit (calls queue unbounded).
    ``max_unserved_seconds``: how long grpc core may hold a call the serving thread has not
    taken yet before dropping it (0: grpc's default, 30 s). ``clock``: what
    time it is for the rules (``open_domain``). ``health_probe_seconds``: how often the
    storage health probe writes (server/health.py; 0: once, at start). ``health_listen``:
    ``HOST:PORT`` to answer health checks at too, outside the in-flight limit
    (server/health.py, ``health_port``; ``:0``: a free port), or None."""
    credentials = server_credentials(tls) if tls is not None else None  # bad files: before anything
    tracer = None if tracer_provider is None else tracer_provider.get_tracer("cardmint")
    storage, domain = open_domain(
        db_url,
        var_dir,
        config,
        tracer=tracer,
        keyring=keyring,
        storage_options=storage_options,
        clock=clock,
    )
    metrics_http: Any = None
    health_server: grpc.Server | None = None
    storage_health: StorageHealth | None = None
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
        if max_unserved_seconds:
            # The one queue admission control cannot see: calls grpc core holds until grpcio's
            # serving thread takes them. When that thread falls behind (a GIL-bound process
            # offered several times what it answers), those calls would wait until their
            # deadline; past this age grpc drops them instead (CANCELLED, no code of ours ran).
            options.append(("grpc.server_max_unrequested_time_in_server", max_unserved_seconds))
        pool = AdmissionExecutor(workers, thread_name_prefix="cardmint-rpc", stream_workers=stream_workers)
        # Routes each call to its lane (unary or stream), and counts the refusals.
        admission = AdmissionInterceptor(pool, max_in_flight or None)
        rpc_metrics: observe.RpcMetrics | None = None
        if metrics is not None:
            registry, rpc_metrics = observe.metrics_registry(
                storage,
                lambda: attempt_tiers(domain),
                observe.AdmissionCollector(lambda: pool.in_flight, lambda: admission.refused),
            )
        health_servicer = health.HealthServicer()
        # SERVING while the storage takes writes, NOT_SERVING while it fails.
        storage_health = StorageHealth(health_servicer, storage, SERVICE_NAMES, health_probe_seconds)
        server = grpc.server(
            pool,  # type: ignore[arg-type]  # grpc only calls submit(); its stub names ThreadPoolExecutor
            interceptors=interceptors(
                domain, rpc_metrics, tracer, admission, on_storage_failure=storage_health.failed
            ),
            options=options,
            # The limit itself: grpc refuses in its serving thread (RESOURCE_EXHAUSTED, no
            # details), before any handler or worker; the cheapest refusal grpcio has, so
            # that under several times the load it answers, a server still turns the excess
            # away at once. (A refusal of ours, with RetryInfo, costs a worker and two more
            # trips through the serving thread: measured, it halved what an overloaded
            # server answered and left its refusals waiting ~2 s.) The admission
            # interceptor counts on the same in-flight count, so it refuses only in the
            # moment its count runs one ahead of grpc's.
            maximum_concurrent_rpcs=max_in_flight or None,
        )
        add_services(server, domain)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        storage_health.start()
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            if credentials is not None:
                port = server.add_secure_port(listen, credentials)
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {listen}: {e}") from None
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        health_bound: int | None = None
        if health_listen is not None:
            health_server, health_bound = health_port(health_servicer, health_listen, credentials)
        metrics_port: int | None = None
        if metrics is not None:
            try:
                metrics_http, metrics_port = observe.serve_metrics(metrics, registry)
            except OSError as e:
                raise OSError(f"cannot serve metrics on {metrics}: {e}") from None
        server.start()
        if health_server is not None:
            health_server.start()
        if domain.config.order_sweep_seconds > 0:
            # Expires unpaid reservations and refunds late deliveries; Domain.close (in
            # Running.stop) ends it and waits for a sweep in progress.
            domain.orders.start_sweeper(domain.config.order_sweep_seconds)
        if domain.config.housekeeping_seconds > 0:
            domain.start_housekeeping(domain.config.housekeeping_seconds)
    except BaseException:
        if storage_health is not None:  # its probe would go on writing to a closed storage
            storage_health.stop()
        if health_server is not None:
            health_server.stop(0)
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        storage.close()
        raise
    return Running(
        server,
        port,
        health_servicer,
        storage,
        domain,
        metrics_port,
        metrics_http,
        admission,
        pool,
        storage_health,
        health_server,
        health_bound,
    )


def serve(settings: ServeConfig | None = None) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls for up to ``grace`` s; 0.

    ``settings``: the effective configuration (server/config.py; default: the defaults).
    Logs go to stderr as JSON lines, or readable text (``log_format``; auto: text on a
    terminal); ``metrics`` serves Prometheus metrics at HOST:PORT; ``trace`` (console or
    otlp) exports OpenTelemetry spans (docs/operations.md). With ``processes`` > 1, a
    fleet of server processes on the one database (cardmint.server.fleet)."""
    cfg = settings if settings is not None else default_config()
    observe.configure_logging(cfg.log_format, cfg.log_level.upper(), sys.stderr)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    # Installed before start, so a SIGTERM that arrives during start-up still drains.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if cfg.file is not None:
        log.info("configuration from %s", cfg.file)
    cfg.var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if cfg.processes > 1:
        from cardmint.server.fleet import serve_fleet

        return serve_fleet(cfg, stopping)
    return serve_one(cfg, cfg.listen, cfg.metrics, stopping, health_listen=cfg.health_listen)


def serve_one(
    cfg: ServeConfig,
    listen: str,
    metrics: str | None,
    stopping: threading.Event,
    on_serving: Callable[[int, int | None], object] | None = None,
    health_listen: str | None = None,
) -> int:
    """One server process with ``cfg`` on ``listen`` (metrics on ``metrics``, health checks
    also on ``health_listen``) until
    ``stopping`` is set, then drain; 0. ``on_serving(port, metrics_port)`` once it serves
    (a fleet's child tells its parent, cardmint.server.fleet)."""
    provider: Any = None
    if cfg.trace is not None:
        from cardmint.server.tracing import tracer_provider

        provider = tracer_provider(cfg.trace)
    tls = cfg.tls_files()
    running = start(
        cfg.db,
        listen,
        cfg.var_dir,
        workers=cfg.workers,
        stream_workers=cfg.stream_workers,
        config=cfg.domain_config(),
        metrics=metrics,
        tracer_provider=provider,
        tls=tls,
        keyring=Keyring.load(cfg.keys_path),
        storage_options=cfg.storage_options(),
        max_in_flight=cfg.max_in_flight,
        max_unserved_seconds=cfg.max_unserved_seconds,
        health_probe_seconds=cfg.health_probe,
        health_listen=health_listen,
    )
    host = listen.rsplit(":", 1)[0]
    where = redact(cfg.db_url)
    # Tests and scripts wait for this line; it names the bound port (``--listen …:0``).
    security = "plaintext" if tls is None else ("mutual TLS" if tls.client_ca is not None else "TLS")
    log.info(
        "serving on %s:%d (%s; %s; compliance profile %s)",
        host,
        running.port,
        security,
        where,
        running.domain.profile.tag,
    )
    if metrics is not None:
        log.info("metrics on http://%s:%d/metrics", observe.parse_address(metrics)[0], running.metrics_port)
    if health_listen is not None:
        log.info("health checks also on %s:%d", health_listen.rsplit(":", 1)[0], running.health_port)
    if on_serving is not None:
        on_serving(running.port, running.metrics_port)
    while not stopping.wait(0.5):  # wakes up so the main thread can run signal handlers
        pass
    log.info("stopping; draining in-flight calls for up to %g s", cfg.grace)
    running.stop(cfg.grace)
    if provider is not None:
        provider.shutdown()  # exports the spans still batched
    log.info("stopped")
    return 0
