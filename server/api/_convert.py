"""Proto ↔ Python values shared by the servicers: times, money, packed strings, pages."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

import grpc
import numpy as np
from cardmint.kernel import Packed
from cardmint.server.domain.cards import Origin
from cardmint.server.domain.errors import InvalidArgument
from cardmint.v1 import common_pb2
from google.protobuf import timestamp_pb2

# A packed chunk may not hold more than this many strings or bytes: bounds the memory one
# request can make the server spend before the domain's own limits see it.
MAX_PACKED_STRINGS = 1_000_000
MAX_PACKED_BYTES = 64 << 20


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(minor_units=amount, currency=currency)


def pack(strings: Sequence[str]) -> common_pb2.PackedStrings:
    """Strings as one buffer; equal lengths (the common case: codes) need no length list.

    All-empty strings (e.g. no suggestions at all) keep the length list: width 0 means
    "lengths are listed", so it cannot also say "every string is empty".
    """
    encoded = [s.encode("utf-8") for s in strings]
    widths = {len(e) for e in encoded}
    data = b"".join(encoded)
    if len(widths) == 1 and data:
        return common_pb2.PackedStrings(data=data, width=widths.pop())
    return common_pb2.PackedStrings(data=data, lengths=[len(e) for e in encoded])


def unpack_packed(packed: common_pb2.PackedStrings, field: str) -> Packed:
    """A request's ``PackedStrings`` as the kernel's ``Packed``, without a Python object per string.

    Inconsistent framing or a chunk over the limits is INVALID_ARGUMENT.
    """
    data = packed.data
    if len(data) > MAX_PACKED_BYTES:
        raise InvalidArgument.of(field, f"at most {MAX_PACKED_BYTES} bytes per chunk")
    if packed.width:
        if len(packed.lengths):
            raise InvalidArgument.of(field, "give either width or lengths, not both")
        w = packed.width
        if len(data) % w:
            raise InvalidArgument.of(field, "data length is not a multiple of width")
        count = len(data) // w
        if count > MAX_PACKED_STRINGS:
            raise InvalidArgument.of(field, f"at most {MAX_PACKED_STRINGS} strings per chunk")
        return Packed(data, np.arange(count + 1, dtype=np.int64) * w)
    if len(packed.lengths) > MAX_PACKED_STRINGS:
        raise InvalidArgument.of(field, f"at most {MAX_PACKED_STRINGS} strings per chunk")
    lengths = np.array(packed.lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(data):
        raise InvalidArgument.of(field, "lengths do not add up to the data length")
    return Packed(data, offsets)


def unpack(packed: common_pb2.PackedStrings, field: str) -> list[bytes]:
    """The strings of a request's ``PackedStrings`` (framing checked by ``unpack_packed``)."""
    offsets = unpack_packed(packed, field).offsets.tolist()
    data = packed.data
    return [data[a:b] for a, b in itertools.pairwise(offsets)]


def page_size(page: common_pb2.PageRequest, maximum: int, default: int = 50) -> int:
    size = page.page_size or default
    return min(size, maximum)


def page_cursor(page: common_pb2.PageRequest) -> int | None:
    """The id a page token carries (tokens are ids in decimal; opaque to clients)."""
    token = page.page_token
    if not token:
        return None
    if not token.isascii() or not token.isdigit() or len(token) > 19:
        raise InvalidArgument.of("page.page_token", "not a token this server issued")
    return int(token)


DEVICE_HEADER = "x-device-id"
# Set by a trusted front end when the person passed a challenge (CAPTCHA, SMS code) for this
# request; binds past a subject's challenge threshold need it (docs/compliance.md).
CHALLENGE_HEADER = "x-challenge-passed"


def peer_address(peer: str) -> str | None:
    """The client's address without its port, from grpc's ``context.peer()``
    ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678", "unix:/path")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return "ipv4:" + rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return "ipv6:" + rest.rsplit("]", 1)[0].lstrip("[")
    return peer or None


def client_origin(context: grpc.ServicerContext) -> Origin:
    """Where the call came from: the peer address (behind a proxy: the proxy's) and the
    device id an app sends in ``x-device-id`` metadata (printable ASCII, at most 128)."""
    device, challenged = None, False
    for key, value in context.invocation_metadata() or ():
        if key == DEVICE_HEADER and isinstance(value, str) and value.isprintable() and value.isascii():
            device = value.strip()[:128] or None
        elif key == CHALLENGE_HEADER and isinstance(value, str):
            challenged = value.strip().lower() in {"1", "true", "yes"}
    return Origin(address=peer_address(context.peer() or ""), device=device, challenged=challenged)
