"""The attempt limits at window edges (both backends, the storage's fake clock).

Counters live in windows aligned to the clock. Judged by the current window alone, a
counter drops to 0 at each edge: guesses timed across an edge got twice the limit, and a
lock could end a second after it began. A limit is judged over the current window and
the previous one together, so no span as long as a window ever holds more than the limit's
evaluated failures, and a lock's retry time is when the guesser may really try again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from cardmint.server.domain import AccountLocked, CardLocked, CardNotFound, Domain, Origin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Callers, FakeClock, MintedLot
from .test_cards import _unknown

PASSED = Origin(challenged=True)
_names = itertools.count()


def _to_window_start(clock: FakeClock, window: int, offset: int) -> datetime:
    """Move the clock forward to ``offset`` seconds into the next window of ``window``
    seconds (the clock only ever moves forward: examples share it)."""
    now = clock()
    secs = int(now.timestamp())
    clock.advance(seconds=window - secs % window + offset, microseconds=-now.microsecond)
    return clock()


@dataclass
class _Guess:
    at: datetime
    evaluated: bool  # looked at and counted as a failure (the one reaching a limit is, too)
    retry_after: float | None = None  # answered locked, try again in this many seconds


def _failures(domain: Domain, tier: str, subject: str) -> int:
    """Every failure ever counted against the subject, in any window."""
    with domain.storage.read() as tx:
        if tier == "account":
            acct = tx.find_account(subject)
            if acct is None:
                return 0
            subject = str(acct.id)
        row = tx._one(  # type: ignore[attr-defined]
            "SELECT COALESCE(SUM(count), 0) FROM attempt_counters WHERE subject_kind = ? AND subject = ?",
            (tier, subject),
        )
    return int(row[0])


def _guess(domain: Domain, who: Callers, wrong: str, tier: str, serial: str, name: str) -> _Guess:
    now = domain.storage.now()
    subject = name if tier == "account" else serial
    before = _failures(domain, tier, subject)
    retry_after: float | None = None
    try:
        if tier == "account":  # one account, no card named: only the account's limit applies
            domain.cards.bind(who.admin, wrong, account=name, origin=PASSED)
        else:  # one card, each guess from another account: only the card's limit applies
            domain.cards.bind(
                who.admin, wrong, serial=serial, account=f"{name}-{next(_names)}", origin=PASSED
            )
        raise AssertionError("a wrong code was accepted")
    except CardNotFound:
        pass
    except (AccountLocked, CardLocked) as locked:
        retry_after = locked.retry_after
        if retry_after is None:
            raise AssertionError("a lock without a retry time") from locked
    counted = _failures(domain, tier, subject) - before
    assert counted in (0, 1)
    assert counted or retry_after is not None  # a failure answered as such is counted
    return _Guess(now, counted == 1, retry_after)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), tier=st.sampled_from(["account", "card"]))
def test_no_span_of_a_window_lets_more_than_the_limit_through(
    domain: Domain,
    who: Callers,
    make_lot: Callable[..., MintedLot],
    clock: FakeClock,
    data: st.DataObject,
    tier: str,
) -> None:
    limits = domain.profile.risk.account if tier == "account" else domain.profile.risk.card
    window, limit = limits.lock_seconds, limits.lock_after
    serial, code = make_lot(1).pairs[0]
    wrong = _unknown(code)
    # Guesses a few seconds to a window and a half apart, starting anywhere in a window:
    # they cluster at edges, straddle them, and wait out locks.
    gaps = data.draw(
        st.lists(
            st.one_of(
                st.integers(0, 5), st.integers(window - 5, window + 5), st.integers(0, window * 3 // 2)
            ),
            min_size=limit,
            max_size=4 * limit,
        ),
        label="gaps",
    )
    _to_window_start(clock, window, data.draw(st.integers(0, window - 1), label="offset"))
    name = f"edge-{next(_names)}"
    guesses = []
    for gap in gaps:
        clock.advance(seconds=gap)
        guesses.append(_guess(domain, who, wrong, tier, serial, name))

    evaluated = [g.at for g in guesses if g.evaluated]
    span = timedelta(seconds=window)
    for first in evaluated:
        # The limit holds over every span of a window, wherever it starts.
        assert sum(first <= t < first + span for t in evaluated) <= limit
    locked_until: datetime | None = None
    for g in guesses:
        if locked_until is not None and g.at < locked_until:
            # Inside a lock every guess is refused uncounted, with the same end.
            assert not g.evaluated and g.retry_after is not None
            end = g.at + timedelta(seconds=g.retry_after)
            assert abs(end - locked_until) < timedelta(milliseconds=1)
            continue
        if locked_until is not None:
            # The retry time is honest: the first guess at or past it is evaluated.
            assert g.evaluated
        locked_until = None
        if g.retry_after is not None:
            # A new lock (reached by this guess or standing): neither a past moment nor
            # longer than two windows.
            assert 0 < g.retry_after <= 2 * window
            locked_until = g.at + timedelta(seconds=g.retry_after)


@pytest.mark.parametrize("tier", ["account", "card"])
def test_guesses_timed_across_an_edge_get_the_limit_not_twice_it(
    domain: Domain, who: Callers, make_lot: Callable[..., MintedLot], clock: FakeClock, tier: str
) -> None:
    # The failure seen in a run of tests/reliability (8 guesses through for a limit of 5):
    # limit - 1 failures just before an edge, then a burst just after it.
    limits = domain.profile.risk.account if tier == "account" else domain.profile.risk.card
    window, limit = limits.lock_seconds, limits.lock_after
    serial, code = make_lot(1).pairs[0]
    wrong = _unknown(code)
    _to_window_start(clock, window, window - 3)
    name = f"edge-{next(_names)}"
    before = [_guess(domain, who, wrong, tier, serial, name) for _ in range(limit - 1)]
    assert [g.evaluated for g in before] == [True] * (limit - 1)
    assert all(g.retry_after is None for g in before)
    clock.advance(seconds=4)  # one second into the next window
    after = [_guess(domain, who, wrong, tier, serial, name) for _ in range(limit)]
    # One more failure reaches the limit (and is answered locked); the rest are not looked at.
    assert [g.evaluated for g in after] == [True] + [False] * (limit - 1)
    # Locked until the earlier failures' window drops out: the end of this window.
    assert [g.retry_after for g in after] == [pytest.approx(window - 1)] * limit
    clock.advance(seconds=window - 1)
    assert _guess(domain, who, wrong, tier, serial, name).evaluated
