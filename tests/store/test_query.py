"""Read queries on SQLite and PostgreSQL: pagination, aggregates from rollups and raw, isolation."""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telemetra.store import query, schema

MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, day-aligned


@dataclass
class World:
    """One tenant with one device and some metrics, private to a test."""

    tenant_id: int
    device_id: int
    device_uid: str
    metric_ids: dict[str, int]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def make_world(conn: AsyncConnection, n_metrics: int = 2) -> World:
    tenant = await conn.execute(insert(schema.tenants).values(name=unique("tenant"), created_at=T0))
    tenant_id = int(tenant.inserted_primary_key[0])
    uid = unique("dev")
    device = await conn.execute(
        insert(schema.devices).values(
            tenant_id=tenant_id, uid=uid, metadata={}, status="active", created_at=T0
        )
    )
    metric_ids = {}
    for i in range(n_metrics):
        name = unique(f"m{i}")
        res = await conn.execute(insert(schema.metrics).values(name=name, kind="gauge"))
        metric_ids[name] = int(res.inserted_primary_key[0])
    return World(tenant_id, int(device.inserted_primary_key[0]), uid, metric_ids)


Raw = tuple[str, int, float | None]  # metric name, ts, value (None: a text reading)


async def insert_readings(conn: AsyncConnection, w: World, raw: Sequence[Raw]) -> None:
    """Insert raw readings and the rollup rows computed from them (as the writer would)."""
    if not raw:
        return
    await conn.execute(
        insert(schema.readings),
        [
            {
                "tenant_id": w.tenant_id,
                "device_id": w.device_id,
                "metric_id": w.metric_ids[m],
                "ts": ts,
                "value": v,
                "text": "txt" if v is None else None,
                "received_at": ts + 5,
                "flags": 0,
            }
            for m, ts, v in raw
        ],
    )
    for width, table in schema.ROLLUPS.items():
        groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
        for m, ts, v in raw:
            if v is not None:
                groups[m, ts - ts % width].append((ts, v))
        rows = []
        for (m, bucket), points in groups.items():
            points.sort()
            values = [v for _, v in points]
            rows.append(
                {
                    "tenant_id": w.tenant_id,
                    "device_id": w.device_id,
                    "metric_id": w.metric_ids[m],
                    "bucket": bucket,
                    "count": len(values),
                    "sum": math.fsum(values),
                    "min": min(values),
                    "max": max(values),
                    "first_ts": points[0][0],
                    "first_value": points[0][1],
                    "last_ts": points[-1][0],
                    "last_value": points[-1][1],
                }
            )
        if rows:
            await conn.execute(insert(table), rows)


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def same_buckets(a: list[query.Bucket], b: list[query.Bucket]) -> bool:
    if [(x.metric, x.start, x.count) for x in a] != [(x.metric, x.start, x.count) for x in b]:
        return False
    return all(
        close(x.avg, y.avg)
        and close(x.sum, y.sum)
        and x.min == y.min
        and x.max == y.max
        and x.first == y.first
        and x.last == y.last
        for x, y in zip(a, b, strict=True)
    )


ALL_FUNCS = ("avg", "min", "max", "count", "sum", "first", "last")


def reference(
    raw: Sequence[Raw], start: int, end: int, bucket_us: int
) -> list[tuple[str, int, int, float, float, float, float]]:
    """Pure-Python buckets: (metric, start, count, min, max, first, last)."""
    groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for m, ts, v in raw:
        if v is not None and start <= ts < end:
            groups[m, ts - ts % bucket_us].append((ts, v))
    out = []
    for (m, b), points in sorted(groups.items()):
        points.sort()
        values = [v for _, v in points]
        out.append((m, b, len(values), min(values), max(values), points[0][1], points[-1][1]))
    return out


# --- history ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 1000])
async def test_history_pages_cover_every_row_once_both_ways(
    engine: AsyncEngine, limit: int
) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn, n_metrics=3)
        names = sorted(w.metric_ids, key=w.metric_ids.__getitem__)
        raw: list[Raw] = []
        for i in range(20):
            for j, name in enumerate(names):
                if (i + j) % 4:  # some timestamps shared by several metrics, some not
                    raw.append((name, T0 + i * 1000, float(i * 10 + j)))
        raw.append((names[0], T0 + 99_000, None))  # text readings are history too
        raw.append((names[0], T0 - 1, 1.0))  # outside [start, end)
        raw.append((names[0], T0 + 10**9, 1.0))
        await insert_readings(conn, w, raw)

    start, end = T0, T0 + 10**9
    expected = sorted(
        ((ts, w.metric_ids[m]) for m, ts, _ in raw if start <= ts < end),
    )
    for descending in (False, True):
        keys: list[tuple[int, int]] = []
        cursor = None
        pages = 0
        async with engine.connect() as conn:
            while True:
                page = await query.history(
                    conn,
                    w.tenant_id,
                    w.device_id,
                    metrics=None,
                    start=start,
                    end=end,
                    limit=limit,
                    cursor=cursor,
                    descending=descending,
                )
                pages += 1
                assert len(page.rows) <= limit
                keys.extend((r.ts, w.metric_ids[r.metric]) for r in page.rows)
                if page.next_cursor is None:
                    break
                assert len(page.rows) == limit
                cursor = page.next_cursor
        assert keys == (expected[::-1] if descending else expected)
        assert pages == max(1, math.ceil(len(expected) / limit))


async def test_history_metric_filter_and_fields(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        a, b = sorted(w.metric_ids)
        await insert_readings(conn, w, [(a, T0, 1.5), (b, T0, 2.5), (a, T0 + 1, None)])
    async with engine.connect() as conn:
        page = await query.history(
            conn, w.tenant_id, w.device_id, metrics=[a], start=T0, end=T0 + 10
        )
        assert page.next_cursor is None
        assert [(r.metric, r.ts, r.value, r.text) for r in page.rows] == [
            (a, T0, 1.5, None),
            (a, T0 + 1, None, "txt"),
        ]
        assert page.rows[0].received_at == T0 + 5
        assert page.rows[0].flags == 0
        none = await query.history(
            conn, w.tenant_id, w.device_id, metrics=["no-such-metric"], start=T0, end=T0 + 10
        )
        assert none.rows == []


async def test_history_rejects_bad_cursors(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        m = next(iter(w.metric_ids))
        await insert_readings(conn, w, [(m, T0 + i, float(i)) for i in range(3)])
    async with engine.connect() as conn:
        page = await query.history(
            conn, w.tenant_id, w.device_id, metrics=None, start=T0, end=T0 + 10, limit=1
        )
        assert page.next_cursor is not None
        dl_page = await query.dead_letters(conn, w.tenant_id)
        assert dl_page.next_cursor is None
        for bad in ("garbage!!", "", "aGVsbG8", "aDE6eDp5OmE", "%%%"):
            with pytest.raises(ValueError, match="invalid cursor"):
                await query.history(
                    conn,
                    w.tenant_id,
                    w.device_id,
                    metrics=None,
                    start=T0,
                    end=T0 + 10,
                    cursor=bad,
                )
        with pytest.raises(ValueError, match="other order"):
            await query.history(
                conn,
                w.tenant_id,
                w.device_id,
                metrics=None,
                start=T0,
                end=T0 + 10,
                cursor=page.next_cursor,
                descending=True,
            )
        with pytest.raises(ValueError, match="invalid cursor"):
            await query.dead_letters(conn, w.tenant_id, cursor=page.next_cursor)
        with pytest.raises(ValueError, match="limit"):
            await query.history(
                conn, w.tenant_id, w.device_id, metrics=None, start=T0, end=T0 + 10, limit=0
            )


# --- aggregates -------------------------------------------------------------------------------


def test_source_selection_rules() -> None:
    assert query.aggregate_source(T0, T0 + DAY, HOUR) == "rollup_1h"
    assert query.aggregate_source(T0, T0 + DAY, DAY) == "rollup_1h"
    assert query.aggregate_source(T0, T0 + DAY, 15 * MINUTE) == "rollup_1m"
    assert query.aggregate_source(T0 + MINUTE, T0 + DAY, HOUR) == "rollup_1m"
    assert query.aggregate_source(T0, T0 + DAY + 1, HOUR) == "raw"
    assert query.aggregate_source(T0, T0 + DAY, 90_000_000) == "raw"
    assert query.aggregate_source(T0, T0 + DAY, 1_000_000) == "raw"


async def test_aggregate_source_and_first_last(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        a, b = sorted(w.metric_ids)
        # Out of order on purpose: first/last follow event time, not insertion or value.
        raw: list[Raw] = [
            (a, T0 + 2 * HOUR + 30 * MINUTE, 7.0),
            (a, T0 + 5 * MINUTE, 3.0),
            (a, T0 + HOUR + 1, -4.0),
            (a, T0 + 59 * MINUTE + 59_999_999, 9.0),
            (a, T0 + 10 * MINUTE, None),  # text only: not aggregated
            (b, T0 + 3 * HOUR, 100.0),
            (b, T0 + 3 * HOUR + 1, 50.0),
        ]
        await insert_readings(conn, w, raw)

    async with engine.connect() as conn:
        for start, end, bucket, source in [
            (T0, T0 + DAY, DAY, "rollup_1h"),
            (T0, T0 + DAY, 2 * HOUR, "rollup_1h"),
            (T0, T0 + DAY, 30 * MINUTE, "rollup_1m"),
            (T0 + MINUTE, T0 + DAY, HOUR, "rollup_1m"),
            (T0 - 1, T0 + DAY + 1, DAY, "raw"),
            (T0, T0 + DAY, 7_000_000, "raw"),
        ]:
            got = await query.aggregate(
                conn,
                w.tenant_id,
                w.device_id,
                metrics=[a, b, "no-such-metric"],
                start=start,
                end=end,
                bucket_us=bucket,
                funcs=ALL_FUNCS,
            )
            assert {x.source for x in got} == {source}
            want = reference(raw, start, end, bucket)
            assert [
                (x.metric, x.start, x.count, x.min, x.max, x.first, x.last) for x in got
            ] == want

        day = await query.aggregate(
            conn,
            w.tenant_id,
            w.device_id,
            metrics=[a],
            start=T0,
            end=T0 + DAY,
            bucket_us=DAY,
            funcs=ALL_FUNCS,
        )
        assert len(day) == 1
        assert (day[0].first, day[0].last, day[0].count, day[0].sum) == (3.0, 7.0, 4, 15.0)
        assert day[0].avg == pytest.approx(3.75)

        only = await query.aggregate(
            conn,
            w.tenant_id,
            w.device_id,
            metrics=[a],
            start=T0,
            end=T0 + DAY,
            bucket_us=DAY,
            funcs=["last"],
        )
        assert only[0].last == 7.0
        assert (only[0].avg, only[0].count, only[0].first) == (None, None, None)

        default = await query.aggregate(
            conn, w.tenant_id, w.device_id, metrics=[b], start=T0, end=T0 + DAY, bucket_us=HOUR
        )
        assert [(x.avg, x.min, x.max, x.count, x.sum) for x in default] == [
            (75.0, 50.0, 100.0, 2, None)
        ]


async def test_aggregate_rejects_bad_arguments(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(ValueError, match="'median'"):
            await query.aggregate(
                conn,
                1,
                1,
                metrics=["x"],
                start=T0,
                end=T0 + DAY,
                bucket_us=HOUR,
                funcs=["avg", "median"],
            )
        with pytest.raises(ValueError, match="bucket_us"):
            await query.aggregate(conn, 1, 1, metrics=["x"], start=T0, end=T0 + DAY, bucket_us=0)
        with pytest.raises(ValueError, match="before start"):
            await query.aggregate(conn, 1, 1, metrics=["x"], start=T0, end=T0 - 1, bucket_us=HOUR)


series = st.lists(
    st.tuples(
        st.integers(0, 1),  # which metric
        st.integers(0, 2 * DAY - 1),  # offset from T0
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), st.none()),
    ),
    unique_by=lambda t: (t[0], t[1]),
    max_size=60,
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    points=series,
    bucket=st.sampled_from([MINUTE, 5 * MINUTE, HOUR, 3 * HOUR, DAY]),
)
async def test_rollups_and_raw_agree(
    engine: AsyncEngine, points: list[tuple[int, int, float | None]], bucket: int
) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        names = sorted(w.metric_ids)
        raw: list[Raw] = [(names[m], T0 + off, v) for m, off, v in points]
        await insert_readings(conn, w, raw)

    async def run(start: int, end: int) -> list[query.Bucket]:
        async with engine.connect() as conn:
            return await query.aggregate(
                conn,
                w.tenant_id,
                w.device_id,
                metrics=names,
                start=start,
                end=end,
                bucket_us=bucket,
                funcs=ALL_FUNCS,
            )

    end = T0 + 2 * DAY
    coarse = await run(T0, end)
    minutes = await run(T0 - MINUTE, end)  # minute- but not hour-aligned
    # One µs wider on each side: no data there, so the same buckets, served from raw rows.
    fine = await run(T0 - 1, end + 1)
    if raw and any(v is not None for _, _, v in raw):
        assert {x.source for x in coarse} == {"rollup_1h" if bucket % HOUR == 0 else "rollup_1m"}
        assert {x.source for x in minutes} == {"rollup_1m"}
        assert {x.source for x in fine} == {"raw"}
    assert same_buckets(coarse, fine)
    assert same_buckets(minutes, fine)
    want = reference(raw, T0, end, bucket)
    assert [(x.metric, x.start, x.count, x.min, x.max, x.first, x.last) for x in fine] == want
    sums: dict[tuple[str, int], list[float]] = defaultdict(list)
    for m, ts, v in raw:
        if v is not None:
            sums[m, ts - ts % bucket].append(v)
    for x in fine:
        assert close(x.sum, math.fsum(sums[x.metric, x.start]))
        assert close(x.avg, math.fsum(sums[x.metric, x.start]) / len(sums[x.metric, x.start]))


# --- aggregates over explicit boundaries (calendar buckets) -----------------------------------


def reference_bounds(
    raw: Sequence[Raw], bounds: Sequence[int], start: int, end: int
) -> list[tuple[str, int, int, float, float, float, float]]:
    """Pure-Python buckets [bounds[i], bounds[i+1]) over [start, end)."""
    groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for m, ts, v in raw:
        if v is None or not (start <= ts < end and bounds[0] <= ts < bounds[-1]):
            continue
        i = max(i for i, b in enumerate(bounds) if b <= ts)
        groups[m, bounds[i]].append((ts, v))
    out = []
    for (m, b), points in sorted(groups.items()):
        points.sort()
        values = [v for _, v in points]
        out.append((m, b, len(values), min(values), max(values), points[0][1], points[-1][1]))
    return out


def test_split_by_source_and_bounds_source() -> None:
    q = 15 * MINUTE
    assert query.split_by_source(T0, T0 + DAY) == [(T0, T0 + DAY, "rollup_1h")]
    # A +05:30 day: whole hours from the hourly rollup, the half hours from the minute rollup.
    assert query.split_by_source(T0 - 30 * MINUTE, T0 + DAY - 30 * MINUTE) == [
        (T0 - 30 * MINUTE, T0, "rollup_1m"),
        (T0, T0 + DAY - HOUR, "rollup_1h"),
        (T0 + DAY - HOUR, T0 + DAY - 30 * MINUTE, "rollup_1m"),
    ]
    assert query.split_by_source(T0 + 1, T0 + MINUTE + 5) == [(T0 + 1, T0 + MINUTE + 5, "raw")]
    assert query.split_by_source(T0 + 1, T0 + 3 * MINUTE) == [
        (T0 + 1, T0 + MINUTE, "raw"),
        (T0 + MINUTE, T0 + 3 * MINUTE, "rollup_1m"),
    ]
    assert query.split_by_source(T0, T0) == []

    days = [T0 + i * DAY for i in range(4)]
    assert query.bounds_source(days) == "rollup_1h"
    assert query.bounds_source(days, T0 + 5, T0 + 3 * DAY - 5) == "rollup_1h"  # cut edges
    assert query.bounds_source([b + q for b in days]) == "rollup_1m"  # +08:45-like days
    assert query.bounds_source([b + 7 for b in days]) == "raw"
    assert query.bounds_source(days, T0 + 5, T0 + DAY - 5) == "rollup_1h"  # no whole bucket
    assert query.bounds_source(days, T0 + 5, T0 + 3 * MINUTE) == "rollup_1m"  # longest piece
    assert query.bounds_source(days, T0 + 5, T0 + MINUTE + 30_000_000) == "raw"
    for bad in ([T0], [T0, T0], [T0 + 1, T0]):
        with pytest.raises(ValueError, match="bounds"):
            query.bounds_source(bad)


async def test_aggregate_bounds_merges_pieces_exactly(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query, "_SPANS_PER_QUERY", 3)  # several statements per source
    async with engine.begin() as conn:
        w = await make_world(conn)
        a, b = sorted(w.metric_ids)
        raw: list[Raw] = []
        for i in range(0, 3 * 24 * 60, 7):  # every 7 minutes for three days, two metrics
            raw.append((a, T0 + i * MINUTE + 11, float(i % 13) - 4.5))
            if i % 3:
                raw.append((b, T0 + i * MINUTE, float(i)))
        raw.append((a, T0 + 10 * MINUTE, None))
        await insert_readings(conn, w, raw)

    # Days of a +08:45 zone (not whole hours in UTC), a month-like uneven bucket, a cut range.
    shift = 15 * HOUR + 15 * MINUTE
    bounds = [T0 - shift, T0 + DAY - shift, T0 + 2 * DAY - shift + HOUR, T0 + 3 * DAY]
    async with engine.connect() as conn:
        for start, end in ((None, None), (T0 + 17, T0 + 2 * DAY + 5 * MINUTE + 3)):
            got = await query.aggregate_bounds(
                conn, w.tenant_id, w.device_id, metrics=[a, b, "no-such-metric"],
                bounds=bounds, start=start, end=end, funcs=ALL_FUNCS,
            )  # fmt: skip
            lo = bounds[0] if start is None else start
            hi = bounds[-1] if end is None else end
            want = reference_bounds(raw, bounds, lo, hi)
            assert [
                (x.metric, x.start, x.count, x.min, x.max, x.first, x.last) for x in got
            ] == want
            for x in got:
                cut = start is not None and x.start != bounds[1]  # µs edges come from raw
                assert x.source == ("raw" if cut else "rollup_1m")
                values = [
                    v for m, ts, v in raw if m == x.metric and v is not None and lo <= ts < hi
                    and x.start <= ts < bounds[bounds.index(x.start) + 1]
                ]  # fmt: skip
                assert close(x.sum, math.fsum(values))
                assert close(x.avg, math.fsum(values) / len(values))

        only = await query.aggregate_bounds(
            conn, w.tenant_id, w.device_id, metrics=[a], bounds=bounds, funcs=["last"]
        )
        assert [(x.avg, x.count, x.first) for x in only] == [(None, None, None)] * 3
        assert [x.last for x in only] == [row[6] for row in reference_bounds(raw, bounds, 0, 2**62)
                                          if row[0] == a]  # fmt: skip
        assert await query.aggregate_bounds(
            conn, w.tenant_id, w.device_id, metrics=[a], bounds=bounds, start=T0 + 5 * DAY,
            end=T0 + 6 * DAY,
        ) == []  # fmt: skip
        with pytest.raises(ValueError, match="'median'"):
            await query.aggregate_bounds(conn, 1, 1, metrics=[a], bounds=bounds, funcs=["median"])
        with pytest.raises(ValueError, match="increase"):
            await query.aggregate_bounds(conn, 1, 1, metrics=[a], bounds=[T0, T0])
        with pytest.raises(ValueError, match="before start"):
            await query.aggregate_bounds(
                conn, 1, 1, metrics=[a], bounds=bounds, start=T0, end=T0 - 1
            )


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    points=series,
    cuts=st.lists(st.integers(-8, 2 * 24 * 4 + 8), min_size=2, max_size=12, unique=True),
    jitter=st.integers(0, 2),
    edges=st.tuples(st.integers(-2 * HOUR, 2 * HOUR), st.integers(-2 * HOUR, 2 * HOUR)),
)
async def test_aggregate_bounds_agree_with_raw(
    engine: AsyncEngine,
    points: list[tuple[int, int, float | None]],
    cuts: list[int],
    jitter: int,
    edges: tuple[int, int],
) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        names = sorted(w.metric_ids)
        raw: list[Raw] = [(names[m], T0 + off, v) for m, off, v in points]
        await insert_readings(conn, w, raw)
    # Boundaries on quarter hours, minutes or arbitrary µs; the range may cut the outer buckets.
    unit = (15 * MINUTE, 15 * MINUTE + MINUTE, 15 * MINUTE + 1)[jitter]
    bounds = sorted(T0 + c * unit for c in cuts)
    start, end = bounds[0] + edges[0], bounds[-1] + edges[1]
    if start >= end:
        start, end = end, start + 1
    async with engine.connect() as conn:
        got = await query.aggregate_bounds(
            conn, w.tenant_id, w.device_id, metrics=names, bounds=bounds, start=start, end=end,
            funcs=ALL_FUNCS,
        )  # fmt: skip
    want = reference_bounds(raw, bounds, start, end)
    assert [(x.metric, x.start, x.count, x.min, x.max, x.first, x.last) for x in got] == want
    for x in got:
        i = bounds.index(x.start)
        values = [
            v for m, ts, v in raw
            if m == x.metric and v is not None and start <= ts < end
            and bounds[i] <= ts < bounds[i + 1]
        ]  # fmt: skip
        assert close(x.sum, math.fsum(values))
        assert close(x.avg, math.fsum(values) / len(values))


# --- latest, quality, dead letters, device lookup ---------------------------------------------


async def test_latest_values(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        a, b = sorted(w.metric_ids)
        other = await conn.execute(
            insert(schema.devices).values(
                tenant_id=w.tenant_id,
                uid=unique("dev2"),
                metadata={},
                status="active",
                created_at=T0,
            )
        )
        other_id = int(other.inserted_primary_key[0])
        rows = [
            (w.device_id, a, T0 + 3, 1.0, None),
            (w.device_id, b, T0 + 4, None, "on"),
            (other_id, a, T0 + 5, 2.0, None),
        ]
        await conn.execute(
            insert(schema.latest),
            [
                {
                    "tenant_id": w.tenant_id,
                    "device_id": d,
                    "metric_id": w.metric_ids[m],
                    "ts": ts,
                    "value": v,
                    "text": t,
                    "received_at": ts + 1,
                    "flags": 2,
                }
                for d, m, ts, v, t in rows
            ],
        )
    async with engine.connect() as conn:
        everything = await query.latest(conn, w.tenant_id)
        assert {(x.device_id, x.metric, x.ts, x.value, x.text) for x in everything} == {
            (d, m, ts, v, t) for d, m, ts, v, t in rows
        }
        mine = await query.latest(conn, w.tenant_id, device_ids=[w.device_id])
        assert [(x.device_uid, x.metric, x.value, x.text, x.flags) for x in mine] == [
            (w.device_uid, a, 1.0, None, 2),
            (w.device_uid, b, None, "on", 2),
        ]
        just_a = await query.latest(conn, w.tenant_id, metrics=[a])
        assert {x.device_id for x in just_a} == {w.device_id, other_id}
        assert await query.latest(conn, w.tenant_id, device_ids=[]) == []


async def test_quality_summary(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        await conn.execute(
            schema.devices.update()
            .where(schema.devices.c.id == w.device_id)
            .values(last_seen=T0 + 42, clock_offset_us=-1500)
        )
        counters = {
            "accepted": 10,
            "duplicate": 2,
            "late": 1,
            "rejected:out_of_range": 3,
            "rejected:invalid_json": 1,
        }
        await conn.execute(
            insert(schema.device_quality),
            [
                {"tenant_id": w.tenant_id, "device_id": w.device_id, "counter": c, "count": n}
                for c, n in counters.items()
            ],
        )
        empty = await make_world(conn)
    async with engine.connect() as conn:
        q = await query.quality(conn, w.tenant_id, w.device_id)
        assert q is not None
        assert q.counters == counters
        assert q.rejected_by_reason == {"out_of_range": 3, "invalid_json": 1}
        assert (q.last_seen, q.clock_offset_us) == (T0 + 42, -1500)
        fresh = await query.quality(conn, empty.tenant_id, empty.device_id)
        assert fresh == query.QualitySummary(empty.device_id, {}, {}, None, None)


async def test_dead_letters_newest_first_with_filters(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        rows = [
            {
                "tenant_id": w.tenant_id,
                "device_uid": w.device_uid if i % 2 else "someone-else",
                "source": "mqtt",
                "topic": f"devices/{w.device_uid}/telemetry",
                "reason": "invalid_json" if i % 3 else "too_large",
                "detail": f"entry {i}",
                "entry_index": None,
                "payload": bytes([i, 0, 255]),
                "payload_size": 3 + i,
                "received_at": T0 + i,
            }
            for i in range(11)
        ]
        await conn.execute(insert(schema.dead_letters), rows)
    async with engine.connect() as conn:
        seen: list[query.DeadLetter] = []
        cursor = None
        while True:
            page = await query.dead_letters(conn, w.tenant_id, limit=4, cursor=cursor)
            seen.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [x.detail for x in seen] == [f"entry {i}" for i in reversed(range(11))]
        assert [x.id for x in seen] == sorted((x.id for x in seen), reverse=True)
        assert seen[0].payload == bytes([10, 0, 255])
        assert seen[0].payload_size == 13

        mine = await query.dead_letters(
            conn, w.tenant_id, device_uid=w.device_uid, reason="invalid_json"
        )
        assert [x.detail for x in mine.items] == [
            f"entry {i}" for i in reversed(range(11)) if i % 2 and i % 3
        ]
        assert mine.next_cursor is None


async def test_device_by_uid(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w = await make_world(conn)
        other = await make_world(conn)
    async with engine.connect() as conn:
        assert await query.device_by_uid(conn, w.tenant_id, w.device_uid) == w.device_id
        assert await query.device_by_uid(conn, other.tenant_id, w.device_uid) is None
        assert await query.device_by_uid(conn, w.tenant_id, "no-such-device") is None


async def test_other_tenant_sees_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        a = await make_world(conn)
        b = await make_world(conn)
        m = next(iter(a.metric_ids))
        await insert_readings(conn, a, [(m, T0 + i * MINUTE, float(i)) for i in range(90)])
        await conn.execute(
            insert(schema.latest).values(
                tenant_id=a.tenant_id,
                device_id=a.device_id,
                metric_id=a.metric_ids[m],
                ts=T0,
                value=1.0,
                received_at=T0,
                flags=0,
            )
        )
        await conn.execute(
            insert(schema.device_quality).values(
                tenant_id=a.tenant_id, device_id=a.device_id, counter="accepted", count=90
            )
        )
        await conn.execute(
            insert(schema.dead_letters).values(
                tenant_id=a.tenant_id,
                device_uid=a.device_uid,
                source="http",
                reason="bad_shape",
                detail="x",
                payload=b"{}",
                payload_size=2,
                received_at=T0,
            )
        )
    async with engine.connect() as conn:
        for tenant, visible in ((a.tenant_id, True), (b.tenant_id, False)):
            page = await query.history(
                conn, tenant, a.device_id, metrics=None, start=T0, end=T0 + DAY
            )
            assert bool(page.rows) is visible
            for start, end, bucket in [
                (T0, T0 + DAY, HOUR),
                (T0, T0 + DAY, MINUTE),
                (T0 - 1, T0 + DAY, HOUR),
            ]:
                buckets = await query.aggregate(
                    conn,
                    tenant,
                    a.device_id,
                    metrics=[m],
                    start=start,
                    end=end,
                    bucket_us=bucket,
                    funcs=ALL_FUNCS,
                )
                assert bool(buckets) is visible
            for bounds in ([T0, T0 + DAY], [T0 - 1, T0 + 30 * MINUTE + 7, T0 + DAY]):
                spans = await query.aggregate_bounds(
                    conn, tenant, a.device_id, metrics=[m], bounds=bounds, funcs=ALL_FUNCS
                )
                assert bool(spans) is visible
            assert bool(await query.latest(conn, tenant, device_ids=[a.device_id])) is visible
            assert bool(await query.latest(conn, tenant)) is visible
            assert (await query.quality(conn, tenant, a.device_id) is not None) is visible
            assert bool((await query.dead_letters(conn, tenant)).items) is visible
