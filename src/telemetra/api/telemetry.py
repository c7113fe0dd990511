"""Telemetry queries: raw history, aggregates, latest values, quality, export (dead letters:
``api.deadletters``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope, visible_device
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.model import FlagName, flag_names
from telemetra.store import export, query, schema, timerange
from telemetra.store.query import Bucket, HistoryRow, LatestValue, Source
from telemetra.store.timerange import US

router = APIRouter(tags=["telemetry"], responses=errors.responses(422, 429))
NO_DEVICE = errors.responses(404, messages={404: "no device 'greenhouse-9'"})

DEFAULT_FUNCS = ("avg", "min", "max", "count")

AggFn = Literal["avg", "min", "max", "count", "sum", "first", "last"]

# --- response models --------------------------------------------------------------------------


_FLAGS = (
    "what cleaning decided, by name (none: []): late, out_of_order, clock_corrected, "
    "counter_reset, server_time, unit_converted, naive_time"
)


class ReadingOut(BaseModel):
    metric: str = Field(examples=["temperature"])
    ts: str = Field(description="event time, ISO-8601 UTC", examples=["2026-11-22T10:00:00Z"])
    value: float | None = Field(description="numeric value (None: a text reading)", examples=[21.5])
    text: str | None = Field(description="text value (None: a numeric reading)", examples=[None])
    flags: list[FlagName] = Field(description=_FLAGS, examples=[[], ["late", "out_of_order"]])
    received_at: str = Field(examples=["2026-11-22T10:00:01.250000Z"])


_READING: dict[str, Any] = {
    "metric": "temperature",
    "ts": "2026-11-22T10:00:00Z",
    "value": 21.5,
    "text": None,
    "flags": [],
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
    flags: list[FlagName] = Field(description=_FLAGS, examples=[[]])
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
                        {**_READING, "device": "greenhouse-2", "value": 19.0,
                         "flags": ["clock_corrected"]},
                    ]
                }
            ]
        }
    )  # fmt: skip

    items: list[LatestOut] = Field(description="by device, then metric")


_H9, _H10 = "2026-11-22T09:00:00Z", "2026-11-22T10:00:00Z"


class SparklineOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"device": "greenhouse-1", "metric": "temperature",
                 "points": [[_H9, 21.4], [_H10, 21.9]]}
            ]
        }
    )  # fmt: skip

    device: str = Field(examples=["greenhouse-1"])
    metric: str = Field(examples=["temperature"])
    points: list[tuple[str, float]] = Field(
        description="[hour start as ISO-8601 UTC, average of the hour], oldest first; hours "
        "without data are left out"
    )


class SparklineList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"device": "greenhouse-1", "metric": "humidity",
                         "points": [[_H9, 41.2], [_H10, 40.5]]},
                        {"device": "greenhouse-1", "metric": "temperature",
                         "points": [[_H9, 21.4], [_H10, 21.9]]},
                    ]
                }
            ]
        }
    )  # fmt: skip

    items: list[SparklineOut] = Field(description="by device, then metric")


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


# --- parameters -------------------------------------------------------------------------------


def _invalid(param: str, message: str, problem: str) -> ApiError:
    return ApiError(422, message, details=[{"field": f"query.{param}", "problem": problem}])


@contextmanager
def _readable() -> Iterator[None]:
    """Turns an unreadable time, bucket or zone into the API's 422 naming the query parameter."""
    try:
        yield
    except timerange.ParamError as error:
        raise _invalid(error.param, str(error), error.problem) from None


# --- aggregation over rollups and raw rows ----------------------------------------------------


def _point(
    bucket_start: int, acc: query.Acc, funcs: Sequence[str], zone: ZoneInfo | None = None
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
        local=timerange.local_iso(bucket_start, zone),
        **{f: values[f] for f in funcs},
    )


def _calendar_point(b: Bucket, funcs: Sequence[str], zone: ZoneInfo | None) -> PointOut:
    return PointOut(
        ts=format_us(b.start),
        local=timerange.local_iso(b.start, zone),
        **{f: getattr(b, f) for f in funcs},
    )


# --- helpers ----------------------------------------------------------------------------------


def _reading(row: HistoryRow) -> ReadingOut:
    return ReadingOut(
        metric=row.metric,
        ts=format_us(row.ts),
        value=row.value,
        text=row.text,
        flags=flag_names(row.flags),
        received_at=format_us(row.received_at),
    )


def _latest(row: LatestValue) -> LatestOut:
    return LatestOut(
        device=row.device_uid,
        metric=row.metric,
        ts=format_us(row.ts),
        value=row.value,
        text=row.text,
        flags=flag_names(row.flags),
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
    with _readable():
        s, e = timerange.time_range(start, end)
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
            le=timerange.MAX_BUCKETS,
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
    with _readable():
        zone = None if tz is None else timerange.parse_zone(tz)
        s, e = timerange.time_range(start, end)
        plan = timerange.plan(bucket, s, e, max_points, zone)
    funcs: list[str] = _unique(fn) if fn else list(DEFAULT_FUNCS)
    metrics = _unique(metric)
    points: dict[str, list[PointOut]] = {m: [] for m in metrics}
    async with request.app.state.engine.connect() as conn:
        if plan.width_us is None:
            buckets = await query.aggregate_bounds(
                conn, device.tenant_id, device.id, metrics=metrics, bounds=plan.bounds, start=s,
                end=e, funcs=funcs,
            )  # fmt: skip
            source = query.bounds_source(plan.bounds, s, e)
            for b in buckets:
                points[b.metric].append(_calendar_point(b, funcs, zone))
        else:
            source, series = await query.aggregate_range(
                conn, device.tenant_id, device.id, metrics, s, e, plan.width_us, funcs
            )
            for m in metrics:
                points[m] = [_point(b, acc, funcs, zone) for b, acc in series[m]]
    zone_key = plan.calendar.zone.key if plan.calendar else zone.key if zone else None
    return AggregateOut(
        bucket=plan.label,
        bucket_s=plan.width_s,
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


MAX_SPARKLINE_DEVICES = 200


@router.get(
    "/telemetry/sparklines", response_model=SparklineList, summary="Hourly averages of devices"
)
async def sparklines(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    devices: Annotated[
        str | None,
        Query(
            description=f"device uids, comma-separated (at most {MAX_SPARKLINE_DEVICES} in "
            "all); unknown ones are absent",
            examples=["greenhouse-1,greenhouse-2"],
        ),
    ] = None,
    device: Annotated[
        list[str] | None,
        Query(
            description="a device uid taken whole (for uids holding a comma); repeatable, "
            "with or instead of `devices`"
        ),
    ] = None,
    hours: Annotated[
        int, Query(ge=1, le=168, description="how many hours back, the current one included")
    ] = 24,
) -> SparklineList:
    """The hourly averages of every numeric metric of many devices over the last ``hours``
    hours (from the 1-hour rollup, the hour under way included), for sparklines; only the
    caller's devices."""
    listed = [u.strip() for u in (devices or "").split(",")]
    uids = _unique([u for u in [*listed, *(device or [])] if u])
    if not uids:
        raise _invalid("devices", "name at least one device", "a comma-separated list of uids")
    if len(uids) > MAX_SPARKLINE_DEVICES:
        raise _invalid(
            "devices",
            f"at most {MAX_SPARKLINE_DEVICES} devices per request, got {len(uids)}",
            f"at most {MAX_SPARKLINE_DEVICES} uids",
        )
    end = (time.time_ns() // 1000 // query.HOUR_US + 1) * query.HOUR_US
    async with request.app.state.engine.connect() as conn:
        lines = await query.sparklines(conn, scope(caller), uids, end - hours * query.HOUR_US, end)
    return SparklineList(
        items=[
            SparklineOut(
                device=line.device_uid,
                metric=line.metric,
                points=[(format_us(ts), avg) for ts, avg in line.points],
            )
            for line in lines
        ]
    )


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


_CSV_EXAMPLE = (
    ",".join(export.COLUMNS) + "\r\n"
    "greenhouse-1,2026-11-22T10:00:00Z,temperature,21.5,,°C,,,2026-11-22T10:00:01.250000Z\r\n"
    "greenhouse-1,2026-11-22T10:00:00Z,door,,open,,late|out_of_order,,2026-11-22T10:20:00Z\r\n"
)
_JSONL_EXAMPLE = (
    '{"device":"greenhouse-1","ts":"2026-11-22T10:00:00Z","event_type":"temperature",'
    '"value":21.5,"unit":"°C","meta":{"flags":[],"ts_device":null,'
    '"received_at":"2026-11-22T10:00:01.250000Z"}}\n'
)

_EXPORT_DOC: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "Readings by event time, streamed as they are read; each format imports "
        "back with `telemetra import` to the same readings. format=csv: "
        "`device,ts,metric,value,text,unit,flags,ts_device,received_at` (flags as names joined "
        "by `|`, e.g. `late|out_of_order`; unit: the unit the value is stored in). "
        "format=parquet: the same columns typed: ts, ts_device and received_at "
        "timestamp[us, tz=UTC], value double, flags list<string>, the others string; one row "
        "group per 50,000 readings. format=jsonl: one native event-form object per reading "
        "(device, ts, event_type, value, unit) with flags, ts_device and received_at in `meta`.",
        "content": {
            "text/csv": {"example": _CSV_EXAMPLE},
            "application/x-ndjson": {"example": _JSONL_EXAMPLE},
            export.MEDIA_TYPES["parquet"]: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.get(
    "/devices/{uid}/export",
    response_class=StreamingResponse,
    summary="Export raw readings of a device (CSV, JSON lines or Parquet)",
    responses={
        **_EXPORT_DOC,
        **NO_DEVICE,
        **errors.responses(501, messages={501: export.NO_PYARROW}),
    },
)
async def export_device(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("viewer")],
    format: Annotated[
        export.Format,
        Query(
            description="csv; jsonl (JSON lines); or parquet (typed columns; needs pyarrow on "
            "the server)"
        ),
    ] = "csv",
    start: FromParam = None,
    end: ToParam = None,
    metric: MetricParam = None,
) -> StreamingResponse:
    """Raw readings of a device in [from, to) as a download, by event time, streamed page by
    page, in a form `telemetra import` reads back."""
    device = await visible_device(request, caller, uid)
    with _readable():
        s, e = timerange.time_range(start, end)
    readings = export.Export(
        request.app.state.engine, int(device.tenant_id), int(device.id), uid, device.type,
        s, e, metrics=_unique(metric) if metric else None,
    )  # fmt: skip
    try:
        body = export.chunks(readings, format)
    except export.ParquetUnavailable as error:
        raise ApiError(501, str(error), code="not_implemented") from None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", uid)
    return StreamingResponse(
        body,
        media_type=export.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}-telemetry.{format}"'},
    )
