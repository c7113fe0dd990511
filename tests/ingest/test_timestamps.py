"""Timestamps: epoch magnitudes, ISO-8601 with and without offset, DST, and the error contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetra.ingest.timestamps import TimestampError, format_us, parse_timestamp

BERLIN = ZoneInfo("Europe/Berlin")
T0 = 1_732_270_000  # 2024-11-22T10:06:40Z


def us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T0, T0 * 1_000_000),
        (T0 * 1_000, T0 * 1_000_000),
        (T0 * 1_000_000, T0 * 1_000_000),
        (0, 0),
        (99_999_999_999, 99_999_999_999_000_000),  # last second value
        (100_000_000_000, 100_000_000_000_000),  # first millisecond value
        (10**17 - 1, 10**17 - 1),  # last microsecond value
        (1732270000.5, 1732270000_500000),
        (1732270000.123456, 1732270000_123456),
        (1732270000123.456, 1732270000_123456),
        (str(T0), T0 * 1_000_000),
        (f" {T0 * 1000} ", T0 * 1_000_000),
        ("1732270000.000001", 1732270000_000001),
        ("1732270000123", 1732270000_123000),
    ],
)
def test_epochs_by_magnitude(value: object, expected: int) -> None:
    assert parse_timestamp(value, UTC) == (expected, False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T10:00:00+00:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T12:00:00+02:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T05:30:00-04:30", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T10:00:00.123456Z", datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-22T10:00:00.5Z", datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_iso_with_offset(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, BERLIN) == (us(expected), False)


def test_naive_iso_is_read_in_the_zone() -> None:
    # Winter: Berlin is UTC+1; summer: UTC+2.
    assert parse_timestamp("2026-01-15T12:00:00", BERLIN) == (
        us(datetime(2026, 1, 15, 11, tzinfo=UTC)),
        True,
    )
    assert parse_timestamp("2026-07-15T12:00:00", BERLIN) == (
        us(datetime(2026, 7, 15, 10, tzinfo=UTC)),
        True,
    )
    assert parse_timestamp("2026-07-15T12:00:00", UTC) == (
        us(datetime(2026, 7, 15, 12, tzinfo=UTC)),
        True,
    )


def test_naive_across_dst_change() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST. 01:59 is +01:00, 03:00 is +02:00,
    # so one local minute apart on the wall clock is one real minute apart.
    before, _ = parse_timestamp("2026-03-29T01:59:00", BERLIN)
    after, _ = parse_timestamp("2026-03-29T03:00:00", BERLIN)
    assert after - before == 60 * 1_000_000


NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("zone", "local", "expected", "same_as"),
    [
        # Gap: the local time does not exist. It is read with the offset in force before the
        # change (winter time), i.e. the wall clock moved forward by the gap's length.
        (BERLIN, "2026-03-29T02:30:00", datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "03:30+02:00"),
        (NEW_YORK, "2026-03-08T02:30:00", datetime(2026, 3, 8, 7, 30, tzinfo=UTC), "03:30-04:00"),
        # Fold: the local time happens twice. It is read as the first occurrence (summer time).
        (BERLIN, "2026-10-25T02:30:00", datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "02:30+02:00"),
        (NEW_YORK, "2026-11-01T01:30:00", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), "01:30-04:00"),
    ],
)
def test_naive_time_in_a_dst_gap_or_fold(
    zone: ZoneInfo, local: str, expected: datetime, same_as: str
) -> None:
    """What docs/mqtt.md promises: a gap reads as if the clock had not changed yet, a fold as
    its first occurrence; either way the reading is flagged naive, never rejected."""
    assert parse_timestamp(local, zone) == (us(expected), True)
    assert parse_timestamp(f"{local[:11]}{same_as}", zone) == (us(expected), False)


def test_second_occurrence_of_a_fold_needs_an_offset() -> None:
    # The second 02:30 in Berlin (winter time, 01:30Z) cannot be written naively: send +01:00.
    first, _ = parse_timestamp("2026-10-25T02:30:00", BERLIN)
    second, naive = parse_timestamp("2026-10-25T02:30:00+01:00", BERLIN)
    assert not naive and second - first == 3600 * 1_000_000
    # 03:00 is winter time again (02:00Z), 90 minutes after the first 02:30: a naive series
    # through the fold puts its repeated hour on the instants of the first one.
    after, _ = parse_timestamp("2026-10-25T03:00:00", BERLIN)
    assert after - first == 90 * 60 * 1_000_000


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "boolean"),
        (None, "null"),
        ([1], "list"),
        ({"a": 1}, "dict"),
        (-1, "negative"),
        (-0.5, "negative"),
        (10**17, "too large"),
        (1e20, "too large"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("", "empty"),
        ("   ", "empty"),
        ("yesterday", "not a timestamp"),
        ("-5", "not a timestamp"),
        ("1e9", "not a timestamp"),
        ("²³", "not a timestamp"),
        ("1" * 100, "too long"),
        ("1969-12-31T23:59:59Z", "before 1970"),
        ("0001-01-01T00:00:00+01:00", "1970"),
        ("2026-13-01T00:00:00", "not a timestamp"),
        ("\x00\ud800", "not a timestamp"),
    ],
)
def test_errors_say_what_was_expected(value: object, fragment: str) -> None:
    with pytest.raises(TimestampError, match=fragment) as info:
        parse_timestamp(value, BERLIN)
    assert isinstance(info.value, ValueError)
    assert "\x00" not in str(info.value)


def test_unreadable_values_mention_the_accepted_forms() -> None:
    with pytest.raises(TimestampError, match="epoch seconds/milliseconds/microseconds or ISO-8601"):
        parse_timestamp("next tuesday", UTC)


def test_format_us() -> None:
    assert format_us(0) == "1970-01-01T00:00:00Z"
    assert format_us(1732270000_123456) == "2024-11-22T10:06:40.123456Z"
    assert format_us(10**30).endswith("µs since epoch")


aware = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9998, 12, 31),
    timezones=st.timezones(),
)


@given(aware)
def test_iso_round_trip(dt: datetime) -> None:
    assert parse_timestamp(dt.isoformat(), UTC) == (us(dt), False)
    assert parse_timestamp(format_us(us(dt)), BERLIN) == (us(dt), False)


@given(st.integers(min_value=0, max_value=10**17 - 1))
def test_epoch_integers_always_decode(v: int) -> None:
    ts, naive = parse_timestamp(v, UTC)
    assert not naive and ts >= 0
    assert parse_timestamp(str(v), UTC) == (ts, False)


@given(st.one_of(st.text(max_size=80), st.floats(), st.integers(), st.none(), st.booleans()))
def test_only_timestamp_error(value: object) -> None:
    try:
        ts, _ = parse_timestamp(value, BERLIN)
    except TimestampError:
        return
    assert isinstance(ts, int) and ts >= 0


@given(st.integers(min_value=-(10**18), max_value=10**18) | st.integers())
def test_format_us_is_isoformat_with_z(ts: int) -> None:
    try:
        expected = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts)).isoformat()
        expected = expected.removesuffix("+00:00") + "Z"
    except OverflowError:
        expected = f"{ts} µs since epoch"
    assert format_us(ts) == expected
