"""Telemetry queries: raw history, aggregates, latest values, quality, dead letters, export."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import re
import time
import zoneinfo
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope, visible_device
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store import query, schema
from telemetra.store.query import Bucket, HistoryRow, LatestValue, Source
from telemetra.store.schema import ROLLUPS

router = APIRouter(tags=["telemetry"], responses=errors.responses(422, 429))
NO_DEVICE = errors.responses(404, messages={404: "no device 'greenhouse-9'"})

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
EXPORT_PAGE = 5000
PARQUET_ROW_GROUP_PAGES = 10  # export pages per Parquet row group
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
DEFAULT_FUNCS = ("avg", "min", "max", "count")
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
_CALENDAR_S = {"d": 86_400, "w": 7 * 86_400, "M": 2_629_746}
CalendarUnit = Literal["d", "w", "M"]
# bucket=auto with tz, once a fixed bucket would be a day or wider: these, then years.
AUTO_CALENDAR: tuple[tuple[CalendarUnit, int], ...] = (
    *(("d", 1), ("w", 1)),
    *(("M", 1), ("M", 3), ("M", 12)),
)

AggFn = Literal["avg", "min", "max", "count", "sum", "first", "last"]

# --- response models --------------------------------------------------------------------------


class ReadingOut(BaseModel):
    metric: str = Field(examples=["temperature"])
    ts: str = Field(description="event time, ISO-8601 UTC", examples=["2026-11-22T10:00:00Z"])
    value: float | None = Field(description="numeric value (None: a text reading)", examples=[21.5])
    text: str | None = Field(description="text value (None: a numeric reading)", examples=[None])
    flags: int = Field(
        description="quality flags: 1 late, 2 out of order, 4 clock corrected, 8 counter reset, "
        "16 server time, 32 unit converted, 64 naive time",
        examples=[0],
    )
    received_at: str = Field(examples=["2026-11-22T10:00:01.250000Z"])


_READING: dict[str, Any] = {
    "metric": "temperature",
    "ts": "2026-11-22T10:00:00Z",
    "value": 21.5,
    "text": None,
    "flags": 0,
    "received_at": "2026-11-22T10:00:01.250000Z",
}


class HistoryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        _READING,
                        {**_READING, "metric": "door", "value": None, "text": "open"},
                    ],
                    "next_cursor": "aDE6MTc5NTM0MTYwMDAwMDAwMDoxOmE",
                }
            ]
        }
    )

    items: list[ReadingOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null: no more", examples=[None]
    )


class PointOut(BaseModel):
    """Aggregates of one bucket; only the requested functions are present."""

    ts: str = Field(description="bucket start, ISO-8601 UTC", examples=["2026-11-22T10:00:00Z"])
    local: str | None = Field(
        None,
        description="bucket start in the requested `tz`, ISO-8601 with its offset (only with tz)",
        examples=["2026-11-22T11:00:00+01:00"],
    )
    avg: float | None = Field(None, examples=[21.4])
    min: float | None = Field(None, examples=[20.9])
    max: float | None = Field(None, examples=[22.0])
    count: int | None = Field(None, examples=[60])
    sum: float | None = Field(None, examples=[1284.0])
    first: float | None = Field(None, examples=[21.0])
    last: float | None = Field(None, examples=[21.8])


_POINTS: list[Any] = [
    {"ts": "2026-11-22T10:00:00Z", "local": "2026-11-22T11:00:00+01:00",
     "avg": 21.4, "min": 20.9, "max": 22.0, "count": 60},
    {"ts": "2026-11-22T11:00:00Z", "local": "2026-11-22T12:00:00+01:00",
     "avg": 21.9, "min": 21.2, "max": 22.6, "count": 60},
]  # fmt: skip


class SeriesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"metric": "temperature", "points": _POINTS}]}
    )

    metric: str = Field(examples=["temperature"])
    points: list[PointOut] = Field(description="buckets with data, oldest first")


class AggregateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "bucket": "1h",
                    "bucket_s": 3600,
                    "tz": "Europe/Berlin",
                    "source": "rollup_1h",
                    "series": [{"metric": "temperature", "points": _POINTS}],
                },
                {
                    "bucket": "1d",
                    "bucket_s": 86400,
                    "source": "rollup_1h",
                    "series": [
                        {
                            "metric": "energy",
                            "points": [{"ts": "2026-11-22T00:00:00Z", "sum": 18.4, "last": 1204.7}],
                        }
                    ],
                },
            ]
        }
    )

    bucket: str = Field(
        description="the bucket used (the one chosen for bucket=auto): 30s, 5m, 1h, 1d, 1w, 1M …",
        examples=["1h"],
    )
    bucket_s: int = Field(
        description="bucket width in seconds; nominal for calendar buckets, whose length follows "
        "the calendar of `tz`: a day 86400 (23 or 25 hours across a daylight-saving change), a "
        "week 604800, a month 2629746 (its average)",
        examples=[3600],
    )
    tz: str | None = Field(
        None,
        description="the time zone of calendar buckets and of `local`: the requested one, or UTC "
        "for month buckets without tz (absent: fixed buckets without tz)",
        examples=["Europe/Berlin"],
    )
    source: Source = Field(
        description="the table that served the whole buckets of the range (the finest one when "
        "calendar buckets do not start on whole UTC hours, as in Asia/Kolkata); partial buckets "
        "at its edges are read from finer data",
        examples=["rollup_1h"],
    )
    series: list[SeriesOut] = Field(description="one per requested metric, in request order")


class LatestOut(BaseModel):
    device: str = Field(examples=["greenhouse-1"])
    metric: str = Field(examples=["temperature"])
    ts: str = Field(description="event time, ISO-8601 UTC", examples=["2026-11-22T10:00:00Z"])
    value: float | None = Field(examples=[21.5])
    text: str | None = Field(examples=[None])
    flags: int = Field(examples=[0])
    received_at: str = Field(examples=["2026-11-22T10:00:01.250000Z"])


class LatestList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {**_READING, "device": "greenhouse-1", "metric": "humidity",
                         "value": 40.0},
                        {**_READING, "device": "greenhouse-1"},
                        {**_READING, "device": "greenhouse-2", "value": 19.0, "flags": 4},
                    ]
                }
            ]
        }
    )  # fmt: skip

    items: list[LatestOut] = Field(description="by device, then metric")


class QualityOut(BaseModel):
    device: str = Field(examples=["greenhouse-1"])
    counters: dict[str, int] = Field(
        description="running counts: accepted, duplicate, conflict, late, out_of_order, "
        "rejected:<reason>, …",
        examples=[{"accepted": 1440, "duplicate": 3, "late": 12, "rejected:out_of_range": 2}],
    )
    rejected_by_reason: dict[str, int] = Field(examples=[{"out_of_range": 2}])
    last_seen: str | None = Field(examples=["2026-11-22T10:00:01Z"])
    clock_offset_s: float | None = Field(
        description="estimated device clock − server clock, seconds", examples=[-0.8]
    )


class DeadLetterOut(BaseModel):
    id: int = Field(examples=[42])
    device: str | None = Field(description="null: the device was not known", examples=["gh-1"])
    source: str = Field(examples=["mqtt"])
    topic: str | None = Field(examples=["devices/gh-1/telemetry"])
    reason: str = Field(examples=["out_of_range"])
    detail: str = Field(examples=["temperature 6000 is outside [-60, 150] C"])
    index: int | None = Field(description="entry of an array payload", examples=[1])
    payload: str | None = Field(
        description="raw payload as UTF-8 text (invalid bytes as U+FFFD), size-capped",
        examples=['{"temperature": 6000}'],
    )
    payload_size: int = Field(description="size of the original payload in bytes", examples=[21])
    received_at: str = Field(examples=["2026-11-22T10:00:01Z"])


class DeadLetterPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": 42, "device": "gh-1", "source": "mqtt",
                         "topic": "devices/gh-1/telemetry", "reason": "out_of_range",
                         "detail": "6000 outside the valid range [-90, 200] °C", "index": 1,
                         "payload": '[{"temperature": 21.5}, {"temperature": 6000}]',
                         "payload_size": 46, "received_at": "2026-11-22T10:00:01Z"},
                        {"id": 41, "device": "gh-1", "source": "mqtt",
                         "topic": "devices/gh-1/telemetry", "reason": "invalid_json",
                         "detail": "invalid JSON: Expecting value at line 1 column 17 (char 16)",
                         "index": None, "payload": '{"temperature": }', "payload_size": 17,
                         "received_at": "2026-11-22T09:59:00Z"},
                    ],
                    "next_cursor": "ZDE6NDE",
                }
            ]
        }
    )  # fmt: skip

    items: list[DeadLetterOut]
    next_cursor: str | None = Field(examples=[None])


# --- parameters -------------------------------------------------------------------------------


def _invalid(param: str, message: str, problem: str) -> ApiError:
    return ApiError(422, message, details=[{"field": f"query.{param}", "problem": problem}])


def parse_time(value: str, param: str, now_us: int) -> int:
    """A ``from``/``to`` parameter as µs since the epoch; ApiError(422) naming it if unreadable."""
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
            raise _invalid(
                param, f"`{param}` is not a time: {value[:40]!r}", _TIME_EXPECTED
            ) from None
        if dt.tzinfo is None:
            raise _invalid(
                param,
                f"`{param}` has no time zone: {value[:40]!r}; add Z or an offset such as +01:00",
                _TIME_EXPECTED,
            )
        us = (dt - _EPOCH) // _ONE_US
    if not 0 <= us < MAX_TIME_US:
        raise _invalid(
            param,
            f"`{param}` is outside 1970-01-01..9999-12-31: {value[:40]!r}",
            "a time from 1970 to 9999",
        )
    return us


def time_range(start: str | None, end: str | None) -> tuple[int, int]:
    """``from``/``to`` (defaults: the last 24 hours) as µs; ``from`` must come before ``to``."""
    now_us = time.time_ns() // 1000
    s = parse_time(start if start is not None else "-24h", "from", now_us)
    e = parse_time(end if end is not None else "now", "to", now_us)
    if s >= e:
        raise _invalid(
            "from",
            f"`from` ({format_us(s)}) must be before `to` ({format_us(e)})",
            "from < to",
        )
    return s, e


_BUCKET_EXPECTED = "a whole number with s, m, h, d, w or M (30s, 5m, 1h, 1d, 1w, 1M), or auto"


def _duration(value: str) -> tuple[int, str]:
    """A bucket such as 30s, 5m, 1h, 1d, 1w, 1M as (number, unit); ApiError(422) if unreadable."""
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise _invalid("bucket", f"`bucket` is not a duration: {value[:40]!r}", _BUCKET_EXPECTED)
    return int(m.group(1)), m.group(2)


def parse_bucket(value: str) -> int:
    """A fixed bucket width such as 30s, 5m, 1h, 1d, 7d as µs (months have no fixed width)."""
    n, unit = _duration(value)
    if unit == "M":
        raise _invalid(
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
    """An IANA time zone name (``Europe/Berlin``, ``UTC``); ApiError(422) naming ``tz`` if
    unknown, with the right spelling when only the case differs."""
    name = value.strip()
    if name in _UTC_NAMES:
        return ZoneInfo("UTC")
    spelled = _zone_names().get(name.lower())
    if spelled is not None and spelled == name:
        return ZoneInfo(name)
    hint = f"; did you mean {spelled!r}?" if spelled is not None else ""
    raise _invalid(
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


def _width_label(width_us: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if width_us % _UNITS_US[unit] == 0:
            return f"{width_us // _UNITS_US[unit]}{unit}"
    return f"{width_us}us"  # not reached: widths are whole seconds


def _local_iso(ts: int, zone: ZoneInfo | None) -> str | None:
    if zone is None:
        return None
    try:
        return _local(ts, zone).isoformat()
    except OverflowError:
        return None


# --- aggregation over rollups and raw rows ----------------------------------------------------


def pieces(start: int, end: int, widths: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) split in time order so that the middle is aligned to the coarsest width and
    only the edges need finer data (``widths`` coarsest first)."""
    if start >= end:
        return []
    if not widths:
        return [(start, end)]
    w, finer = widths[0], widths[1:]
    a, b = -(-start // w) * w, end // w * w
    if a >= b:
        return pieces(start, end, finer)
    return [*pieces(start, a, finer), (a, b), *pieces(b, end, finer)]


@dataclass(slots=True)
class _Acc:
    count: int
    sum: float
    min: float
    max: float
    first: float | None
    last: float | None


def _acc(b: Bucket) -> _Acc:
    return _Acc(b.count or 0, b.sum or 0.0, b.min or 0.0, b.max or 0.0, b.first, b.last)


async def aggregate_range(
    conn: AsyncConnection,
    tenant_id: int,
    device_id: int,
    metrics: Sequence[str],
    start: int,
    end: int,
    bucket_us: int,
    funcs: Sequence[str],
) -> tuple[Source, dict[str, list[tuple[int, _Acc]]]]:
    """Buckets over [start, end) with whole buckets from rollups and edges from finer data."""
    widths = sorted((w for w in ROLLUPS if bucket_us % w == 0), reverse=True)
    parts = pieces(start, end, widths)
    main = max(parts, key=lambda p: p[1] - p[0])
    edges = [f for f in ("first", "last") if f in funcs]
    wanted = ("count", "sum", "min", "max", *edges)
    merged: dict[tuple[str, int], _Acc] = {}
    known = await query.metric_ids(conn, metrics)
    for s, e in parts:  # in time order: the first piece with data holds a bucket's first value
        for b in await query.aggregate(
            conn, tenant_id, device_id, metrics=metrics, start=s, end=e,
            bucket_us=bucket_us, funcs=wanted, known=known,
        ):  # fmt: skip
            key = (b.metric, b.start)
            acc = merged.get(key)
            if acc is None:
                merged[key] = _acc(b)
                continue
            acc.count += b.count or 0
            acc.sum += b.sum or 0.0
            acc.min = min(acc.min, b.min or 0.0) if b.count else acc.min
            acc.max = max(acc.max, b.max or 0.0) if b.count else acc.max
            if b.last is not None:
                acc.last = b.last
    series: dict[str, list[tuple[int, _Acc]]] = {m: [] for m in metrics}
    for (metric, bucket_start), acc in sorted(merged.items()):
        series[metric].append((bucket_start, acc))
    return query.aggregate_source(main[0], main[1], bucket_us), series


def _point(
    bucket_start: int, acc: _Acc, funcs: Sequence[str], zone: ZoneInfo | None = None
) -> PointOut:
    values: dict[str, Any] = {
        "avg": acc.sum / acc.count,
        "min": acc.min,
        "max": acc.max,
        "count": acc.count,
        "sum": acc.sum,
        "first": acc.first,
        "last": acc.last,
    }
    return PointOut(
        ts=format_us(bucket_start),
        local=_local_iso(bucket_start, zone),
        **{f: values[f] for f in funcs},
    )


def _calendar_point(b: Bucket, funcs: Sequence[str], zone: ZoneInfo | None) -> PointOut:
    return PointOut(
        ts=format_us(b.start),
        local=_local_iso(b.start, zone),
        **{f: getattr(b, f) for f in funcs},
    )


# --- helpers ----------------------------------------------------------------------------------


def _reading(row: HistoryRow) -> ReadingOut:
    return ReadingOut(
        metric=row.metric,
        ts=format_us(row.ts),
        value=row.value,
        text=row.text,
        flags=row.flags,
        received_at=format_us(row.received_at),
    )


def _latest(row: LatestValue) -> LatestOut:
    return LatestOut(
        device=row.device_uid,
        metric=row.metric,
        ts=format_us(row.ts),
        value=row.value,
        text=row.text,
        flags=row.flags,
        received_at=format_us(row.received_at),
    )


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _cursor_error(error: ValueError) -> ApiError:
    return _invalid("cursor", str(error), "the next_cursor of the previous page, unchanged")


MetricParam = Annotated[
    list[str] | None,
    Query(
        description="metric name; repeat for several (default: all)",
        examples=[["temperature", "humidity"]],
    ),
]
UidParam = Annotated[str, Path(description="the device's uid", examples=["greenhouse-1"])]
LimitParam = Annotated[int, Query(ge=1, le=1000, description="items per page")]
CursorParam = Annotated[
    str | None,
    Query(description="next_cursor of the previous page, unchanged (absent: the first page)"),
]
FromParam = Annotated[
    str | None,
    Query(
        alias="from",
        description="start (inclusive): ISO-8601 with Z/offset, epoch ms, now, or -24h/-7d/-30m; "
        "default -24h",
        examples=["-24h"],
    ),
]
ToParam = Annotated[
    str | None,
    Query(
        alias="to",
        description="end (exclusive), same forms as from; default now",
        examples=["now"],
    ),
]


# --- endpoints --------------------------------------------------------------------------------


@router.get(
    "/devices/{uid}/telemetry",
    response_model=HistoryOut,
    summary="Raw readings of a device",
    responses=NO_DEVICE,
)
async def device_history(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("viewer")],
    metric: MetricParam = None,
    start: FromParam = None,
    end: ToParam = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="readings per page")] = 1000,
    cursor: CursorParam = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by event time")] = "asc",
) -> HistoryOut:
    """Raw readings of a device in [from, to), by event time, with cursor pagination."""
    device = await visible_device(request, caller, uid)
    s, e = time_range(start, end)
    async with request.app.state.engine.connect() as conn:
        try:
            page = await query.history(
                conn, device.tenant_id, device.id, metrics=_unique(metric) if metric else None,
                start=s, end=e, limit=limit, cursor=cursor, descending=order == "desc",
            )  # fmt: skip
        except ValueError as error:
            raise _cursor_error(error) from None
    return HistoryOut(items=[_reading(r) for r in page.rows], next_cursor=page.next_cursor)


@router.get(
    "/devices/{uid}/aggregate",
    response_model=AggregateOut,
    response_model_exclude_none=True,
    summary="Aggregates of a device per time bucket",
    responses=NO_DEVICE,
)
async def device_aggregate(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("viewer")],
    metric: Annotated[
        list[str],
        Query(
            min_length=1,
            description="metric name; repeatable",
            examples=[["temperature", "humidity"]],
        ),
    ],
    start: FromParam = None,
    end: ToParam = None,
    bucket: Annotated[
        str,
        Query(
            description="width: a whole number with s, m, h, d, w or M (30s, 5m, 1h, 1d, 1w, 1M, "
            "3M …), or auto (the smallest nice width giving at most max_points buckets)",
            examples=["1h"],
        ),
    ] = "auto",
    max_points: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_BUCKETS,
            description="for bucket=auto: buckets per series at most (a chart's width in pixels "
            "is a good choice)",
            examples=[500],
        ),
    ] = 1000,
    fn: Annotated[
        list[AggFn] | None,
        Query(
            description="avg, min, max, count, sum, first, last; repeatable (default: avg, min, "
            "max, count)",
            examples=[["avg", "max"]],
        ),
    ] = None,
    tz: Annotated[
        str | None,
        Query(
            description="IANA time zone (Europe/Berlin, America/New_York, UTC …). With it, day "
            "(d), week (w, from Monday) and month (M) buckets run from local midnight to local "
            "midnight, so a day across a daylight-saving change lasts 23 or 25 hours, and points "
            "carry their `local` start; bucket=auto picks such buckets once they are a day or "
            "longer. Shorter buckets stay aligned to UTC. Without tz, d and w buckets are fixed "
            "multiples of 24 hours from 1970-01-01T00:00Z and M buckets are UTC months.",
            examples=["Europe/Berlin"],
        ),
    ] = None,
) -> AggregateOut:
    """Per-bucket aggregates of metrics, served from rollups wherever whole buckets allow;
    day, week and month buckets follow the calendar of `tz`."""
    device = await visible_device(request, caller, uid)
    zone = None if tz is None else parse_zone(tz)
    s, e = time_range(start, end)
    try:
        plan = plan_buckets(bucket, s, e, max_points, zone)
        if isinstance(plan, Calendar):
            n = calendar_count(s, e, plan)
            bounds = calendar_bounds(s, e, plan) if n <= MAX_BUCKETS else []
        else:
            n = bucket_count(s, e, plan)
    except (OverflowError, ValueError):  # calendar dates beyond the years 1..9999
        raise _invalid(
            "bucket",
            f"bucket {bucket[:40]!r} in {zone.key if zone else 'UTC'} reaches beyond the years "
            "1..9999 over this range",
            "a narrower bucket or range",
        ) from None
    if n > MAX_BUCKETS:
        raise _invalid(
            "bucket",
            f"bucket {bucket[:40]!r} makes {n} buckets over this range (at most {MAX_BUCKETS}); "
            "use a wider bucket or bucket=auto",
            "a wider bucket",
        )
    funcs: list[str] = _unique(fn) if fn else list(DEFAULT_FUNCS)
    metrics = _unique(metric)
    points: dict[str, list[PointOut]] = {m: [] for m in metrics}
    async with request.app.state.engine.connect() as conn:
        if isinstance(plan, Calendar):
            buckets = await query.aggregate_bounds(
                conn, device.tenant_id, device.id, metrics=metrics, bounds=bounds, start=s,
                end=e, funcs=funcs,
            )  # fmt: skip
            source = query.bounds_source(bounds, s, e)
            for b in buckets:
                points[b.metric].append(_calendar_point(b, funcs, zone))
        else:
            source, series = await aggregate_range(
                conn, device.tenant_id, device.id, metrics, s, e, plan, funcs
            )
            for m in metrics:
                points[m] = [_point(b, acc, funcs, zone) for b, acc in series[m]]
    zone_key: str | None
    if isinstance(plan, Calendar):
        label, width_s, zone_key = plan.label, _CALENDAR_S[plan.unit] * plan.n, plan.zone.key
    else:
        label, width_s, zone_key = _width_label(plan), plan // US, zone.key if zone else None
    return AggregateOut(
        bucket=label,
        bucket_s=width_s,
        tz=zone_key,
        source=source,
        series=[SeriesOut(metric=m, points=points[m]) for m in metrics],
    )


@router.get(
    "/devices/{uid}/latest",
    response_model=LatestList,
    summary="Latest values of a device",
    responses=NO_DEVICE,
)
async def device_latest(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("viewer")],
    metric: MetricParam = None,
) -> LatestList:
    """The newest value of each metric of a device, by event time (not by arrival)."""
    device = await visible_device(request, caller, uid)
    async with request.app.state.engine.connect() as conn:
        rows = await query.latest(conn, device.tenant_id, device_ids=[device.id], metrics=metric)
    return LatestList(items=[_latest(r) for r in rows])


@router.get("/telemetry/latest", response_model=LatestList, summary="Latest values of devices")
async def many_latest(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    device: Annotated[
        list[str] | None,
        Query(
            description="device uid; repeatable (default: all); unknown ones are absent",
            examples=[["greenhouse-1", "greenhouse-2"]],
        ),
    ] = None,
    metric: MetricParam = None,
) -> LatestList:
    """The newest value of each metric of many devices, by event time; only the caller's."""
    tenant = scope(caller)
    device_ids: list[int] | None = None
    async with request.app.state.engine.connect() as conn:
        if device is not None:
            found = select(schema.devices.c.id).where(schema.devices.c.uid.in_(_unique(device)))
            if tenant is not None:
                found = found.where(schema.devices.c.tenant_id == tenant)
            device_ids = [int(i) for i in (await conn.scalars(found)).all()]
        rows: list[LatestValue] = []
        if device_ids != []:
            rows = await query.latest(conn, tenant, device_ids=device_ids, metrics=metric)
    return LatestList(items=[_latest(r) for r in rows])


@router.get(
    "/devices/{uid}/quality",
    response_model=QualityOut,
    summary="Data quality of a device",
    responses=NO_DEVICE,
)
async def device_quality(
    request: Request, uid: UidParam, caller: Annotated[Caller, role("viewer")]
) -> QualityOut:
    """A device's data quality: counters, rejections by reason, last seen, clock offset."""
    device = await visible_device(request, caller, uid)
    async with request.app.state.engine.connect() as conn:
        summary = await query.quality(conn, device.tenant_id, device.id)
    if summary is None:  # deleted meanwhile
        raise ApiError(404, f"no device {uid!r}")
    return QualityOut(
        device=uid,
        counters=summary.counters,
        rejected_by_reason=summary.rejected_by_reason,
        last_seen=None if summary.last_seen is None else format_us(summary.last_seen),
        clock_offset_s=None if summary.clock_offset_us is None else summary.clock_offset_us / US,
    )


@router.get(
    "/deadletters", response_model=DeadLetterPage, tags=["quality"], summary="List dead letters"
)
async def list_dead_letters(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    device: Annotated[
        str | None, Query(description="device uid", examples=["greenhouse-1"])
    ] = None,
    reason: Annotated[
        str | None,
        Query(
            description="rejection reason: invalid_json, bad_shape, out_of_range, "
            "future_timestamp, unknown_device, conflict …",
            examples=["out_of_range"],
        ),
    ] = None,
    limit: LimitParam = 100,
    cursor: CursorParam = None,
) -> DeadLetterPage:
    """Rejected messages and values of the caller's tenant with reason and payload, newest first."""
    async with request.app.state.engine.connect() as conn:
        try:
            page = await query.dead_letters(
                conn, scope(caller), device_uid=device, reason=reason, limit=limit, cursor=cursor
            )
        except ValueError as error:
            raise _cursor_error(error) from None
    return DeadLetterPage(
        items=[
            DeadLetterOut(
                id=d.id,
                device=d.device_uid,
                source=d.source,
                topic=d.topic,
                reason=d.reason,
                detail=d.detail,
                index=d.entry_index,
                payload=None if d.payload is None else d.payload.decode("utf-8", "replace"),
                payload_size=d.payload_size,
                received_at=format_us(d.received_at),
            )
            for d in page.items
        ],
        next_cursor=page.next_cursor,
    )


_EXPORT_DOC: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "format=csv: CSV, `ts,metric,value,text,flags`, by event time. "
        "format=parquet: a Parquet file with the columns ts (timestamp[us, tz=UTC]), metric "
        "(string), value (double), text (string), flags (int32), in row groups by event time. "
        "Both streamed as they are read.",
        "content": {
            "text/csv": {"example": "ts,metric,value,text,flags\n"
                                    "2026-11-22T10:00:00Z,temperature,21.5,,0\n"},
            PARQUET_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}  # fmt: skip


class _Drain:
    """A write-only, non-seekable file for pyarrow that hands back what was written so far, so
    that a Parquet file leaves row group by row group instead of being kept whole."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)  # a copy: pyarrow may reuse its buffer
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


_NO_PYARROW = (
    "Parquet export needs pyarrow on the server (pip install 'telemetra[parquet]'); "
    "use format=csv meanwhile"
)


def _pyarrow() -> tuple[Any, Any]:
    """The pyarrow and pyarrow.parquet modules; ApiError(501) if pyarrow is not installed."""
    try:
        import pyarrow  # type: ignore[import-not-found, unused-ignore]
        import pyarrow.parquet  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ApiError(501, _NO_PYARROW, code="not_implemented") from None
    return pyarrow, pyarrow.parquet


async def _csv_chunks(pages: AsyncIterator[list[HistoryRow]]) -> AsyncIterator[str]:
    yield "ts,metric,value,text,flags\r\n"
    async for rows in pages:
        out = io.StringIO()
        writer = csv.writer(out)
        for r in rows:
            value = "" if r.value is None else repr(r.value)
            writer.writerow((format_us(r.ts), r.metric, value, r.text or "", r.flags))
        yield out.getvalue()


async def _parquet_chunks(
    pages: AsyncIterator[list[HistoryRow]], pa: Any, pq: Any
) -> AsyncIterator[bytes]:
    """A Parquet file, streamed: pages become record batches (columnar; only one page is ever
    held as Python objects), every PARQUET_ROW_GROUP_PAGES pages are written as a row group and
    the bytes written so far are sent; the footer follows the last row group."""
    schema = pa.schema(
        [
            ("ts", pa.timestamp("us", tz="UTC")),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("text", pa.string()),
            ("flags", pa.int32()),
        ]
    )
    group_rows = max(1, PARQUET_ROW_GROUP_PAGES) * EXPORT_PAGE
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    batches: list[Any] = []
    pending = 0

    def write_group() -> None:
        writer.write_table(pa.Table.from_batches(batches, schema=schema))
        batches.clear()

    try:
        async for rows in pages:
            if rows:
                columns = [
                    pa.array([r.ts for r in rows], type=schema.field("ts").type),
                    pa.array([r.metric for r in rows], type=pa.string()),
                    pa.array([r.value for r in rows], type=pa.float64()),
                    pa.array([r.text for r in rows], type=pa.string()),
                    pa.array([r.flags for r in rows], type=pa.int32()),
                ]
                batches.append(pa.RecordBatch.from_arrays(columns, schema=schema))
                pending += len(rows)
            if pending >= group_rows:
                await asyncio.to_thread(write_group)  # encoding and compression off the loop
                pending = 0
                yield sink.drain()
        if batches:
            await asyncio.to_thread(write_group)
        await asyncio.to_thread(writer.close)
        yield sink.drain()
    finally:
        if not sink.closed:
            writer.close()  # the client went away: release the writer


@router.get(
    "/devices/{uid}/export",
    response_class=StreamingResponse,
    summary="Export raw readings of a device (CSV or Parquet)",
    responses={**_EXPORT_DOC, **NO_DEVICE, **errors.responses(501, messages={501: _NO_PYARROW})},
)
async def export_device(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("viewer")],
    format: Annotated[
        Literal["csv", "parquet"],
        Query(description="csv, or parquet (typed columns; needs pyarrow on the server)"),
    ] = "csv",
    start: FromParam = None,
    end: ToParam = None,
    metric: MetricParam = None,
) -> StreamingResponse:
    """Raw readings of a device in [from, to) as a CSV or Parquet download, by event time,
    streamed page by page."""
    device = await visible_device(request, caller, uid)
    s, e = time_range(start, end)
    engine = request.app.state.engine
    tenant_id, device_id = int(device.tenant_id), int(device.id)
    metrics = _unique(metric) if metric else None

    async def pages() -> AsyncIterator[list[HistoryRow]]:
        cursor: str | None = None
        while True:
            async with engine.connect() as conn:  # one short connection per page
                page = await query.history(
                    conn, tenant_id, device_id, metrics=metrics, start=s, end=e,
                    limit=EXPORT_PAGE, cursor=cursor,
                )  # fmt: skip
            yield page.rows
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    name = re.sub(r"[^A-Za-z0-9._-]", "_", uid)
    if format == "parquet":
        pa, pq = _pyarrow()
        return StreamingResponse(
            _parquet_chunks(pages(), pa, pq),
            media_type=PARQUET_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}-telemetry.parquet"'},
        )
    return StreamingResponse(
        _csv_chunks(pages()),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-telemetry.csv"'},
    )
