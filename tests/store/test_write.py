"""The bulk writer: idempotent inserts, exact rollups, latest by event time — on both databases."""

from __future__ import annotations

import time
import uuid

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.store.catalog import MetricIds, dialect_insert, now_us
from telemetra.store.schema import (
    devices,
    latest,
    metrics,
    readings,
    rollup_1h,
    rollup_1m,
    tenants,
)
from telemetra.store.write import Row, write_readings

MIN = 60_000_000


async def make_device(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.begin() as conn:
        tenant_id = (
            await conn.execute(
                tenants.insert().values(name=f"t-{uuid.uuid4().hex[:8]}", created_at=now_us())
            )
        ).inserted_primary_key[0]
        device_id = (
            await conn.execute(
                devices.insert().values(
                    tenant_id=tenant_id,
                    uid=f"d-{uuid.uuid4().hex[:8]}",
                    metadata={},
                    status="active",
                    created_at=now_us(),
                )
            )
        ).inserted_primary_key[0]
    return tenant_id, device_id


async def test_write_is_idempotent_and_rolls_up_only_new_rows(engine: AsyncEngine) -> None:
    tenant_id, device_id = await make_device(engine)
    metric_id = (await MetricIds().resolve(engine, ["temperature"]))["temperature"]
    base = 1_800_000_000 * 1_000_000  # minute- and hour-aligned
    rows = [
        Row(tenant_id, device_id, metric_id, base + i * 20_000_000, float(i), None, base, 0, None)
        for i in range(6)  # two minutes, three readings each
    ]
    async with engine.begin() as conn:
        first = await write_readings(conn, rows)
    assert first.inserted == 6 and first.existing == []

    # Redelivery plus one conflicting value and one new row.
    again = [*rows, rows[0]._replace(value=99.0, ts=base + 6 * 20_000_000)]
    conflict = rows[1]._replace(value=-1.0)
    async with engine.begin() as conn:
        second = await write_readings(conn, [*rows[2:], conflict, again[-1]])
    assert second.inserted == 1
    assert sorted(e.same for e in second.existing) == [False, True, True, True, True]

    async with engine.connect() as conn:
        n = len(
            (await conn.execute(select(readings).where(readings.c.device_id == device_id))).all()
        )
        minute = (
            await conn.execute(
                select(rollup_1m).where(rollup_1m.c.device_id == device_id).order_by("bucket")
            )
        ).all()
        hour = (
            await conn.execute(select(rollup_1h).where(rollup_1h.c.device_id == device_id))
        ).one()
        newest = (await conn.execute(select(latest).where(latest.c.device_id == device_id))).one()
    assert n == 7
    assert [(m.count, m.sum, m.min, m.max, m.first_value, m.last_value) for m in minute] == [
        (3, 3.0, 0.0, 2.0, 0.0, 2.0),
        (3, 12.0, 3.0, 5.0, 3.0, 5.0),
        (1, 99.0, 99.0, 99.0, 99.0, 99.0),
    ]
    assert (hour.count, hour.sum, hour.first_value, hour.last_value) == (7, 114.0, 0.0, 99.0)
    assert (newest.ts, newest.value) == (base + 120_000_000, 99.0)

    # A late reading lands in its old bucket and does not move "latest" backwards.
    late = rows[0]._replace(ts=base - MIN, value=-5.0)
    async with engine.begin() as conn:
        await write_readings(conn, [late])
    async with engine.connect() as conn:
        newest = (await conn.execute(select(latest).where(latest.c.device_id == device_id))).one()
        hour_before = (
            await conn.execute(
                select(rollup_1h).where(
                    rollup_1h.c.device_id == device_id, rollup_1h.c.bucket < base
                )
            )
        ).one()
    assert newest.value == 99.0
    assert (hour_before.count, hour_before.min) == (1, -5.0)
    assert dialect_insert  # imported for the sibling tests


async def test_old_assigned_event_times_are_forgotten(engine: AsyncEngine) -> None:
    from telemetra.store.write import assigned_times, forget_event_times, remember_event_times

    _, device_id = await make_device(engine)
    async with engine.begin() as conn:
        await remember_event_times(conn, [(device_id, "old", 1_000), (device_id, "new", 9_000)])
        assert await forget_event_times(conn, 5_000) >= 1
        left = await assigned_times(conn, [(device_id, "old"), (device_id, "new")])
    assert left == {(device_id, "new"): 9_000}


async def test_values_too_large_to_sum_lose_only_themselves(engine: AsyncEngine) -> None:
    """The issue's case: two finite -1e308 for one metric in one minute overflowed the rollup
    sum, and PostgreSQL refused the message with its valid values ("bad_value: value out of
    range: overflow"). Now only those two values are rejected, and the rollups stay finite."""
    _, device_id = await make_device(engine)
    async with engine.connect() as conn:
        uid = (await conn.execute(select(devices.c.uid).where(devices.c.id == device_id))).scalar()
    assert uid is not None
    pipe = Pipeline(engine, Settings(database_url="sqlite://unused"))
    minute_ms = (time.time_ns() // 1000 // MIN - 2) * MIN // 1000
    body = [
        {"ts": minute_ms + 1000, "x": -1e308, "temperature": 21.5},
        {"ts": minute_ms + 2000, "x": -1e308, "humidity": 40},
        {"ts": minute_ms + 3000, "x": -1e250},
        {"ts": minute_ms + 4000, "x": -1e250},
    ]
    topic = f"devices/{uid}/telemetry"
    [outcome] = await pipe.process_until_stored(
        [Message(topic, orjson.dumps(body), time.time_ns() // 1000)]
    )
    assert outcome.accepted == 4
    assert [(r.reason, r.index, r.metric) for r in outcome.rejected] == [
        ("out_of_range", 0, "x"), ("out_of_range", 1, "x"),
    ]  # fmt: skip
    assert "beyond ±1e+250" in outcome.rejected[0].detail
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                select(metrics.c.name, readings.c.value)
                .join(metrics, metrics.c.id == readings.c.metric_id)
                .where(readings.c.device_id == device_id)
                .order_by(readings.c.ts, metrics.c.name)
            )
        ).all()
        sums = (
            await conn.execute(
                select(rollup_1m.c.sum, rollup_1h.c.sum)
                .join(metrics, metrics.c.id == rollup_1m.c.metric_id)
                .join(
                    rollup_1h,
                    (rollup_1h.c.device_id == rollup_1m.c.device_id)
                    & (rollup_1h.c.metric_id == rollup_1m.c.metric_id),
                )
                .where(rollup_1m.c.device_id == device_id, metrics.c.name == "x")
            )
        ).one()
    assert [tuple(r) for r in stored] == [
        ("temperature", 21.5), ("humidity", 40.0), ("x", -1e250), ("x", -1e250),
    ]  # fmt: skip
    assert sums == (-2e250, -2e250)
