"""Failed guesses are counted per client address and device id too (over gRPC, on SQLite
and PostgreSQL): rotating accounts does not buy a bot more tries."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cardmint.client import BadCheck, CardNotFound, Client, ClientLocked
from cardmint.server.api._convert import peer_address
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig

from .test_services import _lot

Connect = Callable[..., Client]


RULES = Path(__file__).parents[2] / "server/domain/rules/platform.toml"


def risk_profile(tmp_path: Path, **tiers: tuple[int, int, int]) -> str:
    """The platform profile with some [risk.<subject>] tiers replaced by
    (challenge_after, lock_after, lock_seconds); the path of the file written."""
    text = RULES.read_text(encoding="utf-8").replace('name = "platform"', 'name = "strict"')
    for subject, (challenge, lock, seconds) in tiers.items():
        text, n = re.subn(
            rf"\[risk\.{subject}\][^\[]*",
            f"[risk.{subject}]\nchallenge_after = {challenge}\nlock_after = {lock}\nlock_seconds = {seconds}\n\n",
            text,
        )
        assert n == 1, subject
    path = tmp_path / "strict.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def strict(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    # No challenge tier for clients here: this test is about their locks.
    profile = risk_profile(tmp_path, device=(0, 4, 3600), address=(0, 7, 3600))
    config = DomainConfig(profile=profile, lot_chunk=16, stream_chunk=16)
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=8, config=config)
    yield running
    running.stop(grace=0)


def test_peer_addresses_lose_their_port() -> None:
    assert peer_address("ipv4:10.1.2.3:5678") == "ipv4:10.1.2.3"
    assert peer_address("ipv6:[::1]:5678") == "ipv6:::1"
    assert peer_address("unix:/tmp/s") == "unix:/tmp/s" and peer_address("") is None


def test_a_device_and_an_address_lock_across_accounts(strict: Running) -> None:
    addr = f"127.0.0.1:{strict.port}"
    admin_token = strict.domain.auth.create_token("admin").token
    with Client(addr, admin_token) as admin:
        _, rows = _lot(admin, n=2)
        stranger = admin.generate(1)[0]
        head = admin.event_head()
    bot = [
        Client(addr, strict.domain.auth.create_token("customer", account=f"bot-{i}").token, device_id="dev-1")
        for i in range(6)
    ]
    try:
        # One guess per account (no account lock), but the same device: 4 tries, then locked.
        for i in range(3):
            with pytest.raises(CardNotFound):
                bot[i].bind_card(stranger)
        with pytest.raises(ClientLocked) as locked:
            bot[3].bind_card(stranger)
        assert locked.value.retry_after is not None and locked.value.retry_after > 0
        with pytest.raises(ClientLocked):  # even the right code waits out the lock
            bot[4].bind_card(rows[0][1])
        # Another device from the same address keeps going until the address limit (7).
        others = [
            Client(
                addr, strict.domain.auth.create_token("customer", account=f"o-{i}").token, device_id=f"d{i}"
            )
            for i in range(4)
        ]
        try:
            with pytest.raises(BadCheck):
                others[0].bind_card(rows[1][1][:-1] + ("A" if rows[1][1][-1] != "A" else "B"))
            with pytest.raises(CardNotFound):
                others[1].bind_card(stranger)
            with pytest.raises(ClientLocked):  # 4 + 3 = 7 failures from 127.0.0.1
                others[2].bind_card(stranger)
            with pytest.raises(ClientLocked):
                others[3].bind_card(rows[1][1])
        finally:
            for c in others:
                c.close()
    finally:
        for c in bot:
            c.close()
    with Client(addr, admin_token) as admin:
        events = [
            (e.kind, e.subject) for e in admin.subscribe_events(head, kinds=["client.locked"], timeout=1.0)
        ]
    assert events == [("client.locked", "device:dev-1"), ("client.locked", "address:ipv4:127.0.0.1")]
