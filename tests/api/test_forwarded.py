"""Behind a load balancer every connection comes from the balancer: the per-address limits
must count the client it forwards (``x-forwarded-for``), and only when the connection
really comes from a trusted proxy (``DomainConfig.trusted_proxies``, ``cardmint serve
--trusted-proxies``). A client cannot pick its own address by sending the header itself."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cardmint.server.api._convert import client_address, trusted_networks
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.v1 import card_pb2, card_pb2_grpc
from hypothesis import example, given
from hypothesis import strategies as st

from .test_risk import risk_profile

LB = trusted_networks(["10.0.0.0/8", "fd00::/8"])


class _Call:
    """The two things client_address reads from a grpc ServicerContext."""

    def __init__(self, peer: str, *forwarded: str) -> None:
        self._peer, self._md = peer, tuple(("x-forwarded-for", f) for f in forwarded)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


def _addr(peer: str, *forwarded: str, trusted: Any = LB) -> str | None:
    return client_address(_Call(peer, *forwarded), trusted)  # type: ignore[arg-type]


def test_the_forwarded_client_is_believed_only_from_a_trusted_proxy() -> None:
    assert _addr("ipv4:10.1.2.3:4000", "203.0.113.5") == "ipv4:203.0.113.5"
    assert _addr("ipv4:198.51.100.7:4000", "203.0.113.5") == "ipv4:198.51.100.7"  # not a proxy of ours
    assert _addr("ipv4:10.1.2.3:4000", "203.0.113.5", trusted=()) == "ipv4:10.1.2.3"  # none configured
    assert _addr("ipv4:10.1.2.3:4000") == "ipv4:10.1.2.3"  # a proxy that forwarded nothing
    # The client wrote the left part itself: the right-most address past our proxies counts.
    assert _addr("ipv4:10.1.2.3:4000", "6.6.6.6, 203.0.113.5") == "ipv4:203.0.113.5"
    assert _addr("ipv4:10.1.2.3:4000", "6.6.6.6, 203.0.113.5, 10.9.9.9") == "ipv4:203.0.113.5"
    assert _addr("ipv4:10.1.2.3:4000", "203.0.113.5", "10.9.9.9") == "ipv4:203.0.113.5"  # two headers
    # A malformed hop stops the walk at the last proxy we trust (nothing forged gets through).
    assert _addr("ipv4:10.1.2.3:4000", "203.0.113.5, bogus, 10.9.9.9") == "ipv4:10.9.9.9"
    assert _addr("ipv6:[fd00::1]:4000", "2001:db8::7") == "ipv6:2001:db8::7"
    assert _addr("ipv6:[fd00::1]:4000", "::ffff:203.0.113.5") == "ipv4:203.0.113.5"
    assert _addr("unix:/run/cardmint.sock", "203.0.113.5") == "unix:/run/cardmint.sock"
    with pytest.raises(ValueError, match="not an IP"):
        trusted_networks(["10.0.0.0/8", "lb.internal"])


_ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["10.0.0.1", "10.200.3.4", "fd00::9"]),  # proxies of ours, often
)


@given(peer=st.ip_addresses(v=4), chain=st.lists(_ips, max_size=6))
@example(peer=ipaddress.IPv4Address("10.0.0.1"), chain=["::ffff:0:0"])  # the mapped 0.0.0.0
@example(peer=ipaddress.IPv4Address("10.0.0.1"), chain=["198.51.100.4", "::ffff:10.0.0.9"])
def test_the_answer_is_the_peer_or_an_address_the_trusted_hops_wrote(
    peer: ipaddress.IPv4Address, chain: list[str]
) -> None:
    got = _addr(f"ipv4:{peer}:9", ", ".join(chain))
    assert got is not None
    if not any(peer in net for net in LB):
        assert got == f"ipv4:{peer}"  # an untrusted peer's header is never read
        return
    # Only the trusted suffix of the chain (and the hop just left of it) can have been
    # written by our proxies: the answer is one of those, never anything further left.
    believable = [str(peer)]
    for hop in reversed(chain):
        believable.append(hop)
        if not any(_canonical(hop) in net for net in LB):
            break
    assert got.split(":", 1)[1] in {str(_canonical(h)) for h in believable}


def _canonical(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as the server counts it: an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is
    the IPv4 address it maps, so one client cannot pass for two by spelling."""
    ip = ipaddress.ip_address(text)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped if mapped is not None else ip


@pytest.fixture
def behind_lb(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    # Three failed binds from one address lock it; accounts and devices lock much later.
    profile = risk_profile(tmp_path, address=(0, 3, 3600), device=(0, 50, 3600), account=(0, 50, 3600))
    config = DomainConfig(profile=profile, trusted_proxies=("127.0.0.1/32",))
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=8, config=config)
    yield running
    running.stop(grace=0)


def test_address_locks_follow_the_forwarded_client(behind_lb: Running) -> None:
    """The test connects from 127.0.0.1, the trusted 'balancer'; clients A and B are told
    apart by the header it adds. A's guesses lock A only; a client that writes B's address
    into its own header is still judged as itself."""
    auth = behind_lb.domain.auth
    token = auth.create_token("customer", account="fwd-guesser").token
    stranger = "ABCD-EFGH-JKLM-NPQR"  # well-formed or not: every wrong code counts
    with grpc.insecure_channel(f"127.0.0.1:{behind_lb.port}") as ch:
        cards = card_pb2_grpc.CardServiceStub(ch)

        def guess(forwarded: str) -> str:
            md = (("authorization", f"Bearer {token}"), ("x-forwarded-for", forwarded))
            try:
                cards.BindCard(card_pb2.BindCardRequest(code=stranger), metadata=md, timeout=10)
            except grpc.RpcError as e:
                return e.code().name
            return "OK"

        a_tries = [guess("203.0.113.5") for _ in range(4)]
        b_try = guess("203.0.113.9")
        spoofed = guess("203.0.113.9, 203.0.113.5")  # A pretending to be B: still A
    assert a_tries[-1] == "RESOURCE_EXHAUSTED" and "RESOURCE_EXHAUSTED" not in a_tries[:2]
    assert b_try != "RESOURCE_EXHAUSTED"
    assert spoofed == "RESOURCE_EXHAUSTED"
    with behind_lb.storage.read() as tx:
        subjects = {
            r[0]
            for r in tx._all(  # type: ignore[attr-defined]
                "SELECT subject FROM attempt_counters WHERE subject_kind = 'address'", ()
            )
        }
    assert subjects == {"ipv4:203.0.113.5", "ipv4:203.0.113.9"}  # never the balancer's own
