"""OpenTelemetry tracing of gRPC calls and storage transactions: optional, off by default.

Needs the ``tracing`` extra (``pip install 'cardmint[tracing]'``: opentelemetry-api and
-sdk); OpenTelemetry is imported only when tracing is asked for. ``cardmint serve --trace
console`` prints finished spans to stdout (logs stay on stderr); ``--trace otlp`` sends them
to an OTLP collector (``OTEL_EXPORTER_OTLP_ENDPOINT``; needs
opentelemetry-exporter-otlp-proto-grpc installed).
An embedding program passes its own ``TracerProvider`` to ``start(tracer_provider=...)``.

Spans: one SERVER span per call (``cardmint.v1.CardService/BindCard``: rpc.system,
rpc.service, rpc.method, rpc.grpc.status_code, cardmint.request_id, cardmint.token_id), and
inside it one span per storage unit of work (``storage.run``, ``storage.read``,
``storage.transaction``: db.system). Attributes never hold request fields, so never a code,
token or key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from cardmint.server.storage import Storage, UnitOfWork

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = ["TRACE_EXPORTERS", "TracedStorage", "tracer_provider"]

T = TypeVar("T")
TRACE_EXPORTERS = ("console", "otlp")
_DB_SYSTEM = {"sqlite": "sqlite", "postgres": "postgresql"}


def tracer_provider(exporter: str) -> TracerProvider:
    """An SDK provider exporting in batches to ``exporter`` (``TRACE_EXPORTERS``).
    ImportError when the packages it needs are not installed."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    if exporter not in TRACE_EXPORTERS:
        raise ValueError(f"trace exporter must be one of {', '.join(TRACE_EXPORTERS)}, not {exporter!r}")
    provider = SdkProvider(resource=Resource.create({"service.name": "cardmint"}))
    out: SpanExporter
    if exporter == "console":
        out = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )

        out = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(out))
    return provider


class TracedStorage:
    """``storage`` with a span around every unit of work (``Storage`` protocol)."""

    def __init__(self, storage: Storage, tracer: Tracer) -> None:
        self._storage = storage
        self._tracer = tracer
        self.backend = storage.backend
        self._attrs = {"db.system": _DB_SYSTEM.get(storage.backend, storage.backend)}

    @contextmanager
    def _span(self, name: str, inner: AbstractContextManager[UnitOfWork]) -> Iterator[UnitOfWork]:
        with self._tracer.start_as_current_span(name, attributes=self._attrs), inner as tx:
            yield tx

    def transaction(self) -> AbstractContextManager[UnitOfWork]:
        return self._span("storage.transaction", self._storage.transaction())

    def read(self) -> AbstractContextManager[UnitOfWork]:
        return self._span("storage.read", self._storage.read())

    def run(self, work: Callable[[UnitOfWork], T], attempts: int = 5) -> T:
        with self._tracer.start_as_current_span("storage.run", attributes=self._attrs):
            return self._storage.run(work, attempts)

    def schema_version(self) -> int:
        return self._storage.schema_version()

    def now(self) -> datetime:
        return self._storage.now()

    def stats(self) -> dict[str, int]:
        return self._storage.stats()

    def close(self) -> None:
        self._storage.close()

    def __getattr__(self, name: str) -> Any:  # backend extras (seal_journals, ...)
        return getattr(self._storage, name)
