"""Proto conversions the servicers share, held to the library's own (slower) ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from cardmint.server.api._convert import timestamp
from google.protobuf import timestamp_pb2
from hypothesis import example, given
from hypothesis import strategies as st

_zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30)), None]
)


@given(
    when=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    zone=_zones,
)
@example(when=datetime(1970, 1, 1), zone=UTC)
@example(when=datetime(1969, 12, 31, 23, 59, 59, 999_999), zone=UTC)  # before the epoch
@example(when=datetime(1, 1, 2, 0, 0, 0, 1), zone=None)
def test_timestamp_matches_from_datetime(when: datetime, zone: timezone | None) -> None:
    value = when.replace(tzinfo=zone)
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    got = timestamp(value)
    assert got is not None
    assert (got.seconds, got.nanos) == (expected.seconds, expected.nanos)
    assert got.ToDatetime(tzinfo=UTC) == (value if zone is not None else value.replace(tzinfo=UTC))


def test_no_timestamp_for_none() -> None:
    assert timestamp(None) is None
