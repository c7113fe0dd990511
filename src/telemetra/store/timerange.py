"""Time ranges and buckets of telemetry queries: ``from``/``to`` (ISO-8601, epoch ms, ``now``,
``-24h``), bucket widths (``30s`` … ``1w``, ``auto``), IANA time zones and calendar buckets (local
days, weeks and months). Pure functions on µs since the epoch, shared by the HTTP API and the CLI.

An unreadable value raises :class:`ParamError`, which names the parameter and what was expected;
the API answers it with 422, the CLI prints it.
"""

from __future__ import annotations

import functools
import re
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Literal
from zoneinfo import ZoneInfo

from telemetra.ingest.timestamps import format_us

US = 1_000_000
_UNITS_US = {"s": US, "m": 60 * US, "h": 3600 * US, "d": 86_400 * US, "w": 7 * 86_400 * US}
# "Nice" bucket widths for bucket=auto, smallest first (beyond the last: multiples of it).
NICE_BUCKETS_S = (
    *(1, 5, 10, 30),
    *(60, 5 * 60, 10 * 60, 30 * 60),
    *(3600, 3 * 3600, 6 * 3600, 12 * 3600),
    *(86_400, 7 * 86_400),
)
MAX_BUCKETS = 100_000  # per series: an explicit bucket finer than this over the range is refused
MAX_TIME_US = 253_402_300_800 * US  # 10000-01-01T00:00:00Z (exclusive)
DAY_US = 86_400 * US
_TIME_EXPECTED = (
    "expected ISO-8601 with Z or an offset (2026-11-22T10:00:00Z), epoch milliseconds, "
    "'now', or a relative time such as -30m, -24h, -7d"
)
_RELATIVE = re.compile(r"(?:now)?-(\d{1,9})([smhdw])")
_DURATION = re.compile(r"([1-9]\d{0,5})([smhdwM])")
_SPACE_FOR_PLUS = re.compile(
    r"(.*\d) (\d\d(?::?\d\d)?)"
)  # '+01:00' arrived URL-decoded as ' 01:00'
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Z"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_EPOCH_MONDAY = date(1970, 1, 5).toordinal()
# Nominal widths reported as bucket_s for calendar buckets (a month: its average length).
CALENDAR_S = {"d": 86_400, "w": 7 * 86_400, "M": 2_629_746}
CalendarUnit = Literal["d", "w", "M"]
# bucket=auto with tz, once a fixed bucket would be a day or wider: these, then years.
AUTO_CALENDAR: tuple[tuple[CalendarUnit, int], ...] = (
    *(("d", 1), ("w", 1)),
    *(("M", 1), ("M", 3), ("M", 12)),
)


class ParamError(ValueError):
    """A time, bucket or zone that cannot be read: ``param`` names it (``from``, ``to``,
    ``bucket``, ``tz``), ``problem`` says what was expected; ``str()`` is the one-line message."""

    def __init__(self, param: str, message: str, problem: str) -> None:
        super().__init__(message)
        self.param = param
        self.problem = problem


def parse_time(value: str, param: str, now_us: int) -> int:
    """A ``from``/``to`` parameter as µs since the epoch; ParamError naming it if unreadable."""
    s = value.strip()
    if s == "now":
        us = now_us
    elif m := _RELATIVE.fullmatch(s):
        us = now_us - int(m.group(1)) * _UNITS_US[m.group(2)]
    elif s.isascii() and s.isdigit():
        us = int(s) * 1000  # epoch milliseconds
    else:
        if m := _SPACE_FOR_PLUS.fullmatch(s):
            s = f"{m.group(1)}+{m.group(2)}"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ParamError(
                param, f"`{param}` is not a time: {value[:40]!r}", _TIME_EXPECTED
            ) from None
        if dt.tzinfo is None:
            raise ParamError(
                param,
                f"`{param}` has no time zone: {value[:40]!r}; add Z or an offset such as +01:00",
                _TIME_EXPECTED,
            )
        us = (dt - _EPOCH) // _ONE_US
    if not 0 <= us < MAX_TIME_US:
        raise ParamError(
            param,
            f"`{param}` is outside 1970-01-01..9999-12-31: {value[:40]!r}",
            "a time from 1970 to 9999",
        )
    return us


def time_range(
    start: str | None,
    end: str | None,
    now_us: int | None = None,
    names: tuple[str, str] = ("from", "to"),
) -> tuple[int, int]:
    """``from``/``to`` (defaults: the last 24 hours) as µs; ``from`` must come before ``to``.
    Relative times count back from ``now_us`` (default: the clock); errors call the two
    ``names`` (the CLI: ``--from``, ``--to``)."""
    if now_us is None:
        now_us = time.time_ns() // 1000
    first, second = names
    s = parse_time(start if start is not None else "-24h", first, now_us)
    e = parse_time(end if end is not None else "now", second, now_us)
    if s >= e:
        raise ParamError(
            first,
            f"`{first}` ({format_us(s)}) must be before `{second}` ({format_us(e)})",
            f"{first} < {second}",
        )
    return s, e


_BUCKET_EXPECTED = "a whole number with s, m, h, d, w or M (30s, 5m, 1h, 1d, 1w, 1M), or auto"


def _duration(value: str) -> tuple[int, str]:
    """A bucket such as 30s, 5m, 1h, 1d, 1w, 1M as (number, unit); ParamError if unreadable."""
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise ParamError("bucket", f"`bucket` is not a duration: {value[:40]!r}", _BUCKET_EXPECTED)
    return int(m.group(1)), m.group(2)


def parse_bucket(value: str) -> int:
    """A fixed bucket width such as 30s, 5m, 1h, 1d, 7d as µs (months have no fixed width)."""
    n, unit = _duration(value)
    if unit == "M":
        raise ParamError(
            "bucket",
            f"month buckets have no fixed width: {value[:40]!r} is a calendar bucket",
            "a whole number with s, m, h, d or w",
        )
    return n * _UNITS_US[unit]


def bucket_count(start: int, end: int, bucket_us: int) -> int:
    """How many epoch-aligned buckets [start, end) touches."""
    return (end - 1) // bucket_us - start // bucket_us + 1


def auto_bucket(start: int, end: int, max_points: int) -> int:
    """The smallest nice bucket (µs) with at most ``max_points`` buckets over [start, end)."""
    for seconds in NICE_BUCKETS_S:
        if bucket_count(start, end, seconds * US) <= max_points:
            return seconds * US
    widest = NICE_BUCKETS_S[-1] * US
    k = max(1, -(-(end - start) // (widest * max_points)))
    while bucket_count(start, end, k * widest) > max_points:
        k += 1
    return k * widest


# --- calendar buckets in a time zone ---------------------------------------------------------


@functools.cache
def _zone_names() -> dict[str, str]:
    """The IANA time zone names known here, by their lower-case spelling."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def parse_zone(value: str) -> ZoneInfo:
    """An IANA time zone name (``Europe/Berlin``, ``UTC``); ParamError naming ``tz`` if
    unknown, with the right spelling when only the case differs."""
    name = value.strip()
    if name in _UTC_NAMES:
        return ZoneInfo("UTC")
    spelled = _zone_names().get(name.lower())
    if spelled is not None and spelled == name:
        return ZoneInfo(name)
    hint = f"; did you mean {spelled!r}?" if spelled is not None else ""
    raise ParamError(
        "tz",
        f"`tz` is not an IANA time zone: {value[:40]!r}{hint}",
        "an IANA time zone name such as Europe/Berlin, America/New_York or UTC",
    )


@dataclass(frozen=True, slots=True)
class Calendar:
    """Buckets of ``n`` local days, weeks (from Monday) or months (from the 1st) in ``zone``,
    each from local midnight to local midnight: a day across a daylight-saving change lasts 23 or
    25 hours. Multi-unit buckets are aligned to 1970-01-01 (days), 1970-01-05 (weeks, a Monday)
    and January (months: 3M are quarters, 12M years)."""

    unit: CalendarUnit
    n: int
    zone: ZoneInfo

    @property
    def label(self) -> str:
        return f"{self.n}{self.unit}"


def _local(ts: int, zone: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(microseconds=ts)).astimezone(zone)


def calendar_index(ts: int, cal: Calendar) -> int:
    """The number of the calendar bucket holding ``ts`` (µs)."""
    day = _local(ts, cal.zone).date()
    if cal.unit == "d":
        return (day.toordinal() - _EPOCH_DAY) // cal.n
    if cal.unit == "w":
        return (day.toordinal() - _EPOCH_MONDAY) // (7 * cal.n)
    return (day.year * 12 + day.month - 1) // cal.n


def _index_start(index: int, cal: Calendar) -> date:
    if cal.unit == "d":
        return date.fromordinal(_EPOCH_DAY + index * cal.n)
    if cal.unit == "w":
        return date.fromordinal(_EPOCH_MONDAY + index * 7 * cal.n)
    month = index * cal.n
    return date(month // 12, month % 12 + 1, 1)


def local_midnight(day: date, zone: ZoneInfo) -> int:
    """The first instant (µs) of ``day`` in ``zone``: its midnight (the first one, should the
    clocks go back over it), or the end of a daylight-saving gap that skips midnight."""
    # fold=0: an ambiguous time is its first occurrence; a skipped one is read with the offset
    # from before the gap, which lands on the instant the clocks jump.
    return (datetime.combine(day, wall_time(), tzinfo=zone) - _EPOCH) // _ONE_US


def calendar_count(start: int, end: int, cal: Calendar) -> int:
    """How many calendar buckets [start, end) touches."""
    return calendar_index(end - 1, cal) - calendar_index(start, cal) + 1


def calendar_bounds(start: int, end: int, cal: Calendar) -> list[int]:
    """UTC µs boundaries of the calendar buckets covering [start, end), strictly increasing:
    bucket i is [bounds[i], bounds[i + 1]); the first starts at or before ``start``, the last
    ends at or after ``end``. ValueError/OverflowError beyond the years 1..9999."""
    first, last = calendar_index(start, cal), calendar_index(end - 1, cal)
    return [local_midnight(_index_start(i, cal), cal.zone) for i in range(first, last + 2)]


def auto_calendar(start: int, end: int, max_points: int, zone: ZoneInfo) -> Calendar:
    """The smallest of 1d, 1w, 1M, 3M, 12M, then whole years, with at most ``max_points``
    buckets over [start, end)."""
    for unit, n in AUTO_CALENDAR:
        cal = Calendar(unit, n, zone)
        if calendar_count(start, end, cal) <= max_points:
            return cal
    years = calendar_count(start, end, Calendar("M", 12, zone))
    k = max(1, -(-years // max_points))
    while calendar_count(start, end, Calendar("M", 12 * k, zone)) > max_points:
        k += 1
    return Calendar("M", 12 * k, zone)


def plan_buckets(
    bucket: str, start: int, end: int, max_points: int, zone: ZoneInfo | None
) -> int | Calendar:
    """A fixed, epoch-aligned width in µs, or calendar buckets: months always (in UTC without a
    zone); days and weeks when a zone is given; bucket=auto with a zone once it is a day or more."""
    text = bucket.strip()
    if text == "auto":
        width = auto_bucket(start, end, max_points)
        if zone is None or width < DAY_US:
            return width
        return auto_calendar(start, end, max_points, zone)
    n, unit = _duration(text)
    if unit == "M":
        return Calendar("M", n, zone or ZoneInfo("UTC"))
    if zone is not None and unit in ("d", "w"):
        return Calendar("d" if unit == "d" else "w", n, zone)
    return n * _UNITS_US[unit]


def width_label(width_us: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if width_us % _UNITS_US[unit] == 0:
            return f"{width_us // _UNITS_US[unit]}{unit}"
    return f"{width_us}us"  # not reached: widths are whole seconds


def local_iso(ts: int, zone: ZoneInfo | None) -> str | None:
    if zone is None:
        return None
    try:
        return _local(ts, zone).isoformat()
    except OverflowError:
        return None


@dataclass(frozen=True, slots=True)
class BucketPlan:
    """The buckets of an aggregate over [start, end): a fixed epoch-aligned ``width_us``, or
    ``calendar`` buckets with their UTC ``bounds`` (see :func:`calendar_bounds`)."""

    width_us: int | None
    calendar: Calendar | None
    bounds: list[int]
    count: int

    @property
    def label(self) -> str:
        """The bucket as written in a request: 30s, 1h, 1d, 1M …"""
        return self.calendar.label if self.calendar else width_label(self.width_us or US)

    @property
    def width_s(self) -> int:
        """Width in seconds; nominal for calendar buckets (a month: its average length)."""
        if self.calendar is not None:
            return CALENDAR_S[self.calendar.unit] * self.calendar.n
        return (self.width_us or US) // US


def plan(bucket: str, start: int, end: int, max_points: int, zone: ZoneInfo | None) -> BucketPlan:
    """:func:`plan_buckets`, refused with ParamError (``bucket``) when it makes more than
    MAX_BUCKETS buckets or its calendar reaches beyond the years 1..9999."""
    try:
        chosen = plan_buckets(bucket, start, end, max_points, zone)
        if isinstance(chosen, Calendar):
            n = calendar_count(start, end, chosen)
            bounds = calendar_bounds(start, end, chosen) if n <= MAX_BUCKETS else []
        else:
            n, bounds = bucket_count(start, end, chosen), []
    except ParamError:
        raise
    except (OverflowError, ValueError):  # calendar dates beyond the years 1..9999
        raise ParamError(
            "bucket",
            f"bucket {bucket[:40]!r} in {zone.key if zone else 'UTC'} reaches beyond the years "
            "1..9999 over this range",
            "a narrower bucket or range",
        ) from None
    if n > MAX_BUCKETS:
        raise ParamError(
            "bucket",
            f"bucket {bucket[:40]!r} makes {n} buckets over this range (at most {MAX_BUCKETS}); "
            "use a wider bucket or bucket=auto",
            "a wider bucket",
        )
    if isinstance(chosen, Calendar):
        return BucketPlan(None, chosen, bounds, n)
    return BucketPlan(chosen, None, [], n)
