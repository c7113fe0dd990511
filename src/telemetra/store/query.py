"""Read queries for the API: raw history, aggregates, latest values, quality, dead letters.

Every query is scoped by ``tenant_id``: a device of another tenant answers exactly like a missing
one. Times are µs since the epoch (UTC); integer arithmetic buckets them alike on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    cast,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.store import schema
from telemetra.store.schema import ROLLUPS, device_quality, devices, readings

AGGREGATE_FUNCS = ("avg", "min", "max", "count", "sum", "first", "last")
REJECTED_PREFIX = "rejected:"

Source = Literal["rollup_1h", "rollup_1m", "raw"]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One stored reading."""

    metric: str
    ts: int
    value: float | None
    text: str | None
    flags: int
    received_at: int
    ts_device: int | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of readings; pass ``next_cursor`` back for the next one (None: no more)."""

    rows: list[HistoryRow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Bucket:
    """Aggregates of one metric over [start, start + bucket); unrequested functions are None."""

    metric: str
    start: int
    source: Source
    avg: float | None = None
    min: float | None = None
    max: float | None = None
    count: int | None = None
    sum: float | None = None
    first: float | None = None
    last: float | None = None


@dataclass(frozen=True, slots=True)
class LatestValue:
    """The newest value (by event time) of one device's metric."""

    device_id: int
    device_uid: str
    metric: str
    ts: int
    value: float | None
    text: str | None
    flags: int
    received_at: int


@dataclass(frozen=True, slots=True)
class QualitySummary:
    """A device's running quality counters, rejections by reason and clock estimate."""

    device_id: int
    counters: dict[str, int]
    rejected_by_reason: dict[str, int]
    last_seen: int | None
    clock_offset_us: int | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message or value with its reason and raw payload (size-capped)."""

    id: int
    device_uid: str | None
    source: str
    topic: str | None
    reason: str
    detail: str
    entry_index: int | None
    payload: bytes | None
    payload_size: int
    received_at: int


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """A page of dead letters, newest first; pass ``next_cursor`` back for the next one."""

    items: list[DeadLetter]
    next_cursor: str | None


# --- cursors ----------------------------------------------------------------------------------

_HISTORY_CURSOR = "h1"
_DEAD_LETTER_CURSOR = "d1"


def _encode_cursor(*parts: str | int) -> str:
    raw = ":".join(str(p) for p in parts).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str, n_ints: int) -> tuple[list[int], list[str]]:
    """Split a cursor of ``kind`` into its integer parts and any trailing text parts."""
    problem = (
        f"invalid cursor {cursor[:40]!r}: pass the next_cursor of the previous page unchanged, "
        "or no cursor for the first page"
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
        if parts[0] != kind or len(parts) < 1 + n_ints:
            raise ValueError(problem)
        return [int(p) for p in parts[1 : 1 + n_ints]], parts[1 + n_ints :]
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise ValueError(problem) from exc


# --- helpers ----------------------------------------------------------------------------------


def _check_range(start: int, end: int) -> None:
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start}): expected start <= end")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


async def _metric_ids(conn: AsyncConnection, names: Sequence[str]) -> dict[int, str]:
    if not names:
        return {}
    rows = await conn.execute(
        select(schema.metrics.c.id, schema.metrics.c.name).where(
            schema.metrics.c.name.in_(sorted(set(names)))
        )
    )
    return {int(r.id): str(r.name) for r in rows}


async def device_by_uid(conn: AsyncConnection, tenant_id: int, uid: str) -> int | None:
    """The id of the tenant's device ``uid``, or None when the tenant has no such device."""
    found = await conn.scalar(
        select(devices.c.id).where(devices.c.tenant_id == tenant_id, devices.c.uid == uid)
    )
    return None if found is None else int(found)


# --- history ----------------------------------------------------------------------------------


async def history(
    conn: AsyncConnection,
    tenant_id: int,
    device_id: int,
    *,
    metrics: Sequence[str] | None,
    start: int,
    end: int,
    limit: int = 1000,
    cursor: str | None = None,
    descending: bool = False,
) -> HistoryPage:
    """Raw readings in [start, end) ordered by (ts, metric), ``limit`` per page (keyset cursor)."""
    _check_range(start, end)
    _check_limit(limit)
    direction = "d" if descending else "a"
    after: tuple[int, int] | None = None
    if cursor is not None:
        (c_ts, c_metric), rest = _decode_cursor(cursor, _HISTORY_CURSOR, 2)
        if rest != [direction]:
            order = "descending" if descending else "ascending"
            raise ValueError(
                f"invalid cursor: it continues a page in the other order, not {order}; "
                "keep the same order for every page"
            )
        after = (c_ts, c_metric)

    r = readings.c
    query = (
        select(
            schema.metrics.c.name,
            r.metric_id,
            r.ts,
            r.value,
            r.text,
            r.flags,
            r.received_at,
            r.ts_device,
        )
        .join(schema.metrics, schema.metrics.c.id == r.metric_id)
        .where(r.tenant_id == tenant_id, r.device_id == device_id, r.ts >= start, r.ts < end)
    )
    if metrics is not None:
        query = query.where(schema.metrics.c.name.in_(sorted(set(metrics))) if metrics else false())
    if after is not None:
        c_ts, c_metric = after
        if descending:
            query = query.where(r.ts <= c_ts, or_(r.ts < c_ts, r.metric_id < c_metric))
        else:
            query = query.where(r.ts >= c_ts, or_(r.ts > c_ts, r.metric_id > c_metric))
    if descending:
        query = query.order_by(r.ts.desc(), r.metric_id.desc())
    else:
        query = query.order_by(r.ts, r.metric_id)

    fetched = (await conn.execute(query.limit(limit + 1))).all()
    page = fetched[:limit]
    rows = [
        HistoryRow(
            metric=str(x.name),
            ts=int(x.ts),
            value=None if x.value is None else float(x.value),
            text=x.text,
            flags=int(x.flags),
            received_at=int(x.received_at),
            ts_device=None if x.ts_device is None else int(x.ts_device),
        )
        for x in page
    ]
    next_cursor = None
    if len(fetched) > limit:
        last = page[-1]
        next_cursor = _encode_cursor(_HISTORY_CURSOR, int(last.ts), int(last.metric_id), direction)
    return HistoryPage(rows=rows, next_cursor=next_cursor)


# --- aggregates -------------------------------------------------------------------------------


def aggregate_source(start: int, end: int, bucket_us: int) -> Source:
    """Which table serves buckets of ``bucket_us`` over [start, end): the coarsest that fits."""
    for width, table in sorted(ROLLUPS.items(), reverse=True):
        if bucket_us % width == 0 and start % width == 0 and end % width == 0:
            name: Source = "rollup_1h" if table.name == "rollup_1h" else "rollup_1m"
            return name
    return "raw"


def _rollup_width(source: Source) -> tuple[int, Table]:
    for width, table in ROLLUPS.items():
        if table.name == source:
            return width, table
    raise AssertionError(f"no rollup table {source}")


def _grouped(
    source: Source,
    tenant_id: int,
    device_id: int,
    metric_ids: list[int],
    start: int,
    end: int,
    bucket_us: int,
) -> Select[Any]:
    """Per (metric, bucket): count, sum, min, max and the first/last timestamps."""
    if source == "raw":
        r = readings.c
        inner = (
            select(
                r.metric_id,
                (r.ts - r.ts % bucket_us).label("b"),
                r.ts,
                r.value,
            )
            .where(
                r.tenant_id == tenant_id,
                r.device_id == device_id,
                r.metric_id.in_(metric_ids),
                r.ts >= start,
                r.ts < end,
                r.value.is_not(None),
            )
            .subquery()
        )
        return select(
            inner.c.metric_id,
            inner.c.b,
            func.count(inner.c.value).label("n"),
            func.sum(inner.c.value).label("total"),
            func.min(inner.c.value).label("lo"),
            func.max(inner.c.value).label("hi"),
            func.min(inner.c.ts).label("first_ts"),
            func.max(inner.c.ts).label("last_ts"),
        ).group_by(inner.c.metric_id, inner.c.b)

    _, table = _rollup_width(source)
    t = table.c
    # A subquery, so that GROUP BY names a column rather than repeating an expression with its
    # own bind parameter (PostgreSQL would not match the two).
    inner = (
        select(
            t.metric_id,
            (t.bucket - t.bucket % bucket_us).label("b"),
            t.count,
            t.sum,
            t.min,
            t.max,
            t.first_ts,
            t.last_ts,
        )
        .where(
            t.tenant_id == tenant_id,
            t.device_id == device_id,
            t.metric_id.in_(metric_ids),
            t.bucket >= start,
            t.bucket < end,
        )
        .subquery()
    )
    return select(
        inner.c.metric_id,
        inner.c.b,
        # SUM(bigint) is numeric on PostgreSQL: bring it back to an integer.
        cast(func.sum(inner.c.count), BigInteger).label("n"),
        func.sum(inner.c.sum).label("total"),
        func.min(inner.c.min).label("lo"),
        func.max(inner.c.max).label("hi"),
        func.min(inner.c.first_ts).label("first_ts"),
        func.max(inner.c.last_ts).label("last_ts"),
    ).group_by(inner.c.metric_id, inner.c.b)


def _edge_value(
    source: Source, device_id: int, metric_id: Any, b: Any, bucket_us: int, ts: Any, first: bool
) -> ColumnElement[Any]:
    """The value at the bucket's first (or last) timestamp, as a correlated scalar subquery."""
    if source == "raw":
        r = readings.c
        return (
            select(func.min(r.value))
            .where(r.device_id == device_id, r.metric_id == metric_id, r.ts == ts)
            .scalar_subquery()
        )
    _, table = _rollup_width(source)
    t = table.c
    # Timestamps of one series are unique, so exactly one rollup row of the bucket holds it.
    conditions = [
        t.device_id == device_id,
        t.metric_id == metric_id,
        t.bucket >= b,
        t.bucket < b + bucket_us,
        (t.first_ts if first else t.last_ts) == ts,
    ]
    value = t.first_value if first else t.last_value
    return select(func.min(value)).where(and_(*conditions)).scalar_subquery()


async def aggregate(
    conn: AsyncConnection,
    tenant_id: int,
    device_id: int,
    *,
    metrics: Sequence[str],
    start: int,
    end: int,
    bucket_us: int,
    funcs: Sequence[str] = ("avg", "min", "max", "count"),
) -> list[Bucket]:
    """One Bucket per (metric, epoch-aligned bucket) with data in [start, end), from the coarsest
    source that serves it (``rollup_1h``, ``rollup_1m`` or raw ``readings``)."""
    unknown = [f for f in funcs if f not in AGGREGATE_FUNCS]
    if unknown:
        raise ValueError(
            f"unknown aggregate function(s) {', '.join(map(repr, unknown))}: "
            f"expected any of {', '.join(AGGREGATE_FUNCS)}"
        )
    if bucket_us <= 0:
        raise ValueError(f"bucket_us must be a positive number of microseconds, got {bucket_us}")
    _check_range(start, end)
    wanted = set(funcs)
    names = await _metric_ids(conn, metrics)
    if not names or start == end:
        return []

    source = aggregate_source(start, end, bucket_us)
    grouped = _grouped(
        source, tenant_id, device_id, sorted(names), start, end, bucket_us
    ).subquery()
    g = grouped.c
    columns: list[Any] = [g.metric_id, g.b, g.n, g.total, g.lo, g.hi]
    if "first" in wanted:
        columns.append(
            _edge_value(source, device_id, g.metric_id, g.b, bucket_us, g.first_ts, True).label(
                "first_value"
            )
        )
    if "last" in wanted:
        columns.append(
            _edge_value(source, device_id, g.metric_id, g.b, bucket_us, g.last_ts, False).label(
                "last_value"
            )
        )
    rows = (await conn.execute(select(*columns).order_by(g.metric_id, g.b))).all()

    buckets = []
    for row in rows:
        n = int(row.n)
        if n == 0:
            continue
        total = float(row.total)
        m = row._mapping
        buckets.append(
            Bucket(
                metric=names[int(row.metric_id)],
                start=int(row.b),
                source=source,
                avg=total / n if "avg" in wanted else None,
                min=float(row.lo) if "min" in wanted else None,
                max=float(row.hi) if "max" in wanted else None,
                count=n if "count" in wanted else None,
                sum=total if "sum" in wanted else None,
                first=float(m["first_value"]) if "first" in wanted else None,
                last=float(m["last_value"]) if "last" in wanted else None,
            )
        )
    buckets.sort(key=lambda b: (b.metric, b.start))
    return buckets


# --- latest, quality, dead letters ------------------------------------------------------------


async def latest(
    conn: AsyncConnection,
    tenant_id: int | None,
    *,
    device_ids: Sequence[int] | None = None,
    metrics: Sequence[str] | None = None,
) -> list[LatestValue]:
    """The newest value of each (device, metric) of the tenant (None: every tenant, for platform
    admins), optionally narrowed down."""
    lt = schema.latest.c
    query = (
        select(
            lt.device_id,
            devices.c.uid,
            schema.metrics.c.name,
            lt.ts,
            lt.value,
            lt.text,
            lt.flags,
            lt.received_at,
        )
        .join(devices, devices.c.id == lt.device_id)
        .join(schema.metrics, schema.metrics.c.id == lt.metric_id)
        .order_by(devices.c.uid, schema.metrics.c.name)
    )
    if tenant_id is not None:
        query = query.where(lt.tenant_id == tenant_id, devices.c.tenant_id == tenant_id)
    if device_ids is not None:
        query = query.where(lt.device_id.in_(sorted(set(device_ids))))
    if metrics is not None:
        query = query.where(schema.metrics.c.name.in_(sorted(set(metrics))))
    rows = await conn.execute(query)
    return [
        LatestValue(
            device_id=int(x.device_id),
            device_uid=str(x.uid),
            metric=str(x.name),
            ts=int(x.ts),
            value=None if x.value is None else float(x.value),
            text=x.text,
            flags=int(x.flags),
            received_at=int(x.received_at),
        )
        for x in rows
    ]


async def quality(conn: AsyncConnection, tenant_id: int, device_id: int) -> QualitySummary | None:
    """The device's quality counters and clock estimate; None when the tenant has no such device."""
    device = (
        await conn.execute(
            select(devices.c.last_seen, devices.c.clock_offset_us).where(
                devices.c.id == device_id, devices.c.tenant_id == tenant_id
            )
        )
    ).first()
    if device is None:
        return None
    q = device_quality.c
    rows = await conn.execute(
        select(q.counter, q.count)
        .where(q.tenant_id == tenant_id, q.device_id == device_id)
        .order_by(q.counter)
    )
    counters = {str(counter): int(count) for counter, count in rows}
    rejected = {
        name.removeprefix(REJECTED_PREFIX): count
        for name, count in counters.items()
        if name.startswith(REJECTED_PREFIX)
    }
    return QualitySummary(
        device_id=device_id,
        counters=counters,
        rejected_by_reason=rejected,
        last_seen=None if device.last_seen is None else int(device.last_seen),
        clock_offset_us=None if device.clock_offset_us is None else int(device.clock_offset_us),
    )


async def dead_letters(
    conn: AsyncConnection,
    tenant_id: int | None,
    *,
    device_uid: str | None = None,
    reason: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> DeadLetterPage:
    """The tenant's dead letters, newest first, ``limit`` per page (keyset cursor on id); with
    ``tenant_id`` None (platform admins) every dead letter, including unknown devices'."""
    _check_limit(limit)
    d = schema.dead_letters.c
    query = select(schema.dead_letters)
    if tenant_id is not None:
        query = query.where(d.tenant_id == tenant_id)
    if device_uid is not None:
        query = query.where(d.device_uid == device_uid)
    if reason is not None:
        query = query.where(d.reason == reason)
    if cursor is not None:
        (before,), rest = _decode_cursor(cursor, _DEAD_LETTER_CURSOR, 1)
        if rest:
            raise ValueError(f"invalid cursor {cursor[:40]!r}: pass next_cursor back unchanged")
        query = query.where(d.id < before)
    fetched = (await conn.execute(query.order_by(d.id.desc()).limit(limit + 1))).all()
    page = fetched[:limit]
    items = [
        DeadLetter(
            id=int(x.id),
            device_uid=x.device_uid,
            source=str(x.source),
            topic=x.topic,
            reason=str(x.reason),
            detail=str(x.detail),
            entry_index=None if x.entry_index is None else int(x.entry_index),
            payload=None if x.payload is None else bytes(x.payload),
            payload_size=int(x.payload_size),
            received_at=int(x.received_at),
        )
        for x in page
    ]
    next_cursor = None
    if len(fetched) > limit:
        next_cursor = _encode_cursor(_DEAD_LETTER_CURSOR, int(page[-1].id))
    return DeadLetterPage(items=items, next_cursor=next_cursor)
