"""Every domain error → its status code and google.rpc details, unary and streaming, and
back into the client's typed exception. Unknown exceptions → INTERNAL, never UNKNOWN."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cardmint import client
from cardmint.server.api import ErrorInterceptor
from cardmint.server.api.errors import KIND_TO_CODE
from cardmint.server.domain import ALL_ERRORS, BadCheck, DomainError, ErrorKind, FieldViolation
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from tests.grpc_helpers import failed_call


def _instance(cls: type[DomainError]) -> DomainError:
    if cls is BadCheck:
        return BadCheck("ABCD-EFGH-JKMN-PQRS")
    return cls(
        f"{cls.__name__} happened",
        violations=(FieldViolation("field_a", "is wrong"),),
        retry_after=1.5,
        metadata={"k": "v"},
    )


ERRORS = {cls.__name__: cls for cls in ALL_ERRORS}


def _raise(name: bytes) -> None:
    key = name.decode()
    if key == "bug":
        raise ZeroDivisionError("a bug's message must not reach the caller")
    raise _instance(ERRORS[key])


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    _raise(request)
    return b""


def _streaming(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first message goes out before the error"
    _raise(request)


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=[ErrorInterceptor()])
    handler = grpc.method_handlers_generic_handler(
        "test.Raise",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_streaming),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        server.stop(0)


def _call(channel: grpc.Channel, method: str, name: str) -> grpc.RpcError:
    if method == "Unary":
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/test.Raise/Unary", None, None)(name.encode(), timeout=10)
        return info.value
    call = iter(channel.unary_stream("/test.Raise/Stream", None, None)(name.encode(), timeout=10))
    assert next(call) == b"first message goes out before the error"
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    return info.value


def _details(err: grpc.RpcError) -> dict[str, object]:
    status = rpc_status.from_call(failed_call(err))
    out: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                msg = kind()
                detail.Unpack(msg)
                out[kind.__name__] = msg
    return out


def test_every_kind_has_a_code() -> None:
    assert set(KIND_TO_CODE) == set(ErrorKind)
    assert grpc.StatusCode.UNKNOWN not in KIND_TO_CODE.values()


@pytest.mark.parametrize("method", ["Unary", "Stream"])
@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_domain_error_to_status(channel: grpc.Channel, method: str, cls: type[DomainError]) -> None:
    exc = _instance(cls)
    err = _call(channel, method, cls.__name__)
    assert err.code() == KIND_TO_CODE[cls.kind]
    assert err.code().name == cls.kind.value  # the domain names kinds after gRPC codes
    assert err.details() == exc.message
    details = _details(err)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (cls.reason, "cardmint")
    assert dict(info.metadata) == dict(exc.metadata)
    bad = details.get("BadRequest")
    if exc.violations:
        assert isinstance(bad, error_details_pb2.BadRequest)
        assert [(v.field, v.description) for v in bad.field_violations] == [
            (v.field, v.description) for v in exc.violations
        ]
    else:
        assert bad is None
    retry = details.get("RetryInfo")
    if exc.retry_after is not None:
        assert isinstance(retry, error_details_pb2.RetryInfo)
        assert retry.retry_delay.seconds == 2  # 1.5 s rounded up: waiting that long suffices
    else:
        assert retry is None

    # The client reads the same status back into the class named after the reason.
    typed = client.error_from(err)
    assert type(typed) is client.ERRORS[cls.reason]
    assert typed.reason == cls.reason
    assert typed.code == err.code()
    assert [(v.field, v.description) for v in typed.violations] == [
        (v.field, v.description) for v in exc.violations
    ]
    assert typed.retry_after == (2.0 if exc.retry_after is not None else None)


@pytest.mark.parametrize("method", ["Unary", "Stream"])
def test_unknown_error_is_internal(
    channel: grpc.Channel, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    err = _call(channel, method, "bug")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error"
    info = _details(err)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "INTERNAL"
    assert isinstance(client.error_from(err), client.InternalError)
    assert "ZeroDivisionError" in caplog.text  # logged for the operator, not sent to the caller


def test_bad_check_suggestion_reaches_the_client(channel: grpc.Channel) -> None:
    typed = client.error_from(_call(channel, "Unary", "BadCheck"))
    assert isinstance(typed, client.BadCheck)
    assert typed.suggestion == "ABCD-EFGH-JKMN-PQRS"


def test_client_table_is_the_inverse_of_the_server_table() -> None:
    server_reasons = {cls.reason: KIND_TO_CODE[cls.kind] for cls in ALL_ERRORS}
    assert set(server_reasons) <= set(client.ERRORS)
    extra = set(client.ERRORS) - set(server_reasons)
    assert extra == {"INTERNAL"}  # the interceptor's own answer to a server fault
