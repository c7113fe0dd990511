"""The alert engine end to end on SQLite and PostgreSQL: readings committed by the real pipeline
reach the feed in their own transaction, the engine opens and resolves alerts from them (with
their outbox rows and live frames), the clock ends `for` durations and silences, state survives
a new engine, device status changes, and only one worker is active at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.alerts.engine import Engine
from telemetra.alerts.worker import Worker, lock_for
from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.schema import alert_feed, devices

S = 1_000_000
SETTINGS = Settings(database_url="sqlite://unused")


def threshold(name: str, devices: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "kind": "threshold", "metric": "temperature",
        "condition": {"op": ">", "value": -15}, "clear": {"op": "<=", "value": -17},
        "scope": {"devices": devices}, "severity": "critical",
        "channels": [{"kind": "mqtt", "topic": "alerts/cold-room"}],
        **extra,
    }  # fmt: skip


class Fleet:
    """A tenant with devices, a pipeline with the alert feed, an engine."""

    def __init__(self, engine: AsyncEngine, tenant_id: int, uids: list[str]) -> None:
        self.db = engine
        self.tenant_id = tenant_id
        self.uids = uids
        self.pipeline = Pipeline(engine, SETTINGS)
        self.engine = Engine(engine, settle_us=0)

    async def rule(self, definition: dict[str, Any]) -> store.StoredRule:
        async with self.db.begin() as conn:
            made = await store.create_rule(conn, self.tenant_id, definition)
        assert self.pipeline.alert_feed is not None
        async with self.db.connect() as conn:  # ingest learns of it at once (not in 2 s)
            await self.pipeline.alert_feed.refresh(conn, force=True)
        return made

    async def send(self, uid: str, ts_us: int, **values: Any) -> None:
        body = orjson.dumps({"ts": ts_us // 1000, **values})
        outcomes = await self.pipeline.process(
            [Message(f"devices/{uid}/telemetry", body, time.time_ns() // 1000, handle=(0, 0))]
        )
        assert outcomes[0].accepted == len(values), outcomes[0].rejected

    async def evaluate(self) -> list[dict[str, Any]]:
        """Evaluate the whole feed; this tenant's alert frames."""
        frames: list[dict[str, Any]] = []
        while True:
            outcome = await self.engine.evaluate_feed()
            frames += outcome.frames.get(self.tenant_id, [])
            if not outcome.rows:
                return frames

    async def alerts(self) -> list[store.Alert]:
        async with self.db.connect() as conn:
            page = await store.list_alerts(conn, store.AlertFilter(tenant_id=self.tenant_id))
        return sorted(page.items, key=lambda a: a.id)


@pytest.fixture
async def fleet(engine: AsyncEngine) -> Fleet:
    tag = uuid.uuid4().hex[:8]
    uids = [f"fz-{tag}-{i}" for i in range(2)]
    async with engine.begin() as conn:
        tenant_id = await create_tenant(conn, f"eng-{tag}")
        for uid in uids:
            await create_device(conn, tenant_id, uid, type="freezer")
    return Fleet(engine, tenant_id, uids)


def now() -> int:
    # Two minutes ago (neither late nor future), in whole milliseconds as devices send it.
    return (time.time_ns() // 1_000_000 - 120_000) * 1000


async def test_committed_readings_fire_and_resolve_with_outbox_rows_and_frames(
    fleet: Fleet,
) -> None:
    uid, other = fleet.uids
    rule = await fleet.rule(threshold("too warm", [uid]))
    t = now()
    await fleet.send(uid, t, temperature=-20.0)
    await fleet.send(other, t, temperature=5.0)  # out of the rule's scope
    await fleet.send(uid, t + 10 * S, temperature=-12.5)
    frames = await fleet.evaluate()
    [alert] = await fleet.alerts()
    assert (alert.device, alert.metric, alert.state, alert.value) == (
        uid,
        "temperature",
        "firing",
        -12.5,
    )
    assert alert.started_at == t + 10 * S  # event time, not arrival time
    assert [f["event"] for f in frames] == ["fired"]
    assert frames[0]["type"] == "alert" and frames[0]["alert"]["id"] == alert.id
    await fleet.send(uid, t + 20 * S, temperature=-16.0)  # the hysteresis band: still firing
    assert await fleet.evaluate() == []
    await fleet.send(uid, t + 30 * S, temperature=-18.0)
    frames = await fleet.evaluate()
    [alert] = await fleet.alerts()
    assert (alert.state, alert.resolved_by, alert.resolved_at) == ("resolved", "auto", t + 30 * S)
    assert [f["event"] for f in frames] == ["resolved"]
    async with fleet.db.connect() as conn:
        sent = await store.notifications_of(conn, [alert.id])
    assert [(n.event, n.channel) for n in sent[alert.id]] == [
        ("fired", "mqtt"),
        ("resolved", "mqtt"),
    ]
    assert rule.id == alert.rule_id


async def test_feed_holds_only_what_enabled_rules_watch(fleet: Fleet) -> None:
    uid = fleet.uids[0]

    async def rows() -> int:
        async with fleet.db.connect() as conn:
            query = select(func.count()).where(alert_feed.c.tenant_id == fleet.tenant_id)
            return int(await conn.scalar(query) or 0)

    t = now()
    await fleet.send(uid, t, temperature=1.0)
    assert await rows() == 0  # no rule: ingest writes nothing
    await fleet.rule(threshold("watch", [uid], enabled=False))
    await fleet.send(uid, t + S, temperature=1.0)
    assert await rows() == 0  # a disabled rule watches nothing
    await fleet.rule(threshold("watch 2", [uid]))
    await fleet.send(uid, t + 2 * S, humidity=40.0)
    assert await rows() == 0  # a metric no rule names
    await fleet.send(uid, t + 3 * S, temperature=1.0, humidity=41.0)
    async with fleet.db.connect() as conn:
        [body] = (
            await conn.execute(
                select(alert_feed.c.body).where(alert_feed.c.tenant_id == fleet.tenant_id)
            )
        ).scalars()
    assert body["p"] == [[uid, "temperature", t + 3 * S, 1.0]] and body["q"] == []
    await fleet.evaluate()
    assert await rows() == 0  # evaluated rows are deleted


async def test_for_and_silence_end_by_the_clock_and_a_new_engine_carries_on(
    fleet: Fleet,
) -> None:
    uid, quiet = fleet.uids
    await fleet.rule(threshold("warm for 2m", [uid], **{"for": "2m"}))
    await fleet.rule({"name": "silent", "kind": "no_data", "condition": {"for": "5m"},
                      "scope": {"type": "freezer"}})  # fmt: skip
    t = now()
    await fleet.send(uid, t, temperature=-10.0)
    await fleet.send(quiet, t, temperature=-20.0)
    assert await fleet.evaluate() == []
    outcome = await fleet.engine.tick(t + 60 * S)
    assert outcome.frames.get(fleet.tenant_id) is None  # 1 of 2 minutes
    outcome = await fleet.engine.tick(t + 121 * S)
    [fired] = outcome.frames[fleet.tenant_id]
    assert fired["alert"]["rule"] == "warm for 2m"
    assert fired["alert"]["started_at"].startswith(time.strftime("%Y"))
    # A new engine (a restarted worker) re-fires nothing and forgets nothing.
    fresh = Engine(fleet.db, settle_us=0)
    assert (await fresh.tick(t + 122 * S)).frames.get(fleet.tenant_id) is None
    outcome = await fresh.tick(t + 301 * S)
    silent = outcome.frames[fleet.tenant_id]
    assert sorted(f["alert"]["device"] for f in silent) == sorted([uid, quiet])
    assert {f["alert"]["rule"] for f in silent} == {"silent"}
    fleet.engine = fresh
    await fleet.send(quiet, t + 302 * S, temperature=-20.0)
    frames = await fleet.evaluate()
    assert [(f["event"], f["alert"]["device"]) for f in frames] == [("resolved", quiet)]
    states = {(a.rule, a.device): a.state for a in await fleet.alerts()}
    assert states == {("warm for 2m", uid): "firing", ("silent", uid): "firing",
                      ("silent", quiet): "resolved"}  # fmt: skip


async def test_quality_rule_sees_rejections_from_the_feed(fleet: Fleet) -> None:
    uid = fleet.uids[0]
    await fleet.rule({"name": "garbage", "kind": "quality", "scope": {"devices": [uid]},
                      "condition": {"rejection_rate": 0.5, "window": "10m",
                                    "min_messages": 3}})  # fmt: skip
    t = now()
    await fleet.send(uid, t, temperature=-20.0)
    assert await fleet.evaluate() == []
    for i in (1, 2):  # 2 of 3 messages rejected (as not numeric)
        bad = orjson.dumps({"ts": (t + i * S) // 1000, "temperature": "warm"})
        topic = f"devices/{uid}/telemetry"
        [outcome] = await fleet.pipeline.process(
            [Message(topic, bad, time.time_ns() // 1000 + i, handle=(0, 0))]
        )
        assert outcome.rejected
    frames = await fleet.evaluate()
    assert [(f["event"], f["alert"]["rule"]) for f in frames] == [("fired", "garbage")]


async def test_device_status_changes_are_stored_and_framed(fleet: Fleet) -> None:
    uid, never = fleet.uids
    sent: list[tuple[int, list[dict[str, Any]]]] = []
    settings = Settings(database_url="sqlite://unused", expected_intervals={"freezer": 10})
    worker = Worker(fleet.db, settings, lambda t, frames: sent.append((t, frames)))
    await fleet.send(uid, now(), temperature=-20.0)
    start = time.time_ns() // 1000
    worker.clock = lambda: start
    await worker.status_once()
    mine = [f for t, frames in sent if t == fleet.tenant_id for f in frames]
    assert [(f["device"], f["online"]) for f in mine] == [(uid, True)]  # `never`: not judged
    sent.clear()
    worker.clock = lambda: start + 31 * S  # 3 intervals of 10 s without a message
    await worker.status_once()
    mine = [f for t, frames in sent if t == fleet.tenant_id for f in frames]
    assert [(f["type"], f["device"], f["online"]) for f in mine] == [("status", uid, False)]
    async with fleet.db.connect() as conn:
        online = dict(
            (await conn.execute(select(devices.c.uid, devices.c.online).where(
                devices.c.uid.in_([uid, never])))).all()
        )  # fmt: skip
    assert online == {uid: False, never: None}


async def test_one_worker_is_active_and_a_second_takes_over(engine: AsyncEngine) -> None:
    first, second = lock_for(engine), lock_for(engine)
    assert await first.try_take()
    assert not await second.try_take()
    await first.release()
    assert await second.try_take()
    await second.release()


async def test_worker_runs_until_stopped_and_waits_while_another_holds_the_lock(
    fleet: Fleet,
) -> None:
    holder = lock_for(fleet.db)
    assert await holder.try_take()
    stop = asyncio.Event()
    worker = Worker(fleet.db, SETTINGS)
    running = asyncio.create_task(worker.run(stop))
    uid = fleet.uids[0]
    await fleet.rule(threshold("hot", [uid]))
    await fleet.send(uid, now(), temperature=0.0)
    await asyncio.sleep(0.5)
    assert await fleet.alerts() == []  # waiting: the lock is held
    await holder.release()
    for _ in range(100):
        if await fleet.alerts():
            break
        await asyncio.sleep(0.1)
    [alert] = await fleet.alerts()
    assert alert.state == "firing"
    stop.set()
    await asyncio.wait_for(running, 10)


async def test_alert_feed_written_in_the_commit_transaction(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose feed row cannot be written is not stored either (one transaction)."""
    uid = fleet.uids[0]
    await fleet.rule(threshold("tx", [uid]))

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("feed down")

    assert fleet.pipeline.alert_feed is not None
    monkeypatch.setattr(fleet.pipeline.alert_feed, "write", broken)
    with pytest.raises(RuntimeError, match="feed down"):
        await fleet.pipeline.process(
            [Message(f"devices/{uid}/telemetry", b'{"temperature": 1}', time.time_ns() // 1000,
                     handle=(0, 0))]
        )  # fmt: skip
    async with fleet.db.connect() as conn:
        seen = await conn.scalar(select(devices.c.last_seen).where(devices.c.uid == uid))
    assert seen is None


async def test_disabling_a_rule_resolves_its_open_alerts_and_it_starts_afresh(
    fleet: Fleet,
) -> None:
    uid = fleet.uids[0]
    rule = await fleet.rule(threshold("warm", [uid]))
    await fleet.send(uid, now(), temperature=0.0)
    await fleet.evaluate()
    [alert] = await fleet.alerts()
    assert alert.state == "firing"
    async with fleet.db.begin() as conn:
        await store.update_rule(conn, rule, {**rule.definition, "enabled": False}, by="maria")
        assert await store.series_state_of(conn, (rule.id, uid, "temperature")) is None
    [alert] = await fleet.alerts()
    assert (alert.state, alert.resolved_by, alert.note) == ("resolved", "maria", "rule disabled")


async def test_deleting_a_device_resolves_its_open_alerts_and_keeps_their_history(
    fleet: Fleet,
) -> None:
    uid = fleet.uids[0]
    rule = await fleet.rule(threshold("warm", [uid]))
    await fleet.send(uid, now(), temperature=0.0)
    await fleet.evaluate()
    async with fleet.db.begin() as conn:
        [resolved] = await store.forget_device(conn, fleet.tenant_id, uid, "maria")
        assert await store.series_state_of(conn, (rule.id, uid, "temperature")) is None
    [alert] = await fleet.alerts()
    assert alert.id == resolved.id
    assert (alert.state, alert.resolved_by, alert.note) == ("resolved", "maria", "device deleted")
