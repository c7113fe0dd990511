"""Read queries for the API: raw history, aggregates, latest values, quality, dead letters.

Every query is scoped by ``tenant_id``: a device of another tenant answers exactly like a missing
one. Times are µs since the epoch (UTC); integer arithmetic buckets them alike on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import functools
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    func,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Subquery

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


async def metric_ids(conn: AsyncConnection, names: Sequence[str]) -> dict[int, str]:
    """metric id -> name of the known metrics among ``names``."""
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


# The device's distinct metrics by walking the primary key (device_id, metric_id, ts): one index
# probe per series instead of reading every row (a "loose index scan").
_SERIES_SQL = text(
    """
WITH RECURSIVE series(id) AS (
    SELECT min(metric_id) FROM readings WHERE device_id = :device AND tenant_id = :tenant
    UNION ALL
    SELECT (SELECT min(metric_id) FROM readings
            WHERE device_id = :device AND tenant_id = :tenant AND metric_id > series.id)
    FROM series WHERE series.id IS NOT NULL
)
SELECT metrics.id, metrics.name FROM series JOIN metrics ON metrics.id = series.id"""
)


async def _series_of(
    conn: AsyncConnection, tenant_id: int, device_id: int, metrics: Sequence[str] | None
) -> dict[int, str]:
    """metric id -> name of the device's series: those named in ``metrics`` (None: all)."""
    if metrics is None:
        rows = await conn.execute(_SERIES_SQL, {"device": device_id, "tenant": tenant_id})
        return {int(i): str(name) for i, name in rows.all()}
    return await metric_ids(conn, metrics)


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

    names = await _series_of(conn, tenant_id, device_id, metrics)
    if not names:
        return HistoryPage(rows=[], next_cursor=None)
    # One arm per series: at most a page from a range of the primary key (device_id,
    # metric_id, ts), the arms merged in (ts, metric) order. PostgreSQL reads about one page
    # (Merge Append of index scans: 0.9 ms for a page of 1,000 of three series, where one
    # ORDER BY ts over the device read the whole rest of the range: 26 ms a month in).
    r = readings.c
    columns = (r.metric_id, r.ts, r.value, r.text, r.flags, r.received_at, r.ts_device)
    arms = []
    for metric_id in sorted(names):
        arm = select(*columns).where(
            r.tenant_id == tenant_id, r.device_id == device_id, r.metric_id == metric_id,
            r.ts >= start, r.ts < end,
        )  # fmt: skip
        if after is not None:  # past (ts, metric) of the cursor: within one series, by ts alone
            c_ts, c_metric = after
            if descending:
                arm = arm.where(r.ts < c_ts if metric_id >= c_metric else r.ts <= c_ts)
            else:
                arm = arm.where(r.ts > c_ts if metric_id <= c_metric else r.ts >= c_ts)
        arm = arm.order_by(r.ts.desc() if descending else r.ts).limit(limit + 1)
        arms.append(select(arm.subquery()))  # SQLite takes no LIMIT in a bare compound arm
    merged = union_all(*arms).subquery() if len(arms) > 1 else arms[0].subquery()
    m = merged.c
    by = (m.ts.desc(), m.metric_id.desc()) if descending else (m.ts, m.metric_id)
    query = select(merged).order_by(*by)

    fetched = (await conn.execute(query.limit(limit + 1))).all()
    page = fetched[:limit]
    # Positional unpacking: a third of the time of reading Row attributes by name (exports).
    rows = [
        HistoryRow(
            names[int(metric_id)],
            int(ts),
            None if value is None else float(value),
            text,
            int(flags),
            int(received_at),
            None if ts_device is None else int(ts_device),
        )
        for metric_id, ts, value, text, flags, received_at, ts_device in page
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


def _source(source: Source) -> tuple[Table, Any, list[Any]]:
    """The table of ``source``, its time column, and the filter its values need."""
    if source == "raw":
        return readings, readings.c.ts, [readings.c.value.is_not(None)]
    _, table = _rollup_width(source)
    return table, table.c.bucket, []


def _measures(source: Source, c: Any, labels: Sequence[str]) -> list[Any]:
    """Count, sum, min, max and the first/last timestamps from raw values or rollup rows
    (columns ``c``), labelled ``labels``."""
    if source == "raw":
        v, ts = c.value, c.ts
        measures: list[Any] = [func.count(v), func.sum(v), func.min(v), func.max(v)]
        measures += [func.min(ts), func.max(ts)]
    else:
        # SUM(bigint) is numeric on PostgreSQL: bring it back to an integer.
        measures = [
            cast(func.sum(c.count), BigInteger), func.sum(c.sum), func.min(c.min),
            func.max(c.max), func.min(c.first_ts), func.max(c.last_ts),
        ]  # fmt: skip
    return [m.label(label) for m, label in zip(measures, labels, strict=True)]


def _grouped(
    source: Source,
    tenant_id: Any,
    device_id: Any,
    metric_ids: Any,
    start: Any,
    end: Any,
    bucket_us: Any,
) -> Select[Any]:
    """Per (metric, bucket): count, sum, min, max and the first/last timestamps."""
    table, at, only = _source(source)
    t = table.c
    kept = [t.ts, t.value] if source == "raw" else [t.count, t.sum, t.min, t.max, t.first_ts]
    if source != "raw":
        kept.append(t.last_ts)
    # A subquery, so that GROUP BY names a column rather than repeating an expression with its
    # own bind parameter (PostgreSQL would not match the two).
    inner = (
        select(t.metric_id, (at - at % bucket_us).label("b"), *kept)
        .where(
            t.tenant_id == tenant_id, t.device_id == device_id, t.metric_id.in_(metric_ids),
            at >= start, at < end, *only,
        )
        .subquery()
    )  # fmt: skip
    labels = ("n", "total", "lo", "hi", "first_ts", "last_ts")
    return select(inner.c.metric_id, inner.c.b, *_measures(source, inner.c, labels)).group_by(
        inner.c.metric_id, inner.c.b
    )


def _edge_value(
    source: Source, device_id: Any, metric_id: Any, b: Any, bucket_us: Any, ts: Any, first: bool
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


@functools.lru_cache(maxsize=16)
def _aggregate_statement(source: Source, first: bool, last: bool) -> Select[Any]:
    """The aggregate query of one shape, with bound parameters tenant, device, ids, start, end
    and width: built once (building the SQLAlchemy constructs cost about half of a request)."""
    device: Any = bindparam("device")
    width: Any = bindparam("width")
    ids: Any = bindparam("ids", expanding=True)
    grouped = _grouped(
        source, bindparam("tenant"), device, ids, bindparam("start"), bindparam("end"), width
    ).subquery()
    g = grouped.c
    columns: list[Any] = [g.metric_id, g.b, g.n, g.total, g.lo, g.hi]
    for wanted, ts, is_first, label in (
        (first, g.first_ts, True, "first_value"),
        (last, g.last_ts, False, "last_value"),
    ):
        if wanted:
            edge = _edge_value(source, device, g.metric_id, g.b, width, ts, is_first)
            columns.append(edge.label(label))
    return select(*columns).order_by(g.metric_id, g.b)


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
    known: dict[int, str] | None = None,
) -> list[Bucket]:
    """One Bucket per (metric, epoch-aligned bucket) with data in [start, end), from the coarsest
    source that serves it (``rollup_1h``, ``rollup_1m`` or raw ``readings``). ``known``:
    ``metric_ids(conn, metrics)`` when the caller has it already (several ranges, one request)."""
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
    names = known if known is not None else await metric_ids(conn, metrics)
    if not names or start == end:
        return []

    source = aggregate_source(start, end, bucket_us)
    statement = _aggregate_statement(source, "first" in wanted, "last" in wanted)
    params = {"tenant": tenant_id, "device": device_id, "ids": sorted(names), "start": start,
              "end": end, "width": bucket_us}  # fmt: skip
    rows = (await conn.execute(statement, params)).all()

    buckets = []
    has_first = "first" in wanted
    for row in rows:  # by position: Row._mapping cost a quarter of a request
        metric_id, b, n, total, lo, hi = row[:6]
        if not n:
            continue
        n, total = int(n), float(total)
        edges = row[6:]
        buckets.append(
            Bucket(
                metric=names[int(metric_id)],
                start=int(b),
                source=source,
                avg=total / n if "avg" in wanted else None,
                min=float(lo) if "min" in wanted else None,
                max=float(hi) if "max" in wanted else None,
                count=n if "count" in wanted else None,
                sum=total if "sum" in wanted else None,
                first=float(edges[0]) if has_first else None,
                last=float(edges[-1]) if "last" in wanted else None,
            )
        )
    buckets.sort(key=lambda b: (b.metric, b.start))
    return buckets


# --- aggregates over explicit boundaries (calendar buckets) -----------------------------------

# Finest first: a bucket served partly from minute rollups reports rollup_1m.
_FINENESS: dict[Source, int] = {"raw": 0, "rollup_1m": 1, "rollup_1h": 2}
# Spans per statement (SQLite allows at most 500 terms in a compound SELECT). Fewer also bound
# the cost of a plan that joins every row of the statement's range with every span.
_SPANS_PER_QUERY = 100


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
class Acc:
    """Aggregates of one bucket, merged from the pieces that cover it."""

    count: int
    sum: float
    min: float
    max: float
    first: float | None
    last: float | None


def _acc(b: Bucket) -> Acc:
    return Acc(b.count or 0, b.sum or 0.0, b.min or 0.0, b.max or 0.0, b.first, b.last)


async def aggregate_range(
    conn: AsyncConnection,
    tenant_id: int,
    device_id: int,
    metrics: Sequence[str],
    start: int,
    end: int,
    bucket_us: int,
    funcs: Sequence[str],
) -> tuple[Source, dict[str, list[tuple[int, Acc]]]]:
    """Buckets over [start, end) with whole buckets from rollups and edges from finer data."""
    widths = sorted((w for w in ROLLUPS if bucket_us % w == 0), reverse=True)
    parts = pieces(start, end, widths)
    main = max(parts, key=lambda p: p[1] - p[0])
    edges = [f for f in ("first", "last") if f in funcs]
    wanted = ("count", "sum", "min", "max", *edges)
    merged: dict[tuple[str, int], Acc] = {}
    known = await metric_ids(conn, metrics)
    for s, e in parts:  # in time order: the first piece with data holds a bucket's first value
        for b in await aggregate(
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
    series: dict[str, list[tuple[int, Acc]]] = {m: [] for m in metrics}
    for (metric, bucket_start), acc in sorted(merged.items()):
        series[metric].append((bucket_start, acc))
    return aggregate_source(main[0], main[1], bucket_us), series


def split_by_source(start: int, end: int) -> list[tuple[int, int, Source]]:
    """[start, end) in time order as pieces each read whole from one table: the middle from the
    coarsest rollup its boundaries allow, the edges from finer rollups or raw rows."""

    def split(a: int, b: int, widths: Sequence[int]) -> list[tuple[int, int, Source]]:
        if a >= b:
            return []
        if not widths:
            return [(a, b, "raw")]
        w, finer = widths[0], widths[1:]
        lo, hi = -(-a // w) * w, b // w * w
        if lo >= hi:
            return split(a, b, finer)
        name: Source = "rollup_1h" if ROLLUPS[w].name == "rollup_1h" else "rollup_1m"
        return [*split(a, lo, finer), (lo, hi, name), *split(hi, b, finer)]

    return split(start, end, sorted(ROLLUPS, reverse=True))


def _check_bounds(bounds: Sequence[int]) -> None:
    if len(bounds) < 2:
        raise ValueError(f"bounds needs at least two boundaries, got {len(bounds)}")
    for a, b in pairwise(bounds):
        if b <= a:
            raise ValueError(f"bounds must increase strictly: {b} follows {a}")


def _clip(bounds: Sequence[int], start: int | None, end: int | None) -> tuple[int, int]:
    lo = bounds[0] if start is None else max(bounds[0], start)
    hi = bounds[-1] if end is None else min(bounds[-1], end)
    return lo, hi


def _bucket_pieces(
    bounds: Sequence[int], lo: int, hi: int
) -> list[tuple[int, list[tuple[int, int, Source]]]]:
    """(bucket index, its pieces) for every bucket [bounds[i], bounds[i+1]) meeting [lo, hi)."""
    out = []
    i = bisect_right(bounds, lo) - 1
    while i < len(bounds) - 1 and bounds[i] < hi:
        out.append((i, split_by_source(max(bounds[i], lo), min(bounds[i + 1], hi))))
        i += 1
    return out


def bounds_source(
    bounds: Sequence[int], start: int | None = None, end: int | None = None
) -> Source:
    """The table that serves buckets [bounds[i], bounds[i+1]) over [start, end): the finest one
    read for a whole bucket (rollup_1h when every boundary is a whole UTC hour); with no whole
    bucket in range, the table of the longest piece read."""
    _check_bounds(bounds)
    lo, hi = _clip(bounds, start, end)
    if lo >= hi:
        return "raw"
    planned = _bucket_pieces(bounds, lo, hi)
    whole = [p for i, p in planned if lo <= bounds[i] and bounds[i + 1] <= hi]
    if whole:
        return min((src for p in whole for _, _, src in p), key=_FINENESS.__getitem__)
    longest = max((piece for _, p in planned for piece in p), key=lambda x: x[1] - x[0])
    return longest[2]


def _spans(chunk: Sequence[tuple[int, int, int]]) -> Subquery:
    """(key, lo, hi) rows as a derived table. The integers are inlined as SQL text: no
    bind-parameter limits, and next to nothing to compile."""
    rows = " UNION ALL ".join(
        f"SELECT {int(k)} AS k, {int(lo)} AS lo, {int(hi)} AS hi" for k, lo, hi in chunk
    )
    return text(rows).columns(k=BigInteger, lo=BigInteger, hi=BigInteger).subquery("spans")


def _grouped_spans(
    source: Source,
    tenant_id: int,
    device_id: int,
    metric_ids: list[int],
    chunk: Sequence[tuple[int, int, int]],
    first: bool,
    last: bool,
) -> Select[Any]:
    """Per (span, metric) of ``chunk`` ((key, lo, hi) rows): count, sum, min, max, first/last
    timestamps and (if asked) values."""
    spans = _spans(chunk)
    sp = spans.c
    # The whole chunk's range, so that the table is read by its primary key whatever the plan.
    lo_all, hi_all = min(lo for _, lo, _ in chunk), max(hi for _, _, hi in chunk)
    table, at, only = _source(source)
    c = table.c
    labels = ("n", "total", "lo_v", "hi_v", "first_ts", "last_ts")
    inner = (
        select(sp.k, sp.lo, sp.hi, c.metric_id, *_measures(source, c, labels))
        .select_from(spans.join(table, and_(at >= sp.lo, at < sp.hi)))
        .where(
            c.tenant_id == tenant_id, c.device_id == device_id, c.metric_id.in_(metric_ids),
            at >= lo_all, at < hi_all, *only,
        )
        .group_by(sp.k, sp.lo, sp.hi, c.metric_id)
        .subquery()
    )  # fmt: skip
    g = inner.c
    columns: list[Any] = [g.k, g.metric_id, g.n, g.total, g.lo_v, g.hi_v, g.first_ts, g.last_ts]
    for wanted, ts, label in ((first, g.first_ts, "first_value"), (last, g.last_ts, "last_value")):
        if not wanted:
            continue
        if source == "raw":
            value = select(func.min(c.value)).where(
                c.device_id == device_id, c.metric_id == g.metric_id, c.ts == ts
            )
        else:
            is_first = label == "first_value"
            value = select(func.min(c.first_value if is_first else c.last_value)).where(
                c.device_id == device_id,
                c.metric_id == g.metric_id,
                c.bucket >= g.lo,
                c.bucket < g.hi,
                (c.first_ts if is_first else c.last_ts) == ts,
            )
        columns.append(value.scalar_subquery().label(label))
    return select(*columns)


@dataclass(slots=True)
class _Merged:
    count: int
    sum: float
    min: float
    max: float
    first_ts: int
    first: float | None
    last_ts: int
    last: float | None


async def aggregate_bounds(
    conn: AsyncConnection,
    tenant_id: int,
    device_id: int,
    *,
    metrics: Sequence[str],
    bounds: Sequence[int],
    start: int | None = None,
    end: int | None = None,
    funcs: Sequence[str] = ("avg", "min", "max", "count"),
) -> list[Bucket]:
    """One Bucket per (metric, bucket [bounds[i], bounds[i+1])) with data in [start, end)
    (default: the whole of ``bounds``), for buckets of any lengths such as local days or months.

    Each bucket is read in pieces: the whole hours in it from ``rollup_1h``, the remaining whole
    minutes from ``rollup_1m``, the rest from raw readings; the pieces merge exactly (sums and
    counts add, first/last follow the timestamps). ``Bucket.start`` is ``bounds[i]`` even when
    ``start`` cuts the bucket; ``Bucket.source`` is the finest table read for it."""
    unknown = [f for f in funcs if f not in AGGREGATE_FUNCS]
    if unknown:
        raise ValueError(
            f"unknown aggregate function(s) {', '.join(map(repr, unknown))}: "
            f"expected any of {', '.join(AGGREGATE_FUNCS)}"
        )
    _check_bounds(bounds)
    if start is not None and end is not None:
        _check_range(start, end)
    wanted = set(funcs)
    lo, hi = _clip(bounds, start, end)
    names = await metric_ids(conn, metrics)
    if not names or lo >= hi:
        return []

    by_source: dict[Source, list[tuple[int, int, int]]] = {}
    bucket_source: dict[int, Source] = {}
    for i, parts in _bucket_pieces(bounds, lo, hi):
        for a, b, src in parts:
            by_source.setdefault(src, []).append((i, a, b))
        bucket_source[i] = min((src for _, _, src in parts), key=_FINENESS.__getitem__)

    merged: dict[tuple[int, int], _Merged] = {}
    for source, spans in by_source.items():
        for c in range(0, len(spans), _SPANS_PER_QUERY):
            stmt = _grouped_spans(
                source, tenant_id, device_id, sorted(names), spans[c : c + _SPANS_PER_QUERY],
                "first" in wanted, "last" in wanted,
            )  # fmt: skip
            # Every statement is new: keep them out of the compiled-statement cache.
            result = await conn.execute(stmt, execution_options={"compiled_cache": None})
            for row in result:
                n = int(row.n)
                if n == 0:
                    continue
                m = row._mapping
                part = _Merged(
                    n, float(row.total), float(row.lo_v), float(row.hi_v),
                    int(row.first_ts), m.get("first_value"),
                    int(row.last_ts), m.get("last_value"),
                )  # fmt: skip
                key = (int(row.metric_id), int(row.k))
                acc = merged.get(key)
                if acc is None:
                    merged[key] = part
                    continue
                acc.count += part.count
                acc.sum += part.sum
                acc.min = min(acc.min, part.min)
                acc.max = max(acc.max, part.max)
                if part.first_ts < acc.first_ts:
                    acc.first_ts, acc.first = part.first_ts, part.first
                if part.last_ts > acc.last_ts:
                    acc.last_ts, acc.last = part.last_ts, part.last

    buckets = [
        Bucket(
            metric=names[metric_id],
            start=bounds[i],
            source=bucket_source[i],
            avg=acc.sum / acc.count if "avg" in wanted else None,
            min=acc.min if "min" in wanted else None,
            max=acc.max if "max" in wanted else None,
            count=acc.count if "count" in wanted else None,
            sum=acc.sum if "sum" in wanted else None,
            first=None if "first" not in wanted or acc.first is None else float(acc.first),
            last=None if "last" not in wanted or acc.last is None else float(acc.last),
        )
        for (metric_id, i), acc in merged.items()
    ]
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


@dataclass(frozen=True, slots=True)
class Sparkline:
    """Hourly averages of one metric of one device: (hour start in µs, average), oldest first."""

    device_uid: str
    metric: str
    points: list[tuple[int, float]]


HOUR_US = 3600 * 1_000_000


async def sparklines(
    conn: AsyncConnection, tenant_id: int | None, uids: Sequence[str], start: int, end: int
) -> list[Sparkline]:
    """The hourly averages in [start, end) of every metric of the devices ``uids`` of the
    tenant (None: any tenant, for platform admins), from ``rollup_1h``, in one statement; by
    device, then metric. Devices of other tenants and unknown uids are absent."""
    _check_range(start, end)
    if not uids:
        return []
    r, m = schema.rollup_1h.c, schema.metrics.c
    query = (
        select(devices.c.uid, m.name, r.bucket, r.sum.label("total"), r.count.label("n"))
        .select_from(
            schema.rollup_1h.join(devices, devices.c.id == r.device_id).join(
                schema.metrics, m.id == r.metric_id
            )
        )
        .where(devices.c.uid.in_(sorted(set(uids))), r.bucket >= start, r.bucket < end)
        .order_by(devices.c.uid, m.name, r.bucket)
    )
    if tenant_id is not None:
        query = query.where(r.tenant_id == tenant_id, devices.c.tenant_id == tenant_id)
    lines: list[Sparkline] = []
    for row in await conn.execute(query):
        if not row.n:
            continue
        if not lines or (lines[-1].device_uid, lines[-1].metric) != (row.uid, row.name):
            lines.append(Sparkline(str(row.uid), str(row.name), []))
        lines[-1].points.append((int(row.bucket), float(row.total) / int(row.n)))
    return lines


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
