"""Alert rules and alerts in the database, on SQLite and PostgreSQL: rule CRUD, one open alert per
series, the lifecycle with its outbox rows, listing with filters and cursor, engine state."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.alerts.store import AlertFilter, AlertStateError, RuleNameTaken
from telemetra.store.catalog import create_tenant, delete_tenant
from telemetra.store.schema import alert_rules, alerts, notification_outbox
from telemetra.store.tenancy import platform_wide

T0 = 1_795_000_000_000_000  # µs
MIN = 60_000_000


def definition(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "kind": "threshold", "metric": "temperature",
        "condition": {"op": ">", "value": -15}, "for": "2m", "clear": {"op": "<=", "value": -17},
        "scope": {"devices": ["freezer-1"]}, "severity": "critical", "enabled": True,
        "channels": [
            {"kind": "webhook", "url": "https://ops.example.org/hook", "secret": "s3cret!!"},
            {"kind": "email", "to": ["ops@example.org"]},
        ],
        **extra,
    }  # fmt: skip


@pytest.fixture
async def tenants(engine: AsyncEngine) -> tuple[int, int]:
    tag = uuid.uuid4().hex[:8]
    with platform_wide():
        async with engine.begin() as conn:
            return await create_tenant(conn, f"al-a-{tag}"), await create_tenant(
                conn, f"al-b-{tag}"
            )


async def outbox(engine: AsyncEngine, alert_id: int) -> list[tuple[str, str, int]]:
    async with engine.connect() as conn:
        found = await store.notifications_of(conn, [alert_id])
    return [(n.event, n.channel, n.channel_index) for n in found[alert_id]]


async def test_rules_are_created_read_renamed_and_deleted(
    engine: AsyncEngine, tenants: tuple[int, int]
) -> None:
    a, b = tenants
    async with engine.begin() as conn:
        rule = await store.create_rule(conn, a, definition("freezer"), at=T0)
        same_name_elsewhere = await store.create_rule(conn, b, definition("freezer"), at=T0)
    assert (rule.name, rule.kind, rule.severity, rule.enabled) == ("freezer", "threshold",
                                                                    "critical", True)  # fmt: skip
    assert rule.definition["channels"][0]["secret"] == "s3cret!!"
    assert same_name_elsewhere.tenant_id == b
    with pytest.raises(RuleNameTaken, match="'freezer' already exists"):
        async with engine.begin() as conn:
            await store.create_rule(conn, a, definition("freezer"))
    async with engine.connect() as conn:
        assert await store.get_rule(conn, rule.id, b) is None  # another tenant's: not found
        assert (await store.get_rule(conn, rule.id, None)) == rule
        assert [r.tenant_id for r in await store.rules_named(conn, "freezer", None)] == [a, b]
        assert [r.id for r in await store.rules_named(conn, "freezer", b)] == [
            same_name_elsewhere.id
        ]
        assert [r.id for r in await store.list_rules(conn, a)] == [rule.id]

    async with engine.begin() as conn:
        fired, _ = await store.open_alert(
            conn, rule, "freezer-1", "temperature", value=-12.5, message="warm", started_at=T0
        )
        other = await store.create_rule(conn, a, definition("other"))
        with pytest.raises(RuleNameTaken):
            await store.update_rule(conn, other, definition("freezer"))
        renamed = await store.update_rule(
            conn, rule, definition("freezer 2", enabled=False), at=T0 + 1
        )
    assert (renamed.name, renamed.enabled, renamed.updated_at) == ("freezer 2", False, T0 + 1)
    async with engine.connect() as conn:
        assert (await store.get_alert(conn, fired.id, a)).rule == "freezer 2"  # type: ignore[union-attr]
        assert [r.name for r in await store.list_rules(conn, a, enabled=True)] == ["other"]

    async with engine.begin() as conn:
        # Disabling it resolved its open alert (by whoever disabled it: here "auto"), so
        # deleting it has none left to resolve.
        assert await store.delete_rule(conn, renamed, "maria", at=T0 + 2) == []
        resolved = await store.get_alert(conn, fired.id, a)
    assert resolved is not None
    assert (resolved.state, resolved.resolved_by, resolved.resolved_at, resolved.note) == (
        "resolved", "auto", T0 + 1, "rule disabled")  # fmt: skip
    async with engine.connect() as conn:
        assert await store.get_rule(conn, rule.id, None) is None
        kept = await store.get_alert(conn, fired.id, a)  # the history stays
    assert kept is not None and kept.rule == "freezer 2" and kept.state == "resolved"
    assert await outbox(engine, fired.id) == [
        ("fired", "webhook", 0), ("fired", "email", 1),
        ("resolved", "webhook", 0), ("resolved", "email", 1),
    ]  # fmt: skip


async def test_one_open_alert_per_series_and_its_lifecycle(
    engine: AsyncEngine, tenants: tuple[int, int]
) -> None:
    a, _ = tenants
    async with engine.begin() as conn:
        rule = await store.create_rule(conn, a, definition("cold room"))
    args: dict[str, Any] = {"value": -12.5, "message": "temperature -12.5 > -15 for 2m"}
    async with engine.begin() as conn:
        first, opened = await store.open_alert(
            conn, rule, "freezer-1", "temperature", started_at=T0, at=T0, **args
        )
        again, opened_again = await store.open_alert(
            conn, rule, "freezer-1", "temperature", started_at=T0 + MIN, **args
        )
        other_metric, _ = await store.open_alert(
            conn, rule, "freezer-1", None, started_at=T0, **args
        )
        again_none, opened_none = await store.open_alert(
            conn, rule, "freezer-1", None, started_at=T0, **args
        )
    assert opened and not opened_again and not opened_none
    assert again == first and again_none == other_metric and other_metric.metric is None
    shown = (first.state, first.severity, first.rule, first.started_at)
    assert shown == ("firing", "critical", "cold room", T0)
    assert await outbox(engine, first.id) == [("fired", "webhook", 0), ("fired", "email", 1)]

    async with engine.begin() as conn:
        acked = await store.acknowledge(conn, first, "maria", "on it", at=T0 + MIN)
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at, acked.note) == (
        "acknowledged", "maria", T0 + MIN, "on it")  # fmt: skip
    with pytest.raises(AlertStateError, match="already acknowledged by maria"):
        async with engine.begin() as conn:
            await store.acknowledge(conn, acked, "joe")
    async with engine.begin() as conn:
        flapping = await store.update_open_alert(conn, acked, value=-11.0, flapping=True)
        done = await store.resolve_series(conn, rule, "freezer-1", "temperature", at=T0 + 2 * MIN)
        nothing = await store.resolve_series(conn, rule, "freezer-1", "temperature")
    assert flapping is not None and flapping.flapping and flapping.value == -11.0
    assert done is not None and (done.state, done.resolved_by) == ("resolved", "auto")
    assert done.note == "on it" and nothing is None
    with pytest.raises(AlertStateError, match="was resolved by auto"):
        async with engine.begin() as conn:
            await store.acknowledge(conn, done, "joe")
    with pytest.raises(AlertStateError, match="cannot resolve"):
        async with engine.begin() as conn:
            await store.resolve(conn, done, "joe")
    assert [e for e, _, _ in await outbox(engine, first.id)] == [
        "fired", "fired", "acknowledged", "acknowledged", "resolved", "resolved"
    ]  # fmt: skip
    async with engine.connect() as conn:
        payload = (await store.notifications_of(conn, [first.id]))[first.id][-1].payload
    assert payload["event"] == "resolved" and payload["resolved_by"] == "auto"
    assert payload["started_at"] == "2026-11-18T11:06:40Z" and payload["metric"] == "temperature"

    # Resolved: the series may fire again, as a new alert.
    async with engine.begin() as conn:
        later, opened = await store.open_alert(
            conn, rule, "freezer-1", "temperature", started_at=T0 + 3 * MIN, **args
        )
        by_hand = await store.resolve(conn, later, "joe", note="door fixed")
    assert opened and later.id != first.id
    assert (by_hand.resolved_by, by_hand.note) == ("joe", "door fixed")


async def test_concurrent_openers_make_one_alert(
    engine: AsyncEngine, tenants: tuple[int, int]
) -> None:
    """Two engines (or a retry) firing the same series at once: one alert, one set of
    notifications."""
    a, _ = tenants
    async with engine.begin() as conn:
        rule = await store.create_rule(conn, a, definition("race"))

    async def fire() -> tuple[store.Alert, bool]:
        for _ in range(50):  # SQLite: one writer at a time, the other retries
            try:
                async with engine.begin() as conn:
                    return await store.open_alert(
                        conn, rule, "d1", "temperature", value=1.0, message="x", started_at=T0
                    )
            except Exception as error:  # database is locked
                if "locked" not in str(error):
                    raise
                await asyncio.sleep(0.05)
        raise AssertionError("never got the write lock")

    results = await asyncio.gather(*(fire() for _ in range(4)))
    assert len({alert.id for alert, _ in results}) == 1
    assert sum(opened for _, opened in results) == 1
    assert len(await outbox(engine, results[0][0].id)) == 2


async def test_listing_filters_and_pages(engine: AsyncEngine, tenants: tuple[int, int]) -> None:
    a, b = tenants
    async with engine.begin() as conn:
        hot = await store.create_rule(conn, a, definition("hot", channels=[]))
        warn = await store.create_rule(conn, a, definition("warn", severity="warning"))
        theirs = await store.create_rule(conn, b, definition("hot"))
        made = []
        for i in range(7):
            rule = hot if i % 2 == 0 else warn
            alert, _ = await store.open_alert(
                conn, rule, f"dev-{i}", "temperature", value=float(i), message=f"m{i}",
                started_at=T0 + i * MIN,
            )  # fmt: skip
            made.append(alert)
        await store.open_alert(conn, theirs, "dev-0", "temperature", value=0.0, message="b",
                               started_at=T0)  # fmt: skip
        await store.acknowledge(conn, made[1], "maria")
        await store.resolve(conn, made[2], "maria", at=T0 + 3 * MIN)
    assert await outbox(engine, made[0].id) == []  # a rule without channels notifies nobody

    async def ids(selection: AlertFilter, limit: int = 100) -> list[int]:
        found: list[int] = []
        cursor = None
        async with engine.connect() as conn:
            while True:
                page = await store.list_alerts(conn, selection, limit=limit, cursor=cursor)
                found += [x.id for x in page.items]
                if page.next_cursor is None:
                    return found
                cursor = page.next_cursor

    everything = [x.id for x in reversed(made)]  # newest start first
    assert await ids(AlertFilter(a)) == everything
    assert await ids(AlertFilter(a), limit=2) == everything
    assert await ids(AlertFilter(a), limit=1) == everything
    assert len(await ids(AlertFilter(None))) >= 8
    assert await ids(AlertFilter(a, states=("acknowledged",))) == [made[1].id]
    assert await ids(AlertFilter(a, states=("firing", "acknowledged")), limit=2) == [
        x for x in everything if x != made[2].id
    ]
    assert await ids(AlertFilter(a, severities=("warning",))) == [made[5].id, made[3].id,
                                                                  made[1].id]  # fmt: skip
    assert await ids(AlertFilter(a, device="dev-4")) == [made[4].id]
    assert await ids(AlertFilter(a, rule_id=hot.id)) == [made[6].id, made[4].id, made[2].id,
                                                         made[0].id]  # fmt: skip
    assert await ids(AlertFilter(a, rule_name="warn")) == [made[5].id, made[3].id, made[1].id]
    # Active at some time in [from, to): started before `to`, not resolved before `from`.
    assert await ids(AlertFilter(a, until=T0 + 2 * MIN)) == [made[1].id, made[0].id]
    assert made[2].id not in await ids(AlertFilter(a, since=T0 + 4 * MIN))
    assert made[2].id in await ids(AlertFilter(a, since=T0 + 3 * MIN))
    assert await ids(AlertFilter(b)) != [] and not set(await ids(AlertFilter(b))) & set(everything)
    with pytest.raises(ValueError, match="invalid cursor"):
        async with engine.connect() as conn:
            await store.list_alerts(conn, AlertFilter(a), cursor="nonsense")


async def test_outbox_deliveries_and_engine_state(
    engine: AsyncEngine, tenants: tuple[int, int]
) -> None:
    a, _ = tenants
    async with engine.begin() as conn:
        rule = await store.create_rule(conn, a, definition("outbox"))
        alert, _ = await store.open_alert(
            conn, rule, "d1", "temperature", value=1.0, message="x", started_at=T0, at=T0
        )
    async with engine.connect() as conn:
        due = [n for n in await store.due_notifications(conn, T0) if n.alert_id == alert.id]
    assert [n.target["kind"] for n in due] == ["webhook", "email"]
    assert due[0].target["secret"] == "s3cret!!" and due[0].payload["event"] == "fired"
    webhook, email = due
    async with engine.begin() as conn:
        await store.record_attempt(conn, webhook.id, error=None, at=T0 + 1)
        await store.record_attempt(conn, email.id, error="timeout", retry_at=T0 + MIN)
    async with engine.connect() as conn:
        assert alert.id not in {n.alert_id for n in await store.due_notifications(conn, T0 + 1)}
        assert [n.id for n in await store.due_notifications(conn, T0 + MIN)
                if n.alert_id == alert.id] == [email.id]  # fmt: skip
    async with engine.begin() as conn:
        await store.record_attempt(conn, email.id, error="535 authentication failed")
    async with engine.connect() as conn:
        shown = (await store.notifications_of(conn, [alert.id]))[alert.id]
    assert [(n.status, n.attempts, n.last_error) for n in shown] == [
        ("delivered", 1, None), ("failed", 2, "535 authentication failed")
    ]  # fmt: skip

    key, other = (rule.id, "d1", "temperature"), (rule.id, "d2", None)
    async with engine.begin() as conn:
        await store.save_series_state(conn, [(a, key, {"since": 1}), (a, other, {"n": 2})])
        await store.save_series_state(conn, [(a, key, {"since": 5})])
    async with engine.connect() as conn:
        assert await store.load_series_state(conn, [rule.id]) == {
            key: {"since": 5},
            other: {"n": 2},
        }
    async with engine.begin() as conn:
        await store.forget_series_state(conn, rule.id, [("d2", None)])
    async with engine.connect() as conn:
        assert await store.load_series_state(conn, [rule.id]) == {key: {"since": 5}}


async def test_deleting_a_tenant_deletes_its_rules_and_alerts(
    engine: AsyncEngine, tenants: tuple[int, int]
) -> None:
    _, b = tenants
    with platform_wide():
        async with engine.begin() as conn:
            rule = await store.create_rule(conn, b, definition("gone"))
            alert, _ = await store.open_alert(
                conn, rule, "d1", "temperature", value=1.0, message="x", started_at=T0
            )
            await store.save_series_state(conn, [(b, (rule.id, "d1", "temperature"), {})])
            await delete_tenant(conn, b)
        async with engine.connect() as conn:
            for table in (alert_rules, alerts, notification_outbox):
                column = table.c.tenant_id
                count = await conn.scalar(
                    select(func.count()).select_from(table).where(column == b)
                )
                assert count == 0, table.name
            assert await store.load_series_state(conn, [rule.id]) == {}
    assert alert.tenant_id == b
