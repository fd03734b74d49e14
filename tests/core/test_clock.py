"""One clock: UTC time stamps in ISO 8601, read back only with a time zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.clock import format_utc, parse_utc, utc_now
from core.errors import InputError


def test_utc_now_is_iso_8601_with_milliseconds_and_z() -> None:
    stamp = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert abs((parse_utc(stamp) - datetime.now(UTC)).total_seconds()) < 60


def test_format_and_parse_round_trip_across_zones() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    assert format_utc(when) == "2026-01-02T01:04:05.678Z"
    assert parse_utc("2026-01-02T03:04:05.678+02:00") == when
    with pytest.raises(InputError, match="has no time zone"):
        parse_utc("2026-01-02T03:04:05")
    with pytest.raises(InputError, match="is not an ISO 8601 time"):
        parse_utc("yesterday")
