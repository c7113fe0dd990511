"""Dead-letter replay on SQLite and PostgreSQL: through today's devices, rules and clock
offsets; idempotent; replayed dead letters kept and marked; what cannot be replayed skipped."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from telemetra.cli import app
from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.ingest.replay import replay
from telemetra.model import Flag
from telemetra.store.catalog import create_device, create_tenant, set_rule
from telemetra.store.deadletters import Selection
from telemetra.store.schema import dead_letters, devices, metrics, readings

NOW_US = time.time_ns() // 1000
TS_MS = NOW_US // 1000 - 120_000


def _settings(**changes: Any) -> Settings:
    return Settings(database_url="sqlite://unused", **changes)


async def _tenant(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        return await create_tenant(conn, f"tenant-{uuid.uuid4().hex[:8]}")


async def _register(engine: AsyncEngine, tenant_id: int, uid: str) -> None:
    async with engine.begin() as conn:
        await create_device(conn, tenant_id, uid)


async def _send(engine: AsyncEngine, uid: str, *bodies: Any, **settings: Any) -> None:
    pipe = Pipeline(engine, _settings(**settings))
    await pipe.process_until_stored(
        [
            Message(f"devices/{uid}/telemetry", orjson.dumps(body), NOW_US - 60_000_000 + i)
            for i, body in enumerate(bodies)
        ]
    )


async def _letters(engine: AsyncEngine, uid: str) -> list[Any]:
    async with engine.connect() as conn:
        query = select(dead_letters).where(dead_letters.c.device_uid == uid)
        return list((await conn.execute(query.order_by(dead_letters.c.id))).all())


async def _stored(engine: AsyncEngine, uid: str) -> list[tuple[str, float | None, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(metrics.c.name, readings.c.value, readings.c.flags)
            .join(devices, devices.c.id == readings.c.device_id)
            .join(metrics, metrics.c.id == readings.c.metric_id)
            .where(devices.c.uid == uid)
            .order_by(readings.c.ts, metrics.c.name)
        )
        return [(r.name, r.value, r.flags) for r in rows]


async def test_replay_after_registering_the_device_stores_once_and_marks(
    engine: AsyncEngine,
) -> None:
    tenant_id = await _tenant(engine)
    uid = f"late-{uuid.uuid4().hex[:8]}"
    bodies = [
        {"ts": TS_MS, "temperature": 20.5},
        {"ts": TS_MS + 1000, "temperature": 21.0, "humidity": 900},  # one value out of range
    ]
    await _send(engine, uid, *bodies)
    [first, second] = await _letters(engine, uid)
    assert first.reason == second.reason == "unknown_device" and first.tenant_id is None

    # Nothing to replay for an unregistered device: rejected again, no new dead letter.
    report = await replay(engine, _settings(), Selection(device_uid=uid))
    assert (report.dead_letters, report.messages, report.stored) == (2, 2, 0)
    assert report.rejected == {"unknown_device": 2} and report.resolved == 0
    letters = await _letters(engine, uid)
    assert len(letters) == 2
    assert {(x.replay_outcome, x.replay_detail.split(":")[0]) for x in letters} == {
        ("rejected", "unknown_device")
    }

    await _register(engine, tenant_id, uid)
    report = await replay(engine, _settings(), Selection(device_uid=uid))
    assert (report.dead_letters, report.messages, report.accepted, report.stored) == (2, 2, 2, 2)
    assert report.resolved == 2 and report.rejected == {"out_of_range": 1}
    assert [(name, value) for name, value, _ in await _stored(engine, uid)] == [
        ("temperature", 20.5), ("temperature", 21.0),
    ]  # fmt: skip
    letters = await _letters(engine, uid)
    # Kept and marked; the value still out of range is a dead letter of its own now.
    assert [(x.reason, x.replay_outcome) for x in letters] == [
        ("unknown_device", "stored"), ("unknown_device", "stored"), ("out_of_range", None),
    ]  # fmt: skip
    assert (
        letters[1].replay_detail
        == "1 reading of its message accepted; 1 other value rejected again"
    )
    assert letters[0].replayed_at is not None and letters[2].tenant_id == tenant_id

    # Replaying again takes only what is not stored yet, and stores nothing twice.
    report = await replay(engine, _settings(), Selection(device_uid=uid))
    assert (report.dead_letters, report.messages, report.stored) == (1, 1, 0)
    assert report.rejected == {"out_of_range": 1} and report.resolved == 0
    assert len(await _letters(engine, uid)) == 3  # rejected again: no new dead letter
    assert len(await _stored(engine, uid)) == 2
    again = await replay(engine, _settings(), Selection(device_uid=uid, reason="unknown_device"))
    assert again.dead_letters == 0


async def test_replay_after_fixing_a_rule(engine: AsyncEngine) -> None:
    tenant_id = await _tenant(engine)
    uid = f"rule-{uuid.uuid4().hex[:8]}"
    await _register(engine, tenant_id, uid)
    await _send(engine, uid, {"ts": TS_MS, "humidity": 140, "temperature": 20})
    [letter] = await _letters(engine, uid)
    assert (letter.reason, letter.metric, letter.entry_index) == ("out_of_range", "humidity", 0)

    dry = await replay(engine, _settings(), Selection(tenant_id=tenant_id), dry_run=True)
    assert dry.dry_run and (dry.messages, dry.stored, dry.resolved) == (1, 0, 0)
    assert dry.rejected == {"out_of_range": 1}

    async with engine.begin() as conn:  # a sensor that reads up to 150 %
        await set_rule(conn, "humidity", tenant_id=tenant_id, min_value=0, max_value=150)
    dry = await replay(engine, _settings(), Selection(tenant_id=tenant_id), dry_run=True)
    assert (dry.messages, dry.accepted, dry.stored, dry.resolved) == (1, 2, 0, 1)
    [letter] = await _letters(engine, uid)
    assert letter.replayed_at is None  # a dry run marks nothing ...
    assert [name for name, _, _ in await _stored(engine, uid)] == [
        "temperature"
    ]  # ... stores nothing

    report = await replay(engine, _settings(), Selection(tenant_id=tenant_id))
    assert (report.accepted, report.stored, report.resolved, report.rejected) == (2, 1, 1, {})
    assert [(name, value) for name, value, _ in await _stored(engine, uid)] == [
        ("humidity", 140.0), ("temperature", 20.0),
    ]  # fmt: skip
    [letter] = await _letters(engine, uid)
    assert letter.replay_outcome == "stored"


async def test_replay_once_the_clock_offset_is_known(engine: AsyncEngine) -> None:
    tenant_id = await _tenant(engine)
    uid = f"drift-{uuid.uuid4().hex[:8]}"
    await _register(engine, tenant_id, uid)
    ahead_ms = 496_000
    await _send(engine, uid, {"ts": NOW_US // 1000 - 60_000 + ahead_ms, "temperature": 20})
    [letter] = await _letters(engine, uid)
    assert letter.reason == "future_timestamp"

    async with engine.begin() as conn:  # what ingest estimates from the device's messages
        await conn.execute(
            update(devices).where(devices.c.uid == uid).values(clock_offset_us=ahead_ms * 1000)
        )
    report = await replay(engine, _settings(), Selection(reason="future_timestamp", device_uid=uid))
    assert (report.stored, report.resolved) == (1, 1)
    [(name, _, flags)] = await _stored(engine, uid)
    assert name == "temperature" and flags & Flag.CLOCK_CORRECTED


async def test_truncated_and_deviceless_dead_letters_are_skipped(engine: AsyncEngine) -> None:
    tenant_id = await _tenant(engine)
    uid = f"trunc-{uuid.uuid4().hex[:8]}"
    await _register(engine, tenant_id, uid)
    body = {"ts": TS_MS, "temperature": 6000, "note": "x" * 200}
    await _send(engine, uid, body, deadletter_payload_bytes=50)
    async with engine.begin() as conn:
        await conn.execute(
            dead_letters.insert().values(
                tenant_id=tenant_id, device_uid=None, source="mqtt", topic="nowhere/x",
                reason="unknown_route", detail="no route", payload=b"{}", payload_size=2,
                received_at=NOW_US,
            )
        )  # fmt: skip
    report = await replay(engine, _settings(), Selection(tenant_id=tenant_id))
    assert report.skipped == {"payload_truncated": 1, "no_device": 1}
    assert (report.messages, report.stored) == (0, 0)
    [letter] = await _letters(engine, uid)
    assert letter.replay_outcome == "skipped"
    assert letter.replay_detail.startswith("payload_truncated: only 50 of ")


async def test_replay_selects_by_tenant_device_reason_and_time(engine: AsyncEngine) -> None:
    mine, other = await _tenant(engine), await _tenant(engine)
    a, b, c = (f"sel-{uuid.uuid4().hex[:8]}" for _ in range(3))
    for tenant_id, uid in ((mine, a), (mine, b), (other, c)):
        await _register(engine, tenant_id, uid)
        await _send(engine, uid, {"ts": TS_MS, "humidity": 900}, {"ts": TS_MS, "t": "1e400"})
    every = await replay(engine, _settings(), Selection(tenant_id=mine), dry_run=True)
    assert every.dead_letters == 4  # two per device of the tenant, none of the other's
    by_device = await replay(engine, _settings(), Selection(tenant_id=mine, device_uid=c))
    assert by_device.dead_letters == 0  # another tenant's device
    by_reason = Selection(tenant_id=mine, reason="out_of_range")
    assert (await replay(engine, _settings(), by_reason, dry_run=True)).dead_letters == 2
    [letter] = [x for x in await _letters(engine, a) if x.reason == "out_of_range"]
    at = letter.received_at
    window = Selection(tenant_id=mine, device_uid=a, since=at, until=at + 1)
    assert (await replay(engine, _settings(), window, dry_run=True)).dead_letters == 1
    later = Selection(tenant_id=mine, since=at + 10_000_000)
    assert (await replay(engine, _settings(), later, dry_run=True)).dead_letters == 0
    limited = await replay(engine, _settings(), Selection(tenant_id=mine), limit=1)
    assert (limited.dead_letters, limited.remaining) == (1, 3)
    async with engine.connect() as conn:
        count = select(func.count()).where(dead_letters.c.replayed_at.is_not(None))
        assert (await conn.execute(count.where(dead_letters.c.device_uid == c))).scalar() == 0


def test_cli_list_and_replay(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRA_DATABASE_URL", db_url)
    monkeypatch.delenv("TELEMETRA_AUTO_REGISTER", raising=False)
    runner = CliRunner()
    uid = f"cli-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "early.jsonl"
    path.write_text(
        "".join(f'{{"device": "{uid}", "ts": {TS_MS + i}, "temperature": {i}}}\n' for i in range(3))
    )
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 1 and "no readings accepted" in result.output

    listed = runner.invoke(app, ["deadletter", "list", "--device", uid, "--json"])
    assert listed.exit_code == 0, listed.output
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [x["reason"] for x in letters] == ["unknown_device"] * 3
    assert all(x["replayed"] is None for x in letters)

    assert runner.invoke(app, ["device", "create", uid]).exit_code == 0
    dry = runner.invoke(app, ["deadletter", "replay", "--device", uid, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing stored or marked" in dry.stdout
    assert re.search(r"dead letters resolved\s+│\s+3", dry.stdout), dry.stdout

    done = runner.invoke(app, ["deadletter", "replay", "--device", uid, "--from", "-1h"])
    assert done.exit_code == 0, done.output
    assert re.search(r"  new\s+│\s+3", done.stdout), done.stdout
    again = runner.invoke(app, ["deadletter", "replay", "--device", uid])
    assert re.search(r"dead letters\s+│\s+0", again.stdout), again.stdout

    replayed = runner.invoke(app, ["deadletter", "list", "--replayed", "--json", "--device", uid])
    outcomes = [json.loads(line)["replayed"]["outcome"] for line in replayed.stdout.splitlines()]
    assert outcomes == ["stored"] * 3
    table = runner.invoke(app, ["deadletter", "list", "--not-replayed", "--device", uid])
    assert table.exit_code == 0 and "unknown_device" not in table.stdout

    bad = runner.invoke(app, ["deadletter", "replay", "--from", "yesterday"])
    assert bad.exit_code == 1 and "`--from` is not a time" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


async def test_dead_letters_from_before_fingerprints_replay_too(engine: AsyncEngine) -> None:
    """Rows stored before migration 0007 have no fingerprint and no metric."""
    tenant_id = await _tenant(engine)
    uid = f"old-{uuid.uuid4().hex[:8]}"
    await _register(engine, tenant_id, uid)
    payload = orjson.dumps([{"ts": TS_MS, "humidity": 50}, {"ts": TS_MS + 1, "humidity": 130}])
    async with engine.begin() as conn:
        await conn.execute(
            dead_letters.insert().values(
                tenant_id=tenant_id, device_uid=uid, source="mqtt",
                topic=f"devices/{uid}/telemetry", reason="out_of_range", detail="130 outside",
                entry_index=1, payload=payload, payload_size=len(payload), received_at=NOW_US,
            )
        )  # fmt: skip
    report = await replay(engine, _settings(), Selection(tenant_id=tenant_id))
    assert (report.stored, report.resolved, report.rejected) == (1, 0, {"out_of_range": 1})
    [letter] = await _letters(engine, uid)  # the rejection again is this one: not stored again
    assert letter.replay_outcome == "rejected" and letter.replay_detail.startswith("out_of_range")
    assert letter.fingerprint and letter.metric == "humidity"  # as if stored with 0007
    async with engine.begin() as conn:
        await set_rule(conn, "humidity", tenant_id=tenant_id, min_value=0, max_value=150)
    report = await replay(engine, _settings(), Selection(tenant_id=tenant_id))
    assert (report.stored, report.resolved) == (1, 1)
    assert [value for _, value, _ in await _stored(engine, uid)] == [50.0, 130.0]
