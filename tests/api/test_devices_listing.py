"""GET /api/v1/devices sorted and filtered by tag and connection state, paged with a sort, and
GET /api/v1/telemetry/sparklines, on SQLite and PostgreSQL (RLS beneath): the values, one
tenant's devices only."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.store.schema import devices
from telemetra.store.tenancy import platform_wide

from api_fixtures import World, assert_error

API = "/api/v1"
HOUR_MS = 3_600_000
SORTS = ("uid", "-uid", "last_seen", "-last_seen", "type", "-type", "name", "-name")


async def _device(world: World, uid: str, who: str = "a-operator", **fields: Any) -> str:
    made = await world.client.post(
        f"{API}/devices", json={"uid": uid, **fields}, headers=world.auth(who)
    )
    assert made.status_code == 201, made.text
    token: str = made.json()["token"]
    return token


async def _set(engine: AsyncEngine, uid: str, **values: Any) -> None:
    with platform_wide():
        async with engine.begin() as conn:
            await conn.execute(update(devices).where(devices.c.uid == uid).values(**values))


async def _uids(world: World, who: str = "a-viewer", **params: Any) -> list[str]:
    reply = await world.client.get(f"{API}/devices", params=params, headers=world.auth(who))
    assert reply.status_code == 200, reply.text
    return [d["uid"] for d in reply.json()["items"]]


async def _fleet(world: World, engine: AsyncEngine) -> list[str]:
    """Tenant a's five devices: names, types and last-seen times in other orders than uids,
    some missing (a device's name is its uid unless set: cleared here)."""
    a = world.tenant_a
    uids = [f"{a}-{n}" for n in ("d1", "d2", "d3", "d4", "d5")]
    spec: list[tuple[str | None, str | None, int | None]] = [
        ("Echo", "freezer", 3_000), ("Alpha", None, 5_000), (None, "climate", None),
        ("Delta", "climate", 1_000), ("bravo", "Freezer", 4_000),
    ]  # fmt: skip
    base_us = 1_800_000_000_000_000
    for uid, (name, type_, seen) in zip(uids, spec, strict=True):
        await _device(world, uid, name=name, type=type_)
        await _set(engine, uid, name=name, last_seen=None if seen is None else base_us + seen)
    return uids


async def test_sorts_both_ways_with_missing_values_last(world: World, engine: AsyncEngine) -> None:
    d1, d2, d3, d4, d5 = await _fleet(world, engine)
    expected = {
        "uid": [d1, d2, d3, d4, d5],
        "-uid": [d5, d4, d3, d2, d1],
        "last_seen": [d4, d1, d5, d2, d3],
        "-last_seen": [d2, d5, d1, d4, d3],
        "type": [d3, d4, d1, d5, d2],  # climate, climate, freezer, Freezer (ties by uid), none
        "-type": [d1, d5, d3, d4, d2],
        "name": [d2, d5, d4, d1, d3],
        "-name": [d1, d4, d5, d2, d3],
    }
    assert set(expected) == set(SORTS)
    for sort, order in expected.items():
        assert await _uids(world, sort=sort) == order, sort
    assert await _uids(world) == expected["uid"]  # the default


async def test_an_unknown_sort_names_the_allowed_ones(world: World) -> None:
    for bad in ("online", "+uid", "uid,name", "UID", ""):
        reply = await world.client.get(
            f"{API}/devices", params={"sort": bad}, headers=world.auth("a-viewer")
        )
        assert_error(reply, 422, "invalid_request")
        said = str(reply.json()["error"])
        assert "query.sort" in said
        assert all(f"'{key}'" in said for key in SORTS), said


async def test_pages_follow_the_sort(world: World, engine: AsyncEngine) -> None:
    uids = await _fleet(world, engine)
    for sort in ("-last_seen", "type", "-name"):
        whole = await _uids(world, sort=sort)
        assert sorted(whole) == uids
        paged: list[str] = []
        offset: int | None = 0
        pages = 0
        while offset is not None:
            reply = await world.client.get(
                f"{API}/devices", params={"sort": sort, "limit": 2, "offset": offset},
                headers=world.auth("a-viewer"),
            )  # fmt: skip
            assert reply.status_code == 200, reply.text
            page = reply.json()
            assert set(page) == {"items", "next_offset"}
            paged += [d["uid"] for d in page["items"]]
            offset = page["next_offset"]
            pages += 1
        assert paged == whole and pages == 3, sort
    # Sort and filters together.
    _, _, d3, d4, _ = uids
    assert await _uids(world, sort="-last_seen", type="climate", limit=1, offset=1) == [d3]
    assert await _uids(world, sort="-name", type="climate") == [d4, d3]


async def test_filters_by_tag(world: World) -> None:
    a = world.tenant_a
    tagged = {
        f"{a}-north": {"tags": ["north", "cold room"]},
        f"{a}-both": {"tags": ["south", "north"], "site": "x"},
        f"{a}-south": {"tags": ["south"]},
        f"{a}-text": {"tags": "north"},  # not a list: no tags
        f"{a}-nested": {"tags": [["north"]], "other": ["north"]},
        f"{a}-number": {"tags": [1, 2]},
        f"{a}-none": {},
    }
    for uid, metadata in tagged.items():
        await _device(world, uid, metadata=metadata)
    assert await _uids(world, tag="north") == [f"{a}-both", f"{a}-north"]
    assert await _uids(world, tag="south", sort="-uid") == [f"{a}-south", f"{a}-both"]
    assert await _uids(world, tag="cold room") == [f"{a}-north"]
    assert await _uids(world, tag="nor") == []  # whole tags, not parts
    assert await _uids(world, tag="1") == []  # numbers are not tags
    assert await _uids(world, tag="x") == []
    # Another tenant's device with the same tag is never listed.
    await _device(world, f"{world.tenant_b}-north", "b-operator", metadata={"tags": ["north"]})
    assert await _uids(world, tag="north") == [f"{a}-both", f"{a}-north"]
    assert await _uids(world, "b-viewer", tag="north") == [f"{world.tenant_b}-north"]


async def test_filters_by_connection_state(world: World, engine: AsyncEngine) -> None:
    a = world.tenant_a
    for name, online in (("up", True), ("down", False), ("new", None), ("up2", True)):
        await _device(world, f"{a}-{name}")
        await _set(engine, f"{a}-{name}", online=online)
    assert await _uids(world, online="true") == [f"{a}-up", f"{a}-up2"]
    assert await _uids(world, online="false") == [f"{a}-down"]
    assert await _uids(world, online="unknown") == [f"{a}-new"]
    assert await _uids(world, online="true", sort="-uid", limit=1) == [f"{a}-up2"]
    reply = await world.client.get(
        f"{API}/devices", params={"online": "yes"}, headers=world.auth("a-viewer")
    )
    assert_error(reply, 422, "invalid_request")
    assert "query.online" in str(reply.json()["error"]["details"])


async def _ingest(world: World, token: str, entries: list[dict[str, Any]]) -> None:
    reply = await world.client.post(f"{API}/ingest", json=entries, headers={"X-API-Key": token})
    assert reply.status_code == 200, reply.text
    assert not reply.json()["rejected"], reply.text


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


async def test_sparklines_are_hourly_averages(world: World) -> None:
    a, b = world.tenant_a, world.tenant_b
    first, second, quiet = f"{a}-s1", f"{a}-s2", f"{a}-quiet"
    token1 = await _device(world, first)
    token2 = await _device(world, second)
    await _device(world, quiet)
    token_b = await _device(world, f"{b}-s1", "b-operator")
    now_ms = time.time_ns() // 1_000_000
    hour = now_ms // HOUR_MS * HOUR_MS  # the hour under way
    minute = 60_000
    await _ingest(world, token1, [
        {"ts": hour - 30 * HOUR_MS, "temperature": 99.0},  # before the last 24 hours
        {"ts": hour - 2 * HOUR_MS + minute, "temperature": 10.0, "humidity": 40.0},
        {"ts": hour - 2 * HOUR_MS + 2 * minute, "temperature": 20.0},
        {"ts": hour - HOUR_MS + minute, "temperature": 30.0},
        {"ts": hour, "temperature": 40.0},
        {"ts": hour + 1, "temperature": 50.0, "door": "open"},  # text: no average
    ])  # fmt: skip
    await _ingest(world, token2, [{"ts": hour - 5 * HOUR_MS, "pressure": 1013.0}])
    await _ingest(world, token_b, [{"ts": hour, "temperature": -1.0}])

    reply = await world.client.get(
        f"{API}/telemetry/sparklines",
        params={"devices": f"{first},{second},{quiet},{b}-s1,nobody,{first}"},
        headers=world.auth("a-viewer"),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "items": [
            {"device": first, "metric": "humidity", "points": [[_iso(hour - 2 * HOUR_MS), 40.0]]},
            {"device": first, "metric": "temperature", "points": [
                [_iso(hour - 2 * HOUR_MS), 15.0], [_iso(hour - HOUR_MS), 30.0], [_iso(hour), 45.0],
            ]},
            {"device": second, "metric": "pressure",
             "points": [[_iso(hour - 5 * HOUR_MS), 1013.0]]},
        ]
    }  # fmt: skip

    async def points(who: str, **params: Any) -> list[Any]:
        reply = await world.client.get(
            f"{API}/telemetry/sparklines", params=params, headers=world.auth(who)
        )
        assert reply.status_code == 200, reply.text
        items: list[Any] = reply.json()["items"]
        return items

    # Fewer hours: the hour under way is the last of them.
    one = await points("a-viewer", devices=first, hours=1)
    assert [(i["metric"], i["points"]) for i in one] == [("temperature", [[_iso(hour), 45.0]])]
    two = await points("a-viewer", devices=first, hours=2)
    assert [len(i["points"]) for i in two] == [2]
    week = await points("a-viewer", devices=first, hours=168)
    assert [len(i["points"]) for i in week] == [1, 4]  # the reading 30 hours ago too
    # A uid holding a comma, named whole with ``device``.
    comma = f"{a}-x,y"
    await _ingest(world, await _device(world, comma), [{"ts": hour, "temperature": 7.0}])
    assert await points("a-viewer", devices="", device=[comma]) == [
        {"device": comma, "metric": "temperature", "points": [[_iso(hour), 7.0]]}
    ]
    both = await points("a-viewer", devices=second, device=[comma, second])
    assert [i["device"] for i in both] == [second, comma]  # by uid
    # Tenant isolation: tenant b's viewer sees none of tenant a's, only its own.
    assert await points("b-viewer", devices=f"{first},{second}") == []
    assert await points("b-viewer", devices=f"{b}-s1,{first}") == [
        {"device": f"{b}-s1", "metric": "temperature", "points": [[_iso(hour), -1.0]]}
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"devices": ",".join(f"d{i}" for i in range(201))}, "query.devices"),
        ({"devices": ",".join(f"d{i}" for i in range(200)), "device": "d200"}, "query.devices"),
        ({"devices": " , "}, "query.devices"),
        ({}, "query.devices"),
        ({"devices": "d1", "hours": 0}, "query.hours"),
        ({"devices": "d1", "hours": 169}, "query.hours"),
    ],
)
async def test_sparklines_refuse_bad_requests(
    world: World, params: dict[str, Any], field: str
) -> None:
    reply = await world.client.get(
        f"{API}/telemetry/sparklines", params=params, headers=world.auth("a-viewer")
    )
    assert_error(reply, 422, "invalid_request")
    assert field in str(reply.json()["error"]["details"])


async def test_sparklines_take_200_devices(world: World) -> None:
    reply = await world.client.get(
        f"{API}/telemetry/sparklines",
        params={"devices": ",".join(f"d{i}" for i in range(200))},
        headers=world.auth("a-viewer"),
    )
    assert reply.status_code == 200 and reply.json() == {"items": []}, reply.text


async def test_me_names_the_tenant(world: World) -> None:
    for who, tenant in (("a-viewer", world.tenant_a), ("b-owner", world.tenant_b)):
        reply = await world.client.get(f"{API}/auth/me", headers=world.auth(who))
        assert reply.status_code == 200, reply.text
        assert reply.json()["tenant"] == tenant
