"""Tiered answers to failed binds, over gRPC on SQLite and PostgreSQL: a hint (the
suggestion on a near miss), then a challenge (FAILED_PRECONDITION, CHALLENGE_REQUIRED: the
guess is not evaluated until the person passes one), then a lock (RESOURCE_EXHAUSTED with
RetryInfo). The thresholds come from the compliance profile's [risk] section."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cardmint.client import (
    AccountLocked,
    BadCheck,
    CardLocked,
    CardmintError,
    CardNotFound,
    ChallengeRequired,
    Client,
)
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig
from cardmint.server.storage import AttemptKind

from .test_risk import risk_profile
from .test_services import _lot, _typo

Connect = Callable[..., Client]


def _account_failures(server: Running, account: str) -> int:
    with server.domain.storage.read() as tx:
        acct = tx.find_account(account)
        assert acct is not None
        return tx.attempt_count(
            AttemptKind.ACCOUNT, str(acct.id), server.domain.profile.risk.account.lock_seconds
        ).recent


def test_hint_then_challenge_then_lock(connect: Connect, server: Running) -> None:
    risk = server.domain.profile.risk.account
    assert (risk.challenge_after, risk.lock_after) == (3, 5)  # the platform profile's figures
    admin = connect("admin")
    _, rows = _lot(admin, n=2)
    serial, code = rows[0]
    alice = connect("customer", account="alice")
    # Hint: a typo is answered with the code it most likely was.
    with pytest.raises(BadCheck) as hint:
        alice.bind_card(_typo(code))
    assert hint.value.suggestion == code
    for _ in range(2):
        with pytest.raises(CardNotFound):
            alice.bind_card(admin.generate(1)[0])
    # Challenge: three failures; the next bind is not evaluated, not even the right code.
    for guess in (admin.generate(1)[0], code):
        with pytest.raises(ChallengeRequired) as challenge:
            alice.bind_card(guess)
        assert challenge.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert challenge.value.reason == "CHALLENGE_REQUIRED"
        assert challenge.value.metadata == {"subject": "account"}
        assert challenge.value.retry_after is None
    assert _account_failures(server, "alice") == 3  # challenged guesses are not counted
    # With the challenge passed, guesses are evaluated again, up to the lock.
    with pytest.raises(CardNotFound):
        alice.bind_card(admin.generate(1)[0], challenge_passed=True)
    with pytest.raises(AccountLocked) as locked:
        alice.bind_card(admin.generate(1)[0], challenge_passed=True)
    assert locked.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Locked until the failures' windows have passed: at most two windows.
    assert locked.value.retry_after is not None and 0 < locked.value.retry_after <= 2 * risk.lock_seconds
    # Locked: a challenge does not help, nor does the right code.
    with pytest.raises(AccountLocked):
        alice.bind_card(code, challenge_passed=True)
    assert _account_failures(server, "alice") == 5
    # A passed challenge from an account below every threshold changes nothing.
    bob = connect("customer", account="bob")
    assert bob.bind_card(code, challenge_passed=True).card.serial == serial


def test_a_card_number_asks_for_a_challenge_across_accounts(connect: Connect) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=2)
    (serial, code), (_, other) = rows
    for account in ("a1", "a2"):  # two failures naming the card, one per account
        with pytest.raises(CardNotFound):
            connect("customer", account=account).bind_card(other, serial=serial)
    carol = connect("customer", account="carol")
    with pytest.raises(ChallengeRequired) as challenge:
        carol.bind_card(code, serial=serial)
    assert challenge.value.metadata == {"subject": "card"}
    # Past the challenge, the third failure on the number locks it ...
    dave = connect("customer", account="dave")
    with pytest.raises(CardLocked):
        dave.bind_card(other, serial=serial, challenge_passed=True)
    # ... while without the number the right code still binds (the counter is on the number).
    assert carol.bind_card(code).card.serial == serial


@pytest.fixture
def custom(storage_url: str, tmp_path: Path) -> Iterator[Running]:
    profile = risk_profile(tmp_path, account=(1, 2, 60), card=(0, 9, 120), device=(2, 6, 600))
    config = DomainConfig(profile=profile, lot_chunk=16, stream_chunk=16)
    running = start(storage_url, "127.0.0.1:0", tmp_path / "var", workers=8, config=config)
    yield running
    running.stop(grace=0)


def test_thresholds_come_from_a_custom_profile_file(custom: Running) -> None:
    addr = f"127.0.0.1:{custom.port}"
    risk = custom.domain.profile.risk
    assert custom.domain.profile.tag == "strict@4"
    assert (risk.account.challenge_after, risk.account.lock_after, risk.account.lock_seconds) == (1, 2, 60)
    auth = custom.domain.auth
    with Client(addr, auth.create_token("admin").token) as admin:
        _, rows = _lot(admin, n=1)
        strangers = admin.generate(4)
    with Client(addr, auth.create_token("customer", account="erin").token) as erin:
        with pytest.raises(CardNotFound):
            erin.bind_card(strangers[0])
        with pytest.raises(ChallengeRequired) as challenge:  # after 1 failure, not 3
            erin.bind_card(strangers[1])
        assert challenge.value.metadata == {"subject": "account"}
        with pytest.raises(AccountLocked) as locked:  # the 2nd failure locks, for 120 s at most
            erin.bind_card(strangers[1], challenge_passed=True)
        assert locked.value.retry_after is not None and 0 < locked.value.retry_after <= 120
    # Device tier: two failures from one device id (over two accounts) ask for a challenge.
    tokens = [auth.create_token("customer", account=f"dev-user-{i}").token for i in range(3)]
    phones = [Client(addr, t, device_id="phone-7") for t in tokens]
    try:
        for i in range(2):
            with pytest.raises(CardNotFound):
                phones[i].bind_card(strangers[2 + i])
        with pytest.raises(ChallengeRequired) as device:
            phones[2].bind_card(rows[0][1])
        assert device.value.metadata == {"subject": "device"}
        assert phones[2].bind_card(rows[0][1], challenge_passed=True).card.serial == rows[0][0]
    finally:
        for c in phones:
            c.close()


@pytest.mark.parametrize("challenge_passed", [False, True])
def test_64_parallel_wrong_guesses_get_exactly_the_allowed_tries(
    connect: Connect, server: Running, challenge_passed: bool
) -> None:
    """Without a challenge exactly `challenge_after` guesses are evaluated, with one exactly
    `lock_after`; every other answer is the challenge or the lock, never another evaluation."""
    admin = connect("admin")
    _lot(admin, n=1)
    strangers = admin.generate(64)
    frank = connect("customer", account="frank")
    risk = server.domain.profile.risk.account
    start_line = threading.Barrier(64)
    answers: list[str] = []
    guard = threading.Lock()

    def guess(i: int) -> None:
        start_line.wait(timeout=30)
        try:
            frank.bind_card(strangers[i], challenge_passed=challenge_passed)
        except CardmintError as e:
            with guard:
                answers.append(e.reason)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    evaluated = risk.lock_after if challenge_passed else risk.challenge_after
    stopped = "ACCOUNT_LOCKED" if challenge_passed else "CHALLENGE_REQUIRED"
    assert len(answers) == 64
    assert sorted(set(answers)) == sorted({"CARD_NOT_FOUND", stopped})
    # The guess that reaches the lock is evaluated and answered "locked".
    assert answers.count("CARD_NOT_FOUND") == (evaluated - 1 if challenge_passed else evaluated)
    assert _account_failures(server, "frank") == evaluated


def test_staff_binding_for_a_customer_meet_no_challenge_but_the_lock(connect: Connect) -> None:
    admin, operator = connect("admin"), connect("operator")
    _, rows = _lot(admin, n=1)
    hana = connect("customer", account="hana")
    for _ in range(3):
        with pytest.raises(CardNotFound):
            hana.bind_card(admin.generate(1)[0])
    with pytest.raises(ChallengeRequired):
        hana.bind_card(rows[0][1])
    # A support operator binding for hana is a person behind a staff token: no challenge ...
    with pytest.raises(CardNotFound):
        operator.bind_card(admin.generate(1)[0], account="hana")
    # ... but the account's lock holds for staff too.
    with pytest.raises(AccountLocked):
        operator.bind_card(admin.generate(1)[0], account="hana")
    with pytest.raises(AccountLocked):
        operator.bind_card(rows[0][1], account="hana")
