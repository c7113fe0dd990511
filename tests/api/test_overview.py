"""GET /api/v1/overview on SQLite and PostgreSQL (RLS beneath): the numbers of one tenant's
fleet, none of another's, and every tenant's (or one) for a platform admin."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.store.catalog import create_user, tenant_id_by_name
from telemetra.store.schema import devices
from telemetra.store.tenancy import platform_wide

from api_fixtures import _HASH, PASSWORD, World, assert_error

API = "/api/v1"


async def _device(world: World, uid: str, metadata: dict[str, Any] | None = None) -> str:
    made = await world.client.post(
        f"{API}/devices", json={"uid": uid, "metadata": metadata or {}},
        headers=world.auth("a-operator"),
    )  # fmt: skip
    assert made.status_code == 201, made.text
    token: str = made.json()["token"]
    return token


async def _rule_and_alert(world: World, engine: AsyncEngine, severity: str, uid: str) -> int:
    from telemetra.alerts import store

    made = await world.client.post(
        f"{API}/rules",
        json={"name": f"too warm {severity} {uid}", "kind": "threshold", "metric": "temperature",
              "condition": {"op": ">", "value": 22}, "severity": severity,
              "scope": {"devices": [uid]}},
        headers=world.auth("a-operator"),
    )  # fmt: skip
    assert made.status_code == 201, made.text
    tenant_id = made.json()["tenant_id"]
    with platform_wide():
        async with engine.begin() as conn:
            rule = await store.get_rule(conn, made.json()["id"], tenant_id)
            assert rule is not None
            alert, _ = await store.open_alert(
                conn, rule, uid, "temperature", value=23.0, message="temperature 23 > 22",
                started_at=time.time_ns() // 1000 - 60_000_000,
            )  # fmt: skip
    return int(alert.id)


async def test_the_overview_of_a_tenant(world: World, engine: AsyncEngine) -> None:
    c, a = world.client, world.tenant_a
    d1, d2, d3, d4 = (f"{a}-{n}" for n in ("d1", "d2", "d3", "d4"))
    await _device(world, d1, {"location": {"lat": 52.52, "lon": 13.405}})
    await _device(world, d2, {"location": {"lat": "north", "lon": 13}})  # not a number
    await _device(world, d3, {"location": {"lat": 100, "lon": 0}})  # no such latitude
    # The device that sends: its clock is right (d1's offset would move its readings back).
    token = await _device(world, d4, {"location": {"lat": 0, "lon": -170.5, "alt": 3}})
    with platform_wide():
        async with engine.begin() as conn:
            for uid, online, offset_us in (
                (d1, True, 496_400_000), (d2, False, -2_000_000), (d3, None, 500_000),
            ):  # fmt: skip
                await conn.execute(
                    update(devices)
                    .where(devices.c.uid == uid)
                    .values(online=online, clock_offset_us=offset_us)
                )
    now_ms = time.time_ns() // 1_000_000
    readings = [
        {"ts": now_ms - 30_000 + i, "temperature": 20 + i, "humidity": 50} for i in range(3)
    ]
    readings += [
        {"ts": now_ms - 600_000, "temperature": 18},  # ten minutes ago: not "now"
        {"ts": now_ms - 20_000, "temperature": 6000},  # out_of_range
        {"ts": now_ms + 3_600_000, "temperature": 19},  # future_timestamp
    ]
    ingested = await c.post(f"{API}/ingest", json=readings, headers={"X-API-Key": token})
    assert ingested.status_code == 200 and ingested.json()["accepted"] == 7, ingested.text
    await _rule_and_alert(world, engine, "warning", d1)
    await _rule_and_alert(world, engine, "critical", d1)
    resolved = await _rule_and_alert(world, engine, "critical", d4)
    reply = await c.post(f"{API}/alerts/{resolved}/resolve", headers=world.auth("a-operator"))
    assert reply.status_code == 200, reply.text

    reply = await c.get(f"{API}/overview", headers=world.auth("a-viewer"))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "devices": {"total": 4, "online": 1, "offline": 1, "unknown": 2},
        "readings_per_s": 0.1,  # 6 readings of the last minute
        "alerts_open": {"info": 0, "warning": 1, "critical": 1},
        "rejections_last_hour": {"future_timestamp": 1, "out_of_range": 1},
        "clock_drift": [
            {"device": d1, "clock_offset_s": 496.4},
            {"device": d2, "clock_offset_s": -2.0},
        ],
        "located": [
            {"device": d1, "name": d1, "lat": 52.52, "lon": 13.405, "online": True},
            {"device": d4, "name": d4, "lat": 0.0, "lon": -170.5, "online": None},
        ],
    }
    own = await c.get(f"{API}/overview", params={"tenant": a}, headers=world.auth("a-viewer"))
    assert own.json()["devices"]["total"] == 4

    # Tenant b sees an empty fleet, and cannot name tenant a.
    empty = await c.get(f"{API}/overview", headers=world.auth("b-viewer"))
    assert empty.json() == {
        "devices": {"total": 0, "online": 0, "offline": 0, "unknown": 0},
        "readings_per_s": 0.0,
        "alerts_open": {"info": 0, "warning": 0, "critical": 0},
        "rejections_last_hour": {},
        "clock_drift": [],
        "located": [],
    }
    refused = await c.get(f"{API}/overview", params={"tenant": a}, headers=world.auth("b-viewer"))
    assert_error(refused, 404, "not_found")
    assert_error(await c.get(f"{API}/overview"), 401, "unauthorized")

    # A platform admin: every tenant, or one.
    admin = f"admin-{a}"
    with platform_wide():
        async with engine.begin() as conn:
            await create_user(
                conn, await tenant_id_by_name(conn, world.tenant_b), admin, _HASH, "admin"
            )
    login = await c.post(f"{API}/auth/token", data={"username": admin, "password": PASSWORD})
    h = {"Authorization": f"Bearer {login.json()['access_token']}"}
    answer = await c.get(f"{API}/overview", headers=h)
    assert answer.status_code == 200, answer.text
    everything = answer.json()
    assert everything["devices"]["total"] >= 4
    assert {d1, d4} <= {d["device"] for d in everything["located"]}
    only_a = await c.get(f"{API}/overview", params={"tenant": a}, headers=h)
    assert only_a.json()["devices"] == reply.json()["devices"]
    only_b = await c.get(f"{API}/overview", params={"tenant": world.tenant_b}, headers=h)
    assert only_b.json()["devices"]["total"] == 0
    missing = await c.get(f"{API}/overview", params={"tenant": f"no-{a}"}, headers=h)
    assert_error(missing, 404, "not_found")


async def test_one_device_with_a_nul_in_its_metadata_breaks_no_listing(
    world: World, engine: AsyncEngine
) -> None:
    """Metadata holding a NUL character is refused on write (PostgreSQL's JSON operators would
    refuse any query touching it); one stored before that rule breaks neither the overview nor
    the tag filter."""
    c, a = world.client, world.tenant_a
    refused = await c.post(
        f"{API}/devices", json={"uid": f"{a}-nul", "metadata": {"note": "a\u0000b"}},
        headers=world.auth("a-operator"),
    )  # fmt: skip
    assert_error(refused, 422, "invalid_request")
    assert "NUL character" in refused.text
    await _device(world, f"{a}-tagged", {"tags": ["north"], "location": {"lat": 1, "lon": 2}})
    with platform_wide():
        async with engine.begin() as conn:
            tenant_id = await tenant_id_by_name(conn, a)
            await conn.execute(
                devices.insert().values(
                    tenant_id=tenant_id, uid=f"{a}-legacy", status="active", created_at=0,
                    metadata={"note": "a\u0000b", "tags": ["north"]},
                )
            )  # fmt: skip
    h = world.auth("a-viewer")
    overview = await c.get(f"{API}/overview", headers=h)
    assert overview.status_code == 200, overview.text
    assert [d["device"] for d in overview.json()["located"]] == [f"{a}-tagged"]
    listed = await c.get(f"{API}/devices", params={"tag": "north"}, headers=h)
    assert listed.status_code == 200, listed.text
    assert f"{a}-tagged" in {d["uid"] for d in listed.json()["items"]}
