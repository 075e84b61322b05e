"""Requests that do not parse, strings with NUL and undeclared enum values: INVALID_ARGUMENT
with a field violation, never INTERNAL (docs/api.md, "Malformed requests"). The wide sweep
over every method is tests/reliability/test_hostile_grpc.py; these pin the answers down."""

from __future__ import annotations

import grpc
import pytest
from cardmint.server.api.errors import Undecodable, _nul_field, _tolerant
from cardmint.server.app import Running
from cardmint.v1 import (
    common_pb2,
    event_pb2,
    event_pb2_grpc,
    keys_pb2,
    order_pb2,
    order_pb2_grpc,
)
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.grpc_helpers import Metadata, failed_call


def _violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(failed_call(err))
    assert status is not None
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


@pytest.fixture
def bearer(server: Running) -> Metadata:
    return (("authorization", f"Bearer {server.domain.auth.create_token('admin').token}"),)


@pytest.mark.parametrize("authorized", [True, False])
@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x12\x02\xff\xfe", "bad UTF-8"),  # RedeemRequest.serial, not UTF-8
        (b"\x80", "corrupt"),  # a tag cut short
        (b"\x12\x10abc", "corrupt"),  # a length past the end
    ],
)
def test_a_request_that_does_not_parse_is_invalid_argument(
    channel: grpc.Channel, bearer: Metadata, payload: bytes, why: str, authorized: bool
) -> None:
    redeem = channel.unary_unary("/cardmint.v1.BalanceService/Redeem", None, None)
    with pytest.raises(grpc.RpcError) as err:
        redeem(payload, metadata=bearer if authorized else None, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = _violations(err.value)
    assert field == "request"
    assert "cardmint.v1.RedeemRequest" in description and why in description


def test_a_bad_chunk_in_a_stream_ends_it_with_invalid_argument(
    channel: grpc.Channel, bearer: Metadata
) -> None:
    good = keys_pb2.CheckRequest(codes=common_pb2.PackedStrings(data=b"ABCD" * 4, width=16), length=16)
    check = channel.stream_stream("/cardmint.v1.KeyService/Check", None, None)
    call = check(iter([good.SerializeToString(), b"\x0a\x05\xff"]), metadata=bearer, timeout=10)
    answers: list[bytes] = []
    with pytest.raises(grpc.RpcError) as err:
        answers.extend(call)  # keeps what arrived before the error
    assert [len(keys_pb2.CheckResponse.FromString(a).status) for a in answers] == [1]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in _violations(err.value)] == ["request"]


def test_nul_in_a_string_names_the_field(channel: grpc.Channel, bearer: Metadata) -> None:
    orders = order_pb2_grpc.OrderServiceStub(channel)
    request = order_pb2.CreateOrderRequest(
        request_id="nul-1",
        account="buyer",
        items=[order_pb2.OrderItem(sku="SKU", quantity=1), order_pb2.OrderItem(sku="S\x00KU", quantity=1)],
    )
    with pytest.raises(grpc.RpcError) as err:
        orders.CreateOrder(request, metadata=bearer, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(err.value) == [("items[1].sku", "must not contain a NUL character")]
    events = event_pb2_grpc.EventServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(
            events.Subscribe(
                event_pb2.SubscribeRequest(kinds=["card.locked", "\x00"]), metadata=bearer, timeout=10
            )
        )
    assert _violations(err.value) == [("kinds[1]", "must not contain a NUL character")]


def test_an_undeclared_order_status_is_refused(channel: grpc.Channel, bearer: Metadata) -> None:
    orders = order_pb2_grpc.OrderServiceStub(channel)
    for status in (7, 2**31 - 1, -1):
        with pytest.raises(grpc.RpcError) as err:
            # A plain int outside OrderStatus on purpose: that is what is refused.
            orders.ListOrders(order_pb2.ListOrdersRequest(status=status), metadata=bearer, timeout=10)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in _violations(err.value)] == ["status"]
    listed = orders.ListOrders(
        order_pb2.ListOrdersRequest(status=order_pb2.ORDER_STATUS_DELIVERED), metadata=bearer, timeout=10
    )
    assert list(listed.orders) == []


_text = st.text(st.sampled_from("ab\x00é"), max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    request_id=_text,
    items=st.lists(st.tuples(_text, st.integers(0, 2**40), st.integers(0, 2**32 - 1)), max_size=3),
)
def test_nul_seen_wherever_it_is_and_only_there(request_id: str, items: list[tuple[str, int, int]]) -> None:
    """The deserializer's shortcut (no 0x00 byte in the message as sent: no NUL to look
    for) answers as the walk over every string field: the same field, or the message. The
    numbers put 0x00 bytes on the wire without any NUL (a face value of 2^8, 2^16...)."""
    message = order_pb2.CreateOrderRequest(
        request_id=request_id,
        items=[order_pb2.OrderItem(sku=s, face_value_minor_units=f, quantity=q) for s, f, q in items],
    )
    parsed = _tolerant(order_pb2.CreateOrderRequest.FromString)(message.SerializeToString())
    where = _nul_field(message)
    if where is None:
        assert parsed == message
    else:
        assert isinstance(parsed, Undecodable) and parsed.field == where
    assert (where is None) == all("\x00" not in s for s in [request_id, *(i[0] for i in items)])


def test_zero_bytes_without_a_nul_parse() -> None:
    """A 0x00 byte on the wire that is not in a string (the length of an empty item) takes
    the long way, and the message passes."""
    message = order_pb2.CreateOrderRequest(request_id="r", items=[order_pb2.OrderItem()])
    data = message.SerializeToString()
    assert b"\x00" in data
    assert _tolerant(order_pb2.CreateOrderRequest.FromString)(data) == message
