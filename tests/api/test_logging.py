"""Structured logs and request ids, on SQLite and PostgreSQL: every call answers with an
``x-request-id`` trailer (the caller's when sane), unary and streaming, success and error;
one access-log line per call with the principal's token id; and no log line ever holds a
secret code, a bearer token or key material, even at DEBUG."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cardmint.client import CardNotFound, Client
from cardmint.server import observe
from cardmint.server.app import Running
from cardmint.v1 import card_pb2, card_pb2_grpc, catalog_pb2, catalog_pb2_grpc, lot_pb2, lot_pb2_grpc
from grpc_status import rpc_status

from tests.grpc_helpers import failed_call

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything logged, at DEBUG, as JSON lines and as text lines."""
    as_json, as_text = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = observe.configure_logging("json", logging.DEBUG, as_json)
    text = logging.StreamHandler(as_text)
    text.setFormatter(observe.TextFormatter())
    text.addFilter(observe.RequestIdFilter())
    root.addHandler(text)
    try:
        yield as_json, as_text
    finally:
        root.removeHandler(handler)
        root.removeHandler(text)
        root.setLevel(level)


def _records(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _access(buf: io.StringIO) -> list[dict[str, object]]:
    return [r for r in _records(buf) if r["logger"] == "cardmint.access"]


def _trailer(metadata: object) -> str:
    found = [v for k, v in metadata or () if k == observe.REQUEST_ID_HEADER]  # type: ignore[attr-defined]
    assert len(found) == 1, metadata
    return str(found[0])


def _auth(server: Running, role: str = "admin", request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    token = server.domain.auth.create_token(role).token
    md: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)
    return md if request_id is None else (*md, ("x-request-id", request_id))


def test_request_id_in_trailers_unary_and_streaming(
    server: Running, channel: grpc.Channel, logs: tuple[io.StringIO, io.StringIO]
) -> None:
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    cards = card_pb2_grpc.CardServiceStub(channel)
    lots = lot_pb2_grpc.LotServiceStub(channel)

    # Unary, success, the caller's id kept.
    _, call = catalog.ListProducts.with_call(
        catalog_pb2.ListProductsRequest(), metadata=_auth(server, request_id="req-1")
    )
    assert _trailer(call.trailing_metadata()) == "req-1"

    # Unary, error: a fresh id, and the rich error details still there beside it.
    with pytest.raises(grpc.RpcError) as err:
        cards.GetCard(card_pb2.GetCardRequest(serial="NOPE"), metadata=_auth(server))
    e = err.value
    assert e.code() == grpc.StatusCode.NOT_FOUND
    failed_id = _trailer(e.trailing_metadata())
    assert HEX_ID.fullmatch(failed_id)
    status = rpc_status.from_call(failed_call(e))
    assert status is not None and status.details

    # Unauthenticated (refused before any handler code): still an id.
    with pytest.raises(grpc.RpcError) as err:
        catalog.ListProducts(catalog_pb2.ListProductsRequest(), metadata=(("x-request-id", "anon-1"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _trailer(err.value.trailing_metadata()) == "anon-1"

    # An id that is not sane (spaces, too long) is replaced, not echoed or logged.
    for bad in ("has space", "x" * 200, "-leading-dash"):
        _, call = catalog.ListProducts.with_call(
            catalog_pb2.ListProductsRequest(), metadata=_auth(server, request_id=bad)
        )
        assert HEX_ID.fullmatch(_trailer(call.trailing_metadata()))

    # Server streaming, success and error.
    admin = Client(f"127.0.0.1:{server.port}", server.domain.auth.create_token("admin").token)
    try:
        admin.create_product(sku="LOG-1", name="Logged", currency="CNY", denominations=[100])
        lot = admin.create_lot("LOG-1", 3, 100)
    finally:
        admin.close()
    stream = lots.StreamLot(
        lot_pb2.StreamLotRequest(lot_id=lot.id), metadata=_auth(server, request_id="exp-1")
    )
    assert sum(len(chunk.serials.data) > 0 for chunk in stream) >= 1
    assert _trailer(stream.trailing_metadata()) == "exp-1"
    missing = lots.StreamLot(
        lot_pb2.StreamLotRequest(lot_id=999_999), metadata=_auth(server, request_id="exp-2")
    )
    with pytest.raises(grpc.RpcError) as err:
        list(missing)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _trailer(err.value.trailing_metadata()) == "exp-2"

    as_json, as_text = logs
    access = _access(as_json)
    by_id = {r["request_id"]: r for r in access}
    assert (
        by_id["req-1"]["method"] == "/cardmint.v1.CatalogService/ListProducts"
        and by_id["req-1"]["code"] == "OK"
    )
    assert by_id[failed_id]["code"] == "NOT_FOUND"
    assert by_id["anon-1"]["code"] == "UNAUTHENTICATED" and "token_id" not in by_id["anon-1"]
    assert by_id["exp-1"]["code"] == "OK" and by_id["exp-2"]["code"] == "NOT_FOUND"
    assert all(isinstance(r["token_id"], int) for r in (by_id["req-1"], by_id["exp-1"], by_id[failed_id]))
    assert all(isinstance(r["duration_ms"], float | int) for r in access)
    assert "has space" not in as_json.getvalue() and "x" * 200 not in as_json.getvalue()
    # One access line per call: 1 + 1 + 1 + 3 (bad ids) + CreateProduct + CreateLot + 2 streams.
    assert len(access) == 10
    assert "[req-1]" in as_text.getvalue() and "CatalogService/ListProducts OK" in as_text.getvalue()


def test_request_id_on_every_line_logged_in_a_call() -> None:
    """Lines written while a call is handled carry its id, and lines outside carry none."""
    buf = io.StringIO()
    handler = observe.configure_logging("json", logging.DEBUG, buf)
    try:
        token = observe.CALL.set(observe.CallInfo("inside-1", "/x.Y/Z"))
        try:
            logging.getLogger("cardmint.server.domain").warning("in the call")
        finally:
            observe.CALL.reset(token)
        logging.getLogger("cardmint.server").info("outside")
    finally:
        logging.getLogger().removeHandler(handler)
    inside, outside = _records(buf)
    assert inside["request_id"] == "inside-1" and inside["level"] == "warning"
    assert "request_id" not in outside and outside["msg"] == "outside"


def test_log_format_auto_and_bad() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, text in ((Tty(), True), (io.StringIO(), False)):
        handler = observe.configure_logging("auto", logging.INFO, stream)
        try:
            logging.getLogger("cardmint.server").info("hello")
        finally:
            logging.getLogger().removeHandler(handler)
        line = stream.getvalue().strip()
        assert line.endswith("cardmint.server: hello") if text else json.loads(line)["msg"] == "hello"
    with pytest.raises(ValueError, match="log format"):
        observe.configure_logging("xml")


def test_no_secret_in_any_log_line(
    server: Running, tmp_path: Path, logs: tuple[io.StringIO, io.StringIO]
) -> None:
    """A whole workflow logged at DEBUG: no code, token or key in any line, in either format."""
    secrets: list[str] = []
    admin_token = server.domain.auth.create_token("admin").token
    secrets.append(admin_token)
    addr = f"127.0.0.1:{server.port}"
    with Client(addr, admin_token) as admin:
        made = admin.create_token("customer", account="zoe", label="zoe's phone")
        secrets.append(made.token)
        admin.create_product(sku="SECRET-1", name="Secret", currency="CNY", denominations=[1000])
        lot = admin.create_lot("SECRET-1", 5, 1000)
        rows = list(admin.stream_lot(lot.id))  # StreamLot: every code of the lot
        secrets += [code for _, code in rows]
        generated = admin.generate(3)
        secrets += generated
        list(admin.check(generated))
    (serial, code), (_, other) = rows[0], rows[1]
    with Client(addr, made.token, device_id="phone-1") as zoe:
        zoe.bind_card(code)
        with pytest.raises(CardNotFound):
            zoe.bind_card(generated[0])  # a failed guess, logged as a failure
        shown = zoe.view_secret(serial, step_up=True)
        assert shown.code == code
        zoe.redeem(serial, 300, "CNY", request_id="redeem-1")
        with pytest.raises(CardNotFound):
            zoe.view_secret(rows[2][0], step_up=True)  # not hers
    assert other in secrets
    keyring = server.domain.keyring
    for key in (keyring.digest_key, *keyring.seal_keys.values()):
        secrets += [
            key.hex(),
            base64.b64encode(key).decode(),
            base64.urlsafe_b64encode(key).decode().rstrip("="),
        ]
    for path in (tmp_path / "var" / "keys").iterdir():
        secrets.append(path.read_bytes().decode("ascii", "replace").strip())

    as_json, as_text = logs
    for out in (as_json.getvalue(), as_text.getvalue()):
        assert "cardmint.access" in out  # the workflow was logged
        for secret in secrets:
            assert len(secret) >= 8
            for form in {secret, secret.replace("-", "")}:
                assert form not in out, "a secret reached the logs"
    access = _access(as_json)
    methods = {str(r["method"]).rsplit("/", 1)[-1] for r in access}
    assert {"CreateToken", "CreateLot", "StreamLot", "BindCard", "ViewSecret", "Redeem"} <= methods
    assert all(isinstance(r.get("token_id"), int) and HEX_ID.fullmatch(str(r["request_id"])) for r in access)
    assert all(
        isinstance(r["request_id"], str) for r in _records(as_json) if r["logger"] == "cardmint.access"
    )


def test_new_request_ids_are_unique_and_differ_in_a_forked_child() -> None:
    """Fresh ids come from a generator seeded once per process (os.urandom per call cost a
    GIL switch per call): 32 hex digits, none repeated, and a forked child (several server
    processes started by a supervisor that forks) does not repeat its parent's."""
    import os

    ids = [observe.new_request_id() for _ in range(20_000)]
    assert all(HEX_ID.fullmatch(i) and len(i) == 32 for i in ids)
    assert len(set(ids)) == len(ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running pytest's teardown
        try:
            os.write(write, ",".join(observe.new_request_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split(",")
    os.waitpid(pid, 0)
    parent = [observe.new_request_id() for _ in range(100)]
    assert len(child) == 100 and not set(child) & set(parent)
