"""Storage health: what ``grpc.health.v1`` answers follows the database.

A probe thread rewrites one row (``storage_probe``, migration 15) every ``period`` seconds,
a write that has to reach the disk (on SQLite a commit and its fsync). When the probe fails,
or a call fails because the database did (``ErrorInterceptor`` reports it), every service
is set NOT_SERVING; the next probe that writes sets them SERVING again. A load balancer's
health check thus moves traffic away while the disk is full or failing, and back once it
recovers. After ``enter_graceful_shutdown`` the servicer keeps NOT_SERVING whatever the
probe finds.

``health_port`` serves the same answers' ``Check`` on a port of its own (``--health-listen``):
threads of its own, no in-flight limit. The main port refuses every call past its limit,
health checks included; a load balancer probing there would take a busy server for a
dead one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from cardmint.server.storage import Storage
from grpc_health.v1 import health, health_pb2

__all__ = ["StorageHealth", "health_port"]

# Threads answering Check on the health port: each answer is a dictionary lookup, so a
# few serve any number of probes; Watch (which holds a thread for as long as it lasts) is
# served on the main port only.
HEALTH_PORT_WORKERS = 2

log = logging.getLogger("cardmint.server.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StorageHealth:
    def __init__(
        self, servicer: health.HealthServicer, storage: Storage, services: Sequence[str], period: float
    ) -> None:
        self._servicer = servicer
        self._storage = storage
        self._services = ("", *services)  # "" is the whole server
        self._period = period
        self._lock = threading.Lock()
        self._serving: bool | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    def _set(self, serving: bool) -> None:
        with self._lock:
            if self._serving == serving:
                return
            self._serving = serving
            for name in self._services:
                self._servicer.set(name, SERVING if serving else NOT_SERVING)
        if serving:
            log.info("storage healthy: SERVING")
        else:
            log.warning("storage failing: NOT_SERVING until a probe writes again")

    def failed(self) -> None:
        """A call failed because the database did: NOT_SERVING now, until a probe writes."""
        self._set(False)

    def probe(self) -> bool:
        """One probe write; the health it sets."""
        try:
            self._storage.probe(timeout=max(0.5, self._period * 5))
        except Exception as e:  # any failure to write is a failing storage
            log.warning("storage probe failed: %s", e)
            self._set(False)
            return False
        self._set(True)
        return True

    def start(self) -> None:
        """Probe once now (the first health answer), then every ``period`` s on a thread."""
        self.probe()
        if self._period <= 0:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(self._period)
                self._wake.clear()
                if not self._stop.is_set():
                    self.probe()

        self._thread = threading.Thread(target=loop, name="cardmint-storage-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def health_port(
    servicer: health.HealthServicer, listen: str, credentials: grpc.ServerCredentials | None
) -> tuple[grpc.Server, int]:
    """A grpc server answering ``grpc.health.v1.Health/Check`` from ``servicer`` on ``listen``
    (TLS with ``credentials``), not started yet; with its bound port. Watch and every other
    method answer UNIMPLEMENTED there."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=HEALTH_PORT_WORKERS, thread_name_prefix="cardmint-health"),
        options=[("grpc.so_reuseport", 0)],  # never share a port silently, as the main one
    )
    check: Any = grpc.unary_unary_rpc_method_handler(
        servicer.Check,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(health.SERVICE_NAME, {"Check": check}),)
    )
    try:
        port = (
            server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        )
    except RuntimeError as e:
        raise OSError(f"cannot serve health on {listen}: {e}") from None
    if port == 0:
        raise OSError(f"cannot serve health on {listen}")
    return server, port
