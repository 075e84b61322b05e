"""Typed helpers for tests that talk grpc directly."""

from __future__ import annotations

import grpc

# Call metadata as grpc's stubs want it: a tuple of (key, value) pairs.
Metadata = tuple[tuple[str, str | bytes], ...]


def failed_call(err: grpc.RpcError) -> grpc.Call:
    """The failed call an ``RpcError`` raised by grpc also is (``code()``, ``details()``,
    ``trailing_metadata()`` as pairs, what ``rpc_status.from_call`` reads); grpc's stubs do
    not say so, and an RpcError that is not a Call fails here."""
    call: object = err
    assert isinstance(call, grpc.Call), f"{type(err).__name__} is not a grpc.Call"
    return call
