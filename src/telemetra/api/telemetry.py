"""Telemetry queries: raw history, aggregates, latest values, quality, dead letters, export."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope, visible_device
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store import query, schema
from telemetra.store.query import Bucket, HistoryRow, LatestValue, Source
from telemetra.store.schema import ROLLUPS

router = APIRouter(tags=["telemetry"])

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
EXPORT_PAGE = 5000
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


class HistoryOut(BaseModel):
    items: list[ReadingOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null: no more", examples=[None]
    )


class PointOut(BaseModel):
    """Aggregates of one bucket; only the requested functions are present."""

    ts: str = Field(description="bucket start, ISO-8601 UTC", examples=["2026-11-22T10:00:00Z"])
    avg: float | None = Field(None, examples=[21.4])
    min: float | None = Field(None, examples=[20.9])
    max: float | None = Field(None, examples=[22.0])
    count: int | None = Field(None, examples=[60])
    sum: float | None = Field(None, examples=[1284.0])
    first: float | None = Field(None, examples=[21.0])
    last: float | None = Field(None, examples=[21.8])


class SeriesOut(BaseModel):
    metric: str = Field(examples=["temperature"])
    points: list[PointOut] = Field(description="buckets with data, oldest first")


class AggregateOut(BaseModel):
    bucket_s: int = Field(description="bucket width in seconds", examples=[3600])
    source: Source = Field(
        description="the table that served the whole buckets of the range; partial buckets at "
        "its edges are read from finer data",
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


def parse_bucket(value: str) -> int:
    """A bucket width such as 30s, 5m, 1h, 1d, 7d as µs; months are refused for now."""
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise _invalid(
            "bucket",
            f"`bucket` is not a duration: {value[:40]!r}",
            "a whole number with s, m, h, d or w (30s, 5m, 1h, 1d, 7d), or auto",
        )
    if m.group(2) == "M":
        raise _invalid(
            "bucket",
            "month buckets are not supported yet: use 1d or 7d buckets (UTC)",
            "a whole number with s, m, h, d or w, or auto",
        )
    return int(m.group(1)) * _UNITS_US[m.group(2)]


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


def _no_tz(tz: str) -> None:
    if tz not in _UTC_NAMES:
        raise _invalid(
            "tz",
            f"time-zone buckets (tz={tz[:40]!r}) are not supported yet: buckets are UTC; "
            "omit tz or pass UTC",
            "UTC",
        )


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
    for s, e in parts:  # in time order: the first piece with data holds a bucket's first value
        for b in await query.aggregate(
            conn, tenant_id, device_id, metrics=metrics, start=s, end=e,
            bucket_us=bucket_us, funcs=wanted,
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


def _point(bucket_start: int, acc: _Acc, funcs: Sequence[str]) -> PointOut:
    values: dict[str, Any] = {
        "avg": acc.sum / acc.count,
        "min": acc.min,
        "max": acc.max,
        "count": acc.count,
        "sum": acc.sum,
        "first": acc.first,
        "last": acc.last,
    }
    return PointOut(ts=format_us(bucket_start), **{f: values[f] for f in funcs})


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
    list[str] | None, Query(description="metric name; repeat for several (default: all)")
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
    Query(alias="to", description="end (exclusive), same forms as from; default now"),
]


# --- endpoints --------------------------------------------------------------------------------


@router.get("/devices/{uid}/telemetry", response_model=HistoryOut)
async def device_history(
    request: Request,
    uid: str,
    caller: Annotated[Caller, role("viewer")],
    metric: MetricParam = None,
    start: FromParam = None,
    end: ToParam = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
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
    "/devices/{uid}/aggregate", response_model=AggregateOut, response_model_exclude_none=True
)
async def device_aggregate(
    request: Request,
    uid: str,
    caller: Annotated[Caller, role("viewer")],
    metric: Annotated[list[str], Query(min_length=1, description="metric name; repeatable")],
    start: FromParam = None,
    end: ToParam = None,
    bucket: Annotated[
        str, Query(description="width: 30s, 5m, 1h, 1d, 7d …, or auto", examples=["1h"])
    ] = "auto",
    max_points: Annotated[
        int, Query(ge=1, le=MAX_BUCKETS, description="for bucket=auto: buckets per series at most")
    ] = 1000,
    fn: Annotated[
        list[AggFn] | None, Query(description="avg, min, max, count, sum, first, last; repeatable")
    ] = None,
    tz: Annotated[str, Query(description="only UTC for now")] = "UTC",
) -> AggregateOut:
    """Per-bucket aggregates of metrics, served from rollups wherever whole buckets allow."""
    device = await visible_device(request, caller, uid)
    _no_tz(tz)
    s, e = time_range(start, end)
    bucket_us = auto_bucket(s, e, max_points) if bucket.strip() == "auto" else parse_bucket(bucket)
    n = bucket_count(s, e, bucket_us)
    if n > MAX_BUCKETS:
        raise _invalid(
            "bucket",
            f"bucket {bucket!r} makes {n} buckets over this range (at most {MAX_BUCKETS}); "
            "use a wider bucket or bucket=auto",
            "a wider bucket",
        )
    funcs: list[str] = _unique(fn) if fn else list(DEFAULT_FUNCS)
    metrics = _unique(metric)
    async with request.app.state.engine.connect() as conn:
        source, series = await aggregate_range(
            conn, device.tenant_id, device.id, metrics, s, e, bucket_us, funcs
        )
    return AggregateOut(
        bucket_s=bucket_us // US,
        source=source,
        series=[
            SeriesOut(metric=m, points=[_point(b, acc, funcs) for b, acc in series[m]])
            for m in metrics
        ],
    )


@router.get("/devices/{uid}/latest", response_model=LatestList)
async def device_latest(
    request: Request,
    uid: str,
    caller: Annotated[Caller, role("viewer")],
    metric: MetricParam = None,
) -> LatestList:
    """The newest value of each metric of a device, by event time (not by arrival)."""
    device = await visible_device(request, caller, uid)
    async with request.app.state.engine.connect() as conn:
        rows = await query.latest(conn, device.tenant_id, device_ids=[device.id], metrics=metric)
    return LatestList(items=[_latest(r) for r in rows])


@router.get("/telemetry/latest", response_model=LatestList)
async def many_latest(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    device: Annotated[
        list[str] | None,
        Query(description="device uid; repeatable (default: all); unknown ones are absent"),
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


@router.get("/devices/{uid}/quality", response_model=QualityOut)
async def device_quality(
    request: Request, uid: str, caller: Annotated[Caller, role("viewer")]
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


@router.get("/deadletters", response_model=DeadLetterPage, tags=["quality"])
async def list_dead_letters(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    device: Annotated[str | None, Query(description="device uid")] = None,
    reason: Annotated[str | None, Query(examples=["out_of_range"])] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
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


_CSV_DOC: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "CSV, streamed: `ts,metric,value,text,flags`, by event time",
        "content": {"text/csv": {"example": "ts,metric,value,text,flags\n"
                                            "2026-11-22T10:00:00Z,temperature,21.5,,0\n"}},
    }
}  # fmt: skip


@router.get("/devices/{uid}/export", response_class=StreamingResponse, responses=_CSV_DOC)
async def export_device(
    request: Request,
    uid: str,
    caller: Annotated[Caller, role("viewer")],
    format: Annotated[
        Literal["csv", "parquet"], Query(description="csv (parquet: not yet)")
    ] = "csv",
    start: FromParam = None,
    end: ToParam = None,
    metric: MetricParam = None,
) -> StreamingResponse:
    """Raw readings of a device in [from, to) as a CSV download, streamed page by page."""
    device = await visible_device(request, caller, uid)
    if format == "parquet":
        raise _invalid(
            "format", "Parquet export over HTTP is not supported yet: use format=csv", "csv"
        )
    s, e = time_range(start, end)
    engine = request.app.state.engine
    tenant_id, device_id = int(device.tenant_id), int(device.id)
    metrics = _unique(metric) if metric else None

    async def rows() -> AsyncIterator[str]:
        yield "ts,metric,value,text,flags\r\n"
        cursor: str | None = None
        while True:
            async with engine.connect() as conn:  # one short connection per page
                page = await query.history(
                    conn, tenant_id, device_id, metrics=metrics, start=s, end=e,
                    limit=EXPORT_PAGE, cursor=cursor,
                )  # fmt: skip
            out = io.StringIO()
            writer = csv.writer(out)
            for r in page.rows:
                value = "" if r.value is None else repr(r.value)
                writer.writerow((format_us(r.ts), r.metric, value, r.text or "", r.flags))
            yield out.getvalue()
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    name = re.sub(r"[^A-Za-z0-9._-]", "_", uid)
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-telemetry.csv"'},
    )
