"""Proto ↔ Python values shared by the servicers: times, money, packed strings, pages."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """``value`` as a Timestamp (a naive datetime is taken as UTC, as FromDatetime takes
    it), by integer arithmetic: FromDatetime costs several Python calls per field, and an
    order's answer carries a dozen timestamps."""
    if value is None:
        return None
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


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


FORWARDED_HEADER = "x-forwarded-for"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The proxies whose ``x-forwarded-for`` is believed (``DomainConfig.trusted_proxies``):
    CIDRs or single addresses. A bad one is a ValueError naming it."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {cidr!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return ip


def _label(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"ipv{ip.version}:{ip}"


def client_address(context: grpc.ServicerContext, trusted: Sequence[Network] = ()) -> str | None:
    """The client's address, as the risk counters and reservation caps count it.

    The connection's peer, unless that peer is a trusted proxy (``trusted``): then the
    ``x-forwarded-for`` chain is walked from its right end (the hop the proxy itself added)
    past every trusted proxy, and the first address that is not one is the client. Anything
    left of it was written by the client and is not believed; a malformed hop ends the walk
    at the last trusted proxy (the address a caller cannot forge)."""
    direct = peer_address(context.peer() or "")
    if not trusted or direct is None:
        return direct
    kind, _, host = direct.partition(":")
    peer_ip = _ip(host) if kind in ("ipv4", "ipv6") else None
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return direct
    hops: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if key == FORWARDED_HEADER and isinstance(value, str):
            hops += value.split(",")  # several headers: one list, in order
    last = peer_ip
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break
        if not any(ip in net for net in trusted):
            return _label(ip)
        last = ip
    return _label(last)


def client_origin(context: grpc.ServicerContext, trusted: Sequence[Network] = ()) -> Origin:
    """Where the call came from: the client's address (``client_address``: behind a
    trusted proxy, the one it forwarded) and the device id an app sends in
    ``x-device-id`` metadata (printable ASCII, at most 128)."""
    device, challenged = None, False
    for key, value in context.invocation_metadata() or ():
        if key == DEVICE_HEADER and isinstance(value, str) and value.isprintable() and value.isascii():
            device = value.strip()[:128] or None
        elif key == CHALLENGE_HEADER and isinstance(value, str):
            challenged = value.strip().lower() in {"1", "true", "yes"}
    return Origin(address=client_address(context, trusted), device=device, challenged=challenged)
