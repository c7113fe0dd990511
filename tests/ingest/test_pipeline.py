"""The pipeline in-process on SQLite and PostgreSQL: duplicates, conflicts, untimed redelivery,
unknown devices, time zones, latest by event time, poison isolation, fan-out."""

from __future__ import annotations

import gc
import time
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import structlog.testing
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.ingest import pipeline as pipeline_module
from telemetra.ingest.pipeline import Committed, Message, Outcome, Pipeline
from telemetra.model import Flag
from telemetra.store import query
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.schema import dead_letters, devices, metrics, readings
from telemetra.store.write import write_readings

NOW_US = time.time_ns() // 1000
TS_MS = NOW_US // 1000 - 60_000  # a minute ago: not late, not in the future


async def setup(
    engine: AsyncEngine, auto_register: bool = False, **device: Any
) -> tuple[Pipeline, str, int]:
    uid = f"dev-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        tenant_id = await create_tenant(conn, f"tenant-{uuid.uuid4().hex[:8]}")
        await create_device(conn, tenant_id, uid, **device)
    settings = Settings(auto_register=auto_register, database_url="sqlite://unused")
    return Pipeline(engine, settings), uid, tenant_id


def msg(uid: str, body: Any, *, redelivered: bool = False, received: int | None = None) -> Message:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return Message(
        f"devices/{uid}/telemetry",
        payload,
        received or time.time_ns() // 1000,
        redelivered=redelivered,
        handle=(0, 0),
    )


async def stored(engine: AsyncEngine, uid: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(metrics.c.name, readings.c.ts, readings.c.value, readings.c.text,
                           readings.c.flags)
                    .join(devices, devices.c.id == readings.c.device_id)
                    .join(metrics, metrics.c.id == readings.c.metric_id)
                    .where(devices.c.uid == uid)
                    .order_by(readings.c.ts, metrics.c.name)
                )
            ).all()
        )  # fmt: skip


async def counters(engine: AsyncEngine, uid: str, tenant_id: int) -> dict[str, int]:
    async with engine.connect() as conn:
        device_id = await query.device_by_uid(conn, tenant_id, uid)
        assert device_id is not None
        summary = await query.quality(conn, tenant_id, device_id)
    assert summary is not None
    return dict(summary.counters)


async def test_duplicates_counted_conflicts_recorded_never_overwritten(engine: AsyncEngine) -> None:
    pipe, uid, tenant_id = await setup(engine)
    first = await pipe.process_until_stored([msg(uid, {"ts": TS_MS, "temperature": 20.0})])
    assert first[0].accepted == 1
    again = await pipe.process_until_stored(
        [
            msg(uid, {"ts": TS_MS, "temperature": 20.0}),  # duplicate
            msg(uid, {"ts": TS_MS, "temperature": 25.0}),  # conflict with the stored value
            msg(uid, {"ts": TS_MS + 1000, "temperature": 1.0}),
            msg(uid, {"ts": TS_MS + 1000, "temperature": 2.0}),  # conflict inside the batch
            msg(uid, {"ts": TS_MS + 1000, "temperature": 1.0}),  # duplicate inside the batch
        ]
    )
    assert [o.accepted for o in again] == [1, 0, 1, 0, 1]
    assert [r.reason for r in again[1].rejected] == ["conflict"]
    assert [r.reason for r in again[3].rejected] == ["conflict"]
    assert [(r.value) for r in await stored(engine, uid)] == [20.0, 1.0]
    counts = await counters(engine, uid, tenant_id)
    assert counts["accepted"] == 2 and counts["duplicate"] == 2 and counts["conflict"] == 2
    assert counts["messages"] == 6
    async with engine.connect() as conn:
        reasons = (
            await conn.execute(
                select(dead_letters.c.reason).where(dead_letters.c.device_uid == uid)
            )
        ).scalars()
        assert sorted(reasons) == ["conflict", "conflict"]


async def test_untimed_messages_keep_their_time_on_redelivery(engine: AsyncEngine) -> None:
    pipe, uid, _ = await setup(engine)
    with_id = {"event_id": "door-1", "door": "open"}
    without_id = {"level": 3}
    await pipe.process_until_stored([msg(uid, with_id), msg(uid, without_id)])
    before = await stored(engine, uid)
    assert len(before) == 2 and all(r.flags & Flag.SERVER_TIME for r in before)

    # A new process (empty caches) sees the redelivery: the event id maps to the same time.
    fresh = Pipeline(engine, pipe.settings)
    await fresh.process_until_stored([msg(uid, with_id), msg(uid, without_id, redelivered=True)])
    assert await stored(engine, uid) == before
    # Without the redelivery flag, an identical untimed message is a new reading.
    await fresh.process_until_stored([msg(uid, without_id)])
    assert len(await stored(engine, uid)) == 3


async def test_unknown_devices_are_rejected_or_registered(engine: AsyncEngine) -> None:
    pipe, _, _ = await setup(engine)
    stranger = f"stranger-{uuid.uuid4().hex[:6]}"
    [outcome] = await pipe.process_until_stored([msg(stranger, {"temperature": 20})])
    assert [r.reason for r in outcome.rejected] == ["unknown_device"]
    assert "telemetra device create" in outcome.rejected[0].detail
    async with engine.connect() as conn:
        letter = (
            await conn.execute(select(dead_letters).where(dead_letters.c.device_uid == stranger))
        ).one()
    assert letter.reason == "unknown_device" and letter.tenant_id is None

    registering, _, _ = await setup(engine, auto_register=True)
    [outcome] = await registering.process_until_stored([msg(stranger, {"temperature": 20})])
    assert outcome.accepted == 1 and not outcome.rejected
    [bad] = await registering.process_until_stored([msg("a+b", {"temperature": 20})])
    assert (
        bad.rejected[0].reason == "unknown_device" and "invalid device id" in bad.rejected[0].detail
    )


async def test_naive_time_read_in_device_zone(engine: AsyncEngine) -> None:
    pipe, uid, _ = await setup(engine, timezone="Europe/Berlin")
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW_US / 1e6 - 86400))
    await pipe.process_until_stored([msg(uid, {"ts": f"{day}T12:00:00", "t": 1})])
    [row] = await stored(engine, uid)
    noon_berlin = datetime.fromisoformat(f"{day}T12:00:00").replace(
        tzinfo=ZoneInfo("Europe/Berlin")
    )
    assert row.ts == int(noon_berlin.timestamp()) * 1_000_000
    assert row.flags & Flag.NAIVE_TIME


async def test_bad_values_reject_only_themselves(engine: AsyncEngine) -> None:
    """A NUL byte would fail a whole PostgreSQL batch: cleaning must reject that value alone."""
    pipe, uid, tenant_id = await setup(engine)
    outcomes = await pipe.process_until_stored(
        [
            msg(uid, {"ts": TS_MS, "note": "a\u0000b", "temperature": 21.0}),
            msg(uid, b'{"ts": 1, "x": '),
            msg(uid, {"ts": TS_MS + 1000, "temperature": 6000, "humidity": 50}),
            msg(uid, {"ts": TS_MS + 2000, "humidity": 51}),
        ]
    )
    assert [o.accepted for o in outcomes] == [1, 0, 1, 1]
    assert [r.reason for o in outcomes for r in o.rejected] == [
        "bad_text",
        "invalid_json",
        "out_of_range",
    ]
    counts = await counters(engine, uid, tenant_id)
    assert counts["rejected:bad_text"] == 1 and counts["rejected:out_of_range"] == 1


async def test_latest_is_newest_by_event_time(engine: AsyncEngine) -> None:
    pipe, uid, tenant_id = await setup(engine)
    await pipe.process_until_stored([msg(uid, {"ts": TS_MS, "temperature": 20.0})])
    [late] = await pipe.process_until_stored([msg(uid, {"ts": TS_MS - 5000, "temperature": 10.0})])
    assert late.accepted == 1
    async with engine.connect() as conn:
        device_id = await query.device_by_uid(conn, tenant_id, uid)
        [value] = await query.latest(conn, tenant_id, device_ids=[device_id])
    assert value.value == 20.0
    rows = await stored(engine, uid)
    assert rows[0].flags & Flag.OUT_OF_ORDER


async def test_one_poisonous_message_is_isolated(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, uid, _ = await setup(engine)
    real = pipeline_module.write_readings

    async def refuse_666(conn: Any, rows: Any) -> Any:
        if any(row[4] == 666.0 for row in rows):
            raise sa_exc.DataError("INSERT", {}, Exception("value 666 refused"))
        return await real(conn, rows)

    monkeypatch.setattr(pipeline_module, "write_readings", refuse_666)
    outcomes = await pipe.process_until_stored(
        [msg(uid, {"ts": TS_MS + i * 1000, "v": 666.0 if i == 2 else float(i)}) for i in range(5)]
    )
    assert [o.accepted for o in outcomes] == [1, 1, 0, 1, 1]
    assert "refused by the database" in outcomes[2].rejected[0].detail
    assert len(await stored(engine, uid)) == 4


async def test_fan_out_sees_only_new_readings(engine: AsyncEngine) -> None:
    pipe, uid, _ = await setup(engine)
    seen: list[Committed] = []

    async def listener(_outcomes: list[Outcome], committed: list[Committed]) -> None:
        seen.extend(committed)

    pipe.listeners.append(listener)
    body = {"ts": TS_MS, "temperature": 20.0, "humidity": 40}
    await pipe.process_until_stored([msg(uid, body)])
    await pipe.process_until_stored([msg(uid, body)])
    assert sorted(c.reading.metric for c in seen) == ["humidity", "temperature"]
    assert {c.device for c in seen} == {uid}


async def test_clock_offset_is_estimated_corrected_and_kept_across_restarts(
    engine: AsyncEngine,
) -> None:
    pipe, uid, tenant_id = await setup(engine)
    hour_us, step_us = 3600 * 1_000_000, 15 * 1_000_000
    base = NOW_US - 2 * hour_us

    def ahead(i: int) -> Message:  # a device whose clock runs one hour fast
        received = base + i * step_us
        return msg(uid, {"ts": (received + hour_us) // 1000, "t": 20.0 + i % 3}, received=received)

    outcomes = [o for i in range(40) for o in await pipe.process_until_stored([ahead(i)])]
    assert outcomes[0].rejected[0].reason == "future_timestamp"
    assert outcomes[-1].accepted == 1 and not outcomes[-1].rejected
    restarted = Pipeline(engine, pipe.settings)
    [after_restart] = await restarted.process_until_stored([ahead(40)])
    assert after_restart.accepted == 1
    rows = await stored(engine, uid)
    assert rows[-1].flags & Flag.CLOCK_CORRECTED
    assert abs(rows[-1].ts - (base + 40 * step_us)) < 2_000_000
    counts = await counters(engine, uid, tenant_id)
    assert counts["clock_corrected"] == len(rows) and "gap" not in counts
    async with engine.connect() as conn:
        device_id = await query.device_by_uid(conn, tenant_id, uid)
        assert device_id is not None
        summary = await query.quality(conn, tenant_id, device_id)
    assert summary is not None and abs((summary.clock_offset_us or 0) - hour_us) < 2_000_000


async def test_stored_rules_apply_per_tenant_and_device_type(engine: AsyncEngine) -> None:
    from telemetra.store.catalog import set_rule

    pipe, uid, tenant_id = await setup(engine, type="tank")
    other, other_uid, _ = await setup(engine, type="tank")
    async with engine.begin() as conn:
        await set_rule(conn, "level", tenant_id=tenant_id, device_type="tank", max_value=5.0)
    [mine] = await pipe.process_until_stored([msg(uid, {"ts": TS_MS, "level": 7.0})])
    [theirs] = await other.process_until_stored([msg(other_uid, {"ts": TS_MS, "level": 7.0})])
    assert mine.rejected[0].reason == "out_of_range" and "[-, 5]" in mine.rejected[0].detail
    assert theirs.accepted == 1


async def test_a_topic_without_route_is_dead_lettered(engine: AsyncEngine) -> None:
    pipe, _, _ = await setup(engine)
    topic = f"nowhere/{uuid.uuid4().hex[:6]}"
    [outcome] = await pipe.process_until_stored(
        [Message(topic, b'{"a": 1}', NOW_US, handle=(0, 0))]
    )
    assert outcome.rejected[0].reason == "unknown_route"
    async with engine.connect() as conn:
        reason = await conn.scalar(
            select(dead_letters.c.reason).where(dead_letters.c.topic == topic)
        )
    assert reason == "unknown_route"


async def test_a_disabled_device_is_refused_once_its_cache_entry_expires(
    engine: AsyncEngine,
) -> None:
    from telemetra.store.catalog import DeviceRegistry

    pipe, uid, _ = await setup(engine)
    pipe.devices = DeviceRegistry(known_ttl_s=0.0, unknown_ttl_s=0.0)
    [first] = await pipe.process_until_stored([msg(uid, {"ts": TS_MS, "a": 1})])
    async with engine.begin() as conn:
        await conn.execute(devices.update().where(devices.c.uid == uid).values(status="disabled"))
    [second] = await pipe.process_until_stored([msg(uid, {"ts": TS_MS + 1000, "a": 2})])
    assert first.accepted == 1
    assert second.rejected[0].reason == "unknown_device"


async def test_unknown_devices_are_warned_about_with_the_fix_at_most_once_a_minute(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, uid, _ = await setup(engine)
    now = [1000.0]
    pipe.unknown_devices.clock = lambda: now[0]
    strangers = [f"stranger-{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's may be cached from an earlier test.
        monkeypatch.setattr(pipeline_module, "log", structlog.get_logger("telemetra.pipeline"))
        await pipe.process_until_stored([msg(s, {"temperature": 20}) for s in strangers])
        now[0] += 30
        await pipe.process_until_stored([msg(strangers[0], {"temperature": 21})])
        await pipe.process_until_stored([msg(uid, {"temperature": 21})])  # registered: no count
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1
        first = warnings[0]
        assert "unregistered devices" in first["event"] and "unknown_device" in first["event"]
        assert first["messages"] == 8 and first["devices"] == 8
        assert first["examples"] == strangers[:5]
        assert "telemetra device create <id>" in first["fix"]
        assert "TELEMETRA_AUTO_REGISTER=true" in first["fix"]
        now[0] += 31  # a minute after the first warning
        await pipe.process_until_stored([msg(strangers[1], {"temperature": 22})])
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 2
        assert warnings[1]["messages"] == 2  # since the last warning
        assert warnings[1]["examples"] == [strangers[0], strangers[1]]


async def test_text_for_a_numeric_metric_is_rejected_and_dead_lettered(engine: AsyncEngine) -> None:
    pipe, uid, _ = await setup(engine)
    [outcome] = await pipe.process_until_stored(
        [msg(uid, {"ts": TS_MS, "humidity": "wet", "temperature": 20, "state": "ok"})]
    )
    assert outcome.accepted == 2
    assert [(r.reason, r.metric) for r in outcome.rejected] == [("not_numeric", "humidity")]
    assert sorted(row.name for row in await stored(engine, uid)) == ["state", "temperature"]
    async with engine.connect() as conn:
        letter = (
            await conn.execute(select(dead_letters).where(dead_letters.c.device_uid == uid))
        ).one()
        device_id = await conn.scalar(select(devices.c.id).where(devices.c.uid == uid))
        assert outcome.tenant_id is not None
        summary = await query.quality(conn, outcome.tenant_id, int(device_id))
    assert letter.reason == "not_numeric" and "'wet'" in letter.detail
    assert summary is not None and summary.rejected_by_reason == {"not_numeric": 1}


async def test_the_postgresql_write_transaction_runs_without_jit(engine: AsyncEngine) -> None:
    """JIT compiled the write statement on every commit of a big batch (~70 ms and more)."""
    pipe, uid, _ = await setup(engine)
    [outcome] = await pipe.process_until_stored([msg(uid, {"ts": TS_MS, "temperature": 20})])
    assert outcome.accepted == 1
    if engine.dialect.name != "postgresql":
        return
    prepared = await pipe.prepare([msg(uid, {"ts": TS_MS + 1000, "temperature": 21})])
    row = next(iter(prepared.entries.values()))[0]
    async with engine.begin() as conn:
        await write_readings(conn, [row])
        assert await conn.scalar(text("SHOW jit")) == "off"
    async with engine.connect() as conn:  # only that transaction
        assert await conn.scalar(text("SHOW jit")) == "on"


def test_tune_gc_freezes_start_up_objects_and_raises_thresholds() -> None:
    before = gc.get_threshold()
    try:
        pipeline_module.tune_gc()
        assert gc.get_threshold() == pipeline_module.GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
