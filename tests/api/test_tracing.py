"""OpenTelemetry tracing (optional, off by default), on SQLite and PostgreSQL: one SERVER
span per call with its status and request id, storage spans nested under it, and no
request field in any attribute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cardmint.client import CardNotFound, Client
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.server.tracing import TracedStorage, tracer_provider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode


@pytest.fixture
def traced(storage_url: str, tmp_path: Path) -> Iterator[tuple[Running, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = DomainConfig(lot_chunk=16, stream_chunk=16, order_sweep_seconds=0)
    running = start(
        storage_url, "127.0.0.1:0", tmp_path / "var", workers=4, config=config, tracer_provider=provider
    )
    try:
        yield running, exporter
    finally:
        running.stop(grace=0)
        provider.shutdown()


def _server_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER}


def test_calls_and_storage_are_traced(traced: tuple[Running, InMemorySpanExporter], backend: str) -> None:
    running, exporter = traced
    assert isinstance(running.domain.storage, TracedStorage)
    token = running.domain.auth.create_token("admin").token
    with Client(f"127.0.0.1:{running.port}", token) as admin:
        admin.create_product(sku="TR-1", name="Traced", currency="CNY", denominations=[100])
        lot = admin.create_lot("TR-1", 3, 100)
        rows = list(admin.stream_lot(lot.id))
        with pytest.raises(CardNotFound):
            admin.get_card("NOPE")
    spans = _server_spans(exporter)
    create = spans["cardmint.v1.CatalogService/CreateProduct"]
    attrs = dict(create.attributes or {})
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.method"] == "CreateProduct"
    assert attrs["rpc.grpc.status_code"] == 0 and isinstance(attrs["cardmint.token_id"], int)
    assert len(str(attrs["cardmint.request_id"])) == 32
    assert create.status.status_code is StatusCode.UNSET

    failed = spans["cardmint.v1.CardService/GetCard"]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["rpc.grpc.status_code"] == 5  # NOT_FOUND

    assert "cardmint.v1.LotService/StreamLot" in spans and "cardmint.v1.LotService/CreateLot" in spans

    # Storage units of work nest under the call that ran them.
    create_ctx = create.context
    assert create_ctx is not None
    children = [
        s
        for s in exporter.get_finished_spans()
        if s.name.startswith("storage.") and s.parent is not None and s.parent.span_id == create_ctx.span_id
    ]
    assert children and all(
        dict(s.attributes or {})["db.system"] == ("sqlite" if backend == "sqlite" else "postgresql")
        for s in children
    )

    # Attributes carry names, ids and codes of statuses, never a card code or the token.
    everything = " ".join(
        str(v) for s in exporter.get_finished_spans() for v in (s.attributes or {}).values()
    )
    assert token not in everything and all(code not in everything for _, code in rows)


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    plain = start(None, "127.0.0.1:0", tmp_path / "plain", workers=2)
    try:
        assert not isinstance(plain.domain.storage, TracedStorage)
    finally:
        plain.stop(grace=0)


def test_exporters() -> None:
    tracer_provider("console").shutdown()
    with pytest.raises(ValueError, match="trace exporter"):
        tracer_provider("jaeger")
