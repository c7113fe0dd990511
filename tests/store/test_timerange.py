"""Time ranges, buckets and zones as the API and the CLI read them (pure functions)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetra.ingest.timestamps import format_us
from telemetra.store import timerange
from telemetra.store.timerange import US, Calendar, ParamError

NOW = 1_795_341_600 * US  # 2026-11-22T10:00:00Z


def test_times_in_every_accepted_form() -> None:
    assert timerange.parse_time("now", "from", NOW) == NOW
    assert timerange.parse_time("-90m", "from", NOW) == NOW - 90 * 60 * US
    assert timerange.parse_time("now-1d", "from", NOW) == NOW - 86_400 * US
    assert timerange.parse_time("1795341600000", "from", NOW) == NOW
    assert timerange.parse_time("2026-11-22T11:00:00+01:00", "to", NOW) == NOW
    assert timerange.parse_time("2026-11-22T11:00:00 01:00", "to", NOW) == NOW  # '+' decoded


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "`from` is not a time: 'yesterday'"),
        ("2026-11-22T10:00:00", "`from` has no time zone"),
        ("-99999999w", "`from` is outside 1970-01-01..9999-12-31"),
    ],
)
def test_unreadable_times_name_the_parameter(value: str, message: str) -> None:
    with pytest.raises(ParamError) as caught:
        timerange.parse_time(value, "from", NOW)
    assert caught.value.param == "from"
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_time_range_defaults_to_the_last_day_and_wants_from_before_to() -> None:
    assert timerange.time_range(None, None, now_us=NOW) == (NOW - 86_400 * US, NOW)
    assert timerange.time_range("-1h", None, now_us=NOW) == (NOW - 3600 * US, NOW)
    with pytest.raises(ParamError) as caught:
        timerange.time_range("now", "-1h", now_us=NOW)
    assert caught.value.param == "from" and caught.value.problem == "from < to"
    assert format_us(NOW) in str(caught.value)


def test_plans_fixed_and_calendar_buckets() -> None:
    fixed = timerange.plan("1h", NOW, NOW + 86_400 * US, 1000, None)
    assert (fixed.width_us, fixed.count, fixed.label, fixed.width_s) == (3600 * US, 24, "1h", 3600)
    berlin = ZoneInfo("Europe/Berlin")
    days = timerange.plan("1d", NOW, NOW + 86_400 * US, 1000, berlin)
    assert days.calendar == Calendar("d", 1, berlin) and days.width_s == 86_400
    assert days.count == 2 and len(days.bounds) == 3  # 11:00 local to 11:00 the next day
    auto = timerange.plan("auto", NOW, NOW + 400 * 86_400 * US, 20, berlin)
    assert auto.label == "1M" and auto.width_s == 2_629_746


@pytest.mark.parametrize(
    ("bucket", "zone", "message"),
    [
        ("1x", None, "`bucket` is not a duration: '1x'"),
        ("1s", None, "bucket '1s' makes 864000 buckets"),
        ("999999M", "Pacific/Kiritimati", "bucket '999999M' in Pacific/Kiritimati reaches beyond"),
    ],
)
def test_unusable_buckets_name_the_bucket(bucket: str, zone: str | None, message: str) -> None:
    with pytest.raises(ParamError) as caught:
        timerange.plan(bucket, NOW, NOW + 864_000 * US, 1000, zone and ZoneInfo(zone))
    assert caught.value.param == "bucket"
    assert str(caught.value).startswith(message)


def test_zones_are_iana_names_with_a_hint_for_the_case() -> None:
    assert timerange.parse_zone("Z").key == "UTC"
    assert timerange.parse_zone("Europe/Berlin").key == "Europe/Berlin"
    with pytest.raises(ParamError, match="did you mean 'Europe/Berlin'") as caught:
        timerange.parse_zone("europe/berlin")
    assert caught.value.param == "tz"


@given(
    st.integers(0, 4_000_000_000 * US),
    st.integers(1, 400 * 86_400 * US),
    st.integers(1, 2000),
)
def test_auto_bucket_never_exceeds_max_points(start: int, length: int, max_points: int) -> None:
    width = timerange.auto_bucket(start, start + length, max_points)
    assert timerange.bucket_count(start, start + length, width) <= max_points
    assert width % US == 0


def test_the_cli_names_its_options() -> None:
    with pytest.raises(ParamError) as caught:
        timerange.time_range("-1h", "-2h", now_us=NOW, names=("--from", "--to"))
    assert caught.value.param == "--from"
    assert str(caught.value).startswith("`--from` (2026-11-22T09:00:00Z) must be before `--to`")
    with pytest.raises(ParamError, match=r"^`--to` is not a time: 'soon'"):
        timerange.time_range(None, "soon", now_us=NOW, names=("--from", "--to"))
