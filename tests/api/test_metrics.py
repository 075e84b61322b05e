"""Prometheus metrics over HTTP (``start(metrics=...)`` / ``cardmint serve --metrics``), on
SQLite and PostgreSQL: exact call counts per method and status, kernel counters, the
gauges read from the database at scrape time, every documented family present, and no
code or token in a scrape."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cardmint.client import AccountLocked, CardNotFound, Client
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.server.observe import METRIC_FAMILIES, parse_address
from cardmint.v1 import lot_pb2, lot_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def observed(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    config = DomainConfig(lot_chunk=16, stream_chunk=16, order_sweep_seconds=0)
    running = start(
        storage_url, "127.0.0.1:0", tmp_path / "var", workers=16, config=config, metrics="127.0.0.1:0"
    )
    try:
        yield running
    finally:
        running.stop(grace=0)


def _body(running: Running) -> str:
    assert running.metrics_port is not None
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.status == 200
        text: str = answer.read().decode("utf-8")
        return text


def _samples(text: str) -> tuple[set[str], Samples]:
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _client(running: Running, role: str, account: str | None = None) -> Client:
    token = running.domain.auth.create_token(role, account=account).token
    return Client(f"127.0.0.1:{running.port}", token, timeout=30.0)


def _mint(running: Running, sku: str, count: int, face: int) -> lot_pb2.Lot:
    """CreateLot read to its end (the client's ``create_lot`` stops at the lot, and the
    server may still be finishing the call when it returns)."""
    token = running.domain.auth.create_token("admin").token
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        request = lot_pb2.CreateLotRequest(sku=sku, count=count, face_value_minor_units=face)
        events = list(
            lot_pb2_grpc.LotServiceStub(ch).CreateLot(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
            )
        )
    return events[-1].lot


def _rpc(samples: Samples, service: str, method: str, code: str) -> float:
    return _get(
        samples, "cardmint_rpc_calls_total", service=f"cardmint.v1.{service}", method=method, code=code
    )


def test_scrape_counts_calls_and_reads_the_database(observed: Running, backend: str) -> None:
    families, before = _samples(_body(observed))
    # Every documented family is there from the first scrape, before any call.
    for name in (*METRIC_FAMILIES["all"], *METRIC_FAMILIES[backend]):
        assert name in families, name
    assert _get(before, "cardmint_storage_scrape_ok") == 1
    assert _get(before, "cardmint_reservations_live") == 0

    admin, alice = _client(observed, "admin"), _client(observed, "customer", "alice")
    try:
        admin.create_product(sku="OBS-1", name="Observed", currency="CNY", denominations=[500])
        generated = admin.generate(5)
        lot = _mint(observed, "OBS-1", 4, 500)
        assert admin.stock_pool(lot.id).stocked == 4
        order = alice.create_order([("OBS-1", 500, 1)], request_id="obs-order-1")
        checked = admin.check_many([*generated[:2], "not a code"])
        assert len(checked) == 3
        with pytest.raises(CardNotFound):
            admin.get_card("NO-SUCH-SERIAL")
        with pytest.raises(CardNotFound):  # a wrong guess: a failed attempt on alice's account
            alice.bind_card(generated[4])  # well formed, never issued
    finally:
        admin.close()
        alice.close()

    text = _body(observed)
    _, after = _samples(text)
    one = {
        ("CatalogService", "CreateProduct", "OK"),
        ("KeyService", "Generate", "OK"),
        ("LotService", "CreateLot", "OK"),
        ("OrderService", "StockPool", "OK"),
        ("OrderService", "CreateOrder", "OK"),
        ("KeyService", "Check", "OK"),
        ("CardService", "GetCard", "NOT_FOUND"),
        ("CardService", "BindCard", "NOT_FOUND"),
    }
    for service, method, code in one:
        assert _rpc(after, service, method, code) == 1, (service, method, code)
        labels = {"service": f"cardmint.v1.{service}", "method": method, "code": code}
        assert _get(after, "cardmint_rpc_duration_seconds_count", **labels) == 1
        assert _get(after, "cardmint_rpc_duration_seconds_bucket", **labels, le="+Inf") == 1
        assert _get(after, "cardmint_rpc_in_flight", service=labels["service"], method=method) == 0
    assert _rpc(after, "CardService", "GetCard", "OK") == 0
    total = sum(v for (name, _), v in after.items() if name == "cardmint_rpc_calls_total")
    assert total == len(one)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    # Process-wide counters (other servers in this process count too): compared as deltas.
    assert delta("cardmint_kernel_codes_total", op="generate") == 5
    assert delta("cardmint_kernel_codes_total", op="mint") == 4
    assert delta("cardmint_kernel_codes_total", op="check") == 3
    assert delta("cardmint_kernel_codes_total", op="open") == 0  # nothing exported
    assert delta("cardmint_kernel_seconds_total", op="mint") > 0
    assert delta("cardmint_bind_failures_total", reason="CARD_NOT_FOUND") == 1

    # Read from the database at the scrape.
    assert _get(after, "cardmint_pool_cards", sku="OBS-1", state="available") == 3
    assert _get(after, "cardmint_pool_cards", sku="OBS-1", state="reserved") == 1
    assert (_get(after, "cardmint_reservations_live"), _get(after, "cardmint_reserved_codes")) == (1, 1)
    assert _get(after, "cardmint_failed_attempts", kind="account") == 1
    assert _get(after, "cardmint_locked_subjects", kind="account") == 0
    with observed.storage.read() as tx:
        chain = len(tx.audit_entries())
    assert chain > 0 and _get(after, "cardmint_audit_chain_length") == chain
    if backend == "postgres":
        assert _get(after, "cardmint_db_pool_connections", state="size") >= 1
        assert _get(after, "cardmint_db_pool_connections", state="max") >= 1
    else:
        assert _get(after, "cardmint_db_group_commits_total") > _get(
            before, "cardmint_db_group_commits_total"
        )

    # Never a code (generated, or the ones the order holds) or a token in a scrape.
    assert order.id > 0
    assert all(c not in text and c.replace("-", "") not in text for c in generated)


def test_locked_subjects_and_concurrent_counting(observed: Running) -> None:
    """Many threads at once count exactly; the lock gauge follows the profile's limit."""
    limit = observed.domain.profile.risk.account.lock_after
    bob = _client(observed, "customer", "bob")
    admin = _client(observed, "admin")
    try:
        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(lambda _: admin.generate(1), range(40)))
        guess = batches[0][0]  # never issued
        for _ in range(limit - 1):
            with pytest.raises(CardNotFound):
                bob.bind_card(guess, challenge_passed=True)
        for _ in range(2):  # the guess that reaches the limit locks, and the next is refused
            with pytest.raises(AccountLocked):
                bob.bind_card(guess, challenge_passed=True)
    finally:
        bob.close()
        admin.close()
    _, samples = _samples(_body(observed))
    assert _rpc(samples, "KeyService", "Generate", "OK") == 40
    assert _get(samples, "cardmint_rpc_duration_seconds_count", service="cardmint.v1.KeyService",
                method="Generate", code="OK") == 40  # fmt: skip
    assert _rpc(samples, "CardService", "BindCard", "NOT_FOUND") == limit - 1
    assert _rpc(samples, "CardService", "BindCard", "RESOURCE_EXHAUSTED") == 2
    assert _get(samples, "cardmint_locked_subjects", kind="account") == 1
    assert _get(samples, "cardmint_failed_attempts", kind="account") == limit
    assert _get(samples, "cardmint_failed_attempts", kind="address") == limit
    assert _get(samples, "cardmint_locked_subjects", kind="address") == 0


def test_no_metrics_endpoint_by_default(storage_url: str, tmp_path: Path) -> None:
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=2)
    try:
        assert running.metrics_port is None and running.metrics_http is None
    finally:
        running.stop(grace=0)


@pytest.mark.parametrize("addr", ["9464", "host:", ":9464x", "127.0.0.1:70000"])
def test_metrics_address_must_be_host_port(addr: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(addr)


def test_parse_address_ipv6() -> None:
    assert parse_address("[::1]:9464") == ("::1", 9464)


def test_serve_flag_starts_the_endpoint(tmp_path: Path) -> None:
    """``cardmint serve --metrics 127.0.0.1:0`` logs where the metrics are; they answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardmint.cli.serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
         "--log-format", "text"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True, env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        url = None
        for _ in range(200):  # bounded: start-up writes a handful of lines
            line = proc.stderr.readline()
            if not line:
                break
            if m := re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line):
                url = m.group(1)
                break
        assert url is not None
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode("utf-8")
        assert "cardmint_audit_chain_length" in text and "cardmint_db_writer_queue" in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        if proc.stderr is not None:
            proc.stderr.close()
