"""The compliance profile's [risk] section: parsed whole, checked, and what it says."""

from __future__ import annotations

from pathlib import Path

import pytest
from cardmint.server.domain.profiles import ProfileError, RiskTier, load_profile, parse_profile
from hypothesis import given
from hypothesis import strategies as st

PLATFORM = (Path(__file__).parents[2] / "server/domain/rules/platform.toml").read_text()
CARD = "[risk.card]                    # guesses naming one card number\nchallenge_after = 2\nlock_after = 3"


def test_builtin_profiles_carry_the_spec_limits() -> None:
    for name in ("platform", "cn-prepaid"):
        risk = load_profile(name).risk
        # SPEC §3: 3 failed attempts per card, 5 per account, then a lock with a retry time.
        assert (risk.card.lock_after, risk.account.lock_after) == (3, 5)
        for tier in (risk.card, risk.account, risk.address, risk.device):
            assert 0 < tier.challenge_after < tier.lock_after and tier.lock_seconds > 0


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("[risk.card]\nchallenge_after = 3\nlock_after = 3", "risk.card: challenge_after must be below"),
        ("[risk.card]\nchallenge_after = 0\nlock_after = 0", "risk.card: lock_after and lock_seconds"),
        ("[risk.card]\nchallenge_after = 2\nlock_after = -1", "risk.card.lock_after: must be >= 0"),
        ("[risk.card]\nchallenge_after = 2\nlock_after = true", "risk.card.lock_after: must be int"),
        ("[risk.card]\nchallenge_after = 2\nlock_after = 3\nhint_after = 1", "risk.card: unknown key"),
        ("[risk.card]\nlock_after = 3", "risk.card.challenge_after: missing"),
        ("[risk.cards]\nchallenge_after = 2\nlock_after = 3", "risk: unknown key"),
    ],
)
def test_a_broken_risk_section_is_refused_naming_it(new: str, message: str) -> None:
    assert CARD in PLATFORM
    with pytest.raises(ProfileError, match=message):
        parse_profile(PLATFORM.replace(CARD, new, 1), "platform.toml")


def test_no_risk_section_is_refused() -> None:
    cut = PLATFORM[: PLATFORM.index("[risk.card]")] + PLATFORM[PLATFORM.index("[orders]") :]
    with pytest.raises(ProfileError, match="risk: missing"):
        parse_profile(cut)


@given(challenge=st.integers(0, 50), lock=st.integers(1, 50), seconds=st.integers(1, 10**6))
def test_tiers_parse_as_written(challenge: int, lock: int, seconds: int) -> None:
    text = PLATFORM.replace(CARD, f"[risk.card]\nchallenge_after = {challenge}\nlock_after = {lock}", 1)
    text = text.replace("lock_seconds = 3600", f"lock_seconds = {seconds}", 1)
    if challenge >= lock:
        with pytest.raises(ProfileError):
            parse_profile(text)
        return
    tier = parse_profile(text).risk.card
    assert tier == RiskTier(challenge, lock, seconds)
    # The challenge tier covers exactly the failure counts from challenge_after to the lock.
    assert [n for n in range(lock) if tier.challenged(n)] == (
        list(range(challenge, lock)) if challenge else []
    )
