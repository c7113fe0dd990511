"""The alert API on SQLite and PostgreSQL (as the ordinary role, RLS beneath): the history with
filters and cursor, one alert with its notifications, acknowledge and resolve by role.

The engine that raises alerts is not the API's: alerts are opened here with the store functions
it will use."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.store.catalog import tenant_id_by_name
from telemetra.store.tenancy import platform_wide

from api_fixtures import World, assert_error

API = "/api/v1"
T0 = 1_795_000_000_000_000
MIN = 60_000_000


async def open_alerts(
    engine: AsyncEngine, tenant: str, count: int, channels: list[dict[str, Any]] | None = None
) -> tuple[store.StoredRule, list[store.Alert]]:
    definition = {
        "name": f"cold room {uuid.uuid4().hex[:6]}", "kind": "threshold", "metric": "temperature",
        "condition": {"op": ">", "value": -15}, "severity": "critical",
        "channels": [{"kind": "mqtt", "topic": "alerts/cold"}] if channels is None else channels,
    }  # fmt: skip
    with platform_wide():
        async with engine.begin() as conn:
            tenant_id = await tenant_id_by_name(conn, tenant)
            rule = await store.create_rule(conn, tenant_id, definition)
            made = []
            for i in range(count):
                alert, _ = await store.open_alert(
                    conn, rule, f"freezer-{i}", "temperature", value=-12.0 + i,
                    message=f"temperature {-12 + i} > -15", started_at=T0 + i * MIN,
                )  # fmt: skip
                made.append(alert)
    return rule, made


async def test_the_alert_lifecycle_by_role(world: World, engine: AsyncEngine) -> None:
    c = world.client
    rule, [alert] = await open_alerts(engine, world.tenant_a, 1)
    tag = world.tenant_a.split("-", 1)[1]
    path = f"{API}/alerts/{alert.id}"

    shown = await c.get(path, headers=world.auth("a-viewer"))
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert {k: body[k] for k in ("rule_id", "rule", "device", "metric", "severity", "state")} == {
        "rule_id": rule.id, "rule": rule.name, "device": "freezer-0", "metric": "temperature",
        "severity": "critical", "state": "firing"}  # fmt: skip
    assert body["started_at"] == "2026-11-18T11:06:40Z" and body["value"] == -12.0
    assert body["notifications"] == [{"channel": "mqtt", "event": "fired", "status": "pending",
                                      "attempts": 0, "last_error": None}]  # fmt: skip

    for who in ("b-viewer", "b-operator"):
        assert_error(await c.get(path, headers=world.auth(who)), 404, "not_found")
        assert_error(await c.post(f"{path}/ack", headers=world.auth(who)), 404 if
                     who == "b-operator" else 403, "not_found" if who == "b-operator"
                     else "forbidden")  # fmt: skip
    assert_error(await c.post(f"{path}/ack", headers=world.auth("a-viewer")), 403, "forbidden")

    acked = await c.post(f"{path}/ack", json={"note": "door left open"},
                         headers=world.auth("a-operator"))  # fmt: skip
    assert acked.status_code == 200, acked.text
    a = acked.json()
    assert (a["state"], a["acknowledged_by"], a["note"]) == (
        "acknowledged", f"a-operator-{tag}", "door left open")  # fmt: skip
    assert a["acknowledged_at"].endswith("Z")
    assert [n["event"] for n in a["notifications"]] == ["fired", "acknowledged"]
    again = await c.post(f"{path}/ack", headers=world.auth("a-owner"))
    assert_error(again, 409, "conflict")
    assert f"already acknowledged by a-operator-{tag}" in again.json()["error"]["message"]

    # The engine's state of the series says it is firing; a resolve by hand resets it.
    from telemetra.alerts.evaluate import SeriesState

    key = (rule.id, "freezer-0", "temperature")
    breaching = SeriesState(last_us=T0, value=-12.0, raw=True, open=True, fired_us=T0)
    with platform_wide():
        async with engine.begin() as conn:
            tenant_id = await tenant_id_by_name(conn, world.tenant_a)
            await store.save_series_state(conn, [(tenant_id, key, breaching.to_dict())])
    resolved = await c.post(f"{path}/resolve", headers=world.auth("a-owner"))  # no body: fine
    assert resolved.status_code == 200, resolved.text
    r = resolved.json()
    assert (r["state"], r["resolved_by"], r["note"]) == ("resolved", f"a-owner-{tag}",
                                                         "door left open")  # fmt: skip
    assert [n["event"] for n in r["notifications"]] == ["fired", "acknowledged", "resolved"]
    with platform_wide():
        async with engine.connect() as conn:
            after = SeriesState.from_dict(await store.series_state_of(conn, key) or {})
    assert (after.open, after.raw, after.fired_us, after.last_us) == (False, False, None, T0)
    assert_error(await c.post(f"{path}/resolve", headers=world.auth("a-operator")),
                 409, "conflict")  # fmt: skip
    assert_error(await c.post(f"{path}/ack", headers=world.auth("a-operator")), 409, "conflict")
    bad = await c.post(f"{path}/ack", json={"note": "x", "by": "me"},
                       headers=world.auth("a-operator"))  # fmt: skip
    assert_error(bad, 422, "invalid_request")
    assert_error(await c.get(f"{API}/alerts/999999999", headers=world.auth("a-viewer")),
                 404, "not_found")  # fmt: skip


async def test_the_history_filters_and_pages(world: World, engine: AsyncEngine) -> None:
    c, h = world.client, world.auth("a-viewer")
    rule, made = await open_alerts(engine, world.tenant_a, 5, channels=[])
    other, theirs = await open_alerts(engine, world.tenant_b, 2)
    with platform_wide():
        async with engine.begin() as conn:
            await store.acknowledge(conn, made[1], "maria")
            await store.resolve(conn, made[2], at=T0 + 3 * MIN)

    async def ids(**params: Any) -> list[int]:
        found: list[int] = []
        params = {"rule": str(rule.id), **params}
        while True:
            reply = await c.get(f"{API}/alerts", params=params, headers=h)
            assert reply.status_code == 200, reply.text
            found += [a["id"] for a in reply.json()["items"]]
            if reply.json()["next_cursor"] is None:
                return found
            params["cursor"] = reply.json()["next_cursor"]

    newest_first = [a.id for a in reversed(made)]
    assert await ids() == newest_first
    assert await ids(limit=2) == newest_first
    assert await ids(rule=rule.name) == newest_first
    assert await ids(state="acknowledged") == [made[1].id]
    assert await ids(state="firing,acknowledged") == [x for x in newest_first if x != made[2].id]
    assert await ids(state="resolved", severity="critical") == [made[2].id]
    assert await ids(severity="info") == []
    assert await ids(device="freezer-3") == [made[3].id]
    assert await ids(to=str((T0 + 2 * MIN) // 1000)) == [made[1].id, made[0].id]
    assert made[2].id not in await ids(**{"from": str((T0 + 4 * MIN) // 1000)})
    # Tenant b's alerts are not tenant a's, whatever the filter.
    everything = await c.get(f"{API}/alerts", params={"limit": 1000}, headers=h)
    seen = {a["id"] for a in everything.json()["items"]}
    assert set(newest_first) <= seen and not seen & {a.id for a in theirs}
    assert await ids(rule=str(other.id)) == []
    assert await ids(rule=other.name) == []
    assert await ids(rule="99999999999999999999") == []  # beyond 64 bits: a name, not an id

    for params, field in (({"state": "open"}, "query.state"),
                          ({"severity": "fatal"}, "query.severity"),
                          ({"from": "yesterday"}, "query.from"),
                          ({"cursor": "bogus"}, "query.cursor"),
                          ({"limit": 0}, "query.limit")):  # fmt: skip
        reply = await c.get(f"{API}/alerts", params=params, headers=h)
        assert_error(reply, 422, "invalid_request")
        assert reply.json()["error"]["details"][0]["field"] == field, reply.text


async def test_deleting_a_rule_keeps_its_alerts(world: World, engine: AsyncEngine) -> None:
    c = world.client
    rule, [alert] = await open_alerts(engine, world.tenant_a, 1)
    gone = await c.delete(f"{API}/rules/{rule.id}", headers=world.auth("a-operator"))
    assert gone.status_code == 204, gone.text
    kept = (await c.get(f"{API}/alerts/{alert.id}", headers=world.auth("a-viewer"))).json()
    tag = world.tenant_a.split("-", 1)[1]
    assert (kept["rule"], kept["state"], kept["resolved_by"]) == (rule.name, "resolved",
                                                                  f"a-operator-{tag}")  # fmt: skip
    assert [n["event"] for n in kept["notifications"]] == ["fired", "resolved"]
