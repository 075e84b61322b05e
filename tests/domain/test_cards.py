"""Binding: every outcome, the attempt limits and their lock, transfers, and what a card
shows to whom."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from cardmint.kernel import ALPHABET
from cardmint.server.domain import (
    AccountLocked,
    BadCheck,
    CardAlreadyBound,
    CardExpired,
    CardFrozen,
    CardLocked,
    CardNotFound,
    CardVoid,
    Domain,
    MalformedCode,
    Origin,
    PermissionDenied,
    TransferLimitReached,
)
from cardmint.server.storage import AttemptKind, CardStatus, Storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Callers, FakeClock, MintedLot

# The lock tests play a person who passes every challenge, so that the guesses past the
# profile's challenge thresholds are evaluated and reach the locks (tests/domain/test_risk_tiers.py
# covers the challenge tier itself).
PASSED = Origin(challenged=True)


def _typo(code: str) -> str:
    """The code with one symbol substituted (never a valid code: the check catches it)."""
    plain = code.replace("-", "")
    i = 3
    other = ALPHABET[(ALPHABET.index(plain[i]) + 1) % 32]
    return plain[:i] + other + plain[i + 1 :]


def _unknown(code: str) -> str:
    """A well-formed code with a valid check character that was never issued."""
    from cardmint.kernel import get_kernel

    plain = code.replace("-", "")
    body = plain[:-1]
    for sym in ALPHABET:
        cand = sym + body[1:]
        if cand != body:
            return cand + get_kernel().check_symbol(cand)
    raise AssertionError("unreachable")


def test_bind_then_get_card_masks_the_code(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    serial, code = make_lot(3).pairs[0]
    receipt = domain.cards.bind(who.alice, code.lower().replace("-", " "))
    assert not receipt.already_bound_here and not receipt.transferred
    view = domain.cards.get_card(who.alice, serial)
    assert view.status == "active" and view.bound and view.balance == 500 and view.currency == "CNY"
    assert (
        view.masked_code.endswith(code[-4:]) and view.masked_code.count("*") == len(code.replace("-", "")) - 4
    )
    # The bind's answer masks the code as the card's sealed copy does (the typed, lowercased
    # and spaced form normalized to the same), also when it was bound already.
    assert receipt.card.masked_code == view.masked_code
    # A retry of the same bind is not an error.
    again = domain.cards.bind(who.alice, code)
    assert again.already_bound_here and again.card.masked_code == view.masked_code
    # Someone else's card does not exist, as far as another customer can tell.
    with pytest.raises(CardNotFound):
        domain.cards.get_card(who.bob, serial)
    assert domain.cards.get_card(who.merchant, serial).balance == 500


def test_a_code_length_new_since_the_last_bind_is_found(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    # The first bind remembers the code lengths in use (16 only); a product with 20-symbol
    # codes created afterwards must still be found by a code alone, with no card number.
    _, code = make_lot(2).pairs[0]
    domain.cards.bind(who.alice, code)
    domain.catalog.create_product(
        who.operator, sku="GC-LONG", name="long codes", currency="CNY", denominations=(500,), code_length=20
    )
    lot = domain.lots.create_lot(who.operator, sku="GC-LONG", count=2, face_value=500)
    chunk = next(iter(domain.lots.stream_lot(who.operator, lot.id)))
    serial, long_code = chunk.serials[0], chunk.codes[0]
    assert len(long_code.replace("-", "")) == 20
    assert domain.cards.bind(who.alice, long_code).card.serial == serial


def test_bind_outcomes(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], storage: Storage, clock: FakeClock
) -> None:
    minted = make_lot(6)
    pairs = minted.pairs
    with pytest.raises(MalformedCode) as mal:
        domain.cards.bind(who.alice, "not*a*code")
    assert mal.value.violations[0].field == "code"
    with pytest.raises(BadCheck) as bad:
        domain.cards.bind(who.alice, _typo(pairs[0][1]))
    assert bad.value.suggestion == pairs[0][1] and bad.value.metadata["suggestion"] == pairs[0][1]
    with pytest.raises(CardNotFound) as nf:
        domain.cards.bind(who.alice, _unknown(pairs[0][1]))
    assert nf.value.message == "card number or password does not match"
    # The right code under the wrong card number is the same answer.
    with pytest.raises(CardNotFound):
        domain.cards.bind(who.bob, pairs[1][1], serial=pairs[2][0])

    domain.cards.bind(who.alice, pairs[1][1], origin=PASSED)  # alice failed 3 times: challenged
    with pytest.raises(CardAlreadyBound):
        domain.cards.bind(who.bob, pairs[1][1], serial=pairs[1][0])

    with storage.transaction() as tx:
        card = tx.get_card_by_serial(pairs[3][0])
        assert card is not None
        tx.set_card_status(card.id, CardStatus.FROZEN, only_from=[CardStatus.ACTIVE])
    with pytest.raises(CardFrozen):
        domain.cards.bind(who.bob, pairs[3][1])

    with storage.transaction() as tx:
        card = tx.get_card_by_serial(pairs[4][0])
        assert card is not None
        tx.set_card_status(card.id, CardStatus.VOID, only_from=[CardStatus.ACTIVE])
    with pytest.raises(CardVoid):
        domain.cards.bind(who.bob, pairs[4][1])

    clock.advance(days=366)
    with pytest.raises(CardExpired):
        domain.cards.bind(who.bob, pairs[5][1])
    assert domain.cards.get_card(who.operator, pairs[5][0]).status == "expired"


def test_bad_check_without_unique_candidate_has_no_suggestion(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    make_lot(2)
    # A typo of a code that was never issued: no issued code is one edit away.
    from cardmint.kernel import get_kernel

    stranger = get_kernel().generate(1).codes[0].decode()
    with pytest.raises(BadCheck) as bad:
        domain.cards.bind(who.alice, _typo(stranger))
    assert bad.value.suggestion is None and "suggestion" not in bad.value.metadata


def test_account_lock_after_five_failures_with_retry_time(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], clock: FakeClock
) -> None:
    serial, code = make_lot(1).pairs[0]
    wrong = _unknown(code)
    for _ in range(4):
        with pytest.raises(CardNotFound):
            domain.cards.bind(who.alice, wrong, origin=PASSED)
    with pytest.raises(AccountLocked) as locked:
        domain.cards.bind(who.alice, wrong, origin=PASSED)
    # All five failures in this window: locked until the next window ends (at most two).
    assert locked.value.retry_after is not None and 900 < locked.value.retry_after <= 2 * 900
    # Locked means locked: even the right code is refused until the window ends.
    with pytest.raises(AccountLocked) as again:
        domain.cards.bind(who.alice, code, origin=PASSED)
    assert again.value.retry_after == pytest.approx(locked.value.retry_after)
    # Another account is not affected.
    domain.cards.bind(who.bob, code, serial=serial)
    clock.advance(seconds=locked.value.retry_after + 1)
    with pytest.raises(CardAlreadyBound):
        domain.cards.bind(who.alice, code, origin=PASSED)


def test_card_lock_after_three_failures_across_accounts(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    (serial, code), (_, other_code) = make_lot(2).pairs
    with pytest.raises(CardNotFound):
        domain.cards.bind(who.alice, other_code, serial=serial)
    with pytest.raises(MalformedCode):
        domain.cards.bind(who.bob, "x", serial=serial)
    with pytest.raises(CardLocked) as locked:
        domain.cards.bind(who.operator, _typo(code), serial=serial, account="carol", origin=PASSED)
    assert locked.value.retry_after is not None and 3600 < locked.value.retry_after <= 2 * 3600
    with pytest.raises(CardLocked):
        domain.cards.bind(who.alice, code, serial=serial, origin=PASSED)
    # Without the card number the same code still binds: the lock is on the number.
    domain.cards.bind(who.alice, code, origin=PASSED)


def test_transferred_binds_per_year(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], clock: FakeClock
) -> None:
    pairs = make_lot(5, sku="GC-NOEXP", validity_days=None).pairs
    for serial, code in pairs:
        domain.cards.bind(who.bob, code)
        domain.cards.unbind(who.bob, serial)
    for _, code in pairs[:3]:
        assert domain.cards.bind(who.alice, code).transferred
    with pytest.raises(TransferLimitReached) as limit:
        domain.cards.bind(who.alice, pairs[3][1])
    assert limit.value.metadata["limit"] == "3"
    # The limit counts the last 365 days, so it frees up a year later.
    clock.advance(days=366)
    assert domain.cards.bind(who.alice, pairs[3][1]).transferred


def test_unbind_rules_and_roles(domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]) -> None:
    serial, code = make_lot(1).pairs[0]
    domain.cards.bind(who.operator, code, account="alice")
    assert [c.serial for c in domain.cards.account_cards(who.alice)] == [serial]
    with pytest.raises(CardNotFound):
        domain.cards.unbind(who.bob, serial)
    with pytest.raises(PermissionDenied):
        domain.cards.unbind(who.alice, serial, account="bob")
    with pytest.raises(PermissionDenied):
        domain.cards.bind(who.merchant, code, account="alice")
    view = domain.cards.unbind(who.alice, serial)
    assert not view.bound
    with domain.storage.read() as tx:
        actions = [e.action for e in tx.audit_entries()]
    assert actions.count("card.bind") == 1 and actions.count("card.unbind") == 1


def test_failed_attempts_count_exactly_under_concurrency(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    _, code = make_lot(1).pairs[0]
    wrong = _unknown(code)
    answers: list[str] = []
    lock = threading.Lock()

    def guess() -> None:
        try:
            domain.cards.bind(who.alice, wrong, origin=PASSED)
        except (CardNotFound, AccountLocked) as e:
            with lock:
                answers.append(e.reason)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Attempts 1-4 are answered; the 5th and every later one meet the lock.
    assert sorted(answers) == ["ACCOUNT_LOCKED"] * 8 + ["CARD_NOT_FOUND"] * 4


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_messy_typing_still_binds(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], data: st.DataObject
) -> None:
    """What people paste: any case, spaces, hyphens, NBSP, zero-width and full-width forms."""
    minted = make_lot(1)
    serial, code = minted.pairs[0]
    messy = ""
    for sym in code.replace("-", ""):
        form = data.draw(st.sampled_from(["same", "lower", "full"]))
        typed = {"same": sym, "lower": sym.lower(), "full": chr(ord(sym) + 0xFEE0)}[form]  # full-width ASCII
        messy += typed + data.draw(st.sampled_from(["", " ", "-", "\u00a0", "\u200b"]))
    account = f"acct-{serial}"
    assert domain.cards.bind(who.operator, messy, account=account).card.serial == serial


def test_concurrent_guesses_never_get_past_the_limit(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot]
) -> None:
    # 64 wrong guesses at once on one account: only 5 may be evaluated at all. The counter
    # counts evaluated failures, so it must end at exactly the limit, not 64.
    from cardmint.kernel import get_kernel

    make_lot(1)
    strangers = [c.decode() for c in get_kernel().generate(64).codes.tolist()]  # never issued
    start = threading.Barrier(64)
    answers: list[str] = []

    def guess(i: int) -> None:
        start.wait(timeout=30)
        try:
            domain.cards.bind(who.bob, strangers[i], origin=PASSED)
        except (CardNotFound, BadCheck, AccountLocked) as e:
            answers.append(e.reason)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with domain.storage.read() as tx:
        bob = tx.get_account(who.bob.account_id)  # type: ignore[arg-type]
        assert bob is not None
        limits = domain.profile.risk.account
        tried = tx.attempt_count(AttemptKind.ACCOUNT, str(bob.id), limits.lock_seconds).recent
    assert tried == limits.lock_after == 5
    assert len(answers) == 64 and answers.count("ACCOUNT_LOCKED") == 60
