"""The dead-letter API on SQLite and PostgreSQL (as the ordinary role, RLS beneath): listing with
replay information, and replay by operators of their tenant and by platform admins of all."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.store.catalog import create_user, default_tenant_id, set_rule
from telemetra.store.tenancy import platform_wide

from api_fixtures import _HASH, PASSWORD, World, assert_error

API = "/api/v1"


async def _device(world: World, who: str = "a-operator") -> tuple[str, str]:
    uid = f"dl-{uuid.uuid4().hex[:10]}"
    made = await world.client.post(f"{API}/devices", json={"uid": uid}, headers=world.auth(who))
    assert made.status_code == 201, made.text
    return uid, made.json()["token"]


async def _replay(world: World, who: str, **body: Any) -> dict[str, Any]:
    reply = await world.client.post(f"{API}/deadletters/replay", json=body, headers=world.auth(who))
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


async def _letters(world: World, who: str, **params: Any) -> list[dict[str, Any]]:
    reply = await world.client.get(f"{API}/deadletters", params=params, headers=world.auth(who))
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


async def test_operators_replay_their_tenants_dead_letters(
    world: World, engine: AsyncEngine
) -> None:
    c = world.client
    uid, token = await _device(world)
    ts = time.time_ns() // 1_000_000 - 60_000
    ingested = await c.post(
        f"{API}/ingest",
        json=[{"ts": ts, "temperature": 21.5}, {"ts": ts + 1, "temperature": 250}],
        headers={"X-API-Key": token},
    )
    assert ingested.json()["rejected"][0]["reason"] == "out_of_range"
    [letter] = await _letters(world, "a-viewer", device=uid)
    assert (letter["metric"], letter["index"], letter["replayed"]) == ("temperature", 1, None)

    assert_error(
        await c.post(f"{API}/deadletters/replay", json={}, headers=world.auth("a-viewer")),
        403, "forbidden",
    )  # fmt: skip
    bad = await c.post(
        f"{API}/deadletters/replay", json={"from": "yesterday"}, headers=world.auth("a-operator")
    )
    assert_error(bad, 422, "invalid_request")
    assert bad.json()["error"]["details"][0]["field"] == "body.from"
    unknown = await c.post(
        f"{API}/deadletters/replay", json={"devices": [uid]}, headers=world.auth("a-operator")
    )
    assert_error(unknown, 422, "invalid_request")

    # A sauna sensor: the tenant's rule allows up to 300 °C now.
    tenant_id = (await c.get(f"{API}/auth/me", headers=world.auth("a-owner"))).json()["tenant_id"]
    with platform_wide():
        async with engine.begin() as conn:
            await set_rule(conn, "temperature", tenant_id=tenant_id, min_value=-40, max_value=300)

    dry = await _replay(world, "a-operator", device=uid, dry_run=True)
    assert (dry["dry_run"], dry["dead_letters"], dry["resolved"], dry["stored"]) == (True, 1, 1, 0)
    assert (await _letters(world, "a-viewer", device=uid))[0]["replayed"] is None

    # Tenant b's operator replays nothing of tenant a's, named or not.
    for body in ({"device": uid}, {}):
        theirs = await _replay(world, "b-operator", **body)
        assert theirs["dead_letters"] == 0 and theirs["stored"] == 0
    assert (await _letters(world, "a-viewer", device=uid))[0]["replayed"] is None

    done = await _replay(world, "a-operator", device=uid, reason="out_of_range", **{"from": "-1h"})
    assert (done["dead_letters"], done["messages"], done["stored"], done["resolved"]) == (
        1,
        1,
        1,
        1,
    )
    assert done["rejected"] == {} and done["skipped"] == {} and done["remaining"] == 0
    history = await c.get(
        f"{API}/devices/{uid}/telemetry", params={"from": "-1h"}, headers=world.auth("a-viewer")
    )
    assert [i["value"] for i in history.json()["items"]] == [21.5, 250.0]

    [replayed] = await _letters(world, "a-viewer", device=uid, replayed="true")
    assert replayed["id"] == letter["id"] and replayed["replayed"]["outcome"] == "stored"
    assert replayed["replayed"]["at"].endswith("Z")
    assert await _letters(world, "a-viewer", device=uid, replayed="false") == []
    again = await _replay(world, "a-operator", device=uid)
    assert again["dead_letters"] == 0 and again["stored"] == 0


async def test_admins_replay_dead_letters_of_devices_registered_late(
    world: World, engine: AsyncEngine
) -> None:
    c = world.client
    uid = f"late-{uuid.uuid4().hex[:10]}"
    ts = time.time_ns() // 1_000_000 - 60_000
    with platform_wide():  # the MQTT ingest worker, before the device is registered
        pipe = Pipeline(engine, Settings(database_url="sqlite://unused"))
        payload = orjson.dumps({"ts": ts, "temperature": 19.5})
        await pipe.process_until_stored(
            [Message(f"devices/{uid}/telemetry", payload, time.time_ns() // 1000)]
        )
        name = f"admin-{uuid.uuid4().hex[:8]}"
        async with engine.begin() as conn:
            await create_user(conn, await default_tenant_id(conn), name, _HASH, "admin")
    token = await c.post(f"{API}/auth/token", data={"username": name, "password": PASSWORD})
    admin = {"Authorization": f"Bearer {token.json()['access_token']}"}
    made = await c.post(f"{API}/devices", json={"uid": uid}, headers=world.auth("a-operator"))
    assert made.status_code == 201

    # The dead letter belongs to no tenant (the device was unknown): only admins see it.
    assert await _letters(world, "a-operator", device=uid) == []
    assert (await _replay(world, "a-operator", device=uid))["dead_letters"] == 0
    listed = await c.get(f"{API}/deadletters", params={"device": uid}, headers=admin)
    assert [d["reason"] for d in listed.json()["items"]] == ["unknown_device"]

    replayed = await c.post(f"{API}/deadletters/replay", json={"device": uid}, headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert (replayed.json()["stored"], replayed.json()["resolved"]) == (1, 1)
    latest = await c.get(f"{API}/devices/{uid}/latest", headers=world.auth("a-viewer"))
    assert [i["value"] for i in latest.json()["items"]] == [19.5]
