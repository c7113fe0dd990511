"""Dead letters are idempotent on SQLite and PostgreSQL: a redelivered message, a file
imported twice or a rejection seen again is dead-lettered and counted once."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra import metrics as prometheus
from telemetra.config import Settings
from telemetra.ingest.importer import import_file, import_pipeline
from telemetra.ingest.mqtt import MqttIngest
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.store import query
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.schema import dead_letters
from telemetra.store.write import add_dead_letters, dead_letter_row

from broker_fixtures import Client
from conftest import Broker

TS_MS = time.time_ns() // 1_000_000 - 60_000


async def _device(engine: AsyncEngine) -> tuple[str, int]:
    uid = f"dl-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        tenant_id = await create_tenant(conn, f"tenant-{uuid.uuid4().hex[:8]}")
        await create_device(conn, tenant_id, uid)
    return uid, tenant_id


def _settings() -> Settings:
    return Settings(database_url="sqlite://unused")


def _message(uid: str, body: Any, *, redelivered: bool = False) -> Message:
    return Message(
        f"devices/{uid}/telemetry",
        orjson.dumps(body),
        time.time_ns() // 1000,
        redelivered=redelivered,
        handle=(0, 0),
    )


async def _letters(engine: AsyncEngine, **where: Any) -> list[Any]:
    async with engine.connect() as conn:
        query_ = select(dead_letters).order_by(dead_letters.c.id)
        for column, value in where.items():
            query_ = query_.where(dead_letters.c[column] == value)
        return list((await conn.execute(query_)).all())


async def _counters(engine: AsyncEngine, uid: str, tenant_id: int) -> dict[str, int]:
    async with engine.connect() as conn:
        device_id = await query.device_by_uid(conn, tenant_id, uid)
        assert device_id is not None
        summary = await query.quality(conn, tenant_id, device_id)
    assert summary is not None
    return dict(summary.counters)


def _rejections_metric(reason: str) -> float:
    return float(prometheus.REJECTIONS.labels(reason)._value.get())


async def test_a_redelivered_rejection_is_dead_lettered_and_counted_once(
    engine: AsyncEngine,
) -> None:
    uid, tenant_id = await _device(engine)
    body = [
        {"ts": TS_MS, "temperature": 21.5, "humidity": 900, "pressure": -5},
        {"ts": TS_MS + 1000, "temperature": 6000},
    ]
    first = await Pipeline(engine, _settings()).process_until_stored([_message(uid, body)])
    assert first[0].accepted == 1
    assert sorted((r.index, r.metric) for r in first[0].rejected) == [
        (0, "humidity"), (0, "pressure"), (1, "temperature"),
    ]  # fmt: skip
    before = _rejections_metric("out_of_range")

    # The broker delivers it again, to a new ingest process (empty caches), twice in a batch.
    again = await Pipeline(engine, _settings()).process_until_stored(
        [_message(uid, body, redelivered=True), _message(uid, body, redelivered=True)]
    )
    # The device is still told what was rejected ...
    assert all(len(o.rejected) == 3 for o in again)
    # ... but nothing is dead-lettered or counted as a new rejection again.
    letters = await _letters(engine, device_uid=uid)
    assert sorted((d.entry_index, d.metric, d.reason) for d in letters) == [
        (0, "humidity", "out_of_range"), (0, "pressure", "out_of_range"),
        (1, "temperature", "out_of_range"),
    ]  # fmt: skip
    assert all(d.fingerprint and len(d.fingerprint) == 32 for d in letters)
    counts = await _counters(engine, uid, tenant_id)
    assert counts["rejected:out_of_range"] == 3
    assert counts["duplicate_rejection"] == 6
    assert counts["accepted"] == 1 and counts["duplicate"] == 2
    assert _rejections_metric("out_of_range") == before


async def test_equal_rejections_of_one_message_are_all_kept(engine: AsyncEngine) -> None:
    uid, _ = await _device(engine)
    # The same bad entry twice in one array: two dead letters (entries 0 and 1) ...
    body = [{"ts": TS_MS, "temperature": 6000}, {"ts": TS_MS, "temperature": 6000}]
    await Pipeline(engine, _settings()).process_until_stored([_message(uid, body)])
    assert len(await _letters(engine, device_uid=uid)) == 2
    # ... and a different payload with the same rejection is a dead letter of its own.
    other = [{"ts": TS_MS + 1, "temperature": 6000}]
    await Pipeline(engine, _settings()).process_until_stored([_message(uid, other)])
    assert len(await _letters(engine, device_uid=uid)) == 3


async def test_a_file_imported_twice_is_dead_lettered_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    uid, tenant_id = await _device(engine)
    path = tmp_path / f"{uid}.jsonl"
    path.write_text(
        f'{{"device": "{uid}", "ts": {TS_MS}, "temperature": 20.5}}\n'
        f'{{"device": "{uid}", "ts": {TS_MS}, "humidity": 900}}\n'
        f'{{"device": "{uid}", "ts": {TS_MS}, "temperature": }}\n'
        '{"ts": 1, "temperature": 1}\n'  # names no device: dead-lettered by the importer
    )
    first = await import_file(import_pipeline(engine, _settings()), path)
    assert first.rejected == 3
    mine = [d for d in await _letters(engine, source="import") if path.name in (d.topic or "")]
    assert sorted(d.reason for d in mine) == ["invalid_json", "out_of_range", "unknown_device"]

    second = await import_file(import_pipeline(engine, _settings()), path)
    assert second.rejected == 3  # the summary still lists the bad lines ...
    again = [d for d in await _letters(engine, source="import") if path.name in (d.topic or "")]
    assert [d.id for d in again] == [d.id for d in mine]  # ... stored once
    counts = await _counters(engine, uid, tenant_id)
    assert counts["rejected:out_of_range"] == 1 and counts["rejected:invalid_json"] == 1
    assert counts["duplicate_rejection"] == 2


async def test_add_dead_letters_inserts_or_ignores(engine: AsyncEngine) -> None:
    uid, tenant_id = await _device(engine)
    row = dead_letter_row(
        tenant_id=tenant_id, device_uid=uid, source="http", topic=f"http/{uid}",
        reason="invalid_json", detail="invalid JSON", entry_index=None, metric=None,
        payload=b"x" * 100, received_at=1, cap=10,
    )  # fmt: skip
    later = {**row, "received_at": 2, "detail": "invalid JSON (again)"}
    async with engine.begin() as conn:
        assert await add_dead_letters(conn, [row, later]) == {row["fingerprint"]}
    async with engine.begin() as conn:
        assert await add_dead_letters(conn, [later]) == set()
        count = select(func.count()).select_from(dead_letters)
        stored = await conn.execute(count.where(dead_letters.c.device_uid == uid))
        assert stored.scalar() == 1
    [letter] = await _letters(engine, device_uid=uid)
    assert letter.payload == b"x" * 10 and letter.payload_size == 100 and letter.received_at == 1


async def test_a_rejected_message_sent_again_over_mqtt_is_dead_lettered_once(
    engine: AsyncEngine, db_url: str, mosquitto: Broker, clients: list[Any]
) -> None:
    """Over a real Mosquitto: the same rejected payload delivered twice (a device resending what
    was not acknowledged, or the broker redelivering) is acked as rejected both times, kept as
    one dead letter and counted once."""
    uid, tenant_id = await _device(engine)
    settings = Settings(
        database_url=db_url, mqtt_url=mosquitto.url, batch_max_wait_ms=20,
        mqtt_client_id=f"ingest-{uid}",
    )  # fmt: skip
    worker = MqttIngest(settings, Pipeline(engine, settings))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    device = Client(mosquitto.port)
    clients.append(device)
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        device.subscribe(f"devices/{uid}/acks")
        body = orjson.dumps({"ts": TS_MS, "temperature": 21.5, "humidity": 900}).decode()
        acks = []
        for _ in range(2):
            device.publish(f"devices/{uid}/telemetry", body)
            got = await asyncio.to_thread(device.receive, 3.0)
            acks += [orjson.loads(payload) for topic, payload in got if topic.endswith("/acks")]
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert [[r["reason"] for r in a["rejected"]] for a in acks] == [["out_of_range"]] * 2
    assert [d.reason for d in await _letters(engine, device_uid=uid)] == ["out_of_range"]
    counts = await _counters(engine, uid, tenant_id)
    assert counts["rejected:out_of_range"] == 1 and counts["duplicate_rejection"] == 1
    assert counts["accepted"] == 1 and counts["duplicate"] == 1


@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(0, 2**62), st.text(max_size=20))
def test_a_fingerprint_names_what_was_rejected_not_when(
    payload: bytes, other: bytes, received_at: int, detail: str
) -> None:
    def row(**changes: Any) -> dict[str, Any]:
        fields: dict[str, Any] = dict(
            tenant_id=1, device_uid="d", source="mqtt", topic="devices/d/telemetry",
            reason="out_of_range", detail="x", entry_index=0, metric="t", payload=payload,
            received_at=1, cap=8,
        )  # fmt: skip
        return dead_letter_row(**{**fields, **changes})

    same = row()["fingerprint"]
    assert row(received_at=received_at, detail=detail, cap=0)["fingerprint"] == same
    changed = [
        row(payload=other), row(tenant_id=None), row(device_uid="e"), row(source="http"),
        row(topic="devices/e/telemetry"), row(reason="conflict"), row(entry_index=None),
        row(metric=None), row(ordinal=1),
    ]  # fmt: skip
    differs = [r["fingerprint"] != same for r in changed]
    assert differs == [other != payload, *[True] * 8]
