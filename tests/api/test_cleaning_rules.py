"""The cleaning rules API on SQLite and PostgreSQL (RLS beneath): list with the built-in
defaults, create or replace and delete by role, within the caller's tenant, and rules for all
tenants by platform admins only. Ingest applies what the API stored."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.ingest.clean import DEFAULT_RULES
from telemetra.store.catalog import create_user, tenant_id_by_name
from telemetra.store.tenancy import platform_wide

from api_fixtures import _HASH, PASSWORD, World, assert_error

API = "/api/v1/cleaning-rules"


async def _items(world: World, who: str | dict[str, str], **params: Any) -> list[dict[str, Any]]:
    headers = world.auth(who) if isinstance(who, str) else who
    reply = await world.client.get(API, params=params, headers=headers)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


async def _admin(world: World, engine: AsyncEngine) -> dict[str, str]:
    name = f"admin-{uuid.uuid4().hex[:8]}"
    with platform_wide():
        async with engine.begin() as conn:
            tenant_id = await tenant_id_by_name(conn, world.tenant_b)
            await create_user(conn, tenant_id, name, _HASH, "admin")
    login = await world.client.post(
        "/api/v1/auth/token", data={"username": name, "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_operators_set_and_delete_their_tenants_rules(world: World) -> None:
    c = world.client
    viewer = await _items(world, "a-viewer")
    builtins = [r for r in viewer if r["source"] == "builtin"]
    assert len(builtins) == len(DEFAULT_RULES)
    temperature = next(r for r in builtins if r["metric"] == "temperature")
    assert temperature == {
        "id": None, "source": "builtin", "tenant_id": None, "tenant": None,
        "metric": "temperature", "device_type": None, "min": -90.0, "max": 200.0, "unit": "°C",
        "kind": "gauge",
    }  # fmt: skip

    rule = {"metric": "temperature", "device_type": "freezer", "min": -40, "max": 10, "unit": "C"}
    assert_error(await c.put(API, json=rule, headers=world.auth("a-viewer")), 403, "forbidden")
    made = await c.put(API, json=rule, headers=world.auth("a-operator"))
    assert made.status_code == 200, made.text
    stored = made.json()
    tenant_id = (await c.get("/api/v1/auth/me", headers=world.auth("a-viewer"))).json()["tenant_id"]
    assert stored == {
        "id": stored["id"], "source": "tenant", "tenant_id": tenant_id, "tenant": world.tenant_a,
        "metric": "temperature", "device_type": "freezer", "min": -40.0, "max": 10.0,
        "unit": "C", "kind": None,
    }  # fmt: skip
    listed = await _items(world, "a-viewer")
    assert listed[0] == stored and listed[-len(builtins) :] == builtins  # stored ones first

    # Replacing the rule of the same scope: one rule, the new one.
    replaced = await c.put(
        API, json={**rule, "max": 5, "kind": "gauge"}, headers=world.auth("a-owner")
    )
    assert replaced.status_code == 200, replaced.text
    mine = [r for r in await _items(world, "a-viewer") if r["source"] == "tenant"]
    assert mine == [replaced.json()] and (mine[0]["max"], mine[0]["kind"]) == (5.0, "gauge")
    # Another scope (all device types) is another rule.
    wider = await c.put(
        API, json={"metric": "temperature", "max": 60}, headers=world.auth("a-operator")
    )
    assert wider.json()["device_type"] is None
    assert len([r for r in await _items(world, "a-viewer") if r["source"] == "tenant"]) == 2

    # The CLI's validation, and the model's bounds.
    for bad in (
        {"metric": "temperature", "min": 10, "max": 5},
        {"metric": "temperature", "kind": "rate"},
        {"metric": ""},
        {"metric": " temperature"},
        {"metric": "temperature", "device_type": "x" * 65},
        {"metric": "temperature", "unit": "x" * 33},
        {"metric": "temperature", "tenant_id": 1},
        {"metric": "temperature", "tenant": world.tenant_a, "all_tenants": True},
        {"min": 1},
    ):
        reply = await c.put(API, json=bad, headers=world.auth("a-operator"))
        assert_error(reply, 422, "invalid_request")
    above = await c.put(
        API, json={"metric": "t", "min": 10, "max": 5}, headers=world.auth("a-operator")
    )
    assert "min 10 is above max 5" in str(above.json()["error"]["details"])

    path = f"{API}/{replaced.json()['id']}"
    assert_error(await c.delete(path, headers=world.auth("a-viewer")), 403, "forbidden")
    assert (await c.delete(path, headers=world.auth("a-operator"))).status_code == 204
    assert_error(await c.delete(path, headers=world.auth("a-operator")), 404, "not_found")
    assert [r["id"] for r in await _items(world, "a-viewer") if r["source"] == "tenant"] == [
        wider.json()["id"]
    ]


async def test_tenants_keep_to_their_own_rules(world: World, engine: AsyncEngine) -> None:
    c = world.client
    made = await c.put(API, json={"metric": "co2", "max": 5000}, headers=world.auth("a-operator"))
    assert made.status_code == 200, made.text
    theirs = f"{API}/{made.json()['id']}"

    assert [r for r in await _items(world, "b-viewer") if r["source"] != "builtin"] == []
    assert_error(await c.delete(theirs, headers=world.auth("b-owner")), 404, "not_found")
    into_a = await c.put(
        API, json={"metric": "co2", "max": 1, "tenant": world.tenant_a},
        headers=world.auth("b-owner"),
    )  # fmt: skip
    assert_error(into_a, 403, "forbidden")
    nowhere = await c.put(
        API, json={"metric": "co2", "max": 1, "tenant": f"no-{world.tenant_a}"},
        headers=world.auth("b-owner"),
    )  # fmt: skip
    assert nowhere.json() == into_a.json()  # nothing says which tenants exist
    named = await c.get(API, params={"tenant": world.tenant_a}, headers=world.auth("b-viewer"))
    assert_error(named, 404, "not_found")
    own = await c.put(
        API, json={"metric": "co2", "max": 1, "tenant": world.tenant_b},
        headers=world.auth("b-operator"),
    )  # fmt: skip
    assert own.status_code == 200 and own.json()["tenant"] == world.tenant_b
    for_all = await c.put(
        API, json={"metric": "co2", "all_tenants": True}, headers=world.auth("b-owner")
    )
    assert_error(for_all, 403, "forbidden")
    assert (await _items(world, "a-viewer"))[0] == made.json()  # untouched

    # A platform admin: any tenant's rules, and rules for all tenants.
    admin = await _admin(world, engine)
    metric = f"metric-{uuid.uuid4().hex[:8]}"  # for all tenants: a name no other test uses
    every = await c.put(API, json={"metric": metric, "min": 0, "all_tenants": True}, headers=admin)
    assert every.status_code == 200, every.text
    assert (every.json()["source"], every.json()["tenant"]) == ("all_tenants", None)
    for who in ("a-viewer", "b-viewer"):
        assert every.json() in await _items(world, who)
    in_a = await c.put(API, json={"metric": metric, "tenant": world.tenant_a}, headers=admin)
    assert in_a.json()["tenant"] == world.tenant_a
    unknown = await c.put(API, json={"metric": metric, "tenant": f"no-{metric}"}, headers=admin)
    assert_error(unknown, 422, "invalid_request")
    everything = await _items(world, admin)
    assert {made.json()["id"], own.json()["id"], every.json()["id"]} <= {
        r["id"] for r in everything
    }
    only_a = await _items(world, admin, tenant=world.tenant_a)
    assert {r["tenant"] for r in only_a if r["source"] == "tenant"} == {world.tenant_a}

    every_path = f"{API}/{every.json()['id']}"
    assert_error(await c.delete(every_path, headers=world.auth("a-owner")), 403, "forbidden")
    assert (await c.delete(every_path, headers=admin)).status_code == 204
    assert (await c.delete(f"{API}/{in_a.json()['id']}", headers=admin)).status_code == 204


async def test_ingest_applies_the_rules_the_api_stores(world: World) -> None:
    c = world.client
    made = await c.post(
        "/api/v1/devices", json={"uid": f"{world.tenant_a}-sauna", "type": "sauna"},
        headers=world.auth("a-operator"),
    )  # fmt: skip
    token = made.json()["token"]
    rule = {"metric": "temperature", "device_type": "sauna", "max": 120}
    assert (await c.put(API, json=rule, headers=world.auth("a-operator"))).status_code == 200
    now_ms = time.time_ns() // 1_000_000 - 10_000
    reply = await c.post(
        "/api/v1/ingest",
        json=[{"ts": now_ms, "temperature": 110}, {"ts": now_ms + 1, "temperature": 130}],
        headers={"X-API-Key": token},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] == 1  # 110 is fine for a sauna (the default allows 200)
    assert [r["reason"] for r in reply.json()["rejected"]] == ["out_of_range"]
