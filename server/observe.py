"""Observability: Prometheus metrics, structured logs, and a request id for every call.

Metrics (docs/operations.md lists them): ``cardmint serve --metrics ADDR`` serves them over
HTTP from a registry of the server's own. Three sources feed it:

- ``RpcMetrics``: calls and their latency per method and status code, kept by
  ``cardmint.server.api.observe.ObserveInterceptor`` (outermost, so it sees the final
  status of every call);
- process counters the domain bumps where it does the work (``kernel_done``, ``bind_failed``):
  module globals, thread-safe, cheap, kept whether or not anything scrapes them;
- ``StorageCollector``: read at scrape time from the database (pool stock, live
  reservations, audit chain length, failed attempts and locks) in one read transaction of a
  few aggregate queries, one scrape at a time, plus the database pool's own counters.

No label or value is ever a code, a token or key material: labels are method names, status
codes, SKUs, pool states, attempt kinds and error reasons.

Logs: ``configure_logging`` installs one handler on the root logger, JSON lines or readable
text, stamped with the request id of the call being handled (``CALL``, a context variable).
``ObserveInterceptor`` (cardmint.server.api.observe) gives every call a request id (the caller's ``x-request-id`` when
it is sane, else a fresh one), puts it in every log line written while the call is handled
(a context variable), sends it back in the trailing metadata (success or error, unary or
streaming) and writes one access-log line per call with the principal's token id, never the
token.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import random
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "ACCESS_LOG",
    "BIND_FAILURES",
    "CALL",
    "KERNEL_CODES",
    "KERNEL_SECONDS",
    "METRIC_FAMILIES",
    "REQUEST_ID_HEADER",
    "CallInfo",
    "ProcessCollector",
    "RpcMetrics",
    "StorageCollector",
    "bind_failed",
    "configure_logging",
    "current_call",
    "incoming_request_id",
    "kernel_done",
    "metrics_registry",
    "parse_address",
    "serve_metrics",
]

REQUEST_ID_HEADER = "x-request-id"
ACCESS_LOG = logging.getLogger("cardmint.access")
log = logging.getLogger("cardmint.server.observe")

# -- process counters (the domain bumps them) ---------------------------------------------

# Not registered anywhere: ``ProcessCollector`` exposes them in each server's registry, so
# several servers in one process (the tests) each serve them.
KERNEL_CODES = Counter(
    "cardmint_kernel_codes",
    "Codes through a kernel operation: check (bulk check rows), correct (typo corrections "
    "tried), generate (KeyService.Generate), mint (lot codes minted and sealed), open "
    "(sealed codes opened for an export).",
    ["op"],
    registry=None,
)
KERNEL_SECONDS = Counter(
    "cardmint_kernel_seconds",
    "Seconds spent in kernel operations, by op (throughput = rate(codes) / rate(seconds)).",
    ["op"],
    registry=None,
)
BIND_FAILURES = Counter(
    "cardmint_bind_failures",
    "Binds refused, by error reason (CARD_NOT_FOUND is a wrong guess; ACCOUNT_LOCKED, "
    "CARD_LOCKED and CLIENT_LOCKED are refusals under a lock).",
    ["reason"],
    registry=None,
)
KERNEL_OPS = ("check", "correct", "generate", "mint", "open")


def kernel_done(op: str, codes: int, seconds: float) -> None:
    """Count ``codes`` through kernel operation ``op`` taking ``seconds``."""
    KERNEL_CODES.labels(op=op).inc(codes)
    KERNEL_SECONDS.labels(op=op).inc(seconds)


def bind_failed(reason: str) -> None:
    BIND_FAILURES.labels(reason=reason).inc()


class ProcessCollector(Collector):
    """The module's process counters, for a server's registry."""

    def collect(self) -> Iterable[Any]:
        for metric in (KERNEL_CODES, KERNEL_SECONDS, BIND_FAILURES):
            yield from metric.collect()


# Pre-create the kernel ops so that every family is present from the first scrape.
for _op in KERNEL_OPS:
    KERNEL_CODES.labels(op=_op)
    KERNEL_SECONDS.labels(op=_op)


# -- per-call state: request id, principal ------------------------------------------------


@dataclass
class CallInfo:
    """What the logs know of the call being handled."""

    request_id: str
    method: str
    token_id: int | None = None
    span: Any = None  # the call's OpenTelemetry span, when tracing (cardmint.server.tracing)


CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("cardmint_call", default=None)
# Ids a caller may choose: short, printable, no spaces or separators a log reader would trip on.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")


def current_call() -> CallInfo | None:
    return CALL.get()


# New request ids: 128 bits from a generator seeded once from the OS (again in a forked
# child), not os.urandom per call: a request id must be unique, not secret (it grants
# nothing), and os.urandom lets go of the GIL, a thread switch on every call of a busy server.
_ids = random.Random()


def _reseed_ids() -> None:
    _ids.seed(os.urandom(32))


_reseed_ids()
os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return f"{_ids.getrandbits(128):032x}"


def incoming_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            text = value if isinstance(value, str) else value.decode("ascii", "replace")
            return text if _SANE_ID.fullmatch(text) else None
    return None


# -- RPC metrics and the interceptor --------------------------------------------------------

# Latency buckets from 0.5 ms (an in-memory check) to 60 s (a big lot or export).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RpcMetrics:
    """Call counters, latency histograms and calls in flight, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["service", "method", "code"]
        self.calls = Counter(
            "cardmint_rpc_calls", "gRPC calls handled, by service, method and status code.", labels,
            registry=registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "cardmint_rpc_duration_seconds",
            "gRPC call latency (handler start to last message or status), by service, method and code.",
            labels,
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "cardmint_rpc_in_flight",
            "gRPC calls being handled now.",
            ["service", "method"],
            registry=registry,
        )

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        self.calls.labels(service, method, code).inc()
        self.seconds.labels(service, method, code).observe(seconds)


# -- scrape-time database gauges ------------------------------------------------------------


class StorageCollector(Collector):
    """Gauges read from the database when scraped (``UnitOfWork.gauges``) and the database
    pool's counters (``Storage.stats``). Scrapes run one at a time, in a read transaction,
    so a scraper can never hold more than one connection or any row lock."""

    def __init__(self, storage: Any, tiers: Callable[[], Mapping[Any, tuple[int, int]]]) -> None:
        self._storage = storage
        self._tiers = tiers
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Any]:
        pool = GaugeMetricFamily(
            "cardmint_pool_cards", "Cards in the card-shop pool, by product SKU and pool state.",
            labels=["sku", "state"],
        )  # fmt: skip
        reservations = GaugeMetricFamily(
            "cardmint_reservations_live", "Orders reserved (unpaid) whose deadline is still ahead."
        )
        reserved = GaugeMetricFamily("cardmint_reserved_codes", "Codes held by live reservations.")
        audit = GaugeMetricFamily("cardmint_audit_chain_length", "Entries in the chained audit log.")
        attempts = GaugeMetricFamily(
            "cardmint_failed_attempts",
            "Failed bind attempts counted in the current lock window, by subject kind.",
            labels=["kind"],
        )
        locked = GaugeMetricFamily(
            "cardmint_locked_subjects",
            "Subjects (cards, accounts, addresses, devices) locked now for too many failed attempts.",
            labels=["kind"],
        )
        up = GaugeMetricFamily("cardmint_storage_scrape_ok", "1 when the database gauges were read.")
        tiers = self._tiers()
        try:
            with self._lock, self._storage.read() as tx:
                g = tx.gauges(tiers)
        except Exception:
            log.exception("metrics: reading the database gauges failed")
            up.add_metric([], 0)
            yield up
        else:
            for (sku, state), n in sorted(g.pool.items()):
                pool.add_metric([sku, state], n)
            reservations.add_metric([], g.reservations)
            reserved.add_metric([], g.reserved_codes)
            audit.add_metric([], g.audit_length)
            for kind in sorted(tiers):
                attempts.add_metric([kind.value], g.attempts.get(kind.value, 0))
                locked.add_metric([kind.value], g.locked.get(kind.value, 0))
            up.add_metric([], 1)
            yield from (up, pool, reservations, reserved, audit, attempts, locked)
        yield from self._db_pool()

    def _db_pool(self) -> Iterable[Any]:
        stats: dict[str, int] = self._storage.stats()
        backend = str(self._storage.backend)
        if backend == "postgres":
            conns = GaugeMetricFamily(
                "cardmint_db_pool_connections",
                "PostgreSQL pool connections: size (open), available (idle), min and max.",
                labels=["state"],
            )
            for state in ("size", "available", "min", "max"):
                conns.add_metric([state], stats.get(f"pool_{state}", 0))
            waiting = GaugeMetricFamily(
                "cardmint_db_pool_requests_waiting", "Callers waiting for a pooled PostgreSQL connection."
            )
            waiting.add_metric([], stats.get("requests_waiting", 0))
            yield from (conns, waiting)
        else:
            queue = GaugeMetricFamily(
                "cardmint_db_writer_queue", "SQLite units of work waiting for the next group commit."
            )
            queue.add_metric([], stats.get("writer_queue", 0))
            commits = CounterMetricFamily(
                "cardmint_db_group_commits", "SQLite group commits (each covers one or more units of work)."
            )
            commits.add_metric([], stats.get("group_commits", 0))
            yield from (queue, commits)


# Every family a scrape shows (with ``_total``, ``_bucket``... suffixes as Prometheus adds
# them); docs/operations.md describes each, and a test checks the list against a scrape.
METRIC_FAMILIES: dict[str, tuple[str, ...]] = {
    "all": (
        "cardmint_rpc_calls",
        "cardmint_rpc_duration_seconds",
        "cardmint_rpc_in_flight",
        "cardmint_kernel_codes",
        "cardmint_kernel_seconds",
        "cardmint_bind_failures",
        "cardmint_storage_scrape_ok",
        "cardmint_pool_cards",
        "cardmint_reservations_live",
        "cardmint_reserved_codes",
        "cardmint_audit_chain_length",
        "cardmint_failed_attempts",
        "cardmint_locked_subjects",
        "cardmint_admission_in_flight",
        "cardmint_admission_refused",
    ),
    "postgres": ("cardmint_db_pool_connections", "cardmint_db_pool_requests_waiting"),
    "sqlite": ("cardmint_db_writer_queue", "cardmint_db_group_commits"),
}


class AdmissionCollector(Collector):
    """The calls in flight and the calls refused past the limit, read at a scrape. Refused
    calls never reach the RPC metrics' interceptor alive (grpc refuses most of them in its
    serving thread, before any handler), so they are counted apart."""

    def __init__(self, in_flight: Callable[[], int], refused: Callable[[], int]) -> None:
        self._in_flight = in_flight
        self._refused = refused

    def collect(self) -> Iterable[Any]:
        flight = GaugeMetricFamily(
            "cardmint_admission_in_flight",
            "Calls queued for a worker or running: the count the in-flight limit is held to.",
        )
        flight.add_metric([], self._in_flight())
        refused = CounterMetricFamily(
            "cardmint_admission_refused",
            "Calls refused at once (RESOURCE_EXHAUSTED) because the in-flight limit was reached; "
            "health and reflection calls not counted.",
        )
        refused.add_metric([], self._refused())
        yield from (flight, refused)


def metrics_registry(
    storage: Any,
    tiers: Callable[[], Mapping[Any, tuple[int, int]]],
    admission: AdmissionCollector | None = None,
) -> tuple[CollectorRegistry, RpcMetrics]:
    """A server's registry: its RPC metrics, the process counters, the database gauges and
    (when given) the admission figures."""
    registry = CollectorRegistry(auto_describe=False)
    rpc = RpcMetrics(registry)
    registry.register(ProcessCollector())
    registry.register(StorageCollector(storage, tiers))
    if admission is not None:
        registry.register(admission)
    return registry, rpc


def parse_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0 picks a free one) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address must be HOST:PORT, not {addr!r}")
    return host.strip("[]"), int(port)


def serve_metrics(addr: str, registry: CollectorRegistry) -> tuple[Any, int]:
    """Serve ``registry`` over HTTP at ``addr`` on a daemon thread; (server, bound port).
    ``server.shutdown()`` then ``server.server_close()`` stops it."""
    from prometheus_client import start_http_server

    host, port = parse_address(addr)
    httpd, _ = start_http_server(port, addr=host, registry=registry)
    return httpd, int(httpd.server_port)


# -- logging --------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the call being handled (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            info = CALL.get()
            record.request_id = info.request_id if info is not None else None
        return True


def _when(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, the call's fields
    (access log), exc (a traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _when(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        fields = getattr(record, "cardmint", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-28T12:00:00.000Z INFO cardmint.access CardService/Bind OK 2.1 ms [rid] token_id=3``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_when(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        rid = getattr(record, "request_id", None)
        if rid is not None:
            line += f" [{rid}]"
        fields = getattr(record, "cardmint", None)
        if isinstance(fields, dict) and fields.get("token_id") is not None:
            line += f" token_id={fields['token_id']}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


LOG_FORMATS = ("auto", "json", "text")


def configure_logging(
    fmt: str = "auto", level: int | str = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) as JSON or text, replacing the handler a
    previous call installed. ``auto``: text when the stream is a terminal, else JSON."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    out = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "text" if out.isatty() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler.set_name("cardmint")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "cardmint"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
